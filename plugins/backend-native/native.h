/*
 * The native backend: an HTTP/2 gRPC proxy that ends HTTP/2 at each hop.
 *
 *   client --h2c/TLS--> down_conn --call--> up_conn --h2c/TLS--> core etcd
 *
 * Every downstream gRPC call becomes one upstream stream on one of a few
 * multiplexed upstream connections.  Messages are reassembled per stream and
 * direction, rewritten by rewrite.c, and queued to the other side.  Flow
 * control is end to end: bytes received on one side are only acknowledged
 * (nghttp2_session_consume) while the other side's queue is below a high
 * water mark, so a slow reader on either side stops its writer.
 *
 * Files: native.c (plugin entry, options, counters, TLS loading), conn.c (byte
 * queues, the write path, flush scheduling, PING acknowledgements: what both
 * sides share), downstream.c (client connections: nghttp2's server side),
 * call.c (one gRPC call, the only file that sees both sides), upstream.c (the
 * connections to the core etcd), leases.c (lease ownership records),
 * rewrite.c (the messages), pool.c (memory), tls.c (the OpenSSL module).
 */
#ifndef EP_NATIVE_H
#define EP_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <uv.h>

#include "etcdproxy/plugin.h"
#include "audit.h"
#include "quota.h"
#include "ratelimit.h"
#include "rewrite.h"

#define NATIVE_HIGH_WATER (256 * 1024) /* queued bytes per call direction before backpressure */
#define NATIVE_GATHER (64 * 1024) /* bytes gathered for one write (native_gather) */
#define NATIVE_SCRATCH (4 * 1024) /* the rewrite buffer's size, and what it shrinks back to */
#define NATIVE_SCRATCH_KEEP (256 * 1024) /* beyond this, a large message's buffer is given back */
#define NATIVE_MAX_HEADERS 64
#define NATIVE_LEASE_CACHE 4096 /* lease IDs a worker remembers as the tenant's */
#define NATIVE_GOAWAY_GRACE_MS 200 /* between the two GOAWAYs of a graceful stop */
#define NATIVE_MAX_HEADER_LIST (64 * 1024) /* request metadata, HTTP/2 accounting */
#define UP_CONNECTION_LOST 0xffffffffu /* not an HTTP/2 error code: the connection went */
#define NATIVE_HANDSHAKE_TIMEOUT_MS 10000 /* a client's TLS handshake, from accept to done */
#define NATIVE_CRED_POLL_MS 2000 /* default stat() interval of the core etcd credentials */
#define NATIVE_CRED_QUIET_MS 200 /* after a change, so that a cert and its key are read together */
#define NATIVE_DOWN_GRACE_MS 1000 /* no connection to the core this long: unhealthy */
#define NATIVE_STREAM_MIN (256 * 1024) /* a Range response this large is rewritten as it streams */
#define NATIVE_STREAM_QUEUE (1280 * 1024) /* its queue to the client, made at once (a window) */
/*
 * Puts streaming at once per worker: each has a stream open in the core etcd,
 * which makes room for the whole declared message as soon as its prefix
 * arrives; more wait whole in the worker, as smaller ones do.
 */
#define NATIVE_PUT_STREAMS 16

struct native;
struct down_conn;
struct up_conn;
struct call;

/* A byte queue: data[off..len) is pending. */
struct bq {
	uint8_t *data;
	size_t off, len, cap;
};
void bq_append(struct bq *q, const void *p, size_t n);
/* Room for WANT pending bytes in all, so that appends up to it copy nothing more. */
void bq_reserve(struct bq *q, size_t want);
size_t bq_pending(const struct bq *q);
void bq_consume(struct bq *q, size_t n);
void bq_free(struct bq *q);

/* gRPC message reassembly: bytes in, whole messages out. */
struct grpc_reader {
	struct bq buf;
};

/*
 * A PING acknowledgement held back to ride along with the next write: grpc-go
 * peers send a BDP ping after every DATA frame, and acknowledging each on its
 * own would cost a write per request on each side.
 */
struct ping_ack {
	int pending;
	uint8_t opaque[8];
	uint64_t since; /* uv_now() when it was held */
};
#define NATIVE_PING_ACK_DELAY_MS 20 /* at most this late when nothing else is written */

/*
 * What conn.c knows of a connection of either side, embedded in down_conn and
 * up_conn: that it has output to send, and the PING acknowledgement it holds.
 * conn.c reaches the connection only through flush(), never by name, so the
 * shared part depends on neither side.
 */
struct conn_io {
	struct native *n;
	/* send what the connection's session has; never from inside nghttp2's callbacks */
	void (*flush)(struct conn_io *io);
	struct conn_io *next, **pprev; /* in native.io: every open connection */
	struct conn_io *next_marked;   /* in native.marked while marked */
	int marked;
	struct ping_ack ping;
};

/*
 * Header fields are handed to nghttp2 without a copy: every string submitted
 * is a literal, or belongs to the call or the native, which outlive the frame
 * (a call is freed only after its streams have closed, or after the session
 * that queued its frames is gone).
 */
#define NATIVE_NV_NO_COPY (NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE)

struct hdr {
	char *name, *value;
	size_t namelen, valuelen;
};

/* An internal request the proxy makes on its own (lease ownership records); resp is never NULL. */
typedef void internal_cb(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len);
/* A message of an internal stream (the quota's Watch). */
typedef void internal_msg_cb(struct native *n, void *ctx, const uint8_t *msg, size_t len);

enum compaction_policy { COMPACT_IGNORE, COMPACT_ALLOW, COMPACT_DENY };

#define NATIVE_MAX_METHODS 64

#define NATIVE_LATENCY_BUCKETS 12 /* <100us, <250us, ... see record_latency() */

struct method_count {
	const char *path;     /* from the method table (static), or "unknown" */
	uint64_t by_status[17]; /* gRPC status 0..16 */
	uint64_t latency_us_buckets[NATIVE_LATENCY_BUCKETS];
	uint64_t latency_us_sum;
};

/* Why a client's TLS handshake failed (native_tls_failure_reason()). */
enum tls_failure {
	TLS_FAIL_TIMEOUT,
	TLS_FAIL_NO_ALPN,
	TLS_FAIL_NO_CLIENT_CERTIFICATE,
	TLS_FAIL_BAD_CERTIFICATE,
	TLS_FAIL_PROTOCOL,
	TLS_FAIL_N
};

struct native_counters {
	uint64_t calls, calls_ok, calls_failed, denied;
	uint64_t tls_handshakes, tls_handshake_failures; /* with clients */
	uint64_t tls_failures[TLS_FAIL_N];
	uint64_t bytes_in, bytes_out;
	uint64_t upstream_errors;
	uint64_t puts_streamed; /* large Puts forwarded as they arrived (call.c) */
	uint64_t active_streams;
	uint64_t active_watch_streams;
	uint64_t latency_us_buckets[NATIVE_LATENCY_BUCKETS];
	struct method_count methods[NATIVE_MAX_METHODS];
	size_t n_methods;
};

/* One gRPC call: a downstream stream and its upstream stream. */
struct call {
	/* in its connections' lists: unlinked in O(1) by the pointer that points at it */
	struct call *next_in_down, *next_in_up;
	struct call **pprev_in_down, **pprev_in_up;
	struct native *n;
	struct down_conn *dc;
	int32_t down_id;
	struct up_conn *uc;
	int32_t up_id;
	const struct rw_method *m;
	uint64_t started_us;

	struct hdr *hdrs;  /* request metadata to forward (pool), at most NATIVE_MAX_HEADERS */
	size_t n_hdrs, cap_hdrs;
	char *path;
	int content_type_ok;
	size_t header_bytes;
	const char *bad_metadata; /* static: why the metadata is refused */
	int method_ok;
	int headers_done;

	struct grpc_reader req_in;   /* client -> proxy */
	struct put_stream *ps;       /* a large Put forwarded as it arrives (call.c) */
	int ps_off;                  /* its message is not streamed: the buffered path decides */
	size_t ps_scan;              /* ps_head() read the message's first fields up to here */
	struct bq up_out;            /* rewritten, to the core etcd */
	size_t down_unconsumed;      /* client bytes held back for backpressure */
	int down_eos;                /* client half-closed */
	int up_submitted;            /* upstream request submitted */
	int up_data_deferred;        /* upstream data provider is waiting for bytes */

	struct grpc_reader resp_in;  /* core etcd -> proxy */
	struct rstream *rs;          /* a large Range response being rewritten as it streams */
	struct rw_hooks hooks;       /* rs's */
	struct bq down_out;          /* rewritten, to the client */
	size_t up_unconsumed;
	int up_status;               /* :status of the upstream response */
	int resp_headers_sent;       /* downstream response HEADERS submitted */
	int down_data_deferred;
	size_t down_inflight; /* bytes of down_out promised to nghttp2 (NO_COPY), not yet taken */
	int up_eos;                  /* upstream stream ended */
	char *grpc_status, *grpc_message; /* upstream trailers */
	int up_bad_status;           /* etcd sent one of them malformed: replaced by our error */
	int finished;                /* final trailers (or RST) submitted downstream */

	/* an answer the proxy makes itself */
	int local_status;            /* gRPC status to send, -1: none */
	char *local_message;
	char status_text[12];        /* local_status as the grpc-status nghttp2 sends */

	/* an internal call (dc == NULL): the proxy's own request */
	internal_cb *icb;
	void *ictx;
	int down_attached, up_attached; /* freed when both are 0 */
	int watch_counted;              /* in counters.active_watch_streams */
	struct audit_call *audit;       /* a mutating call of an audited tenant, until it ends */
	struct call *rl_next;           /* waiting for a token (ratelimit.c), oldest first */
	uint64_t rl_since_us;
	int rl_queued;
	/* spec.quota (quota.c) */
	struct call *q_next;            /* waiting for the count, oldest first */
	uint64_t q_since;               /* uv_now() when it began to wait */
	int q_waiting;
	int q_reserved;                 /* admitted: q_keys and q_bytes are reserved */
	uint64_t q_keys, q_bytes;
	int64_t q_rev;                  /* the revision the core etcd answered it at */
	int q_wrote;                    /* the answer says a key was put */
	uint64_t q_leases;              /* a LeaseGrant admitted under maxLeases */
	int q_decide;                   /* waited for the watch long enough: judge it now */
	internal_msg_cb *imsg;          /* an internal stream: each message to it */
	int istream;

	/* lease IDs this call's messages named that the cache does not know */
	int64_t *unknown_leases;
	size_t n_unknown_leases;
	int waiting_lookup;          /* held until the ownership lookup answers */
	struct bq held;              /* rewritten messages waiting for that */
	int pending_internal;        /* internal calls that will call back with this call */
	int lookup_failed, lookup_denied;
	int64_t granted_lease;       /* set by the LeaseGrant response hook */
	int64_t denied_lease;        /* a lease the lookup found to be someone else's */
	struct bq held_resp;         /* a LeaseGrant answer held until its record is written */
};

/*
 * TLS on a connection, through memory BIOs: ciphertext read from the socket
 * goes into rbio, what OpenSSL writes into wbio goes to the socket through
 * native_write, like plaintext (one write path for both directions).
 */
struct native_tls {
	SSL *ssl;         /* NULL: plaintext h2c */
	BIO *rbio, *wbio; /* owned by ssl */
	int handshake_done;
	const char *refusal; /* static: why our own check refused the peer in the handshake */
};

struct down_conn {
	struct down_conn *next;
	struct native *n;
	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
		uv_stream_t stream;
		uv_handle_t handle;
	} h;
	nghttp2_session *session;
	struct call *calls;
	struct call *hdr_call; /* the call whose request header block is being read, or NULL */
	size_t write_pending; /* bytes handed to uv_write and not yet written */
	int closing;
	int draining; /* graceful stop: 1 notice GOAWAY sent, 2 final GOAWAY sent */
	struct conn_io io;
	int handles; /* the stream and the idle (or drain, or handshake) timer */
	uv_timer_t idle;
	struct native_tls tls;
	uint64_t last_activity_ms;
	char *client_json; /* who the client is, for the audit log (down_client_json()) */
};

enum up_state { UP_IDLE, UP_RESOLVING, UP_CONNECTING, UP_HANDSHAKE, UP_READY, UP_DRAINING, UP_CLOSED };

#define NATIVE_UP_FILL 100 /* calls on one upstream connection before the next one gets any */

struct up_conn {
	struct native *n;
	int index;
	enum up_state state;
	size_t endpoint; /* index in the endpoint list */
	uv_tcp_t tcp;
	int tcp_open;
	uv_connect_t connect_req;
	uv_getaddrinfo_t gai;
	uv_timer_t retry;
	unsigned failures;
	nghttp2_session *session;
	struct call *calls;
	struct call *hdr_call; /* the call whose response header block is being read, or NULL */
	size_t n_calls; /* in calls: how busy it is (pick() in upstream.c) */
	size_t write_pending;
	int closing;
	struct conn_io io;
	struct native_tls tls; /* TLS to the core etcd */
	/* keepalive, see keepalive_tick() in upstream.c; times are uv_now() */
	uint64_t ping_sent; /* our PING that has no ACK yet, 0: none */
	uint64_t last_ping; /* the last PING sent */
	uint64_t last_recv; /* the last bytes received */
	uint64_t ping_gap;  /* the least time between two PINGs */
	size_t last_outq;   /* our bytes its TCP had not acknowledged at the last look */
};

struct native {
	struct ep_host *host;
	uv_loop_t *loop;
	struct rw_ns ns; /* ns.member_id: the one member the tenant sees (native_member_id()) */
	struct rw_hooks hooks;
	char *name;
	uint64_t cluster_id, raft_term; /* the core's, from the first answer: for MemberList */

	/* options */
	enum compaction_policy compaction;
	size_t max_message;
	uint32_t max_streams;
	uint64_t idle_timeout_ms;
	uint64_t drain_timeout_ms;
	unsigned n_upstreams;

	/*
	 * TLS contexts: each SSL holds a reference to the context it was made
	 * from, so a reload swaps the pointer and frees ours while open
	 * connections go on with the old one.
	 */
	SSL_CTX *up_ctx;   /* to the core etcd; NULL: plaintext h2c */
	SSL_CTX *down_ctx; /* to the clients; NULL: plaintext h2c */
	uint64_t tls_generation; /* of the material down_ctx was made from */

	/* the core etcd's ca_file, cert_file and key_file, watched for changes */
	uint64_t cred_poll_ms; /* 0: not watched */
	uv_fs_poll_t cred_poll[3];
	int n_cred_poll;
	uv_timer_t cred_quiet; /* the quiet period before a reload */
	uv_timer_t down_timer; /* no connection to the core this long: unhealthy */

	/* endpoints: host, port, and host:port as the URL has it (the :authority, [v6] included) */
	char **ep_host;
	char **ep_port;
	char **ep_authority;
	size_t n_endpoints;

	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
		uv_stream_t stream;
		uv_handle_t handle;
	} listener;
	int listening;  /* bound (or given the supervisor's socket) */
	int accepting;  /* uv_listen() done: after the first upstream connection */
	struct down_conn *conns;
	struct up_conn *ups;

	/* leases this tenant owns, as far as this worker knows */
	int64_t *leases;
	size_t n_leases, cap_leases;
	size_t lease_evict; /* next slot to reuse once the cache is full */
	int leases_loaded;

	struct native_counters counters;
	size_t live_calls;      /* allocated and not yet freed: client and internal calls */
	unsigned put_streams;   /* Puts streaming now (at most NATIVE_PUT_STREAMS) */
	struct audit *audit;    /* spec.audit: the tenant's audit log, or NULL */
	struct ratelimit *rl;   /* spec.rateLimit, or NULL */
	struct quota *quota;    /* spec.quota, or NULL */
	struct conn_io *io;     /* every open connection of both sides (conn.c) */
	struct conn_io *marked; /* those with output to send at the next flush */
	uv_idle_t flush_idle;   /* sends what callbacks queued, outside nghttp2's callbacks: */
	uv_check_t flush_check; /* whichever of the two runs first (native_schedule_flush) */
	int flush_scheduled;    /* both are started */
	uint8_t *gather;        /* native_gather's buffer */
	size_t gather_cap;
	size_t gather_len;      /* while native_gather runs */
	struct rw_buf scratch;  /* the message being rewritten, behind its 5-byte gRPC prefix */
	uv_timer_t ack_timer; /* sends PING acknowledgements no write took along */
	uv_timer_t stop_timer;
	int stopping;
	int upstreams_closed;
	int stopped_reported;
	int ready_reported;
	int open_handles;
	int lookups;           /* getaddrinfo requests in flight (also in open_handles) */
};

/* pool.c: a cache of freed blocks by size class, for calls, their queues and nghttp2 */
void *pool_alloc(size_t size);  /* never NULL (aborts) */
void pool_trim(void);           /* give back the large blocks kept when none was used lately */
void *pool_calloc(size_t size); /* zeroed */
void *pool_realloc(void *p, size_t size);
void pool_free(void *p);
char *pool_strndup(const void *s, size_t len);
extern nghttp2_mem native_nghttp2_mem;

/* call.c: a call the rate limit held goes on */
void native_call_admitted(struct call *c);
/* call.c: a write the quota held (for the count, or a lease count) is admitted again */
void call_quota_resumed(struct call *c);
/*
 * call.c: an internal call made for c came back: 1 when c still waits for it,
 * 0 when c ended meanwhile (it is freed once nothing refers to it).
 */
int call_internal_returned(struct call *c);

/* downstream.c: the client of a connection as a JSON object, for the audit log */
const char *down_client_json(struct down_conn *dc);

/* native.c: what the parts report to the plugin's entry */
/* an upstream connection came up or went down (upstream.c) */
void native_upstream_changed(struct native *n);
/* one of the handles counted in open_handles is closed */
void native_release(struct native *n);
void native_maybe_stopped(struct native *n);
/* Give back a rewrite buffer that one large message grew: NATIVE_SCRATCH bytes again. */
void native_scratch_shrink(struct native *n);

/* conn.c: what both sides' connections share */
void conn_io_open(struct native *n, struct conn_io *io, void (*flush)(struct conn_io *io));
/* the connection is gone: out of both lists (its held acknowledgement is dropped) */
void conn_io_close(struct conn_io *io);
/* io has output: flush() it at the end of this loop iteration's I/O, or before the loop sleeps */
void conn_io_mark(struct conn_io *io);
/* Flush every marked connection now (never from inside nghttp2's callbacks). */
void native_flush_marked(struct native *n);
/*
 * What nghttp2 has to send, about NATIVE_GATHER bytes at most, gathered in the
 * native's buffer, which the next call reuses.  Returns NULL when there is
 * nothing (or on an nghttp2 error, in *error_r).
 */
const uint8_t *native_gather(struct native *n, nghttp2_session *s, size_t *len_r, int *error_r);
/*
 * A DATA frame sent with NGHTTP2_DATA_FLAG_NO_COPY (nghttp2_send_data_callback):
 * its header and the first LEN bytes of Q go straight into native_gather's
 * buffer, without the copy into nghttp2's own, and leave Q.  0, or
 * NGHTTP2_ERR_WOULDBLOCK when the buffer is full (nghttp2 asks again at the
 * next native_gather()).
 */
int native_gather_frame(struct native *n, const nghttp2_frame *frame, const uint8_t *framehd,
			struct bq *q, size_t len);

/* One block on its way to a socket; the stream's data is its owner (down_conn, up_conn). */
struct native_write {
	uv_write_t req;
	size_t *pending; /* the owner's count of queued bytes */
	size_t len;
	uint8_t data[];
};
#define NATIVE_WRITE_HEAD offsetof(struct native_write, data)

/*
 * Send len bytes of data: straight away when nothing is queued on the stream
 * (no copy, no request, no callback); what the socket does not take is copied
 * and queued with uv_write, counted in *pending until done() runs.  done()
 * must call native_write_done() first.  Returns 0 or a negative libuv error.
 */
int native_write(uv_stream_t *stream, const uint8_t *data, size_t len, size_t *pending,
		 uv_write_cb done);
/* In a done callback: uncount and free the block. */
void native_write_done(uv_write_t *req);

/*
 * The one write path of a connection: data goes to the socket as it is for
 * plaintext, or encrypted when t->ssl is set.  Returns 0, or a negative
 * code with a static reason in *why_r (the connection cannot go on).
 */
int native_send(uv_stream_t *stream, struct native_tls *t, const uint8_t *data, size_t len,
		size_t *pending, uv_write_cb done, const char **why_r);

/* ---- TLS: the OpenSSL part is tls.c, a module of its own (native-tls.so) ---- */
typedef int native_plain_cb(void *ctx, const uint8_t *data, size_t len);

#define NATIVE_TLS_MODULE "native-tls.so"
#define NATIVE_TLS_ABI 2 /* bumped with any change of struct native_tls_ops or native_tls */

struct native_tls_ops {
	int abi;
	/*
	 * A TLS context for the clients from the material of a certificate
	 * source: TLS 1.2+, ALPN h2 required, a client certificate required and
	 * verified against client_ca_file.  NULL with a malloc'ed reason.
	 */
	SSL_CTX *(*server_ctx)(const struct ep_tls_material *m, char **error_r);
	/* The context towards the core etcd from core_etcd's ca/cert/key files (same contract). */
	SSL_CTX *(*client_ctx)(const struct ep_core_etcd *core, char **error_r);
	void (*ctx_free)(SSL_CTX *ctx);
	/* A new SSL of ctx with memory BIOs, accepting (server) or connecting.  0 or -1. */
	int (*start)(struct native_tls *t, SSL_CTX *ctx, int server);
	/* Connecting: the name (SNI, verified) or IP (verified) the peer must have. */
	void (*set_peer)(struct native_tls *t, const char *host);
	void (*free)(struct native_tls *t);
	/* Ciphertext from the socket. */
	void (*feed)(struct native_tls *t, const uint8_t *data, size_t len);
	/*
	 * Advance the handshake with what was fed: 1 when it completed now, 0
	 * when it needs more from the peer, -1 when it failed (reason in
	 * *why_r).  The caller sends what it produced (native_tls_flush) in
	 * every case: records, or the alert that tells the peer why.
	 */
	int (*handshake)(struct native_tls *t, const char **why_r);
	/* 1 when the handshake selected ALPN "h2". */
	int (*alpn_h2)(const struct native_tls *t);
	/*
	 * Decrypt what was fed and hand it to deliver, which returns -1 when the
	 * connection went away meanwhile (t must not be touched again).  Returns
	 * 0 (wants more), 1 (deliver stopped), -1 (closed or broken; *why_r).
	 */
	int (*read)(struct native_tls *t, native_plain_cb *deliver, void *ctx, const char **why_r);
	/* Plaintext to records, which wait for output().  0, or -EPROTO with *why_r. */
	int (*encrypt)(struct native_tls *t, const uint8_t *data, size_t len, const char **why_r);
	/* The records waiting to be sent (*data_r valid until output_done). */
	size_t (*output)(struct native_tls *t, const uint8_t **data_r);
	void (*output_done)(struct native_tls *t);
	/* OpenSSL's reason for the last failure on t (static; the error queue is cleared). */
	const char *(*reason)(const struct native_tls *t);
	/* The peer's certificate: subject (RFC 2253) and serial (hex), malloc'ed; -1 if none. */
	int (*peer)(const struct native_tls *t, char **subject_r, char **serial_r);
};

/* The loaded module, or NULL: only loaded once a context is asked for. */
extern const struct native_tls_ops *native_tls;
/* Load native-tls.so from this plugin's directory.  0, or <0 with a malloc'ed reason. */
int native_tls_load(char **error_r);

/* These load the module when needed; same contract as the ops. */
SSL_CTX *native_server_ctx(const struct ep_tls_material *m, char **error_r);
SSL_CTX *native_client_ctx(const struct ep_core_etcd *core, char **error_r);
void native_ctx_free(SSL_CTX *ctx); /* NULL is fine */
/* Also for a plaintext connection (t->ssl NULL): then nothing to free. */
void native_tls_free(struct native_tls *t);
/* Send what OpenSSL wrote (handshake records, alerts, data).  0, or <0 with *why_r. */
int native_tls_flush(struct native_tls *t, uv_stream_t *stream, size_t *pending, uv_write_cb done,
		     const char **why_r);

/* The rest only runs on a TLS connection, so with the module loaded. */
static inline int native_tls_start(struct native_tls *t, SSL_CTX *ctx, int server)
{
	return native_tls->start(t, ctx, server);
}
static inline void native_tls_feed(struct native_tls *t, const uint8_t *data, size_t len)
{
	native_tls->feed(t, data, len);
}
static inline int native_tls_handshake(struct native_tls *t, const char **why_r)
{
	return native_tls->handshake(t, why_r);
}
static inline int native_tls_alpn_h2(const struct native_tls *t)
{
	return native_tls->alpn_h2(t);
}
static inline int native_tls_peer(const struct native_tls *t, char **subject_r, char **serial_r)
{
	return native_tls->peer(t, subject_r, serial_r);
}
static inline int native_tls_read(struct native_tls *t, native_plain_cb *deliver, void *ctx,
				  const char **why_r)
{
	return native_tls->read(t, deliver, ctx, why_r);
}
static inline const char *native_tls_reason(const struct native_tls *t)
{
	return native_tls->reason(t);
}

/* ---- conn.c: PING acknowledgements ---- */
/* A PING came in on io: its acknowledgement waits for the next write, or the delay. */
void conn_io_ack_hold(struct conn_io *io, nghttp2_session *s, const uint8_t opaque[8]);
/* In flush(): submit the held acknowledgement when output goes anyway, or when it is due. */
void conn_io_ack_take(struct conn_io *io, nghttp2_session *s);

/* ---- native.c ---- */
size_t native_member_list(struct native *n, uint8_t *buf, size_t size);
/* A response from the core etcd: learn its cluster ID (once) for MemberList's header. */
void native_learn_header(struct native *n, const uint8_t *msg, size_t len);
void native_count_method(struct native *n, const char *path, int status, uint64_t us);
/* The latency bucket of a call that took us microseconds: < 100 us, < 250 us, ... */
size_t native_latency_bucket(uint64_t us);
/* Classify a TLS handshake's failure by the text OpenSSL gave for it. */
enum tls_failure native_tls_failure_reason(const char *why);

/* ---- leases.c ---- */
int native_lease_known(const struct native *n, int64_t id);
void native_lease_add(struct native *n, int64_t id);
/* lease ownership records in the core etcd; cb gets ok=0 when etcd could not answer */
typedef void lease_cb(struct native *n, void *ctx, int ok, int64_t id, int owned);
int native_lease_lookup(struct native *n, int64_t id, lease_cb *cb, void *ctx);
int native_leases_refresh(struct native *n, lease_cb *cb, void *ctx);
int native_lease_record(struct native *n, int64_t id, lease_cb *cb, void *ctx);
/* How many lease records the tenant has (spec.quota.maxLeases). */
typedef void lease_count_cb(struct native *n, void *ctx, int ok, int64_t count);
int native_leases_count(struct native *n, lease_count_cb *cb, void *ctx);

/* downstream.c: the client connections */
int down_listen(struct native *n, const char **error_r);
int down_accept_start(struct native *n);
void down_close_all(struct native *n, int graceful);
void down_flush(struct down_conn *dc);

/* call.c: one gRPC call, the only part that sees both sides */
struct call *call_new(struct down_conn *dc, int32_t id);
/* the client's request HEADERS are complete: route, check, start */
void call_headers_done(struct call *c);
/* the client's stream closed, or its connection went (before it is unlinked) */
void call_client_gone(struct call *c);
/* the client ended its side of the stream (END_STREAM) */
void call_request_end(struct call *c);
/* rewrite and forward what the client has sent so far */
void call_process(struct call *c);
void call_free(struct call *c);
/* free the call once nothing refers to it any more */
void call_maybe_free(struct call *c);
/* append msg as one length-prefixed gRPC message */
void frame_message(struct bq *q, const uint8_t *msg, size_t len);
/* the next whole message of r: 1 and flag/msg/len, 0 when incomplete */
int grpc_reader_next(struct grpc_reader *r, uint8_t *flag, const uint8_t **msg, size_t *len,
		     size_t *declared);
void grpc_reader_drop(struct grpc_reader *r, size_t len);
void grpc_reader_expect(struct grpc_reader *r, size_t limit);
void call_resume_down(struct call *c);
/* bytes of a large Put that streams (c->ps), from the client's DATA */
void call_put_data(struct call *c, const uint8_t *data, size_t len);
void call_finish(struct call *c, int grpc_status, const char *message);
void call_upstream_ready(struct call *c);
void call_on_up_headers_done(struct call *c);
/* nghttp2_send_data_callback of the client sessions: a response's DATA frame */
int down_send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
		   size_t length, nghttp2_data_source *source, void *ud);
void call_on_up_data(struct call *c, const uint8_t *data, size_t len);
void call_on_up_close(struct call *c, uint32_t error_code);
void native_internal_done(struct call *c, uint32_t error_code);

/* upstream.c */
int up_init(struct native *n);
void up_shutdown(struct native *n);
int up_submit(struct native *n, struct call *c);
void up_resume(struct call *c);
void up_cancel(struct call *c);
void up_flush(struct up_conn *uc);     /* deferred to the flush idle handle */
void up_consume(struct call *c, size_t n);
int up_any_ready(const struct native *n);
int native_internal_call(struct native *n, const char *path, const uint8_t *msg, size_t len,
			 internal_cb *cb, void *ctx);
/*
 * An internal stream: msg opens it and the request side stays open; every
 * message of the answer goes to mcb, and end once when the stream ends.
 * NULL when no connection is ready.
 */
struct call *native_internal_stream(struct native *n, const char *path, const uint8_t *msg,
				    size_t len, internal_msg_cb *mcb, internal_cb *end, void *ctx);
/* End it from our side: neither callback runs again. */
void native_internal_cancel(struct call *c);

#endif /* EP_NATIVE_H */
