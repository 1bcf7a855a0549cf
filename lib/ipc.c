#include "build-config.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ipc.h"
#include "util.h"

void ep_frame_reader_init(struct ep_frame_reader *r)
{
	memset(r, 0, sizeof(*r));
}

void ep_frame_reader_free(struct ep_frame_reader *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

static uint32_t get_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Validate a header; returns the payload length or -EPROTO. */
static int64_t check_header(const uint8_t *h, const char **error_r)
{
	uint32_t len;

	if (h[0] != EP_IPC_MAGIC0 || h[1] != EP_IPC_MAGIC1) {
		*error_r = "bad frame magic (not an etcdproxy peer, or the stream lost sync)";
		return -EPROTO;
	}
	if (h[2] != EP_IPC_VERSION) {
		*error_r = "unsupported protocol version (supervisor and worker from different builds?)";
		return -EPROTO;
	}
	len = get_be32(h + 4);
	if (len > EP_IPC_MAX_PAYLOAD) {
		*error_r = "frame larger than the 1 MiB limit";
		return -EPROTO;
	}
	return len;
}

static cJSON *parse_payload(const uint8_t *p, size_t len, const char **error_r)
{
	cJSON *payload = cJSON_ParseWithLength((const char *)p, len);

	if (payload == NULL || !cJSON_IsObject(payload)) {
		cJSON_Delete(payload);
		*error_r = "frame payload is not a JSON object";
		return NULL;
	}
	return payload;
}

int ep_frame_reader_feed(struct ep_frame_reader *r, const void *data, size_t len,
			 ep_frame_cb *cb, void *ctx, const char **error_r)
{
	size_t off = 0;

	if (r->len + len > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;

		while (cap < r->len + len)
			cap *= 2;
		r->buf = ep_realloc(r->buf, cap);
		r->cap = cap;
	}
	memcpy(r->buf + r->len, data, len);
	r->len += len;

	while (r->len - off >= EP_IPC_HEADER_SIZE) {
		const uint8_t *h = r->buf + off;
		int64_t plen = check_header(h, error_r);
		cJSON *payload;
		int ret;

		if (plen < 0)
			return (int)plen;
		if (r->len - off < EP_IPC_HEADER_SIZE + (size_t)plen)
			break;
		payload = parse_payload(h + EP_IPC_HEADER_SIZE, (size_t)plen, error_r);
		if (payload == NULL)
			return -EPROTO;
		off += EP_IPC_HEADER_SIZE + (size_t)plen;
		ret = cb(ctx, h[3], payload);
		cJSON_Delete(payload);
		if (ret != 0)
			return ret; /* the reader may be gone */
	}
	memmove(r->buf, r->buf + off, r->len - off);
	r->len -= off;
	/* do not keep a large buffer around after one large frame */
	if (r->cap > 65536 && r->len < 4096) {
		r->cap = 4096;
		r->buf = ep_realloc(r->buf, r->cap);
	}
	return 0;
}

int ep_frame_encode(uint8_t type, const cJSON *payload, uint8_t **buf_r, size_t *len_r)
{
	char *text = payload != NULL ? cJSON_PrintUnformatted(payload) : NULL;
	const char *body = text != NULL ? text : "{}";
	size_t blen = strlen(body);
	uint8_t *buf;

	if (payload != NULL && text == NULL)
		abort(); /* cJSON only fails on out-of-memory */
	if (blen > EP_IPC_MAX_PAYLOAD) {
		free(text);
		return -EMSGSIZE;
	}
	buf = ep_malloc0(EP_IPC_HEADER_SIZE + blen);
	buf[0] = EP_IPC_MAGIC0;
	buf[1] = EP_IPC_MAGIC1;
	buf[2] = EP_IPC_VERSION;
	buf[3] = type;
	put_be32(buf + 4, (uint32_t)blen);
	memcpy(buf + EP_IPC_HEADER_SIZE, body, blen);
	free(text);
	*buf_r = buf;
	*len_r = EP_IPC_HEADER_SIZE + blen;
	return 0;
}

struct send_req {
	uv_write_t req;
	uint8_t *buf;
};

static void send_done(uv_write_t *req, int status)
{
	struct send_req *s = (struct send_req *)req;

	free(s->buf);
	free(s);
}

int ep_ipc_send(uv_stream_t *stream, uint8_t type, const cJSON *payload)
{
	struct send_req *s;
	uv_buf_t b;
	size_t len;
	int r;

	s = ep_malloc0(sizeof(*s));
	r = ep_frame_encode(type, payload, &s->buf, &len);
	if (r < 0) {
		free(s);
		return UV_EMSGSIZE;
	}
	b = uv_buf_init((char *)s->buf, (unsigned)len);
	r = uv_write(&s->req, stream, &b, 1, send_done);
	if (r < 0) {
		free(s->buf);
		free(s);
	}
	return r;
}

int ep_ipc_write_frame_fd(int fd, uint8_t type, const cJSON *payload)
{
	uint8_t *buf;
	size_t len, off = 0;
	int r = ep_frame_encode(type, payload, &buf, &len);

	if (r < 0)
		return r;
	while (off < len) {
		ssize_t n = write(fd, buf + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		off += (size_t)n;
	}
	free(buf);
	return r;
}

struct one_frame {
	uint8_t type;
	cJSON *payload;
};

static int keep_one(void *ctx, uint8_t type, cJSON *payload)
{
	struct one_frame *f = ctx;

	f->type = type;
	f->payload = cJSON_Duplicate(payload, 1);
	return 1;
}

int ep_ipc_read_frame_fd(int fd, int timeout_ms, uint8_t *type_r, cJSON **payload_r,
			 const char **error_r)
{
	struct ep_frame_reader r;
	struct one_frame f = { 0 };
	uint64_t deadline = ep_now_ms() + (uint64_t)timeout_ms;
	uint8_t buf[8192];
	int ret = 0;

	ep_frame_reader_init(&r);
	while (f.payload == NULL) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint64_t now = ep_now_ms();
		ssize_t n;

		if (now >= deadline) {
			*error_r = "timed out waiting for an answer";
			ret = -ETIMEDOUT;
			break;
		}
		n = poll(&pfd, 1, (int)(deadline - now));
		if (n < 0 && errno == EINTR)
			continue;
		if (n == 0)
			continue;
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			*error_r = "read error";
			ret = -errno;
			break;
		}
		if (n == 0) {
			*error_r = "connection closed before a complete answer";
			ret = -ECONNRESET;
			break;
		}
		ret = ep_frame_reader_feed(&r, buf, (size_t)n, keep_one, &f, error_r);
		if (ret < 0)
			break;
		ret = 0;
	}
	ep_frame_reader_free(&r);
	if (ret < 0)
		return ret;
	*type_r = f.type;
	*payload_r = f.payload;
	return 0;
}

const char *ep_msg_type_name(uint8_t type)
{
	switch (type) {
	case EP_MSG_HELLO: return "HELLO";
	case EP_MSG_READY: return "READY";
	case EP_MSG_HEALTH: return "HEALTH";
	case EP_MSG_STATUS: return "STATUS";
	case EP_MSG_FATAL: return "FATAL";
	case EP_MSG_CERTS_REPLY: return "CERTS_REPLY";
	case EP_MSG_CONFIGURE: return "CONFIGURE";
	case EP_MSG_STOP: return "STOP";
	case EP_MSG_STATUS_REQ: return "STATUS_REQ";
	case EP_MSG_CERTS_REQ: return "CERTS_REQ";
	case EP_MSG_POLICY: return "POLICY";
	case EP_MSG_CTL_REQUEST: return "CTL_REQUEST";
	case EP_MSG_CTL_REPLY: return "CTL_REPLY";
	default: return "unknown";
	}
}

void ep_exit_describe(int64_t exit_status, int term_signal, char *buf, size_t size)
{
	const char *what;

	if (term_signal != 0) {
		snprintf(buf, size, "killed by signal %d (%s)", term_signal, strsignal(term_signal));
		return;
	}
	switch (exit_status) {
	case EP_EXIT_OK: what = "stopped"; break;
	case EP_EXIT_USAGE: what = "wrong arguments"; break;
	case EP_EXIT_UNAVAILABLE: what = "backend unavailable"; break;
	case EP_EXIT_SOFTWARE: what = "internal error"; break;
	case EP_EXIT_PROTOCOL: what = "IPC protocol error"; break;
	case EP_EXIT_CONFIG: what = "fatal configuration error"; break;
	case 127: what = "worker binary could not be executed"; break;
	default: what = "unexpected exit"; break;
	}
	snprintf(buf, size, "exited with code %lld (%s)", (long long)exit_status, what);
}
