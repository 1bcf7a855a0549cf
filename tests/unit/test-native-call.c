/*
 * The native backend's call state machine, driven through both of its sides
 * on purpose: a client (nghttp2) on one, a scripted HTTP/2 upstream on the
 * other (tests/native/harness.h).  Every scenario ends the call in a
 * different order of events and then checks the invariants: every call
 * freed, no stream left open on either side, no handle left in the loop
 * (and, under valgrind or ASan, no byte leaked).
 */
#define _GNU_SOURCE /* memmem */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "harness.h"
#include "native.h"

#define RANGE "/etcdserverpb.KV/Range"
#define PUT "/etcdserverpb.KV/Put"
#define WATCH "/etcdserverpb.Watch/Watch"
#define GRANT "/etcdserverpb.Lease/LeaseGrant"

/* gRPC status codes */
#define OK 0
#define INVALID_ARGUMENT 3
#define NOT_FOUND 5
#define UNIMPLEMENTED 12
#define INTERNAL 13
#define UNAVAILABLE 14

static struct harness H;

static int setup(void **state)
{
	(void)state;
	h_init(&H, "{}");
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	h_fini(&H, 0);
	return 0;
}

/* ---- messages ---------------------------------------------------------------------------------- */

static size_t range_request(uint8_t *d, const char *key)
{
	return h_pb_bytes(d, 1, key, strlen(key));
}

static size_t header(uint8_t *d, uint64_t revision)
{
	uint8_t h[32];
	size_t n = h_pb_uint(h, 1, 1234);

	n += h_pb_uint(h + n, 2, 5678);
	n += h_pb_uint(h + n, 3, revision);
	n += h_pb_uint(h + n, 4, 2);
	return h_pb_bytes(d, 1, h, n);
}

static size_t key_value(uint8_t *d, const char *key, const char *value)
{
	uint8_t kv[256];
	size_t n = h_pb_bytes(kv, 1, key, strlen(key));

	n += h_pb_uint(kv + n, 2, 5);
	n += h_pb_uint(kv + n, 3, 9);
	n += h_pb_uint(kv + n, 4, 1);
	n += h_pb_bytes(kv + n, 5, value, strlen(value));
	memcpy(d, kv, n);
	return n;
}

/* A RangeResponse with one KeyValue (field 2) */
static size_t range_response(uint8_t *d, const char *key, const char *value)
{
	uint8_t kv[256];
	size_t k = key_value(kv, key, value), n = header(d, 9);

	n += h_pb_bytes(d + n, 2, kv, k);
	n += h_pb_uint(d + n, 4, 1);
	return n;
}

/* The key of the first KeyValue of a RangeResponse, as a string. */
static void first_key(const uint8_t *msg, size_t len, char *out, size_t size)
{
	const uint8_t *kv, *key;
	size_t kvlen, keylen;

	assert_true(h_pb_find(msg, len, 2, &kv, &kvlen));
	assert_true(h_pb_find(kv, kvlen, 1, &key, &keylen));
	assert_true(keylen < size);
	memcpy(out, key, keylen);
	out[keylen] = '\0';
}

/* The key of a request (field 1), or of a Watch create request (field 1 in field 1). */
static void request_key(const uint8_t *msg, size_t len, int watch, char *out, size_t size)
{
	const uint8_t *key;
	size_t keylen;

	if (watch)
		assert_true(h_pb_find(msg, len, 1, &msg, &len));
	assert_true(h_pb_find(msg, len, 1, &key, &keylen));
	assert_true(keylen < size);
	memcpy(out, key, keylen);
	out[keylen] = '\0';
}

/* ---- scripts ------------------------------------------------------------------------------------ */

struct seen {
	char key[128];
	struct h_stream *st;
	int messages;
	int ends;
};

/* Answer a Range for KEY with KEY=value (the key as the upstream saw it), then OK. */
static void answer_range(struct harness *h, struct h_stream *st, const uint8_t *msg, size_t len)
{
	struct seen *seen = h->script_ctx;
	uint8_t resp[512];

	if (msg == NULL) {
		seen->ends++;
		return;
	}
	seen->st = st;
	seen->messages++;
	request_key(msg, len, 0, seen->key, sizeof(seen->key));
	h_reply(st, resp, range_response(resp, seen->key, "value"));
	h_finish(st, OK, NULL);
}

/* Remember the call and answer nothing (the test decides what happens next). */
static void hold(struct harness *h, struct h_stream *st, const uint8_t *msg, size_t len)
{
	struct seen *seen = h->script_ctx;

	if (msg == NULL) {
		seen->ends++;
		return;
	}
	seen->st = st;
	seen->messages++;
	if (strcmp(st->path, WATCH) == 0 || strcmp(st->path, RANGE) == 0)
		request_key(msg, len, strcmp(st->path, WATCH) == 0, seen->key, sizeof(seen->key));
}

/* ---- conditions --------------------------------------------------------------------------------- */

static int stream_closed(struct harness *h, void *arg)
{
	(void)h;
	return ((struct h_stream *)arg)->closed;
}

static int got_status(struct harness *h, void *arg)
{
	(void)h;
	return ((struct h_stream *)arg)->grpc_status >= 0 && ((struct h_stream *)arg)->closed;
}

static int peer_saw_message(struct harness *h, void *arg)
{
	(void)h;
	return ((struct seen *)arg)->messages > 0;
}

/* Nothing of any call is left in the native. */
static int quiescent(struct harness *h, void *arg)
{
	struct native *n = h->native;

	(void)arg;
	return n->live_calls == 0 && h_active_streams(h) == 0 && h_upstream_calls(h) == 0;
}

static void assert_quiescent(void)
{
	assert_int_equal(h_run_until_fn(&H, quiescent, NULL, 3000), 0);
}

static void wait_status(struct h_stream *st)
{
	assert_int_equal(h_run_until_fn(&H, got_status, st, 3000), 0);
}

/* A Range for "foo" that has reached the upstream, which holds it (the test answers). */
static struct h_stream *held_range(struct h_conn *c, struct seen *seen, int end)
{
	uint8_t req[64];
	struct h_stream *st;

	H.script = hold;
	H.script_ctx = seen;
	st = h_call(c, RANGE, req, range_request(req, "foo"), end);
	assert_int_equal(h_run_until_fn(&H, peer_saw_message, seen, 3000), 0);
	return st;
}

/* ---- scenarios ----------------------------------------------------------------------------------- */

/* A unary call: the key goes up namespaced, comes back without the prefix, status OK. */
static void test_unary_rewritten_both_ways(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t req[64];
	const uint8_t *msg;
	size_t len;
	char key[128];
	struct h_stream *st;

	(void)state;
	H.script = answer_range;
	H.script_ctx = &seen;
	st = h_call(c, RANGE, req, range_request(req, "foo"), 1);
	wait_status(st);
	assert_string_equal(seen.key, "/t/foo");
	assert_int_equal(seen.ends, 1);
	assert_int_equal(st->grpc_status, OK);
	assert_true(h_next_message(st, &msg, &len));
	first_key(msg, len, key, sizeof(key));
	assert_string_equal(key, "foo");
	assert_int_equal(st->rst_code, 0);
	assert_quiescent();
	assert_int_equal((int)((struct native *)H.native)->counters.calls_ok, 1);
}

/* ---- large messages --------------------------------------------------------------------------- */

#define BIG (1024 * 1024 + 7)

static void big_value(uint8_t *v, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		v[i] = (uint8_t)(i * 31 + seed + (i >> 12));
}

/* A Put of BIG bytes: check it arrived whole and namespaced, answer with it as prev_kv. */
static void answer_big_put(struct harness *h, struct h_stream *st, const uint8_t *msg, size_t len)
{
	struct seen *seen = h->script_ctx;
	const uint8_t *key, *value;
	size_t keylen, valuelen, n, k;
	uint8_t *want, *kv, *resp;

	if (msg == NULL) {
		seen->ends++;
		return;
	}
	seen->messages++;
	assert_true(h_pb_find(msg, len, 1, &key, &keylen));
	assert_true(h_pb_find(msg, len, 2, &value, &valuelen));
	assert_int_equal(keylen, 6);
	assert_memory_equal(key, "/t/big", 6);
	assert_int_equal(valuelen, BIG);
	want = malloc(BIG);
	kv = malloc(BIG + 64);
	resp = malloc(BIG + 128);
	assert_non_null(want);
	assert_non_null(kv);
	assert_non_null(resp);
	big_value(want, BIG, 1);
	assert_memory_equal(value, want, BIG);
	big_value(want, BIG, 2); /* the previous value, another pattern */
	k = h_pb_bytes(kv, 1, "/t/big", 6);
	k += h_pb_uint(kv + k, 2, 5);
	k += h_pb_bytes(kv + k, 5, want, BIG);
	n = header(resp, 9);
	n += h_pb_bytes(resp + n, 2, kv, k);
	h_reply(st, resp, n);
	h_finish(st, OK, NULL);
	free(want);
	free(kv);
	free(resp);
}

/*
 * A 1 MiB Put and its 1 MiB answer, in 16 KiB frames both ways: rewritten
 * whole, in order, byte for byte (the buffers are sized from the gRPC header
 * and handed over without a copy: conn.c, call.c).
 */
static void test_big_messages(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t *req = malloc(BIG + 64), *want = malloc(BIG);
	const uint8_t *msg, *kv, *key, *value;
	size_t len, n, kvlen, keylen, valuelen;
	struct h_stream *st;

	(void)state;
	assert_non_null(req);
	assert_non_null(want);
	big_value(want, BIG, 1);
	n = h_pb_bytes(req, 1, "big", 3);
	n += h_pb_bytes(req + n, 2, want, BIG);
	H.script = answer_big_put;
	H.script_ctx = &seen;
	for (int round = 0; round < 3; round++) { /* the kept buffers are reused */
		seen.messages = 0;
		st = h_call(c, PUT, req, n, 1);
		wait_status(st);
		assert_int_equal(seen.messages, 1);
		assert_int_equal(st->grpc_status, OK);
		assert_true(h_next_message(st, &msg, &len));
		assert_true(h_pb_find(msg, len, 2, &kv, &kvlen));
		assert_true(h_pb_find(kv, kvlen, 1, &key, &keylen));
		assert_true(h_pb_find(kv, kvlen, 5, &value, &valuelen));
		assert_int_equal(keylen, 3);
		assert_memory_equal(key, "big", 3);
		assert_int_equal(valuelen, BIG);
		big_value(want, BIG, 2);
		assert_memory_equal(value, want, BIG);
		big_value(want, BIG, 1);
		h_drop_message(st, len);
	}
	assert_quiescent();
	free(req);
	free(want);
}

/* A Range answered with 600 KiB: a KeyValue of the tenant, then (if FOREIGN) one of another. */
static void answer_big_range(struct harness *h, struct h_stream *st, const uint8_t *msg,
			     size_t len)
{
	size_t n = 0, k;
	uint8_t *resp, *kv, *value;

	(void)len;
	if (msg == NULL)
		return;
	resp = malloc(700 * 1024);
	kv = malloc(400 * 1024);
	value = malloc(300 * 1024);
	assert_non_null(resp);
	assert_non_null(kv);
	assert_non_null(value);
	big_value(value, 300 * 1024, 3);
	n = header(resp, 9);
	for (int i = 0; i < 2; i++) {
		k = h_pb_bytes(kv, 1, i == 1 && h->script_ctx != NULL ? "/u/b" : "/t/a", 4);
		k += h_pb_bytes(kv + k, 5, value, 300 * 1024);
		n += h_pb_bytes(resp + n, 2, kv, k);
	}
	h_reply(st, resp, n);
	h_finish(st, OK, NULL);
	free(resp);
	free(kv);
	free(value);
}

/*
 * A large Range answer is rewritten as it streams: whole and unprefixed when it
 * is right; when a key of another tenant comes after the first bytes went out,
 * the client's stream is reset (INTERNAL_ERROR) and no more of the message comes.
 */
static void test_big_range_streamed(void **state)
{
	static int foreign = 1;
	struct h_conn *c = h_connect(&H);
	uint8_t req[64], *want = malloc(300 * 1024);
	const uint8_t *msg, *kv, *key, *value;
	size_t len, kvlen, keylen, valuelen;
	struct h_stream *st;

	(void)state;
	assert_non_null(want);
	big_value(want, 300 * 1024, 3);
	H.script = answer_big_range;
	H.script_ctx = NULL;
	st = h_call(c, RANGE, req, range_request(req, "a"), 1);
	wait_status(st);
	assert_int_equal(st->grpc_status, OK);
	assert_true(h_next_message(st, &msg, &len));
	assert_true(h_pb_find(msg, len, 2, &kv, &kvlen));
	assert_true(h_pb_find(kv, kvlen, 1, &key, &keylen));
	assert_true(h_pb_find(kv, kvlen, 5, &value, &valuelen));
	assert_int_equal(keylen, 1);
	assert_memory_equal(key, "a", 1);
	assert_int_equal(valuelen, 300 * 1024);
	assert_memory_equal(value, want, valuelen);
	h_drop_message(st, len);

	/*
	 * Many in a row on one upstream connection: what a call held back while its
	 * client read (above the high-water mark) is given back to the connection's
	 * window when its stream ends, or the window (16 MiB) runs dry and calls hang.
	 */
	for (int i = 0; i < 64; i++) {
		st = h_call(c, RANGE, req, range_request(req, "a"), 1);
		wait_status(st);
		assert_int_equal(st->grpc_status, OK);
		assert_true(h_next_message(st, &msg, &len));
		h_drop_message(st, len);
	}

	/* the answer's headers went out: the stream is reset, the half message never completes */
	H.script_ctx = &foreign;
	st = h_call(c, RANGE, req, range_request(req, "a"), 1);
	assert_int_equal(h_run_until_fn(&H, stream_closed, st, 3000), 0);
	assert_int_equal(st->rst_code, NGHTTP2_INTERNAL_ERROR);
	assert_false(h_next_message(st, &msg, &len));
	assert_quiescent();
	free(want);
}

/*
 * A byte queue sized from a message's gRPC header ends at the message's size,
 * growing with what arrives (twice it), never with what the peer only declares.
 */
static void test_reader_expect(void **state)
{
	struct grpc_reader r = { { 0 } };
	uint8_t head[5] = { 0, 0, 0x01, 0x86, 0xa0 }; /* 100,000 bytes */
	uint8_t big[5] = { 0, 0x04, 0, 0, 0 };         /* 64 MiB */
	uint8_t *chunk = calloc(1, 100000);
	const uint8_t *msg;
	uint8_t flag;
	size_t len, declared, grown = 0, cap;

	(void)state;
	assert_non_null(chunk);
	bq_append(&r.buf, big, 5);
	grpc_reader_expect(&r, SIZE_MAX); /* a prefix alone reserves 64 KiB, not 64 MiB */
	assert_true(r.buf.cap <= 65536);
	bq_free(&r.buf);
	bq_append(&r.buf, head, 5);
	grpc_reader_expect(&r, 99999); /* above the limit: nothing reserved */
	assert_true(r.buf.cap < 1000);
	grpc_reader_expect(&r, 100000);
	cap = r.buf.cap;
	for (size_t off = 0; off < 100000; off += 10000) {
		bq_append(&r.buf, chunk + off, 10000);
		grpc_reader_expect(&r, 100000);
		grown += r.buf.cap != cap;
		cap = r.buf.cap;
	}
	assert_true(grown <= 2); /* geometric: twice what arrived, then the size */
	assert_int_equal(r.buf.cap, 100005);
	assert_true(grpc_reader_next(&r, &flag, &msg, &len, &declared));
	assert_int_equal(len, 100000);
	grpc_reader_drop(&r, len);
	assert_int_equal(bq_pending(&r.buf), 0);
	bq_free(&r.buf);
	free(chunk);
}

/* Large blocks are kept while they are used, and given back after two idle trims. */
static void test_pool_big_blocks(void **state)
{
	uint8_t *a, *b;

	(void)state;
	a = pool_alloc(300 * 1024);
	memset(a, 1, 300 * 1024);
	pool_free(a);
	b = pool_alloc(200 * 1024); /* the kept block, large enough */
	memset(b, 2, 200 * 1024);
	b = pool_realloc(b, 250 * 1024);
	assert_int_equal(b[200 * 1024 - 1], 2);
	pool_free(b);
	for (int i = 0; i < 8; i++) /* more than it keeps: the rest is freed */
		pool_free(pool_alloc((size_t)(i + 1) * 512 * 1024));
	pool_trim(); /* used since the last trim: kept */
	pool_trim(); /* not used since: given back (valgrind sees no leak either way) */
}

/* Many calls at once on one connection: each gets its own answer. */
static void test_many_calls_interleaved(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	struct h_stream *st[50];
	uint8_t req[64];

	(void)state;
	H.script = answer_range;
	H.script_ctx = &seen;
	for (int i = 0; i < 50; i++) {
		char key[16];

		snprintf(key, sizeof(key), "k%d", i);
		st[i] = h_call(c, RANGE, req, range_request(req, key), 1);
	}
	for (int i = 0; i < 50; i++) {
		const uint8_t *msg;
		size_t len;
		char key[128], want[16];

		wait_status(st[i]);
		assert_int_equal(st[i]->grpc_status, OK);
		assert_true(h_next_message(st[i], &msg, &len));
		first_key(msg, len, key, sizeof(key));
		snprintf(want, sizeof(want), "k%d", i);
		assert_string_equal(key, want);
	}
	assert_int_equal(seen.messages, 50);
	assert_quiescent();
}

/* etcd's own error (Trailers-Only) reaches the client as it was. */
static void test_upstream_error_forwarded(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 1);
	h_finish(seen.st, NOT_FOUND, "etcdserver: not here");
	wait_status(st);
	assert_int_equal(st->grpc_status, NOT_FOUND);
	assert_string_equal(st->grpc_message, "etcdserver: not here");
	assert_quiescent();
}

/* The upstream resets the stream mid-call: the client gets INTERNAL, naming the HTTP/2 error. */
static void test_upstream_reset(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 1);
	h_reset(seen.st, NGHTTP2_INTERNAL_ERROR);
	wait_status(st);
	assert_int_equal(st->grpc_status, INTERNAL);
	assert_non_null(strstr(st->grpc_message, "reset"));
	assert_quiescent();
}

/* REFUSED_STREAM from upstream is UNAVAILABLE: safe for the client to retry. */
static void test_upstream_refused(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 1);
	h_reset(seen.st, NGHTTP2_REFUSED_STREAM);
	wait_status(st);
	assert_int_equal(st->grpc_status, UNAVAILABLE);
	assert_quiescent();
}

static int reconnected(struct harness *h, void *arg)
{
	(void)arg;
	return h->peer_connections >= 2 && h->ready_calls >= 2;
}

/* The upstream connection dies with calls in flight: UNAVAILABLE, then it is back. */
static void test_upstream_connection_lost(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t req[64];
	struct h_stream *st, *again;

	(void)state;
	st = held_range(c, &seen, 1);
	h_drop_connection(seen.st);
	wait_status(st);
	assert_int_equal(st->grpc_status, UNAVAILABLE);
	assert_non_null(strstr(st->grpc_message, "lost"));
	assert_quiescent();
	/* the native reconnects (after its backoff) and serves again */
	assert_int_equal(h_run_until_fn(&H, reconnected, NULL, 5000), 0);
	H.script = answer_range;
	memset(&seen, 0, sizeof(seen));
	again = h_call(c, RANGE, req, range_request(req, "bar"), 1);
	wait_status(again);
	assert_int_equal(again->grpc_status, OK);
	assert_quiescent();
}

/* The client cancels while etcd has not answered: the upstream stream is cancelled too. */
static void test_client_cancel(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 1);
	h_cancel(st);
	assert_int_equal(h_run_until_fn(&H, stream_closed, seen.st, 3000), 0);
	assert_int_equal(seen.st->rst_code, NGHTTP2_CANCEL);
	assert_quiescent();
	/* a late answer for the cancelled stream goes nowhere and breaks nothing */
	h_finish(seen.st, OK, NULL);
	h_run_for(&H, 20);
	assert_quiescent();
}

/* The client's connection goes with calls in flight: every upstream stream is cancelled. */
static void test_client_connection_closed(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t req[64];
	struct h_stream *up[3];

	(void)state;
	H.script = hold;
	H.script_ctx = &seen;
	for (int i = 0; i < 3; i++) {
		seen.messages = 0;
		h_call(c, RANGE, req, range_request(req, "foo"), 1);
		assert_int_equal(h_run_until_fn(&H, peer_saw_message, &seen, 3000), 0);
		up[i] = seen.st;
	}
	h_conn_close(c);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(h_run_until_fn(&H, stream_closed, up[i], 3000), 0);
		assert_int_equal(up[i]->rst_code, NGHTTP2_CANCEL);
	}
	assert_quiescent();
	assert_int_equal((int)h_client_conns(&H), 0);
}

/* A request that is not a valid message is answered by the proxy; etcd never sees it. */
static void test_malformed_request(void **state)
{
	struct h_conn *c = h_connect(&H);
	static const uint8_t garbage[] = { 0x0a, 0x7f, 'x' }; /* key of 127 bytes, 1 there */
	struct h_stream *st;

	(void)state;
	H.script = hold;
	st = h_call(c, RANGE, garbage, sizeof(garbage), 1);
	wait_status(st);
	assert_int_equal(st->grpc_status, INVALID_ARGUMENT);
	assert_non_null(strstr(st->grpc_message, "etcdproxy"));
	assert_int_equal(H.peer_streams, 0);
	assert_quiescent();
}

/* A method the proxy does not carry: answered locally, never forwarded. */
static void test_unknown_method(void **state)
{
	struct h_conn *c = h_connect(&H);
	struct h_stream *st;

	(void)state;
	H.script = hold;
	st = h_call(c, "/etcdserverpb.Nope/Nothing", (const uint8_t *)"", 0, 1);
	wait_status(st);
	assert_int_equal(st->grpc_status, UNIMPLEMENTED);
	assert_int_equal(H.peer_streams, 0);
	assert_quiescent();
}

/* The request ends inside a message (a length prefix that promises more). */
static void test_request_ends_inside_message(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	static const uint8_t partial[] = { 0, 0, 0, 0, 100, 0x0a, 0x01 }; /* 100 promised, 2 sent */
	struct h_stream *st;

	(void)state;
	H.script = hold;
	H.script_ctx = &seen;
	st = h_call(c, RANGE, NULL, 0, 0);
	h_send_raw(st, partial, sizeof(partial), 1);
	wait_status(st);
	assert_int_equal(st->grpc_status, INTERNAL);
	assert_quiescent();
}

/* A Watch stream: created, events rewritten, then the client cancels it. */
static void test_watch_stream(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t create[64], create_in[64], resp[512], ev[256], kv[256];
	size_t n, k, e;
	struct h_stream *st;
	const uint8_t *msg, *events, *evkv, *key;
	size_t len, evlen, evkvlen, keylen;

	(void)state;
	H.script = hold;
	H.script_ctx = &seen;
	n = h_pb_bytes(create_in, 1, "foo", 3);
	n = h_pb_bytes(create, 1, create_in, n);
	st = h_call(c, WATCH, create, n, 0);
	assert_int_equal(h_run_until_fn(&H, peer_saw_message, &seen, 3000), 0);
	assert_string_equal(seen.key, "/t/foo");
	/* created */
	n = header(resp, 10);
	n += h_pb_uint(resp + n, 2, 1);
	n += h_pb_uint(resp + n, 3, 1);
	h_reply(seen.st, resp, n);
	/* one PUT event of /t/foo */
	k = key_value(kv, "/t/foo", "v1");
	e = h_pb_uint(ev, 1, 0);
	e += h_pb_bytes(ev + e, 2, kv, k);
	n = header(resp, 11);
	n += h_pb_uint(resp + n, 2, 1);
	n += h_pb_bytes(resp + n, 11, ev, e);
	h_reply(seen.st, resp, n);
	h_run_for(&H, 30);
	assert_true(h_next_message(st, &msg, &len)); /* created */
	h_drop_message(st, len);
	assert_true(h_next_message(st, &msg, &len)); /* the event */
	assert_true(h_pb_find(msg, len, 11, &events, &evlen));
	assert_true(h_pb_find(events, evlen, 2, &evkv, &evkvlen));
	assert_true(h_pb_find(evkv, evkvlen, 1, &key, &keylen));
	assert_int_equal(keylen, 3);
	assert_memory_equal(key, "foo", 3);
	h_drop_message(st, len);
	assert_int_equal(st->closed, 0);
	h_cancel(st);
	assert_int_equal(h_run_until_fn(&H, stream_closed, seen.st, 3000), 0);
	assert_int_equal(seen.st->rst_code, NGHTTP2_CANCEL);
	assert_quiescent();
}

/* etcd ends a stream while the client still sends: the client gets the status, nothing stays. */
static void test_upstream_ends_first(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t create[64], create_in[64];
	size_t n;
	struct h_stream *st;

	(void)state;
	H.script = hold;
	H.script_ctx = &seen;
	n = h_pb_bytes(create_in, 1, "foo", 3);
	n = h_pb_bytes(create, 1, create_in, n);
	st = h_call(c, WATCH, create, n, 0);
	assert_int_equal(h_run_until_fn(&H, peer_saw_message, &seen, 3000), 0);
	h_finish(seen.st, UNAVAILABLE, "etcdserver: leader changed");
	wait_status(st);
	assert_int_equal(st->grpc_status, UNAVAILABLE);
	assert_string_equal(st->grpc_message, "etcdserver: leader changed");
	assert_int_equal(st->rst_code, NGHTTP2_NO_ERROR); /* the proxy closed the client's half */
	assert_int_equal(h_run_until_fn(&H, stream_closed, seen.st, 3000), 0);
	assert_quiescent();
}

/* The client half-closes first, the answer comes later: the ordinary unary order. */
static void test_client_ends_first(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t resp[512];
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 0);
	h_send(st, NULL, 0, 1);
	h_run_for(&H, 10);
	assert_int_equal(seen.ends, 1);
	h_reply(seen.st, resp, range_response(resp, "/t/foo", "v"));
	h_finish(seen.st, OK, NULL);
	wait_status(st);
	assert_int_equal(st->grpc_status, OK);
	assert_quiescent();
}

/* A response naming a key outside the tenant is never shown to the client. */
static void test_foreign_key_in_response(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t resp[512];
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 1);
	h_reply(seen.st, resp, range_response(resp, "/registry/secrets/x", "secret"));
	h_finish(seen.st, OK, NULL);
	wait_status(st);
	assert_int_not_equal(st->grpc_status, OK);
	assert_true(st->in.len == 0 || memmem(st->in.data, st->in.len, "secret", 6) == NULL);
	assert_quiescent();
}

/* Answer a LeaseGrant with lease 0x77 and every Put (the ownership record) with OK. */
static void answer_grant(struct harness *h, struct h_stream *st, const uint8_t *msg, size_t len)
{
	struct seen *seen = h->script_ctx;
	uint8_t resp[128];
	size_t n;

	(void)len;
	if (msg == NULL)
		return;
	seen->messages++;
	if (strcmp(st->path, GRANT) == 0) {
		n = header(resp, 3);
		n += h_pb_uint(resp + n, 2, 0x77);
		n += h_pb_uint(resp + n, 3, 60);
		h_reply(st, resp, n);
		h_finish(st, OK, NULL);
	} else if (strcmp(st->path, PUT) == 0) {
		request_key(msg, len, 0, seen->key, sizeof(seen->key));
		if (seen->ends > 0) { /* told to fail the record */
			h_reset(st, NGHTTP2_INTERNAL_ERROR);
			return;
		}
		n = header(resp, 4);
		h_reply(st, resp, n);
		h_finish(st, OK, NULL);
	} else {
		h_finish(st, UNIMPLEMENTED, "not in this script");
	}
}

/* LeaseGrant: the proxy's own call records the owner before the client hears of the lease. */
static void test_lease_grant_recorded(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t req[16];
	struct h_stream *st;
	const uint8_t *msg;
	size_t len;

	(void)state;
	H.script = answer_grant;
	H.script_ctx = &seen;
	st = h_call(c, GRANT, req, h_pb_uint(req, 1, 60), 1);
	wait_status(st);
	assert_int_equal(st->grpc_status, OK);
	assert_true(h_next_message(st, &msg, &len));
	assert_int_equal(seen.messages, 2); /* the grant and the record */
	assert_non_null(strstr(seen.key, EP_OWN_PREFIX));
	assert_quiescent();
}

/* The owner cannot be recorded: the client is told, not handed an unowned lease. */
static void test_lease_record_fails(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t req[16];
	struct h_stream *st;

	(void)state;
	H.script = answer_grant;
	H.script_ctx = &seen;
	seen.ends = 1; /* reset the record's Put */
	st = h_call(c, GRANT, req, h_pb_uint(req, 1, 60), 1);
	wait_status(st);
	assert_int_equal(st->grpc_status, UNAVAILABLE);
	assert_non_null(strstr(st->grpc_message, "owner"));
	assert_quiescent();
}

/* A graceful stop lets the call in flight finish, then reports stopped. */
static void test_graceful_stop_drains(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	uint8_t resp[512];
	struct h_stream *st;

	(void)state;
	st = held_range(c, &seen, 1);
	H_OPS(&H)->stop(H.native, 1);
	h_run_for(&H, 50);
	assert_int_equal(H.stopped, 0);
	h_reply(seen.st, resp, range_response(resp, "/t/foo", "v"));
	h_finish(seen.st, OK, NULL);
	wait_status(st);
	assert_int_equal(st->grpc_status, OK);
	h_conn_close(c);
	assert_int_equal(h_run_until(&H, &H.stopped, 5000), 0);
}

/* spec.rateLimit's bucket: refill by time, never above the burst, one token per call. */
static void test_rate_bucket(void **state)
{
	double tokens = 3;
	uint64_t last = 1000000;

	(void)state;
	/* a full bucket of 3: three calls at once, the fourth waits */
	assert_true(rl_bucket_take(&tokens, &last, 10, 3, 1000000));
	assert_true(rl_bucket_take(&tokens, &last, 10, 3, 1000000));
	assert_true(rl_bucket_take(&tokens, &last, 10, 3, 1000000));
	assert_false(rl_bucket_take(&tokens, &last, 10, 3, 1000000));
	/* at 10 per second the next token is 100 ms away */
	assert_int_equal(rl_bucket_wait_us(tokens, 10) / 1000, 100);
	assert_false(rl_bucket_take(&tokens, &last, 10, 3, 1099000));
	assert_true(rl_bucket_take(&tokens, &last, 10, 3, 1100001));
	/* a long pause fills it up to the burst, no more */
	for (int i = 0; i < 3; i++)
		assert_true(rl_bucket_take(&tokens, &last, 10, 3, 60000000));
	assert_false(rl_bucket_take(&tokens, &last, 10, 3, 60000000));
	/* a clock that does not move gives nothing */
	assert_false(rl_bucket_take(&tokens, &last, 10, 3, 59000000));
	/* 1000 calls over 10 s at 10 per second: 100 pass, plus the burst */
	{
		int passed = 0;

		tokens = 3;
		last = 0;
		for (uint64_t t = 0; t < 10000000; t += 10000)
			passed += rl_bucket_take(&tokens, &last, 10, 3, t);
		assert_in_range(passed, 101, 103);
	}
}

/*
 * spec.rateLimit's queue, set and removed live (policy_changed): first come,
 * first served, bounded in length (a full queue refuses at once) and in time
 * (a call that waited max_wait is refused); without the limit all pass.
 */
static void test_rate_queue(void **state)
{
	struct seen seen = { 0 };
	struct h_conn *c = h_connect(&H);
	struct h_stream *st[4], *more[5];
	uint8_t req[64];
	const char *err = NULL;

	(void)state;
	H.script = answer_range;
	H.script_ctx = &seen;
	/* 2 per second, burst 1: one call now, the next in 500 ms, the one after in 1000 ms */
	H.tenant.policy_json = "{\"rate_limit\": {\"requests_per_second\": 2, \"burst\": 1, "
			       "\"max_wait_ms\": 700, \"max_queue\": 2, \"max_watches\": 0}}";
	assert_int_equal(H_OPS(&H)->policy_changed(H.native, &err), 0);
	for (int i = 0; i < 4; i++) {
		char key[8];

		snprintf(key, sizeof(key), "k%d", i);
		st[i] = h_call(c, RANGE, req, range_request(req, key), 1);
	}
	wait_status(st[3]);
	assert_int_equal(st[3]->grpc_status, 8); /* RESOURCE_EXHAUSTED: two wait already */
	assert_non_null(strstr(st[3]->grpc_message, "etcdproxy: rate limit: 2 calls already wait"));
	wait_status(st[0]);
	assert_int_equal(st[0]->grpc_status, OK); /* the burst's token */
	assert_int_equal(st[1]->grpc_status, -1); /* waiting its turn */
	assert_int_equal(st[2]->grpc_status, -1);
	wait_status(st[1]);
	assert_int_equal(st[1]->grpc_status, OK);
	assert_int_equal(st[2]->grpc_status, -1); /* behind it, nobody overtook */
	wait_status(st[2]);
	assert_int_equal(st[2]->grpc_status, 8); /* its token is 1000 ms away, it may wait 700 */
	assert_non_null(strstr(st[2]->grpc_message, "etcdproxy: rate limit: waited"));
	assert_int_equal(seen.messages, 2);

	/* the limit removed by a reload: everything passes at once */
	H.tenant.policy_json = "{}";
	assert_int_equal(H_OPS(&H)->policy_changed(H.native, &err), 0);
	for (int i = 0; i < 5; i++)
		more[i] = h_call(c, RANGE, req, range_request(req, "again"), 1);
	for (int i = 0; i < 5; i++) {
		wait_status(more[i]);
		assert_int_equal(more[i]->grpc_status, OK);
	}
	assert_quiescent();
}

/* bytesPerSecond's bucket: a big message runs it into debt, and the debt is paid by time. */
static void test_rate_bytes(void **state)
{
	double tokens = 1000; /* 1000 bytes per second, one second's worth */
	uint64_t last = 0;

	(void)state;
	assert_int_equal(rl_debt_wait_us(tokens, 1000), 0);
	tokens -= 3000; /* a 3000-byte message went through: 2000 bytes of debt */
	assert_int_equal(rl_debt_wait_us(tokens, 1000) / 1000, 2000);
	rl_bucket_refill(&tokens, &last, 1000, 1000, 1500000);
	assert_true(tokens < 0);
	assert_int_equal(rl_debt_wait_us(tokens, 1000) / 1000, 500);
	rl_bucket_refill(&tokens, &last, 1000, 1000, 2000000);
	assert_int_equal(rl_debt_wait_us(tokens, 1000), 0);
	/* never above the burst */
	rl_bucket_refill(&tokens, &last, 1000, 1000, 60000000);
	assert_true(tokens <= 1000.0);
	/* a bucket without a rate never waits */
	assert_int_equal(rl_debt_wait_us(-5, 0), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rate_bytes),
		cmocka_unit_test_setup_teardown(test_rate_queue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unary_rewritten_both_ways, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_messages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_big_range_streamed, setup, teardown),
		cmocka_unit_test(test_reader_expect),
		cmocka_unit_test(test_pool_big_blocks),
		cmocka_unit_test_setup_teardown(test_many_calls_interleaved, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upstream_error_forwarded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upstream_reset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upstream_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upstream_connection_lost, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_cancel, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_connection_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_request, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_method, setup, teardown),
		cmocka_unit_test_setup_teardown(test_request_ends_inside_message, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watch_stream, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upstream_ends_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_ends_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreign_key_in_response, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lease_grant_recorded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lease_record_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_graceful_stop_drains, setup, teardown),
		cmocka_unit_test(test_rate_bucket),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
