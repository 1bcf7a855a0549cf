/*
 * Shared by the plugins: PEM material and certificates with precise messages
 * (see ep-tls.h); the files and the rest are in ep-util.c.
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

#define fail ep_fail

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
