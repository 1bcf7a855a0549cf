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
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

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
			q->data = realloc(q->data, cap);
			if (q->data == NULL)
				abort();
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
			free(q->data);
			q->data = NULL;
			q->cap = 0;
		}
	}
}

void bq_free(struct bq *q)
{
	free(q->data);
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
			 ? snprintf((char *)url, sizeof(url), "unix://%s", listen + 5)
			 : snprintf((char *)url, sizeof(url), "http://%s", listen);
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

void *native_gather(nghttp2_session *s, size_t head, size_t *len_r, int *error_r)
{
	uint8_t *block = NULL;
	size_t len = 0, cap = 0;

	*error_r = 0;
	for (;;) {
		const uint8_t *data;
		ssize_t n = nghttp2_session_mem_send(s, &data);

		if (n < 0) {
			free(block);
			*error_r = (int)n;
			*len_r = 0;
			return NULL;
		}
		if (n == 0)
			break;
		if (len + (size_t)n > cap) {
			cap = cap ? cap * 2 : 16384;
			while (cap < len + (size_t)n)
				cap *= 2;
			block = realloc(block, head + cap);
			if (block == NULL)
				abort();
		}
		memcpy(block + head + len, data, (size_t)n);
		len += (size_t)n;
		if (len >= NATIVE_HIGH_WATER)
			break;
	}
	*len_r = len;
	if (len == 0) {
		free(block);
		return NULL;
	}
	return block;
}

int native_write(uv_stream_t *stream, struct native_write *w, size_t len, size_t *pending,
		 uv_write_cb done)
{
	uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)len);
	int r;

	if (*pending == 0) {
		/* the usual case: the socket takes it all at once */
		r = uv_try_write(stream, &b, 1);
		if (r == (int)len) {
			free(w);
			return 0;
		}
		if (r > 0) {
			memmove(w->data, w->data + r, len - (size_t)r);
			len -= (size_t)r;
			b = uv_buf_init((char *)w->data, (unsigned)len);
		} else if (r != UV_EAGAIN) {
			free(w);
			return r;
		}
	}
	w->pending = pending;
	w->len = len;
	*pending += len;
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

static int parse_ms(const char *s, uint64_t *ms)
{
	char *end;
	double v = strtod(s, &end);

	if (end == s || v < 0)
		return -EINVAL;
	if (strcmp(end, "ms") == 0)
		*ms = (uint64_t)v;
	else if (strcmp(end, "s") == 0)
		*ms = (uint64_t)(v * 1000);
	else if (strcmp(end, "m") == 0)
		*ms = (uint64_t)(v * 60000);
	else if (strcmp(end, "h") == 0)
		*ms = (uint64_t)(v * 3600000);
	else
		return -EINVAL;
	return 0;
}

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
			 parse_ms(m->valuestring, &n->idle_timeout_ms) == 0)
			;
		else if (strcmp(k, "drain_timeout") == 0 && cJSON_IsString(m) &&
			 parse_ms(m->valuestring, &n->drain_timeout_ms) == 0)
			;
		else if (strcmp(k, "compaction") == 0 && cJSON_IsString(m) &&
			 parse_compaction(m->valuestring, &n->compaction) == 0)
			;
		else {
			*error_r = "backends.native: expected max_message (bytes, 1024..64 MiB), "
				   "max_streams (1..1000000), upstreams (1..64), idle_timeout and "
				   "drain_timeout (\"5m\", \"0s\"), compaction (\"ignore\", \"allow\", "
				   "\"deny\")";
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

static const char *ssl_error(const char *what)
{
	static char buf[1024];
	char err[256];

	ERR_error_string_n(ERR_get_error(), err, sizeof(err));
	ERR_clear_error();
	snprintf(buf, sizeof(buf), "%s: %s", what, err);
	return buf;
}

/* TLS towards the core etcd: verify it with ca_file, present the core client certificate, ALPN h2. */
static int make_ssl_ctx(struct native *n, const char **error_r)
{
	const struct ep_core_etcd *core = &n->host->tenant->core;
	static const unsigned char alpn[] = { 2, 'h', '2' };
	static char why[512];
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

	if (ctx == NULL) {
		*error_r = ssl_error("cannot create a TLS context");
		return -ENOMEM;
	}
	n->ssl_ctx = ctx;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn));
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (core->ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, core->ca_file, NULL) != 1) {
			snprintf(why, sizeof(why), "core_etcd.ca_file %s", core->ca_file);
			*error_r = ssl_error(why);
			return -EINVAL;
		}
	} else {
		SSL_CTX_set_default_verify_paths(ctx);
	}
	if (core->cert_file != NULL) {
		if (SSL_CTX_use_certificate_chain_file(ctx, core->cert_file) != 1) {
			snprintf(why, sizeof(why), "core_etcd.cert_file %s", core->cert_file);
			*error_r = ssl_error(why);
			return -EINVAL;
		}
		if (SSL_CTX_use_PrivateKey_file(ctx, core->key_file, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			snprintf(why, sizeof(why), "core_etcd.key_file %s", core->key_file);
			*error_r = ssl_error(why);
			return -EINVAL;
		}
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
	return tls == 1 ? make_ssl_ctx(n, error_r) : 0;
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
	SSL_CTX_free(n->ssl_ctx);
	free(n->ups);
	free(n->leases);
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
		uv_close((uv_handle_t *)&n->ack_timer, NULL);
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
	uv_timer_init(n->loop, &n->stop_timer);
	n->stop_timer.data = n;
	uv_timer_init(n->loop, &n->ack_timer);
	n->ack_timer.data = n;
	*state_r = n;
	return 0;
}

static void native_fini(void *state)
{
	struct native *n = state;

	if (!n->upstreams_closed) {
		/* start() failed or stop() never ran: only the two loop handles are open */
		uv_close((uv_handle_t *)&n->stop_timer, NULL);
		uv_close((uv_handle_t *)&n->flush_idle, NULL);
		uv_close((uv_handle_t *)&n->ack_timer, NULL);
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
