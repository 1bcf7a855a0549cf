/*
 * Downstream: the tenant's clients (h2c, or HTTP/2 over TLS with a required
 * client certificate): their connections, the nghttp2 server session that
 * turns their frames into calls (call.c), listening and draining.
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
#include "util.h"

static void down_conn_close(struct down_conn *dc);

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
static void down_flush_now(struct down_conn *dc)
{
	const char *why = NULL;

	if (dc->closing || dc->session == NULL)
		return;
	conn_io_ack_take(&dc->io, dc->session);
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

static void down_io_flush(struct conn_io *io)
{
	down_flush_now((struct down_conn *)((char *)io - offsetof(struct down_conn, io)));
}

void down_flush(struct down_conn *dc)
{
	conn_io_mark(&dc->io);
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

		conn_io_ack_hold(&dc->io, s, frame->ping.opaque_data);
		return 0;
	}
	if (c == NULL)
		return 0;
	if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
		if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
			c->down_eos = 1;
		call_headers_done(c);
	} else if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
		   (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		call_request_end(c);
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
	if (c->ps != NULL && bq_pending(&c->req_in.buf) == 0) {
		call_put_data(c, data, len); /* a large Put goes on as it comes */
	} else {
		bq_append(&c->req_in.buf, data, len);
		grpc_reader_expect(&c->req_in, dc->n->max_message);
	}
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
	if (c->watch_counted) {
		c->watch_counted = 0;
		c->dc->n->counters.active_watch_streams--;
	}
	c->dc = NULL;
	c->down_attached = 0;
}

static int d_on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *ud)
{
	struct call *c = nghttp2_session_get_stream_user_data(s, stream_id);

	if (c == NULL)
		return 0;
	/* request bytes held back (the core read slowly) still count in the connection's window */
	if (c->down_unconsumed > 0) {
		nghttp2_session_consume_connection(s, c->down_unconsumed);
		c->down_unconsumed = 0;
		down_flush(c->dc);
	}
	call_client_gone(c);
	unlink_from_down(c);
	call_maybe_free(c);
	return 0;
}

/*
 * The final HEADERS went out while the client still has its half of the
 * stream open (a Watch that etcd ended, a call refused before its request
 * ended).  As gRPC servers do (RFC 9113, 8.1), RST_STREAM(NO_ERROR) tells
 * the client that nothing more is read, and closes the stream here rather
 * than holding the call until the client ends its half.
 */
static int d_on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct call *c;

	(void)ud;
	if (frame->hd.type != NGHTTP2_HEADERS || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	c = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
	if (c != NULL && !c->down_eos)
		nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
					  NGHTTP2_NO_ERROR);
	return 0;
}

/* ---- connections ------------------------------------------------------------------------------- */

static void on_conn_closed(uv_handle_t *h)
{
	struct down_conn *dc = h->data;
	struct native *n = dc->n;

	if (--dc->handles == 0) {
		free(dc->client_json);
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
	conn_io_close(&dc->io);
	for (pp = &n->conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == dc) {
			*pp = dc->next;
			break;
		}
	}
	while (dc->calls != NULL) {
		struct call *c = dc->calls;

		call_client_gone(c);
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

/*
 * {"subject": "CN=...", "serial": "hex"} for a client with a certificate,
 * else {"address": "127.0.0.1:40112"} ({"address": "unix"} on a Unix socket).
 */
const char *down_client_json(struct down_conn *dc)
{
	char *subject, *serial;

	if (dc->client_json != NULL)
		return dc->client_json;
	if (dc->tls.ssl != NULL && native_tls_peer(&dc->tls, &subject, &serial) == 0) {
		char *s = audit_json_bytes((const uint8_t *)subject, strlen(subject));

		dc->client_json = ep_strdup_printf("{\"subject\":%s,\"serial\":\"%s\"}", s, serial);
		free(s);
		free(subject);
		free(serial);
	} else {
		struct sockaddr_storage ss;
		int len = sizeof(ss);
		char ip[64];

		if (dc->h.handle.type != UV_TCP ||
		    uv_tcp_getpeername(&dc->h.tcp, (struct sockaddr *)&ss, &len) < 0)
			dc->client_json = ep_strdup("{\"address\":\"unix\"}");
		else if (ss.ss_family == AF_INET6 && uv_ip6_name((struct sockaddr_in6 *)&ss, ip,
								 sizeof(ip)) == 0)
			dc->client_json = ep_strdup_printf("{\"address\":\"[%s]:%u\"}", ip,
							   ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
		else if (ss.ss_family == AF_INET && uv_ip4_name((struct sockaddr_in *)&ss, ip,
								sizeof(ip)) == 0)
			dc->client_json = ep_strdup_printf("{\"address\":\"%s:%u\"}", ip,
							   ntohs(((struct sockaddr_in *)&ss)->sin_port));
		else
			dc->client_json = ep_strdup("{}");
	}
	return dc->client_json;
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

static void handshake_failed(struct down_conn *dc, enum tls_failure reason, const char *why)
{
	dc->n->counters.tls_handshake_failures++;
	dc->n->counters.tls_failures[reason]++;
	dc->n->host->log(dc->n->host, EP_LOG_INFO, "TLS handshake with %s failed: %s",
			 peer_name(dc), why);
	down_conn_close(dc);
}

static void on_handshake_timeout(uv_timer_t *t)
{
	struct down_conn *dc = t->data;

	if (dc->session == NULL)
		handshake_failed(dc, TLS_FAIL_TIMEOUT, "no handshake within 10 s");
}

/* The handshake is done: the client is who it must be and speaks h2; start HTTP/2. */
static int down_tls_established(struct down_conn *dc)
{
	struct native *n = dc->n;

	if (!native_tls_alpn_h2(&dc->tls)) {
		handshake_failed(dc, TLS_FAIL_NO_ALPN,
				 "the client did not agree on ALPN h2: gRPC needs HTTP/2");
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
			handshake_failed(dc, TLS_FAIL_PROTOCOL, fwhy);
			return -1;
		}
		if (r < 0) {
			handshake_failed(dc, native_tls_failure_reason(why), why);
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

	/* while the peer is surely there: a reset client has no address any more */
	if (n->audit != NULL)
		down_client_json(dc);
	nghttp2_session_callbacks_new(&cbs);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, d_on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, d_on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, d_on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, d_on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, d_on_stream_close);
	nghttp2_session_callbacks_set_send_data_callback(cbs, down_send_data);
	nghttp2_session_callbacks_set_on_frame_send_callback(cbs, d_on_frame_send);
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
	conn_io_open(n, &dc->io, down_io_flush);
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
