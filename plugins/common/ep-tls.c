/*
 * Shared by the plugins: PEM material with precise messages, and crash-safe
 * files (see ep-tls.h).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "ep-tls.h"

void *ep_xmalloc0(size_t n)
{
	void *p = calloc(1, n ? n : 1);

	if (p == NULL)
		abort();
	return p;
}

char *ep_xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		abort();
	return p;
}

char *ep_xprintf(const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vasprintf(&s, fmt, ap);
	va_end(ap);
	if (n < 0)
		abort();
	return s;
}

static int fail(char **error_r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char **error_r, int code, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		abort();
	va_end(ap);
	*error_r = s;
	return code;
}

/* OpenSSL's last reason, or what when its queue is empty; the queue is cleared. */
static const char *ossl_reason(const char *what)
{
	static char buf[256];
	unsigned long e = ERR_peek_last_error();

	if (e == 0)
		return what;
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	/* "error:0480006C:PEM routines::no start line" -> "no start line" */
	char *last = strrchr(buf, ':');
	return last != NULL && last[1] != '\0' ? last + 1 : buf;
}

/* ---- durations -------------------------------------------------------------------------- */

int ep_duration_parse(const char *s, uint64_t *ms_r)
{
	double total = 0;
	const char *p = s;

	if (*p == '\0')
		return -EINVAL;
	while (*p != '\0') {
		char *end;
		double v;
		double unit;

		/* digits and one point only: no sign, exponent, hex, "inf" or "nan" */
		size_t digits = strspn(p, "0123456789.");
		if (digits == 0 || memchr(p, '.', digits) != memrchr(p, '.', digits))
			return -EINVAL;
		v = strtod(p, &end);
		if (end != p + digits)
			return -EINVAL;
		if (strncmp(end, "ms", 2) == 0) {
			unit = 1;
			end += 2;
		} else if (*end == 'h') {
			unit = 3600000;
			end++;
		} else if (*end == 'm') {
			unit = 60000;
			end++;
		} else if (*end == 's') {
			unit = 1000;
			end++;
		} else {
			return -EINVAL;
		}
		total += v * unit;
		p = end;
	}
	if (total > 1e15)
		return -EINVAL;
	*ms_r = (uint64_t)total;
	return 0;
}

/* ---- files ------------------------------------------------------------------------------ */

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;

	while (len > 0) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int ep_dir_sync(const char *dir, char **error_r)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int r = 0;

	if (fd < 0)
		return fail(error_r, -errno, "%s: %s", dir, strerror(errno));
	if (fsync(fd) < 0)
		r = fail(error_r, -errno, "%s: fsync: %s", dir, strerror(errno));
	close(fd);
	return r;
}

static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (slash == NULL)
		return strdup(".");
	if (slash == path)
		return strdup("/");
	return strndup(path, (size_t)(slash - path));
}

int ep_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
			 char **error_r)
{
	char *tmp = ep_xprintf("%s.tmp.%ld", path, (long)getpid());
	char *dir;
	int fd, r;

	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		r = fail(error_r, -errno, "%s: %s", tmp, strerror(errno));
		free(tmp);
		return r;
	}
	/* the umask must not widen or narrow what the caller asked for */
	if (fchmod(fd, mode) < 0 || (r = write_all(fd, data, len)) < 0 || fsync(fd) < 0) {
		r = fail(error_r, -errno, "%s: %s", tmp, strerror(errno));
		close(fd);
		unlink(tmp);
		free(tmp);
		return r;
	}
	if (close(fd) < 0 || rename(tmp, path) < 0) {
		r = fail(error_r, -errno, "%s: %s", path, strerror(errno));
		unlink(tmp);
		free(tmp);
		return r;
	}
	free(tmp);
	dir = dir_of(path);
	r = ep_dir_sync(dir, error_r);
	free(dir);
	return r;
}

int ep_file_read(const char *path, size_t max, char **data_r, size_t *len_r, char **error_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	char *buf;
	size_t len = 0;
	int r;

	if (fd < 0)
		return fail(error_r, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = fail(error_r, S_ISREG(st.st_mode) ? -errno : -EINVAL, "%s: %s", path,
			 S_ISREG(st.st_mode) ? strerror(errno) : "not a regular file");
		close(fd);
		return r;
	}
	buf = malloc(max + 1);
	if (buf == NULL)
		abort();
	for (;;) {
		ssize_t n = read(fd, buf + len, max + 1 - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = fail(error_r, -errno, "%s: %s", path, strerror(errno));
			free(buf);
			close(fd);
			return r;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > max) {
			free(buf);
			close(fd);
			return fail(error_r, -EFBIG, "%s: larger than %zu bytes", path, max);
		}
	}
	close(fd);
	buf[len] = '\0';
	*data_r = buf;
	if (len_r != NULL)
		*len_r = len;
	return 0;
}

int ep_dir_make(const char *dir, mode_t mode, char **error_r)
{
	char *p = strdup(dir);

	if (p == NULL)
		abort();
	for (char *s = p + 1;; s++) {
		if (*s != '/' && *s != '\0')
			continue;
		char c = *s;

		*s = '\0';
		if (mkdir(p, mode) < 0 && errno != EEXIST) {
			int r = fail(error_r, -errno, "%s: %s", p, strerror(errno));

			free(p);
			return r;
		}
		*s = c;
		if (c == '\0')
			break;
	}
	free(p);
	return 0;
}

int ep_dir_remove_tree(const char *dir, char **error_r)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int r = 0;

	if (d == NULL) {
		if (errno == ENOENT)
			return 0;
		return fail(error_r, -errno, "%s: %s", dir, strerror(errno));
	}
	while (r == 0 && (e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		char *p = ep_xprintf("%s/%s", dir, e->d_name);
		struct stat st;

		if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
			r = ep_dir_remove_tree(p, error_r);
		else if (unlink(p) < 0 && errno != ENOENT)
			r = fail(error_r, -errno, "%s: %s", p, strerror(errno));
		free(p);
	}
	closedir(d);
	if (r == 0 && rmdir(dir) < 0 && errno != ENOENT)
		r = fail(error_r, -errno, "%s: %s", dir, strerror(errno));
	return r;
}

/* 1 when dir/..data/NAME holds exactly these bytes for every file. */
static int published_same(const char *dir, const struct ep_pub_file *files, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *p = ep_xprintf("%s/..data/%s", dir, files[i].name);
		char *data, *err = NULL;
		size_t len;
		int same;

		if (ep_file_read(p, files[i].len + 1, &data, &len, &err) < 0) {
			free(err);
			free(p);
			return 0;
		}
		same = len == files[i].len && memcmp(data, files[i].data, len) == 0;
		free(data);
		free(p);
		if (!same)
			return 0;
	}
	return 1;
}

int ep_publish_files(const char *dir, const struct ep_pub_file *files, size_t n, int *changed_r,
		     char **error_r)
{
	static unsigned seq;
	struct timespec ts;
	char *gen, *gen_name, *tmp_link, *data_link;
	DIR *d;
	struct dirent *e;
	int r;

	if (changed_r != NULL)
		*changed_r = 0;
	if ((r = ep_dir_make(dir, 0755, error_r)) < 0)
		return r;
	if (published_same(dir, files, n))
		goto links; /* content unchanged: only make sure the name links exist */

	clock_gettime(CLOCK_REALTIME, &ts);
	gen_name = ep_xprintf("..%lld.%09ld.%ld.%u", (long long)ts.tv_sec, ts.tv_nsec, (long)getpid(),
			   seq++);
	gen = ep_xprintf("%s/%s", dir, gen_name);
	if (mkdir(gen, 0755) < 0) {
		r = fail(error_r, -errno, "%s: %s", gen, strerror(errno));
		goto out_gen;
	}
	for (size_t i = 0; i < n; i++) {
		char *p = ep_xprintf("%s/%s", gen, files[i].name);

		r = ep_file_write_atomic(p, files[i].data, files[i].len, files[i].mode, error_r);
		free(p);
		if (r < 0)
			goto out_gen;
	}
	if ((r = ep_dir_sync(gen, error_r)) < 0)
		goto out_gen;
	tmp_link = ep_xprintf("%s/..data_tmp", dir);
	data_link = ep_xprintf("%s/..data", dir);
	unlink(tmp_link);
	if (symlink(gen_name, tmp_link) < 0 || rename(tmp_link, data_link) < 0) {
		r = fail(error_r, -errno, "%s: %s", data_link, strerror(errno));
		unlink(tmp_link);
		free(tmp_link);
		free(data_link);
		goto out_gen;
	}
	free(tmp_link);
	free(data_link);
	if (changed_r != NULL)
		*changed_r = 1;
	r = ep_dir_sync(dir, error_r);
	if (r < 0)
		goto out_gen;

	/* older generations nobody can reach any more */
	d = opendir(dir);
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "..", 2) != 0 || strcmp(e->d_name, "..") == 0 ||
		    strcmp(e->d_name, gen_name) == 0 || strncmp(e->d_name, "..data", 6) == 0)
			continue;
		char *old = ep_xprintf("%s/%s", dir, e->d_name), *err = NULL;

		ep_dir_remove_tree(old, &err);
		free(err);
		free(old);
	}
	if (d != NULL)
		closedir(d);
	free(gen);
	free(gen_name);

links:
	for (size_t i = 0; i < n; i++) {
		char *p = ep_xprintf("%s/%s", dir, files[i].name);
		char *target = ep_xprintf("..data/%s", files[i].name);
		char buf[256];
		ssize_t len = readlink(p, buf, sizeof(buf) - 1);

		if (len < 0 || (size_t)len != strlen(target) || memcmp(buf, target, (size_t)len) != 0) {
			char *tmp = ep_xprintf("%s/.%s.tmp", dir, files[i].name);

			unlink(tmp);
			if (symlink(target, tmp) < 0 || rename(tmp, p) < 0) {
				r = fail(error_r, -errno, "%s: %s", p, strerror(errno));
				unlink(tmp);
				free(tmp);
				free(p);
				free(target);
				return r;
			}
			free(tmp);
			if (changed_r != NULL)
				*changed_r = 1;
		}
		free(p);
		free(target);
	}
	return ep_dir_sync(dir, error_r);

out_gen: {
	char *ignored = NULL;

	ep_dir_remove_tree(gen, &ignored);
	free(ignored);
}
	free(gen);
	free(gen_name);
	return r;
}

/* ---- PEM material ------------------------------------------------------------------------ */

int ep_pem_parse_certs(const char *pem, size_t len, const char *what, STACK_OF(X509) **certs_r,
		       char **error_r)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	STACK_OF(X509) *certs = sk_X509_new_null();
	char *name = NULL, *header = NULL;
	unsigned char *data = NULL;
	long dlen;
	int r = 0, block = 0;

	ERR_clear_error();
	while (PEM_read_bio(bio, &name, &header, &data, &dlen) == 1) {
		block++;
		if (strcmp(name, "CERTIFICATE") != 0 && strcmp(name, "TRUSTED CERTIFICATE") != 0 &&
		    strcmp(name, "X509 CERTIFICATE") != 0) {
			r = fail(error_r, -EINVAL, "%s: PEM block %d is a \"%s\", expected "
				 "certificates only", what, block, name);
		} else {
			const unsigned char *p = data;
			X509 *x = d2i_X509(NULL, &p, dlen);

			if (x == NULL)
				r = fail(error_r, -EINVAL, "%s: certificate %d does not parse: %s",
					 what, block, ossl_reason("bad DER"));
			else
				sk_X509_push(certs, x);
		}
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_free(data);
		name = header = NULL;
		data = NULL;
		if (r < 0)
			break;
	}
	ERR_clear_error(); /* the end of the input reads as "no start line" */
	BIO_free(bio);
	if (r == 0 && sk_X509_num(certs) == 0)
		r = fail(error_r, -EINVAL, "%s: no PEM certificate in it", what);
	if (r < 0) {
		sk_X509_pop_free(certs, X509_free);
		return r;
	}
	*certs_r = certs;
	return 0;
}

int ep_pem_load_certs(const char *path, STACK_OF(X509) **certs_r, char **error_r)
{
	char *data;
	size_t len;
	int r;

	if ((r = ep_file_read(path, 4u << 20, &data, &len, error_r)) < 0)
		return r;
	r = ep_pem_parse_certs(data, len, path, certs_r, error_r);
	free(data);
	return r;
}

int ep_pem_parse_key(const char *pem, size_t len, const char *what, EVP_PKEY **key_r,
		     char **error_r)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *key;

	ERR_clear_error();
	/* no passphrase callback: an encrypted key is an error, not a prompt */
	key = PEM_read_bio_PrivateKey(bio, NULL, NULL, (void *)"");
	BIO_free(bio);
	if (key == NULL)
		return fail(error_r, -EINVAL, "%s: not a PEM private key (unencrypted PKCS#8, RSA "
			    "or EC): %s", what, ossl_reason("no key found"));
	*key_r = key;
	return 0;
}

int ep_pem_load_key(const char *path, EVP_PKEY **key_r, char **error_r)
{
	char *data;
	size_t len;
	int r;

	if ((r = ep_file_read(path, 1u << 20, &data, &len, error_r)) < 0)
		return r;
	r = ep_pem_parse_key(data, len, path, key_r, error_r);
	OPENSSL_cleanse(data, len);
	free(data);
	return r;
}

static char *bio_text(BIO *bio, size_t *len_r)
{
	char *p;
	long len = BIO_get_mem_data(bio, &p);
	char *s = malloc((size_t)len + 1);

	if (s == NULL)
		abort();
	memcpy(s, p, (size_t)len);
	s[len] = '\0';
	if (len_r != NULL)
		*len_r = (size_t)len;
	return s;
}

char *ep_pem_cert(X509 *cert, size_t *len_r)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s;

	PEM_write_bio_X509(bio, cert);
	s = bio_text(bio, len_r);
	BIO_free(bio);
	return s;
}

char *ep_pem_key(EVP_PKEY *key, size_t *len_r)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s;

	PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL);
	s = bio_text(bio, len_r);
	BIO_free(bio);
	return s;
}

/* ---- checks ------------------------------------------------------------------------------ */

int ep_tls_check_pair(X509 *cert, EVP_PKEY *key, const char *cert_what, const char *key_what,
		      char **error_r)
{
	EVP_PKEY *pub = X509_get0_pubkey(cert);

	if (pub == NULL || EVP_PKEY_eq(pub, key) != 1) {
		ERR_clear_error();
		return fail(error_r, -EINVAL, "%s does not match %s: the private key is not the "
			    "certificate's", key_what, cert_what);
	}
	return 0;
}

int64_t ep_x509_not_before(X509 *cert)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(X509_get0_notBefore(cert), &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm);
}

int64_t ep_x509_not_after(X509 *cert)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) != 1)
		return 0;
	return (int64_t)timegm(&tm);
}

void ep_time_format(int64_t t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;

	gmtime_r(&tt, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int ep_tls_check_time(X509 *cert, int64_t now, const char *what, char **error_r)
{
	char when[32];

	if (now < ep_x509_not_before(cert)) {
		ep_time_format(ep_x509_not_before(cert), when, sizeof(when));
		return fail(error_r, -EINVAL, "%s: the certificate is not valid before %s", what,
			    when);
	}
	if (now > ep_x509_not_after(cert)) {
		ep_time_format(ep_x509_not_after(cert), when, sizeof(when));
		return fail(error_r, -EINVAL, "%s: the certificate expired on %s", what, when);
	}
	return 0;
}

int ep_tls_verify(STACK_OF(X509) *chain, STACK_OF(X509) *roots, const char *purpose,
		  const char *what, char **error_r)
{
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	STACK_OF(X509) *untrusted = sk_X509_new_null();
	STACK_OF(X509) *trust = roots != NULL ? roots : chain;
	int r = 0;

	for (int i = 1; i < sk_X509_num(chain); i++)
		sk_X509_push(untrusted, sk_X509_value(chain, i));
	for (int i = 0; i < sk_X509_num(trust); i++) {
		X509 *x = sk_X509_value(trust, i);

		/* without roots, only a self-signed member of the chain anchors it */
		if (roots == NULL && X509_check_issued(x, x) != X509_V_OK)
			continue;
		X509_STORE_add_cert(store, x);
	}
	if (X509_STORE_CTX_init(ctx, store, sk_X509_value(chain, 0), untrusted) != 1) {
		r = fail(error_r, -ENOMEM, "%s: cannot verify: %s", what, ossl_reason("init"));
		goto out;
	}
	if (purpose != NULL) {
		int id = X509_PURPOSE_get_by_sname(purpose);

		if (id >= 0)
			X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_get_id(X509_PURPOSE_get0(id)));
	}
	if (X509_verify_cert(ctx) != 1) {
		int err = X509_STORE_CTX_get_error(ctx);

		r = fail(error_r, -EINVAL, "%s: the certificate does not verify%s: %s (at depth %d)",
			 what, roots != NULL ? " against the CA bundle" : "",
			 X509_verify_cert_error_string(err), X509_STORE_CTX_get_error_depth(ctx));
	}
out:
	ERR_clear_error();
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	sk_X509_free(untrusted);
	return r;
}

/* ---- facts ------------------------------------------------------------------------------- */

static char *name_line(const X509_NAME *name)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *s;

	X509_NAME_print_ex(bio, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
	s = bio_text(bio, NULL);
	BIO_free(bio);
	return s;
}

char *ep_x509_subject(X509 *cert)
{
	return name_line(X509_get_subject_name(cert));
}

char *ep_x509_issuer(X509 *cert)
{
	return name_line(X509_get_issuer_name(cert));
}

char *ep_x509_serial_hex(X509 *cert)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex = BN_bn2hex(bn), *s;

	BN_free(bn);
	/* BN_bn2hex pads to whole bytes: "024301" */
	const char *h = hex;
	while (h[0] == '0' && h[1] != '\0')
		h++;
	s = strdup(h);
	OPENSSL_free(hex);
	for (char *p = s; *p; p++)
		if (*p >= 'A' && *p <= 'F')
			*p = (char)(*p - 'A' + 'a');
	return s;
}

int ep_x509_equal(X509 *a, X509 *b)
{
	return X509_cmp(a, b) == 0;
}
