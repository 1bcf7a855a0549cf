/*
 * libFuzzer target: the native backend's HTTP/2 server path.  Each input is
 * what one client connection sends, byte for byte (the preface included, so
 * that the fuzzer can break it too).  The backend runs as in a worker
 * (tests/native/harness.h) against a scripted upstream that echoes every
 * request message back as the response, so that rewritten requests come back
 * through the response path as well.
 *
 * Checked beyond "no crash, no sanitizer report": once the client has gone,
 * the backend holds no connection, no call and no stream on either side.
 * Leaks are LeakSanitizer's (libFuzzer's -detect_leaks, on by default).
 *
 * With H2_SEEDS=DIR in the environment, it first writes seed inputs there:
 * well-formed connections made by nghttp2's client (see run-fuzz.sh).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "harness.h"
#include "native.h"

static struct harness H;
static int started;

/* The upstream: every request message comes back as the response, then OK. */
static void echo(struct harness *h, struct h_stream *st, const uint8_t *msg, size_t len)
{
	(void)h;
	if (msg == NULL)
		h_finish(st, 0, NULL);
	else
		h_reply(st, msg, len);
}

static void start(void)
{
	h_init(&H, "{\"idle_timeout\": \"0s\", \"max_message\": 65536}");
	H.script = echo;
	started = 1;
}

/* ---- seeds ----------------------------------------------------------------------------------- */

struct seed {
	uint8_t *data;
	size_t len, cap;
};

static void seed_add(struct seed *s, const uint8_t *p, size_t n)
{
	if (s->len + n > s->cap) {
		s->cap = (s->len + n) * 2;
		s->data = realloc(s->data, s->cap);
		if (s->data == NULL)
			abort();
	}
	memcpy(s->data + s->len, p, n);
	s->len += n;
}

struct body {
	uint8_t data[512];
	size_t len, off;
};

static ssize_t seed_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
			 uint32_t *flags, nghttp2_data_source *src, void *ud)
{
	struct body *b = src->ptr;
	size_t n = b->len - b->off;

	(void)s;
	(void)id;
	(void)ud;
	if (n > length)
		n = length;
	memcpy(buf, b->data + b->off, n);
	b->off += n;
	if (b->off == b->len)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

static size_t grpc_frame(uint8_t *d, const uint8_t *msg, size_t len)
{
	d[0] = 0;
	d[1] = (uint8_t)(len >> 24);
	d[2] = (uint8_t)(len >> 16);
	d[3] = (uint8_t)(len >> 8);
	d[4] = (uint8_t)len;
	memcpy(d + 5, msg, len);
	return len + 5;
}

/* One request on the seed's session: path and one message, the request ended. */
static void seed_call(nghttp2_session *s, struct body *b, const char *path, const uint8_t *msg,
		      size_t len)
{
	nghttp2_data_provider prd = { .source.ptr = b, .read_callback = seed_read };
	nghttp2_nv nv[] = {
#define NV(n, v) { (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NONE }
		NV(":method", "POST"), NV(":scheme", "http"), NV(":path", path),
		NV(":authority", "t"), NV("content-type", "application/grpc"), NV("te", "trailers"),
		NV("grpc-timeout", "5S"),
#undef NV
	};

	b->len = grpc_frame(b->data, msg, len);
	b->off = 0;
	nghttp2_submit_request(s, NULL, nv, sizeof(nv) / sizeof(nv[0]), &prd, NULL);
}

static void write_seeds(const char *dir)
{
	static const struct {
		const char *name, *path;
		const char *msg; /* protobuf, as bytes */
		size_t len;
	} calls[] = {
		{ "range", "/etcdserverpb.KV/Range", "\x0a\x03" "foo", 5 },
		{ "range-prefix", "/etcdserverpb.KV/Range", "\x0a\x03" "foo\x12\x03" "fop", 10 },
		{ "range-all", "/etcdserverpb.KV/Range", "\x0a\x01\x00\x12\x01\x00", 6 },
		{ "put", "/etcdserverpb.KV/Put", "\x0a\x03" "foo\x12\x03" "bar", 10 },
		{ "put-lease", "/etcdserverpb.KV/Put", "\x0a\x03" "foo\x12\x01" "b\x18\x07", 10 },
		{ "delete", "/etcdserverpb.KV/DeleteRange", "\x0a\x03" "foo\x12\x03" "fop\x18\x01", 12 },
		{ "txn", "/etcdserverpb.KV/Txn",
		  "\x0a\x0b\x08\x01\x10\x02\x1a\x03" "foo\x30\x00\x12\x0f\x12\x0d\x0a\x03" "foo\x12\x06"
		  "txnval\x1a\x07\x0a\x05\x0a\x03" "foo", 39 },
		{ "compact", "/etcdserverpb.KV/Compact", "\x08\x64", 2 },
		{ "watch", "/etcdserverpb.Watch/Watch", "\x0a\x05\x0a\x03" "foo", 7 },
		{ "watch-cancel", "/etcdserverpb.Watch/Watch", "\x12\x02\x08\x01", 4 },
		{ "grant", "/etcdserverpb.Lease/LeaseGrant", "\x08\x3c", 2 },
		{ "revoke", "/etcdserverpb.Lease/LeaseRevoke", "\x08\x07", 2 },
		{ "keepalive", "/etcdserverpb.Lease/LeaseKeepAlive", "\x08\x07", 2 },
		{ "ttl", "/etcdserverpb.Lease/LeaseTimeToLive", "\x08\x07\x10\x01", 4 },
		{ "leases", "/etcdserverpb.Lease/LeaseLeases", "", 0 },
		{ "status", "/etcdserverpb.Maintenance/Status", "", 0 },
		{ "members", "/etcdserverpb.Cluster/MemberList", "", 0 },
		{ "unknown", "/etcdserverpb.Nope/Nothing", "", 0 },
	};
	nghttp2_session_callbacks *cb;
	struct body bodies[sizeof(calls) / sizeof(calls[0])];

	nghttp2_session_callbacks_new(&cb);
	/* each call alone, then all of them on one connection */
	for (size_t i = 0; i <= sizeof(calls) / sizeof(calls[0]); i++) {
		struct seed seed = { 0 };
		nghttp2_session *s;
		const uint8_t *data;
		ssize_t n;
		char path[4096];
		FILE *f;
		uint8_t ping[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };

		nghttp2_session_client_new(&s, cb, NULL);
		seed_add(&seed, (const uint8_t *)NGHTTP2_CLIENT_MAGIC, NGHTTP2_CLIENT_MAGIC_LEN);
		nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, NULL, 0);
		if (i < sizeof(calls) / sizeof(calls[0])) {
			seed_call(s, &bodies[i], calls[i].path, (const uint8_t *)calls[i].msg,
				  calls[i].len);
		} else {
			for (size_t k = 0; k < i; k++)
				seed_call(s, &bodies[k], calls[k].path,
					  (const uint8_t *)calls[k].msg, calls[k].len);
			nghttp2_submit_ping(s, NGHTTP2_FLAG_NONE, ping);
			nghttp2_submit_window_update(s, NGHTTP2_FLAG_NONE, 0, 1 << 20);
		}
		/* nghttp2 sends the preface itself: skip its copy */
		n = nghttp2_session_mem_send(s, &data);
		if (n >= (ssize_t)NGHTTP2_CLIENT_MAGIC_LEN)
			seed_add(&seed, data + NGHTTP2_CLIENT_MAGIC_LEN,
				 (size_t)n - NGHTTP2_CLIENT_MAGIC_LEN);
		while ((n = nghttp2_session_mem_send(s, &data)) > 0)
			seed_add(&seed, data, (size_t)n);
		nghttp2_session_del(s);
		snprintf(path, sizeof(path), "%s/%s", dir,
			 i < sizeof(calls) / sizeof(calls[0]) ? calls[i].name : "all");
		f = fopen(path, "wb");
		if (f == NULL || fwrite(seed.data, 1, seed.len, f) != seed.len || fclose(f) != 0) {
			fprintf(stderr, "fuzz-h2server: cannot write %s: %s\n", path, strerror(errno));
			exit(2);
		}
		free(seed.data);
	}
	nghttp2_session_callbacks_del(cb);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	const char *dir = getenv("H2_SEEDS");

	(void)argc;
	(void)argv;
	if (dir != NULL)
		write_seeds(dir);
	return 0;
}

/* ---- one input ----------------------------------------------------------------------------------- */

static int client_connect(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		abort();
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", H.listen + 5);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		perror("fuzz-h2server: connect");
		abort();
	}
	return fd;
}

/* What the proxy sent back is read and dropped; 1 when something came, -1 at its close. */
static int client_drain(int fd)
{
	uint8_t buf[65536];
	int got = 0;

	for (;;) {
		ssize_t n = recv(fd, buf, sizeof(buf), 0);

		if (n > 0) {
			got = 1;
			continue;
		}
		if (n == 0)
			return -1;
		return errno == EAGAIN || errno == EWOULDBLOCK ? got : -1;
	}
}

static int all_gone(struct harness *h, void *arg)
{
	struct native *n = h->native;

	(void)arg;
	return h_client_conns(h) == 0 && n->live_calls == 0 && h_active_streams(h) == 0 &&
	       h_upstream_calls(h) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int fd, quiet = 0, closed = 0;
	size_t off = 0;

	if (!started)
		start();
	fd = client_connect();
	/* send it all, letting the proxy read (and answer) as the socket fills */
	while (off < size && !closed) {
		ssize_t n = send(fd, data + off, size - off, MSG_NOSIGNAL);

		if (n > 0)
			off += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
			break; /* the proxy closed it */
		uv_run(&H.loop, UV_RUN_NOWAIT);
		closed = client_drain(fd) < 0;
	}
	/* let the calls run: the upstream answers, the proxy forwards, until all is quiet */
	for (int i = 0; i < 2000 && quiet < 20 && !closed; i++) {
		uv_run(&H.loop, UV_RUN_NOWAIT);
		switch (client_drain(fd)) {
		case 1:
			quiet = 0;
			break;
		case 0:
			quiet++;
			break;
		default:
			closed = 1;
		}
	}
	close(fd);
	/* the client is gone: so must be everything it started, on both sides */
	if (h_run_until_fn(&H, all_gone, NULL, 5000) < 0) {
		struct native *n = H.native;

		fprintf(stderr,
			"fuzz-h2server: after the client left: %zu connection(s), %zu call(s), "
			"%zu client stream(s), %zu upstream call(s) remain\n",
			h_client_conns(&H), n->live_calls, h_active_streams(&H),
			h_upstream_calls(&H));
		abort();
	}
	if (H.failed) {
		fprintf(stderr, "fuzz-h2server: the backend failed: %s\n", H.fail_reason);
		abort();
	}
	return 0;
}
