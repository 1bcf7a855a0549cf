/*
 * The call: the life of one gRPC call from the client's HEADERS to its
 * trailers, the only part of the proxy that sees both sides.  A call is
 * created by the client connection (downstream.c), reassembles and rewrites
 * the client's messages (rewrite.c), looks up and records lease owners
 * (leases.c), goes out as one stream on an upstream connection (upstream.c),
 * and relays the core etcd's answer back, rewritten.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "native.h"
#include "pb.h"

static int call_submit(struct call *c);
static void put_stream_free(struct call *c);

/* ---- small helpers ------------------------------------------------------------------- */

static uint64_t now_us(struct native *n)
{
	return uv_hrtime() / 1000;
}

/* grpc-message is percent-encoded (gRPC PROTOCOL-HTTP2). */
static char *percent_encode(const char *s)
{
	size_t len = strlen(s);
	char *out = malloc(len * 3 + 1), *o = out;

	if (out == NULL)
		abort();
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
			*o++ = (char)*p;
		} else {
			sprintf(o, "%%%02X", *p);
			o += 3;
		}
	}
	*o = '\0';
	return out;
}

/* Append a gRPC length-prefixed message. */
void frame_message(struct bq *q, const uint8_t *msg, size_t len)
{
	uint8_t h[5] = { 0, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
			 (uint8_t)len };

	bq_append(q, h, 5);
	if (len > 0)
		bq_append(q, msg, len);
}

/*
 * Rewrite one message into the native's scratch buffer, behind room for its
 * 5-byte gRPC prefix: no allocation per message.  scratch_take() then frames
 * it into a queue.  0, or <0 with err (and nothing to take).
 */
static int rewrite_framed(struct native *n, int response, enum rw_kind kind,
			  const struct rw_hooks *hooks, const uint8_t *msg, size_t len,
			  struct rw_error *err)
{
	int r;

	/* the rewritten message is about as long as the original: grown once, not doubled */
	if (n->scratch.cap < 5 + len + 256) {
		n->scratch.len = 0;
		n->scratch.data = pool_realloc(n->scratch.data, 5 + len + 256);
		n->scratch.cap = 5 + len + 256;
	}
	n->scratch.len = 5;
	if (response)
		r = rw_response(kind, &n->ns, hooks, msg, len, &n->scratch, err);
	else
		r = rw_request(kind, &n->ns, hooks, msg, len, &n->scratch, err);
	/* a large message that failed half way must not pin its memory either */
	if (r < 0 && n->scratch.cap > NATIVE_SCRATCH_KEEP)
		native_scratch_shrink(n);
	return r;
}

static void scratch_take(struct native *n, struct bq *q)
{
	struct rw_buf *b = &n->scratch;
	size_t len = b->len - 5;

	b->data[0] = 0;
	b->data[1] = (uint8_t)(len >> 24);
	b->data[2] = (uint8_t)(len >> 16);
	b->data[3] = (uint8_t)(len >> 8);
	b->data[4] = (uint8_t)len;
	if (bq_pending(q) == 0 && b->len > NATIVE_SCRATCH) {
		/* a large message into an empty queue: hand the buffer over, copy nothing */
		uint8_t *data = q->data;
		size_t cap = q->cap;

		q->data = b->data;
		q->cap = b->cap;
		q->off = 0;
		q->len = b->len;
		b->data = data != NULL ? data : pool_alloc(NATIVE_SCRATCH);
		b->cap = data != NULL ? cap : NATIVE_SCRATCH;
		b->len = 0;
		return;
	}
	bq_append(q, b->data, b->len);
	b->len = 0;
	/* one huge message must not pin its memory */
	if (b->cap > NATIVE_SCRATCH_KEEP)
		native_scratch_shrink(n);
}

/*
 * The next complete message in a reader: returns 1 and sets flag/msg/len
 * (valid until grpc_reader_drop), 0 when incomplete.  *declared gets the
 * length from the header as soon as 5 bytes are there (for early limits).
 */
int grpc_reader_next(struct grpc_reader *r, uint8_t *flag, const uint8_t **msg,
			    size_t *len, size_t *declared)
{
	size_t have = bq_pending(&r->buf);
	const uint8_t *p;
	size_t l;

	*declared = 0;
	if (have < 5)
		return 0; /* the queue may have no buffer at all yet */
	p = r->buf.data + r->buf.off;
	l = ((size_t)p[1] << 24) | ((size_t)p[2] << 16) | ((size_t)p[3] << 8) | p[4];
	*declared = l;
	if (have < 5 + l)
		return 0;
	*flag = p[0];
	*msg = p + 5;
	*len = l;
	return 1;
}

void grpc_reader_drop(struct grpc_reader *r, size_t len)
{
	bq_consume(&r->buf, 5 + len);
}

/*
 * A message has begun: make room for more of it than bq_append() would, up to
 * its declared size (when that is at most LIMIT), so that its buffer ends at
 * its size rather than up to twice it.  Room grows with what arrived (twice
 * it, 64 KiB at least), not with what the peer declares: a client that only
 * sends 5-byte prefixes on many streams makes the worker reserve nothing big.
 */
void grpc_reader_expect(struct grpc_reader *r, size_t limit)
{
	size_t have = bq_pending(&r->buf), want, room;
	const uint8_t *p;
	size_t l;

	if (have < 5)
		return;
	p = r->buf.data + r->buf.off;
	l = ((size_t)p[1] << 24) | ((size_t)p[2] << 16) | ((size_t)p[3] << 8) | p[4];
	if (have >= 5 + l || l > limit)
		return;
	want = 5 + l;
	room = have < 32768 ? 65536 : 2 * have;
	bq_reserve(&r->buf, want < room ? want : room);
}

/* ---- calls ------------------------------------------------------------------------------ */

struct call *call_new(struct down_conn *dc, int32_t id)
{
	struct call *c = pool_calloc(sizeof(*c));

	c->dc = dc;
	c->n = dc->n;
	c->down_id = id;
	c->down_attached = 1;
	c->local_status = -1;
	c->started_us = now_us(dc->n);
	c->next_in_down = dc->calls;
	if (dc->calls != NULL)
		dc->calls->pprev_in_down = &c->next_in_down;
	c->pprev_in_down = &dc->calls;
	dc->calls = c;
	dc->n->counters.active_streams++;
	dc->n->live_calls++;
	return c;
}

/*
 * The client's stream is gone: closed, reset, or its connection went.  A
 * cancel (or a reset) becomes an upstream cancel; so does the normal end,
 * should the upstream stream still be open (etcd ended its side while the
 * client was still sending, say).
 */
void call_client_gone(struct call *c)
{
	if (c->up_attached)
		up_cancel(c);
}

static void count_finish(struct call *c, int status);

void call_free(struct call *c)
{
	for (size_t i = 0; i < c->n_hdrs; i++) {
		pool_free(c->hdrs[i].name);
		pool_free(c->hdrs[i].value);
	}
	pool_free(c->hdrs);
	pool_free(c->path);
	if (c->ps != NULL)
		put_stream_free(c);
	bq_free(&c->req_in.buf);
	bq_free(&c->up_out);
	bq_free(&c->resp_in.buf);
	if (c->rs != NULL) {
		rs_free(c->rs);
		pool_free(c->rs);
	}
	bq_free(&c->down_out);
	bq_free(&c->held);
	bq_free(&c->held_resp);
	pool_free(c->grpc_status);
	pool_free(c->grpc_message);
	free(c->local_message);
	free(c->unknown_leases);
	/*
	 * A client's call that ended without a status (the client reset it, gave up
	 * waiting, or its connection went): Canceled in the counters and the
	 * latency, as in the audit log, where its write may have happened.
	 */
	if (!c->finished && c->icb == NULL && c->m != NULL)
		count_finish(c, 1);
	audit_finish(c->n->audit, c->audit, 1);
	rl_forget(c->n->rl, c);
	quota_forget(c->n->quota, c);
	c->n->live_calls--;
	pool_free(c);
}


/* A grpc-status value as a number; "0" is by far the most common. */
static int status_number(const char *status)
{
	if (status[0] == '0' && status[1] == '\0')
		return 0;
	return atoi(status);
}

/* A call ended with this gRPC status: the counters by method and status, and the latency. */
static void count_finish(struct call *c, int status)
{
	struct native *n = c->n;
	uint64_t us = now_us(n) - c->started_us;

	if (status == 0)
		n->counters.calls_ok++;
	else
		n->counters.calls_failed++;
	native_count_method(n, c->m != NULL && c->m->path != NULL ? c->m->path : "unknown", status,
			    us);
	if (c->audit != NULL) {
		audit_finish(n->audit, c->audit, status);
		c->audit = NULL;
	}
	n->counters.latency_us_buckets[native_latency_bucket(us)]++;
	quota_settle(n->quota, c, status == 0);
}

void call_maybe_free(struct call *c)
{
	if (c->down_attached || c->up_attached || c->pending_internal > 0)
		return;
	call_free(c);
}

static void resume_down_data(struct call *c)
{
	if (c->dc == NULL || c->dc->session == NULL)
		return;
	if (c->down_data_deferred) {
		c->down_data_deferred = 0;
		nghttp2_session_resume_data(c->dc->session, c->down_id);
	}
	down_flush(c->dc);
}

static ssize_t read_response(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
			     uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
	struct call *c = source->ptr;
	size_t have = bq_pending(&c->down_out);

	if (have == 0) {
		int done = c->local_status >= 0 || (c->up_eos && c->pending_internal == 0);

		if (!done) {
			c->down_data_deferred = 1;
			return NGHTTP2_ERR_DEFERRED;
		}
		const char *status, *msg;
		nghttp2_nv trailers[2];

		if (c->local_status >= 0) {
			snprintf(c->status_text, sizeof(c->status_text), "%d", c->local_status);
			status = c->status_text;
			msg = c->local_message ? c->local_message : "";
		} else if (c->grpc_status != NULL) {
			status = c->grpc_status; /* the usual case: etcd's own, as it is */
			msg = c->grpc_message ? c->grpc_message : "";
		} else {
			status = "13";
			msg = "etcdproxy: the core etcd ended the call without a status";
		}
		/* every string lives as long as the call, which outlives its stream */
		trailers[0] = (nghttp2_nv){ (uint8_t *)"grpc-status", (uint8_t *)status, 11,
					    strlen(status), NATIVE_NV_NO_COPY };
		trailers[1] = (nghttp2_nv){ (uint8_t *)"grpc-message", (uint8_t *)msg, 12, strlen(msg),
					    NATIVE_NV_NO_COPY };
		*data_flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
		nghttp2_submit_trailer(s, stream_id, trailers, 2);
		c->finished = 1;
		count_finish(c, status_number(status));
		return 0;
	}
	if (have > length)
		have = length;
	(void)buf; /* the frame is written by down_send_data() */
	*data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
	c->down_inflight = have;
	return (ssize_t)have;
}

int down_send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
		   size_t length, nghttp2_data_source *source, void *ud)
{
	struct call *c = source->ptr;
	int r;

	(void)s;
	(void)ud;
	r = native_gather_frame(c->n, frame, framehd, &c->down_out, length);
	if (r != 0)
		return r;
	c->down_inflight = 0;
	/* the client took some: let the core etcd send more */
	if (c->up_unconsumed > 0 && bq_pending(&c->down_out) < NATIVE_HIGH_WATER) {
		up_consume(c, c->up_unconsumed);
		c->up_unconsumed = 0;
	}
	return 0;
}

static void submit_response_headers(struct call *c)
{
	nghttp2_nv nv[2] = {
		{ (uint8_t *)":status", (uint8_t *)"200", 7, 3, NATIVE_NV_NO_COPY },
		{ (uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
		  NATIVE_NV_NO_COPY },
	};
	nghttp2_data_provider dp = { .source.ptr = c, .read_callback = read_response };

	c->resp_headers_sent = 1;
	nghttp2_submit_response(c->dc->session, c->down_id, nv, 2, &dp);
	down_flush(c->dc);
}

/*
 * The whole response in one HEADERS frame with END_STREAM (gRPC "Trailers-Only").
 * status and message must live as long as the call (nghttp2 does not copy them).
 */
static void submit_trailers_only(struct call *c, const char *status, const char *message)
{
	nghttp2_nv nv[4] = {
		{ (uint8_t *)":status", (uint8_t *)"200", 7, 3, NATIVE_NV_NO_COPY },
		{ (uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
		  NATIVE_NV_NO_COPY },
		{ (uint8_t *)"grpc-status", (uint8_t *)status, 11, strlen(status),
		  NATIVE_NV_NO_COPY },
		{ (uint8_t *)"grpc-message", (uint8_t *)message, 12, strlen(message),
		  NATIVE_NV_NO_COPY },
	};

	c->resp_headers_sent = 1;
	c->finished = 1;
	nghttp2_submit_response(c->dc->session, c->down_id, nv, 4, NULL);
	count_finish(c, status_number(status));
	down_flush(c->dc);
}

/*
 * End the call with a status of the proxy's own (message in plain text).
 * Before any response: Trailers-Only; after: trailers once the queued data is out.
 */
void call_finish(struct call *c, int grpc_status, const char *message)
{
	if (c->finished || c->local_status >= 0)
		return;
	c->local_status = grpc_status;
	c->local_message = percent_encode(message ? message : "");
	if (c->up_attached && !c->up_eos)
		up_cancel(c);
	if (c->dc == NULL)
		return;
	if (grpc_status != 0) {
		/* nothing more of the request matters */
		bq_consume(&c->req_in.buf, bq_pending(&c->req_in.buf));
		/* bytes held back (backpressure, a lease lookup) still count in the connection window */
		if (c->down_unconsumed > 0) {
			nghttp2_session_consume(c->dc->session, c->down_id, c->down_unconsumed);
			c->down_unconsumed = 0;
		}
	}
	if (!c->resp_headers_sent && bq_pending(&c->down_out) == 0) {
		snprintf(c->status_text, sizeof(c->status_text), "%d", grpc_status);
		submit_trailers_only(c, c->status_text, c->local_message);
		return;
	}
	if (!c->resp_headers_sent)
		submit_response_headers(c);
	resume_down_data(c);
}

/* Answer with one message of the proxy's own and status OK. */
static void call_answer(struct call *c, const uint8_t *msg, size_t len)
{
	frame_message(&c->down_out, msg, len);
	if (!c->resp_headers_sent)
		submit_response_headers(c);
	call_finish(c, 0, "");
}

/* ---- lease ownership --------------------------------------------------------------------- */

static int hook_lease_check(void *ctx, int64_t id)
{
	struct call *c = ctx;
	struct native *n = c->dc->n;

	if (native_lease_known(n, id))
		return 0;
	/* unknown here: maybe another worker of this tenant granted it; ask the core etcd */
	c->unknown_leases = realloc(c->unknown_leases, sizeof(int64_t) * (c->n_unknown_leases + 1));
	if (c->unknown_leases == NULL)
		abort();
	c->unknown_leases[c->n_unknown_leases++] = id;
	return 0;
}

static int hook_lease_visible(void *ctx, int64_t id)
{
	struct call *c = ctx;

	return native_lease_known(c->dc->n, id);
}

static void hook_lease_granted(void *ctx, int64_t id)
{
	struct call *c = ctx;

	c->granted_lease = id;
}

static struct rw_hooks call_hooks(struct call *c)
{
	struct rw_hooks h = {
		.lease_check = hook_lease_check,
		.lease_visible = hook_lease_visible,
		.lease_granted = hook_lease_granted,
		.ctx = c,
	};
	return h;
}

static void release_held(struct call *c)
{
	c->waiting_lookup = 0;
	if (bq_pending(&c->held) > 0) {
		bq_append(&c->up_out, c->held.data + c->held.off, bq_pending(&c->held));
		bq_consume(&c->held, bq_pending(&c->held));
	}
	up_resume(c);
	call_process(c); /* messages that arrived meanwhile */
}

static void answer_missing_lease(struct call *c);
static void call_answer(struct call *c, const uint8_t *msg, size_t len);

/*
 * An internal call made for this call came back.  Returns 1 when the call
 * still waits for the answer, 0 when it ended meanwhile (client reset,
 * error): it is freed once nothing refers to it any more.
 */
int call_internal_returned(struct call *c)
{
	c->pending_internal--;
	if (c->dc == NULL || c->finished || c->local_status >= 0) {
		call_maybe_free(c);
		return 0;
	}
	return 1;
}

static void on_lease_lookup(struct native *n, void *ctx, int ok, int64_t id, int owned)
{
	struct call *c = ctx;

	if (!call_internal_returned(c))
		return;
	if (!ok) {
		c->lookup_failed = 1;
	} else if (owned) {
		native_lease_add(n, id);
	} else {
		c->lookup_denied = 1;
		c->denied_lease = id;
	}
	if (c->pending_internal > 0)
		return;
	if (c->lookup_failed)
		call_finish(c, 14, "etcdproxy: cannot check the lease's owner in the core etcd");
	else if (c->lookup_denied)
		answer_missing_lease(c);
	else
		release_held(c);
}

/* Answer as etcd answers for a lease that does not exist: a foreign lease is one. */
static void answer_missing_lease(struct call *c)
{
	uint8_t msg[32];
	/* ID (field 2), then TTL (field 3): -1 from TimeToLive, 0 from KeepAlive */
	size_t len = (size_t)(ep_pb_put_uint(msg, 2, (uint64_t)c->denied_lease) - msg);

	switch (c->m->kind) {
	case RW_LEASE_TTL:
		len = (size_t)(ep_pb_put_uint(msg + len, 3, (uint64_t)-1) - msg);
		call_answer(c, msg, len);
		return;
	case RW_LEASE_KEEPALIVE:
		/* the stream goes on: only this keep-alive is answered here */
		bq_consume(&c->held, bq_pending(&c->held));
		frame_message(&c->down_out, msg, len);
		if (!c->resp_headers_sent)
			submit_response_headers(c);
		c->waiting_lookup = 0;
		resume_down_data(c);
		call_process(c);
		return;
	default:
		call_finish(c, 5, "etcdserver: requested lease not found");
		return;
	}
}

static void start_lookups(struct call *c)
{
	struct native *n = c->dc->n;

	c->waiting_lookup = 1;
	c->lookup_failed = c->lookup_denied = 0;
	for (size_t i = 0; i < c->n_unknown_leases; i++) {
		c->pending_internal++;
		if (native_lease_lookup(n, c->unknown_leases[i], on_lease_lookup, c) < 0) {
			c->pending_internal--;
			c->lookup_failed = 1;
		}
	}
	c->n_unknown_leases = 0;
	if (c->pending_internal == 0)
		call_finish(c, 14, "etcdproxy: cannot check the lease's owner in the core etcd");
}

static void on_leases_refreshed(struct native *n, void *ctx, int ok, int64_t id, int owned)
{
	struct call *c = ctx;

	if (!call_internal_returned(c))
		return;
	if (!ok) {
		call_finish(c, 14, "etcdproxy: cannot list the tenant's leases in the core etcd");
		return;
	}
	release_held(c);
}

static void on_grant_recorded(struct native *n, void *ctx, int ok, int64_t id, int owned)
{
	struct call *c = ctx;

	if (!call_internal_returned(c))
		return;
	if (!ok) {
		call_finish(c, 14, "etcdproxy: the lease was granted but its owner could not be "
				   "recorded in the core etcd; try again");
		return;
	}
	bq_append(&c->down_out, c->held_resp.data + c->held_resp.off, bq_pending(&c->held_resp));
	bq_consume(&c->held_resp, bq_pending(&c->held_resp));
	resume_down_data(c);
}

/* ---- requests -------------------------------------------------------------------------------- */

/* A streamed message's queue: room for what is in flight at once, made when it starts. */
static size_t stream_queue(uint64_t left)
{
	return left + 64 < NATIVE_STREAM_QUEUE ? (size_t)left + 64 : NATIVE_STREAM_QUEUE;
}

/*
 * A large Put goes on as it arrives (ps_head() and ps_feed() in rewrite.c,
 * doc/wire.md section 3c): the core etcd gets its first bytes at once and the
 * worker holds the high-water mark, not the message.  The message's last byte
 * waits until every check passed, so a refusal half way (a reset of the
 * upstream stream) leaves etcd with a message it never completes.
 */
struct put_stream {
	struct pstream ps;
	uint8_t *head; /* the message's head as the client sent it: the audit record, the quota */
	size_t head_len;
	int whole;     /* all but its last byte went on: it waits for the quota */
};

/*
 * A streamed Put's queue towards the core: what the high-water mark lets the
 * client send unacknowledged, not the declared size (a client that sends a
 * prefix and stops makes the worker reserve little); a slow core grows it.
 */
static size_t put_queue(uint64_t left)
{
	size_t most = NATIVE_HIGH_WATER + 65536;

	return left + 64 < most ? (size_t)left + 64 : most;
}

static void ps_emit(void *ctx, const uint8_t *p, size_t len)
{
	struct call *c = ctx;

	/* emptied by a quick core (and given back): room for more at once again */
	if (c->up_out.cap < 65536 && c->ps != NULL)
		bq_reserve(&c->up_out, put_queue(c->ps->ps.left + len));
	bq_append(&c->up_out, p, len);
}

static void put_stream_free(struct call *c)
{
	pool_free(c->ps->head);
	pool_free(c->ps);
	c->ps = NULL;
	c->n->put_streams--;
}

/* The audit record of a streamed Put: its head, and a lease named after it. */
static void put_stream_audit(struct call *c)
{
	struct put_stream *ps = c->ps;
	uint8_t *msg;
	size_t len;

	if (c->n->audit == NULL || c->audit != NULL)
		return;
	msg = pool_alloc(ps->head_len + 11);
	memcpy(msg, ps->head, ps->head_len);
	len = ps->head_len;
	if (ps->ps.lease_named) /* the last one counts, as for etcd: even 0 */
		len = (size_t)(ep_pb_put_uint(msg + len, 3, (uint64_t)ps->ps.lease) - msg);
	c->audit = audit_request(RW_PUT, strrchr(c->m->path, '/') + 1, msg, len,
				 down_client_json(c->dc));
	pool_free(msg);
}

/*
 * A streamed Put whole but for its last byte: the quota admits it (a tenant
 * whose quota counts writes; it may wait, and call_quota_resumed() comes back
 * here), the leases it named are looked up, and the last byte goes on.
 */
static void put_stream_finish(struct call *c)
{
	struct put_stream *ps = c->ps;
	uint8_t last;
	int r;

	if (c->n->quota != NULL) {
		r = quota_admit_put(c->n->quota, c, ps->head, ps->head_len, ps->ps.value_len,
				    ps->ps.ignore_value);
		if (r < 0) /* refused: no audit line, as for a buffered one */
			put_stream_free(c);
		if (r <= 0)
			return;
	}
	put_stream_audit(c);
	last = ps->ps.last;
	put_stream_free(c);
	if (c->n_unknown_leases > 0) {
		/* maybe another worker's lease: the message completes once it is known */
		bq_append(&c->held, &last, 1);
		start_lookups(c);
		return;
	}
	bq_append(&c->up_out, &last, 1);
}

/* Bytes of a streamed Put.  What follows its message (a client's error) goes to req_in. */
void call_put_data(struct call *c, const uint8_t *data, size_t len)
{
	struct rw_error err = { 0 };
	size_t used = 0;
	int r;

	if (c->ps->whole) {
		bq_append(&c->req_in.buf, data, len);
		return;
	}
	r = ps_feed(&c->ps->ps, data, len, &used, &err);
	if (r == 0)
		return;
	if (r < 0) {
		put_stream_audit(c);
		put_stream_free(c);
		call_finish(c, err.grpc_status ? err.grpc_status : 13,
			    err.message ? err.message : "etcdproxy: cannot rewrite the request");
		return;
	}
	if (used < len)
		bq_append(&c->req_in.buf, data + used, len - used);
	c->ps->whole = 1;
	put_stream_finish(c);
}

/*
 * Start streaming the Put whose gRPC prefix (of DECLARED bytes) and first
 * bytes are in req_in: 1 when it streams (or the call ended), 0 when the
 * buffered path goes on.
 */
static int put_stream_start(struct call *c, size_t declared)
{
	struct native *n = c->n;
	struct bq *in = &c->req_in.buf;
	const uint8_t *p;
	size_t have = bq_pending(in), rest;
	struct rw_buf head_out = { 0 };
	uint8_t h[5], *first = NULL;
	uint64_t out_len;
	long head;

	if (c->ps != NULL || c->ps_off || c->m->kind != RW_PUT || declared < NATIVE_STREAM_MIN ||
	    have < 5 || c->up_submitted || n->put_streams >= NATIVE_PUT_STREAMS)
		return 0;
	p = in->data + in->off;
	if (p[0] != 0) {
		c->ps_off = 1; /* compressed: refused by the buffered path */
		return 0;
	}
	c->hooks = call_hooks(c);
	head = ps_head(&n->ns, &c->hooks, p + 5, have - 5, declared, &c->ps_scan, &head_out);
	out_len = (uint64_t)declared - (uint64_t)(head > 0 ? head : 0) + head_out.len;
	if (head <= 0 || out_len > 0xffffffffu) {
		/* the buffered rewrite looks at the leases again */
		c->n_unknown_leases = 0;
		rw_buf_free(&head_out);
		if (head != 0)
			c->ps_off = 1;
		return 0;
	}
	c->ps = pool_alloc(sizeof(*c->ps));
	n->put_streams++;
	n->counters.puts_streamed++;
	c->ps->head = pool_alloc((size_t)head);
	memcpy(c->ps->head, p + 5, (size_t)head);
	c->ps->head_len = (size_t)head;
	c->ps->whole = 0;
	ps_init(&c->ps->ps, &c->hooks, declared - (size_t)head, ps_emit, c);
	rl_charge(n->rl, declared);
	bq_reserve(&c->up_out, put_queue(5 + out_len));
	h[0] = 0;
	h[1] = (uint8_t)(out_len >> 24);
	h[2] = (uint8_t)(out_len >> 16);
	h[3] = (uint8_t)(out_len >> 8);
	h[4] = (uint8_t)out_len;
	bq_append(&c->up_out, h, 5);
	bq_append(&c->up_out, head_out.data, head_out.len);
	rw_buf_free(&head_out);
	/* what came with the head: fed from a copy, req_in is emptied first */
	rest = have - 5 - (size_t)head;
	if (rest > 0) {
		first = pool_alloc(rest);
		memcpy(first, p + 5 + head, rest);
	}
	bq_consume(in, have);
	if (call_submit(c) && rest > 0)
		call_put_data(c, first, rest);
	pool_free(first);
	return 1;
}

static void local_answer(struct call *c)
{
	uint8_t buf[600];
	size_t len = 0;

	switch (c->m->kind) {
	case RW_MEMBER_LIST:
		len = native_member_list(c->dc->n, buf, sizeof(buf));
		break;
	case RW_HEALTH_CHECK:
		buf[0] = 0x08; /* status = SERVING */
		buf[1] = 0x01;
		len = 2;
		break;
	default:
		break;
	}
	call_answer(c, buf, len);
}

void call_process(struct call *c)
{
	struct native *n = c->dc->n;
	uint8_t flag = 0;
	const uint8_t *msg;
	size_t len, declared;

	while (!c->finished && c->local_status < 0 && !c->waiting_lookup) {
		int complete = grpc_reader_next(&c->req_in, &flag, &msg, &len, &declared);

		if (declared > n->max_message) {
			char why[160];

			snprintf(why, sizeof(why), "etcdproxy: request message of %zu bytes is above "
				 "the limit of %zu bytes", declared, n->max_message);
			call_finish(c, 8, why);
			return;
		}
		if (!complete) {
			if (put_stream_start(c, declared))
				continue; /* the loop ends: req_in is empty, or the call finished */
			break;
		}
		if (flag != 0) {
			call_finish(c, 12, "etcdproxy: compressed gRPC messages are not supported "
					   "(etcd does not compress either)");
			return;
		}
		if (c->m->policy == RW_LOCAL) {
			grpc_reader_drop(&c->req_in, len);
			local_answer(c);
			return;
		}
		if (c->m->kind == RW_COMPACT && n->compaction != COMPACT_ALLOW) {
			grpc_reader_drop(&c->req_in, len);
			if (n->compaction == COMPACT_DENY)
				call_finish(c, 7, "etcdproxy: refused Compact: compaction of the shared "
						  "etcd is denied for this tenant (spec.policy.compaction)");
			else /* the cluster's own kube-apiserver compacts the shared store */
				call_answer(c, NULL, 0);
			return;
		}

		struct rw_error err = { 0 };
		struct rw_hooks hooks = call_hooks(c);
		int r;

		/* refused (finished), or it waits with its message left in the reader */
		if (n->quota != NULL && quota_admit(n->quota, c, msg, len) <= 0)
			return;
		rl_charge(n->rl, len);
		if (n->audit != NULL && c->audit == NULL && c->m->path != NULL)
			c->audit = audit_request(c->m->kind, strrchr(c->m->path, '/') + 1, msg, len,
						 down_client_json(c->dc));
		r = rewrite_framed(n, 0, c->m->kind, &hooks, msg, len, &err);
		grpc_reader_drop(&c->req_in, len);
		if (r < 0) {
			call_finish(c, err.grpc_status ? err.grpc_status : 13,
				    err.message ? err.message : "etcdproxy: cannot rewrite the request");
			return;
		}
		if (c->n_unknown_leases > 0) {
			scratch_take(n, &c->held);
			start_lookups(c);
			return;
		}
		scratch_take(n, &c->up_out);
		if (!call_submit(c))
			return;
	}
	if (c->finished || c->local_status >= 0)
		return;
	/* a request that ended in a message after a wait (call_request_end() could not tell) */
	if (c->down_eos && !c->waiting_lookup && bq_pending(&c->req_in.buf) > 0 &&
	    c->m->policy == RW_FORWARD) {
		call_finish(c, 13, "etcdproxy: the request ended inside a message");
		return;
	}
	/* a request that ended without a message still goes to etcd, which answers it */
	if (c->down_eos && !c->up_submitted && !c->waiting_lookup && c->m->policy == RW_FORWARD &&
	    !(c->m->kind == RW_COMPACT && n->compaction != COMPACT_ALLOW) && !call_submit(c))
		return;
	/*
	 * past the high water mark the client's bytes stay unacknowledged, and while
	 * the call waits (a lookup, the quota, the rate limit): what it sends then
	 * stays in req_in, bounded by the stream's window
	 */
	if (c->down_unconsumed > 0 && bq_pending(&c->up_out) < NATIVE_HIGH_WATER &&
	    !c->waiting_lookup) {
		nghttp2_session_consume(c->dc->session, c->down_id, c->down_unconsumed);
		c->down_unconsumed = 0;
		down_flush(c->dc);
	}
	up_resume(c);
}

void call_resume_down(struct call *c)
{
	if (c->dc == NULL || c->dc->session == NULL || c->down_unconsumed == 0 ||
	    c->waiting_lookup)
		return; /* call_process() gives them back when the wait ends */
	if (bq_pending(&c->up_out) < NATIVE_HIGH_WATER) {
		nghttp2_session_consume(c->dc->session, c->down_id, c->down_unconsumed);
		c->down_unconsumed = 0;
		down_flush(c->dc);
	}
}

/* Open the upstream stream; 0 (and the call finished) when no connection is ready. */
static int call_submit(struct call *c)
{
	if (c->up_submitted)
		return 1;
	if (up_submit(c->n, c) < 0) {
		call_finish(c, 14, "etcdproxy: no connection to the core etcd");
		return 0;
	}
	return 1;
}

static void call_forward(struct call *c);

static void call_start(struct call *c)
{
	struct native *n = c->dc->n;
	char why[300];

	n->counters.calls++;
	if (c->header_bytes > NATIVE_MAX_HEADER_LIST) {
		snprintf(why, sizeof(why), "etcdproxy: request metadata of %zu bytes is above the "
			 "limit of %d bytes", c->header_bytes, NATIVE_MAX_HEADER_LIST);
		call_finish(c, 8, why);
		return;
	}
	if (c->bad_metadata != NULL) {
		call_finish(c, 13, c->bad_metadata);
		return;
	}
	if (c->path == NULL || !c->method_ok || !c->content_type_ok) {
		call_finish(c, 3, "etcdproxy: expected a gRPC request (POST, content-type "
				  "application/grpc)");
		return;
	}
	c->m = rw_method_lookup(c->path, strlen(c->path));
	if (c->m->kind == RW_WATCH && c->m->policy != RW_DENY && c->dc != NULL) {
		c->watch_counted = 1;
		n->counters.active_watch_streams++;
	}
	switch (c->m->policy) {
	case RW_DENY:
		n->counters.denied++;
		snprintf(why, sizeof(why), "etcdproxy: refused %s: %s", c->path, c->m->deny_reason);
		call_finish(c, 7, why);
		return;
	case RW_UNIMPLEMENTED: {
		const char *slash = strrchr(c->path, '/');

		if (c->m->path != NULL)
			snprintf(why, sizeof(why), "etcdproxy: %s is not supported by this proxy",
				 c->path);
		else if (slash != NULL && slash != c->path)
			snprintf(why, sizeof(why), "unknown method %s for service %.*s", slash + 1,
				 (int)(slash - c->path - 1), c->path + 1);
		else
			snprintf(why, sizeof(why), "unknown method %s", c->path);
		call_finish(c, 12, why);
		return;
	}
	case RW_LOCAL:
		return; /* answered when the request message is complete */
	case RW_FORWARD:
		break;
	}
	if (c->m->kind == RW_COMPACT && n->compaction != COMPACT_ALLOW)
		return; /* answered locally */
	if (n->rl != NULL) {
		int r = rl_admit(n->rl, c);

		if (r < 0)
			return; /* refused */
		if (r == 0) {
			c->waiting_lookup = 1; /* its bytes wait unacknowledged, as in a lookup */
			return;
		}
	}
	call_forward(c);
}

/* The rate limit let a call go on (ratelimit.c). */
void native_call_admitted(struct call *c)
{
	c->waiting_lookup = 0;
	if (c->finished || c->local_status >= 0 || c->dc == NULL)
		return;
	call_forward(c);
	if (!c->finished && c->local_status < 0)
		call_process(c); /* what arrived meanwhile, and the end of the request */
}

void call_quota_resumed(struct call *c)
{
	c->waiting_lookup = 0;
	if (c->finished || c->local_status >= 0 || c->dc == NULL)
		return;
	if (c->ps != NULL && c->ps->whole) {
		put_stream_finish(c);
		if (c->ps != NULL || c->finished || c->local_status >= 0)
			return; /* it waits again, or it was refused */
	}
	call_process(c);
}

/* A call past every check: unary calls wait for their message, streams open now. */
static void call_forward(struct call *c)
{
	struct native *n = c->n;

	/*
	 * A unary call goes upstream with its message: HEADERS and DATA in one
	 * write.  Streams (Watch, KeepAlive) and LeaseLeases open at once.
	 */
	if (!c->m->client_stream && c->m->kind != RW_LEASE_LEASES)
		return;
	if (!call_submit(c))
		return;
	if (c->m->kind == RW_LEASE_LEASES) {
		/* leases granted through other workers of this tenant must be known before filtering */
		c->waiting_lookup = 1;
		c->pending_internal++;
		if (native_leases_refresh(n, on_leases_refreshed, c) < 0) {
			c->pending_internal--;
			call_finish(c, 14, "etcdproxy: no connection to the core etcd");
		}
	}
}

void call_request_end(struct call *c)
{
	c->down_eos = 1;
	if (c->finished || c->local_status >= 0)
		return;
	if (c->ps != NULL && !c->ps->whole) {
		/* no audit line: as for a buffered message that never completed */
		put_stream_free(c);
		call_finish(c, 13, "etcdproxy: the request ended inside a message");
		return;
	}
	if (bq_pending(&c->req_in.buf) > 0 && c->m != NULL && c->m->policy == RW_FORWARD &&
	    !c->waiting_lookup) {
		call_finish(c, 13, "etcdproxy: the request ended inside a message");
		return;
	}
	if (c->m != NULL && c->m->policy == RW_LOCAL && !c->resp_headers_sent)
		local_answer(c); /* an empty request message is legal */
	else if (c->m != NULL)
		call_process(c);
}

void call_headers_done(struct call *c)
{
	c->headers_done = 1;
	call_start(c);
	if (c->down_eos && !c->finished && c->local_status < 0) {
		if (c->m != NULL && c->m->policy == RW_LOCAL)
			local_answer(c); /* no message at all: the defaults */
		else
			call_process(c);
	}
}

/* ---- responses from the core etcd ---------------------------------------------------------------- */

static void stream_abort(struct call *c, int grpc_status, const char *why);

void call_on_up_headers_done(struct call *c)
{
	if (c->icb != NULL || c->dc == NULL || c->finished || c->local_status >= 0)
		return;
	if (!c->resp_headers_sent) {
		if (c->up_status == 0) {
			/* nghttp2's HTTP checks are off upstream (make_session): this is ours */
			call_finish(c, 13, "etcdproxy: the core etcd answered without an HTTP :status");
			return;
		}
		if (c->up_status != 200) {
			char why[120];

			snprintf(why, sizeof(why), "etcdproxy: the core etcd answered HTTP %d",
				 c->up_status);
			call_finish(c, c->up_status >= 502 && c->up_status <= 504 ? 14 : 2, why);
			return;
		}
		if (c->up_eos && bq_pending(&c->down_out) == 0 && c->grpc_status != NULL) {
			/* Trailers-Only from etcd: pass its status and message verbatim */
			submit_trailers_only(c, c->grpc_status, c->grpc_message ? c->grpc_message : "");
			return;
		}
		submit_response_headers(c);
		return;
	}
	if (c->up_eos && c->rs != NULL) {
		stream_abort(c, 13, "etcdproxy: the core etcd ended the call inside a message");
		return;
	}
	resume_down_data(c);
}

/*
 * A streamed answer that cannot go on.  What is queued and not yet promised
 * to nghttp2 is dropped.  When nothing went out yet the client gets the status
 * as usual; otherwise it has part of a message, which it must never take for a
 * whole one: its stream is reset, REFUSED_STREAM for a lost or reset
 * connection to the core (grpc-go reports UNAVAILABLE, and a Range is safe to
 * retry), INTERNAL_ERROR for an answer that cannot be rewritten.
 */
static void stream_abort(struct call *c, int grpc_status, const char *why)
{
	struct bq *q = &c->down_out;
	int started = c->resp_headers_sent;

	if (bq_pending(q) > c->down_inflight)
		q->len = q->off + c->down_inflight;
	call_finish(c, grpc_status, why);
	if (started && c->dc != NULL && c->dc->session != NULL) {
		nghttp2_submit_rst_stream(c->dc->session, NGHTTP2_FLAG_NONE, c->down_id,
					  grpc_status == 14 ? NGHTTP2_REFUSED_STREAM
							    : NGHTTP2_INTERNAL_ERROR);
		down_flush(c->dc);
	}
}

static void rs_emit(void *ctx, const uint8_t *p, size_t len)
{
	struct call *c = ctx;

	/* emptied by a quick client (and given back): room for the rest at once again */
	if (c->down_out.cap < 65536 && c->rs != NULL)
		bq_reserve(&c->down_out, stream_queue(c->rs->left + len));
	bq_append(&c->down_out, p, len);
}

/*
 * A large Range response is rewritten as it arrives (rs_feed() in rewrite.c),
 * straight into the queue towards the client: the client gets its first
 * bytes at once, and the worker holds the high-water mark, not the message
 * twice.  Starts when the gRPC prefix of such a message is in resp_in.
 */
static int stream_start(struct call *c)
{
	struct native *n = c->n;
	const uint8_t *p = c->resp_in.buf.data + c->resp_in.buf.off;
	size_t have = bq_pending(&c->resp_in.buf), declared;

	/* a pad takes 3 bytes at least: a tenant's prefix ("/a/") is never shorter */
	if (c->m->kind != RW_RANGE || have < 5 || p[0] != 0 || n->ns.prefix_len < 3)
		return 0;
	declared = ((size_t)p[1] << 24) | ((size_t)p[2] << 16) | ((size_t)p[3] << 8) | p[4];
	if (declared < NATIVE_STREAM_MIN)
		return 0;
	c->rs = pool_alloc(sizeof(*c->rs));
	c->hooks = call_hooks(c);
	rs_init(c->rs, &n->ns, &c->hooks, declared, rs_emit, c);
	rl_charge(n->rl, declared);
	bq_consume(&c->resp_in.buf, 5);
	/* what is in flight at once (the stream's window) arrives faster than a client reads */
	bq_reserve(&c->down_out, stream_queue(declared));
	return 1;
}

/* Bytes of a streamed response; 0, or -1 when the call ended. */
static int stream_feed(struct call *c, const uint8_t *data, size_t len)
{
	struct native *n = c->n;
	struct rw_error err = { 0 };
	size_t used = 0;
	int r = rs_feed(c->rs, data, len, &used, &err);

	if (r == 0)
		return 0;
	if (r > 0 && c->rs->header != NULL) {
		if (n->cluster_id == 0)
			native_learn_header(n, c->rs->header, c->rs->header_len);
		audit_response(c->audit, c->rs->header, c->rs->header_len);
	}
	rs_free(c->rs);
	pool_free(c->rs);
	c->rs = NULL;
	if (r < 0 || used < len) {
		const char *why = r < 0 ? (err.message ? err.message : "etcdproxy: cannot rewrite the response")
				       : "etcdproxy: the core etcd answered a unary call with more "
					 "than one message";

		n->host->log(n->host, EP_LOG_ERR, "%s: %s", c->path, why);
		stream_abort(c, r < 0 && err.grpc_status ? err.grpc_status : 13, why);
		return -1;
	}
	return 0;
}

void call_on_up_data(struct call *c, const uint8_t *data, size_t len)
{
	uint8_t flag = 0;
	const uint8_t *msg;
	size_t mlen, declared;
	struct native *n;

	if (c->icb != NULL) {
		bq_append(&c->resp_in.buf, data, len);
		up_consume(c, len);
		/* a stream's messages go to their callback as they come (it may cancel the stream) */
		while (c->imsg != NULL && grpc_reader_next(&c->resp_in, &flag, &msg, &mlen, &declared)) {
			c->imsg(c->n, c->ictx, msg, mlen);
			grpc_reader_drop(&c->resp_in, mlen);
		}
		return;
	}
	if (c->dc == NULL || c->finished || c->local_status >= 0) {
		up_consume(c, len);
		return;
	}
	n = c->dc->n;
	n->counters.bytes_out += len;
	/* from here every path counts LEN: consumed, or held back until the stream ends */
	if (c->rs != NULL) {
		if (stream_feed(c, data, len) < 0) {
			c->up_unconsumed += len;
			return;
		}
		goto flow;
	}
	bq_append(&c->resp_in.buf, data, len);
	if (stream_start(c)) {
		size_t have = bq_pending(&c->resp_in.buf);

		/* what came with the prefix: fed from a copy, resp_in is emptied first */
		if (have > 0) {
			uint8_t *first = pool_alloc(have);

			memcpy(first, c->resp_in.buf.data + c->resp_in.buf.off, have);
			bq_consume(&c->resp_in.buf, have);
			if (stream_feed(c, first, have) < 0) {
				pool_free(first);
				c->up_unconsumed += len;
				return;
			}
			pool_free(first);
		}
		goto flow;
	}
	grpc_reader_expect(&c->resp_in, SIZE_MAX); /* the core's: as large as it says, as it comes */
	while (grpc_reader_next(&c->resp_in, &flag, &msg, &mlen, &declared)) {
		struct rw_error err = { 0 };
		struct rw_hooks hooks = call_hooks(c);
		int r;

		if (flag != 0) {
			call_finish(c, 13, "etcdproxy: the core etcd sent a compressed message");
			c->up_unconsumed += len;
			return;
		}
		c->granted_lease = 0;
		if (n->cluster_id == 0)
			native_learn_header(n, msg, mlen);
		if (!c->m->server_stream)
			rl_charge(n->rl, mlen);
		audit_response(c->audit, msg, mlen);
		quota_response(n->quota, c, msg, mlen);
		r = rewrite_framed(n, 1, c->m->kind, &hooks, msg, mlen, &err);
		grpc_reader_drop(&c->resp_in, mlen);
		if (r < 0) {
			n->host->log(n->host, EP_LOG_ERR, "%s: %s", c->path,
				     err.message ? err.message : "cannot rewrite a response");
			call_finish(c, err.grpc_status ? err.grpc_status : 13,
				    err.message ? err.message : "etcdproxy: cannot rewrite the response");
			c->up_unconsumed += len;
			return;
		}
		if (c->granted_lease != 0) {
			/* answer only once the ownership record exists: a worker restart must not lose it */
			native_lease_add(n, c->granted_lease);
			scratch_take(n, &c->held_resp);
			c->pending_internal++;
			if (native_lease_record(n, c->granted_lease, on_grant_recorded, c) < 0) {
				c->pending_internal--;
				call_finish(c, 14, "etcdproxy: the lease was granted but its owner could "
						   "not be recorded in the core etcd; try again");
				c->up_unconsumed += len;
				return;
			}
			continue;
		}
		scratch_take(n, &c->down_out);
	}
flow:
	if (bq_pending(&c->down_out) < NATIVE_HIGH_WATER)
		up_consume(c, len);
	else
		c->up_unconsumed += len;
	resume_down_data(c);
}

void call_on_up_close(struct call *c, uint32_t error_code)
{
	c->up_attached = 0;
	if (c->icb != NULL) {
		native_internal_done(c, error_code);
		return;
	}
	if (!c->up_eos && !c->finished && c->local_status < 0) {
		c->up_eos = 1;
		if (c->dc != NULL && c->rs != NULL) {
			c->dc->n->counters.upstream_errors++;
			stream_abort(c, error_code == UP_CONNECTION_LOST ||
						error_code == NGHTTP2_REFUSED_STREAM ? 14 : 13,
				     "etcdproxy: the connection to the core etcd was lost inside an "
				     "answer");
		} else if (c->dc != NULL) {
			char why[120];

			c->dc->n->counters.upstream_errors++;
			if (error_code == UP_CONNECTION_LOST)
				call_finish(c, 14, "etcdproxy: the connection to the core etcd was lost");
			else if (error_code == NGHTTP2_REFUSED_STREAM)
				call_finish(c, 14, "etcdproxy: the core etcd refused the call (it is "
						   "going away); retry");
			else {
				/* a reset of this one stream: the request itself is at fault */
				snprintf(why, sizeof(why), "etcdproxy: the core etcd reset the call "
					 "(HTTP/2 error %u: %s)", error_code,
					 nghttp2_http2_strerror(error_code));
				call_finish(c, 13, why);
			}
		}
	} else {
		c->up_eos = 1;
		resume_down_data(c);
	}
	call_maybe_free(c);
}

/* ---- internal calls ------------------------------------------------------------------------------------ */

int native_internal_call(struct native *n, const char *path, const uint8_t *msg, size_t len,
			 internal_cb *cb, void *ctx)
{
	struct call *c = pool_calloc(sizeof(*c));
	int r;

	c->n = n;
	c->path = pool_strndup(path, strlen(path));
	c->m = rw_method_lookup(path, strlen(path));
	c->icb = cb;
	c->ictx = ctx;
	c->local_status = -1;
	c->down_eos = 1;
	n->live_calls++;
	frame_message(&c->up_out, msg, len);
	r = up_submit(n, c);
	if (r < 0) {
		call_free(c);
		return r;
	}
	return 0;
}

struct call *native_internal_stream(struct native *n, const char *path, const uint8_t *msg,
				    size_t len, internal_msg_cb *mcb, internal_cb *end, void *ctx)
{
	struct call *c = pool_calloc(sizeof(*c));

	c->n = n;
	c->path = pool_strndup(path, strlen(path));
	c->m = rw_method_lookup(path, strlen(path));
	c->icb = end;
	c->imsg = mcb;
	c->ictx = ctx;
	c->istream = 1;
	c->local_status = -1;
	n->live_calls++;
	frame_message(&c->up_out, msg, len);
	if (up_submit(n, c) < 0) {
		call_free(c);
		return NULL;
	}
	return c;
}

static void internal_detached(struct native *n, void *ctx, int ok, const uint8_t *resp,
			      size_t len)
{
}

void native_internal_cancel(struct call *c)
{
	c->imsg = NULL;
	c->icb = internal_detached;
	c->ictx = NULL;
	up_cancel(c);
}

void native_internal_done(struct call *c, uint32_t error_code)
{
	static const uint8_t none[1];
	struct native *n = c->n;
	uint8_t flag = 0;
	const uint8_t *msg = none; /* never NULL: callbacks compute msg + len */
	size_t len = 0, declared;
	int ok = error_code == 0 && c->up_status == 200 && c->grpc_status != NULL &&
		 strcmp(c->grpc_status, "0") == 0;

	if (ok && !c->istream && !grpc_reader_next(&c->resp_in, &flag, &msg, &len, &declared))
		ok = 0;
	if (ok && n->cluster_id == 0 && len > 0)
		native_learn_header(n, msg, len);
	c->icb(n, c->ictx, ok, msg, len);
	call_free(c);
}
