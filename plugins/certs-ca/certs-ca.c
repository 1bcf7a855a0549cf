/*
 * The "ca" certificate source: a built-in CA per tenant that issues and
 * rotates the proxy's serving certificate and the client certificates of the
 * tenant's API servers, so that no client ever sees a failed handshake.
 *
 * Two CA chains per tenant: the serving CA signs the proxy's serving
 * certificate (clients trust the serving CA bundle, published as ca.crt); the
 * client CA signs client certificates (the proxy trusts the client CA bundle).
 *
 * Rotation order for a CA change (rotation.c style, all in reconcile()):
 *   1. a new CA joins the bundles next to the old one, which are published at
 *      once (ca.crt in every outputDir, the proxy's trusted client CAs);
 *   2. after the grace period the new CA becomes the signer and the leaf
 *      certificates it should sign are renewed;
 *   3. the old CA leaves the bundles only when no live certificate it signed
 *      remains: not a current one, not an issued one before its expiry, and
 *      not a replaced client certificate during the grace period after its
 *      replacement (its API server may not have picked up the new one yet).
 * Leaf certificates are renewed when renew_fraction of their validity has
 * passed, a CA when ca_renew_fraction of its own has; a leaf never outlives
 * the CA that signed it.
 *
 * Storage, crash-safe: state_dir/ca/gen-N/ holds one complete generation
 * (every CA with its key, the leaves, the two bundles, state.json); a new
 * generation is written and fsync'ed beside the old one, then the symlink
 * state_dir/ca/current is swapped to it with one rename.  A crash leaves
 * either generation complete; leftovers are removed at start.  Output
 * directories are replaced the way the kubelet replaces a Secret volume
 * (ep_publish_files), and republished at every start.
 *
 * Options (the global "certs": {"ca": {...}}):
 *   "key_type": "ecdsa-p256" (default) or "rsa-2048"
 *   "renew_fraction": leaf certificates are renewed after this part of their
 *       validity (default 0.6667)
 *   "ca_renew_fraction": the same for CAs (default 0.6667)
 *   "grace": how long a new CA is published before it signs (default "10m")
 *
 * Shared across nodes (the Kubernetes source, doc/architecture.md): every
 * generation also holds shared.json, the CAs with their keys and publication
 * times; the supervisor copies the leader's into a Secret and hands it to the
 * other nodes as state_dir/ca/cluster.json, {"version": 1, "lead": false,
 * "ca": <a shared.json>}.  Such a node follows: it takes those CAs as they
 * are, makes, publishes and retires none itself, and only issues its own
 * leaves from them (its serving certificate names its own address).  With
 * "lead": true the node rotates the CAs itself, after taking "ca" when given
 * (a new leader starts from its predecessor's CAs); it then keeps a replaced
 * serving certificate's CA trusted SHARED_SWITCH_MS longer, for the nodes
 * whose clocks are a little behind.  No cluster.json: the CAs are this
 * node's own, as without a cluster.
 *
 * Test hook: with EP_TEST_CA_PAUSE=FILE in the environment, the
 * plugin writes "paused" into FILE and waits for another content, right
 * before it switches to a generation other than the first (once: not when
 * FILE exists already), so a test can kill it mid-rotation.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

#include <etcdproxy/plugin.h>

#include "ep-tls.h"

#define CA_MAX 8        /* CAs of one kind kept at once (old, signing, pending) */
#define STATE_VERSION 1
#define SHARED_VERSION 1
#define CLUSTER_POLL_MS 1000    /* cluster.json is looked at this often */
#define SHARED_SWITCH_MS 60000  /* a leader keeps a switched serving CA this long */
#define MIN_WAKE_MS 20
#define MAX_WAKE_MS (3600 * 1000)

enum kind { SERVING = 0, CLIENT = 1 };
static const char *const kind_name[] = { "serving", "client" };

/* A certificate with its key (NULL for records of certificates issued on demand). */
struct cert {
	X509 *x;
	EVP_PKEY *key;
	char *serial; /* hex */
};

struct ca {
	struct cert c;
	int64_t published_ms; /* in the bundles since; signs from published_ms + grace */
	int unpublished;      /* made, but not yet in every bundle and output: the grace waits */
};

/*
 * Where a client certificate, its key and the serving CA bundle are handed
 * to the tenant's API server.  Today a directory (spec.tls.clientCertificates
 * outputDir); the Kubernetes Secret and ConfigMap that spec.clientCertSecret
 * and spec.caCertConfigMap name are the next kind, behind the same call.
 */
struct cert_output {
	const char *kind; /* "directory" */
	char *where;      /* the directory */
	/* Replace tls.crt, tls.key and ca.crt as one; *changed_r: 1 when they differed. */
	int (*publish)(struct cert_output *out, const struct ep_pub_file *files, size_t n,
		       int *changed_r, char **error_r);
};

static int publish_directory(struct cert_output *out, const struct ep_pub_file *files, size_t n,
			     int *changed_r, char **error_r)
{
	return ep_publish_files(out->where, files, n, changed_r, error_r);
}

static void output_directory(struct cert_output *out, const char *dir)
{
	out->kind = "directory";
	out->where = strdup(dir);
	if (out->where == NULL)
		abort();
	out->publish = publish_directory;
}

struct client_leaf {
	char *name;
	struct cert_output out;
	struct cert c;
};

/* A certificate no longer current that may still be in use until `until`. */
struct record {
	char *serial;
	char *signer; /* the CA's serial */
	char *cn;
	int64_t until_ms;
};

struct ca_state {
	struct ep_host *host;
	char *dir;       /* state_dir/ca */
	char *tenant;
	char *listen;
	char **server_names;
	size_t n_server_names;
	uint64_t validity_ms[3]; /* signing, serving, client */

	/* options */
	int rsa;
	double renew_fraction, ca_renew_fraction;
	uint64_t grace_ms;

	/* the state */
	struct ca cas[2][CA_MAX];
	size_t n_cas[2];
	struct cert serving;
	char *serving_sans; /* what the serving certificate was made for */
	struct client_leaf *clients;
	size_t n_clients;
	struct record *records; /* replaced and issued certificates still counted as live */
	size_t n_records;
	uint64_t generation;
	int64_t force_rotation; /* etcdproxyctl rotate: new CAs at the next reconcile */

	/* sharing the CAs with other nodes (cluster.json) */
	int shared;            /* cluster.json exists */
	int follow;            /* another node leads: its CAs, as they are */
	uint64_t own_grace_ms; /* the option; a follower uses the leader's */
	struct stat cluster_stat;
	int cluster_known;     /* cluster_stat is of the file last read */
	char *cluster_error;   /* what is wrong with it, until it changes */
	struct record *leader_leaves; /* a follower's: the leader's client certificates */
	size_t n_leader_leaves;
	char *took;            /* the fingerprint of the CAs this node took as the leader */
	uv_timer_t cluster_timer;
	int cluster_timer_open;

	char *published_client_bundle; /* to tell backends when it changed */
	int dirty;                     /* the state in memory is newer than on disk */
	int outputs_dirty;             /* an output directory still waits for the current state */
	int64_t last_run_ms;           /* the time reconcile() last decided at */
	char *last_error;
	uv_timer_t timer;
	int timer_open;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The clock every decision uses; the unit test turns it. */
static int64_t (*clock_ms)(void) = now_ms;

static void fmt_time_ms(int64_t ms, char *buf, size_t size)
{
	ep_time_format(ms / 1000, buf, size);
}

static void cert_free(struct cert *c)
{
	X509_free(c->x);
	EVP_PKEY_free(c->key);
	free(c->serial);
	memset(c, 0, sizeof(*c));
}

static int64_t nb_ms(const struct cert *c)
{
	return ep_x509_not_before(c->x) * 1000;
}

static int64_t na_ms(const struct cert *c)
{
	return ep_x509_not_after(c->x) * 1000;
}

/* When a certificate is due for renewal: after fraction of its validity. */
static int64_t renew_at(const struct cert *c, double fraction)
{
	return nb_ms(c) + (int64_t)((double)(na_ms(c) - nb_ms(c)) * fraction);
}

static int issued_by(const struct cert *leaf, const struct ca *ca)
{
	return X509_check_issued(ca->c.x, leaf->x) == X509_V_OK;
}

static void record_free(struct record *r)
{
	free(r->serial);
	free(r->signer);
	free(r->cn);
}

static void add_record(struct ca_state *st, const char *serial, const char *signer,
		       const char *cn, int64_t until)
{
	struct record *r;

	st->records = realloc(st->records, sizeof(*st->records) * (st->n_records + 1));
	if (st->records == NULL)
		abort();
	r = &st->records[st->n_records++];
	r->serial = ep_strdup(serial);
	r->signer = ep_strdup(signer);
	r->cn = ep_strdup(cn);
	r->until_ms = until;
}

/* ---- making keys and certificates ---------------------------------------------------------- */

static EVP_PKEY *new_key(const struct ca_state *st)
{
	EVP_PKEY *k = st->rsa ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");

	if (k == NULL)
		abort(); /* only an allocation failure or a broken libcrypto get here */
	return k;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (ext == NULL)
		return -1;
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return 0;
}

enum role { ROLE_CA, ROLE_SERVER, ROLE_CLIENT };

/*
 * A certificate for key, valid [nb, na] (ms, rounded to seconds), signed by
 * issuer (NULL: self-signed).  sans: subjectAltName text for servers.
 */
static X509 *make_cert(const struct ca_state *st, EVP_PKEY *key, const struct cert *issuer,
		       const char *cn, enum role role, int64_t nb, int64_t na, const char *sans)
{
	X509 *x = X509_new();
	X509_NAME *name = X509_NAME_new();
	unsigned char serial[16];
	BIGNUM *bn;
	int ok = 1;

	X509_set_version(x, 2);
	/* a random positive 127-bit serial, never zero */
	do {
		if (RAND_bytes(serial, sizeof(serial)) != 1)
			abort();
		serial[0] &= 0x7f;
	} while (serial[0] == 0);
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	BN_free(bn);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"etcdproxy", -1,
				   -1, 0);
	X509_NAME_add_entry_by_txt(name, "OU", MBSTRING_UTF8, (const unsigned char *)st->tenant, -1,
				   -1, 0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
	X509_set_subject_name(x, name);
	X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer->x) : name);
	X509_NAME_free(name);
	ASN1_TIME_set(X509_getm_notBefore(x), (time_t)(nb / 1000));
	ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(na / 1000));
	X509_set_pubkey(x, key);

	X509 *iss = issuer != NULL ? issuer->x : x;
	ok &= add_ext(x, iss, NID_subject_key_identifier, "hash") == 0;
	ok &= add_ext(x, iss, NID_authority_key_identifier, "keyid:always") == 0;
	switch (role) {
	case ROLE_CA:
		ok &= add_ext(x, iss, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") == 0;
		ok &= add_ext(x, iss, NID_key_usage, "critical,keyCertSign,cRLSign,digitalSignature") == 0;
		break;
	case ROLE_SERVER:
	case ROLE_CLIENT:
		ok &= add_ext(x, iss, NID_basic_constraints, "critical,CA:FALSE") == 0;
		ok &= add_ext(x, iss, NID_key_usage,
			      st->rsa ? "critical,digitalSignature,keyEncipherment"
				      : "critical,digitalSignature") == 0;
		ok &= add_ext(x, iss, NID_ext_key_usage,
			      role == ROLE_SERVER ? "serverAuth" : "clientAuth") == 0;
		if (sans != NULL && sans[0] != '\0')
			ok &= add_ext(x, iss, NID_subject_alt_name, sans) == 0;
		break;
	}
	if (!ok || X509_sign(x, issuer != NULL ? issuer->key : key, EVP_sha256()) == 0)
		abort(); /* our own extension texts: only a broken libcrypto fails here */
	return x;
}

static void cert_make(const struct ca_state *st, struct cert *out, const struct cert *issuer,
		      const char *cn, enum role role, int64_t now, uint64_t validity,
		      const char *sans)
{
	int64_t na = now + (int64_t)validity;
	/*
	 * Valid from a little before now, so that a peer whose clock is a
	 * little behind ours does not refuse it as not yet valid (a tenth of
	 * the validity, at most a minute), but never before the issuer.
	 */
	int64_t margin = (int64_t)validity / 10 < 60000 ? (int64_t)validity / 10 : 60000;
	int64_t nb = now - margin;

	if (issuer != NULL && nb < nb_ms(issuer))
		nb = nb_ms(issuer);
	/* a leaf never outlives its CA */
	if (issuer != NULL && na > na_ms(issuer))
		na = na_ms(issuer);
	out->key = new_key(st);
	out->x = make_cert(st, out->key, issuer, cn, role, nb, na, sans);
	out->serial = ep_x509_serial_hex(out->x);
}

/* 1 when item is one of the comma-separated entries of list. */
static int san_listed(const char *list, const char *item)
{
	size_t n = strlen(item);

	for (const char *p = list; *p != '\0';) {
		const char *end = strchr(p, ',');
		size_t len = end != NULL ? (size_t)(end - p) : strlen(p);

		if (len == n && memcmp(p, item, n) == 0)
			return 1;
		if (end == NULL)
			break;
		p = end + 1;
	}
	return 0;
}

/* The serving certificate's names: every listen address, plus spec.tls.serverNames. */
static char *wanted_sans(const struct ca_state *st)
{
	struct ep_listen_addr la;
	const char *why;
	char *out;
	size_t cap = 1024, len = 0;
	struct in_addr a4;
	struct in6_addr a6;

	out = ep_malloc0(cap);
#define ADD(...)                                                                             \
	do {                                                                                 \
		char *item_ = ep_strdup_printf(__VA_ARGS__);                                          \
		if (!san_listed(out, item_)) {                                               \
			while (len + strlen(item_) + 2 > cap)                                \
				out = realloc(out, cap *= 2);                                \
			len += (size_t)sprintf(out + len, "%s%s", len ? "," : "", item_);    \
		}                                                                            \
		free(item_);                                                                 \
	} while (0)

	if (ep_listen_parse(st->listen, &la, &why) < 0 || la.family == AF_UNIX) {
		/* a Unix socket (the supervisor validated the address) */
		ADD("DNS:localhost");
	} else {
		const char *host = la.host;

		if (strcmp(host, "localhost") == 0) {
			ADD("DNS:localhost");
			ADD("IP:127.0.0.1");
			ADD("IP:::1");
		} else if ((la.family == AF_INET &&
			    ((struct sockaddr_in *)&la.sa)->sin_addr.s_addr == INADDR_ANY) ||
			   (la.family == AF_INET6 &&
			    IN6_IS_ADDR_UNSPECIFIED(&((struct sockaddr_in6 *)&la.sa)->sin6_addr))) {
			/* every address of the node: its name and the loopbacks */
			char node[256];

			if (gethostname(node, sizeof(node)) == 0 && node[0] != '\0')
				ADD("DNS:%s", node);
			ADD("DNS:localhost");
			ADD("IP:127.0.0.1");
			ADD("IP:::1");
		} else {
			ADD("IP:%s", host);
			if (ep_listen_is_local(&la))
				ADD("DNS:localhost");
		}
	}
	for (size_t i = 0; i < st->n_server_names; i++) {
		if (inet_pton(AF_INET, st->server_names[i], &a4) == 1 ||
		    inet_pton(AF_INET6, st->server_names[i], &a6) == 1)
			ADD("IP:%s", st->server_names[i]);
		else
			ADD("DNS:%s", st->server_names[i]);
	}
#undef ADD
	return out;
}

/* ---- the state on disk ---------------------------------------------------------------------- */

static char *bundle_text(const struct ca_state *st, enum kind k)
{
	size_t total = 0, len;
	char *out = ep_malloc0(1);

	for (size_t i = 0; i < st->n_cas[k]; i++) {
		char *pem = ep_pem_cert(st->cas[k][i].c.x, &len);

		out = realloc(out, total + len + 1);
		memcpy(out + total, pem, len + 1);
		total += len;
		free(pem);
	}
	return out;
}

static int write_pem_pair(const char *dir, const char *base, const struct cert *c, char **error_r)
{
	size_t len;
	char *pem = ep_pem_cert(c->x, &len), *p;
	int r;

	p = ep_strdup_printf("%s/%s.crt", dir, base);
	r = ep_file_write_atomic(p, pem, len, 0644, error_r);
	free(p);
	free(pem);
	if (r < 0 || c->key == NULL)
		return r;
	pem = ep_pem_key(c->key, &len);
	p = ep_strdup_printf("%s/%s.key", dir, base);
	r = ep_file_write_atomic(p, pem, len, 0600, error_r);
	OPENSSL_cleanse(pem, len);
	free(pem);
	free(p);
	return r;
}

static int write_text(const char *dir, const char *name, const char *text, char **error_r)
{
	char *p = ep_strdup_printf("%s/%s", dir, name);
	int r = ep_file_write_atomic(p, text, strlen(text), 0644, error_r);

	free(p);
	return r;
}

/*
 * The test hook (EP_TEST_CA_PAUSE=FILE): once, when FILE does not
 * exist yet, write "paused" into it and wait, blocking, until its content
 * changes; the test kills the worker meanwhile.
 */
static void test_pause(struct ca_state *st, const char *where)
{
	const char *f = getenv("EP_TEST_CA_PAUSE");
	char *err = NULL, *data = NULL;

	if (f == NULL || f[0] != '/' || st->generation <= 1 || access(f, F_OK) == 0)
		return;
	st->host->log(st->host, EP_LOG_WARNING, "test hook: paused %s generation %llu until %s "
		      "changes", where, (unsigned long long)st->generation, f);
	if (ep_file_write_atomic(f, "paused", 6, 0644, &err) < 0) {
		free(err);
		return;
	}
	for (;;) {
		usleep(20000);
		if (ep_file_read(f, 64, &data, NULL, &err) < 0) {
			free(err);
			break;
		}
		int paused = strcmp(data, "paused") == 0;

		free(data);
		if (!paused)
			break;
	}
}

static char *state_json(const struct ca_state *st)
{
	cJSON *o = cJSON_CreateObject(), *pub, *recs;
	char *text;

	cJSON_AddNumberToObject(o, "version", STATE_VERSION);
	cJSON_AddNumberToObject(o, "generation", (double)st->generation);
	cJSON_AddStringToObject(o, "serving_sans", st->serving_sans ? st->serving_sans : "");
	pub = cJSON_AddObjectToObject(o, "published_ms");
	for (int k = 0; k < 2; k++)
		for (size_t i = 0; i < st->n_cas[k]; i++)
			cJSON_AddNumberToObject(pub, st->cas[k][i].c.serial,
						st->cas[k][i].unpublished
							? -1.0
							: (double)st->cas[k][i].published_ms);
	recs = cJSON_AddArrayToObject(o, "records");
	for (size_t i = 0; i < st->n_records; i++) {
		cJSON *r = cJSON_CreateObject();

		cJSON_AddStringToObject(r, "serial", st->records[i].serial);
		cJSON_AddStringToObject(r, "signer", st->records[i].signer);
		cJSON_AddStringToObject(r, "cn", st->records[i].cn);
		cJSON_AddNumberToObject(r, "until_ms", (double)st->records[i].until_ms);
		cJSON_AddItemToArray(recs, r);
	}
	text = cJSON_Print(o);
	cJSON_Delete(o);
	return text;
}

/*
 * shared.json: what other nodes need to serve with the same CAs, {"version",
 * "tenant", "grace_ms", "serving": [...], "client": [...]}, each CA
 * {"serial", "published_ms" (-1: not yet in every output), "cert", "key"},
 * oldest first.  It holds the CAs' keys: mode 0600, like them.
 */
static char *shared_json(const struct ca_state *st)
{
	cJSON *o = cJSON_CreateObject();
	char *text;

	cJSON_AddNumberToObject(o, "version", SHARED_VERSION);
	cJSON_AddStringToObject(o, "tenant", st->tenant);
	cJSON_AddNumberToObject(o, "grace_ms", (double)st->grace_ms);
	/* the supervisor's sign that the Secret's CAs are this node's now, changed or not */
	if (st->took != NULL)
		cJSON_AddStringToObject(o, "took", st->took);
	for (int k = 0; k < 2; k++) {
		cJSON *a = cJSON_AddArrayToObject(o, kind_name[k]);

		for (size_t i = 0; i < st->n_cas[k]; i++) {
			const struct ca *ca = &st->cas[k][i];
			cJSON *e = cJSON_CreateObject();
			size_t len;
			char *pem;

			cJSON_AddStringToObject(e, "serial", ca->c.serial);
			cJSON_AddNumberToObject(e, "published_ms",
						ca->unpublished ? -1.0 : (double)ca->published_ms);
			pem = ep_pem_cert(ca->c.x, &len);
			cJSON_AddStringToObject(e, "cert", pem);
			free(pem);
			pem = ep_pem_key(ca->c.key, &len);
			cJSON_AddStringToObject(e, "key", pem);
			OPENSSL_cleanse(pem, len);
			free(pem);
			cJSON_AddItemToArray(a, e);
		}
	}
	/* what keeps a CA trusted: a successor leader must not retire one still in use */
	for (int l = 0; l < 2; l++) {
		cJSON *a = cJSON_AddArrayToObject(o, l == 0 ? "records" : "leaves");
		size_t n = l == 0 ? st->n_records : st->n_clients;

		for (size_t i = 0; i < n; i++) {
			const struct client_leaf *cl = l == 1 ? &st->clients[i] : NULL;
			const struct ca *sig = NULL;
			cJSON *e;

			if (cl != NULL) {
				if (cl->c.x == NULL)
					continue;
				for (size_t j = 0; j < st->n_cas[CLIENT] && sig == NULL; j++)
					if (issued_by(&cl->c, &st->cas[CLIENT][j]))
						sig = &st->cas[CLIENT][j];
				if (sig == NULL)
					continue;
			}
			e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "serial", cl ? cl->c.serial : st->records[i].serial);
			cJSON_AddStringToObject(e, "signer", cl ? sig->c.serial : st->records[i].signer);
			cJSON_AddStringToObject(e, "cn", cl ? cl->name : st->records[i].cn);
			cJSON_AddNumberToObject(e, "until_ms", cl ? (double)na_ms(&cl->c)
								  : (double)st->records[i].until_ms);
			cJSON_AddItemToArray(a, e);
		}
	}
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

/* Remove every generation but current's target and keep (the previous one, or NULL). */
static void remove_old_generations(struct ca_state *st, const char *keep1, const char *keep2)
{
	DIR *d = opendir(st->dir);
	struct dirent *e;

	while (d != NULL && (e = readdir(d)) != NULL) {
		if (strncmp(e->d_name, "gen-", 4) != 0 || (keep1 && strcmp(e->d_name, keep1) == 0) ||
		    (keep2 && strcmp(e->d_name, keep2) == 0))
			continue;
		char *p = ep_strdup_printf("%s/%s", st->dir, e->d_name), *err = NULL;

		if (ep_dir_remove_tree(p, &err) < 0) {
			st->host->log(st->host, EP_LOG_WARNING, "cannot remove %s", err);
			free(err);
		}
		free(p);
	}
	if (d != NULL)
		closedir(d);
}

static char *current_target(const struct ca_state *st)
{
	char *link = ep_strdup_printf("%s/current", st->dir), buf[64];
	ssize_t n = readlink(link, buf, sizeof(buf) - 1);

	free(link);
	if (n <= 0)
		return NULL;
	buf[n] = '\0';
	return ep_strdup(buf);
}

/* Write the whole state as a new generation and switch current to it. */
static int write_generation(struct ca_state *st, char **error_r)
{
	char *prev = current_target(st);
	char *name, *gen, *sub, *text, *tmp, *link;
	int r;

	st->generation++;
	name = ep_strdup_printf("gen-%06llu", (unsigned long long)st->generation);
	gen = ep_strdup_printf("%s/%s", st->dir, name);
	{
		char *ignored = NULL;

		ep_dir_remove_tree(gen, &ignored); /* a leftover of a crash */
		free(ignored);
	}
	if ((r = ep_dir_make(gen, 0700, error_r)) < 0)
		goto out;
	for (int k = 0; k < 2; k++) {
		for (size_t i = 0; i < st->n_cas[k]; i++) {
			char *base = ep_strdup_printf("%s-ca.%s", kind_name[k], st->cas[k][i].c.serial);

			r = write_pem_pair(gen, base, &st->cas[k][i].c, error_r);
			free(base);
			if (r < 0)
				goto out;
		}
		text = bundle_text(st, (enum kind)k);
		sub = ep_strdup_printf("%s-ca-bundle.crt", kind_name[k]);
		r = write_text(gen, sub, text, error_r);
		free(sub);
		free(text);
		if (r < 0)
			goto out;
	}
	if ((r = write_pem_pair(gen, "serving", &st->serving, error_r)) < 0)
		goto out;
	sub = ep_strdup_printf("%s/clients", gen);
	r = ep_dir_make(sub, 0700, error_r);
	for (size_t i = 0; r == 0 && i < st->n_clients; i++)
		r = write_pem_pair(sub, st->clients[i].name, &st->clients[i].c, error_r);
	if (r == 0)
		r = ep_dir_sync(sub, error_r);
	free(sub);
	if (r < 0)
		goto out;
	text = state_json(st);
	r = write_text(gen, "state.json", text, error_r);
	free(text);
	if (r < 0)
		goto out;
	text = shared_json(st);
	sub = ep_strdup_printf("%s/shared.json", gen);
	r = ep_file_write_atomic(sub, text, strlen(text), 0600, error_r);
	OPENSSL_cleanse(text, strlen(text));
	free(text);
	free(sub);
	if (r < 0 || (r = ep_dir_sync(gen, error_r)) < 0)
		goto out;

	test_pause(st, "before-switch");
	tmp = ep_strdup_printf("%s/current.tmp", st->dir);
	link = ep_strdup_printf("%s/current", st->dir);
	unlink(tmp);
	if (symlink(name, tmp) < 0 || rename(tmp, link) < 0) {
		*error_r = ep_strdup_printf("%s: %s", link, strerror(errno));
		r = -errno;
	}
	free(tmp);
	free(link);
	if (r == 0) {
		char *err = NULL;

		/* switched: whatever fails now, current names this generation */
		if (ep_dir_sync(st->dir, &err) < 0) {
			st->host->log(st->host, EP_LOG_WARNING, "switched to %s, but %s", name, err);
			free(err);
		}
		remove_old_generations(st, name, prev);
		goto done;
	}
out:
	st->generation--;
done:
	free(prev);
	free(name);
	free(gen);
	return r;
}

static int load_pair(const char *dir, const char *base, int with_key, struct cert *c,
		     char **error_r)
{
	char *crt = ep_strdup_printf("%s/%s.crt", dir, base), *key = ep_strdup_printf("%s/%s.key", dir, base);
	STACK_OF(X509) *certs = NULL;
	int r;

	r = ep_pem_load_certs(crt, &certs, error_r);
	if (r == 0) {
		c->x = sk_X509_shift(certs);
		sk_X509_pop_free(certs, X509_free);
		c->serial = ep_x509_serial_hex(c->x);
	}
	if (r == 0 && with_key && (r = ep_pem_load_key(key, &c->key, error_r)) == 0)
		r = ep_tls_check_pair(c->x, c->key, crt, key, error_r);
	free(crt);
	free(key);
	return r;
}

/* Load state_dir/ca/current.  0 (also when there is none yet) or an error. */
static int load_state(struct ca_state *st, char **error_r)
{
	char *target = current_target(st), *gen, *text = NULL;
	cJSON *o = NULL;
	DIR *d;
	struct dirent *e;
	int r = 0;

	if (target == NULL) {
		char *link = ep_strdup_printf("%s/current", st->dir);
		struct stat lst;
		int exists = lstat(link, &lst) == 0;

		free(link);
		if (exists) {
			*error_r = ep_strdup_printf("%s/current: expected a symbolic link to a generation "
					   "(gen-N); move %s away to start over with new CAs, which "
					   "clients must then be given", st->dir, st->dir);
			return -EINVAL;
		}
		remove_old_generations(st, NULL, NULL); /* a first generation that never switched */
		return 0;
	}
	gen = ep_strdup_printf("%s/%s", st->dir, target);
	{
		char *p = ep_strdup_printf("%s/state.json", gen);

		r = ep_file_read(p, 1u << 20, &text, NULL, error_r);
		free(p);
	}
	if (r < 0)
		goto damaged;
	o = cJSON_Parse(text);
	if (!cJSON_IsObject(o) || !cJSON_IsNumber(cJSON_GetObjectItem(o, "version")) ||
	    cJSON_GetObjectItem(o, "version")->valueint != STATE_VERSION ||
	    !cJSON_IsNumber(cJSON_GetObjectItem(o, "generation"))) {
		*error_r = ep_strdup_printf("%s/state.json: not a state file of version %d", gen,
				   STATE_VERSION);
		r = -EINVAL;
		goto damaged;
	}
	st->generation = (uint64_t)cJSON_GetObjectItem(o, "generation")->valuedouble;
	const cJSON *sans = cJSON_GetObjectItem(o, "serving_sans");
	st->serving_sans = ep_strdup(cJSON_IsString(sans) ? sans->valuestring : "");
	const cJSON *pub = cJSON_GetObjectItem(o, "published_ms");
	const cJSON *rec;
	cJSON_ArrayForEach(rec, cJSON_GetObjectItem(o, "records"))
	{
		const cJSON *se = cJSON_GetObjectItem(rec, "serial"), *si = cJSON_GetObjectItem(rec, "signer");
		const cJSON *cn = cJSON_GetObjectItem(rec, "cn"), *u = cJSON_GetObjectItem(rec, "until_ms");

		if (cJSON_IsString(se) && cJSON_IsString(si) && cJSON_IsString(cn) && cJSON_IsNumber(u))
			add_record(st, se->valuestring, si->valuestring, cn->valuestring,
				   (int64_t)u->valuedouble);
	}

	/* the CAs, in the order they were made (by notBefore, then serial) */
	d = opendir(gen);
	while (r == 0 && d != NULL && (e = readdir(d)) != NULL) {
		size_t len = strlen(e->d_name);

		for (int k = 0; k < 2; k++) {
			char *prefix = ep_strdup_printf("%s-ca.", kind_name[k]);

			if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 && len > 4 &&
			    strcmp(e->d_name + len - 4, ".crt") == 0 && st->n_cas[k] < CA_MAX) {
				char *base = strndup(e->d_name, len - 4);
				struct ca *ca = &st->cas[k][st->n_cas[k]];
				const cJSON *p;

				r = load_pair(gen, base, 1, &ca->c, error_r);
				if (r == 0) {
					st->n_cas[k]++;
					p = cJSON_GetObjectItem(pub, ca->c.serial);
					ca->published_ms = cJSON_IsNumber(p) ? (int64_t)p->valuedouble
									     : nb_ms(&ca->c);
					/* it may not have reached every output before a crash */
					ca->unpublished = ca->published_ms < 0;
					if (ca->unpublished)
						ca->published_ms = 0;
				}
				free(base);
			}
			free(prefix);
		}
	}
	if (d != NULL)
		closedir(d);
	for (int k = 0; k < 2 && r == 0; k++) {
		/* insertion sort: oldest first */
		for (size_t i = 1; i < st->n_cas[k]; i++)
			for (size_t j = i; j > 0 && st->cas[k][j].published_ms <
							st->cas[k][j - 1].published_ms; j--) {
				struct ca t = st->cas[k][j];

				st->cas[k][j] = st->cas[k][j - 1];
				st->cas[k][j - 1] = t;
			}
	}
	if (r == 0 && access(gen, F_OK) == 0) {
		char *p = ep_strdup_printf("%s/serving.crt", gen);

		if (access(p, F_OK) == 0)
			r = load_pair(gen, "serving", 1, &st->serving, error_r);
		free(p);
	}
	for (size_t i = 0; r == 0 && i < st->n_clients; i++) {
		char *sub = ep_strdup_printf("%s/clients", gen), *p = ep_strdup_printf("%s/%s.crt", sub, st->clients[i].name);

		if (access(p, F_OK) == 0)
			r = load_pair(sub, st->clients[i].name, 1, &st->clients[i].c, error_r);
		free(p);
		free(sub);
	}
	if (r == 0 && (st->n_cas[SERVING] == 0 || st->n_cas[CLIENT] == 0 || st->serving.x == NULL)) {
		*error_r = ep_strdup_printf("%s: a CA or the serving certificate is missing", gen);
		r = -EINVAL;
	}
damaged:
	if (r < 0) {
		char *e2 = ep_strdup_printf("%s (the state in %s is damaged; move %s away to start over with "
				   "new CAs, which clients must then be given)", *error_r, gen, st->dir);
		free(*error_r);
		*error_r = e2;
		r = -EINVAL;
	} else {
		/* only now: the older generations were the way back */
		remove_old_generations(st, target, NULL);
	}
	cJSON_Delete(o);
	free(text);
	free(gen);
	free(target);
	return r;
}

/* ---- CAs shared with other nodes -------------------------------------------------------------- */

/* "serving:SERIAL@PUBLISHED,...;client:...": two sets of CAs are the same when these are. */
static char *fingerprint(struct ca cas[2][CA_MAX], const size_t n[2]);
static void leader_leaves_to_records(struct ca_state *st);

static char *fingerprint(struct ca cas[2][CA_MAX], const size_t n[2])
{
	char *out = ep_strdup(""), *t;

	for (int k = 0; k < 2; k++) {
		t = ep_strdup_printf("%s%s:", out, kind_name[k]);
		free(out);
		out = t;
		for (size_t i = 0; i < n[k]; i++) {
			t = ep_strdup_printf("%s%s@%lld,", out, cas[k][i].c.serial,
					     cas[k][i].unpublished ? -1LL
								   : (long long)cas[k][i].published_ms);
			free(out);
			out = t;
		}
		t = ep_strdup_printf("%s;", out);
		free(out);
		out = t;
	}
	return out;
}

/* A shared.json as read. */
struct shared_doc {
	struct ca cas[2][CA_MAX];
	size_t n[2];
	uint64_t grace_ms;
	struct record *recs[2]; /* "records", "leaves" */
	size_t n_recs[2];
};

static void shared_doc_free(struct shared_doc *d)
{
	for (int k = 0; k < 2; k++) {
		for (size_t i = 0; i < d->n[k]; i++)
			cert_free(&d->cas[k][i].c);
		for (size_t i = 0; i < d->n_recs[k]; i++)
			record_free(&d->recs[k][i]);
		free(d->recs[k]);
	}
	memset(d, 0, sizeof(*d));
}

static int parse_records(const cJSON *a, const char *name, struct record **recs_r, size_t *n_r,
			 char **error_r)
{
	const cJSON *e;

	*recs_r = ep_malloc0(sizeof(**recs_r) * ((size_t)cJSON_GetArraySize(a) + 1));
	*n_r = 0;
	if (a != NULL && !cJSON_IsArray(a)) {
		*error_r = ep_strdup_printf("\"ca\": \"%s\": expected an array", name);
		return -EINVAL;
	}
	cJSON_ArrayForEach(e, a)
	{
		const cJSON *se = cJSON_GetObjectItemCaseSensitive(e, "serial");
		const cJSON *si = cJSON_GetObjectItemCaseSensitive(e, "signer");
		const cJSON *cn = cJSON_GetObjectItemCaseSensitive(e, "cn");
		const cJSON *u = cJSON_GetObjectItemCaseSensitive(e, "until_ms");
		struct record *r = &(*recs_r)[*n_r];

		if (!cJSON_IsString(se) || !cJSON_IsString(si) || !cJSON_IsString(cn) ||
		    !cJSON_IsNumber(u)) {
			*error_r = ep_strdup_printf("\"ca\": \"%s\" %d: expected \"serial\", "
						    "\"signer\", \"cn\" and \"until_ms\"", name,
						    (int)*n_r + 1);
			return -EINVAL;
		}
		r->serial = ep_strdup(se->valuestring);
		r->signer = ep_strdup(si->valuestring);
		r->cn = ep_strdup(cn->valuestring);
		r->until_ms = (int64_t)u->valuedouble;
		(*n_r)++;
	}
	return 0;
}

/* Parse a shared.json into d.  0, or -EINVAL with *error_r (d is then empty). */
static int parse_shared(const struct ca_state *st, const cJSON *o, struct shared_doc *d,
			char **error_r)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "version");
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tenant");
	const cJSON *g = cJSON_GetObjectItemCaseSensitive(o, "grace_ms");

	memset(d, 0, sizeof(*d));
	if (!cJSON_IsObject(o) || !cJSON_IsNumber(v) || v->valueint != SHARED_VERSION) {
		*error_r = ep_strdup_printf("\"ca\": expected an object of version %d",
					    SHARED_VERSION);
		return -EINVAL;
	}
	if (!cJSON_IsString(t) || strcmp(t->valuestring, st->tenant) != 0) {
		*error_r = ep_strdup_printf("\"ca\": the CAs of tenant \"%s\", not of \"%s\"",
					    cJSON_IsString(t) ? t->valuestring : "?", st->tenant);
		return -EINVAL;
	}
	if (!cJSON_IsNumber(g) || g->valuedouble < 0) {
		*error_r = ep_strdup("\"ca\": \"grace_ms\": expected a number of milliseconds");
		return -EINVAL;
	}
	d->grace_ms = (uint64_t)g->valuedouble;
	for (int k = 0; k < 2; k++) {
		const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, kind_name[k]), *e;

		if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) < 1 ||
		    cJSON_GetArraySize(a) > CA_MAX) {
			*error_r = ep_strdup_printf("\"ca\": \"%s\": expected 1 to %d CAs",
						    kind_name[k], CA_MAX);
			goto fail;
		}
		cJSON_ArrayForEach(e, a)
		{
			const cJSON *se = cJSON_GetObjectItemCaseSensitive(e, "serial");
			const cJSON *pu = cJSON_GetObjectItemCaseSensitive(e, "published_ms");
			const cJSON *ce = cJSON_GetObjectItemCaseSensitive(e, "cert");
			const cJSON *ke = cJSON_GetObjectItemCaseSensitive(e, "key");
			struct ca *ca = &d->cas[k][d->n[k]];
			STACK_OF(X509) *certs = NULL;
			char *what = ep_strdup_printf("\"ca\": %s CA %d", kind_name[k], (int)d->n[k] + 1);
			int r;

			if (!cJSON_IsString(se) || !cJSON_IsNumber(pu) || !cJSON_IsString(ce) ||
			    !cJSON_IsString(ke)) {
				*error_r = ep_strdup_printf("%s: expected \"serial\", \"published_ms\", "
							    "\"cert\" and \"key\"", what);
				free(what);
				goto fail;
			}
			r = ep_pem_parse_certs(ce->valuestring, strlen(ce->valuestring), what, &certs,
					       error_r);
			if (r == 0) {
				ca->c.x = sk_X509_shift(certs);
				sk_X509_pop_free(certs, X509_free);
				r = ep_pem_parse_key(ke->valuestring, strlen(ke->valuestring), what,
						     &ca->c.key, error_r);
			}
			if (r == 0)
				r = ep_tls_check_pair(ca->c.x, ca->c.key, what, what, error_r);
			if (r == 0) {
				ca->c.serial = ep_x509_serial_hex(ca->c.x);
				if (strcmp(ca->c.serial, se->valuestring) != 0 ||
				    X509_check_ca(ca->c.x) == 0) {
					*error_r = ep_strdup_printf("%s: not the CA certificate of serial "
								    "%s", what, se->valuestring);
					r = -EINVAL;
				}
			}
			free(what);
			d->n[k]++;
			if (r < 0)
				goto fail;
			ca->unpublished = pu->valuedouble < 0;
			ca->published_ms = ca->unpublished ? 0 : (int64_t)pu->valuedouble;
		}
	}
	for (int l = 0; l < 2; l++)
		if (parse_records(cJSON_GetObjectItemCaseSensitive(o, l ? "leaves" : "records"),
				  l ? "leaves" : "records", &d->recs[l], &d->n_recs[l], error_r) < 0)
			goto fail;
	return 0;
fail:
	shared_doc_free(d);
	return -EINVAL;
}

/*
 * This node stops following: the Secrets get its client certificates from
 * now on, and the former leader's stay in use until their API servers
 * notice, as a replaced one of this node's would.
 */
static void leader_leaves_to_records(struct ca_state *st)
{
	int64_t now = clock_ms();

	for (size_t i = 0; i < st->n_leader_leaves; i++) {
		const struct record *l = &st->leader_leaves[i];
		int64_t until = now + (int64_t)st->grace_ms;

		if (until > l->until_ms)
			until = l->until_ms;
		if (until > now)
			add_record(st, l->serial, l->signer, l->cn, until);
	}
	st->dirty = 1;
}

static void records_take(struct record **recs, size_t *n, struct record **from, size_t *n_from)
{
	for (size_t i = 0; i < *n; i++)
		record_free(&(*recs)[i]);
	free(*recs);
	*recs = *from;
	*n = *n_from;
	*from = NULL;
	*n_from = 0;
}

/*
 * Look at state_dir/ca/cluster.json again.  1: the CAs or the role changed
 * (a run should follow), 0: nothing new, or -EINVAL with *error_r (the file
 * is kept out: the CAs stay as they were).
 */
static int read_cluster(struct ca_state *st, char **error_r)
{
	char *path = ep_strdup_printf("%s/cluster.json", st->dir), *text = NULL, *e = NULL;
	struct shared_doc d;
	struct stat sb;
	cJSON *o = NULL;
	const cJSON *lead, *ca;
	int r = 0, changed = 0, was_following = st->follow;

	memset(&d, 0, sizeof(d));
	if (stat(path, &sb) < 0) {
		free(path);
		st->cluster_known = 0;
		if (!st->shared)
			return 0;
		st->host->log(st->host, EP_LOG_NOTICE, "cluster.json is gone: the CAs are this "
			      "node's own from now on");
		if (st->follow)
			leader_leaves_to_records(st);
		st->shared = st->follow = 0;
		st->grace_ms = st->own_grace_ms;
		return 1;
	}
	if (st->cluster_known && sb.st_ino == st->cluster_stat.st_ino &&
	    sb.st_size == st->cluster_stat.st_size &&
	    sb.st_mtim.tv_sec == st->cluster_stat.st_mtim.tv_sec &&
	    sb.st_mtim.tv_nsec == st->cluster_stat.st_mtim.tv_nsec) {
		free(path);
		return 0;
	}
	st->cluster_stat = sb;
	st->cluster_known = 1;
	if (ep_file_read(path, 4u << 20, &text, NULL, error_r) < 0) {
		free(path);
		return -EINVAL;
	}
	o = cJSON_Parse(text);
	lead = cJSON_GetObjectItemCaseSensitive(o, "lead");
	ca = cJSON_GetObjectItemCaseSensitive(o, "ca");
	if (!cJSON_IsObject(o) || !cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(o, "version")) ||
	    cJSON_GetObjectItemCaseSensitive(o, "version")->valueint != 1 || !cJSON_IsBool(lead)) {
		e = ep_strdup("expected {\"version\": 1, \"lead\": true|false, \"ca\": {...}}");
		r = -EINVAL;
		goto out;
	}
	if (ca == NULL && !cJSON_IsTrue(lead)) {
		e = ep_strdup("\"lead\": false needs the leader's CAs in \"ca\"");
		r = -EINVAL;
		goto out;
	}
	if (ca != NULL && (r = parse_shared(st, ca, &d, &e)) < 0)
		goto out;
	if (!st->shared || st->follow != !cJSON_IsTrue(lead)) {
		st->host->log(st->host, EP_LOG_NOTICE, cJSON_IsTrue(lead)
			      ? "the CAs are shared with the cluster's other nodes, and this node "
				"leads: it rotates them"
			      : "the CAs are shared with the cluster's other nodes, and another node "
				"leads: this node uses its CAs");
		changed = 1;
	}
	st->shared = 1;
	st->follow = !cJSON_IsTrue(lead);
	st->grace_ms = st->follow && ca != NULL ? d.grace_ms : st->own_grace_ms;
	if (ca != NULL) {
		char *mine = fingerprint(st->cas, st->n_cas), *theirs = fingerprint(d.cas, d.n);

		if (!st->follow) {
			free(st->took);
			st->took = ep_strdup(theirs);
		}
		if (strcmp(mine, theirs) != 0) {
			for (int k = 0; k < 2; k++) {
				for (size_t i = 0; i < st->n_cas[k]; i++)
					cert_free(&st->cas[k][i].c);
				memcpy(st->cas[k], d.cas[k], sizeof(d.cas[k][0]) * d.n[k]);
				st->n_cas[k] = d.n[k];
				d.n[k] = 0;
			}
			st->host->log(st->host, EP_LOG_NOTICE, "took the cluster's CAs: %s", theirs);
			changed = 1;
		}
		free(mine);
		free(theirs);
		/* what keeps the CAs trusted is the leader's to know */
		records_take(&st->records, &st->n_records, &d.recs[0], &d.n_recs[0]);
		records_take(&st->leader_leaves, &st->n_leader_leaves, &d.recs[1], &d.n_recs[1]);
		st->dirty = 1;
	}
	if (was_following && !st->follow) {
		leader_leaves_to_records(st);
		changed = 1;
	}
out:
	shared_doc_free(&d);
	if (r < 0) {
		*error_r = ep_strdup_printf("%s: %s", path, e);
		r = -EINVAL;
	}
	free(e);
	if (text != NULL)
		OPENSSL_cleanse(text, strlen(text));
	free(text);
	cJSON_Delete(o);
	free(path);
	return r < 0 ? r : changed;
}

/* ---- the rotation logic --------------------------------------------------------------------- */

/* The CA of kind k that signs now: the newest one published at least grace ago. */
static struct ca *signer(struct ca_state *st, enum kind k, int64_t now)
{
	for (size_t i = st->n_cas[k]; i-- > 0;)
		if (!st->cas[k][i].unpublished &&
		    st->cas[k][i].published_ms + (int64_t)st->grace_ms <= now)
			return &st->cas[k][i];
	return st->n_cas[k] > 0 ? &st->cas[k][0] : NULL;
}

static struct ca *find_ca(struct ca_state *st, enum kind k, const struct cert *leaf)
{
	for (size_t i = 0; i < st->n_cas[k]; i++)
		if (issued_by(leaf, &st->cas[k][i]))
			return &st->cas[k][i];
	return NULL;
}

static void log_cert(struct ca_state *st, const char *what, const struct cert *c,
		     const struct cert *by)
{
	char na[32];

	ep_time_format(ep_x509_not_after(c->x), na, sizeof(na));
	st->host->log(st->host, EP_LOG_NOTICE, "%s: serial %s, valid until %s%s%s", what,
		      c->serial, na, by ? ", signed by CA " : " (self-signed)", by ? by->serial : "");
}

static void new_ca(struct ca_state *st, enum kind k, int64_t now, int first)
{
	struct ca *ca;
	char *cn;

	if (st->n_cas[k] == CA_MAX) {
		/* cannot happen with sane fractions; never drop a CA silently */
		st->host->log(st->host, EP_LOG_ERR, "%d %s CAs kept already: no new one", CA_MAX,
			      kind_name[k]);
		return;
	}
	ca = &st->cas[k][st->n_cas[k]++];
	cn = ep_strdup_printf("etcdproxy %s %s CA %lld", st->tenant, kind_name[k], (long long)(now / 1000));
	cert_make(st, &ca->c, NULL, cn, ROLE_CA, now, st->validity_ms[0], NULL);
	free(cn);
	/*
	 * The very first CA signs at once: nobody can have trusted an older one.
	 * A later one waits for the grace period from when it has reached every
	 * bundle and output (run() marks it published), not from now.
	 */
	ca->published_ms = first ? now - (int64_t)st->grace_ms : 0;
	ca->unpublished = !first;
	log_cert(st, first ? (k == SERVING ? "new serving CA" : "new client CA")
			   : (k == SERVING ? "new serving CA published, signs after the grace period"
					   : "new client CA published, signs after the grace period"),
		 &ca->c, NULL);
}

/* Is a leaf due: missing, signed by another CA than the signer, or old enough? */
static int leaf_due(const struct ca_state *st, const struct cert *c, const struct ca *sig,
		    int64_t now)
{
	return c->x == NULL || !issued_by(c, sig) || now >= renew_at(c, st->renew_fraction) ||
	       now >= na_ms(c);
}

/* Make everything current at now.  Returns 1 when the state changed. */
static int reconcile(struct ca_state *st, int64_t now)
{
	int changed = 0;
	char *sans = wanted_sans(st);

	/* a follower takes the leader's CAs as they are: only its leaves are its own */
	for (int k = 0; k < 2 && !st->follow; k++) {
		struct ca *newest;

		if (st->n_cas[k] == 0) {
			new_ca(st, (enum kind)k, now, 1);
			changed = 1;
		}
		newest = &st->cas[k][st->n_cas[k] - 1];
		/* a new CA when the newest is due, unless one is still waiting for its grace */
		if ((now >= renew_at(&newest->c, st->ca_renew_fraction) ||
		     (st->force_rotation && newest->published_ms < st->force_rotation)) &&
		    !newest->unpublished && newest->published_ms + (int64_t)st->grace_ms <= now) {
			new_ca(st, (enum kind)k, now, 0);
			changed = 1;
		}
	}
	st->force_rotation = 0;

	struct ca *ssig = signer(st, SERVING, now), *csig = signer(st, CLIENT, now);

	if (leaf_due(st, &st->serving, ssig, now) || st->serving_sans == NULL ||
	    strcmp(st->serving_sans, sans) != 0) {
		struct cert old = st->serving;
		char *cn = ep_strdup_printf("%s.etcdproxy", st->tenant);

		memset(&st->serving, 0, sizeof(st->serving));
		cert_make(st, &st->serving, &ssig->c, cn, ROLE_SERVER, now, st->validity_ms[1], sans);
		free(cn);
		free(st->serving_sans);
		st->serving_sans = ep_strdup(sans);
		log_cert(st, "serving certificate issued", &st->serving, &ssig->c);
		if (st->shared && !st->follow && old.x != NULL) {
			/* the other nodes switch at the same time by their own clocks */
			struct ca *old_sig = find_ca(st, SERVING, &old);

			if (old_sig != NULL && old_sig != ssig)
				add_record(st, old.serial, old_sig->c.serial, "serving",
					   now + SHARED_SWITCH_MS);
		}
		/* the old one is gone from the handshakes as soon as the backend reloads */
		cert_free(&old);
		changed = 1;
	}
	for (size_t i = 0; i < st->n_clients; i++) {
		struct client_leaf *cl = &st->clients[i];

		if (!leaf_due(st, &cl->c, csig, now))
			continue;
		if (cl->c.x != NULL) {
			/* its API server may use it until it notices the new one */
			struct ca *old_sig = find_ca(st, CLIENT, &cl->c);
			int64_t until = now + (int64_t)st->grace_ms;

			if (until > na_ms(&cl->c))
				until = na_ms(&cl->c);
			if (old_sig != NULL && until > now)
				add_record(st, cl->c.serial, old_sig->c.serial, cl->name, until);
			cert_free(&cl->c);
		}
		cert_make(st, &cl->c, &csig->c, cl->name, ROLE_CLIENT, now, st->validity_ms[2], NULL);
		{
			char *what = ep_strdup_printf("client certificate \"%s\" issued", cl->name);

			log_cert(st, what, &cl->c, &csig->c);
			free(what);
		}
		changed = 1;
	}
	free(sans);

	/* records that ended */
	for (size_t i = 0; i < st->n_records;) {
		if (st->records[i].until_ms <= now) {
			record_free(&st->records[i]);
			st->records[i] = st->records[--st->n_records];
			changed = 1;
		} else {
			i++;
		}
	}

	/* CAs that sign nothing live any more, and expired ones (the leader's to decide) */
	for (int k = 0; k < 2 && !st->follow; k++) {
		struct ca *sig = signer(st, (enum kind)k, now);
		int64_t sig_pub = sig->published_ms;

		for (size_t i = 0; i < st->n_cas[k];) {
			struct ca *ca = &st->cas[k][i];
			int live = 0;

			if (ca == sig || ca->unpublished || ca->published_ms > sig_pub) {
				i++; /* the signer, or one waiting to become it */
				continue;
			}
			if (k == SERVING && issued_by(&st->serving, ca))
				live = 1;
			for (size_t j = 0; k == CLIENT && j < st->n_clients; j++)
				if (issued_by(&st->clients[j].c, ca))
					live = 1;
			for (size_t j = 0; j < st->n_records; j++)
				if (strcmp(st->records[j].signer, ca->c.serial) == 0)
					live = 1;
			if (live && now < na_ms(&ca->c)) {
				i++;
				continue;
			}
			log_cert(st, k == SERVING ? "serving CA retired" : "client CA retired", &ca->c,
				 NULL);
			cert_free(&ca->c);
			memmove(ca, ca + 1, sizeof(*ca) * (st->n_cas[k] - i - 1));
			st->n_cas[k]--;
			sig = signer(st, (enum kind)k, now);
			changed = 1;
		}
	}
	return changed;
}

/*
 * When reconcile() has something to do next: the first event after the time
 * it last looked (since), which may be already past when a run took a while.
 */
static int64_t next_event(const struct ca_state *st, int64_t since)
{
	int64_t next = since + MAX_WAKE_MS;
#define EARLIER(t)                                 \
	do {                                       \
		int64_t t_ = (t);                  \
		if (t_ > since && t_ < next)       \
			next = t_;                 \
	} while (0)

	for (int k = 0; k < 2; k++) {
		for (size_t i = 0; i < st->n_cas[k]; i++) {
			if (!st->cas[k][i].unpublished)
				EARLIER(st->cas[k][i].published_ms + (int64_t)st->grace_ms);
			EARLIER(na_ms(&st->cas[k][i].c));
		}
		if (st->n_cas[k] > 0)
			EARLIER(renew_at(&st->cas[k][st->n_cas[k] - 1].c, st->ca_renew_fraction));
	}
	if (st->serving.x != NULL)
		EARLIER(renew_at(&st->serving, st->renew_fraction));
	for (size_t i = 0; i < st->n_clients; i++)
		if (st->clients[i].c.x != NULL)
			EARLIER(renew_at(&st->clients[i].c, st->renew_fraction));
	for (size_t i = 0; i < st->n_records; i++)
		EARLIER(st->records[i].until_ms);
#undef EARLIER
	return next;
}

/* ---- publishing -------------------------------------------------------------------------------- */

static int publish_outputs(struct ca_state *st, char **error_r)
{
	char *ca_bundle = bundle_text(st, SERVING);
	int r = 0;

	for (size_t i = 0; i < st->n_clients; i++) {
		struct client_leaf *cl = &st->clients[i];
		char *err = NULL;
		int ri;
		size_t crt_len, key_len;
		char *crt = ep_pem_cert(cl->c.x, &crt_len), *key = ep_pem_key(cl->c.key, &key_len);
		struct ep_pub_file files[] = {
			{ "tls.crt", crt, crt_len, 0644 },
			{ "tls.key", key, key_len, 0600 },
			{ "ca.crt", ca_bundle, strlen(ca_bundle), 0644 },
		};
		int changed = 0;

		ri = cl->out.publish(&cl->out, files, 3, &changed, &err);
		if (ri < 0 && r == 0) {
			r = ri;
			*error_r = err; /* the first failure; the others are still tried */
		} else if (ri < 0) {
			st->host->log(st->host, EP_LOG_ERR, "%s", err);
			free(err);
		}
		if (ri == 0 && changed)
			st->host->log(st->host, EP_LOG_INFO, "published client certificate \"%s\" "
				      "(serial %s) and the serving CA bundle into %s", cl->name,
				      cl->c.serial, cl->out.where);
		OPENSSL_cleanse(key, key_len);
		free(key);
		free(crt);
	}
	free(ca_bundle);
	return r;
}

static void publish_material(struct ca_state *st)
{
	char *cert = ep_strdup_printf("%s/current/serving.crt", st->dir);
	char *key = ep_strdup_printf("%s/current/serving.key", st->dir);
	char *client_ca = ep_strdup_printf("%s/current/client-ca-bundle.crt", st->dir);
	char *ca = ep_strdup_printf("%s/current/serving-ca-bundle.crt", st->dir);
	char *bundle = bundle_text(st, CLIENT);
	struct ep_tls_material m = {
		.cert_file = cert,
		.key_file = key,
		.client_ca_file = client_ca,
		.ca_file = ca,
		.generation = st->generation,
		.client_ca_changed = st->published_client_bundle == NULL ||
				     strcmp(st->published_client_bundle, bundle) != 0,
	};

	free(st->published_client_bundle);
	st->published_client_bundle = bundle;
	st->host->tls_publish(st->host, &m);
	free(cert);
	free(key);
	free(client_ca);
	free(ca);
}

static void set_error(struct ca_state *st, const char *error)
{
	free(st->last_error);
	st->last_error = error != NULL ? ep_strdup(error) : NULL;
}

static void schedule(struct ca_state *st);

/*
 * Bring everything up to date, write a new generation when something changed
 * (or when asked to), then publish it.  0 or an error; on an error the
 * previous generation stays in use and st->dirty asks for another attempt.
 */
static int run(struct ca_state *st, int publish_anyway, char **error_r)
{
	int r;

	st->last_run_ms = clock_ms();
	if (reconcile(st, st->last_run_ms))
		st->dirty = 1;
	if (st->dirty) {
		if ((r = write_generation(st, error_r)) < 0)
			return r;
		st->dirty = 0;
		publish_anyway = 1;
	}
	if (!publish_anyway && !st->outputs_dirty)
		return 0;
	/* the backend first: a client certificate from a new CA must find it trusted */
	publish_material(st);
	if ((r = publish_outputs(st, error_r)) < 0) {
		st->outputs_dirty = 1;
		return r;
	}
	st->outputs_dirty = 0;
	/* every bundle and output has the new CAs now: their grace period starts */
	for (int k = 0; k < 2 && !st->follow; k++)
		for (size_t i = 0; i < st->n_cas[k]; i++)
			if (st->cas[k][i].unpublished) {
				st->cas[k][i].unpublished = 0;
				st->cas[k][i].published_ms = clock_ms();
				st->dirty = 1; /* written with the next run, which comes at once */
			}
	return 0;
}

static void on_timer(uv_timer_t *t)
{
	struct ca_state *st = t->data;
	char *error = NULL;

	if (run(st, 0, &error) < 0) {
		st->host->log(st->host, EP_LOG_ERR, "certificate update failed, the previous "
			      "certificates stay in use; retrying in 5 s: %s", error);
		set_error(st, error);
		free(error);
		uv_timer_start(&st->timer, on_timer, 5000, 0);
	} else {
		set_error(st, NULL);
		schedule(st);
	}
	st->host->certs_changed(st->host);
}

/* cluster.json changed: the new CAs or role take effect at once, as a rotation's do */
static void on_cluster_timer(uv_timer_t *t)
{
	struct ca_state *st = t->data;
	char *error = NULL;
	int r = read_cluster(st, &error);

	if (r < 0) {
		st->host->log(st->host, EP_LOG_ERR, "%s; the CAs stay as they are", error);
		free(st->cluster_error);
		st->cluster_error = error;
		st->host->certs_changed(st->host);
		return;
	}
	if (r > 0 || st->cluster_error != NULL) {
		free(st->cluster_error);
		st->cluster_error = NULL;
	}
	if (r > 0) {
		uv_timer_stop(&st->timer);
		on_timer(&st->timer);
	}
}

static void schedule(struct ca_state *st)
{
	int64_t next = next_event(st, st->last_run_ms), delay = next - clock_ms();

	if (st->dirty || st->outputs_dirty)
		delay = 0;
	if (delay < MIN_WAKE_MS)
		delay = MIN_WAKE_MS;
	/* the loop's cached time is from before the run, which fsyncs: it would fire early */
	uv_update_time(st->host->loop);
	uv_timer_start(&st->timer, on_timer, (uint64_t)delay, 0);
}

/* ---- the plugin interface ------------------------------------------------------------------- */

/* certs.ca, parsed by the host from this table (options_parse) */
static const char *const key_types[] = { "ecdsa-p256", "rsa-2048", NULL }; /* index = st->rsa */

#define OPT(name, type, field, lo, hi, values, help)                                            \
	{ name, type, 0, offsetof(struct ca_state, field), lo, hi, values, help }
static const struct ep_option ca_options[] = {
	OPT("key_type", EP_OPT_ENUM, rsa, 0, 0, key_types, "of every key the CA makes"),
	OPT("renew_fraction", EP_OPT_NUMBER, renew_fraction, 0.1, 0.95, NULL,
	    "the part of a certificate's validity after which it is renewed"),
	OPT("ca_renew_fraction", EP_OPT_NUMBER, ca_renew_fraction, 0.1, 0.95, NULL,
	    "the part of a CA's validity after which it is rotated"),
	OPT("grace", EP_OPT_DURATION, grace_ms, 0, 1e15, NULL,
	    "between a new CA's publication and its first use"),
	{ NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL },
};
#undef OPT

static int parse_options(struct ca_state *st, const char **error_r)
{
	static char msg[512];
	char *why;

	st->renew_fraction = 2.0 / 3.0;
	st->ca_renew_fraction = EP_CA_RENEW_FRACTION_DEFAULT;
	st->grace_ms = EP_CA_GRACE_DEFAULT_MS;
	if (st->host->options_parse(st->host, st, error_r) < 0)
		return -EINVAL;
	st->own_grace_ms = st->grace_ms;
	/* the supervisor refuses such a tenant already; a worker started by hand needs it too */
	why = ep_ca_grace_check(st->grace_ms, st->validity_ms[0], st->ca_renew_fraction);
	if (why != NULL) {
		snprintf(msg, sizeof(msg), "%s", why);
		free(why);
		*error_r = msg;
		return -EINVAL;
	}
	return 0;
}

static int parse_tls(struct ca_state *st, const char **error_r)
{
	cJSON *o = cJSON_Parse(st->host->tenant->tls_json ? st->host->tenant->tls_json : "");
	const cJSON *m, *e;
	static const char *const vnames[] = { "signing_validity_ms", "serving_validity_ms",
					      "client_validity_ms" };

	if (!cJSON_IsObject(o)) {
		cJSON_Delete(o);
		*error_r = "the tenant has no spec.tls";
		return -EINVAL;
	}
	for (int i = 0; i < 3; i++) {
		static const char *const spec_names[] = { "signingCertificateValidity",
							  "servingCertificateValidity",
							  "clientCertificateValidity" };
		static char msg[200];

		m = cJSON_GetObjectItem(o, vnames[i]);
		st->validity_ms[i] = cJSON_IsNumber(m) ? (uint64_t)m->valuedouble
						       : 8760ull * 3600 * 1000;
		/* certificates carry whole seconds: below 3 s there is nothing to renew in time */
		if (st->validity_ms[i] < 3000) {
			snprintf(msg, sizeof(msg), "spec.%s: %llu ms is too short for a certificate "
				 "(at least 3s)", spec_names[i], (unsigned long long)st->validity_ms[i]);
			*error_r = msg;
			cJSON_Delete(o);
			return -EINVAL;
		}
	}
	m = cJSON_GetObjectItem(o, "serverNames");
	st->server_names = ep_malloc0(sizeof(char *) * ((size_t)cJSON_GetArraySize(m) + 1));
	cJSON_ArrayForEach(e, m)
		if (cJSON_IsString(e))
			st->server_names[st->n_server_names++] = ep_strdup(e->valuestring);
	m = cJSON_GetObjectItem(o, "clientCertificates");
	st->clients = ep_malloc0(sizeof(*st->clients) * ((size_t)cJSON_GetArraySize(m) + 1));
	cJSON_ArrayForEach(e, m)
	{
		const cJSON *n = cJSON_GetObjectItem(e, "name"), *d = cJSON_GetObjectItem(e, "outputDir");

		if (cJSON_IsString(n) && cJSON_IsString(d)) {
			st->clients[st->n_clients].name = ep_strdup(n->valuestring);
			output_directory(&st->clients[st->n_clients].out, d->valuestring);
			st->n_clients++;
		}
	}
	cJSON_Delete(o);
	return 0;
}

static void ca_fini(void *state);

static int ca_init(struct ep_host *host, void **state_r, const char **error_r)
{
	struct ca_state *st = ep_malloc0(sizeof(*st));
	int r;

	st->host = host;
	st->tenant = ep_strdup(host->tenant->name);
	st->listen = ep_strdup(host->tenant->listen);
	st->dir = ep_strdup_printf("%s/ca", host->tenant->state_dir);
	if ((r = parse_tls(st, error_r)) < 0 || (r = parse_options(st, error_r)) < 0) {
		ca_fini(st);
		return r;
	}
	if (host->tls_publish == NULL || host->certs_changed == NULL) {
		ca_fini(st);
		*error_r = "the worker is too old for certificate sources";
		return -EPROTO;
	}
	uv_timer_init(host->loop, &st->timer);
	st->timer.data = st;
	st->timer_open = 1;
	uv_timer_init(host->loop, &st->cluster_timer);
	st->cluster_timer.data = st;
	st->cluster_timer_open = 1;
	*state_r = st;
	return 0;
}

static int ca_refresh(void *state, const char **error_r)
{
	struct ca_state *st = state;
	char *error = NULL;
	int r;

	if ((r = ep_dir_make(st->dir, 0700, &error)) < 0 || (r = load_state(st, &error)) < 0) {
		set_error(st, error);
		free(error);
		*error_r = st->last_error;
		return r; /* -EINVAL: damaged state or files; an I/O error may pass */
	}
	/* before anything is made: a node of a cluster serves with the cluster's CAs */
	if (read_cluster(st, &error) < 0) {
		st->host->log(st->host, EP_LOG_ERR, "%s; the CAs stay as they are", error);
		st->cluster_error = error;
		error = NULL;
	}
	if ((r = run(st, 1, &error)) < 0) {
		set_error(st, error);
		free(error);
		*error_r = st->last_error;
		return r;
	}
	schedule(st);
	uv_timer_start(&st->cluster_timer, on_cluster_timer, CLUSTER_POLL_MS, CLUSTER_POLL_MS);
	return 0;
}

static void ca_stop(void *state)
{
	struct ca_state *st = state;

	if (st->timer_open) {
		st->timer_open = 0;
		uv_close((uv_handle_t *)&st->timer, NULL);
	}
	if (st->cluster_timer_open) {
		st->cluster_timer_open = 0;
		uv_close((uv_handle_t *)&st->cluster_timer, NULL);
	}
}

static cJSON *cert_json(const char *role, const struct cert *c, const char *state)
{
	cJSON *o = cJSON_CreateObject();
	char t[32], *s;

	cJSON_AddStringToObject(o, "role", role);
	s = ep_x509_subject(c->x);
	cJSON_AddStringToObject(o, "subject", s);
	free(s);
	cJSON_AddStringToObject(o, "serial", c->serial);
	s = ep_x509_issuer(c->x);
	cJSON_AddStringToObject(o, "issuer", s);
	free(s);
	ep_time_format(ep_x509_not_before(c->x), t, sizeof(t));
	cJSON_AddStringToObject(o, "not_before", t);
	ep_time_format(ep_x509_not_after(c->x), t, sizeof(t));
	cJSON_AddStringToObject(o, "not_after", t);
	if (state != NULL)
		cJSON_AddStringToObject(o, "state", state);
	return o;
}

static char *ca_describe(void *state)
{
	struct ca_state *st = state;
	cJSON *a = cJSON_CreateArray();
	int64_t now = clock_ms();
	char *text;

	for (int i = 0; i < 2; i++) {
		const char *e = i == 0 ? st->last_error : st->cluster_error;
		cJSON *o;

		if (e == NULL)
			continue;
		o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "role", "error");
		cJSON_AddStringToObject(o, "error", e);
		cJSON_AddItemToArray(a, o);
	}
	for (int k = 0; k < 2; k++) {
		struct ca *sig = st->n_cas[k] ? signer(st, (enum kind)k, now) : NULL;

		for (size_t i = 0; i < st->n_cas[k]; i++) {
			struct ca *ca = &st->cas[k][i];
			char when[32], *what;

			if (ca == sig) {
				what = ep_strdup("signing");
			} else if (ca->unpublished) {
				what = ep_strdup("being published to the bundles and outputs");
			} else if (ca->published_ms > sig->published_ms) {
				fmt_time_ms(ca->published_ms + (int64_t)st->grace_ms, when, sizeof(when));
				what = ep_strdup_printf("published, signs from %s", when);
			} else {
				what = ep_strdup("retiring: still trusted for certificates it signed");
			}
			if (st->shared) {
				char *t = ep_strdup_printf("%s; shared across the cluster, %s", what,
							   st->follow ? "rotated by the leader"
								      : "this node rotates it");

				free(what);
				what = t;
			}
			cJSON_AddItemToArray(a, cert_json(k == SERVING ? "serving-ca" : "client-ca",
							  &ca->c, what));
			free(what);
		}
	}
	if (st->serving.x != NULL)
		cJSON_AddItemToArray(a, cert_json("serving", &st->serving, NULL));
	for (size_t i = 0; i < st->n_clients; i++) {
		if (st->clients[i].c.x == NULL)
			continue;
		char *what = ep_strdup_printf("published in %s %s", st->clients[i].out.kind,
				     st->clients[i].out.where);

		cJSON_AddItemToArray(a, cert_json("client", &st->clients[i].c, what));
		free(what);
	}
	for (size_t i = 0; i < st->n_records; i++) {
		cJSON *o = cJSON_CreateObject();
		char t[32];

		cJSON_AddStringToObject(o, "role", "client-record");
		cJSON_AddStringToObject(o, "subject", st->records[i].cn);
		cJSON_AddStringToObject(o, "serial", st->records[i].serial);
		cJSON_AddStringToObject(o, "issuer", st->records[i].signer);
		fmt_time_ms(st->records[i].until_ms, t, sizeof(t));
		cJSON_AddStringToObject(o, "not_after", t);
		cJSON_AddStringToObject(o, "state", "replaced or issued on demand: its CA stays "
						    "trusted until then");
		cJSON_AddItemToArray(a, o);
	}
	text = cJSON_PrintUnformatted(a);
	cJSON_Delete(a);
	return text;
}

static int ca_rotate(void *state, const char **error_r)
{
	struct ca_state *st = state;
	int64_t now = clock_ms();
	char *error = NULL;

	if (st->follow) {
		*error_r = "the CAs of this tenant are shared across the cluster, and another node "
			   "leads: rotate them on the leader (the holder of etcdproxyd's Lease)";
		return -EBUSY;
	}
	for (int k = 0; k < 2; k++) {
		struct ca *newest = &st->cas[k][st->n_cas[k] - 1];

		if (st->n_cas[k] >= CA_MAX - 1) {
			*error_r = "too many CAs are still trusted for certificates they signed "
				   "(issued client certificates keep theirs until they expire): "
				   "no rotation now";
			return -EBUSY;
		}
		if (newest->unpublished || newest->published_ms + (int64_t)st->grace_ms > now) {
			static char msg[200];
			char when[32];

			fmt_time_ms(newest->published_ms + (int64_t)st->grace_ms, when, sizeof(when));
			snprintf(msg, sizeof(msg), "a rotation is already under way: the new %s CA "
				 "signs from %s", kind_name[k], when);
			*error_r = msg;
			return -EBUSY;
		}
	}
	st->force_rotation = now + 1;
	if (run(st, 0, &error) < 0) {
		set_error(st, error);
		free(error);
		*error_r = st->last_error;
		uv_timer_start(&st->timer, on_timer, 5000, 0); /* as on_timer() does */
		return -EIO;
	}
	schedule(st);
	st->host->certs_changed(st->host);
	return 0;
}

static int ca_issue_client(void *state, const char *cn, const char *out_dir, char **result_r,
			   char **error_r)
{
	struct ca_state *st = state;
	int64_t now = clock_ms();
	struct ca *sig = signer(st, CLIENT, now);
	char *ca_bundle = bundle_text(st, SERVING);
	struct cert c = { 0 };
	size_t crt_len, key_len;
	char *crt, *key, t[32];
	cJSON *o;
	int r;

	if (st->follow) {
		free(ca_bundle);
		/* the leader retires CAs: it must know of every certificate still in use */
		*error_r = ep_strdup("the CAs of this tenant are shared across the cluster, and "
				     "another node leads: issue client certificates on the leader "
				     "(the holder of etcdproxyd's Lease)");
		return -EBUSY;
	}
	if (cn[0] == '\0' || strlen(cn) > 64) {
		free(ca_bundle);
		*error_r = ep_strdup("the common name must have 1 to 64 characters");
		return -EINVAL;
	}
	cert_make(st, &c, &sig->c, cn, ROLE_CLIENT, now, st->validity_ms[2], NULL);
	/* recorded first: its CA must stay in the proxy's bundle until it expires */
	add_record(st, c.serial, sig->c.serial, cn, na_ms(&c));
	st->dirty = 1;
	if ((r = run(st, 0, error_r)) < 0) {
		free(ca_bundle);
		cert_free(&c);
		return r;
	}
	crt = ep_pem_cert(c.x, &crt_len);
	key = ep_pem_key(c.key, &key_len);
	struct ep_pub_file files[] = {
		{ "tls.crt", crt, crt_len, 0644 },
		{ "tls.key", key, key_len, 0600 },
		{ "ca.crt", ca_bundle, strlen(ca_bundle), 0644 },
	};
	struct cert_output out;

	output_directory(&out, out_dir);
	r = out.publish(&out, files, 3, NULL, error_r);
	free(out.where);
	OPENSSL_cleanse(key, key_len);
	free(key);
	free(crt);
	free(ca_bundle);
	if (r == 0) {
		log_cert(st, "client certificate issued on request", &c, &sig->c);
		o = cJSON_CreateObject();
		char *subject = ep_x509_subject(c.x);

		cJSON_AddStringToObject(o, "subject", subject);
		free(subject);
		cJSON_AddStringToObject(o, "serial", c.serial);
		ep_time_format(ep_x509_not_after(c.x), t, sizeof(t));
		cJSON_AddStringToObject(o, "not_after", t);
		cJSON_AddStringToObject(o, "dir", out_dir);
		*result_r = cJSON_PrintUnformatted(o);
		cJSON_Delete(o);
	}
	cert_free(&c);
	schedule(st);
	st->host->certs_changed(st->host);
	return r;
}

static void ca_fini(void *state)
{
	struct ca_state *st = state;

	for (int k = 0; k < 2; k++)
		for (size_t i = 0; i < st->n_cas[k]; i++)
			cert_free(&st->cas[k][i].c);
	cert_free(&st->serving);
	for (size_t i = 0; i < st->n_clients; i++) {
		cert_free(&st->clients[i].c);
		free(st->clients[i].name);
		free(st->clients[i].out.where);
	}
	free(st->clients);
	for (size_t i = 0; i < st->n_records; i++)
		record_free(&st->records[i]);
	free(st->records);
	for (size_t i = 0; i < st->n_server_names; i++)
		free(st->server_names[i]);
	free(st->server_names);
	free(st->serving_sans);
	free(st->published_client_bundle);
	free(st->last_error);
	free(st->cluster_error);
	for (size_t i = 0; i < st->n_leader_leaves; i++)
		record_free(&st->leader_leaves[i]);
	free(st->leader_leaves);
	free(st->took);
	free(st->dir);
	free(st->tenant);
	free(st->listen);
	free(st);
}

static const struct ep_certs_ops ops = {
	.refresh = ca_refresh,
	.stop = ca_stop,
	.describe = ca_describe,
	.rotate = ca_rotate,
	.issue_client = ca_issue_client,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_CERTS,
	.name = "ca",
	.description = "built-in CA per tenant: serving and client certificates, rotated "
		       "without failed handshakes",
	.init = ca_init,
	.fini = ca_fini,
	.ops = &ops,
	.options = ca_options,
};
