/*
 * The "native" backend plugin: options, the lease ownership records, and the
 * plugin entry points.  See native.h for the shape of the proxy and
 * doc/native-backend.md for the design of lease scoping.
 *
 * Options (global config "backends": {"native": {...}}):
 *   "max_message":  largest request message in bytes (default 2 MiB, like
 *                   etcd's 1.5 MiB request limit plus gRPC overhead)
 *   "max_streams":  concurrent streams per client connection (default 1000)
 *   "idle_timeout": Go duration after which a connection without streams is
 *                   closed with GOAWAY (default "5m"; "0s" disables)
 *   "upstreams":    HTTP/2 connections to the core etcd (default 2)
 *   "drain_timeout": how long a graceful stop waits for calls (default "4s")
 *   "compaction":   "ignore" (default), "allow" or "deny": the default for
 *                   tenants without spec.policy.compaction
 *   "credentials_poll_interval": how often the core etcd's ca_file, cert_file
 *                   and key_file are checked for changes (default "2s"; "0s":
 *                   never, they are read once)
 *
 * TLS towards the clients comes from the tenant's certificate source
 * (host->tls_material), towards the core etcd from core_etcd's files; both
 * are reloaded without dropping a connection: a new SSL_CTX is made and
 * swapped in for new handshakes, the open connections keep theirs.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* vasprintf */
#endif
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "ep-tls.h"
#include "native.h"

#define RECORD_PREFIX "/__etcdproxy/leases/"

/* ---- byte queues -------------------------------------------------------------------------- */

void bq_append(struct bq *q, const void *p, size_t n)
{
	if (q->off > 0 && q->off == q->len) {
		q->off = q->len = 0;
	}
	if (q->len + n > q->cap) {
		if (q->off > 0) {
			memmove(q->data, q->data + q->off, q->len - q->off);
			q->len -= q->off;
			q->off = 0;
		}
		if (q->len + n > q->cap) {
			size_t cap = q->cap ? q->cap : 1024;

			while (cap < q->len + n)
				cap *= 2;
			q->data = pool_realloc(q->data, cap);
			q->cap = cap;
		}
	}
	memcpy(q->data + q->len, p, n);
	q->len += n;
}

size_t bq_pending(const struct bq *q)
{
	return q->len - q->off;
}

void bq_consume(struct bq *q, size_t n)
{
	q->off += n;
	if (q->off == q->len) {
		q->off = q->len = 0;
		/* a large burst must not pin its memory */
		if (q->cap > 65536) {
			pool_free(q->data);
			q->data = NULL;
			q->cap = 0;
		}
	}
}

void bq_free(struct bq *q)
{
	pool_free(q->data);
	memset(q, 0, sizeof(*q));
}

/* ---- small protobuf writer and reader for the proxy's own requests ------------------------- */

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

static size_t put_bytes(uint8_t *p, unsigned field, const void *data, size_t len)
{
	size_t n = put_varint(p, (uint64_t)field << 3 | 2);

	n += put_varint(p + n, len);
	memcpy(p + n, data, len);
	return n + len;
}

static size_t put_uint(uint8_t *p, unsigned field, uint64_t v)
{
	size_t n = put_varint(p, (uint64_t)field << 3);

	return n + put_varint(p + n, v);
}

static int get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	*v = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		if (*p >= end)
			return -1;
		uint8_t b = *(*p)++;

		*v |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80))
			return 0;
	}
	return -1;
}

/* Iterate fields: returns 1 with field/wire type and (for LEN) data, 0 at the end, -1 on garbage. */
static int next_field(const uint8_t **p, const uint8_t *end, unsigned *field, uint64_t *value,
		      const uint8_t **data, size_t *len)
{
	uint64_t tag;

	if (*p >= end)
		return 0;
	if (get_varint(p, end, &tag) < 0)
		return -1;
	*field = (unsigned)(tag >> 3);
	switch (tag & 7) {
	case 0:
		return get_varint(p, end, value) < 0 ? -1 : 1;
	case 2:
		if (get_varint(p, end, value) < 0 || *value > (uint64_t)(end - *p))
			return -1;
		*data = *p;
		*len = (size_t)*value;
		*p += *len;
		return 2;
	case 1:
		if (end - *p < 8)
			return -1;
		*p += 8;
		return 1;
	case 5:
		if (end - *p < 4)
			return -1;
		*p += 4;
		return 1;
	default:
		return -1;
	}
}

/* ---- lease ownership ------------------------------------------------------------------------- */

int native_lease_known(const struct native *n, int64_t id)
{
	for (size_t i = 0; i < n->n_leases; i++)
		if (n->leases[i] == id)
			return 1;
	return 0;
}

void native_lease_add(struct native *n, int64_t id)
{
	if (native_lease_known(n, id))
		return;
	/* a cache, not the truth (that is in the core etcd): when full, forget the oldest */
	if (n->n_leases == NATIVE_LEASE_CACHE) {
		n->leases[n->lease_evict] = id;
		n->lease_evict = (n->lease_evict + 1) % NATIVE_LEASE_CACHE;
		return;
	}
	if (n->n_leases == n->cap_leases) {
		n->cap_leases = n->cap_leases ? n->cap_leases * 2 : 64;
		n->leases = realloc(n->leases, n->cap_leases * sizeof(int64_t));
		if (n->leases == NULL)
			abort();
	}
	n->leases[n->n_leases++] = id;
}

struct lease_op {
	lease_cb *cb;
	void *ctx;
	int64_t id;
};

static size_t record_key(const struct native *n, int64_t id, uint8_t *buf, size_t size)
{
	int len = snprintf((char *)buf, size, RECORD_PREFIX "%s/%016" PRIx64, n->name, (uint64_t)id);

	return (size_t)len < size ? (size_t)len : size - 1;
}

static struct lease_op *lease_op_new(lease_cb *cb, void *ctx, int64_t id)
{
	struct lease_op *op = malloc(sizeof(*op));

	if (op == NULL)
		abort();
	op->cb = cb;
	op->ctx = ctx;
	op->id = id;
	return op;
}

/* RangeResponse: count (f4) for a count_only lookup. */
static void on_lookup(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct lease_op *op = ctx;
	const uint8_t *p = resp, *end = resp + len, *data;
	unsigned field;
	uint64_t v, count = 0;
	size_t dlen;
	int r;

	while (ok && (r = next_field(&p, end, &field, &v, &data, &dlen)) > 0)
		if (r == 1 && field == 4)
			count = v;
	op->cb(n, op->ctx, ok, op->id, count > 0);
	free(op);
}

int native_lease_lookup(struct native *n, int64_t id, lease_cb *cb, void *ctx)
{
	uint8_t key[200], msg[256];
	size_t klen = record_key(n, id, key, sizeof(key));
	size_t len = put_bytes(msg, 1, key, klen);
	struct lease_op *op = lease_op_new(cb, ctx, id);
	int r;

	len += put_uint(msg + len, 9, 1); /* count_only */
	r = native_internal_call(n, "/etcdserverpb.KV/Range", msg, len, on_lookup, op);
	if (r < 0)
		free(op);
	return r;
}

/* RangeResponse: every kvs (f2) key (f1) is a record "<prefix><16 hex digits>". */
static void on_refresh(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct lease_op *op = ctx;
	const uint8_t *p = resp, *end = resp + len, *data;
	unsigned field;
	uint64_t v;
	size_t dlen;
	int r;

	while (ok && (r = next_field(&p, end, &field, &v, &data, &dlen)) > 0) {
		const uint8_t *q, *qend, *key;
		size_t klen;

		if (r != 2 || field != 2)
			continue;
		q = data;
		qend = data + dlen;
		while ((r = next_field(&q, qend, &field, &v, &key, &klen)) > 0) {
			char hex[17];

			if (r != 2 || field != 1 || klen < 16)
				continue;
			memcpy(hex, key + klen - 16, 16);
			hex[16] = '\0';
			native_lease_add(n, (int64_t)strtoull(hex, NULL, 16));
		}
	}
	n->leases_loaded = ok;
	op->cb(n, op->ctx, ok, 0, 0);
	free(op);
}

int native_leases_refresh(struct native *n, lease_cb *cb, void *ctx)
{
	uint8_t key[200], end[200], msg[512];
	int klen = snprintf((char *)key, sizeof(key), RECORD_PREFIX "%s/", n->name);
	size_t len;
	struct lease_op *op = lease_op_new(cb, ctx, 0);
	int r;

	memcpy(end, key, (size_t)klen);
	end[klen - 1]++; /* '/' + 1: the end of the range of this tenant's records */
	len = put_bytes(msg, 1, key, (size_t)klen);
	len += put_bytes(msg + len, 2, end, (size_t)klen);
	len += put_uint(msg + len, 8, 1); /* keys_only */
	r = native_internal_call(n, "/etcdserverpb.KV/Range", msg, len, on_refresh, op);
	if (r < 0)
		free(op);
	return r;
}

static void on_recorded(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct lease_op *op = ctx;

	op->cb(n, op->ctx, ok, op->id, 1);
	free(op);
}

int native_lease_record(struct native *n, int64_t id, lease_cb *cb, void *ctx)
{
	uint8_t key[200], msg[256];
	size_t klen = record_key(n, id, key, sizeof(key));
	size_t len = put_bytes(msg, 1, key, klen);
	struct lease_op *op = lease_op_new(cb, ctx, id);
	int r;

	/* attached to the lease itself: revoked or expired, the record goes with it */
	len += put_uint(msg + len, 3, (uint64_t)id);
	r = native_internal_call(n, "/etcdserverpb.KV/Put", msg, len, on_recorded, op);
	if (r < 0)
		free(op);
	return r;
}

/* MemberListResponse with this proxy as the only member: clients that sync endpoints stay here. */
size_t native_member_list(struct native *n, uint8_t *buf, size_t size)
{
	uint8_t member[400], name[100], url[300];
	const char *listen = n->host->tenant->listen;
	int nl = snprintf((char *)name, sizeof(name), "etcdproxy-%s", n->name);
	int ul = strncmp(listen, "unix:", 5) == 0
			 ? snprintf((char *)url, sizeof(url), "unix%s://%s",
				    n->down_ctx != NULL ? "s" : "", listen + 5)
			 : snprintf((char *)url, sizeof(url), "%s://%s",
				    n->down_ctx != NULL ? "https" : "http", listen);
	size_t ml = 0;

	if (nl < 0 || (size_t)nl >= sizeof(name))
		nl = sizeof(name) - 1;
	if (ul < 0 || (size_t)ul >= sizeof(url))
		ul = sizeof(url) - 1;
	ml += put_uint(member + ml, 1, 1);			/* ID */
	ml += put_bytes(member + ml, 2, name, (size_t)nl);	/* name */
	ml += put_bytes(member + ml, 4, url, (size_t)ul);	/* clientURLs */
	if (ml + 8 > size)
		return 0;
	return put_bytes(buf, 2, member, ml); /* members */
}

/* ---- sending ---------------------------------------------------------------------------------------- */

const uint8_t *native_gather(struct native *n, nghttp2_session *s, size_t *len_r, int *error_r)
{
	size_t len = 0;

	*error_r = 0;
	for (;;) {
		const uint8_t *data;
		ssize_t got = nghttp2_session_mem_send(s, &data);

		if (got < 0) {
			*error_r = (int)got;
			*len_r = 0;
			return NULL;
		}
		if (got == 0)
			break;
		if (len + (size_t)got > n->gather_cap) {
			size_t cap = n->gather_cap ? n->gather_cap * 2 : NATIVE_GATHER;

			while (cap < len + (size_t)got)
				cap *= 2;
			n->gather = realloc(n->gather, cap);
			if (n->gather == NULL)
				abort();
			n->gather_cap = cap;
		}
		memcpy(n->gather + len, data, (size_t)got);
		len += (size_t)got;
		if (len >= NATIVE_GATHER)
			break; /* a frame is at most 16 KiB: the buffer stays under 2 * NATIVE_GATHER */
	}
	*len_r = len;
	return len > 0 ? n->gather : NULL;
}

int native_write(uv_stream_t *stream, const uint8_t *data, size_t len, size_t *pending,
		 uv_write_cb done)
{
	struct native_write *w;
	uv_buf_t b;
	int r;

	if (*pending == 0) {
		/* the usual case: the socket takes it all at once, and nothing is copied */
		b = uv_buf_init((char *)data, (unsigned)len);
		r = uv_try_write(stream, &b, 1);
		if (r == (int)len)
			return 0;
		if (r > 0) {
			data += r;
			len -= (size_t)r;
		} else if (r != UV_EAGAIN) {
			return r;
		}
	}
	w = malloc(NATIVE_WRITE_HEAD + len);
	if (w == NULL)
		abort();
	memcpy(w->data, data, len);
	w->pending = pending;
	w->len = len;
	*pending += len;
	b = uv_buf_init((char *)w->data, (unsigned)len);
	r = uv_write(&w->req, stream, &b, 1, done);
	if (r < 0) {
		*pending -= len;
		free(w);
	}
	return r;
}

void native_write_done(uv_write_t *req)
{
	struct native_write *w = (struct native_write *)req;

	*w->pending -= w->len;
	free(w);
}

int native_send(uv_stream_t *stream, struct native_tls *t, const uint8_t *data, size_t len,
		size_t *pending, uv_write_cb done, const char **why_r)
{
	int r;

	if (t->ssl == NULL) {
		r = native_write(stream, data, len, pending, done);
		if (r < 0)
			*why_r = uv_strerror(r);
		return r;
	}
	/* memory BIOs: SSL_write takes everything at once, the records wait in wbio */
	if (len > 0 && SSL_write(t->ssl, data, (int)len) != (int)len) {
		*why_r = native_tls_reason(t);
		return -EPROTO;
	}
	return native_tls_flush(t, stream, pending, done, why_r);
}

/* ---- TLS through memory BIOs ------------------------------------------------------------ */

/* OpenSSL's first queued reason (static), the queue cleared. */
static const char *openssl_reason(void)
{
	static char buf[300];
	unsigned long e = ERR_get_error();
	const char *reason;

	ERR_clear_error();
	if (e == 0)
		return "TLS error";
	reason = ERR_reason_error_string(e);
	if (reason != NULL)
		return reason;
	ERR_error_string_n(e, buf, sizeof(buf));
	return buf;
}

const char *native_tls_reason(const struct native_tls *t)
{
	static char buf[300];
	long v = t->ssl != NULL ? SSL_get_verify_result(t->ssl) : X509_V_OK;

	if (t->refusal != NULL) {
		ERR_clear_error();
		return t->refusal;
	}
	if (v != X509_V_OK) {
		ERR_clear_error();
		snprintf(buf, sizeof(buf), "certificate verify failed: %s",
			 X509_verify_cert_error_string(v));
		return buf;
	}
	return openssl_reason();
}

int native_tls_start(struct native_tls *t, SSL_CTX *ctx, int server)
{
	memset(t, 0, sizeof(*t));
	t->ssl = SSL_new(ctx);
	if (t->ssl == NULL)
		return -1;
	t->rbio = BIO_new(BIO_s_mem());
	t->wbio = BIO_new(BIO_s_mem());
	if (t->rbio == NULL || t->wbio == NULL) {
		BIO_free(t->rbio);
		BIO_free(t->wbio);
		native_tls_free(t);
		return -1;
	}
	SSL_set_bio(t->ssl, t->rbio, t->wbio); /* the SSL owns both BIOs now */
	SSL_set_app_data(t->ssl, t);          /* for the handshake callbacks */
	if (server)
		SSL_set_accept_state(t->ssl);
	else
		SSL_set_connect_state(t->ssl);
	return 0;
}

void native_tls_free(struct native_tls *t)
{
	SSL_free(t->ssl); /* and its BIOs; the context loses a reference */
	memset(t, 0, sizeof(*t));
}

void native_tls_feed(struct native_tls *t, const uint8_t *data, size_t len)
{
	BIO_write(t->rbio, data, (int)len); /* a memory BIO takes everything */
}

int native_tls_handshake(struct native_tls *t, const char **why_r)
{
	int r = SSL_do_handshake(t->ssl);

	if (r == 1) {
		t->handshake_done = 1;
		return 1;
	}
	r = SSL_get_error(t->ssl, r);
	if (r == SSL_ERROR_WANT_READ || r == SSL_ERROR_WANT_WRITE)
		return 0;
	*why_r = native_tls_reason(t);
	return -1;
}

int native_tls_alpn_h2(const struct native_tls *t)
{
	const unsigned char *alpn = NULL;
	unsigned len = 0;

	SSL_get0_alpn_selected(t->ssl, &alpn, &len);
	return len == 2 && memcmp(alpn, "h2", 2) == 0;
}

int native_tls_read(struct native_tls *t, native_plain_cb *deliver, void *ctx, const char **why_r)
{
	uint8_t plain[16384];

	for (;;) {
		int n = SSL_read(t->ssl, plain, sizeof(plain));

		if (n > 0) {
			if (deliver(ctx, plain, (size_t)n) < 0)
				return 1;
			continue;
		}
		n = SSL_get_error(t->ssl, n);
		if (n == SSL_ERROR_WANT_READ || n == SSL_ERROR_WANT_WRITE)
			return 0;
		*why_r = n == SSL_ERROR_ZERO_RETURN ? "the peer closed the TLS session"
						    : native_tls_reason(t);
		return -1;
	}
}

int native_tls_flush(struct native_tls *t, uv_stream_t *stream, size_t *pending, uv_write_cb done,
		     const char **why_r)
{
	char *data;
	long have = BIO_get_mem_data(t->wbio, &data);
	int r;

	if (have <= 0)
		return 0;
	/* the records straight from wbio's buffer (native_write copies what waits), then emptied */
	r = native_write(stream, (const uint8_t *)data, (size_t)have, pending, done);
	(void)BIO_reset(t->wbio);
	if (r < 0) {
		*why_r = uv_strerror(r);
		return r;
	}
	return 0;
}

/* ---- TLS contexts ------------------------------------------------------------------------ */

/* "what: reason" of a common-code failure, which is replaced (both malloc'ed). */
static char *prefixed(const char *what, char *reason)
{
	char *s = ep_xprintf("%s: %s", what, reason);

	free(reason);
	return s;
}

/* Trust every certificate of a PEM bundle (instead of the system's CAs). */
static int trust_bundle(SSL_CTX *ctx, const char *what, const char *path, int client_ca_list,
			char **error_r)
{
	STACK_OF(X509) *cas = NULL;
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	int r = ep_pem_load_certs(path, &cas, error_r);

	if (r < 0) {
		*error_r = prefixed(what, *error_r);
		return r;
	}
	for (int i = 0; i < sk_X509_num(cas); i++) {
		X509 *x = sk_X509_value(cas, i);

		X509_STORE_add_cert(store, x); /* a duplicate is fine */
		/* the CA names a client is told to choose its certificate by */
		if (client_ca_list)
			SSL_CTX_add_client_CA(ctx, x);
	}
	ERR_clear_error();
	sk_X509_pop_free(cas, X509_free);
	return 0;
}

/*
 * The certificate chain (leaf first) and its key: both readable PEM, the key
 * the leaf's, the leaf valid now.  Read once and used as read, so what is
 * checked is what is served.
 */
static int use_pair(SSL_CTX *ctx, const char *cert_what, const char *cert_file,
		    const char *key_what, const char *key_file, char **error_r)
{
	STACK_OF(X509) *chain = NULL, *rest = NULL;
	EVP_PKEY *key = NULL;
	X509 *leaf;
	char *cw = ep_xprintf("%s %s", cert_what, cert_file);
	char *kw = ep_xprintf("%s %s", key_what, key_file);
	int r;

	r = ep_pem_load_certs(cert_file, &chain, error_r);
	if (r < 0) {
		*error_r = prefixed(cert_what, *error_r);
		goto out;
	}
	r = ep_pem_load_key(key_file, &key, error_r);
	if (r < 0) {
		*error_r = prefixed(key_what, *error_r);
		goto out;
	}
	leaf = sk_X509_value(chain, 0);
	r = ep_tls_check_pair(leaf, key, cw, kw, error_r);
	if (r < 0)
		goto out;
	/* X509_cmp_current_time: -1 before now, 1 after now, 0 unreadable */
	if (X509_cmp_current_time(X509_get0_notBefore(leaf)) >= 0) {
		char when[32];

		ep_time_format(ep_x509_not_before(leaf), when, sizeof(when));
		*error_r = ep_xprintf("%s: the certificate is not valid yet (not before %s)", cw,
				   when);
		r = -EINVAL;
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
		char when[32];

		ep_time_format(ep_x509_not_after(leaf), when, sizeof(when));
		*error_r = ep_xprintf("%s: the certificate expired on %s", cw, when);
		r = -EINVAL;
		goto out;
	}
	rest = sk_X509_new_null();
	for (int i = 1; i < sk_X509_num(chain); i++)
		sk_X509_push(rest, sk_X509_value(chain, i));
	if (SSL_CTX_use_cert_and_key(ctx, leaf, key, rest, 1) != 1) {
		*error_r = ep_xprintf("%s: OpenSSL refuses it: %s", cw, openssl_reason());
		r = -EINVAL;
	}
out:
	ERR_clear_error();
	sk_X509_free(rest); /* the certificates belong to chain */
	sk_X509_pop_free(chain, X509_free);
	EVP_PKEY_free(key);
	free(cw);
	free(kw);
	return r;
}

/* ALPN list of the client's hello: 1 when "h2" is in it. */
static int alpn_list_has_h2(const unsigned char *p, size_t len)
{
	while (len > 0) {
		size_t l = p[0];

		if (l + 1 > len)
			return 0;
		if (l == 2 && memcmp(p + 1, "h2", 2) == 0)
			return 1;
		p += l + 1;
		len -= l + 1;
	}
	return 0;
}

/* A client without ALPN h2 is refused before any work on certificates, with the reason. */
static int on_client_hello(SSL *ssl, int *alert, void *arg)
{
	struct native_tls *t = SSL_get_app_data(ssl);
	const unsigned char *ext;
	size_t len;

	if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &ext,
				      &len) != 1) {
		t->refusal = "the client did not offer ALPN h2 (no ALPN at all): gRPC needs HTTP/2";
	} else if (len < 2 || (size_t)(ext[0] << 8 | ext[1]) != len - 2 ||
		   !alpn_list_has_h2(ext + 2, len - 2)) {
		t->refusal = "the client did not offer ALPN h2 (only other protocols): gRPC needs "
			     "HTTP/2";
	} else {
		return SSL_CLIENT_HELLO_SUCCESS;
	}
	*alert = SSL_AD_NO_APPLICATION_PROTOCOL;
	return SSL_CLIENT_HELLO_ERROR;
}

static int on_alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
			  const unsigned char *in, unsigned inlen, void *arg)
{
	static const unsigned char h2[] = { 'h', '2' };

	if (!alpn_list_has_h2(in, inlen))
		return SSL_TLSEXT_ERR_ALERT_FATAL;
	*out = h2;
	*outlen = 2;
	return SSL_TLSEXT_ERR_OK;
}

SSL_CTX *native_server_ctx(const struct ep_tls_material *m, char **error_r)
{
	static const unsigned char sid_ctx[] = "etcdproxy-native";
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (ctx == NULL) {
		*error_r = ep_xprintf("cannot create a TLS context: %s",
				   openssl_reason());
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* resumed sessions are verified sessions; a new context has new ticket keys */
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	SSL_CTX_set_client_hello_cb(ctx, on_client_hello, NULL);
	SSL_CTX_set_alpn_select_cb(ctx, on_alpn_select, NULL);
	if (use_pair(ctx, "certFile", m->cert_file, "keyFile", m->key_file, error_r) < 0 ||
	    trust_bundle(ctx, "clientCAFile", m->client_ca_file, 1, error_r) < 0) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

SSL_CTX *native_client_ctx(const struct ep_core_etcd *core, char **error_r)
{
	static const unsigned char alpn[] = { 2, 'h', '2' };
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		*error_r = ep_xprintf("cannot create a TLS context: %s",
				   openssl_reason());
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (core->ca_file != NULL) {
		if (trust_bundle(ctx, "core_etcd.ca_file", core->ca_file, 0, error_r) < 0)
			goto fail;
	} else {
		SSL_CTX_set_default_verify_paths(ctx);
	}
	if ((core->cert_file != NULL) != (core->key_file != NULL)) {
		*error_r = ep_xprintf("core_etcd: cert_file and key_file go together (%s is missing)",
				   core->cert_file == NULL ? "cert_file" : "key_file");
		goto fail;
	}
	if (core->cert_file != NULL && use_pair(ctx, "core_etcd.cert_file", core->cert_file,
						"core_etcd.key_file", core->key_file, error_r) < 0)
		goto fail;
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* ---- PING acknowledgements ---------------------------------------------------------------------- */

void ping_ack_release(nghttp2_session *s, struct ping_ack *p)
{
	if (p->pending && s != NULL) {
		nghttp2_submit_ping(s, NGHTTP2_FLAG_ACK, p->opaque);
		p->pending = 0;
	}
}

static void on_ack_timer(uv_timer_t *t)
{
	struct native *n = t->data;

	for (struct down_conn *dc = n->conns; dc != NULL; dc = dc->next) {
		if (dc->ping.pending) {
			ping_ack_release(dc->session, &dc->ping);
			dc->flush_pending = 1;
		}
	}
	for (unsigned i = 0; i < n->n_upstreams; i++) {
		if (n->ups[i].ping.pending) {
			ping_ack_release(n->ups[i].session, &n->ups[i].ping);
			n->ups[i].flush_pending = 1;
		}
	}
	native_flush_marked(n);
}

void ping_ack_hold(struct native *n, nghttp2_session *s, struct ping_ack *p,
		   const uint8_t opaque[8])
{
	ping_ack_release(s, p); /* an older one goes with the next write */
	memcpy(p->opaque, opaque, 8);
	p->pending = 1;
	if (!uv_is_active((uv_handle_t *)&n->ack_timer) && !n->upstreams_closed)
		uv_timer_start(&n->ack_timer, on_ack_timer, NATIVE_PING_ACK_DELAY_MS, 0);
}

/* ---- counters ------------------------------------------------------------------------------------ */

void native_count_method(struct native *n, const char *path, int status)
{
	struct native_counters *k = &n->counters;
	size_t i;

	if (status < 0 || status > 16)
		status = 2; /* UNKNOWN */
	for (i = 0; i < k->n_methods; i++)
		if (k->methods[i].path == path || strcmp(k->methods[i].path, path) == 0)
			break;
	if (i == k->n_methods) {
		if (k->n_methods == NATIVE_MAX_METHODS)
			return;
		k->methods[k->n_methods++].path = path;
	}
	k->methods[i].by_status[status]++;
}

/* The counters as JSON for the supervisor (ep_backend_ops.counters). */
static char *native_counters(void *state)
{
	static const char *const le[] = { "100us", "250us", "500us", "1ms", "2.5ms", "5ms", "10ms",
					  "25ms", "50ms", "100ms", "1s", "+Inf" };
	struct native *n = state;
	struct native_counters *k = &n->counters;
	cJSON *o = cJSON_CreateObject(), *lat, *methods;
	char *text;

	cJSON_AddNumberToObject(o, "calls", (double)k->calls);
	cJSON_AddNumberToObject(o, "calls_ok", (double)k->calls_ok);
	cJSON_AddNumberToObject(o, "calls_failed", (double)k->calls_failed);
	cJSON_AddNumberToObject(o, "denied", (double)k->denied);
	cJSON_AddNumberToObject(o, "bytes_in", (double)k->bytes_in);
	cJSON_AddNumberToObject(o, "bytes_out", (double)k->bytes_out);
	cJSON_AddNumberToObject(o, "active_streams", (double)k->active_streams);
	cJSON_AddNumberToObject(o, "upstream_errors", (double)k->upstream_errors);
	cJSON_AddNumberToObject(o, "tls_handshakes", (double)k->tls_handshakes);
	cJSON_AddNumberToObject(o, "tls_handshake_failures", (double)k->tls_handshake_failures);
	lat = cJSON_AddObjectToObject(o, "latency_le");
	for (size_t i = 0; i < 12; i++)
		cJSON_AddNumberToObject(lat, le[i], (double)k->latency_us_buckets[i]);
	methods = cJSON_AddObjectToObject(o, "methods");
	for (size_t i = 0; i < k->n_methods; i++) {
		cJSON *m = cJSON_AddObjectToObject(methods, k->methods[i].path);

		for (int s = 0; s <= 16; s++) {
			char code[8];

			if (k->methods[i].by_status[s] == 0)
				continue;
			snprintf(code, sizeof(code), "%d", s);
			cJSON_AddNumberToObject(m, code, (double)k->methods[i].by_status[s]);
		}
	}
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

/* ---- options ------------------------------------------------------------------------------------ */

static int parse_compaction(const char *s, enum compaction_policy *p)
{
	if (strcmp(s, "ignore") == 0)
		*p = COMPACT_IGNORE;
	else if (strcmp(s, "allow") == 0)
		*p = COMPACT_ALLOW;
	else if (strcmp(s, "deny") == 0)
		*p = COMPACT_DENY;
	else
		return -EINVAL;
	return 0;
}

static int parse_options(struct native *n, const char **error_r)
{
	cJSON *o = cJSON_Parse(n->host->tenant->options_json);
	const cJSON *m;
	int r = 0;

	n->max_message = 2u << 20;
	n->max_streams = 1000;
	n->idle_timeout_ms = 300000;
	n->n_upstreams = 2;
	n->drain_timeout_ms = 4000; /* below half the default stop_timeout, when SIGTERM comes */
	n->compaction = COMPACT_IGNORE;
	n->cred_poll_ms = NATIVE_CRED_POLL_MS;
	if (!cJSON_IsObject(o)) {
		*error_r = "backends.native: expected an object";
		r = -EINVAL;
		goto out;
	}
	cJSON_ArrayForEach(m, o)
	{
		const char *k = m->string;

		if (strcmp(k, "max_message") == 0 && cJSON_IsNumber(m) && m->valuedouble >= 1024 &&
		    m->valuedouble <= 64.0 * 1024 * 1024)
			n->max_message = (size_t)m->valuedouble;
		else if (strcmp(k, "max_streams") == 0 && cJSON_IsNumber(m) && m->valuedouble >= 1 &&
			 m->valuedouble <= 1e6)
			n->max_streams = (uint32_t)m->valuedouble;
		else if (strcmp(k, "upstreams") == 0 && cJSON_IsNumber(m) && m->valuedouble >= 1 &&
			 m->valuedouble <= 64)
			n->n_upstreams = (unsigned)m->valuedouble;
		else if (strcmp(k, "idle_timeout") == 0 && cJSON_IsString(m) &&
			 ep_duration_parse(m->valuestring, &n->idle_timeout_ms) == 0)
			;
		else if (strcmp(k, "drain_timeout") == 0 && cJSON_IsString(m) &&
			 ep_duration_parse(m->valuestring, &n->drain_timeout_ms) == 0)
			;
		else if (strcmp(k, "compaction") == 0 && cJSON_IsString(m) &&
			 parse_compaction(m->valuestring, &n->compaction) == 0)
			;
		else if (strcmp(k, "credentials_poll_interval") == 0 && cJSON_IsString(m) &&
			 ep_duration_parse(m->valuestring, &n->cred_poll_ms) == 0 &&
			 n->cred_poll_ms <= UINT32_MAX)
			;
		else {
			*error_r = "backends.native: expected max_message (bytes, 1024..64 MiB), "
				   "max_streams (1..1000000), upstreams (1..64), idle_timeout, "
				   "drain_timeout and credentials_poll_interval (\"5m\", \"0s\"), "
				   "compaction (\"ignore\", \"allow\", \"deny\")";
			r = -EINVAL;
			goto out;
		}
	}
	/* the tenant's own spec.policy wins over the backend-wide default */
	cJSON_Delete(o);
	o = cJSON_Parse(n->host->tenant->policy_json ? n->host->tenant->policy_json : "{}");
	m = cJSON_GetObjectItemCaseSensitive(o, "compaction");
	if (cJSON_IsString(m) && parse_compaction(m->valuestring, &n->compaction) < 0) {
		*error_r = "spec.policy.compaction: expected \"ignore\", \"allow\" or \"deny\"";
		r = -EINVAL;
	}
out:
	cJSON_Delete(o);
	return r;
}

/* The error text of init() (which frees n on failure): one at a time, loop thread only. */
static const char *init_error(char *reason)
{
	static char buf[1024];

	snprintf(buf, sizeof(buf), "%s", reason);
	free(reason);
	return buf;
}

/* TLS towards the core etcd: verify it with ca_file, present the core client certificate, ALPN h2. */
static int make_up_ctx(struct native *n, const char **error_r)
{
	char *err = NULL;

	n->up_ctx = native_client_ctx(&n->host->tenant->core, &err);
	if (n->up_ctx == NULL) {
		*error_r = init_error(err);
		return -EINVAL;
	}
	return 0;
}

/* "http[s]://host:port" -> host, port; one scheme for every endpoint. */
static int parse_endpoints(struct native *n, const char **error_r)
{
	const struct ep_core_etcd *core = &n->host->tenant->core;
	int tls = -1;

	n->ep_host = calloc(core->n_endpoints, sizeof(char *));
	n->ep_port = calloc(core->n_endpoints, sizeof(char *));
	if (n->ep_host == NULL || n->ep_port == NULL)
		abort();
	for (size_t i = 0; i < core->n_endpoints; i++) {
		const char *url = core->endpoints[i], *hp, *colon;
		int is_tls = strncmp(url, "https://", 8) == 0;

		if (!is_tls && strncmp(url, "http://", 7) != 0) {
			*error_r = "core_etcd.endpoints: expected http:// or https:// URLs";
			return -EINVAL;
		}
		if (tls >= 0 && tls != is_tls) {
			*error_r = "core_etcd.endpoints: mixing http:// and https:// endpoints";
			return -EINVAL;
		}
		tls = is_tls;
		hp = url + (is_tls ? 8 : 7);
		colon = strrchr(hp, ':');
		if (colon == NULL || (hp[0] == '[' && colon[-1] != ']')) {
			*error_r = "core_etcd.endpoints: expected http[s]://HOST:PORT";
			return -EINVAL;
		}
		if (hp[0] == '[')
			n->ep_host[i] = strndup(hp + 1, (size_t)(colon - hp - 2));
		else
			n->ep_host[i] = strndup(hp, (size_t)(colon - hp));
		n->ep_port[i] = strndup(colon + 1, strcspn(colon + 1, "/"));
		n->n_endpoints = i + 1;
	}
	return tls == 1 ? make_up_ctx(n, error_r) : 0;
}

/* ---- reloading TLS material --------------------------------------------------------------- */

/* TLS towards the clients, from the certificate source's current material. */
static int load_down_ctx(struct native *n, const char **error_r)
{
	const struct ep_tls_material *m;
	char *err = NULL;

	/* an older host has no tls_material: plaintext, as before */
	m = n->host->tls_material != NULL ? n->host->tls_material(n->host) : NULL;
	if (m == NULL)
		return 0;
	n->down_ctx = native_server_ctx(m, &err);
	if (n->down_ctx == NULL) {
		*error_r = init_error(err);
		return -EINVAL;
	}
	n->tls_generation = m->generation;
	n->host->log(n->host, EP_LOG_INFO, "TLS material generation %" PRIu64 " in use",
		     m->generation);
	return 0;
}

/* ep_backend_ops.tls_changed: new handshakes use the new material, open connections go on. */
static void native_tls_changed(void *state)
{
	struct native *n = state;
	const struct ep_tls_material *m;
	SSL_CTX *ctx;
	char *err = NULL;

	m = n->host->tls_material != NULL ? n->host->tls_material(n->host) : NULL;
	if (m == NULL) {
		if (n->down_ctx != NULL)
			n->host->log(n->host, EP_LOG_WARNING, "the TLS material was withdrawn: "
				     "generation %" PRIu64 " stays in use", n->tls_generation);
		return;
	}
	if (n->down_ctx == NULL) {
		/* the listener speaks h2c: switching a running tenant to TLS takes a new worker */
		n->host->log(n->host, EP_LOG_WARNING,
			     "TLS material generation %" PRIu64 " ignored: this worker serves "
			     "plaintext h2c", m->generation);
		return;
	}
	ctx = native_server_ctx(m, &err);
	if (ctx == NULL) {
		n->host->log(n->host, EP_LOG_WARNING, "TLS material generation %" PRIu64 " cannot "
			     "be used, generation %" PRIu64 " stays in use: %s", m->generation,
			     n->tls_generation, err);
		free(err);
		return;
	}
	SSL_CTX_free(n->down_ctx); /* the open connections' SSLs keep it alive */
	n->down_ctx = ctx;
	n->tls_generation = m->generation;
	n->host->log(n->host, EP_LOG_INFO, "TLS material generation %" PRIu64 " in use%s",
		     m->generation, m->client_ca_changed ? " (new client CA bundle)" : "");
}

/* The core etcd's credentials changed on disk (and stayed quiet a moment): rebuild. */
static void on_cred_quiet(uv_timer_t *t)
{
	struct native *n = t->data;
	char *err = NULL;
	SSL_CTX *ctx;

	if (n->stopping)
		return;
	ctx = native_client_ctx(&n->host->tenant->core, &err);
	if (ctx == NULL) {
		n->host->log(n->host, EP_LOG_WARNING,
			     "the core etcd credentials changed but cannot be used, the previous "
			     "ones stay in use: %s", err);
		free(err);
		return;
	}
	SSL_CTX_free(n->up_ctx); /* open upstream connections keep theirs */
	n->up_ctx = ctx;
	n->host->log(n->host, EP_LOG_INFO, "the core etcd credentials were reloaded: new "
		     "connections to the core etcd use them");
}

static void on_cred_changed(uv_fs_poll_t *h, int status, const uv_stat_t *prev,
			    const uv_stat_t *curr)
{
	struct native *n = h->data;

	/* a certificate and its key are replaced one after the other: wait for both */
	if (!n->stopping)
		uv_timer_start(&n->cred_quiet, on_cred_quiet, NATIVE_CRED_QUIET_MS, 0);
}

static void on_cred_poll_closed(uv_handle_t *h)
{
	native_release(h->data);
}

static void cred_watch_start(struct native *n)
{
	const struct ep_core_etcd *core = &n->host->tenant->core;
	const char *files[3] = { core->ca_file, core->cert_file, core->key_file };
	int r;

	if (n->up_ctx == NULL || n->cred_poll_ms == 0)
		return;
	for (int i = 0; i < 3; i++) {
		uv_fs_poll_t *p = &n->cred_poll[n->n_cred_poll];

		if (files[i] == NULL)
			continue;
		uv_fs_poll_init(n->loop, p);
		p->data = n;
		n->open_handles++;
		n->n_cred_poll++;
		r = uv_fs_poll_start(p, on_cred_changed, files[i], (unsigned)n->cred_poll_ms);
		if (r < 0)
			n->host->log(n->host, EP_LOG_WARNING, "cannot watch %s for changes: %s",
				     files[i], uv_strerror(r));
	}
}

static void cred_watch_stop(struct native *n)
{
	uv_timer_stop(&n->cred_quiet);
	for (int i = 0; i < n->n_cred_poll; i++)
		if (!uv_is_closing((uv_handle_t *)&n->cred_poll[i]))
			uv_close((uv_handle_t *)&n->cred_poll[i], on_cred_poll_closed);
}

/* ---- life --------------------------------------------------------------------------------------- */

static void free_native(struct native *n)
{
	for (size_t i = 0; i < n->n_endpoints; i++) {
		free(n->ep_host[i]);
		free(n->ep_port[i]);
	}
	free(n->ep_host);
	free(n->ep_port);
	rw_ns_free(&n->ns);
	SSL_CTX_free(n->up_ctx);
	SSL_CTX_free(n->down_ctx);
	free(n->ups);
	free(n->leases);
	free(n->gather);
	free(n->name);
	free(n);
}

void native_release(struct native *n)
{
	n->open_handles--;
	native_maybe_stopped(n);
}

void native_maybe_stopped(struct native *n)
{
	if (!n->stopping)
		return;
	if (n->conns == NULL && !n->upstreams_closed) {
		/* the clients are gone: nothing needs the core etcd any more */
		n->upstreams_closed = 1;
		uv_timer_stop(&n->stop_timer);
		up_shutdown(n);
		uv_close((uv_handle_t *)&n->stop_timer, NULL);
		uv_close((uv_handle_t *)&n->flush_idle, NULL);
		uv_close((uv_handle_t *)&n->flush_check, NULL);
		uv_close((uv_handle_t *)&n->ack_timer, NULL);
		uv_close((uv_handle_t *)&n->cred_quiet, NULL);
		return;
	}
	if (n->upstreams_closed && n->open_handles == 0 && !n->stopped_reported) {
		n->stopped_reported = 1;
		n->host->stopped(n->host);
	}
}

static void on_drain_timeout(uv_timer_t *t)
{
	struct native *n = t->data;

	n->host->log(n->host, EP_LOG_NOTICE, "drain timeout: closing the remaining connections");
	down_close_all(n, 0);
	native_maybe_stopped(n);
}

static void native_stop(void *state, int graceful)
{
	struct native *n = state;

	size_t conns = 0;

	if (n->stopping && graceful)
		return;
	for (struct down_conn *dc = n->conns; dc != NULL; dc = dc->next)
		conns++;
	n->host->log(n->host, EP_LOG_INFO, "stopping%s: %zu client connection%s",
		     graceful ? " gracefully" : "", conns, conns == 1 ? "" : "s");
	n->stopping = 1;
	cred_watch_stop(n);
	down_close_all(n, graceful);
	if (graceful && n->conns != NULL && n->drain_timeout_ms > 0)
		uv_timer_start(&n->stop_timer, on_drain_timeout, n->drain_timeout_ms, 0);
	else if (n->conns != NULL)
		down_close_all(n, 0);
	native_maybe_stopped(n);
}

static int native_start(void *state, const char **error_r)
{
	struct native *n = state;
	int r = down_listen(n, error_r);

	if (r < 0)
		return r;
	cred_watch_start(n);
	return up_init(n);
}

static int native_init(struct ep_host *host, void **state_r, const char **error_r)
{
	struct native *n = calloc(1, sizeof(*n));
	const char *prefix = host->tenant->prefix;
	int r;

	if (n == NULL)
		return -ENOMEM;
	n->host = host;
	n->loop = host->loop;
	n->name = strdup(host->tenant->name);
	r = parse_options(n, error_r);
	if (r == 0)
		r = parse_endpoints(n, error_r);
	if (r == 0)
		r = load_down_ctx(n, error_r);
	if (r == 0 && rw_ns_init(&n->ns, (const uint8_t *)prefix, strlen(prefix)) < 0) {
		*error_r = "the tenant's prefix cannot be namespaced";
		r = -EINVAL;
	}
	if (r < 0) {
		free_native(n);
		return r;
	}
	uv_idle_init(n->loop, &n->flush_idle);
	n->flush_idle.data = n;
	uv_check_init(n->loop, &n->flush_check);
	n->flush_check.data = n;
	uv_timer_init(n->loop, &n->stop_timer);
	n->stop_timer.data = n;
	uv_timer_init(n->loop, &n->ack_timer);
	n->ack_timer.data = n;
	uv_timer_init(n->loop, &n->cred_quiet);
	n->cred_quiet.data = n;
	*state_r = n;
	return 0;
}

static void native_fini(void *state)
{
	struct native *n = state;

	if (!n->upstreams_closed) {
		/* start() failed or stop() never ran: only the loop's own handles are open */
		cred_watch_stop(n);
		uv_close((uv_handle_t *)&n->stop_timer, NULL);
		uv_close((uv_handle_t *)&n->flush_idle, NULL);
		uv_close((uv_handle_t *)&n->flush_check, NULL);
		uv_close((uv_handle_t *)&n->ack_timer, NULL);
		uv_close((uv_handle_t *)&n->cred_quiet, NULL);
		if (n->ups != NULL)
			up_shutdown(n);
		uv_run(n->loop, UV_RUN_NOWAIT);
	}
	free_native(n);
}

static const struct ep_backend_ops native_ops = {
	.start = native_start,
	.stop = native_stop,
	.counters = native_counters,
	.tls_changed = native_tls_changed,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_BACKEND,
	.name = "native",
	.description = "native HTTP/2 gRPC proxy: namespacing, policy, lease scoping",
	.init = native_init,
	.fini = native_fini,
	.ops = &native_ops,
};
