#include "build-config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "ipc.h"
#include "messages.h"
#include "util.h"

#define UNUSED __attribute__((unused))

/* ---- helpers ----------------------------------------------------------------- */

/* What a reader delivered: up to 16 frames, payloads as unformatted text. */
struct collected {
	size_t n;
	uint8_t types[16];
	char *texts[16];
	int stop_at;  /* return stop_value from the stop_at-th frame (1-based); 0: never */
	int stop_value;
};

static int collect(void *ctx, uint8_t type, cJSON *payload)
{
	struct collected *c = ctx;

	assert_true(c->n < 16);
	assert_non_null(payload);
	assert_true(cJSON_IsObject(payload));
	c->types[c->n] = type;
	c->texts[c->n] = cJSON_PrintUnformatted(payload);
	c->n++;
	if (c->stop_at != 0 && (int)c->n == c->stop_at)
		return c->stop_value;
	return 0;
}

static void collected_free(struct collected *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->texts[i]);
	memset(c, 0, sizeof(*c));
}

static cJSON *parse(const char *text)
{
	cJSON *j = cJSON_Parse(text);

	if (j == NULL)
		fail_msg("test JSON does not parse: %s", text);
	return j;
}

/* Encode one frame from JSON text. */
static uint8_t *encode(uint8_t type, const char *json, size_t *len_r)
{
	cJSON *payload = json != NULL ? parse(json) : NULL;
	uint8_t *buf = NULL;

	assert_int_equal(ep_frame_encode(type, payload, &buf, len_r), 0);
	assert_non_null(buf);
	cJSON_Delete(payload);
	return buf;
}

/* A frame with a hand-made header and raw payload bytes. */
static uint8_t *raw_frame(uint8_t m0, uint8_t m1, uint8_t version, uint8_t type, uint32_t len_field,
			  const void *payload, size_t plen, size_t *len_r)
{
	uint8_t *buf = ep_malloc0(EP_IPC_HEADER_SIZE + plen);

	buf[0] = m0;
	buf[1] = m1;
	buf[2] = version;
	buf[3] = type;
	buf[4] = (uint8_t)(len_field >> 24);
	buf[5] = (uint8_t)(len_field >> 16);
	buf[6] = (uint8_t)(len_field >> 8);
	buf[7] = (uint8_t)len_field;
	if (plen > 0)
		memcpy(buf + EP_IPC_HEADER_SIZE, payload, plen);
	*len_r = EP_IPC_HEADER_SIZE + plen;
	return buf;
}

static void expect_proto_error(const uint8_t *data, size_t len, const char *reason)
{
	struct ep_frame_reader r;
	struct collected c = { 0 };
	const char *error = NULL;

	ep_frame_reader_init(&r);
	assert_int_equal(ep_frame_reader_feed(&r, data, len, collect, &c, &error), -EPROTO);
	assert_int_equal(c.n, 0);
	assert_non_null(error);
	assert_string_equal(error, reason);
	ep_frame_reader_free(&r);
}

/* ---- encoding and decoding -------------------------------------------------------- */

static void test_encode_layout(void **state UNUSED)
{
	const char *text = "{\"pid\":42,\"version\":\"0.1.0\",\"abi\":1}";
	size_t len;
	uint8_t *buf = encode(EP_MSG_HELLO, text, &len);
	size_t tlen = strlen(text);

	assert_int_equal(len, EP_IPC_HEADER_SIZE + tlen);
	assert_int_equal(buf[0], 'E');
	assert_int_equal(buf[1], 'P');
	assert_int_equal(buf[2], EP_IPC_VERSION);
	assert_int_equal(buf[3], EP_MSG_HELLO);
	/* big-endian length */
	assert_int_equal(buf[4], 0);
	assert_int_equal(buf[5], 0);
	assert_int_equal(buf[6], (tlen >> 8) & 0xff);
	assert_int_equal(buf[7], tlen & 0xff);
	assert_memory_equal(buf + EP_IPC_HEADER_SIZE, text, tlen);
	free(buf);

	/* no payload: an empty object */
	buf = encode(EP_MSG_STATUS_REQ, NULL, &len);
	assert_int_equal(len, EP_IPC_HEADER_SIZE + 2);
	assert_int_equal(buf[3], EP_MSG_STATUS_REQ);
	assert_int_equal(buf[7], 2);
	assert_memory_equal(buf + EP_IPC_HEADER_SIZE, "{}", 2);
	free(buf);
}

static void test_round_trip(void **state UNUSED)
{
	static const struct {
		uint8_t type;
		const char *json;
	} frames[] = {
		{ EP_MSG_HELLO, "{\"pid\":42,\"version\":\"0.1.0\",\"abi\":1}" },
		{ EP_MSG_READY, "{\"endpoint\":\"127.0.0.1:2379\"}" },
		{ EP_MSG_HEALTH,
		  "{\"healthy\":false,\"reason\":\"core etcd: \\u00e9 \\\"down\\\"\"}" },
		{ EP_MSG_STOP, "{\"graceful\":true}" },
		{ EP_MSG_CTL_REPLY,
		  "{\"ok\":true,\"tenants\":[{\"name\":\"a\"},{\"name\":\"b\"}]}" },
		{ 255, "{}" },
	};
	struct ep_frame_reader r;
	const char *error = NULL;

	ep_frame_reader_init(&r);
	for (size_t i = 0; i < sizeof(frames) / sizeof(frames[0]); i++) {
		struct collected c = { 0 };
		cJSON *expected = parse(frames[i].json);
		char *expected_text = cJSON_PrintUnformatted(expected);
		size_t len;
		uint8_t *buf = encode(frames[i].type, frames[i].json, &len);

		assert_int_equal(ep_frame_reader_feed(&r, buf, len, collect, &c, &error), 0);
		assert_int_equal(c.n, 1);
		assert_int_equal(c.types[0], frames[i].type);
		assert_string_equal(c.texts[0], expected_text);
		assert_int_equal(r.len, 0);
		free(expected_text);
		cJSON_Delete(expected);
		collected_free(&c);
		free(buf);
	}
	assert_null(error);
	ep_frame_reader_free(&r);
	assert_null(r.buf);
	assert_int_equal(r.len, 0);
}

static void test_one_byte_at_a_time(void **state UNUSED)
{
	size_t l1, l2, l3;
	uint8_t *f1 = encode(EP_MSG_HELLO, "{\"pid\":1}", &l1);
	uint8_t *f2 = encode(EP_MSG_READY, "{\"endpoint\":\"[::1]:2379\"}", &l2);
	uint8_t *f3 = encode(EP_MSG_STOP, NULL, &l3);
	uint8_t *all = ep_malloc0(l1 + l2 + l3);
	struct ep_frame_reader r;
	struct collected c = { 0 };
	const char *error = NULL;

	memcpy(all, f1, l1);
	memcpy(all + l1, f2, l2);
	memcpy(all + l1 + l2, f3, l3);
	ep_frame_reader_init(&r);
	for (size_t i = 0; i < l1 + l2 + l3; i++) {
		assert_int_equal(ep_frame_reader_feed(&r, all + i, 1, collect, &c, &error), 0);
		/* a frame is delivered with its last byte, not before */
		if (i + 1 < l1)
			assert_int_equal(c.n, 0);
		else if (i + 1 < l1 + l2)
			assert_int_equal(c.n, 1);
		else if (i + 1 < l1 + l2 + l3)
			assert_int_equal(c.n, 2);
		else
			assert_int_equal(c.n, 3);
	}
	assert_null(error);
	assert_int_equal(r.len, 0);
	assert_int_equal(c.types[0], EP_MSG_HELLO);
	assert_string_equal(c.texts[0], "{\"pid\":1}");
	assert_int_equal(c.types[1], EP_MSG_READY);
	assert_string_equal(c.texts[1], "{\"endpoint\":\"[::1]:2379\"}");
	assert_int_equal(c.types[2], EP_MSG_STOP);
	assert_string_equal(c.texts[2], "{}");
	collected_free(&c);
	ep_frame_reader_free(&r);
	free(all);
	free(f1);
	free(f2);
	free(f3);
}

static void test_several_frames_one_feed(void **state UNUSED)
{
	size_t l1, l2;
	uint8_t *f1 = encode(EP_MSG_HEALTH, "{\"healthy\":true}", &l1);
	uint8_t *f2 = encode(EP_MSG_FATAL, "{\"reason\":\"x\",\"config\":true}", &l2);
	uint8_t *all = ep_malloc0(2 * l1 + l2 + 5);
	struct ep_frame_reader r;
	struct collected c = { 0 };
	const char *error = NULL;

	/* two whole frames, a third one and the first 5 bytes of a fourth */
	memcpy(all, f1, l1);
	memcpy(all + l1, f2, l2);
	memcpy(all + l1 + l2, f1, l1);
	memcpy(all + 2 * l1 + l2, f2, 5);
	ep_frame_reader_init(&r);
	assert_int_equal(ep_frame_reader_feed(&r, all, 2 * l1 + l2 + 5, collect, &c, &error), 0);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.types[0], EP_MSG_HEALTH);
	assert_int_equal(c.types[1], EP_MSG_FATAL);
	assert_int_equal(c.types[2], EP_MSG_HEALTH);
	assert_string_equal(c.texts[1], "{\"reason\":\"x\",\"config\":true}");
	/* the partial header stays buffered */
	assert_int_equal(r.len, 5);
	assert_int_equal(ep_frame_reader_feed(&r, f2 + 5, l2 - 5, collect, &c, &error), 0);
	assert_int_equal(c.n, 4);
	assert_int_equal(c.types[3], EP_MSG_FATAL);
	assert_int_equal(r.len, 0);
	assert_null(error);
	collected_free(&c);
	ep_frame_reader_free(&r);
	free(all);
	free(f1);
	free(f2);
}

#define CONFIGURE_TEXT "{\"generation\":7,\"tenant\":{\"name\":\"a\"}}"

static void test_header_split(void **state UNUSED)
{
	static const size_t splits[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
	size_t len;
	uint8_t *f = encode(EP_MSG_CONFIGURE, CONFIGURE_TEXT, &len);

	for (size_t i = 0; i < sizeof(splits) / sizeof(splits[0]); i++) {
		struct ep_frame_reader r;
		struct collected c = { 0 };
		const char *error = NULL;
		size_t s = splits[i];

		ep_frame_reader_init(&r);
		assert_int_equal(ep_frame_reader_feed(&r, f, s, collect, &c, &error), 0);
		assert_int_equal(c.n, 0);
		assert_int_equal(r.len, s);
		/* an empty feed changes nothing */
		assert_int_equal(ep_frame_reader_feed(&r, f + s, 0, collect, &c, &error), 0);
		assert_int_equal(c.n, 0);
		assert_int_equal(ep_frame_reader_feed(&r, f + s, len - s, collect, &c, &error), 0);
		assert_int_equal(c.n, 1);
		assert_int_equal(c.types[0], EP_MSG_CONFIGURE);
		assert_string_equal(c.texts[0], CONFIGURE_TEXT);
		assert_null(error);
		collected_free(&c);
		ep_frame_reader_free(&r);
	}
	free(f);
}

#define BAD_MAGIC "bad frame magic (not an etcdproxy peer, or the stream lost sync)"

static void test_bad_magic(void **state UNUSED)
{
	size_t len;
	uint8_t *f = raw_frame('E', 'Q', EP_IPC_VERSION, EP_MSG_HELLO, 2, "{}", 2, &len);

	expect_proto_error(f, len, BAD_MAGIC);
	f[0] = 'X';
	f[1] = 'P';
	expect_proto_error(f, len, BAD_MAGIC);
	/* known as soon as the header is complete, before any payload */
	expect_proto_error(f, EP_IPC_HEADER_SIZE, BAD_MAGIC);
	free(f);

	/* text where a frame should be (an HTTP client on the control socket) */
	expect_proto_error((const uint8_t *)"GET / HTTP/1.1\r\n\r\n", 18, BAD_MAGIC);
}

#define BAD_VERSION "unsupported protocol version (supervisor and worker from different builds?)"

static void test_bad_version(void **state UNUSED)
{
	size_t len;
	uint8_t *f = raw_frame('E', 'P', EP_IPC_VERSION + 1, EP_MSG_HELLO, 2, "{}", 2, &len);

	expect_proto_error(f, len, BAD_VERSION);
	f[2] = 0;
	expect_proto_error(f, len, BAD_VERSION);
	free(f);
}

static void test_oversize_length(void **state UNUSED)
{
	struct ep_frame_reader r;
	struct collected c = { 0 };
	const char *error = NULL;
	size_t len;
	uint8_t *f = raw_frame('E', 'P', EP_IPC_VERSION, EP_MSG_HELLO, EP_IPC_MAX_PAYLOAD + 1, NULL,
			       0, &len);

	/* refused from the header alone: nothing of the 1 MiB is waited for */
	expect_proto_error(f, len, "frame larger than the 1 MiB limit");
	free(f);
	f = raw_frame('E', 'P', EP_IPC_VERSION, EP_MSG_HELLO, UINT32_MAX, NULL, 0, &len);
	expect_proto_error(f, len, "frame larger than the 1 MiB limit");
	free(f);

	/* exactly the limit is allowed: the reader waits for the payload */
	f = raw_frame('E', 'P', EP_IPC_VERSION, EP_MSG_HELLO, EP_IPC_MAX_PAYLOAD, NULL, 0, &len);
	ep_frame_reader_init(&r);
	assert_int_equal(ep_frame_reader_feed(&r, f, len, collect, &c, &error), 0);
	assert_int_equal(c.n, 0);
	assert_null(error);
	ep_frame_reader_free(&r);
	free(f);
}

static void test_payload_not_object(void **state UNUSED)
{
	static const struct {
		const char *bytes;
		size_t len;
	} bad[] = {
		{ "\x01\x02\xff garbage", 11 },
		{ "[1,2,3]", 7 },
		{ "\"a string\"", 10 },
		{ "42", 2 },
		{ "null", 4 },
		{ "{\"a\":1", 6 }, /* truncated object */
		{ "", 0 },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		size_t len;
		uint8_t *f = raw_frame('E', 'P', EP_IPC_VERSION, EP_MSG_HELLO, (uint32_t)bad[i].len,
				       bad[i].bytes, bad[i].len, &len);

		expect_proto_error(f, len, "frame payload is not a JSON object");
		free(f);
	}
}

static void test_error_after_good_frame(void **state UNUSED)
{
	size_t l1, l2;
	uint8_t *f1 = encode(EP_MSG_HELLO, "{\"pid\":1}", &l1);
	uint8_t *f2 = raw_frame('E', 'P', EP_IPC_VERSION, EP_MSG_HELLO, 2, "[]", 2, &l2);
	uint8_t *all = ep_malloc0(l1 + l2);
	struct ep_frame_reader r;
	struct collected c = { 0 };
	const char *error = NULL;

	memcpy(all, f1, l1);
	memcpy(all + l1, f2, l2);
	ep_frame_reader_init(&r);
	/* the good frame is delivered, then the bad one stops the stream */
	assert_int_equal(ep_frame_reader_feed(&r, all, l1 + l2, collect, &c, &error), -EPROTO);
	assert_int_equal(c.n, 1);
	assert_string_equal(c.texts[0], "{\"pid\":1}");
	assert_string_equal(error, "frame payload is not a JSON object");
	collected_free(&c);
	ep_frame_reader_free(&r);
	free(all);
	free(f1);
	free(f2);
}

static void test_callback_stops(void **state UNUSED)
{
	size_t len;
	uint8_t *f = encode(EP_MSG_STATUS, "{\"state\":\"running\"}", &len);
	uint8_t *three = ep_malloc0(3 * len);
	struct ep_frame_reader r;
	struct collected c = { .stop_at = 2, .stop_value = 7 };
	const char *error = NULL;

	for (size_t i = 0; i < 3; i++)
		memcpy(three + i * len, f, len);
	ep_frame_reader_init(&r);
	assert_int_equal(ep_frame_reader_feed(&r, three, 3 * len, collect, &c, &error), 7);
	assert_int_equal(c.n, 2);
	assert_null(error);
	collected_free(&c);

	/* a negative value comes back as it is */
	ep_frame_reader_free(&r);
	ep_frame_reader_init(&r);
	c.stop_at = 1;
	c.stop_value = -ECANCELED;
	assert_int_equal(ep_frame_reader_feed(&r, three, 3 * len, collect, &c, &error), -ECANCELED);
	assert_int_equal(c.n, 1);
	collected_free(&c);
	ep_frame_reader_free(&r);
	free(three);
	free(f);
}

/* The callback may free the reader it is called from when it returns non-zero. */
static int free_reader_cb(void *ctx, uint8_t type, cJSON *payload)
{
	struct ep_frame_reader **rp = ctx;

	ep_frame_reader_free(*rp);
	free(*rp);
	*rp = NULL;
	return 1;
}

static void test_callback_frees_reader(void **state UNUSED)
{
	size_t len;
	uint8_t *f = encode(EP_MSG_STOP, NULL, &len);
	uint8_t *two = ep_malloc0(2 * len);
	struct ep_frame_reader *r = ep_malloc0(sizeof(*r));
	const char *error = NULL;

	memcpy(two, f, len);
	memcpy(two + len, f, len);
	ep_frame_reader_init(r);
	assert_int_equal(ep_frame_reader_feed(r, two, 2 * len, free_reader_cb, &r, &error), 1);
	assert_null(r);
	free(two);
	free(f);
}

static void test_encode_size_limit(void **state UNUSED)
{
	/* {"s":"..."} is 8 bytes around the string */
	char *big = ep_malloc0(EP_IPC_MAX_PAYLOAD + 1);
	cJSON *payload = cJSON_CreateObject();
	cJSON *s;
	uint8_t *buf = (uint8_t *)"untouched";
	size_t len = 12345;
	struct ep_frame_reader r;
	struct collected c = { 0 };
	const char *error = NULL;

	memset(big, 'x', EP_IPC_MAX_PAYLOAD - 8 + 1);
	s = cJSON_AddStringToObject(payload, "s", big);
	assert_int_equal(ep_frame_encode(EP_MSG_STATUS, payload, &buf, &len), -EMSGSIZE);
	assert_string_equal((const char *)buf, "untouched");
	assert_int_equal(len, 12345);

	/* one byte less is exactly the limit */
	big[EP_IPC_MAX_PAYLOAD - 8] = '\0';
	assert_non_null(cJSON_SetValuestring(s, big));
	assert_int_equal(ep_frame_encode(EP_MSG_STATUS, payload, &buf, &len), 0);
	assert_int_equal(len, EP_IPC_HEADER_SIZE + EP_IPC_MAX_PAYLOAD);
	assert_int_equal(buf[4], 0x00);
	assert_int_equal(buf[5], 0x10);
	assert_int_equal(buf[6], 0x00);
	assert_int_equal(buf[7], 0x00);

	/* and the reader takes it, then gives the large buffer back */
	ep_frame_reader_init(&r);
	assert_int_equal(ep_frame_reader_feed(&r, buf, len, collect, &c, &error), 0);
	assert_int_equal(c.n, 1);
	assert_int_equal(strlen(c.texts[0]), EP_IPC_MAX_PAYLOAD);
	assert_int_equal(r.len, 0);
	assert_true(r.cap <= 65536);
	collected_free(&c);
	ep_frame_reader_free(&r);
	free(buf);

	/* ep_ipc_send says the same in libuv's terms, without touching the stream */
	big[EP_IPC_MAX_PAYLOAD - 8] = 'x';
	assert_non_null(cJSON_SetValuestring(s, big));
	assert_int_equal(ep_ipc_send(NULL, EP_MSG_STATUS, payload), UV_EMSGSIZE);
	assert_int_equal(ep_ipc_write_frame_fd(-1, EP_MSG_STATUS, payload), -EMSGSIZE);
	cJSON_Delete(payload);
	free(big);
}

/* ---- blocking fd helpers ----------------------------------------------------------- */

struct sp {
	int fd[2];
};

static int setup_socketpair(void **state)
{
	struct sp *p = ep_malloc0(sizeof(*p));

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, p->fd) != 0) {
		free(p);
		return -1;
	}
	*state = p;
	return 0;
}

static int teardown_socketpair(void **state)
{
	struct sp *p = *state;

	if (p->fd[0] >= 0)
		close(p->fd[0]);
	if (p->fd[1] >= 0)
		close(p->fd[1]);
	free(p);
	return 0;
}

static void test_fd_round_trip(void **state)
{
	struct sp *p = *state;
	cJSON *req = parse("{\"command\":\"show\",\"name\":\"a\"}");
	cJSON *got = NULL;
	uint8_t type = 0;
	const char *error = NULL;
	char *text;

	assert_int_equal(ep_ipc_write_frame_fd(p->fd[0], EP_MSG_CTL_REQUEST, req), 0);
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 5000, &type, &got, &error), 0);
	assert_null(error);
	assert_int_equal(type, EP_MSG_CTL_REQUEST);
	assert_non_null(got);
	text = cJSON_PrintUnformatted(got);
	assert_string_equal(text, "{\"command\":\"show\",\"name\":\"a\"}");
	free(text);
	cJSON_Delete(got);

	/* the other way, with no payload */
	assert_int_equal(ep_ipc_write_frame_fd(p->fd[1], EP_MSG_CTL_REPLY, NULL), 0);
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[0], 5000, &type, &got, &error), 0);
	assert_int_equal(type, EP_MSG_CTL_REPLY);
	assert_true(cJSON_IsObject(got));
	assert_null(got->child);
	cJSON_Delete(got);

	/* a frame larger than one read() of the reader */
	cJSON *big = cJSON_CreateObject();
	char *s = ep_malloc0(40001);
	memset(s, 'y', 40000);
	cJSON_AddStringToObject(big, "blob", s);
	assert_int_equal(ep_ipc_write_frame_fd(p->fd[0], EP_MSG_STATUS, big), 0);
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 5000, &type, &got, &error), 0);
	assert_int_equal(type, EP_MSG_STATUS);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(got, "blob")->valuestring, s);
	cJSON_Delete(got);
	cJSON_Delete(big);
	free(s);
	cJSON_Delete(req);
}

static void test_fd_timeout(void **state)
{
	struct sp *p = *state;
	cJSON *got = (cJSON *)"untouched";
	uint8_t type = 99;
	const char *error = NULL;
	uint64_t start = ep_now_ms(), elapsed;

	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 200, &type, &got, &error), -ETIMEDOUT);
	elapsed = ep_now_ms() - start;
	assert_true(elapsed >= 200);
	assert_true(elapsed < 3000);
	assert_string_equal(error, "timed out waiting for an answer");
	assert_int_equal(type, 99);
	assert_ptr_equal(got, (cJSON *)"untouched");

	/* half a frame is no better than nothing */
	size_t len;
	uint8_t *f = encode(EP_MSG_HELLO, "{\"pid\":1}", &len);
	assert_int_equal(write(p->fd[0], f, len - 3), (ssize_t)(len - 3));
	error = NULL;
	start = ep_now_ms();
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 150, &type, &got, &error), -ETIMEDOUT);
	assert_true(ep_now_ms() - start >= 150);
	assert_string_equal(error, "timed out waiting for an answer");
	free(f);
}

static void test_fd_peer_closes(void **state)
{
	struct sp *p = *state;
	cJSON *got = NULL;
	uint8_t type = 0;
	const char *error = NULL;
	size_t len;
	uint8_t *f = encode(EP_MSG_CTL_REPLY, "{\"ok\":true,\"tenants\":[]}", &len);

	/* the header and part of the payload, then the peer is gone */
	assert_int_equal(write(p->fd[0], f, len - 4), (ssize_t)(len - 4));
	close(p->fd[0]);
	p->fd[0] = -1;
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 5000, &type, &got, &error), -ECONNRESET);
	assert_string_equal(error, "connection closed before a complete answer");
	assert_null(got);
	free(f);
}

static void test_fd_peer_closes_at_once(void **state)
{
	struct sp *p = *state;
	cJSON *got = NULL;
	uint8_t type = 0;
	const char *error = NULL;
	uint64_t start = ep_now_ms();

	close(p->fd[0]);
	p->fd[0] = -1;
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 5000, &type, &got, &error), -ECONNRESET);
	assert_string_equal(error, "connection closed before a complete answer");
	/* at once, not after the timeout */
	assert_true(ep_now_ms() - start < 2500);
}

static void test_fd_garbage(void **state)
{
	struct sp *p = *state;
	cJSON *got = NULL;
	uint8_t type = 0;
	const char *error = NULL;

	assert_int_equal(write(p->fd[0], "HTTP/1.1 400 Bad Request\r\n", 26), 26);
	assert_int_equal(ep_ipc_read_frame_fd(p->fd[1], 5000, &type, &got, &error), -EPROTO);
	assert_string_equal(error, BAD_MAGIC);
	assert_null(got);
}

static void test_fd_write_errors(void **state)
{
	struct sp *p = *state;
	void (*old)(int) = signal(SIGPIPE, SIG_IGN);

	close(p->fd[1]);
	p->fd[1] = -1;
	assert_int_equal(ep_ipc_write_frame_fd(p->fd[0], EP_MSG_STOP, NULL), -EPIPE);
	signal(SIGPIPE, old);
	assert_int_equal(ep_ipc_write_frame_fd(-1, EP_MSG_STOP, NULL), -EBADF);
}

/* ---- names and exit texts --------------------------------------------------------- */

static void test_msg_type_names(void **state UNUSED)
{
	assert_string_equal(ep_msg_type_name(EP_MSG_HELLO), "HELLO");
	assert_string_equal(ep_msg_type_name(EP_MSG_READY), "READY");
	assert_string_equal(ep_msg_type_name(EP_MSG_HEALTH), "HEALTH");
	assert_string_equal(ep_msg_type_name(EP_MSG_STATUS), "STATUS");
	assert_string_equal(ep_msg_type_name(EP_MSG_FATAL), "FATAL");
	assert_string_equal(ep_msg_type_name(EP_MSG_CONFIGURE), "CONFIGURE");
	assert_string_equal(ep_msg_type_name(EP_MSG_STOP), "STOP");
	assert_string_equal(ep_msg_type_name(EP_MSG_STATUS_REQ), "STATUS_REQ");
	assert_string_equal(ep_msg_type_name(EP_MSG_CTL_REQUEST), "CTL_REQUEST");
	assert_string_equal(ep_msg_type_name(EP_MSG_CTL_REPLY), "CTL_REPLY");
	assert_string_equal(ep_msg_type_name(EP_MSG_CERTS_REQ), "CERTS_REQ");
	assert_string_equal(ep_msg_type_name(EP_MSG_CERTS_REPLY), "CERTS_REPLY");
	assert_string_equal(ep_msg_type_name(0), "unknown");
	assert_string_equal(ep_msg_type_name(7), "unknown");
	assert_string_equal(ep_msg_type_name(255), "unknown");
}

static void test_exit_describe(void **state UNUSED)
{
	char buf[128];

	ep_exit_describe(78, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 78 (fatal configuration error)");
	ep_exit_describe(0, 9, buf, sizeof(buf));
	assert_string_equal(buf, "killed by signal 9 (Killed)");
	ep_exit_describe(0, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 0 (stopped)");
	ep_exit_describe(69, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 69 (backend unavailable)");
	ep_exit_describe(70, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 70 (internal error)");
	ep_exit_describe(76, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 76 (IPC protocol error)");
	ep_exit_describe(64, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 64 (wrong arguments)");
	ep_exit_describe(127, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 127 (worker binary could not be executed)");
	ep_exit_describe(1, 0, buf, sizeof(buf));
	assert_string_equal(buf, "exited with code 1 (unexpected exit)");
	ep_exit_describe(0, 15, buf, sizeof(buf));
	assert_string_equal(buf, "killed by signal 15 (Terminated)");
	/* a signal wins over the exit status */
	ep_exit_describe(78, 6, buf, sizeof(buf));
	assert_string_equal(buf, "killed by signal 6 (Aborted)");

	/* a short buffer is truncated, never overrun */
	memset(buf, '#', sizeof(buf));
	ep_exit_describe(78, 0, buf, 10);
	assert_string_equal(buf, "exited wi");
	assert_int_equal(buf[10], '#');
}

/* ---- ep_ipc_send on a libuv pipe ------------------------------------------------------- */

struct uv_fixture {
	uv_loop_t loop;
	uv_pipe_t a, b;
	uv_timer_t guard;
	struct ep_frame_reader reader;
	struct collected got;
	size_t want;
	int closed;
	int proto_error;
	int timed_out;
};

static void on_close(uv_handle_t *h)
{
	struct uv_fixture *f = h->data;

	f->closed++;
}

static void close_all(struct uv_fixture *f)
{
	if (!uv_is_closing((uv_handle_t *)&f->a))
		uv_close((uv_handle_t *)&f->a, on_close);
	if (!uv_is_closing((uv_handle_t *)&f->b))
		uv_close((uv_handle_t *)&f->b, on_close);
	if (!uv_is_closing((uv_handle_t *)&f->guard))
		uv_close((uv_handle_t *)&f->guard, on_close);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	buf->base = ep_malloc0(suggested);
	buf->len = suggested;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct uv_fixture *f = s->data;
	const char *error = NULL;

	if (nread > 0) {
		if (ep_frame_reader_feed(&f->reader, buf->base, (size_t)nread, collect, &f->got,
					 &error) < 0)
			f->proto_error = 1;
	} else if (nread < 0) {
		f->proto_error = 1;
	}
	free(buf->base);
	if (f->proto_error || f->got.n >= f->want)
		close_all(f);
}

static void on_guard(uv_timer_t *t)
{
	struct uv_fixture *f = t->data;

	f->timed_out = 1;
	close_all(f);
}

static void test_uv_send(void **state UNUSED)
{
	struct uv_fixture *f = ep_malloc0(sizeof(*f));
	int sv[2];
	cJSON *hello = parse("{\"pid\":4242,\"version\":\"" PACKAGE_VERSION "\",\"abi\":1}");
	cJSON *big = cJSON_CreateObject();
	char *blob = ep_malloc0(300001);

	memset(blob, 'z', 300000);
	cJSON_AddStringToObject(big, "blob", blob);

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	assert_int_equal(uv_pipe_init(&f->loop, &f->a, 0), 0);
	assert_int_equal(uv_pipe_init(&f->loop, &f->b, 0), 0);
	assert_int_equal(uv_pipe_open(&f->a, sv[0]), 0);
	assert_int_equal(uv_pipe_open(&f->b, sv[1]), 0);
	assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
	f->a.data = f->b.data = f->guard.data = f;
	ep_frame_reader_init(&f->reader);
	f->want = 3;

	assert_int_equal(uv_read_start((uv_stream_t *)&f->b, on_alloc, on_read), 0);
	assert_int_equal(uv_timer_start(&f->guard, on_guard, 10000, 0), 0);
	assert_int_equal(ep_ipc_send((uv_stream_t *)&f->a, EP_MSG_HELLO, hello), 0);
	/* larger than a socket buffer: libuv queues it and the buffer lives until written */
	assert_int_equal(ep_ipc_send((uv_stream_t *)&f->a, EP_MSG_STATUS, big), 0);
	assert_int_equal(ep_ipc_send((uv_stream_t *)&f->a, EP_MSG_READY, NULL), 0);
	cJSON_Delete(hello);
	cJSON_Delete(big);

	assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(f->closed, 3);
	assert_int_equal(f->timed_out, 0);
	assert_int_equal(f->proto_error, 0);
	assert_int_equal(f->got.n, 3);
	assert_int_equal(f->got.types[0], EP_MSG_HELLO);
	assert_string_equal(f->got.texts[0],
			    "{\"pid\":4242,\"version\":\"" PACKAGE_VERSION "\",\"abi\":1}");
	assert_int_equal(f->got.types[1], EP_MSG_STATUS);
	assert_int_equal(strlen(f->got.texts[1]), 300000 + strlen("{\"blob\":\"\"}"));
	assert_int_equal(f->got.types[2], EP_MSG_READY);
	assert_string_equal(f->got.texts[2], "{}");
	assert_int_equal(uv_loop_close(&f->loop), 0);

	collected_free(&f->got);
	ep_frame_reader_free(&f->reader);
	free(blob);
	free(f);
}

/* A write that fails at once (no open fd behind the stream) frees what it allocated. */
static void test_uv_send_error(void **state UNUSED)
{
	uv_loop_t loop;
	uv_pipe_t p;

	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(uv_pipe_init(&loop, &p, 0), 0);
	assert_int_equal(ep_ipc_send((uv_stream_t *)&p, EP_MSG_STOP, NULL), UV_EBADF);
	uv_close((uv_handle_t *)&p, NULL);
	assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- typed messages (messages.c): both ends use one encoder and one parser ---------- */

/* Encode, print, parse the text back: what the other end sees. */
static cJSON *wire(cJSON *o)
{
	char *text = cJSON_PrintUnformatted(o);
	cJSON *back = cJSON_Parse(text);

	cJSON_free(text);
	cJSON_Delete(o);
	assert_non_null(back);
	return back;
}

static void test_messages_round_trip(void **state)
{
	(void)state;
	cJSON *p, *counters = cJSON_Parse("{\"calls\": 3}"), *certs = cJSON_Parse("[{\"role\": \"ca\"}]");

	struct ep_msg_hello h = { .pid = 4242, .version = "0.1.0", .abi = 1 }, h2;
	p = wire(ep_msg_hello_encode(&h));
	assert_int_equal(ep_msg_hello_parse(p, &h2), 0);
	assert_true(h2.pid == 4242 && h2.abi == 1);
	assert_string_equal(h2.version, "0.1.0");
	cJSON_Delete(p);

	struct ep_msg_ready r = { .endpoint = "[::1]:2379" }, r2;
	p = wire(ep_msg_ready_encode(&r));
	assert_int_equal(ep_msg_ready_parse(p, &r2), 0);
	assert_string_equal(r2.endpoint, "[::1]:2379");
	cJSON_Delete(p);

	struct ep_msg_health he = { .healthy = 0, .reason = "core etcd down" }, he2;
	p = wire(ep_msg_health_encode(&he));
	assert_int_equal(ep_msg_health_parse(p, &he2), 0);
	assert_int_equal(he2.healthy, 0);
	assert_string_equal(he2.reason, "core etcd down");
	cJSON_Delete(p);

	struct ep_msg_status st = { .state = "ready", .healthy = 1, .counters = counters,
				    .certificates = certs }, st2;
	p = wire(ep_msg_status_encode(&st));
	assert_int_equal(ep_msg_status_parse(p, &st2), 0);
	assert_string_equal(st2.state, "ready");
	assert_int_equal(st2.healthy, 1);
	assert_true(cJSON_Compare(st2.counters, counters, 1));
	assert_true(cJSON_Compare(st2.certificates, certs, 1));
	cJSON_Delete(p);

	struct ep_msg_fatal f = { .reason = "backends.native.idle_timeout: ...", .config = 1 }, f2;
	p = wire(ep_msg_fatal_encode(&f));
	assert_int_equal(ep_msg_fatal_parse(p, &f2), 0);
	assert_int_equal(f2.config, 1);
	assert_string_equal(f2.reason, f.reason);
	cJSON_Delete(p);

	struct ep_msg_certs_req q = { .id = 7, .op = "issue", .cn = "api", .out = "/x" }, q2;
	p = wire(ep_msg_certs_req_encode(&q));
	assert_int_equal(ep_msg_certs_req_parse(p, &q2), 0);
	assert_true(q2.id == 7);
	assert_string_equal(q2.op, "issue");
	assert_string_equal(q2.cn, "api");
	assert_string_equal(q2.out, "/x");
	cJSON_Delete(p);

	struct ep_msg_certs_reply c = { .id = 7, .ok = 1, .result = counters }, c2;
	p = wire(ep_msg_certs_reply_encode(&c));
	assert_int_equal(ep_msg_certs_reply_parse(p, &c2), 0);
	assert_true(c2.id == 7 && c2.ok == 1 && c2.error == NULL);
	assert_true(cJSON_Compare(c2.result, counters, 1));
	cJSON_Delete(p);

	struct ep_msg_stop so = { .graceful = 1 }, so2;
	p = wire(ep_msg_stop_encode(&so));
	assert_int_equal(ep_msg_stop_parse(p, &so2), 0);
	assert_int_equal(so2.graceful, 1);
	cJSON_Delete(p);
	so.graceful = 0; /* the second SIGTERM's: stop without draining */
	p = wire(ep_msg_stop_encode(&so));
	so2.graceful = 1;
	assert_int_equal(ep_msg_stop_parse(p, &so2), 0);
	assert_int_equal(so2.graceful, 0);
	cJSON_Delete(p);

	cJSON *pol = cJSON_Parse("{\"quota\": {\"max_keys\": 5}}");
	struct ep_msg_policy po = { .policy = pol }, po2;
	p = wire(ep_msg_policy_encode(&po));
	assert_int_equal(ep_msg_policy_parse(p, &po2), 0);
	assert_true(cJSON_Compare(po2.policy, pol, 1));
	cJSON_Delete(p);
	cJSON_Delete(pol);
	/* without its policy, or with one that is not an object, it is malformed */
	p = cJSON_Parse("{}");
	assert_int_equal(ep_msg_policy_parse(p, &po2), -EPROTO);
	cJSON_Delete(p);
	p = cJSON_Parse("{\"policy\": []}");
	assert_int_equal(ep_msg_policy_parse(p, &po2), -EPROTO);
	cJSON_Delete(p);
	assert_string_equal(ep_msg_type_name(EP_MSG_POLICY), "POLICY");
	cJSON_Delete(counters);
	cJSON_Delete(certs);
}

/* Add fields, never repurpose: unknown fields are ignored, absent ones get defaults. */
static void test_messages_compat(void **state)
{
	(void)state;
	struct ep_msg_hello h;
	struct ep_msg_health he;
	struct ep_msg_status st;
	cJSON *p = cJSON_Parse("{\"pid\": 1, \"a_newer_field\": [1, 2]}");

	assert_int_equal(ep_msg_hello_parse(p, &h), 0);
	assert_null(h.version);
	assert_int_equal(h.abi, 0);
	cJSON_Delete(p);
	p = cJSON_Parse("{}");
	assert_int_equal(ep_msg_health_parse(p, &he), 0);
	assert_int_equal(he.healthy, 0);
	assert_null(he.reason);
	assert_int_equal(ep_msg_status_parse(p, &st), 0);
	assert_null(st.counters);
	cJSON_Delete(p);

	enum { HELLO, READY, HEALTH, STATUS, FATAL, REQ, REPLY, STOP };
	static const struct {
		const char *json;
		int kind;
	} bad[] = {
		{ "{\"pid\": \"1\"}", HELLO },       { "{\"pid\": 1.5}", HELLO },
		{ "{\"abi\": -1}", HELLO },           { "{\"endpoint\": 5}", READY },
		{ "{\"healthy\": \"yes\"}", HEALTH }, { "{\"counters\": []}", STATUS },
		{ "{\"certificates\": {}}", STATUS }, { "{\"config\": 1}", FATAL },
		{ "{\"op\": 1}", REQ },               { "{\"result\": \"x\"}", REPLY },
		{ "[]", STOP },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct ep_msg_ready r;
		struct ep_msg_fatal f;
		struct ep_msg_certs_req q;
		struct ep_msg_certs_reply c;
		struct ep_msg_stop so;
		int rc = 0;

		p = cJSON_Parse(bad[i].json);
		switch (bad[i].kind) {
		case HELLO: rc = ep_msg_hello_parse(p, &h); break;
		case READY: rc = ep_msg_ready_parse(p, &r); break;
		case HEALTH: rc = ep_msg_health_parse(p, &he); break;
		case STATUS: rc = ep_msg_status_parse(p, &st); break;
		case FATAL: rc = ep_msg_fatal_parse(p, &f); break;
		case REQ: rc = ep_msg_certs_req_parse(p, &q); break;
		case REPLY: rc = ep_msg_certs_reply_parse(p, &c); break;
		case STOP: rc = ep_msg_stop_parse(p, &so); break;
		}
		if (rc != -EPROTO)
			fail_msg("%s accepted (case %zu)", bad[i].json, i);
		cJSON_Delete(p);
	}
}

int main(void)
{
	const struct CMUnitTest frame_tests[] = {
		cmocka_unit_test(test_encode_layout),
		cmocka_unit_test(test_messages_round_trip),
		cmocka_unit_test(test_messages_compat),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_one_byte_at_a_time),
		cmocka_unit_test(test_several_frames_one_feed),
		cmocka_unit_test(test_header_split),
		cmocka_unit_test(test_bad_magic),
		cmocka_unit_test(test_bad_version),
		cmocka_unit_test(test_oversize_length),
		cmocka_unit_test(test_payload_not_object),
		cmocka_unit_test(test_error_after_good_frame),
		cmocka_unit_test(test_callback_stops),
		cmocka_unit_test(test_callback_frees_reader),
		cmocka_unit_test(test_encode_size_limit),
	};
	const struct CMUnitTest fd_tests[] = {
		cmocka_unit_test_setup_teardown(test_fd_round_trip, setup_socketpair,
						teardown_socketpair),
		cmocka_unit_test_setup_teardown(test_fd_timeout, setup_socketpair,
						teardown_socketpair),
		cmocka_unit_test_setup_teardown(test_fd_peer_closes, setup_socketpair,
						teardown_socketpair),
		cmocka_unit_test_setup_teardown(test_fd_peer_closes_at_once, setup_socketpair,
						teardown_socketpair),
		cmocka_unit_test_setup_teardown(test_fd_garbage, setup_socketpair,
						teardown_socketpair),
		cmocka_unit_test_setup_teardown(test_fd_write_errors, setup_socketpair,
						teardown_socketpair),
	};
	const struct CMUnitTest misc_tests[] = {
		cmocka_unit_test(test_msg_type_names),
		cmocka_unit_test(test_exit_describe),
		cmocka_unit_test(test_uv_send),
		cmocka_unit_test(test_uv_send_error),
	};
	int failed;

	failed = cmocka_run_group_tests_name("frames", frame_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("fd", fd_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("misc", misc_tests, NULL, NULL);
	return failed;
}
