/*
 * The "native" backend plugin: its entry points, options, counters, the TLS
 * module's loading and the reloading of TLS material.  See native.h for the
 * shape of the proxy and the file each part lives in.
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
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <dlfcn.h>

#include "files.h"
#include "util.h"
#include "native.h"
#include "pb.h"

/* MemberListResponse with this proxy as the only member: clients that sync endpoints stay here. */
/*
 * The one member a tenant's clients see: the proxy itself, with an ID of its
 * own (from the tenant and its address, so stable across restarts), used in
 * MemberList, in every response header's member_id and in Status's leader.
 * Clients that check that the leader is a member (python-etcd3's status())
 * then agree.
 */
static uint64_t native_member_id(const char *name, const char *listen)
{
	uint64_t h = 0xcbf29ce484222325ull;
	const char *parts[2] = { name, listen };

	for (int i = 0; i < 2; i++) {
		for (const unsigned char *p = (const unsigned char *)parts[i]; *p; p++) {
			h ^= *p;
			h *= 0x100000001b3ull;
		}
		h ^= ' ';
		h *= 0x100000001b3ull;
	}
	return h != 0 ? h : 1;
}

void native_learn_header(struct native *n, const uint8_t *msg, size_t len)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f, h;

	while (ep_pb_next_field(&p, end, &f) > 0) {
		const uint8_t *q, *qend;

		if (f.number != 1 || f.wire != EP_PB_LEN)
			continue;
		q = f.data;
		qend = f.data + f.len;
		/* ResponseHeader: cluster_id 1, raft_term 4 */
		while (ep_pb_next_field(&q, qend, &h) > 0) {
			if (h.number == 1 && h.wire == EP_PB_VARINT)
				n->cluster_id = h.value;
			else if (h.number == 4 && h.wire == EP_PB_VARINT)
				n->raft_term = h.value;
		}
		return;
	}
}

size_t native_member_list(struct native *n, uint8_t *buf, size_t size)
{
	uint8_t member[400], name[100], url[300], header[40], *hp = header;
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
	ml = (size_t)(ep_pb_put_uint(member, 1, n->ns.member_id) - member);	    /* ID */
	ml = (size_t)(ep_pb_put_bytes(member + ml, 2, name, (size_t)nl) - member); /* name */
	ml = (size_t)(ep_pb_put_bytes(member + ml, 4, url, (size_t)ul) - member);  /* clientURLs */
	/* ResponseHeader: the core's cluster ID and term, the proxy as the member */
	if (n->cluster_id != 0)
		hp = ep_pb_put_uint(hp, 1, n->cluster_id);
	hp = ep_pb_put_uint(hp, 2, n->ns.member_id);
	if (n->raft_term != 0)
		hp = ep_pb_put_uint(hp, 4, n->raft_term);
	if ((size_t)(hp - header) + ml + 16 > size)
		return 0;
	hp = ep_pb_put_bytes(buf, 1, header, (size_t)(hp - header));
	return (size_t)(ep_pb_put_bytes(hp, 2, member, ml) - buf); /* members */
}

/* ---- TLS: the OpenSSL part is a module of its own (tls.c), loaded when a side uses TLS ---- */

const struct native_tls_ops *native_tls;

int native_tls_load(char **error_r)
{
	Dl_info self;
	const char *slash;
	char *path;
	void *handle;
	const struct native_tls_ops *ops;

	if (native_tls != NULL)
		return 0;
	/* next to this plugin: PLUGIN_DIR/native-tls.so */
	if (dladdr((void *)native_tls_load, &self) == 0 || self.dli_fname == NULL) {
		*error_r = ep_strdup("cannot find the native backend's own file to load its TLS "
				      "module from");
		return -ENOENT;
	}
	slash = strrchr(self.dli_fname, '/');
	path = slash != NULL ? ep_strdup_printf("%.*s/" NATIVE_TLS_MODULE, (int)(slash - self.dli_fname),
					  self.dli_fname)
			     : ep_strdup(NATIVE_TLS_MODULE);
	handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (handle == NULL) {
		*error_r = ep_strdup_printf("cannot load the TLS module %s: %s", path, dlerror());
		free(path);
		return -ENOENT;
	}
	ops = dlsym(handle, "ep_native_tls_ops");
	if (ops == NULL || ops->abi != NATIVE_TLS_ABI) {
		*error_r = ep_strdup_printf("%s: %s", path, ops == NULL ? "no ep_native_tls_ops in it"
							     : "built for another native backend");
		dlclose(handle);
		free(path);
		return -EINVAL;
	}
	free(path);
	native_tls = ops; /* stays loaded: SSL_CTXs and SSLs live on in connections */
	return 0;
}

SSL_CTX *native_server_ctx(const struct ep_tls_material *m, char **error_r)
{
	return native_tls_load(error_r) < 0 ? NULL : native_tls->server_ctx(m, error_r);
}

SSL_CTX *native_client_ctx(const struct ep_core_etcd *core, char **error_r)
{
	return native_tls_load(error_r) < 0 ? NULL : native_tls->client_ctx(core, error_r);
}

void native_ctx_free(SSL_CTX *ctx)
{
	if (ctx != NULL)
		native_tls->ctx_free(ctx); /* a context exists only when the module is loaded */
}

void native_tls_free(struct native_tls *t)
{
	if (t->ssl != NULL)
		native_tls->free(t); /* and zeroes t */
}

int native_tls_flush(struct native_tls *t, uv_stream_t *stream, size_t *pending, uv_write_cb done,
		     const char **why_r)
{
	const uint8_t *data;
	size_t have = native_tls->output(t, &data);
	int r;

	if (have == 0)
		return 0;
	/* the records straight from OpenSSL's buffer (native_write copies what waits), then emptied */
	r = native_write(stream, data, have, pending, done);
	native_tls->output_done(t);
	if (r < 0) {
		*why_r = uv_strerror(r);
		return r;
	}
	return 0;
}

/* ---- counters ------------------------------------------------------------------------------------ */

/* The upper bounds (us) of the latency buckets; the last bucket is +Inf. */
static const uint64_t latency_bounds[NATIVE_LATENCY_BUCKETS - 1] = {
	100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 1000000
};

size_t native_latency_bucket(uint64_t us)
{
	size_t i = 0;

	while (i < NATIVE_LATENCY_BUCKETS - 1 && us >= latency_bounds[i])
		i++;
	return i;
}

static const char *const tls_failure_names[TLS_FAIL_N] = {
	"timeout", "no_alpn", "no_client_certificate", "bad_certificate", "protocol",
};

enum tls_failure native_tls_failure_reason(const char *why)
{
	if (why == NULL)
		return TLS_FAIL_PROTOCOL;
	if (strstr(why, "did not return a certificate") != NULL ||
	    strstr(why, "no certificate") != NULL || strstr(why, "certificate required") != NULL)
		return TLS_FAIL_NO_CLIENT_CERTIFICATE;
	if (strstr(why, "certificate") != NULL || strstr(why, "unknown ca") != NULL)
		return TLS_FAIL_BAD_CERTIFICATE;
	return TLS_FAIL_PROTOCOL;
}

void native_count_method(struct native *n, const char *path, int status, uint64_t us)
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
	k->methods[i].latency_us_buckets[native_latency_bucket(us)]++;
	k->methods[i].latency_us_sum += us;
}

/* The counters as JSON for the supervisor (ep_backend_ops.counters). */
static char *native_counters(void *state)
{
	static const char *const le[NATIVE_LATENCY_BUCKETS] = {
		"100us", "250us", "500us", "1ms", "2.5ms", "5ms", "10ms", "25ms", "50ms", "100ms",
		"1s", "+Inf"
	};
	struct native *n = state;
	struct native_counters *k = &n->counters;

	pool_trim(); /* at every STATUS, 5 s */
	cJSON *o = cJSON_CreateObject(), *lat, *methods, *fails;
	char *text;

	cJSON_AddNumberToObject(o, "calls", (double)k->calls);
	cJSON_AddNumberToObject(o, "calls_ok", (double)k->calls_ok);
	cJSON_AddNumberToObject(o, "calls_failed", (double)k->calls_failed);
	cJSON_AddNumberToObject(o, "denied", (double)k->denied);
	cJSON_AddNumberToObject(o, "bytes_in", (double)k->bytes_in);
	cJSON_AddNumberToObject(o, "bytes_out", (double)k->bytes_out);
	cJSON_AddNumberToObject(o, "active_streams", (double)k->active_streams);
	cJSON_AddNumberToObject(o, "upstream_errors", (double)k->upstream_errors);
	cJSON_AddNumberToObject(o, "puts_streamed", (double)k->puts_streamed);
	cJSON_AddNumberToObject(o, "tls_handshakes", (double)k->tls_handshakes);
	cJSON_AddNumberToObject(o, "tls_handshake_failures", (double)k->tls_handshake_failures);
	fails = cJSON_AddObjectToObject(o, "tls_failures");
	for (size_t i = 0; i < TLS_FAIL_N; i++)
		cJSON_AddNumberToObject(fails, tls_failure_names[i], (double)k->tls_failures[i]);
	cJSON_AddNumberToObject(o, "active_watch_streams", (double)k->active_watch_streams);
	if (n->rl != NULL) {
		uint64_t limited, delayed;
		size_t queued;

		rl_counts(n->rl, &limited, &delayed, &queued);
		cJSON_AddNumberToObject(o, "rate_limited", (double)limited);
		cJSON_AddNumberToObject(o, "rate_delayed", (double)delayed);
		cJSON_AddNumberToObject(o, "rate_queued", (double)queued);
	}
	quota_report(n->quota, o);
	if (n->audit != NULL) {
		uint64_t lines, dropped;

		audit_counts(n->audit, &lines, &dropped);
		cJSON_AddNumberToObject(o, "audit_lines", (double)lines);
		cJSON_AddNumberToObject(o, "audit_dropped", (double)dropped);
	}
	lat = cJSON_AddObjectToObject(o, "latency_le");
	for (size_t i = 0; i < NATIVE_LATENCY_BUCKETS; i++)
		cJSON_AddNumberToObject(lat, le[i], (double)k->latency_us_buckets[i]);
	/* per method: {"codes": {"0": n, ...}, "latency_us": [bucket counts], "latency_us_sum"} */
	methods = cJSON_AddObjectToObject(o, "methods");
	for (size_t i = 0; i < k->n_methods; i++) {
		cJSON *m = cJSON_AddObjectToObject(methods, k->methods[i].path);
		cJSON *codes = cJSON_AddObjectToObject(m, "codes");
		cJSON *buckets = cJSON_AddArrayToObject(m, "latency_us");

		for (int s = 0; s <= 16; s++) {
			char code[8];

			if (k->methods[i].by_status[s] == 0)
				continue;
			snprintf(code, sizeof(code), "%d", s);
			cJSON_AddNumberToObject(codes, code, (double)k->methods[i].by_status[s]);
		}
		for (size_t b = 0; b < NATIVE_LATENCY_BUCKETS; b++)
			cJSON_AddItemToArray(buckets, cJSON_CreateNumber(
						  (double)k->methods[i].latency_us_buckets[b]));
		cJSON_AddNumberToObject(m, "latency_us_sum", (double)k->methods[i].latency_us_sum);
	}
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

/* ---- options ------------------------------------------------------------------------------------ */

/* The error text of init() (which frees n on failure): one at a time, loop thread only. */
static const char *init_error(char *reason)
{
	static char buf[1024];

	snprintf(buf, sizeof(buf), "%s", reason);
	free(reason);
	return buf;
}

/* backends.native, as etcdproxyd.json(5) describes it; parsed by the host (options_parse) */
struct native_options {
	uint64_t max_message, max_streams, upstreams;
	uint64_t idle_timeout_ms, drain_timeout_ms, cred_poll_ms;
	int compaction; /* enum compaction_policy: the order of compaction_names */
};

static const char *const compaction_names[] = { "ignore", "allow", "deny", NULL };

#define OPT(name, type, field, lo, hi, values, help)                                            \
	{ name, type, 0, offsetof(struct native_options, field), lo, hi, values, help }
static const struct ep_option native_options[] = {
	OPT("max_message", EP_OPT_UINT, max_message, 1024, 64 << 20, NULL,
	    "bytes: the largest request message"),
	OPT("max_streams", EP_OPT_UINT, max_streams, 1, 1000000, NULL,
	    "concurrent streams per client connection"),
	OPT("upstreams", EP_OPT_UINT, upstreams, 1, 64, NULL,
	    "HTTP/2 connections to the core etcd"),
	OPT("idle_timeout", EP_OPT_DURATION, idle_timeout_ms, 0, 1e15, NULL,
	    "\"0s\": never close an idle connection"),
	OPT("drain_timeout", EP_OPT_DURATION, drain_timeout_ms, 0, 1e15, NULL,
	    "how long a graceful stop waits for calls"),
	OPT("credentials_poll_interval", EP_OPT_DURATION, cred_poll_ms, 0, UINT32_MAX, NULL,
	    "\"0s\": never check the core etcd credential files"),
	OPT("compaction", EP_OPT_ENUM, compaction, 0, 0, compaction_names,
	    "for tenants without spec.policy.compaction"),
	{ NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL },
};
#undef OPT

static int parse_options(struct native *n, const char **error_r)
{
	struct native_options o = {
		.max_message = 2u << 20,
		.max_streams = 1000,
		.upstreams = 2,
		.idle_timeout_ms = 300000,
		.drain_timeout_ms = 4000, /* below half the default stop_timeout, when SIGTERM comes */
		.cred_poll_ms = NATIVE_CRED_POLL_MS,
		.compaction = COMPACT_IGNORE,
	};
	cJSON *policy;
	const cJSON *m;

	if (n->host->options_parse(n->host, &o, error_r) < 0)
		return -EINVAL;
	n->max_message = (size_t)o.max_message;
	n->max_streams = (uint32_t)o.max_streams;
	n->n_upstreams = (unsigned)o.upstreams;
	n->idle_timeout_ms = o.idle_timeout_ms;
	n->drain_timeout_ms = o.drain_timeout_ms;
	n->cred_poll_ms = o.cred_poll_ms;
	n->compaction = (enum compaction_policy)o.compaction;
	/* the tenant's own spec.policy (checked by the supervisor) wins over the backend-wide default */
	policy = cJSON_Parse(n->host->tenant->policy_json ? n->host->tenant->policy_json : "{}");
	m = cJSON_GetObjectItemCaseSensitive(policy, "compaction");
	for (int i = 0; cJSON_IsString(m) && compaction_names[i] != NULL; i++)
		if (strcmp(m->valuestring, compaction_names[i]) == 0)
			n->compaction = (enum compaction_policy)i;
	/* spec.rateLimit, checked by the supervisor */
	m = cJSON_GetObjectItemCaseSensitive(policy, "rate_limit");
	if (m != NULL && (n->rl = rl_new(n, m, error_r)) == NULL) {
		cJSON_Delete(policy);
		return -EINVAL;
	}
	/* spec.quota, checked by the supervisor */
	m = cJSON_GetObjectItemCaseSensitive(policy, "quota");
	if (m != NULL && (n->quota = quota_new(n, m, error_r)) == NULL) {
		cJSON_Delete(policy);
		return -EINVAL;
	}
	/* spec.audit, resolved by the supervisor: {"file", "max_size", "files"} */
	m = cJSON_GetObjectItemCaseSensitive(policy, "audit");
	if (m != NULL) {
		const cJSON *f = cJSON_GetObjectItemCaseSensitive(m, "file");
		const cJSON *sz = cJSON_GetObjectItemCaseSensitive(m, "max_size");
		const cJSON *k = cJSON_GetObjectItemCaseSensitive(m, "files");
		char *err = NULL;

		if (!cJSON_IsString(f) || !cJSON_IsNumber(sz) || !cJSON_IsNumber(k)) {
			cJSON_Delete(policy);
			*error_r = "policy.audit: expected {\"file\", \"max_size\", \"files\"}";
			return -EINVAL;
		}
		n->audit = audit_open(n->host, n->loop, n->name, f->valuestring,
				      (uint64_t)sz->valuedouble, (unsigned)k->valuedouble, &err);
		if (n->audit == NULL) {
			cJSON_Delete(policy);
			*error_r = init_error(err);
			return -EIO;
		}
	}
	cJSON_Delete(policy);
	return 0;
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
	n->ep_authority = calloc(core->n_endpoints, sizeof(char *));
	if (n->ep_host == NULL || n->ep_port == NULL || n->ep_authority == NULL)
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
		n->ep_authority[i] = strndup(hp, strcspn(hp, "/"));
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
	native_ctx_free(n->down_ctx); /* the open connections' SSLs keep it alive */
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
	native_ctx_free(n->up_ctx); /* open upstream connections keep theirs */
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
		free(n->ep_authority[i]);
	}
	free(n->ep_host);
	free(n->ep_port);
	free(n->ep_authority);
	rw_ns_free(&n->ns);
	native_ctx_free(n->up_ctx);
	native_ctx_free(n->down_ctx);
	free(n->ups);
	free(n->leases);
	free(n->gather);
	rw_buf_free(&n->scratch);
	free(n->name);
	free(n);
}

void native_scratch_shrink(struct native *n)
{
	/* pool blocks, as the byte queues' are: scratch_take() may swap them */
	n->scratch.realloc_fn = pool_realloc;
	n->scratch.free_fn = pool_free;
	rw_buf_free(&n->scratch);
	n->scratch.data = pool_alloc(NATIVE_SCRATCH);
	n->scratch.cap = NATIVE_SCRATCH;
}

/*
 * An upstream connection came up or went down.  Clients are accepted once the
 * first one is up, and the host hears of readiness or its loss.
 */
static void on_upstream_down(uv_timer_t *t)
{
	struct native *n = t->data;

	if (!n->stopping && !up_any_ready(n))
		n->host->health(n->host, 0, "no connection to the core etcd");
}

/*
 * A connection that closes is usually back at once (a GOAWAY, a member that
 * restarts, the next endpoint): the tenant is reported unhealthy only when no
 * connection has been ready for NATIVE_DOWN_GRACE_MS, so that its state (and
 * the alerts on it) does not flap.
 */
void native_upstream_changed(struct native *n)
{
	if (n->stopping || !n->listening)
		return;
	if (up_any_ready(n)) {
		uv_timer_stop(&n->down_timer);
		if (down_accept_start(n) < 0)
			return;
		n->ready_reported = 1;
		n->host->ready(n->host, n->host->tenant->listen);
		quota_kick(n->quota);
	} else if (n->ready_reported && !uv_is_active((uv_handle_t *)&n->down_timer)) {
		uv_timer_start(&n->down_timer, on_upstream_down, NATIVE_DOWN_GRACE_MS, 0);
	}
}

void native_release(struct native *n)
{
	n->open_handles--;
	native_maybe_stopped(n);
}

static void audit_closed(void *ctx)
{
	native_release(ctx);
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
		uv_close((uv_handle_t *)&n->down_timer, NULL);
		return;
	}
	if (n->upstreams_closed && n->rl != NULL) {
		struct ratelimit *rl = n->rl;

		n->rl = NULL;
		n->open_handles++;
		rl_close(rl, audit_closed, n);
	}
	if (n->upstreams_closed && n->quota != NULL) {
		struct quota *q = n->quota;

		n->quota = NULL;
		n->open_handles++;
		quota_close(q, audit_closed, n);
	}
	if (n->upstreams_closed && n->audit != NULL) {
		/* no client is left to write lines: what is buffered goes to the disk */
		struct audit *a = n->audit;

		n->audit = NULL;
		n->open_handles++;
		audit_close(a, audit_closed, n);
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
		audit_close(n->audit, NULL, NULL); /* its timer closes with the loop's next turn */
		n->audit = NULL;
		rl_close(n->rl, NULL, NULL);
		n->rl = NULL;
		quota_close(n->quota, NULL, NULL);
		n->quota = NULL;
		free_native(n);
		return r;
	}
	n->ns.member_id = native_member_id(n->name, host->tenant->listen);
	native_scratch_shrink(n); /* its first NATIVE_SCRATCH bytes, kept for the worker's life */
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
	uv_timer_init(n->loop, &n->down_timer);
	n->down_timer.data = n;
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
		uv_close((uv_handle_t *)&n->down_timer, NULL);
		if (n->ups != NULL)
			up_shutdown(n);
		audit_close(n->audit, NULL, NULL);
		n->audit = NULL;
		rl_close(n->rl, NULL, NULL);
		n->rl = NULL;
		quota_close(n->quota, NULL, NULL);
		n->quota = NULL;
		uv_run(n->loop, UV_RUN_NOWAIT);
		while (n->lookups > 0) /* cancelled or not, their callbacks write into n->ups */
			uv_run(n->loop, UV_RUN_ONCE);
	}
	free_native(n);
}

/* A reload changed spec.quota or spec.rateLimit: the new limits, without a restart. */
static int native_policy_changed(void *state, const char **error_r)
{
	struct native *n = state;
	cJSON *policy = cJSON_Parse(n->host->tenant->policy_json ? n->host->tenant->policy_json
								  : "{}");
	const cJSON *rl = cJSON_GetObjectItemCaseSensitive(policy, "rate_limit");
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(policy, "quota");
	int r = 0;

	if (n->stopping) {
		cJSON_Delete(policy);
		return 0;
	}
	if (n->rl != NULL)
		r = rl_update(n->rl, rl, error_r);
	else if (rl != NULL && (n->rl = rl_new(n, rl, error_r)) == NULL)
		r = -EINVAL;
	if (r == 0 && n->quota != NULL && q != NULL) {
		r = quota_update(n->quota, q, error_r);
	} else if (r == 0 && q != NULL) {
		if ((n->quota = quota_new(n, q, error_r)) == NULL)
			r = -EINVAL;
		else if (n->ready_reported)
			quota_kick(n->quota);
	} else if (r == 0 && n->quota != NULL) {
		struct quota *old = n->quota;

		n->quota = NULL;
		n->open_handles++;
		quota_close(old, audit_closed, n);
	}
	cJSON_Delete(policy);
	return r;
}

static const struct ep_backend_ops native_ops = {
	.start = native_start,
	.stop = native_stop,
	.counters = native_counters,
	.tls_changed = native_tls_changed,
	.policy_changed = native_policy_changed,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_BACKEND,
	.name = "native",
	.description = "native HTTP/2 gRPC proxy: namespacing, policy, lease scoping",
	.init = native_init,
	.fini = native_fini,
	.ops = &native_ops,
	.options = native_options,
};
