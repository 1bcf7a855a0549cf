/*
 * The native backend's test bench (harness.h): a host, HTTP/2 clients and a
 * scripted HTTP/2 upstream around the backend's own code, on one libuv loop.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "harness.h"
#include "native.h"
#include "options.h"
#include "pb.h"

extern const struct ep_plugin EP_PLUGIN_SYMBOL;

#define H_FAIL(...)                                                                          \
	do {                                                                                 \
		fprintf(stderr, "harness: " __VA_ARGS__);                                    \
		fputc('\n', stderr);                                                         \
		abort();                                                                     \
	} while (0)

struct h_conn {
	struct h_conn *next;
	struct harness *h;
	int server; /* the peer's end */
	union {
		uv_tcp_t tcp;
		uv_pipe_t pipe;
		uv_stream_t stream;
		uv_handle_t handle;
	} u;
	uv_connect_t connect_req;
	int connected; /* 1 connected, -1 failed */
	int closing;
	int handle_closed;
	nghttp2_session *session;
};

struct h_write {
	uv_write_t req;
	uv_buf_t buf;
	uint8_t data[];
};

/* ---- buffers ------------------------------------------------------------------------------- */

static void buf_append(struct h_buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (cap < b->len + n)
			cap *= 2;
		b->data = realloc(b->data, cap);
		if (b->data == NULL)
			abort();
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->data + b->len, p, n);
	b->len += n;
}

static void buf_frame(struct h_buf *b, const uint8_t *msg, size_t len)
{
	uint8_t head[5] = { 0, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
			    (uint8_t)len };

	buf_append(b, head, 5);
	buf_append(b, msg, len);
}

/* ---- connections ----------------------------------------------------------------------------- */

static void conn_flush(struct h_conn *c);

static void on_write(uv_write_t *req, int status)
{
	if (getenv("H_TRACE") != NULL)
		fprintf(stderr, "harness: write done: %d\n", status);
	free(req);
}

static void on_handle_closed(uv_handle_t *handle)
{
	struct h_conn *c = handle->data;

	c->handle_closed = 1;
}

/* Close a connection of either end; its streams end (rst_code 0xffffffff: the connection went). */
static void conn_close(struct h_conn *c)
{
	if (c->closing)
		return;
	c->closing = 1;
	for (struct h_stream *st = c->h->streams; st != NULL; st = st->next) {
		if (st->conn != c)
			continue;
		if (!st->closed) {
			st->closed = 1;
			st->rst_code = 0xffffffffu;
		}
		st->conn = NULL;
	}
	if (c->session != NULL) {
		nghttp2_session_del(c->session);
		c->session = NULL;
	}
	uv_close(&c->u.handle, on_handle_closed);
}

static void conn_flush(struct h_conn *c)
{
	if (c->closing || c->session == NULL || c->connected != 1)
		return;
	for (;;) {
		const uint8_t *data;
		ssize_t n = nghttp2_session_mem_send(c->session, &data);
		struct h_write *w;

		if (n < 0) {
			conn_close(c);
			return;
		}
		if (n == 0)
			break;
		w = malloc(sizeof(*w) + (size_t)n);
		if (w == NULL)
			abort();
		memcpy(w->data, data, (size_t)n);
		w->buf = uv_buf_init((char *)w->data, (unsigned)n);
		if (getenv("H_TRACE") != NULL)
			fprintf(stderr, "harness: %s writes %zd bytes\n", c->server ? "peer" : "client", n);
		if (uv_write(&w->req, &c->u.stream, &w->buf, 1, on_write) < 0) {
			free(w);
			conn_close(c);
			return;
		}
	}
	if (!nghttp2_session_want_read(c->session) && !nghttp2_session_want_write(c->session))
		conn_close(c);
}

static void submit_trailers(struct h_stream *st)
{
	char status[16];
	nghttp2_nv nv[2] = {
		{ (uint8_t *)"grpc-status", (uint8_t *)status, 11, 0, NGHTTP2_NV_FLAG_NONE },
		{ (uint8_t *)"grpc-message", (uint8_t *)st->finish_message, 12,
		  strlen(st->finish_message), NGHTTP2_NV_FLAG_NONE },
	};

	snprintf(status, sizeof(status), "%d", st->finish_status);
	nv[0].valuelen = strlen(status);
	nghttp2_submit_trailer(st->conn->session, st->id, nv, st->finish_message[0] ? 2 : 1);
}

static ssize_t read_out(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
			uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	struct h_stream *st = src->ptr;
	size_t n = st->out.len - st->out.off;

	(void)s;
	(void)id;
	(void)ud;
	if (n > length)
		n = length;
	if (n > 0) {
		memcpy(buf, st->out.data + st->out.off, n);
		st->out.off += n;
	}
	if (st->out.off == st->out.len && st->out_end) {
		*flags |= NGHTTP2_DATA_FLAG_EOF;
		if (st->conn->server) {
			*flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
			submit_trailers(st);
		}
		return (ssize_t)n;
	}
	if (n == 0) {
		st->deferred = 1;
		return NGHTTP2_ERR_DEFERRED;
	}
	return (ssize_t)n;
}

static void resume(struct h_stream *st)
{
	if (st->deferred && st->conn != NULL) {
		st->deferred = 0;
		nghttp2_session_resume_data(st->conn->session, st->id);
	}
}

static struct h_stream *stream_new(struct h_conn *c)
{
	struct h_stream *st = calloc(1, sizeof(*st));

	if (st == NULL)
		abort();
	st->conn = c;
	st->grpc_status = -1;
	st->next = c->h->streams;
	c->h->streams = st;
	return st;
}

/* ---- nghttp2 callbacks (both ends) ------------------------------------------------------------ */

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct h_conn *c = ud;
	struct h_stream *st;

	if (!c->server || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	st = stream_new(c);
	st->id = f->hd.stream_id;
	c->h->peer_streams++;
	nghttp2_session_set_stream_user_data(s, st->id, st);
	return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
		     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
	struct h_stream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);

	(void)flags;
	(void)ud;
	if (st == NULL)
		return 0;
	if (nl == 5 && memcmp(name, ":path", 5) == 0 && vl < sizeof(st->path)) {
		memcpy(st->path, value, vl);
		st->path[vl] = '\0';
	} else if (nl == 7 && memcmp(name, ":status", 7) == 0) {
		st->http_status = atoi((const char *)value);
	} else if (nl == 11 && memcmp(name, "grpc-status", 11) == 0) {
		st->grpc_status = atoi((const char *)value);
	} else if (nl == 12 && memcmp(name, "grpc-message", 12) == 0 &&
		   vl < sizeof(st->grpc_message)) {
		memcpy(st->grpc_message, value, vl);
		st->grpc_message[vl] = '\0';
	}
	return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
		   void *ud)
{
	struct h_stream *st = nghttp2_session_get_stream_user_data(s, id);

	(void)flags;
	(void)ud;
	if (st != NULL)
		buf_append(&st->in, data, len);
	return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct h_stream *st;
	struct h_conn *c = ud;

	if (getenv("H_TRACE") != NULL)
		fprintf(stderr, "harness: %s received frame type %d stream %d flags 0x%x length %zu\n",
			c->server ? "peer" : "client", f->hd.type, f->hd.stream_id, f->hd.flags,
			f->hd.length);
	if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) &&
	    (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
		st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
		if (st != NULL)
			st->end_received = 1;
	}
	return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
	struct h_conn *c = ud;

	(void)s;
	fprintf(stderr, "harness: %s sent frame type %d stream %d flags 0x%x length %zu\n",
		c->server ? "peer" : "client", f->hd.type, f->hd.stream_id, f->hd.flags,
		f->hd.length);
	return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
	struct h_stream *st = nghttp2_session_get_stream_user_data(s, id);

	(void)ud;
	if (st != NULL) {
		st->closed = 1;
		st->rst_code = code;
	}
	return 0;
}

static nghttp2_session *session_new(struct h_conn *c)
{
	nghttp2_session_callbacks *cb;
	nghttp2_session *s;
	nghttp2_settings_entry iv[] = {
		{ NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 1000 },
		{ NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20 },
	};
	int r;

	nghttp2_session_callbacks_new(&cb);
	nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
	nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
	nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
	if (getenv("H_TRACE") != NULL)
		nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
	r = c->server ? nghttp2_session_server_new(&s, cb, c) : nghttp2_session_client_new(&s, cb, c);
	nghttp2_session_callbacks_del(cb);
	if (r != 0)
		H_FAIL("nghttp2 session: %s", nghttp2_strerror(r));
	nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, iv, 2);
	return s;
}

/* The peer's half: every whole request message goes to the script, then the end. */
static void peer_process(struct h_conn *c)
{
	struct harness *h = c->h;

	for (struct h_stream *st = h->streams; st != NULL; st = st->next) {
		const uint8_t *msg;
		size_t len;

		while (st->conn == c && h_next_message(st, &msg, &len)) {
			uint8_t *copy = malloc(len + 1);

			if (copy == NULL)
				abort();
			memcpy(copy, msg, len);
			h_drop_message(st, len);
			st->messages_in++;
			if (h->script != NULL)
				h->script(h, st, copy, len);
			free(copy);
		}
		if (st->conn == c && st->end_received && !st->end_seen) {
			st->end_seen = 1;
			if (h->script != NULL)
				h->script(h, st, NULL, 0);
		}
	}
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];

	(void)handle;
	(void)suggested;
	*buf = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct h_conn *c = stream->data;

	if (c->closing)
		return;
	if (nread < 0) {
		conn_close(c);
		return;
	}
	if (nghttp2_session_mem_recv(c->session, (const uint8_t *)buf->base, (size_t)nread) < 0) {
		conn_close(c);
		return;
	}
	if (c->server)
		peer_process(c);
	conn_flush(c);
}

static struct h_conn *conn_new(struct harness *h, int server)
{
	struct h_conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		abort();
	c->h = h;
	c->server = server;
	c->next = h->conns;
	h->conns = c;
	return c;
}

static void on_peer_connection(uv_stream_t *server, int status)
{
	struct harness *h = server->data;
	struct h_conn *c;

	if (status < 0)
		return;
	c = conn_new(h, 1);
	uv_tcp_init(&h->loop, &c->u.tcp);
	c->u.handle.data = c;
	if (uv_accept(server, &c->u.stream) < 0) {
		c->closing = 1;
		uv_close(&c->u.handle, on_handle_closed);
		return;
	}
	h->peer_connections++;
	uv_tcp_nodelay(&c->u.tcp, 1); /* as etcd's gRPC server: no Nagle wait between frames */
	c->connected = 1;
	c->session = session_new(c);
	uv_read_start(&c->u.stream, on_alloc, on_read);
	conn_flush(c);
}

/* ---- the host ----------------------------------------------------------------------------------- */

static struct harness *of_host(struct ep_host *host)
{
	return (struct harness *)((char *)host - offsetof(struct harness, host));
}

static void host_log(struct ep_host *host, enum ep_log_level level, const char *fmt, ...)
{
	va_list ap;

	if (of_host(host)->quiet && getenv("H_VERBOSE") == NULL)
		return;
	fprintf(stderr, "native[%d]: ", (int)level);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void host_ready(struct ep_host *host, const char *endpoint)
{
	(void)endpoint;
	of_host(host)->ready_calls++;
}

static void host_health(struct ep_host *host, int healthy, const char *reason)
{
	(void)reason;
	if (!healthy)
		of_host(host)->health_bad++;
}

static void host_fail(struct ep_host *host, int fatal_config, const char *reason)
{
	struct harness *h = of_host(host);

	(void)fatal_config;
	h->failed = 1;
	snprintf(h->fail_reason, sizeof(h->fail_reason), "%s", reason ? reason : "");
}

static void host_stopped(struct ep_host *host)
{
	of_host(host)->stopped = 1;
}

static int host_spawn(struct ep_host *host, uv_process_t *p, const uv_process_options_t *o)
{
	(void)host;
	(void)p;
	(void)o;
	return UV_ENOSYS;
}

static const struct ep_tls_material *host_tls_material(struct ep_host *host)
{
	(void)host;
	return NULL; /* plaintext h2c */
}

static int host_options_parse(struct ep_host *host, void *out, const char **error_r)
{
	struct harness *h = of_host(host);
	cJSON *o = cJSON_Parse(h->tenant.options_json);
	const cJSON *node = NULL;
	int r;

	free(h->options_error);
	h->options_error = NULL;
	r = ep_options_apply(h->plugin->options, "backends.native", o, out, &node,
			     &h->options_error);
	cJSON_Delete(o);
	*error_r = h->options_error;
	return r;
}

/* ---- life ------------------------------------------------------------------------------------- */

static void on_timeout(uv_timer_t *t)
{
	*(int *)t->data = 1;
}

int h_run_until_fn(struct harness *h, int (*done)(struct harness *h, void *arg), void *arg,
		   unsigned timeout_ms)
{
	uv_timer_t timer;
	int expired = 0;

	uv_timer_init(&h->loop, &timer);
	timer.data = &expired;
	uv_timer_start(&timer, on_timeout, timeout_ms, 0);
	while (!done(h, arg) && !expired)
		uv_run(&h->loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&timer, NULL);
	uv_run(&h->loop, UV_RUN_NOWAIT);
	return done(h, arg) ? 0 : -1;
}

static int flag_set(struct harness *h, void *arg)
{
	(void)h;
	return *(const int *)arg != 0;
}

int h_run_until(struct harness *h, const int *flag, unsigned timeout_ms)
{
	return h_run_until_fn(h, flag_set, (void *)flag, timeout_ms);
}

static int never(struct harness *h, void *arg)
{
	(void)h;
	(void)arg;
	return 0;
}

void h_run_for(struct harness *h, unsigned ms)
{
	h_run_until_fn(h, never, NULL, ms);
}

void h_init(struct harness *h, const char *options_json)
{
	struct sockaddr_in addr;
	struct sockaddr_storage bound;
	int len = sizeof(bound);
	const char *error = NULL;

	memset(h, 0, sizeof(*h));
	h->quiet = 1;
	if (uv_loop_init(&h->loop) < 0)
		H_FAIL("uv_loop_init");
	snprintf(h->dir, sizeof(h->dir), "%s/ep-harness.XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (mkdtemp(h->dir) == NULL)
		H_FAIL("mkdtemp %s: %s", h->dir, strerror(errno));
	snprintf(h->listen, sizeof(h->listen), "unix:%s/t.sock", h->dir);

	/* the scripted upstream, on a free port of 127.0.0.1 */
	uv_tcp_init(&h->loop, &h->peer_listener);
	h->peer_listener.data = h;
	uv_ip4_addr("127.0.0.1", 0, &addr);
	if (uv_tcp_bind(&h->peer_listener, (const struct sockaddr *)&addr, 0) < 0 ||
	    uv_listen((uv_stream_t *)&h->peer_listener, 64, on_peer_connection) < 0 ||
	    uv_tcp_getsockname(&h->peer_listener, (struct sockaddr *)&bound, &len) < 0)
		H_FAIL("cannot listen on 127.0.0.1");
	snprintf(h->endpoint, sizeof(h->endpoint), "http://127.0.0.1:%d",
		 ntohs(((struct sockaddr_in *)&bound)->sin_port));
	h->endpoints[0] = h->endpoint;

	h->tenant.name = "t";
	h->tenant.prefix = "/t/";
	h->tenant.listen = h->listen;
	h->tenant.state_dir = h->dir;
	h->tenant.runtime_dir = h->dir;
	h->tenant.source_file = "harness";
	h->tenant.core.endpoints = h->endpoints;
	h->tenant.core.n_endpoints = 1;
	h->tenant.options_json = options_json ? options_json : "{}";
	h->tenant.policy_json = "{}";
	h->tenant.listen_fd = -1;

	h->host.abi_version = EP_PLUGIN_ABI_VERSION;
	h->host.loop = &h->loop;
	h->host.tenant = &h->tenant;
	h->host.log = host_log;
	h->host.ready = host_ready;
	h->host.health = host_health;
	h->host.fail = host_fail;
	h->host.stopped = host_stopped;
	h->host.spawn = host_spawn;
	h->host.tls_material = host_tls_material;
	h->host.options_parse = host_options_parse;

	h->plugin = &EP_PLUGIN_SYMBOL;
	if (h->plugin->init(&h->host, &h->native, &error) < 0)
		H_FAIL("init: %s", error);
	if (H_OPS(h)->start(h->native, &error) < 0)
		H_FAIL("start: %s", error);
	if (h_run_until(h, &h->ready_calls, 5000) < 0)
		H_FAIL("the native never became ready (fail: %s)", h->fail_reason);
}

static void walk_open(uv_handle_t *handle, void *arg)
{
	if (!uv_is_closing(handle)) {
		fprintf(stderr, "harness: a handle of type %s is still open\n",
			uv_handle_type_name(handle->type));
		*(int *)arg = 1;
	}
}

void h_fini(struct harness *h, int graceful)
{
	int open = 0;
	char path[160];

	for (struct h_conn *c = h->conns; c != NULL; c = c->next)
		if (!c->server)
			conn_close(c);
	H_OPS(h)->stop(h->native, graceful);
	if (h_run_until(h, &h->stopped, 10000) < 0)
		H_FAIL("the native did not report stopped()");
	h->plugin->fini(h->native);
	h->native = NULL;
	for (struct h_conn *c = h->conns; c != NULL; c = c->next)
		conn_close(c);
	uv_close((uv_handle_t *)&h->peer_listener, NULL);
	uv_walk(&h->loop, walk_open, &open); /* every handle must be closing by now */
	if (open)
		H_FAIL("the loop still has open handles after the native stopped");
	uv_run(&h->loop, UV_RUN_DEFAULT); /* their close callbacks */
	if (uv_loop_close(&h->loop) != 0)
		H_FAIL("the loop still has handles after the native stopped");
	while (h->conns != NULL) {
		struct h_conn *c = h->conns;

		h->conns = c->next;
		free(c);
	}
	while (h->streams != NULL) {
		struct h_stream *st = h->streams;

		h->streams = st->next;
		free(st->in.data);
		free(st->out.data);
		free(st);
	}
	free(h->options_error);
	snprintf(path, sizeof(path), "%s/t.sock", h->dir);
	unlink(path);
	rmdir(h->dir);
}

/* ---- clients ------------------------------------------------------------------------------------ */

static void on_connect(uv_connect_t *req, int status)
{
	struct h_conn *c = req->data;

	c->connected = status < 0 ? -1 : 1;
}

static int connect_done(struct harness *h, void *arg)
{
	(void)h;
	return ((struct h_conn *)arg)->connected != 0;
}

struct h_conn *h_connect(struct harness *h)
{
	struct h_conn *c = conn_new(h, 0);

	uv_pipe_init(&h->loop, &c->u.pipe, 0);
	c->u.handle.data = c;
	c->connect_req.data = c;
	uv_pipe_connect(&c->connect_req, &c->u.pipe, h->listen + 5, on_connect);
	if (h_run_until_fn(h, connect_done, c, 5000) < 0 || c->connected != 1)
		H_FAIL("cannot connect to %s", h->listen);
	c->session = session_new(c);
	uv_read_start(&c->u.stream, on_alloc, on_read);
	conn_flush(c);
	return c;
}

void h_conn_close(struct h_conn *c)
{
	conn_close(c);
}

struct h_stream *h_call(struct h_conn *c, const char *path, const uint8_t *msg, size_t len,
			int end)
{
	struct h_stream *st = stream_new(c);
	nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_out };
	nghttp2_nv nv[] = {
#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }
		NV(":method", "POST"),     NV(":scheme", "http"),
		NV(":path", path),         NV(":authority", "t"),
		NV("content-type", "application/grpc"), NV("te", "trailers"),
#undef NV
	};

	snprintf(st->path, sizeof(st->path), "%s", path);
	if (msg != NULL)
		buf_frame(&st->out, msg, len);
	st->out_end = end;
	st->id = nghttp2_submit_request(c->session, NULL, nv, sizeof(nv) / sizeof(nv[0]), &prd, st);
	if (st->id < 0)
		H_FAIL("submit_request: %s", nghttp2_strerror(st->id));
	conn_flush(c);
	return st;
}

void h_send(struct h_stream *st, const uint8_t *msg, size_t len, int end)
{
	if (st->conn == NULL)
		return;
	if (msg != NULL)
		buf_frame(&st->out, msg, len);
	if (end)
		st->out_end = 1;
	resume(st);
	conn_flush(st->conn);
}

void h_send_raw(struct h_stream *st, const uint8_t *data, size_t len, int end)
{
	if (st->conn == NULL)
		return;
	buf_append(&st->out, data, len);
	if (end)
		st->out_end = 1;
	resume(st);
	conn_flush(st->conn);
}

void h_cancel(struct h_stream *st)
{
	h_reset(st, NGHTTP2_CANCEL);
}

int h_next_message(struct h_stream *st, const uint8_t **msg, size_t *len)
{
	size_t avail = st->in.len - st->in.off;
	const uint8_t *p;
	size_t n;

	if (avail < 5)
		return 0;
	p = st->in.data + st->in.off;
	n = (size_t)p[1] << 24 | (size_t)p[2] << 16 | (size_t)p[3] << 8 | p[4];
	if (avail - 5 < n)
		return 0;
	*msg = p + 5;
	*len = n;
	return 1;
}

void h_drop_message(struct h_stream *st, size_t len)
{
	st->in.off += 5 + len;
	if (st->in.off == st->in.len)
		st->in.off = st->in.len = 0;
}

/* ---- the peer's answers --------------------------------------------------------------------------- */

void h_reply(struct h_stream *st, const uint8_t *msg, size_t len)
{
	nghttp2_data_provider prd = { .source.ptr = st, .read_callback = read_out };
	nghttp2_nv nv[] = {
		{ (uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE },
		{ (uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
		  NGHTTP2_NV_FLAG_NONE },
	};

	if (st->conn == NULL || st->closed)
		return;
	buf_frame(&st->out, msg, len);
	if (!st->submitted) {
		st->submitted = 1;
		nghttp2_submit_response(st->conn->session, st->id, nv, 2, &prd);
	} else {
		resume(st);
	}
	conn_flush(st->conn);
}

void h_finish(struct h_stream *st, int grpc_status, const char *message)
{
	if (st->conn == NULL || st->closed)
		return;
	st->finish_status = grpc_status;
	snprintf(st->finish_message, sizeof(st->finish_message), "%s", message ? message : "");
	if (!st->submitted) {
		/* Trailers-Only */
		char status[16];
		nghttp2_nv nv[] = {
			{ (uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE },
			{ (uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16,
			  NGHTTP2_NV_FLAG_NONE },
			{ (uint8_t *)"grpc-status", (uint8_t *)status, 11, 0, NGHTTP2_NV_FLAG_NONE },
			{ (uint8_t *)"grpc-message", (uint8_t *)st->finish_message, 12,
			  strlen(st->finish_message), NGHTTP2_NV_FLAG_NONE },
		};

		snprintf(status, sizeof(status), "%d", grpc_status);
		nv[2].valuelen = strlen(status);
		st->submitted = 1;
		nghttp2_submit_response(st->conn->session, st->id, nv, st->finish_message[0] ? 4 : 3,
					NULL);
	} else {
		st->out_end = 1;
		resume(st);
	}
	conn_flush(st->conn);
}

void h_reset(struct h_stream *st, uint32_t code)
{
	if (st->conn == NULL || st->closed)
		return;
	nghttp2_submit_rst_stream(st->conn->session, NGHTTP2_FLAG_NONE, st->id, code);
	conn_flush(st->conn);
}

void h_drop_connection(struct h_stream *st)
{
	if (st->conn != NULL)
		conn_close(st->conn);
}

/* ---- the native's state ------------------------------------------------------------------------ */

size_t h_active_streams(struct harness *h)
{
	return (size_t)((struct native *)h->native)->counters.active_streams;
}

size_t h_upstream_calls(struct harness *h)
{
	struct native *n = h->native;
	size_t calls = 0;

	for (unsigned i = 0; i < n->n_upstreams; i++)
		calls += n->ups[i].n_calls;
	return calls;
}

size_t h_client_conns(struct harness *h)
{
	size_t k = 0;

	for (struct down_conn *dc = ((struct native *)h->native)->conns; dc != NULL; dc = dc->next)
		k++;
	return k;
}

/* ---- protobuf ---------------------------------------------------------------------------------- */

size_t h_pb_bytes(uint8_t *d, unsigned field, const void *data, size_t len)
{
	return (size_t)(ep_pb_put_bytes(d, field, data, len) - d);
}

size_t h_pb_uint(uint8_t *d, unsigned field, uint64_t v)
{
	return (size_t)(ep_pb_put_uint(d, field, v) - d);
}

int h_pb_find(const uint8_t *msg, size_t len, unsigned field, const uint8_t **data_r,
	      size_t *len_r)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;

	while (p < end) {
		if (ep_pb_next_field(&p, end, &f) < 0)
			return 0;
		if (f.number == field && f.wire == 2) {
			*data_r = f.data;
			*len_r = f.len;
			return 1;
		}
	}
	return 0;
}
