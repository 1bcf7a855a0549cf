/*
 * Downstream: the tenant's clients (h2c, or HTTP/2 over TLS with a required
 * client certificate), and the life of one call.
 *
 * nghttp2 must not be re-entered from its own callbacks, so sending is never
 * done inside one: callbacks mark a connection "to flush" and an idle handle
 * flushes everything once the callbacks have returned.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "native.h"
#include "pb.h"
#include "util.h"

static void down_conn_close(struct down_conn *dc);
static void call_process(struct call *c);
static int call_submit(struct call *c);
static void call_maybe_free(struct call *c);

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
static void frame_message(struct bq *q, const uint8_t *msg, size_t len)
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

	n->scratch.len = 5; /* native_init made the buffer at least this large */
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
static int grpc_reader_next(struct grpc_reader *r, uint8_t *flag, const uint8_t **msg,
			    size_t *len, size_t *declared)
{
	const uint8_t *p = r->buf.data + r->buf.off;
	size_t have = bq_pending(&r->buf);
	size_t l;

	*declared = 0;
	if (have < 5)
		return 0;
	l = ((size_t)p[1] << 24) | ((size_t)p[2] << 16) | ((size_t)p[3] << 8) | p[4];
	*declared = l;
	if (have < 5 + l)
		return 0;
	*flag = p[0];
	*msg = p + 5;
	*len = l;
	return 1;
}

static void grpc_reader_drop(struct grpc_reader *r, size_t len)
{
	bq_consume(&r->buf, 5 + len);
}

/* ---- writing to a client (scheduled by conn.c) -------------------------------------------- */

static void down_write_done(uv_write_t *req, int status)
{
	struct down_conn *dc = req->handle->data;

	native_write_done(req);
	if (status < 0) {
		down_conn_close(dc);
		return;
	}
	down_flush(dc); /* the socket took some: nghttp2 may have more */
}

/* Gather what nghttp2 has to send into one buffer: one write (one syscall) per flush. */
void down_flush_now(struct down_conn *dc)
{
	const char *why = NULL;

	if (dc->closing || dc->session == NULL)
		return;
	if (dc->ping.pending && nghttp2_session_want_write(dc->session))
		ping_ack_release(dc->session, &dc->ping); /* along with what goes out anyway */
	while (dc->write_pending < NATIVE_HIGH_WATER) {
		const uint8_t *data;
		size_t len;
		int err;

		data = native_gather(dc->n, dc->session, &len, &err);
		if (err < 0) {
			down_conn_close(dc);
			return;
		}
		if (data == NULL)
			break;
		if (native_send(&dc->h.stream, &dc->tls, data, len, &dc->write_pending,
				down_write_done, &why) < 0) {
			dc->n->host->log(dc->n->host, EP_LOG_DEBUG,
					 "closing a client connection: %s", why);
			down_conn_close(dc);
			return;
		}
	}
	/* GOAWAY exchanged and every stream done (but never inside the grace of a drain) */
	if (dc->write_pending == 0 && !nghttp2_session_want_read(dc->session) &&
	    !nghttp2_session_want_write(dc->session) && dc->draining != 1)
		down_conn_close(dc);
}

void down_flush(struct down_conn *dc)
{
	dc->flush_pending = 1;
	native_schedule_flush(dc->n);
}

/* ---- calls ------------------------------------------------------------------------------ */

static struct call *call_new(struct down_conn *dc, int32_t id)
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
	return c;
}

static void call_free(struct call *c)
{
	for (size_t i = 0; i < c->n_hdrs; i++) {
		pool_free(c->hdrs[i].name);
		pool_free(c->hdrs[i].value);
	}
	pool_free(c->hdrs);
	pool_free(c->path);
	bq_free(&c->req_in.buf);
	bq_free(&c->up_out);
	bq_free(&c->resp_in.buf);
	bq_free(&c->down_out);
	bq_free(&c->held);
	bq_free(&c->held_resp);
	pool_free(c->grpc_status);
	pool_free(c->grpc_message);
	free(c->local_message);
	free(c->unknown_leases);
	pool_free(c);
}

static void record_latency(struct native *n, struct call *c);

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

	if (status == 0)
		n->counters.calls_ok++;
	else
		n->counters.calls_failed++;
	native_count_method(n, c->m != NULL && c->m->path != NULL ? c->m->path : "unknown", status);
	record_latency(n, c);
}

static void record_latency(struct native *n, struct call *c)
{
	static const uint64_t bounds[] = { 100, 250, 500, 1000, 2500, 5000, 10000, 25000,
					   50000, 100000, 1000000 };
	uint64_t us = now_us(n) - c->started_us;
	size_t i = 0;

	while (i < sizeof(bounds) / sizeof(bounds[0]) && us >= bounds[i])
		i++;
	n->counters.latency_us_buckets[i]++;
}

static void call_maybe_free(struct call *c)
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
	memcpy(buf, c->down_out.data + c->down_out.off, have);
	bq_consume(&c->down_out, have);
	/* the client took some: let the core etcd send more */
	if (c->up_unconsumed > 0 && bq_pending(&c->down_out) < NATIVE_HIGH_WATER) {
		up_consume(c, c->up_unconsumed);
		c->up_unconsumed = 0;
	}
	return (ssize_t)have;
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
static int internal_returned(struct call *c)
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

	if (!internal_returned(c))
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

	if (!internal_returned(c))
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

	if (!internal_returned(c))
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

static void call_process(struct call *c)
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
		if (!complete)
			break;
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
		int r = rewrite_framed(n, 0, c->m->kind, &hooks, msg, len, &err);

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
	/* a request that ended without a message still goes to etcd, which answers it */
	if (c->down_eos && !c->up_submitted && !c->waiting_lookup && c->m->policy == RW_FORWARD &&
	    !(c->m->kind == RW_COMPACT && n->compaction != COMPACT_ALLOW) && !call_submit(c))
		return;
	/* past the high water mark the client's bytes stay unacknowledged */
	if (c->down_unconsumed > 0 && bq_pending(&c->up_out) < NATIVE_HIGH_WATER) {
		nghttp2_session_consume(c->dc->session, c->down_id, c->down_unconsumed);
		c->down_unconsumed = 0;
		down_flush(c->dc);
	}
	up_resume(c);
}

void call_resume_down(struct call *c)
{
	if (c->dc == NULL || c->dc->session == NULL || c->down_unconsumed == 0)
		return;
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

/* ---- responses from the core etcd ---------------------------------------------------------------- */

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
	resume_down_data(c);
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
		return;
	}
	if (c->dc == NULL || c->finished || c->local_status >= 0) {
		up_consume(c, len);
		return;
	}
	n = c->dc->n;
	n->counters.bytes_out += len;
	bq_append(&c->resp_in.buf, data, len);
	while (grpc_reader_next(&c->resp_in, &flag, &msg, &mlen, &declared)) {
		struct rw_error err = { 0 };
		struct rw_hooks hooks = call_hooks(c);
		int r;

		if (flag != 0) {
			call_finish(c, 13, "etcdproxy: the core etcd sent a compressed message");
			return;
		}
		c->granted_lease = 0;
		r = rewrite_framed(n, 1, c->m->kind, &hooks, msg, mlen, &err);
		grpc_reader_drop(&c->resp_in, mlen);
		if (r < 0) {
			n->host->log(n->host, EP_LOG_ERR, "%s: %s", c->path,
				     err.message ? err.message : "cannot rewrite a response");
			call_finish(c, err.grpc_status ? err.grpc_status : 13,
				    err.message ? err.message : "etcdproxy: cannot rewrite the response");
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
				return;
			}
			continue;
		}
		scratch_take(n, &c->down_out);
	}
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
		if (c->dc != NULL) {
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

/* ---- nghttp2 server callbacks ---------------------------------------------------------------- */

static int d_on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct down_conn *dc = ud;

	if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	/*
	 * Streams that arrive while draining are served: the first GOAWAY promised
	 * that; after the final one nghttp2 refuses higher stream IDs itself, and
	 * clients retry those safely.
	 */
	dc->hdr_call = call_new(dc, frame->hd.stream_id);
	nghttp2_session_set_stream_user_data(s, frame->hd.stream_id, dc->hdr_call);
	return 0;
}

/*
 * Metadata never forwarded: hop-by-hop, replaced by the proxy, or credentials
 * (doc/wire.md section 6, Metadata).  By length first: it runs for every field of every call.
 */
static int header_dropped(const uint8_t *name, size_t len)
{
	static const char *const by_len[][3] = {
		[2] = { "te" },
		[4] = { "host" },
		[5] = { "token" },
		[7] = { "upgrade" },
		[10] = { "connection", "keep-alive" },
		[12] = { "content-type" },
		[13] = { "authorization" },
		[14] = { "content-length" },
		[16] = { "proxy-connection" },
		[17] = { "transfer-encoding" },
	};

	if (len >= sizeof(by_len) / sizeof(by_len[0]))
		return 0;
	for (size_t i = 0; i < 3 && by_len[len][i] != NULL; i++)
		if (memcmp(by_len[len][i], name, len) == 0)
			return 1;
	return 0;
}

/* 1 to 8 ASCII digits and a unit (gRPC PROTOCOL-HTTP2 "Timeout"). */
static int grpc_timeout_valid(const uint8_t *v, size_t len)
{
	if (len < 2 || len > 9 || strchr("HMSmun", v[len - 1]) == NULL)
		return 0;
	for (size_t i = 0; i + 1 < len; i++)
		if (v[i] < '0' || v[i] > '9')
			return 0;
	return 1;
}

/* A pseudo-header: the proxy reads :method and :path, the upstream request has its own rest. */
static void on_pseudo_header(struct call *c, const uint8_t *name, size_t namelen,
			     const uint8_t *value, size_t valuelen)
{
	/*
	 * Only :path is forwarded, and only when it is one of the method table's;
	 * its characters are checked so that a NUL cannot cut it down to one.
	 */
	if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
		if (!nghttp2_check_header_value(value, valuelen)) /* NUL, CR, LF, ... */
			c->bad_metadata = "etcdproxy: invalid request metadata (a name or value with "
					  "characters HTTP/2 does not allow)";
		pool_free(c->path);
		c->path = pool_strndup(value, valuelen);
	} else if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
		c->method_ok = valuelen == 4 && memcmp(value, "POST", 4) == 0;
	}
}

static int d_on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
		       size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct down_conn *dc = ud;
	struct call *c;

	if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	/* the call d_on_begin_headers made: no stream lookup per field */
	c = dc->hdr_call;
	if (c == NULL || c->down_id != frame->hd.stream_id)
		c = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
	if (c == NULL)
		return 0;
	c->header_bytes += namelen + valuelen + 32; /* RFC 7540 6.5.2 accounting */
	if (namelen > 0 && name[0] == ':') {
		on_pseudo_header(c, name, namelen, value, valuelen);
		return 0;
	}
	if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
		c->content_type_ok = valuelen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
				     (valuelen == 16 || value[16] == '+' || value[16] == ';');
		return 0;
	}
	if (header_dropped(name, namelen))
		return 0;
	/*
	 * Forwarded: HTTP messaging checks are off (see make_server_session), so
	 * the characters are checked here, before the field can reach etcd.
	 */
	if (!nghttp2_check_header_name(name, namelen) || !nghttp2_check_header_value(value, valuelen))
		c->bad_metadata = "etcdproxy: invalid request metadata (a name or value with "
				  "characters HTTP/2 does not allow)";
	if (namelen == 12 && memcmp(name, "grpc-timeout", 12) == 0 &&
	    !grpc_timeout_valid(value, valuelen))
		c->bad_metadata = "etcdproxy: malformed grpc-timeout";
	/* past the limit the call is refused (call_start): keep no more copies */
	if (c->n_hdrs < NATIVE_MAX_HEADERS && c->header_bytes <= NATIVE_MAX_HEADER_LIST) {
		if (c->n_hdrs == c->cap_hdrs) {
			c->cap_hdrs = c->cap_hdrs ? 2 * c->cap_hdrs : 8;
			c->hdrs = pool_realloc(c->hdrs, c->cap_hdrs * sizeof(*c->hdrs));
		}
		c->hdrs[c->n_hdrs].name = pool_strndup(name, namelen);
		c->hdrs[c->n_hdrs].namelen = namelen;
		c->hdrs[c->n_hdrs].value = pool_strndup(value, valuelen);
		c->hdrs[c->n_hdrs].valuelen = valuelen;
		c->n_hdrs++;
	}
	return 0;
}

static int d_on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct call *c = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);

	if (frame->hd.type == NGHTTP2_PING && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
		struct down_conn *dc = ud;

		ping_ack_hold(dc->n, s, &dc->ping, frame->ping.opaque_data);
		return 0;
	}
	if (c == NULL)
		return 0;
	if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
		if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
			c->down_eos = 1;
		c->headers_done = 1;
		call_start(c);
		if (c->down_eos && !c->finished && c->local_status < 0) {
			if (c->m != NULL && c->m->policy == RW_LOCAL)
				local_answer(c); /* no message at all: the defaults */
			else
				call_process(c);
		}
	} else if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
		   (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		c->down_eos = 1;
		if (!c->finished && c->local_status < 0) {
			if (bq_pending(&c->req_in.buf) > 0 && c->m != NULL && c->m->policy == RW_FORWARD &&
			    !c->waiting_lookup) {
				call_finish(c, 13, "etcdproxy: the request ended inside a message");
				return 0;
			}
			if (c->m != NULL && c->m->policy == RW_LOCAL && !c->resp_headers_sent)
				local_answer(c); /* an empty request message is legal */
			else if (c->m != NULL)
				call_process(c);
		}
	}
	return 0;
}

static int d_on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
			   size_t len, void *ud)
{
	struct down_conn *dc = ud;
	struct call *c = nghttp2_session_get_stream_user_data(s, stream_id);

	dc->n->counters.bytes_in += len;
	if (c == NULL || c->finished || c->local_status >= 0 || c->m == NULL) {
		nghttp2_session_consume(s, stream_id, len);
		return 0;
	}
	bq_append(&c->req_in.buf, data, len);
	/*
	 * partial messages are acknowledged (bounded by max_message); queued output is not,
	 * and neither is what arrives during a lease lookup: call_process does not take
	 * messages (nor check max_message) then, so req_in would grow without limit
	 */
	if (bq_pending(&c->up_out) < NATIVE_HIGH_WATER && !c->waiting_lookup)
		nghttp2_session_consume(s, stream_id, len);
	else
		c->down_unconsumed += len;
	call_process(c);
	return 0;
}

static void unlink_from_down(struct call *c)
{
	if (c->dc->hdr_call == c)
		c->dc->hdr_call = NULL;
	*c->pprev_in_down = c->next_in_down;
	if (c->next_in_down != NULL)
		c->next_in_down->pprev_in_down = c->pprev_in_down;
	c->next_in_down = NULL;
	c->pprev_in_down = NULL;
	c->dc->n->counters.active_streams--;
	c->dc = NULL;
	c->down_attached = 0;
}

static int d_on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *ud)
{
	struct call *c = nghttp2_session_get_stream_user_data(s, stream_id);

	if (c == NULL)
		return 0;
	/*
	 * A client's cancel (or a reset) becomes an upstream cancel; so does the
	 * normal end, should etcd not have closed its side of the stream yet.
	 */
	if (c->up_attached)
		up_cancel(c);
	unlink_from_down(c);
	call_maybe_free(c);
	return 0;
}

/* ---- connections ------------------------------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h)
{
	struct down_conn *dc = h->data;
	struct native *n = dc->n;

	if (--dc->handles == 0) {
		free(dc);
		native_release(n);
	}
}

static void down_conn_close(struct down_conn *dc)
{
	struct native *n = dc->n;
	struct down_conn **pp;

	if (dc->closing)
		return;
	dc->closing = 1;
	for (pp = &n->conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == dc) {
			*pp = dc->next;
			break;
		}
	}
	while (dc->calls != NULL) {
		struct call *c = dc->calls;

		if (c->up_attached && !c->up_eos)
			up_cancel(c);
		unlink_from_down(c);
		call_maybe_free(c);
	}
	if (dc->session != NULL) {
		nghttp2_session_del(dc->session);
		dc->session = NULL;
	}
	native_tls_free(&dc->tls);
	uv_close(&dc->h.handle, on_conn_closed);
	uv_close((uv_handle_t *)&dc->idle, on_conn_closed);
}

static void down_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];

	*buf = uv_buf_init(slab, sizeof(slab));
}

/* "client 127.0.0.1:40112" for log lines (a Unix socket's peers have no name). */
static const char *peer_name(struct down_conn *dc)
{
	static char buf[80];
	struct sockaddr_storage ss;
	int len = sizeof(ss);
	char ip[64];

	if (dc->h.handle.type != UV_TCP ||
	    uv_tcp_getpeername(&dc->h.tcp, (struct sockaddr *)&ss, &len) < 0)
		return "a client";
	if (ss.ss_family == AF_INET6) {
		uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
		snprintf(buf, sizeof(buf), "client [%s]:%u", ip,
			 ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
	} else {
		uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
		snprintf(buf, sizeof(buf), "client %s:%u", ip,
			 ntohs(((struct sockaddr_in *)&ss)->sin_port));
	}
	return buf;
}

/* Plaintext HTTP/2 from the client; -1 when the connection was closed. */
static int down_recv_plain(void *ctx, const uint8_t *data, size_t len)
{
	struct down_conn *dc = ctx;
	ssize_t r = nghttp2_session_mem_recv(dc->session, data, len);

	if (r < 0) {
		/* not HTTP/2 (an HTTP/1 request, garbage): nghttp2 queued a GOAWAY if it could */
		dc->n->host->log(dc->n->host, EP_LOG_INFO, "closing a client connection: %s",
				 nghttp2_strerror((int)r));
		down_flush_now(dc);
		down_conn_close(dc);
		return -1;
	}
	return dc->closing ? -1 : 0;
}

static void start_idle_check(struct down_conn *dc);
static int make_server_session(struct down_conn *dc);

static void handshake_failed(struct down_conn *dc, const char *why)
{
	dc->n->counters.tls_handshake_failures++;
	dc->n->host->log(dc->n->host, EP_LOG_INFO, "TLS handshake with %s failed: %s",
			 peer_name(dc), why);
	down_conn_close(dc);
}

static void on_handshake_timeout(uv_timer_t *t)
{
	struct down_conn *dc = t->data;

	if (dc->session == NULL)
		handshake_failed(dc, "no handshake within 10 s");
}

/* The handshake is done: the client is who it must be and speaks h2; start HTTP/2. */
static int down_tls_established(struct down_conn *dc)
{
	struct native *n = dc->n;

	if (!native_tls_alpn_h2(&dc->tls)) {
		handshake_failed(dc, "the client did not agree on ALPN h2: gRPC needs HTTP/2");
		return -1;
	}
	n->counters.tls_handshakes++;
	uv_timer_stop(&dc->idle);
	if (make_server_session(dc) < 0) {
		down_conn_close(dc);
		return -1;
	}
	start_idle_check(dc);
	return 0;
}

/* Ciphertext in; -1 when the connection was closed. */
static int down_recv_tls(struct down_conn *dc, const uint8_t *data, size_t len)
{
	const char *why = NULL, *fwhy = NULL;
	int r;

	native_tls_feed(&dc->tls, data, len);
	if (!dc->tls.handshake_done) {
		r = native_tls_handshake(&dc->tls, &why);
		/* the handshake's records, or the alert that tells the client why */
		if (native_tls_flush(&dc->tls, &dc->h.stream, &dc->write_pending, down_write_done,
				     &fwhy) < 0 && r >= 0) {
			handshake_failed(dc, fwhy);
			return -1;
		}
		if (r < 0) {
			handshake_failed(dc, why);
			return -1;
		}
		if (r == 0)
			return 0;
		if (down_tls_established(dc) < 0)
			return -1;
	}
	r = native_tls_read(&dc->tls, down_recv_plain, dc, &why);
	if (r == 1)
		return -1;
	if (r == 0 && native_tls_flush(&dc->tls, &dc->h.stream, &dc->write_pending,
				       down_write_done, &why) == 0)
		return 0;
	dc->n->host->log(dc->n->host, EP_LOG_DEBUG, "closing the connection of %s: %s",
			 peer_name(dc), why);
	down_conn_close(dc);
	return -1;
}

static void down_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct down_conn *dc = s->data;

	if (nread == 0)
		return;
	if (nread < 0 || (dc->session == NULL && dc->tls.ssl == NULL)) {
		down_conn_close(dc);
		return;
	}
	dc->last_activity_ms = uv_now(dc->n->loop);
	if (dc->tls.ssl != NULL) {
		if (down_recv_tls(dc, (const uint8_t *)buf->base, (size_t)nread) < 0)
			return;
	} else if (down_recv_plain(dc, (const uint8_t *)buf->base, (size_t)nread) < 0) {
		return;
	}
	down_flush(dc); /* with every other read of this loop iteration */
}

static void on_drain_goaway(uv_timer_t *t)
{
	struct down_conn *dc = t->data;
	static const char why[] = "shutting down";

	dc->draining = 2; /* the final GOAWAY: close once every stream is done */
	nghttp2_submit_goaway(dc->session, NGHTTP2_FLAG_NONE,
			      nghttp2_session_get_last_proc_stream_id(dc->session), NGHTTP2_NO_ERROR,
			      (const uint8_t *)why, sizeof(why) - 1);
	down_flush_now(dc);
}

static void on_idle_check(uv_timer_t *t)
{
	struct down_conn *dc = t->data;
	uint64_t now = uv_now(dc->n->loop);

	if (dc->calls == NULL && now - dc->last_activity_ms >= dc->n->idle_timeout_ms) {
		static const char why[] = "idle timeout";

		nghttp2_submit_goaway(dc->session, NGHTTP2_FLAG_NONE,
				      nghttp2_session_get_last_proc_stream_id(dc->session),
				      NGHTTP2_NO_ERROR, (const uint8_t *)why, sizeof(why) - 1);
		down_flush_now(dc);
		down_conn_close(dc);
	}
}

static void on_listener_closed(uv_handle_t *h)
{
	native_release(h->data);
}

static int make_server_session(struct down_conn *dc)
{
	struct native *n = dc->n;
	nghttp2_session_callbacks *cbs;
	nghttp2_option *opt;
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, n->max_streams },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20 },
		{ NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, NATIVE_MAX_HEADER_LIST },
		/* gRPC has no use for stream priorities: no tree to keep per stream (RFC 9218) */
		{ NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1 },
	};
	int r;

	nghttp2_session_callbacks_new(&cbs);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, d_on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, d_on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, d_on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, d_on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, d_on_stream_close);
	nghttp2_option_new(&opt);
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_no_auto_ping_ack(opt, 1);
	nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
	/*
	 * gRPC over a Unix socket sends the socket path as :authority, which
	 * nghttp2's HTTP checks reset as a protocol error; the proxy checks
	 * what it relies on (:method, :path, content-type) itself.
	 */
	nghttp2_option_set_no_http_messaging(opt, 1);
	r = nghttp2_session_server_new3(&dc->session, cbs, dc, opt, &native_nghttp2_mem);
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cbs);
	if (r != 0)
		return -ENOMEM;
	nghttp2_submit_settings(dc->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
	nghttp2_session_set_local_window_size(dc->session, NGHTTP2_FLAG_NONE, 0, 4 << 20);
	return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
	struct native *n = server->data;
	struct down_conn *dc;
	int r;

	if (status < 0 || n->stopping)
		return;
	dc = calloc(1, sizeof(*dc));
	if (dc == NULL)
		abort();
	dc->n = n;
	if (n->listener.handle.type == UV_NAMED_PIPE)
		uv_pipe_init(n->loop, &dc->h.pipe, 0);
	else
		uv_tcp_init(n->loop, &dc->h.tcp);
	dc->h.handle.data = dc;
	uv_timer_init(n->loop, &dc->idle);
	dc->idle.data = dc;
	dc->handles = 2;
	n->open_handles++; /* one for the whole connection */
	dc->next = n->conns;
	n->conns = dc;
	r = uv_accept(server, &dc->h.stream);
	if (r == 0 && n->down_ctx != NULL)
		/* HTTP/2 starts once the handshake is done (down_tls_established) */
		r = native_tls_start(&dc->tls, n->down_ctx, 1) < 0 ? -ENOMEM : 0;
	else if (r == 0)
		r = make_server_session(dc);
	if (r < 0) {
		down_conn_close(dc);
		return;
	}
	if (n->listener.handle.type == UV_TCP)
		uv_tcp_nodelay(&dc->h.tcp, 1);
	dc->last_activity_ms = uv_now(n->loop);
	if (dc->tls.ssl != NULL)
		uv_timer_start(&dc->idle, on_handshake_timeout, NATIVE_HANDSHAKE_TIMEOUT_MS, 0);
	else
		start_idle_check(dc);
	uv_read_start(&dc->h.stream, down_alloc, down_read);
	if (dc->session != NULL)
		down_flush_now(dc);
}

static void start_idle_check(struct down_conn *dc)
{
	uint64_t every = dc->n->idle_timeout_ms / 2 + 1;

	if (dc->n->idle_timeout_ms > 0)
		uv_timer_start(&dc->idle, on_idle_check, every, every);
}

/* ---- listening and draining ------------------------------------------------------------------------ */

int down_listen(struct native *n, const char **error_r)
{
	const char *listen = n->host->tenant->listen;
	int fd = n->host->tenant->listen_fd;
	static char why[300];
	char *err = NULL;
	int r;

	/*
	 * The supervisor's socket, which outlives this worker; or, standalone, one
	 * bound here the way the supervisor binds it (lib/util.c, ep_listen_bind)
	 */
	if (fd < 0 && (r = ep_listen_bind(listen, &fd, &err)) < 0) {
		snprintf(why, sizeof(why), "%s", err);
		free(err);
		*error_r = why;
		return r == -EADDRINUSE || r == -EACCES || r == -EEXIST ? -EADDRINUSE : -EIO;
	}
	if (strncmp(listen, "unix:", 5) == 0) {
		uv_pipe_init(n->loop, &n->listener.pipe, 0);
		r = uv_pipe_open(&n->listener.pipe, fd);
	} else {
		uv_tcp_init(n->loop, &n->listener.tcp);
		r = uv_tcp_open(&n->listener.tcp, fd);
	}
	n->listener.handle.data = n;
	n->open_handles++;
	if (r < 0) {
		snprintf(why, sizeof(why), "cannot listen on %s: %s", listen, uv_strerror(r));
		*error_r = why;
		if (n->host->tenant->listen_fd < 0)
			close(fd); /* ours, and not taken by the handle */
		uv_close(&n->listener.handle, on_listener_closed);
		return -EIO;
	}
	n->listening = 1;
	return 0;
}

/*
 * Clients are accepted once a connection to the core etcd is up: until then
 * they wait in the backlog (the supervisor's socket survives worker restarts)
 * instead of getting UNAVAILABLE from a worker that just started.
 */
int down_accept_start(struct native *n)
{
	int r;

	if (!n->listening || n->accepting)
		return 0;
	r = uv_listen(&n->listener.stream, 511, on_connection);
	if (r < 0) {
		n->host->fail(n->host, 0, uv_strerror(r));
		return r;
	}
	n->accepting = 1;
	return 0;
}

void down_close_all(struct native *n, int graceful)
{
	if (n->listening) {
		n->listening = 0;
		n->accepting = 0;
		uv_close(&n->listener.handle, on_listener_closed);
		if (strncmp(n->host->tenant->listen, "unix:", 5) == 0 && n->host->tenant->listen_fd < 0)
			unlink(n->host->tenant->listen + 5);
	}
	for (struct down_conn *dc = n->conns, *next; dc != NULL; dc = next) {
		next = dc->next;
		if (!graceful) {
			down_conn_close(dc);
			continue;
		}
		if (dc->draining)
			continue;
		if (dc->session == NULL) {
			/* still in its TLS handshake: nothing of it is in flight */
			down_conn_close(dc);
			continue;
		}
		/*
		 * Two-step GOAWAY: first "no new streams" with the largest stream
		 * ID, so that requests already on the wire are still taken; then,
		 * a moment later, the real last stream ID.  In-flight calls
		 * finish; the connection closes once nothing is left
		 * (down_flush_now).
		 */
		dc->draining = 1;
		nghttp2_submit_shutdown_notice(dc->session);
		down_flush_now(dc);
		if (!dc->closing)
			uv_timer_start(&dc->idle, on_drain_goaway, NATIVE_GOAWAY_GRACE_MS, 0);
	}
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
	frame_message(&c->up_out, msg, len);
	r = up_submit(n, c);
	if (r < 0) {
		call_free(c);
		return r;
	}
	return 0;
}

void native_internal_done(struct call *c, uint32_t error_code)
{
	struct native *n = c->n;
	uint8_t flag = 0;
	const uint8_t *msg = NULL;
	size_t len = 0, declared;
	int ok = error_code == 0 && c->up_status == 200 && c->grpc_status != NULL &&
		 strcmp(c->grpc_status, "0") == 0;

	if (ok && !grpc_reader_next(&c->resp_in, &flag, &msg, &len, &declared))
		ok = 0;
	c->icb(n, c->ictx, ok, msg, len);
	call_free(c);
}
