/*
 * Upstream: a few multiplexed HTTP/2 (h2c or TLS) connections to the core etcd,
 * with failover across the configured endpoints and reconnection with
 * backoff.  A call that finds no connection ready fails with UNAVAILABLE at
 * once: it never hangs.
 */
#include <errno.h>
#include <linux/sockios.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>


#include "native.h"

#define UP_BACKOFF_INITIAL_MS 100
#define UP_BACKOFF_MAX_MS 5000
/* keepalive, see keepalive_tick() */
#define UP_TICK_MS 500		 /* how often a connection looks at itself */
#define UP_PING_IDLE_MS 1000	 /* calls waiting and nothing received this long: PING */
#define UP_PING_GAP_MS 5500	 /* at most one PING this often (etcd's keepalive min time: 5 s) */
#define UP_PING_GAP_MAX_MS 300000 /* the gap doubles at each too_many_pings, up to this */
#define UP_PING_TIMEOUT_MS 3000	 /* a PING out and nothing received this long: dead */
#define UP_CONNECT_TIMEOUT_MS 5000 /* TCP and TLS handshakes */
#define UP_WINDOW (16 * 1024 * 1024)

static void up_connect(struct up_conn *uc);
static void up_failed(struct up_conn *uc, const char *why);
static void on_retry(uv_timer_t *t);

int up_any_ready(const struct native *n)
{
	for (unsigned i = 0; i < n->n_upstreams; i++)
		if (n->ups[i].state == UP_READY)
			return 1;
	return 0;
}

/* ---- writing ------------------------------------------------------------------------ */

static void up_write_done(uv_write_t *req, int status)
{
	struct up_conn *uc = req->handle->data;

	native_write_done(req);
	if (status < 0 && uc->state != UP_CLOSED && uc->state != UP_IDLE)
		up_failed(uc, uv_strerror(status));
	else if (uc->session != NULL)
		up_flush(uc);
}

void up_flush(struct up_conn *uc)
{
	conn_io_mark(&uc->io);
}

/* Send what OpenSSL wrote (handshake records, alerts); 0, or -1 when the connection failed. */
static int up_tls_flush(struct up_conn *uc)
{
	const char *why = NULL;

	if (native_tls_flush(&uc->tls, (uv_stream_t *)&uc->tcp, &uc->write_pending, up_write_done,
			     &why) < 0) {
		up_failed(uc, why);
		return -1;
	}
	return 0;
}

/* Gather what nghttp2 has to send: one write (and one SSL record run) per flush. */
static void up_flush_now(struct up_conn *uc)
{
	const char *why = NULL;

	if (uc->session == NULL || !uc->tcp_open || uc->closing)
		return;
	conn_io_ack_take(&uc->io, uc->session);
	while (uc->write_pending < NATIVE_HIGH_WATER) {
		const uint8_t *data;
		size_t len;
		int err;

		data = native_gather(uc->n, uc->session, &len, &err);
		if (err < 0) {
			up_failed(uc, nghttp2_strerror(err));
			return;
		}
		if (data == NULL)
			break;
		if (native_send((uv_stream_t *)&uc->tcp, &uc->tls, data, len, &uc->write_pending,
				up_write_done, &why) < 0) {
			up_failed(uc, why);
			return;
		}
	}
	if (uc->state == UP_DRAINING && uc->calls == NULL)
		up_failed(uc, NULL); /* drained after GOAWAY: reconnect */
}

static void up_io_flush(struct conn_io *io)
{
	up_flush_now((struct up_conn *)((char *)io - offsetof(struct up_conn, io)));
}

/* ---- nghttp2 client callbacks ------------------------------------------------------- */

/* Remember whose header block this is: on_header then needs no stream lookup per field. */
static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct up_conn *uc = ud;

	if (frame->hd.type == NGHTTP2_HEADERS)
		uc->hdr_call = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
	return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
		     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
	struct up_conn *uc = ud;
	struct call *c = uc->hdr_call;

	if (frame->hd.type != NGHTTP2_HEADERS)
		return 0;
	if (c == NULL || c->up_id != frame->hd.stream_id)
		c = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
	if (c == NULL)
		return 0;
	if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
		c->up_status = atoi((const char *)value);
		return 0;
	}
	if (!(namelen == 11 && memcmp(name, "grpc-status", 11) == 0) &&
	    !(namelen == 12 && memcmp(name, "grpc-message", 12) == 0))
		return 0;
	/*
	 * These two go to the client as they are, and nghttp2's HTTP checks are
	 * off here (make_session): a value HTTP/2 does not allow becomes an
	 * error of ours instead of a broken trailer.
	 */
	if (!nghttp2_check_header_value(value, valuelen) || /* NUL, CR, LF, ... */
	    (namelen == 11 && (valuelen == 0 || strspn((const char *)value, "0123456789") != valuelen))) {
		static const char bad[] = "etcdproxy: the core etcd sent a malformed grpc-status or "
					  "grpc-message";

		pool_free(c->grpc_status);
		c->grpc_status = pool_strndup("13", 2);
		pool_free(c->grpc_message);
		c->grpc_message = pool_strndup(bad, sizeof(bad) - 1);
		c->up_bad_status = 1;
		return 0;
	}
	if (c->up_bad_status)
		return 0; /* the error above stays */
	if (namelen == 11) {
		pool_free(c->grpc_status);
		c->grpc_status = pool_strndup(value, valuelen);
	} else {
		pool_free(c->grpc_message);
		c->grpc_message = pool_strndup(value, valuelen);
	}
	return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud)
{
	struct up_conn *uc = ud;
	struct call *c;

	if (frame->hd.type == NGHTTP2_PING && !(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
		conn_io_ack_hold(&uc->io, s, frame->ping.opaque_data);
		return 0;
	}
	if (frame->hd.type == NGHTTP2_PING) {
		uc->ping_sent = 0; /* the member answers */
		return 0;
	}
	if (frame->hd.type == NGHTTP2_GOAWAY) {
		if (frame->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM &&
		    uc->ping_gap < UP_PING_GAP_MAX_MS) {
			/* too_many_pings: this core wants fewer (gRPC does so) */
			uc->ping_gap = uc->ping_gap * 2 < UP_PING_GAP_MAX_MS ? uc->ping_gap * 2
									     : UP_PING_GAP_MAX_MS;
			uc->n->host->log(uc->n->host, EP_LOG_WARNING,
					 "core etcd %s:%s: GOAWAY too_many_pings: keepalive "
					 "PINGs now at least %llu ms apart",
					 uc->n->ep_host[uc->endpoint], uc->n->ep_port[uc->endpoint],
					 (unsigned long long)uc->ping_gap);
		}
		/* no new streams here; the ones below last_stream_id finish */
		if (uc->state == UP_READY) {
			uc->state = UP_DRAINING;
			native_upstream_changed(uc->n);
		}
		return 0;
	}
	c = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
	if (c == NULL)
		return 0;
	if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
		if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
			c->up_eos = 1;
		call_on_up_headers_done(c);
	} else if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
		   (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		c->up_eos = 1;
		call_on_up_headers_done(c);
	}
	return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data,
			 size_t len, void *ud)
{
	struct call *c = nghttp2_session_get_stream_user_data(s, stream_id);

	if (c == NULL) {
		nghttp2_session_consume(s, stream_id, len);
		return 0;
	}
	call_on_up_data(c, data, len);
	return 0;
}

static void unlink_from_up(struct up_conn *uc, struct call *c)
{
	if (uc->hdr_call == c)
		uc->hdr_call = NULL;
	*c->pprev_in_up = c->next_in_up;
	if (c->next_in_up != NULL)
		c->next_in_up->pprev_in_up = c->pprev_in_up;
	c->next_in_up = NULL;
	c->pprev_in_up = NULL;
	uc->n_calls--;
}

static int on_stream_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *ud)
{
	struct up_conn *uc = ud;
	struct call *c = nghttp2_session_get_stream_user_data(s, stream_id);

	if (c == NULL)
		return 0;
	/*
	 * Bytes of this stream held back while the client read slowly: the
	 * stream is gone, but they still count in the connection's window, which
	 * every other call on it shares.  Give them back, or it shrinks for good.
	 */
	if (c->up_unconsumed > 0) {
		nghttp2_session_consume_connection(s, c->up_unconsumed);
		c->up_unconsumed = 0;
		up_flush(uc);
	}
	unlink_from_up(uc, c);
	c->uc = NULL;
	c->up_id = 0;
	call_on_up_close(c, error_code);
	return 0;
}

/* The request body: rewritten messages queued in up_out. */
static ssize_t read_request(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length,
			    uint32_t *data_flags, nghttp2_data_source *source, void *ud)
{
	struct call *c = source->ptr;
	size_t have = bq_pending(&c->up_out);

	if (have == 0) {
		if (c->down_eos && !c->waiting_lookup && c->ps == NULL) {
			*data_flags |= NGHTTP2_DATA_FLAG_EOF;
			return 0;
		}
		c->up_data_deferred = 1;
		return NGHTTP2_ERR_DEFERRED;
	}
	if (have > length)
		have = length;
	(void)buf; /* the frame is written by up_send_data() */
	*data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
	if (have == bq_pending(&c->up_out) && c->down_eos && !c->waiting_lookup && c->ps == NULL)
		*data_flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)have;
}

static int up_send_data(nghttp2_session *s, nghttp2_frame *frame, const uint8_t *framehd,
			size_t length, nghttp2_data_source *source, void *ud)
{
	struct call *c = source->ptr;
	int r;

	(void)s;
	(void)ud;
	r = native_gather_frame(c->n, frame, framehd, &c->up_out, length);
	if (r != 0)
		return r;
	/* the queue went down: the client may send more */
	call_resume_down(c);
	return 0;
}

/* ---- connection life ---------------------------------------------------------------- */

static void fail_calls(struct up_conn *uc, const char *why)
{
	while (uc->calls != NULL) {
		struct call *c = uc->calls;

		unlink_from_up(uc, c);
		c->uc = NULL;
		c->up_id = 0;
		call_on_up_close(c, UP_CONNECTION_LOST);
	}
}

static void on_tcp_closed(uv_handle_t *h)
{
	struct up_conn *uc = h->data;

	uc->closing = 0;
	native_release(uc->n);
}

static void on_timer_closed(uv_handle_t *h)
{
	struct up_conn *uc = h->data;

	native_release(uc->n);
}

/* Send a keepalive PING now. */
static void send_ping(struct up_conn *uc, uint64_t now)
{
	static const uint8_t opaque[8] = { 'e', 'p', 'x', 'y', 'k', 'a', 'l', 'v' };

	if (uc->session == NULL ||
	    nghttp2_submit_ping(uc->session, NGHTTP2_FLAG_NONE, opaque) != 0)
		return;
	uc->ping_sent = now != 0 ? now : 1;
	uc->last_ping = uc->ping_sent;
	up_flush(uc);
}

/*
 * Keepalive: a member that stops answering (a stopped process, a dead link
 * that still holds the TCP connection) would keep every call on this
 * connection waiting.  A connection that has calls waiting and has received
 * nothing for UP_PING_IDLE_MS sends a PING; when nothing at all arrives
 * within UP_PING_TIMEOUT_MS of it, the connection ends: its calls fail with
 * UNAVAILABLE, and the next connection goes to the next endpoint.  Anything
 * received counts as life, and so do bytes of ours the member's TCP
 * acknowledged (SIOCOUTQ going down): a slow but moving link is not cut, even
 * while a large upload keeps the PING behind it and etcd has nothing to say.
 *
 * etcd (gRPC) counts a PING sooner than --grpc-keepalive-min-time (5 s) after
 * the previous one, or any PING on a connection without streams, as abuse, and
 * closes the connection with GOAWAY "too_many_pings" at the third: PINGs are
 * at least ping_gap apart (5.5 s, doubled at each such GOAWAY), and a
 * connection without calls sends none, except the first, at connection time.
 */
static void keepalive_tick(struct up_conn *uc)
{
	uint64_t now = uv_now(uc->n->loop), heard;
	uv_os_fd_t fd;
	int outq;

	if (uc->tcp_open && uv_fileno((uv_handle_t *)&uc->tcp, &fd) == 0 &&
	    ioctl(fd, SIOCOUTQ, &outq) == 0) {
		if ((size_t)outq < uc->last_outq)
			uc->last_recv = now; /* acknowledged: the member's side moves */
		uc->last_outq = (size_t)outq;
	}
	heard = uc->last_recv > uc->ping_sent ? uc->last_recv : uc->ping_sent;

	if (uc->ping_sent != 0 && now - heard >= UP_PING_TIMEOUT_MS) {
		up_failed(uc, "no answer to an HTTP/2 PING within 3 s: the member does not respond");
		return;
	}
	if (uc->ping_sent == 0 && uc->n_calls > 0 && now - uc->last_recv >= UP_PING_IDLE_MS &&
	    now - uc->last_ping >= uc->ping_gap)
		send_ping(uc, now);
	uv_timer_start(&uc->retry, on_retry, UP_TICK_MS, 0);
}

static void on_retry(uv_timer_t *t)
{
	struct up_conn *uc = t->data;

	uv_timer_stop(t);
	if (!uc->n->stopping && (uc->state == UP_READY || uc->state == UP_DRAINING)) {
		keepalive_tick(uc);
		return;
	}
	if (!uc->n->stopping && (uc->state == UP_CONNECTING || uc->state == UP_HANDSHAKE)) {
		up_failed(uc, uc->state == UP_CONNECTING ? "no TCP connection within 5 s"
							 : "no TLS handshake within 5 s");
		return;
	}
	if (uc->n->stopping || uc->state != UP_IDLE)
		return;
	if (uc->closing) /* the old socket is not closed yet: the handle cannot be reused */
		uv_timer_start(t, on_retry, 10, 0);
	else
		up_connect(uc);
}

/* Close the connection; why == NULL is a clean close (drained). Reconnects unless stopping. */
static void up_failed(struct up_conn *uc, const char *why)
{
	struct native *n = uc->n;
	uint64_t delay = 0;

	if (uc->state == UP_IDLE || uc->state == UP_CLOSED)
		return;
	if (why != NULL) {
		n->counters.upstream_errors++;
		n->host->log(n->host, EP_LOG_WARNING, "core etcd %s:%s: %s",
			     n->ep_host[uc->endpoint], n->ep_port[uc->endpoint], why);
		uc->failures++;
		/* fail over: the next attempt goes to the next endpoint */
		uc->endpoint = (uc->endpoint + 1) % n->n_endpoints;
		delay = UP_BACKOFF_INITIAL_MS;
		for (unsigned i = 1; i < uc->failures && delay < UP_BACKOFF_MAX_MS; i++)
			delay *= 2;
		if (delay > UP_BACKOFF_MAX_MS)
			delay = UP_BACKOFF_MAX_MS;
	}
	uc->state = n->stopping ? UP_CLOSED : UP_IDLE;
	uc->io.ping.pending = 0;
	uc->ping_sent = 0;
	if (uc->session != NULL) {
		nghttp2_session *s = uc->session;

		uc->session = NULL;
		fail_calls(uc, why);
		nghttp2_session_del(s);
	}
	native_tls_free(&uc->tls);
	uv_timer_stop(&uc->retry);
	if (!n->stopping)
		uv_timer_start(&uc->retry, on_retry, delay, 0);
	if (uc->tcp_open) {
		uc->tcp_open = 0;
		uc->closing = 1;
		uv_close((uv_handle_t *)&uc->tcp, on_tcp_closed);
	}
	native_upstream_changed(n);
	native_maybe_stopped(n);
}

static void up_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];

	*buf = uv_buf_init(slab, sizeof(slab));
}

static void up_ready(struct up_conn *uc);

/* Plaintext HTTP/2 from the core etcd; -1 when the connection failed meanwhile. */
static int up_recv_plain(void *ctx, const uint8_t *data, size_t len)
{
	struct up_conn *uc = ctx;
	ssize_t r;

	if (uc->session == NULL)
		return -1;
	r = nghttp2_session_mem_recv(uc->session, data, len);
	if (r < 0) {
		up_failed(uc, nghttp2_strerror((int)r));
		return -1;
	}
	return uc->session != NULL ? 0 : -1;
}

/* Ciphertext in: finish the handshake, then decrypt into the HTTP/2 session. */
static void up_recv_tls(struct up_conn *uc, const uint8_t *data, size_t len)
{
	const char *why = NULL;
	int r;

	native_tls_feed(&uc->tls, data, len);
	if (uc->state == UP_HANDSHAKE) {
		r = native_tls_handshake(&uc->tls, &why);
		if (up_tls_flush(uc) < 0)
			return;
		if (r < 0) {
			up_failed(uc, why);
			return;
		}
		if (r == 0)
			return;
		if (!native_tls_alpn_h2(&uc->tls)) {
			up_failed(uc, "the core etcd did not agree on ALPN h2");
			return;
		}
		up_ready(uc);
		if (uc->session == NULL)
			return;
	}
	r = native_tls_read(&uc->tls, up_recv_plain, uc, &why);
	if (r < 0)
		up_failed(uc, why);
	else if (r == 0)
		up_tls_flush(uc); /* what reading produced (a key update answer) */
}

static void up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct up_conn *uc = s->data;

	if (nread == 0)
		return;
	if (nread < 0) {
		up_failed(uc, nread == UV_EOF ? "connection closed by the core etcd"
					      : uv_strerror((int)nread));
		return;
	}
	uc->last_recv = uv_now(uc->n->loop);
	if (uc->tls.ssl != NULL)
		up_recv_tls(uc, (const uint8_t *)buf->base, (size_t)nread);
	else
		up_recv_plain(uc, (const uint8_t *)buf->base, (size_t)nread);
	if (uc->session != NULL)
		up_flush(uc); /* with every other read of this loop iteration */
}

static int make_session(struct up_conn *uc)
{
	nghttp2_session_callbacks *cbs;
	nghttp2_option *opt;
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_ENABLE_PUSH, 0 },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20 },
		/* gRPC has no use for stream priorities: no tree to keep per stream (RFC 9218) */
		{ NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1 },
	};
	int r;

	nghttp2_session_callbacks_new(&cbs);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
	nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
	nghttp2_session_callbacks_set_send_data_callback(cbs, up_send_data);
	nghttp2_option_new(&opt);
	/* response bytes are acknowledged as the client takes them: end-to-end flow control */
	nghttp2_option_set_no_auto_window_update(opt, 1);
	nghttp2_option_set_no_auto_ping_ack(opt, 1);
	/* the clients' metadata is limited to NATIVE_MAX_HEADER_LIST; ours comes on top */
	nghttp2_option_set_max_send_header_block_length(opt, 2 * NATIVE_MAX_HEADER_LIST);
	/*
	 * No HTTP messaging checks of etcd's responses: the proxy reads the few
	 * fields it needs itself (:status, grpc-status, grpc-message; on_header),
	 * and a response without a :status is answered as an error
	 * (call_on_up_headers_done).
	 */
	nghttp2_option_set_no_http_messaging(opt, 1);
	r = nghttp2_session_client_new3(&uc->session, cbs, uc, opt, &native_nghttp2_mem);
	nghttp2_option_del(opt);
	nghttp2_session_callbacks_del(cbs);
	if (r != 0)
		return -ENOMEM;
	nghttp2_submit_settings(uc->session, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
	nghttp2_session_set_local_window_size(uc->session, NGHTTP2_FLAG_NONE, 0, UP_WINDOW);
	return 0;
}

/* TCP (and TLS) is up: start HTTP/2. */
static void up_ready(struct up_conn *uc)
{
	struct native *n = uc->n;

	if (make_session(uc) < 0) {
		up_failed(uc, "cannot create an HTTP/2 session");
		return;
	}
	uc->state = UP_READY;
	if (uc->failures > 0)
		n->host->log(n->host, EP_LOG_NOTICE, "core etcd %s:%s: connected again",
			     n->ep_host[uc->endpoint], n->ep_port[uc->endpoint]);
	uc->failures = 0;
	uc->ping_sent = 0;
	uc->last_recv = uv_now(n->loop);
	uc->last_ping = 0;
	uc->last_outq = 0;
	send_ping(uc, uc->last_recv); /* a member that never answers is found at once */
	uv_timer_start(&uc->retry, on_retry, UP_TICK_MS, 0); /* keepalive */
	up_flush(uc);
	native_upstream_changed(n);
}

/* The client side of TLS: the certificate must name the endpoint. */
static int tls_start(struct up_conn *uc)
{
	struct native *n = uc->n;
	const char *host = n->ep_host[uc->endpoint];
	const char *why = NULL;

	if (native_tls_start(&uc->tls, n->up_ctx, 0) < 0) {
		up_failed(uc, native_tls_reason(&uc->tls));
		return -1;
	}
	native_tls->set_peer(&uc->tls, host); /* an IP in its SANs, or the host name */
	uc->state = UP_HANDSHAKE;
	if (native_tls_handshake(&uc->tls, &why) < 0) {
		up_failed(uc, why);
		return -1;
	}
	return up_tls_flush(uc);
}

static void on_connected(uv_connect_t *req, int status)
{
	struct up_conn *uc = req->data;

	if (uc->state != UP_CONNECTING)
		return;
	if (status < 0) {
		up_failed(uc, uv_strerror(status));
		return;
	}
	uv_tcp_nodelay(&uc->tcp, 1);
	uv_read_start((uv_stream_t *)&uc->tcp, up_alloc, up_read);
	if (uc->n->up_ctx != NULL) {
		tls_start(uc);
		return;
	}
	up_ready(uc);
}

/*
 * A lookup in flight counts in open_handles: libuv runs it on its thread pool,
 * where uv_cancel cannot stop it once started, and its callback writes into
 * uc. The plugin reports stopped (and may be freed) only after it came back.
 */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct up_conn *uc = req->data;
	struct native *n = uc->n;
	int r;

	if (uc->state != UP_RESOLVING) {
		uv_freeaddrinfo(res);
	} else if (status < 0 || n->stopping) {
		uv_freeaddrinfo(res);
		uc->state = UP_CONNECTING; /* so that up_failed acts */
		up_failed(uc, status < 0 ? uv_strerror(status) : "stopping");
	} else {
		uv_tcp_init(n->loop, &uc->tcp);
		uc->tcp.data = uc;
		uc->tcp_open = 1;
		n->open_handles++;
		uc->state = UP_CONNECTING;
		uc->connect_req.data = uc;
		r = uv_tcp_connect(&uc->connect_req, &uc->tcp, res->ai_addr, on_connected);
		uv_freeaddrinfo(res);
		if (r < 0)
			up_failed(uc, uv_strerror(r));
		else /* and the TLS handshake after it */
			uv_timer_start(&uc->retry, on_retry, UP_CONNECT_TIMEOUT_MS, 0);
	}
	n->lookups--;
	native_release(n); /* the lookup */
}

static void up_connect(struct up_conn *uc)
{
	struct native *n = uc->n;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
	int r;

	uc->state = UP_RESOLVING;
	uc->gai.data = uc;
	r = uv_getaddrinfo(n->loop, &uc->gai, on_resolved, n->ep_host[uc->endpoint],
			   n->ep_port[uc->endpoint], &hints);
	if (r < 0) {
		uc->state = UP_CONNECTING;
		up_failed(uc, uv_strerror(r));
		return;
	}
	n->lookups++;
	n->open_handles++; /* until on_resolved */
}

int up_init(struct native *n)
{
	n->ups = calloc(n->n_upstreams, sizeof(*n->ups));
	if (n->ups == NULL)
		return -ENOMEM;
	for (unsigned i = 0; i < n->n_upstreams; i++) {
		struct up_conn *uc = &n->ups[i];

		uc->n = n;
		uc->index = (int)i;
		uc->endpoint = i % n->n_endpoints;
		uc->state = UP_IDLE;
		uc->ping_gap = UP_PING_GAP_MS;
		conn_io_open(n, &uc->io, up_io_flush);
		uv_timer_init(n->loop, &uc->retry);
		uc->retry.data = uc;
		n->open_handles++;
		up_connect(uc);
	}
	return 0;
}

void up_shutdown(struct native *n)
{
	for (unsigned i = 0; i < n->n_upstreams; i++) {
		struct up_conn *uc = &n->ups[i];

		if (uc->state != UP_IDLE && uc->state != UP_CLOSED) {
			if (uc->state == UP_RESOLVING)
				uv_cancel((uv_req_t *)&uc->gai);
			up_failed(uc, NULL);
		}
		uc->state = UP_CLOSED;
		conn_io_close(&uc->io);
		uv_timer_stop(&uc->retry);
		if (!uv_is_closing((uv_handle_t *)&uc->retry))
			uv_close((uv_handle_t *)&uc->retry, on_timer_closed);
	}
}

/* ---- calls ---------------------------------------------------------------------------- */

/*
 * The first ready connection that carries fewer than NATIVE_UP_FILL calls,
 * else the least busy: calls that arrive together then leave in one write on
 * one connection (and wake etcd's reader once), while the other connections
 * stay open and ready for a failover or for more load.
 */
static struct up_conn *pick(struct native *n)
{
	struct up_conn *best = NULL;
	size_t best_load = (size_t)-1;

	for (unsigned i = 0; i < n->n_upstreams; i++) {
		struct up_conn *uc = &n->ups[i];

		if (uc->state != UP_READY)
			continue;
		if (uc->n_calls < NATIVE_UP_FILL)
			return uc;
		if (uc->n_calls < best_load) {
			best = uc;
			best_load = uc->n_calls;
		}
	}
	return best;
}

static void add_nv(nghttp2_nv *nv, size_t *k, const char *name, size_t nl, const char *value,
		   size_t vl)
{
	nv[*k].name = (uint8_t *)name;
	nv[*k].namelen = nl;
	nv[*k].value = (uint8_t *)value;
	nv[*k].valuelen = vl;
	nv[*k].flags = NATIVE_NV_NO_COPY; /* literals, the call's strings, the endpoint's */
	(*k)++;
}

#define ADD_LIT(nv, k, n, v) add_nv(nv, k, n, sizeof(n) - 1, v, strlen(v))

int up_submit(struct native *n, struct call *c)
{
	struct up_conn *uc = pick(n);
	nghttp2_nv nv[NATIVE_MAX_HEADERS + 8];
	nghttp2_data_provider dp;
	size_t k = 0;
	int32_t id;

	if (uc == NULL)
		return -EAGAIN;
	ADD_LIT(nv, &k, ":method", "POST");
	ADD_LIT(nv, &k, ":scheme", n->up_ctx != NULL ? "https" : "http");
	add_nv(nv, &k, ":path", 5, c->path, strlen(c->path));
	ADD_LIT(nv, &k, ":authority", n->ep_authority[uc->endpoint]);
	ADD_LIT(nv, &k, "content-type", "application/grpc");
	ADD_LIT(nv, &k, "te", "trailers");
	for (size_t i = 0; i < c->n_hdrs; i++)
		add_nv(nv, &k, c->hdrs[i].name, c->hdrs[i].namelen, c->hdrs[i].value,
		       c->hdrs[i].valuelen);
	dp.source.ptr = c;
	dp.read_callback = read_request;
	id = nghttp2_submit_request(uc->session, NULL, nv, k, &dp, c);
	if (id < 0)
		return -EIO;
	c->uc = uc;
	c->up_id = id;
	c->up_attached = 1;
	c->up_submitted = 1;
	c->next_in_up = uc->calls;
	if (uc->calls != NULL)
		uc->calls->pprev_in_up = &c->next_in_up;
	c->pprev_in_up = &uc->calls;
	uc->calls = c;
	uc->n_calls++;
	up_flush(uc);
	return 0;
}

void up_resume(struct call *c)
{
	if (c->uc == NULL || c->uc->session == NULL)
		return;
	if (c->up_data_deferred) {
		c->up_data_deferred = 0;
		nghttp2_session_resume_data(c->uc->session, c->up_id);
	}
	up_flush(c->uc);
}

void up_cancel(struct call *c)
{
	if (c->uc == NULL || c->uc->session == NULL)
		return;
	nghttp2_submit_rst_stream(c->uc->session, NGHTTP2_FLAG_NONE, c->up_id, NGHTTP2_CANCEL);
	up_flush(c->uc);
}

void up_consume(struct call *c, size_t bytes)
{
	if (c->uc == NULL || c->uc->session == NULL || bytes == 0)
		return;
	nghttp2_session_consume(c->uc->session, c->up_id, bytes);
	up_flush(c->uc);
}
