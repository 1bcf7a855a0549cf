/*
 * spec.quota's accounting (plugins/backend-native/usage.c): the index kept
 * by the count and the watch, and the worst case of a write, from messages
 * built field by field as etcd and its clients send them.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "pb.h"
#include "usage.h"

#define PREFIX "/t/"
#define STRIP (sizeof(PREFIX) - 1)

/* A message under construction. */
struct msg {
	uint8_t d[8192];
	size_t len;
};

static void m_bytes(struct msg *m, unsigned field, const void *data, size_t len)
{
	m->len = (size_t)(ep_pb_put_bytes(m->d + m->len, field, data, len) - m->d);
}

static void m_str(struct msg *m, unsigned field, const char *s)
{
	m_bytes(m, field, s, strlen(s));
}

static void m_msg(struct msg *m, unsigned field, const struct msg *sub)
{
	m_bytes(m, field, sub->d, sub->len);
}

static void m_uint(struct msg *m, unsigned field, uint64_t v)
{
	m->len = (size_t)(ep_pb_put_uint(m->d + m->len, field, v) - m->d);
}

/* PutRequest {key, value}, as the tenant sends it */
static struct msg put_req(const char *key, const char *value)
{
	struct msg m = { .len = 0 };

	m_str(&m, 1, key);
	m_str(&m, 2, value);
	return m;
}

/* RequestOp {request_put} */
static struct msg op_put(const char *key, const char *value)
{
	struct msg p = put_req(key, value), op = { .len = 0 };

	m_msg(&op, 2, &p);
	return op;
}

/* RequestOp {request_delete_range {key}} */
static struct msg op_delete(const char *key)
{
	struct msg d = { .len = 0 }, op = { .len = 0 };

	m_str(&d, 1, key);
	m_msg(&op, 3, &d);
	return op;
}

/* ResponseHeader {revision} */
static struct msg header(int64_t rev)
{
	struct msg h = { .len = 0 };

	m_uint(&h, 1, 0x1234); /* cluster_id */
	m_uint(&h, 3, (uint64_t)rev);
	return h;
}

/* KeyValue as the core etcd has it (prefixed key) */
static struct msg kv(const char *key, const char *value, int64_t mod)
{
	struct msg m = { .len = 0 };
	char full[256];

	snprintf(full, sizeof(full), PREFIX "%s", key);
	m_str(&m, 1, full);
	m_uint(&m, 2, (uint64_t)mod); /* create_revision */
	m_uint(&m, 3, (uint64_t)mod);
	m_uint(&m, 4, 1);
	if (value[0] != '\0')
		m_str(&m, 5, value);
	return m;
}

/* Event {type, kv} */
static struct msg event(int del, const char *key, const char *value, int64_t mod)
{
	struct msg e = { .len = 0 }, k = kv(key, value, mod);

	if (del)
		m_uint(&e, 1, 1);
	m_msg(&e, 2, &k);
	return e;
}

static struct usage U;

static int setup(void **state)
{
	(void)state;
	usage_init(&U);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	usage_free(&U);
	return 0;
}

static void put(const char *key, const char *value)
{
	usage_put(&U, (const uint8_t *)key, strlen(key), strlen(value));
}

static struct usage_delta delta(enum rw_kind kind, const struct msg *m)
{
	struct usage_delta d;

	assert_int_equal(usage_request_delta(&U, kind, m->d, m->len, &d), 0);
	return d;
}

/* ---- the index ----------------------------------------------------------------------------- */

static void test_put_over_existing(void **state)
{
	(void)state;
	put("a", "12345");
	assert_int_equal(U.keys, 1);
	assert_int_equal(U.bytes, 6);
	put("a", "12");
	assert_int_equal(U.keys, 1);
	assert_int_equal(U.bytes, 3);
	put("b", "");
	assert_int_equal(U.keys, 2);
	assert_int_equal(U.bytes, 4);
	usage_delete(&U, (const uint8_t *)"a", 1);
	assert_int_equal(U.keys, 1);
	assert_int_equal(U.bytes, 1);
	usage_delete(&U, (const uint8_t *)"a", 1); /* a delete of nothing changes nothing */
	assert_int_equal(U.keys, 1);
	assert_int_equal(usage_value_size(&U, (const uint8_t *)"a", 1), -1);
	assert_int_equal(usage_value_size(&U, (const uint8_t *)"b", 1), 0);
}

/* Many keys in and out, against a plain array: the table's probing and deletion stay right. */
static void test_many_keys(void **state)
{
	enum { N = 5000 };
	static unsigned char present[N];
	uint64_t keys = 0, bytes = 0;
	char k[32];

	(void)state;
	srand(7);
	for (int round = 0; round < 60000; round++) {
		int i = rand() % N, del = rand() % 3 == 0;
		int klen = snprintf(k, sizeof(k), "key/%d", i);
		size_t vlen = (size_t)(i % 17);

		if (del) {
			usage_delete(&U, (const uint8_t *)k, (size_t)klen);
			if (present[i]) {
				keys--;
				bytes -= (uint64_t)klen + vlen;
				present[i] = 0;
			}
		} else {
			usage_put(&U, (const uint8_t *)k, (size_t)klen, vlen);
			if (!present[i]) {
				keys++;
				bytes += (uint64_t)klen + vlen;
				present[i] = 1;
			}
		}
	}
	assert_int_equal(U.keys, keys);
	assert_int_equal(U.bytes, bytes);
	for (int i = 0; i < N; i++) {
		int klen = snprintf(k, sizeof(k), "key/%d", i);

		assert_int_equal(usage_value_size(&U, (const uint8_t *)k, (size_t)klen) >= 0,
				 present[i]);
	}
}

/* ---- what a write adds at worst ----------------------------------------------------------- */

static void test_put_delta(void **state)
{
	struct msg m = put_req("new", "vvvv");
	struct usage_delta d;

	(void)state;
	d = delta(RW_PUT, &m);
	assert_int_equal(d.keys, 1);
	assert_int_equal(d.bytes, 7);
	put("old", "vv");
	m = put_req("old", "vvvvv");
	d = delta(RW_PUT, &m);
	assert_int_equal(d.keys, 0);
	assert_int_equal(d.bytes, 3); /* the value grows by 3 */
	m = put_req("old", "v");
	d = delta(RW_PUT, &m);
	assert_int_equal(d.keys, 0);
	assert_int_equal(d.bytes, 0); /* a value that shrinks adds nothing */
	/* ignore_value keeps the value: nothing grows */
	m = put_req("old", "");
	m_uint(&m, 5, 1);
	d = delta(RW_PUT, &m);
	assert_int_equal(d.keys + d.bytes, 0);
	/* a malformed message is left to etcd */
	m.d[0] = 0xff;
	m.len = 1;
	assert_int_equal(usage_request_delta(&U, RW_PUT, m.d, m.len, &d), -1);
}

/* A streamed Put: its head (up to its key), and the value length and ignore_value after it. */
static void test_put_stream_delta(void **state)
{
	struct msg head = { .len = 0 };
	struct usage_delta d;

	(void)state;
	m_str(&head, 1, "big");
	assert_int_equal(usage_put_delta(&U, head.d, head.len, 300000, -1, &d), 0);
	assert_int_equal(d.keys, 1);
	assert_int_equal(d.bytes, 300003);
	put("big", "vv");
	assert_int_equal(usage_put_delta(&U, head.d, head.len, 300000, 0, &d), 0);
	assert_int_equal(d.keys, 0);
	assert_int_equal(d.bytes, 299998); /* the growth only */
	assert_int_equal(usage_put_delta(&U, head.d, head.len, 300000, 1, &d), 0);
	assert_int_equal(d.keys + d.bytes, 0); /* ignore_value after the value: it is kept */
	/* a value in the head counts unless one came after it; the last ignore_value counts */
	head.len = 0;
	m_str(&head, 2, "vvvvvv");
	m_uint(&head, 5, 1);
	m_str(&head, 1, "big");
	assert_int_equal(usage_put_delta(&U, head.d, head.len, -1, 0, &d), 0);
	assert_int_equal(d.bytes, 4);
	assert_int_equal(usage_put_delta(&U, head.d, head.len, -1, -1, &d), 0);
	assert_int_equal(d.bytes, 0);
	assert_int_equal(usage_put_delta(&U, head.d, head.len, 10, -1, &d), 0);
	assert_int_equal(d.bytes, 0);
	assert_int_equal(usage_put_delta(&U, head.d, head.len, 10, 0, &d), 0);
	assert_int_equal(d.bytes, 8);
	head.d[0] = 0xff; /* a malformed head is left to etcd */
	assert_int_equal(usage_put_delta(&U, head.d, head.len, 10, 0, &d), -1);
}

static void test_txn_delta(void **state)
{
	struct msg txn = { .len = 0 }, a = op_put("s1", "vv"), b = op_put("f1", "v"),
		   c = op_put("f2", "v"), del = op_delete("x"), inner = { .len = 0 }, wrap;
	struct usage_delta d;

	(void)state;
	/* success: 1 new key of 4 bytes; failure: 2 new keys of 3 bytes each and a delete */
	m_msg(&txn, 2, &a);
	m_msg(&txn, 3, &b);
	m_msg(&txn, 3, &c);
	m_msg(&txn, 3, &del);
	d = delta(RW_TXN, &txn);
	assert_int_equal(d.keys, 2);
	assert_int_equal(d.bytes, 6);
	/* an existing key costs only its growth */
	put("f1", "v");
	put("f2", "");
	d = delta(RW_TXN, &txn);
	assert_int_equal(d.keys, 1); /* success's new key now weighs more */
	assert_int_equal(d.bytes, 4);
	/* a nested txn in a branch adds its own worse branch */
	{
		struct msg n1 = op_put("n1", "12345678"), n2 = op_put("n2", "1");
		struct msg nested = { .len = 0 };

		m_msg(&nested, 2, &n1);
		m_msg(&nested, 3, &n2);
		m_msg(&inner, 4, &nested); /* RequestOp {request_txn} */
	}
	wrap = (struct msg){ .len = 0 };
	m_msg(&wrap, 2, &inner);
	m_msg(&wrap, 2, &a);
	d = delta(RW_TXN, &wrap);
	assert_int_equal(d.keys, 2);      /* n1 (or n2) and s1 */
	assert_int_equal(d.bytes, 10 + 4); /* n1's 2 + 8, s1's 2 + 2 */
	/* a txn of deletes and reads adds nothing */
	txn = (struct msg){ .len = 0 };
	m_msg(&txn, 2, &del);
	d = delta(RW_TXN, &txn);
	assert_int_equal(d.keys + d.bytes, 0);
	/* reads and deletes never count */
	d = delta(RW_DELETE_RANGE, &txn);
	assert_int_equal(d.keys + d.bytes, 0);
}

/* ---- the count and the watch ---------------------------------------------------------------- */

static void test_count_pages(void **state)
{
	struct msg resp = { .len = 0 }, h = header(42), k1 = kv("a", "111", 5), k2 = kv("b/c", "", 9);
	const uint8_t *last;
	size_t last_len;
	int64_t rev;
	int more;

	(void)state;
	m_msg(&resp, 1, &h);
	m_msg(&resp, 2, &k1);
	m_msg(&resp, 2, &k2);
	m_uint(&resp, 3, 1);
	m_uint(&resp, 4, 7);
	assert_int_equal(usage_load_page(&U, STRIP, resp.d, resp.len, &rev, &more, &last, &last_len),
			 0);
	assert_int_equal(rev, 42);
	assert_int_equal(more, 1);
	assert_int_equal(last_len, 6);
	assert_memory_equal(last, PREFIX "b/c", 6);
	assert_int_equal(U.keys, 2);
	assert_int_equal(U.bytes, 1 + 3 + 3); /* as the tenant sees them: no prefix */
}

static void test_watch_events(void **state)
{
	struct msg resp = { .len = 0 }, h = header(20);
	struct msg e1 = event(0, "a", "1234", 11), e2 = event(0, "a", "1", 12),
		   e3 = event(0, "b", "xy", 13), e4 = event(1, "a", "", 14);
	struct usage_watch w;

	(void)state;
	put("old", "v");
	U.rev = 10;
	m_msg(&resp, 1, &h);
	m_uint(&resp, 2, 0); /* watch_id */
	m_msg(&resp, 11, &e1);
	m_msg(&resp, 11, &e2); /* a put over an existing key */
	m_msg(&resp, 11, &e3);
	m_msg(&resp, 11, &e4); /* a delete (or a lease that expired: the same event) */
	assert_int_equal(usage_watch_response(&U, STRIP, resp.d, resp.len, &w), 0);
	assert_int_equal(w.canceled, 0);
	assert_int_equal(w.header_rev, 20);
	assert_int_equal(U.keys, 2);            /* old, b */
	assert_int_equal(U.bytes, 4 + 3);      /* old+v, b+xy */
	assert_int_equal(U.rev, 14);           /* the last event's revision */
	/* a delete range: one event per key */
	resp = (struct msg){ .len = 0 };
	e1 = event(1, "old", "", 15);
	e2 = event(1, "b", "", 15);
	m_msg(&resp, 11, &e1);
	m_msg(&resp, 11, &e2);
	assert_int_equal(usage_watch_response(&U, STRIP, resp.d, resp.len, &w), 0);
	assert_int_equal(U.keys, 0);
	assert_int_equal(U.bytes, 0);
}

/* A watch that fell behind a compaction is cancelled: the caller counts again. */
static void test_watch_compacted(void **state)
{
	struct msg resp = { .len = 0 }, h = header(90);
	struct usage_watch w;

	(void)state;
	m_msg(&resp, 1, &h);
	m_uint(&resp, 4, 1);  /* canceled */
	m_uint(&resp, 5, 77); /* compact_revision */
	m_str(&resp, 6, "mvcc: required revision has been compacted");
	assert_int_equal(usage_watch_response(&U, STRIP, resp.d, resp.len, &w), 0);
	assert_int_equal(w.canceled, 1);
	assert_int_equal(w.compact_revision, 77);
	assert_int_equal(w.reason_len, strlen("mvcc: required revision has been compacted"));
	/* created */
	resp = (struct msg){ .len = 0 };
	m_msg(&resp, 1, &h);
	m_uint(&resp, 3, 1);
	assert_int_equal(usage_watch_response(&U, STRIP, resp.d, resp.len, &w), 0);
	assert_int_equal(w.created, 1);
	/* an event of a key outside the prefix's length is malformed */
	resp = (struct msg){ .len = 0 };
	{
		struct msg e = { .len = 0 }, k = { .len = 0 };

		m_str(&k, 1, "x");
		m_msg(&e, 2, &k);
		m_msg(&resp, 11, &e);
	}
	assert_int_equal(usage_watch_response(&U, STRIP, resp.d, resp.len, &w), -1);
}

/* ---- answers to writes ---------------------------------------------------------------------- */

static void test_write_responses(void **state)
{
	struct msg resp = { .len = 0 }, h = header(33), del = { .len = 0 }, op = { .len = 0 };
	int64_t rev;
	int wrote;

	(void)state;
	m_msg(&resp, 1, &h);
	assert_int_equal(usage_write_response(RW_PUT, resp.d, resp.len, &rev, &wrote), 0);
	assert_int_equal(rev, 33);
	assert_int_equal(wrote, 1);
	/* a DeleteRange that deleted nothing brings no event */
	assert_int_equal(usage_write_response(RW_DELETE_RANGE, resp.d, resp.len, &rev, &wrote), 0);
	assert_int_equal(wrote, 0);
	m_uint(&resp, 2, 3); /* deleted */
	assert_int_equal(usage_write_response(RW_DELETE_RANGE, resp.d, resp.len, &rev, &wrote), 0);
	assert_int_equal(wrote, 1);
	/* a Txn whose branch only read: no event; one that put: an event */
	resp = (struct msg){ .len = 0 };
	m_msg(&resp, 1, &h);
	m_uint(&resp, 2, 0); /* succeeded = false */
	{
		struct msg range = { .len = 0 }, rop = { .len = 0 };

		m_msg(&rop, 1, &range);
		m_msg(&resp, 3, &rop);
	}
	assert_int_equal(usage_write_response(RW_TXN, resp.d, resp.len, &rev, &wrote), 0);
	assert_int_equal(wrote, 0);
	m_uint(&del, 2, 1);
	m_msg(&op, 3, &del);
	m_msg(&resp, 3, &op);
	assert_int_equal(usage_write_response(RW_TXN, resp.d, resp.len, &rev, &wrote), 0);
	assert_int_equal(wrote, 1);
	{
		struct msg putresp = { .len = 0 }, pop = { .len = 0 }, inner = { .len = 0 },
			   top = { .len = 0 }, outer = { .len = 0 };

		m_msg(&pop, 2, &putresp); /* an empty PutResponse is still there */
		m_msg(&inner, 3, &pop);
		m_msg(&top, 4, &inner); /* ResponseOp {response_txn} */
		m_msg(&outer, 1, &h);
		m_msg(&outer, 3, &top);
		assert_int_equal(usage_write_response(RW_TXN, outer.d, outer.len, &rev, &wrote), 0);
		assert_int_equal(wrote, 1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_put_over_existing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_keys, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_delta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put_stream_delta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_txn_delta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_count_pages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watch_events, setup, teardown),
		cmocka_unit_test_setup_teardown(test_watch_compacted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_responses, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
