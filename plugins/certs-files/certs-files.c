/*
 * The "files" certificate source: PEM files that someone else keeps (the
 * operator, cert-manager, Vault, `kubeadm certs renew`), named in the
 * tenant's spec.tls.files, checked, copied and watched.
 *
 * The backend reads the published files after tls_publish() returns, while
 * the operator may be halfway through replacing them; so the plugin never
 * publishes the operator's paths.  It reads each file once, checks what it
 * read, and writes exactly those bytes into a generation directory of its
 * own, STATE_DIR/files/gen-N/{tls.crt,tls.key,client-ca.crt,ca.crt}, which
 * stays untouched until the next generation has been published.  A set that
 * does not pass the checks is never published: at start the tenant fails
 * with the reason, later the previous generation stays in use and the reason
 * is logged and shown by `etcdproxyctl show`.
 *
 * Changes are seen by polling stat() of each file on the thread pool (stat
 * follows symlinks, so the kubelet's "..data" swaps are seen too), then a
 * short quiet period, so that a certificate and its key replaced one after
 * the other are read together.  Not uv_fs_poll: its first stat(), the one it
 * compares against, runs some time after start, and a file replaced between
 * our read and that stat() would never be noticed.  Here the comparison is
 * with a stat() taken just before each read.
 *
 * Options (global config "certs": {"files": {...}}):
 *   "poll_interval": duration between stat() polls ("2s" by default, "500ms", "1m")
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "etcdproxy/plugin.h"
#include "ep-tls.h"

#define FILE_MAX        (1024 * 1024) /* a PEM file larger than this is no certificate set */
#define DEFAULT_POLL_MS 2000
#define MIN_POLL_MS     100 /* four stat() calls per poll: not a busy loop */
#define DEBOUNCE_MS     200 /* quiet period after a change before the files are read */
#define GEN_PREFIX      "gen-"

/* The files of a set, in the order of spec.tls.files. */
enum { F_CERT, F_KEY, F_CLIENT_CA, F_CA, F_COUNT };

static const char *const spec_names[F_COUNT] = { "certFile", "keyFile", "clientCAFile", "caFile" };
static const char *const published_names[F_COUNT] = { "tls.crt", "tls.key", "client-ca.crt",
						       "ca.crt" };

/* One set of files as read and checked: what is published and what describe() shows. */
struct files_set {
	char *data[F_COUNT]; /* the bytes read; data[F_CA] is NULL without a caFile */
	size_t len[F_COUNT];
	STACK_OF(X509) *chain;      /* certFile, leaf first */
	STACK_OF(X509) *client_cas; /* clientCAFile */
	STACK_OF(X509) *cas;        /* caFile, or NULL */
	char *warnings;             /* what is acceptable but worth a log line, or NULL */
};

struct files_source {
	struct ep_host *host;
	char *paths[F_COUNT]; /* the operator's files; paths[F_CA] may be NULL */
	char **server_names;  /* spec.tls.serverNames, checked against the leaf (warnings) */
	size_t n_server_names;
	uint64_t poll_ms;
	char *dir; /* STATE_DIR/files, holding the generation directories */

	struct files_set *current; /* published, in use; NULL before the first publish */
	uint64_t generation;       /* of current */

	char *error; /* why the files on disk are not in use, NULL when they are */
	int64_t error_since;

	struct file_watch {
		uv_stat_t st; /* stat() of the file when last seen, valid when err is 0 */
		int err;      /* or the libuv error stat() gave then */
		uv_fs_t req;
		int pending;  /* req is on the thread pool */
	} watch[F_COUNT];
	int stats_pending;
	uv_timer_t poll;     /* every poll_ms: stat() each file */
	uv_timer_t debounce; /* the quiet period after a change */
	int watching;        /* the timers are initialised */
	int handles_open;    /* of them, not closed yet */
	int stopping;
};

/* Append "; what" to a malloc'ed list (or start it). */
static void append_note(char **list, char *what)
{
	char *joined;

	if (*list == NULL) {
		*list = what;
		return;
	}
	joined = ep_strdup_printf("%s; %s", *list, what);
	free(*list);
	free(what);
	*list = joined;
}

/* ---- one set of files: read and check -------------------------------------------------------- */

static void files_set_free(struct files_set *set)
{
	if (set == NULL)
		return;
	if (set->data[F_KEY] != NULL)
		OPENSSL_cleanse(set->data[F_KEY], set->len[F_KEY]);
	for (int i = 0; i < F_COUNT; i++)
		free(set->data[i]);
	sk_X509_pop_free(set->chain, X509_free);
	sk_X509_pop_free(set->client_cas, X509_free);
	sk_X509_pop_free(set->cas, X509_free);
	free(set->warnings);
	free(set);
}

/* 1 when file i holds the same bytes in both sets (or is absent from both). */
static int same_bytes(const struct files_set *a, const struct files_set *b, int i)
{
	return (a->data[i] == NULL) == (b->data[i] == NULL) && a->len[i] == b->len[i] &&
	       (a->data[i] == NULL || memcmp(a->data[i], b->data[i], a->len[i]) == 0);
}

static int files_set_equal(const struct files_set *a, const struct files_set *b)
{
	for (int i = 0; i < F_COUNT; i++)
		if (!same_bytes(a, b, i))
			return 0;
	return 1;
}

/* "certificate 2 of 3 (CN=x)" of a file, for messages. */
static char *cert_what(const char *path, STACK_OF(X509) *certs, int i)
{
	char *subject = ep_x509_subject(sk_X509_value(certs, i));
	char *what;

	if (sk_X509_num(certs) == 1)
		what = ep_strdup_printf("%s (%s)", path, subject ? subject : "?");
	else
		what = ep_strdup_printf("%s, certificate %d of %d (%s)", path, i + 1, sk_X509_num(certs),
			       subject ? subject : "?");
	free(subject);
	return what;
}

/*
 * The serving chain.  With a caFile it must verify for a TLS server against
 * that bundle, the rest of certFile serving as intermediates: caFile is what
 * clients are told to trust, so a chain it does not verify would fail every
 * client.  Without one the trust anchor is unknown (a public or corporate CA
 * the clients already have), so all we can ask is that certFile is a chain
 * in the right order, each certificate issued (name and signature) by the
 * next, every one of them valid now, and the leaf usable by a TLS server;
 * whether the last one is a root or an intermediate is not ours to say.
 */
static int check_serving_chain(const struct files_set *set, char *const paths[F_COUNT],
			       int64_t now, char **error_r)
{
	X509 *leaf = sk_X509_value(set->chain, 0);
	int n = sk_X509_num(set->chain);
	char *e = NULL;
	int r;

	if (ep_tls_check_time(leaf, now, paths[F_CERT], error_r) < 0)
		return -EINVAL;
	for (int i = 1; i < n; i++) {
		char *what = cert_what(paths[F_CERT], set->chain, i);

		r = ep_tls_check_time(sk_X509_value(set->chain, i), now, what, error_r);
		free(what);
		if (r < 0)
			return -EINVAL;
	}
	if (set->cas != NULL) {
		if (ep_tls_verify(set->chain, set->cas, "ssl_server", paths[F_CERT], &e) < 0) {
			*error_r = ep_strdup_printf("%s; the CA bundle is caFile %s", e, paths[F_CA]);
			free(e);
			return -EINVAL;
		}
		return 0;
	}
	for (int i = 0; i + 1 < n; i++) {
		X509 *cert = sk_X509_value(set->chain, i);
		X509 *issuer = sk_X509_value(set->chain, i + 1);

		if (X509_check_issued(issuer, cert) != X509_V_OK ||
		    X509_verify(cert, X509_get0_pubkey(issuer)) != 1) {
			char *a = cert_what(paths[F_CERT], set->chain, i);
			char *b = ep_x509_subject(issuer);

			*error_r = ep_strdup_printf("%s is not issued by the certificate that follows "
					   "it (%s): certFile must hold the serving certificate "
					   "first, then each issuer in turn", a, b ? b : "?");
			free(a);
			free(b);
			return -EINVAL;
		}
	}
	if (X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0) != 1) {
		*error_r = ep_strdup_printf("%s: the certificate is not for TLS servers (its "
				   "extendedKeyUsage or keyUsage exclude serverAuth)",
				   paths[F_CERT]);
		return -EINVAL;
	}
	return 0;
}

/*
 * The client CA bundle: CA certificates only (a client certificate there
 * would be a trust anchor for itself alone, and almost always a mistake),
 * at least one of them valid now.  Expired ones are accepted with a warning:
 * bundles carry an old CA for a while during a rotation.
 */
static int check_client_cas(struct files_set *set, char *const paths[F_COUNT], int64_t now,
			    char **error_r)
{
	int n = sk_X509_num(set->client_cas), valid = 0;
	char *expired = NULL;

	for (int i = 0; i < n; i++) {
		X509 *ca = sk_X509_value(set->client_cas, i);
		char *what = cert_what(paths[F_CLIENT_CA], set->client_cas, i);
		char *e = NULL;

		if (!(X509_get_extension_flags(ca) & EXFLAG_CA)) {
			*error_r = ep_strdup_printf("%s is not a CA certificate (no basicConstraints "
					   "CA:TRUE): clientCAFile holds the CAs that issue "
					   "client certificates", what);
			free(what);
			free(expired);
			return -EINVAL;
		}
		if (ep_tls_check_time(ca, now, what, &e) == 0)
			valid++;
		else
			append_note(&expired, e);
		free(what);
	}
	if (valid == 0) {
		*error_r = ep_strdup_printf("%s: no CA certificate in it is valid now: %s",
				   paths[F_CLIENT_CA], expired);
		free(expired);
		return -EINVAL;
	}
	if (expired != NULL)
		append_note(&set->warnings, ep_strdup_printf("%s (client certificates issued by it are "
						    "refused)", expired));
	free(expired);
	return 0;
}

/* Names in spec.tls.serverNames that the leaf does not cover: clients will refuse them. */
static void check_server_names(struct files_set *set, char *const paths[F_COUNT],
			       char *const *names, size_t n)
{
	X509 *leaf = sk_X509_value(set->chain, 0);

	for (size_t i = 0; i < n; i++) {
		int ok;

		if (strncmp(names[i], "*.", 2) == 0)
			continue; /* a wildcard is a pattern, not a name we can ask about */
		if (strchr(names[i], ':') != NULL || strspn(names[i], "0123456789.") ==
							     strlen(names[i]))
			ok = X509_check_ip_asc(leaf, names[i], 0) == 1;
		else
			ok = X509_check_host(leaf, names[i], 0, 0, NULL) == 1;
		if (!ok)
			append_note(&set->warnings,
				    ep_strdup_printf("%s does not cover spec.tls.serverNames entry \"%s\"",
					    paths[F_CERT], names[i]));
	}
}

/*
 * Read the files named in paths (paths[F_CA] may be NULL) and check them
 * as a set at time now (seconds since the epoch); names in server_names the
 * leaf does not cover become warnings.  Returns 0 and the set in *set_r, or
 * -EINVAL (a missing file included) with the reason, naming the file, in
 * *error_r (malloc'ed).
 */
static int files_set_load(char *const paths[F_COUNT], char *const *server_names,
			  size_t n_server_names, int64_t now, struct files_set **set_r,
			  char **error_r)
{
	struct files_set *set = calloc(1, sizeof(*set));
	EVP_PKEY *key = NULL;
	int r;

	if (set == NULL)
		abort();
	/* each file is read exactly once: what is checked is what gets published */
	for (int i = 0; i < F_COUNT; i++) {
		if (paths[i] == NULL)
			continue;
		r = ep_file_read(paths[i], FILE_MAX, &set->data[i], &set->len[i], error_r);
		if (r < 0)
			goto fail;
	}
	r = ep_pem_parse_certs(set->data[F_CERT], set->len[F_CERT], paths[F_CERT], &set->chain,
			       error_r);
	if (r < 0)
		goto fail;
	r = ep_pem_parse_key(set->data[F_KEY], set->len[F_KEY], paths[F_KEY], &key, error_r);
	if (r < 0)
		goto fail;
	r = ep_tls_check_pair(sk_X509_value(set->chain, 0), key, paths[F_CERT], paths[F_KEY],
			      error_r);
	EVP_PKEY_free(key);
	if (r < 0)
		goto fail;
	if (paths[F_CA] != NULL) {
		r = ep_pem_parse_certs(set->data[F_CA], set->len[F_CA], paths[F_CA], &set->cas,
				       error_r);
		if (r < 0)
			goto fail;
	}
	r = check_serving_chain(set, paths, now, error_r);
	if (r < 0)
		goto fail;
	r = ep_pem_parse_certs(set->data[F_CLIENT_CA], set->len[F_CLIENT_CA], paths[F_CLIENT_CA],
			       &set->client_cas, error_r);
	if (r < 0)
		goto fail;
	r = check_client_cas(set, paths, now, error_r);
	if (r < 0)
		goto fail;
	check_server_names(set, paths, server_names, n_server_names);
	*set_r = set;
	return 0;
fail:
	files_set_free(set);
	/* a missing or unreadable file is as wrong a configuration as a bad certificate */
	return r == -ENOMEM ? r : -EINVAL;
}

/* ---- what the files looked like when read ---------------------------------------------------- */

static int same_stat(const uv_stat_t *a, int a_err, const uv_stat_t *b, int b_err)
{
	if (a_err != 0 || b_err != 0)
		return a_err == b_err;
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mode == b->st_mode && a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/*
 * What each file looks like right before it is read (a blocking stat() on
 * the loop, like the reads that follow): a later poll that sees anything
 * else reads the files again, even when the change came before the read.
 */
static void remember_stats(struct files_source *s)
{
	for (int i = 0; i < F_COUNT; i++) {
		uv_fs_t req;

		if (s->paths[i] == NULL)
			continue;
		s->watch[i].err = uv_fs_stat(s->host->loop, &req, s->paths[i], NULL);
		if (s->watch[i].err >= 0) {
			s->watch[i].err = 0;
			s->watch[i].st = req.statbuf;
		}
		uv_fs_req_cleanup(&req);
	}
}

/* ---- publishing generations ------------------------------------------------------------------ */

static char *generation_dir(const struct files_source *s, uint64_t gen)
{
	return ep_strdup_printf("%s/" GEN_PREFIX "%llu", s->dir, (unsigned long long)gen);
}

/* Remove every generation directory but keep's (leftovers of earlier workers included). */
static void remove_other_generations(struct files_source *s, uint64_t keep)
{
	char keep_name[32];
	DIR *d = opendir(s->dir);
	struct dirent *de;

	if (d == NULL)
		return;
	snprintf(keep_name, sizeof(keep_name), GEN_PREFIX "%llu", (unsigned long long)keep);
	while ((de = readdir(d)) != NULL) {
		char *path, *e = NULL;

		if (strncmp(de->d_name, GEN_PREFIX, strlen(GEN_PREFIX)) != 0 ||
		    strcmp(de->d_name, keep_name) == 0)
			continue;
		path = ep_strdup_printf("%s/%s", s->dir, de->d_name);
		if (ep_dir_remove_tree(path, &e) < 0) {
			s->host->log(s->host, EP_LOG_WARNING, "cannot remove an old generation: %s",
				     e ? e : path);
			free(e);
		}
		free(path);
	}
	closedir(d);
}

/* What differs between the material in use (old, may be NULL) and set, for the log. */
static char *describe_change(const struct files_set *old, const struct files_set *set)
{
	X509 *leaf = sk_X509_value(set->chain, 0);
	int same_leaf = old != NULL && ep_x509_equal(sk_X509_value(old->chain, 0), leaf);
	char *text = NULL;

	if (!same_leaf) {
		char *serial = ep_x509_serial_hex(leaf), *subject = ep_x509_subject(leaf);
		char *was = NULL;
		char after[32];

		if (old != NULL) {
			char *old_serial = ep_x509_serial_hex(sk_X509_value(old->chain, 0));

			was = ep_strdup_printf(" (was %s)", old_serial ? old_serial : "?");
			free(old_serial);
		}
		ep_time_format(ep_x509_not_after(leaf), after, sizeof(after));
		append_note(&text, ep_strdup_printf("serving certificate %s, serial %s%s, not after %s",
					   subject ? subject : "?", serial ? serial : "?",
					   was ? was : "", after));
		free(was);
		free(serial);
		free(subject);
	} else if (!same_bytes(old, set, F_CERT)) {
		append_note(&text, ep_strdup("serving chain (intermediates) changed"));
	}
	if (same_leaf && !same_bytes(old, set, F_KEY))
		append_note(&text, ep_strdup("key file rewritten (the same key)"));
	if (old == NULL || !same_bytes(old, set, F_CLIENT_CA))
		append_note(&text, ep_strdup_printf("client CA bundle %sof %d certificate(s)",
					   old != NULL ? "changed, now " : "",
					   sk_X509_num(set->client_cas)));
	if (old != NULL && !same_bytes(old, set, F_CA))
		append_note(&text, ep_strdup("caFile changed"));
	return text;
}

/*
 * Write set into a new generation directory, publish it, then remove the
 * older generations (the host has called the backend's tls_changed() by
 * then).  Takes set over on success.
 */
static int publish(struct files_source *s, struct files_set *set, char **error_r)
{
	uint64_t gen = s->generation + 1;
	char *dir = generation_dir(s, gen);
	char *paths[F_COUNT] = { NULL };
	struct ep_tls_material m;
	char *e = NULL;
	int r;

	/* a leftover of an earlier worker or of a failed attempt: start clean */
	if (ep_dir_remove_tree(dir, &e) < 0) {
		*error_r = e;
		free(dir);
		return -EIO;
	}
	r = ep_dir_make(dir, 0700, error_r);
	for (int i = 0; r == 0 && i < F_COUNT; i++) {
		if (set->data[i] == NULL)
			continue;
		paths[i] = ep_strdup_printf("%s/%s", dir, published_names[i]);
		r = ep_file_write_atomic(paths[i], set->data[i], set->len[i],
					 i == F_KEY ? 0600 : 0644, error_r);
	}
	if (r < 0) {
		ep_dir_remove_tree(dir, &e);
		free(e);
		goto out;
	}
	memset(&m, 0, sizeof(m));
	m.cert_file = paths[F_CERT];
	m.key_file = paths[F_KEY];
	m.client_ca_file = paths[F_CLIENT_CA];
	m.ca_file = paths[F_CA];
	m.generation = gen;
	m.client_ca_changed = s->current == NULL || !same_bytes(s->current, set, F_CLIENT_CA);
	s->host->tls_publish(s->host, &m);
	/* the previous generation was in use until tls_publish() returned */
	files_set_free(s->current);
	s->current = set;
	s->generation = gen;
	remove_other_generations(s, gen);
out:
	for (int i = 0; i < F_COUNT; i++)
		free(paths[i]);
	free(dir);
	return r;
}

static void set_error(struct files_source *s, char *error)
{
	if (s->error == NULL || strcmp(s->error, error) != 0)
		s->error_since = (int64_t)time(NULL);
	free(s->error);
	s->error = error;
}

static void clear_error(struct files_source *s)
{
	free(s->error);
	s->error = NULL;
}

/*
 * Read the files again and publish them when they are valid and differ
 * from those in use; keep what is in use otherwise.  Returns 0 or a negative
 * errno code; the reason is in s->error.
 */
static int reload(struct files_source *s, const char *why)
{
	struct files_set *set;
	char *e = NULL, *change;
	int r;

	remember_stats(s);
	r = files_set_load(s->paths, s->server_names, s->n_server_names, (int64_t)time(NULL), &set,
			   &e);
	if (r < 0) {
		s->host->log(s->host, EP_LOG_WARNING, "%s: keeping the previous certificate: %s",
			     why, e);
		set_error(s, e);
		s->host->certs_changed(s->host);
		return r;
	}
	if (s->current != NULL && files_set_equal(s->current, set)) {
		files_set_free(set);
		s->host->log(s->host, EP_LOG_DEBUG, "%s: the files are unchanged", why);
		if (s->error != NULL) {
			s->host->log(s->host, EP_LOG_INFO, "%s: the files are valid again, "
				     "the same as those in use", why);
			clear_error(s);
			s->host->certs_changed(s->host);
		}
		return 0;
	}
	change = describe_change(s->current, set);
	if (set->warnings != NULL)
		s->host->log(s->host, EP_LOG_WARNING, "%s", set->warnings);
	r = publish(s, set, &e);
	if (r < 0) {
		s->host->log(s->host, EP_LOG_ERR, "%s: keeping the previous certificate: cannot "
			     "copy the new files: %s", why, e);
		set_error(s, ep_strdup_printf("cannot copy the new files: %s", e));
		free(e);
		files_set_free(set);
	} else {
		s->host->log(s->host, EP_LOG_INFO, "%s: generation %llu in use: %s", why,
			     (unsigned long long)s->generation, change ? change : "");
		clear_error(s);
	}
	free(change);
	s->host->certs_changed(s->host);
	return r;
}

/* ---- watching -------------------------------------------------------------------------------- */

static void on_debounce(uv_timer_t *t)
{
	struct files_source *s = t->data;

	if (!s->stopping)
		reload(s, "the files changed");
}

static void on_stat(uv_fs_t *req)
{
	struct files_source *s = req->data;
	struct file_watch *w =
		(struct file_watch *)((char *)req - offsetof(struct file_watch, req));
	int err = req->result < 0 ? (int)req->result : 0;

	w->pending = 0;
	s->stats_pending--;
	if (!s->stopping && !same_stat(&w->st, w->err, &req->statbuf, err)) {
		s->host->log(s->host, EP_LOG_DEBUG, "%s changed", s->paths[w - s->watch]);
		w->st = req->statbuf;
		w->err = err;
		/* restarted on every change: the set is read once the writer is done */
		uv_timer_start(&s->debounce, on_debounce, DEBOUNCE_MS, 0);
	}
	uv_fs_req_cleanup(req);
}

static void on_poll(uv_timer_t *t)
{
	struct files_source *s = t->data;

	for (int i = 0; i < F_COUNT; i++) {
		struct file_watch *w = &s->watch[i];

		if (s->paths[i] == NULL || w->pending)
			continue;
		w->req.data = s;
		if (uv_fs_stat(s->host->loop, &w->req, s->paths[i], on_stat) == 0) {
			w->pending = 1;
			s->stats_pending++;
		}
	}
}

static void start_watching(struct files_source *s)
{
	uv_timer_init(s->host->loop, &s->poll);
	uv_timer_init(s->host->loop, &s->debounce);
	s->poll.data = s->debounce.data = s;
	s->handles_open = 2;
	s->watching = 1;
	uv_timer_start(&s->poll, on_poll, s->poll_ms, s->poll_ms);
}

static void on_handle_closed(uv_handle_t *h)
{
	struct files_source *s = h->data;

	s->handles_open--;
}

/* ---- plugin entry points --------------------------------------------------------------------- */

/* certs.files, parsed by the host from this table (options_parse) */
static const struct ep_option files_options[] = {
	{ "poll_interval", EP_OPT_DURATION, 0, offsetof(struct files_source, poll_ms), MIN_POLL_MS,
	  1e15, NULL, "between checks of the files for changes" },
	{ NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL },
};

static int parse_options(struct files_source *s, const char **error_r)
{
	s->poll_ms = DEFAULT_POLL_MS;
	return s->host->options_parse(s->host, s, error_r) < 0 ? -EINVAL : 0;
}

static int parse_tls(struct files_source *s, const char **error_r)
{
	static char msg[300];
	cJSON *tls = s->host->tenant->tls_json ? cJSON_Parse(s->host->tenant->tls_json) : NULL;
	const cJSON *files = cJSON_GetObjectItemCaseSensitive(tls, "files");
	const cJSON *names = cJSON_GetObjectItemCaseSensitive(tls, "serverNames");
	const cJSON *e;
	int r = 0;

	if (!cJSON_IsObject(files)) {
		*error_r = "the files certificate source needs spec.tls.files {\"certFile\", "
			   "\"keyFile\", \"clientCAFile\"}";
		r = -EINVAL;
		goto out;
	}
	for (int i = 0; i < F_COUNT; i++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(files, spec_names[i]);

		if (cJSON_IsString(v) && v->valuestring[0] == '/') {
			s->paths[i] = ep_strdup(v->valuestring);
		} else if (i != F_CA || (v != NULL && !cJSON_IsNull(v))) {
			snprintf(msg, sizeof(msg), "spec.tls.files.%s: expected an absolute path%s",
				 spec_names[i], i == F_CA ? " or null" : "");
			*error_r = msg;
			r = -EINVAL;
			goto out;
		}
	}
	if (cJSON_IsArray(names)) {
		s->server_names = calloc((size_t)cJSON_GetArraySize(names) + 1, sizeof(char *));
		if (s->server_names == NULL)
			abort();
		cJSON_ArrayForEach(e, names)
		{
			if (cJSON_IsString(e))
				s->server_names[s->n_server_names++] = ep_strdup(e->valuestring);
		}
	}
out:
	cJSON_Delete(tls);
	return r;
}

static void free_source(struct files_source *s)
{
	for (int i = 0; i < F_COUNT; i++)
		free(s->paths[i]);
	for (size_t i = 0; i < s->n_server_names; i++)
		free(s->server_names[i]);
	free(s->server_names);
	free(s->dir);
	files_set_free(s->current);
	free(s->error);
	free(s);
}

static int files_init(struct ep_host *host, void **state_r, const char **error_r)
{
	struct files_source *s = calloc(1, sizeof(*s));
	int r;

	if (s == NULL)
		return -ENOMEM;
	s->host = host;
	if (host->tenant->tls_json == NULL) {
		*error_r = "TLS is off for this tenant (spec.tls.enabled false): the files "
			   "certificate source has nothing to provide";
		free_source(s);
		return -EINVAL;
	}
	r = parse_options(s, error_r);
	if (r == 0)
		r = parse_tls(s, error_r);
	if (r < 0) {
		free_source(s);
		return r;
	}
	s->dir = ep_strdup_printf("%s/files", host->tenant->state_dir);
	*state_r = s;
	return 0;
}

/* The first refresh publishes generation 1 or fails the tenant; later ones are reloads. */
static int files_refresh(void *state, const char **error_r)
{
	struct files_source *s = state;
	struct files_set *set = NULL;
	char *e = NULL, *change;
	int r;

	if (s->current != NULL) {
		r = reload(s, "refresh");
		*error_r = s->error;
		return r;
	}
	remember_stats(s);
	r = files_set_load(s->paths, s->server_names, s->n_server_names, (int64_t)time(NULL), &set,
			   &e);
	if (r < 0) {
		set_error(s, e);
		*error_r = s->error;
		return r;
	}
	if (set->warnings != NULL)
		s->host->log(s->host, EP_LOG_WARNING, "%s", set->warnings);
	change = describe_change(NULL, set);
	r = ep_dir_make(s->dir, 0700, &e);
	if (r == 0)
		r = publish(s, set, &e);
	if (r < 0) {
		files_set_free(set);
		set_error(s, ep_strdup_printf("cannot copy the files into %s: %s", s->dir, e));
		free(e);
		free(change);
		*error_r = s->error;
		return r;
	}
	s->host->log(s->host, EP_LOG_INFO, "generation %llu in use: %s",
		     (unsigned long long)s->generation, change ? change : "");
	free(change);
	clear_error(s);
	if (!s->watching && !s->stopping)
		start_watching(s);
	return 0;
}

static void files_stop(void *state)
{
	struct files_source *s = state;

	if (s->stopping)
		return;
	s->stopping = 1;
	if (!s->watching)
		return;
	/* a stat() still on the thread pool finishes on its own; on_stat() then does nothing */
	uv_close((uv_handle_t *)&s->poll, on_handle_closed);
	uv_close((uv_handle_t *)&s->debounce, on_handle_closed);
}

static void files_fini(void *state)
{
	struct files_source *s = state;

	if (s->watching && (s->handles_open > 0 || s->stats_pending > 0)) {
		/* the host skipped stop(), or did not run the loop since: finish here */
		files_stop(s);
		while ((s->handles_open > 0 || s->stats_pending > 0) &&
		       uv_run(s->host->loop, UV_RUN_ONCE) != 0)
			;
	}
	free_source(s);
}

/* Add one certificate's facts to the describe() array. */
static void describe_cert(cJSON *a, const char *role, X509 *cert, const char *file, int64_t now)
{
	cJSON *o = cJSON_CreateObject();
	char *subject = ep_x509_subject(cert), *issuer = ep_x509_issuer(cert);
	char *serial = ep_x509_serial_hex(cert);
	char before[32], after[32];
	int64_t nb = ep_x509_not_before(cert), na = ep_x509_not_after(cert);

	ep_time_format(nb, before, sizeof(before));
	ep_time_format(na, after, sizeof(after));
	cJSON_AddStringToObject(o, "role", role);
	cJSON_AddStringToObject(o, "subject", subject ? subject : "");
	cJSON_AddStringToObject(o, "serial", serial ? serial : "");
	cJSON_AddStringToObject(o, "issuer", issuer ? issuer : "");
	cJSON_AddStringToObject(o, "not_before", before);
	cJSON_AddStringToObject(o, "not_after", after);
	cJSON_AddStringToObject(o, "file", file);
	if (now > na)
		cJSON_AddStringToObject(o, "state", "expired");
	else if (now < nb)
		cJSON_AddStringToObject(o, "state", "not yet valid");
	cJSON_AddItemToArray(a, o);
	free(subject);
	free(issuer);
	free(serial);
}

/*
 * The certificates in use: the serving leaf, its intermediates, the client
 * CAs and the caFile's CAs, each with the operator's file it came from; and
 * when the files on disk are not in use, an entry {"role": "error", "error",
 * "since"} saying why.
 */
static char *files_describe(void *state)
{
	struct files_source *s = state;
	cJSON *a = cJSON_CreateArray();
	int64_t now = (int64_t)time(NULL);
	char *text;

	if (s->current != NULL) {
		const struct files_set *c = s->current;

		describe_cert(a, "serving", sk_X509_value(c->chain, 0), s->paths[F_CERT], now);
		for (int i = 1; i < sk_X509_num(c->chain); i++)
			describe_cert(a, "intermediate", sk_X509_value(c->chain, i),
				      s->paths[F_CERT], now);
		for (int i = 0; i < sk_X509_num(c->client_cas); i++)
			describe_cert(a, "client-ca", sk_X509_value(c->client_cas, i),
				      s->paths[F_CLIENT_CA], now);
		for (int i = 0; c->cas != NULL && i < sk_X509_num(c->cas); i++)
			describe_cert(a, "ca", sk_X509_value(c->cas, i), s->paths[F_CA], now);
	}
	if (s->error != NULL) {
		cJSON *o = cJSON_CreateObject();
		char since[32];

		ep_time_format(s->error_since, since, sizeof(since));
		cJSON_AddStringToObject(o, "role", "error");
		cJSON_AddStringToObject(o, "error", s->error);
		cJSON_AddStringToObject(o, "since", since);
		cJSON_AddItemToArray(a, o);
	}
	text = cJSON_PrintUnformatted(a);
	cJSON_Delete(a);
	return text;
}

/* For files, a rotation is someone else's job: re-read them now. */
static int files_rotate(void *state, const char **error_r)
{
	struct files_source *s = state;
	int r = reload(s, "etcdproxyctl rotate");

	if (r < 0)
		*error_r = s->error;
	return r;
}

static const struct ep_certs_ops files_ops = {
	.refresh = files_refresh,
	.stop = files_stop,
	.describe = files_describe,
	.rotate = files_rotate,
	.issue_client = NULL, /* the operator's CA issues client certificates */
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_CERTS,
	.name = "files",
	.description = "PEM files kept by the operator, checked, copied and watched",
	.init = files_init,
	.fini = files_fini,
	.ops = &files_ops,
	.options = files_options,
};
