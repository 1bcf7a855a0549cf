/*
 * Unit tests for the native backend's message rewriter (rewrite.h), driven by
 * the byte-level examples and rules of doc/wire.md.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "../../plugins/backend-native/rewrite.h"
#include "pb.h"

#define UNUSED __attribute__((unused))

#define MSG_BAD_REQUEST  "etcdproxy: malformed request"
#define MSG_BAD_RESPONSE "etcdproxy: malformed response from the core etcd"
#define MSG_NO_KEY       "etcdserver: key is not provided"
#define MSG_FOREIGN_KEY  "etcdproxy: the core etcd returned a key outside the tenant's prefix"
#define MSG_NO_LEASE     "etcdserver: requested lease not found"
#define MSG_ALARM        "etcdproxy: only Alarm GET is allowed; alarms are managed for the whole cluster"

static struct rw_ns ns_t; /* "/t/", as in doc/wire.md section 8 */

/* ---- helpers ------------------------------------------------------------------ */

/* A small protobuf writer for building test messages. */
struct pb {
	uint8_t d[8192];
	size_t n;
};

static void pb_raw(struct pb *b, const void *p, size_t n)
{
	assert_true(b->n + n <= sizeof(b->d));
	if (n)
		memcpy(b->d + b->n, p, n);
	b->n += n;
}

static void pb_varint(struct pb *b, uint64_t v)
{
	uint8_t t[10];
	size_t n = 0;

	while (v >= 0x80) {
		t[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	t[n++] = (uint8_t)v;
	pb_raw(b, t, n);
}

static void pb_bytes(struct pb *b, uint32_t field, const void *p, size_t n)
{
	pb_varint(b, (uint64_t)field << 3 | 2);
	pb_varint(b, n);
	pb_raw(b, p, n);
}

static void pb_str(struct pb *b, uint32_t field, const char *s)
{
	pb_bytes(b, field, s, strlen(s));
}

static void pb_uint(struct pb *b, uint32_t field, uint64_t v)
{
	pb_varint(b, (uint64_t)field << 3);
	pb_varint(b, v);
}

static void pb_msg(struct pb *b, uint32_t field, const struct pb *sub)
{
	pb_bytes(b, field, sub->d, sub->n);
}

static struct pb *pb_new(void)
{
	struct pb *b = calloc(1, sizeof(*b));

	assert_non_null(b);
	return b;
}

/* Hex with any spaces or '|' for readability. */
static size_t unhex(const char *s, uint8_t *out, size_t cap)
{
	size_t n = 0;
	int hi = -1;

	for (; *s; s++) {
		int v;

		if (*s >= '0' && *s <= '9')
			v = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			v = *s - 'a' + 10;
		else if (*s >= 'A' && *s <= 'F')
			v = *s - 'A' + 10;
		else
			continue;
		if (hi < 0) {
			hi = v;
		} else {
			assert_true(n < cap);
			out[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	assert_int_equal(hi, -1);
	return n;
}

static void dump_mismatch(const uint8_t *got, size_t got_len, const uint8_t *want, size_t want_len)
{
	fprintf(stderr, "got  (%zu):", got_len);
	for (size_t i = 0; i < got_len; i++)
		fprintf(stderr, " %02x", got[i]);
	fprintf(stderr, "\nwant (%zu):", want_len);
	for (size_t i = 0; i < want_len; i++)
		fprintf(stderr, " %02x", want[i]);
	fprintf(stderr, "\n");
}

static void assert_bytes(const uint8_t *got, size_t got_len, const uint8_t *want, size_t want_len)
{
	if (got_len != want_len || (want_len && memcmp(got, want, want_len) != 0)) {
		dump_mismatch(got, got_len, want, want_len);
		fail_msg("bytes differ");
	}
}

static int run(int response, enum rw_kind kind, const struct rw_ns *ns,
               const struct rw_hooks *hooks, const uint8_t *in, size_t len, struct rw_buf *out,
               struct rw_error *err)
{
	if (response)
		return rw_response(kind, ns, hooks, in, len, out, err);
	return rw_request(kind, ns, hooks, in, len, out, err);
}

/* Rewrite in (binary) and compare with want (binary). */
static void expect_bin(int response, enum rw_kind kind, const struct rw_ns *ns,
                       const struct rw_hooks *hooks, const uint8_t *in, size_t in_len,
                       const uint8_t *want, size_t want_len)
{
	struct rw_buf out = {0};
	struct rw_error err = {-1, "unset"};
	int rc = run(response, kind, ns, hooks, in, in_len, &out, &err);

	if (rc != 0)
		fail_msg("rewrite failed: %d, status %d, %s", rc, err.grpc_status,
		         err.message ? err.message : "(null)");
	assert_bytes(out.data, out.len, want, want_len);
	rw_buf_free(&out);
}

static void expect_hex(int response, enum rw_kind kind, const struct rw_ns *ns,
                       const struct rw_hooks *hooks, const char *in_hex, const char *want_hex)
{
	uint8_t in[4096], want[4096];
	size_t in_len = unhex(in_hex, in, sizeof(in));
	size_t want_len = unhex(want_hex, want, sizeof(want));

	expect_bin(response, kind, ns, hooks, in, in_len, want, want_len);
}

/* Rewrite must fail with rc/status/message and leave the output as it was. */
static void expect_fail_bin(int response, enum rw_kind kind, const struct rw_ns *ns,
                            const struct rw_hooks *hooks, const uint8_t *in, size_t in_len,
                            int want_rc, int want_status, const char *want_msg)
{
	struct rw_buf out = {0};
	struct rw_error err = {-1, NULL};
	int rc;

	out.data = malloc(8);
	assert_non_null(out.data);
	memcpy(out.data, "keep", 4);
	out.len = 4;
	out.cap = 8;
	rc = run(response, kind, ns, hooks, in, in_len, &out, &err);
	assert_int_equal(rc, want_rc);
	assert_int_equal(err.grpc_status, want_status);
	assert_non_null(err.message);
	assert_string_equal(err.message, want_msg);
	assert_int_equal(out.len, 4);
	assert_memory_equal(out.data, "keep", 4);
	rw_buf_free(&out);
}

static void expect_fail_hex(int response, enum rw_kind kind, const struct rw_ns *ns,
                            const struct rw_hooks *hooks, const char *in_hex, int want_rc,
                            int want_status, const char *want_msg)
{
	uint8_t in[4096];
	size_t in_len = unhex(in_hex, in, sizeof(in));

	expect_fail_bin(response, kind, ns, hooks, in, in_len, want_rc, want_status, want_msg);
}

#define REQ 0
#define RSP 1

/* ---- namespace ------------------------------------------------------------------ */

static void check_ns(const char *prefix, size_t len, const char *want_end, size_t want_len)
{
	struct rw_ns ns;
	uint8_t copy[64];

	memcpy(copy, prefix, len);
	assert_int_equal(rw_ns_init(&ns, copy, len), 0);
	memset(copy, 'X', sizeof(copy)); /* the namespace keeps its own copy */
	assert_int_equal(ns.prefix_len, len);
	assert_memory_equal(ns.prefix, prefix, len);
	assert_bytes(ns.prefix_end, ns.prefix_end_len, (const uint8_t *)want_end, want_len);
	rw_ns_free(&ns);
	assert_null(ns.prefix_end);
	rw_ns_free(&ns); /* twice is harmless */
}

static void test_ns_prefix_end(void **state UNUSED)
{
	check_ns("/t/", 3, "/t0", 3);
	check_ns("ab", 2, "ac", 2);
	check_ns("a\xff", 2, "b", 1);
	check_ns("a\xff\xff", 3, "b", 1);
	check_ns("\x01\xff", 2, "\x02", 1);
	check_ns("\x00", 1, "\x01", 1);
	check_ns("a\xfe", 2, "a\xff", 2);
	check_ns("\xfe\xff", 2, "\xff", 1);
}

static void test_ns_refused(void **state UNUSED)
{
	struct rw_ns ns;

	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"", 0), -EINVAL);
	assert_null(ns.prefix_end);
	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"\xff", 1), -EINVAL);
	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"\xff\xff", 2), -EINVAL);
	assert_int_equal(rw_ns_init(&ns, NULL, 3), -EINVAL);
	assert_int_equal(rw_ns_init(NULL, (const uint8_t *)"/t/", 3), -EINVAL);
	rw_ns_free(&ns);
	rw_ns_free(NULL);
	rw_buf_free(NULL);
}

/* ---- method table ----------------------------------------------------------------- */

static const struct rw_method *lookup(const char *path)
{
	return rw_method_lookup(path, strlen(path));
}

static void check_method(const char *path, enum rw_policy policy, enum rw_kind kind, int cs, int ss)
{
	const struct rw_method *m = lookup(path);

	assert_non_null(m->path);
	assert_string_equal(m->path, path);
	assert_int_equal(m->policy, policy);
	assert_int_equal(m->kind, kind);
	assert_int_equal(m->client_stream, cs);
	assert_int_equal(m->server_stream, ss);
	if (policy == RW_DENY) {
		assert_non_null(m->deny_reason);
		assert_true(strlen(m->deny_reason) > 10);
	} else {
		assert_null(m->deny_reason);
	}
}

static void check_deny(const char *path, const char *reason, int ss)
{
	check_method(path, RW_DENY, RW_NONE, 0, ss);
	if (reason)
		assert_string_equal(lookup(path)->deny_reason, reason);
}

static void test_method_known(void **state UNUSED)
{
	static const char *const auth[] = {
	    "AuthEnable",
	    "AuthDisable",
	    "AuthStatus",
	    "Authenticate",
	    "UserAdd",
	    "UserGet",
	    "UserList",
	    "UserDelete",
	    "UserChangePassword",
	    "UserGrantRole",
	    "UserRevokeRole",
	    "RoleAdd",
	    "RoleGet",
	    "RoleList",
	    "RoleDelete",
	    "RoleGrantPermission",
	    "RoleRevokePermission",
	};
	char path[128];

	check_method("/etcdserverpb.KV/Range", RW_FORWARD, RW_RANGE, 0, 0);
	check_method("/etcdserverpb.KV/Put", RW_FORWARD, RW_PUT, 0, 0);
	check_method("/etcdserverpb.KV/DeleteRange", RW_FORWARD, RW_DELETE_RANGE, 0, 0);
	check_method("/etcdserverpb.KV/Txn", RW_FORWARD, RW_TXN, 0, 0);
	check_method("/etcdserverpb.KV/Compact", RW_FORWARD, RW_COMPACT, 0, 0);
	check_method("/etcdserverpb.KV/RangeStream", RW_UNIMPLEMENTED, RW_NONE, 0, 1);
	check_method("/etcdserverpb.Watch/Watch", RW_FORWARD, RW_WATCH, 1, 1);
	check_method("/etcdserverpb.Lease/LeaseGrant", RW_FORWARD, RW_LEASE_GRANT, 0, 0);
	check_method("/etcdserverpb.Lease/LeaseRevoke", RW_FORWARD, RW_LEASE_REVOKE, 0, 0);
	check_method("/etcdserverpb.Lease/LeaseKeepAlive", RW_FORWARD, RW_LEASE_KEEPALIVE, 1, 1);
	check_method("/etcdserverpb.Lease/LeaseTimeToLive", RW_FORWARD, RW_LEASE_TTL, 0, 0);
	check_method("/etcdserverpb.Lease/LeaseLeases", RW_FORWARD, RW_LEASE_LEASES, 0, 0);
	check_method("/etcdserverpb.Maintenance/Status", RW_FORWARD, RW_STATUS, 0, 0);
	check_method("/etcdserverpb.Maintenance/Alarm", RW_FORWARD, RW_ALARM, 0, 0);
	check_deny("/etcdserverpb.Maintenance/Defragment",
	           "Defragment stalls the shared etcd member", 0);
	check_deny("/etcdserverpb.Maintenance/Hash", NULL, 0);
	check_deny("/etcdserverpb.Maintenance/HashKV", NULL, 0);
	check_deny("/etcdserverpb.Maintenance/Snapshot", "Snapshot would copy every tenant's data",
	           1);
	check_deny("/etcdserverpb.Maintenance/MoveLeader", NULL, 0);
	check_deny("/etcdserverpb.Maintenance/Downgrade", NULL, 0);
	check_method("/etcdserverpb.Cluster/MemberList", RW_LOCAL, RW_MEMBER_LIST, 0, 0);
	check_deny("/etcdserverpb.Cluster/MemberAdd",
	           "cluster membership is not the tenant's to change", 0);
	check_deny("/etcdserverpb.Cluster/MemberRemove",
	           "cluster membership is not the tenant's to change", 0);
	check_deny("/etcdserverpb.Cluster/MemberUpdate",
	           "cluster membership is not the tenant's to change", 0);
	check_deny("/etcdserverpb.Cluster/MemberPromote",
	           "cluster membership is not the tenant's to change", 0);
	for (size_t i = 0; i < sizeof(auth) / sizeof(auth[0]); i++) {
		snprintf(path, sizeof(path), "/etcdserverpb.Auth/%s", auth[i]);
		check_deny(path, "authentication and roles are managed for the whole cluster", 0);
	}
	check_method("/v3lockpb.Lock/Lock", RW_FORWARD, RW_LOCK, 0, 0);
	check_method("/v3lockpb.Lock/Unlock", RW_FORWARD, RW_UNLOCK, 0, 0);
	check_method("/v3electionpb.Election/Campaign", RW_FORWARD, RW_CAMPAIGN, 0, 0);
	check_method("/v3electionpb.Election/Proclaim", RW_FORWARD, RW_PROCLAIM, 0, 0);
	check_method("/v3electionpb.Election/Leader", RW_FORWARD, RW_LEADER, 0, 0);
	check_method("/v3electionpb.Election/Observe", RW_FORWARD, RW_LEADER, 0, 1);
	check_method("/v3electionpb.Election/Resign", RW_FORWARD, RW_RESIGN, 0, 0);
	check_method("/grpc.health.v1.Health/Check", RW_LOCAL, RW_HEALTH_CHECK, 0, 0);
}

static void check_unknown(const char *path, size_t len)
{
	const struct rw_method *m = rw_method_lookup(path, len);

	assert_non_null(m);
	assert_null(m->path);
	assert_int_equal(m->policy, RW_UNIMPLEMENTED);
	assert_null(m->deny_reason);
}

static void test_method_unknown(void **state UNUSED)
{
	static const char *const bad[] = {
	    "",
	    "/",
	    "/etcdserverpb.KV/range",
	    "/etcdserverpb.kv/Range",
	    "/ETCDSERVERPB.KV/RANGE",
	    "/etcdserverpb.KV/Rang",
	    "/etcdserverpb.KV/Ranges",
	    "etcdserverpb.KV/Range",
	    "/etcdserverpb.KV/Range/",
	    "/etcdserverpb.Lease/LeaseCheckpoint",
	    "/grpc.health.v1.Health/Watch",
	    "/v3/kv/range",
	    "/etcdserverpb.Watch/watch",
	    "/grpc.health.v1.Health/check",
	};
	const char range_nul[] = "/etcdserverpb.KV/Range\0";

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		check_unknown(bad[i], strlen(bad[i]));
	/* the length counts: a known path with a trailing NUL, or cut short, is unknown */
	check_unknown(range_nul, sizeof(range_nul) - 1);
	check_unknown("/etcdserverpb.KV/Range", 5);
	check_unknown(NULL, 0);
	/* not NUL-terminated: only (path, len) counts */
	assert_int_equal(rw_method_lookup("/etcdserverpb.KV/PutXYZ", 20)->kind, RW_PUT);
}

/* ---- doc/wire.md section 8, examples A to G ---------------------------------------------- */

/* A: with the 5-byte gRPC prefix checked as well. */
static void test_example_a(void **state UNUSED)
{
	uint8_t frame[16];
	size_t n = unhex("00 00000005 | 0a 03 666f6f", frame, sizeof(frame));
	struct rw_buf out = {0};
	struct rw_error err;
	uint8_t want[16];
	size_t want_len = unhex("00 00000008 | 0a 06 2f742f666f6f", want, sizeof(want));
	uint32_t in_len = (uint32_t)frame[1] << 24 | frame[2] << 16 | frame[3] << 8 | frame[4];

	assert_int_equal(in_len, n - 5);
	assert_int_equal(rw_request(RW_RANGE, &ns_t, NULL, frame + 5, in_len, &out, &err), 0);
	assert_int_equal(out.len, want[4]);
	assert_bytes(out.data, out.len, want + 5, want_len - 5);
	rw_buf_free(&out);
}

static void test_example_b(void **state UNUSED)
{
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a 03 666f6f 12 03 666f70",
	           "0a 06 2f742f666f6f 12 06 2f742f666f70");
	/* DeleteRange has the same key and range_end fields */
	expect_hex(REQ, RW_DELETE_RANGE, &ns_t, NULL, "0a 03 666f6f 12 03 666f70 1801",
	           "0a 06 2f742f666f6f 12 06 2f742f666f70 1801");
}

static void test_example_c(void **state UNUSED)
{
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a03666f6f 12 01 00",
	           "0a062f742f666f6f 12 03 2f7430");
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a0100 120100 4001",
	           "0a04 2f742f00 1203 2f7430 4001");
	expect_hex(REQ, RW_DELETE_RANGE, &ns_t, NULL, "0a0100 120100", "0a04 2f742f00 1203 2f7430");
}

static void test_example_d(void **state UNUSED)
{
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 05 0a 03 666f6f", "0a 08 0a 06 2f742f666f6f");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 0a 0a03666f6f 1203666f70",
	           "0a 10 0a062f742f666f6f 12062f742f666f70");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 07 0a03666f6f 3001",
	           "0a 0a 0a062f742f666f6f 3001");
	/* cancel watch_id 0 and progress requests pass unchanged */
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "12 00", "12 00");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "12 02 0805", "12 02 0805");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "1a 00", "1a 00");
}

#define HDR "0a1a 08b298eaf4988386fccd01 10e88ca4c28ff6c1dd9a01 1803 2002"

static void test_example_e(void **state UNUSED)
{
	expect_hex(RSP, RW_WATCH, &ns_t, NULL,
	           HDR "5a 2a | 12 13 0a062f742f666f6f 1002 1803 2002 2a03 62617a"
	               " | 1a 13 0a062f742f666f6f 1002 1802 2001 2a03 626172",
	           HDR "5a 24 | 12 10 0a03666f6f 1002 1803 2002 2a03 62617a"
	               " | 1a 10 0a03666f6f 1002 1802 2001 2a03 626172");
	/* DELETE foo2: a 1:1 proxy strips kv and prev_kv alike */
	expect_hex(RSP, RW_WATCH, &ns_t, NULL,
	           "5a 23 | 0801 | 12 0b 0a072f742f666f6f32 1805"
	           " | 1a 12 0a072f742f666f6f32 1004 1804 2001 2a0178",
	           "5a 1d | 0801 | 12 08 0a04666f6f32 1805"
	           " | 1a 0f 0a04666f6f32 1004 1804 2001 2a0178");
	/* watch_id -1 (10-byte varint), created, cancel_reason pass unchanged */
	expect_hex(RSP, RW_WATCH, &ns_t, NULL,
	           HDR "10ffffffffffffffffff01 1801 2001 3206 666f6f626172",
	           HDR "10ffffffffffffffffff01 1801 2001 3206 666f6f626172");
	/* two events in one response, both stripped */
	expect_hex(RSP, RW_WATCH, &ns_t, NULL,
	           "1001 5a 0a 12 08 0a062f742f616161 5a 0a 12 08 0a062f742f626262",
	           "1001 5a 07 12 05 0a03616161 5a 07 12 05 0a03626262");
}

static void test_example_f(void **state UNUSED)
{
	expect_hex(REQ, RW_TXN, &ns_t, NULL,
	           "0a0b 0801 1002 1a03666f6f 3000 | 120f 120d 0a03666f6f 120674786e76616c"
	           " | 1a07 0a05 0a03666f6f",
	           "0a0e 0801 1002 1a062f742f666f6f 3000 | 1212 1210 0a062f742f666f6f "
	           "120674786e76616c | 1a0a 0a08 0a062f742f666f6f");
	/* the Compare with a range_end (f64), before namespacing */
	expect_hex(REQ, RW_TXN, &ns_t, NULL,
	           "0a0b 0801 1a01 61 2000 8204 01 7a | 1207 0a05 0a03 666f6f",
	           "0a11 0801 1a04 2f742f61 2000 8204 04 2f742f7a | 120a 0a08 0a06 2f742f666f6f");
	/* the reply: TxnResponse.3 -> ResponseOp.1 -> RangeResponse.2 -> KeyValue.1 */
	expect_hex(RSP, RW_TXN, &ns_t, NULL,
	           "0a04180d2002 1001 1a20 0a1e 0a02180d 1216 0a062f742f666f6f 1002 1803 2002 "
	           "2a0674786e76616c 2001",
	           "0a04180d2002 1001 1a1d 0a1b 0a02180d 1213 0a03666f6f 1002 1803 2002 "
	           "2a0674786e76616c 2001");
}

static void test_example_g(void **state UNUSED)
{
	expect_hex(RSP, RW_LEASE_TTL, &ns_t, NULL, "0a02180d 1007 183b 203c 2a05 2f742f6c6b",
	           "0a02180d 1007 183b 203c 2a02 6c6b");
}

/* ---- key and range_end rules -------------------------------------------------------- */

static void test_prefix_ending_in_ff(void **state UNUSED)
{
	struct rw_ns ns;

	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"a\xff", 2), 0);
	/* from-key: the range ends at "b", never "b\0" (the carrying prefixEnd bug) */
	expect_hex(REQ, RW_RANGE, &ns, NULL, "0a03666f6f 120100", "0a05 61ff666f6f 1201 62");
	expect_hex(REQ, RW_RANGE, &ns, NULL, "0a0100 120100", "0a03 61ff00 1201 62");
	expect_hex(REQ, RW_WATCH, &ns, NULL, "0a 06 0a0100 120100", "0a 08 0a0361ff00 120162");
	/* a response key "b" (outside "a\xff") is refused rather than cut short */
	expect_fail_hex(RSP, RW_RANGE, &ns, NULL, "12 03 0a0162", -EPROTO, 13, MSG_FOREIGN_KEY);
	expect_hex(RSP, RW_RANGE, &ns, NULL, "12 05 0a0361ff62", "12 03 0a0162");
	rw_ns_free(&ns);
}

static void test_keys_every_byte(void **state UNUSED)
{
	uint8_t all[256];
	struct pb *in = pb_new(), *want = pb_new(), *kv = pb_new(), *kv2 = pb_new();
	uint8_t pfx_all[3 + 256];

	for (int i = 0; i < 256; i++)
		all[i] = (uint8_t)i;
	memcpy(pfx_all, "/t/", 3);
	memcpy(pfx_all + 3, all, 256);

	/* one key holding every byte value */
	pb_bytes(in, 1, all, 256);
	pb_bytes(in, 2, all, 256);
	pb_bytes(want, 1, pfx_all, sizeof(pfx_all));
	pb_bytes(want, 2, pfx_all, sizeof(pfx_all));
	expect_bin(REQ, RW_RANGE, &ns_t, NULL, in->d, in->n, want->d, want->n);

	/* and back */
	pb_bytes(kv, 1, pfx_all, sizeof(pfx_all));
	pb_str(kv, 5, "v");
	pb_bytes(kv2, 1, all, 256);
	pb_str(kv2, 5, "v");
	in->n = want->n = 0;
	pb_msg(in, 2, kv);
	pb_msg(want, 2, kv2);
	expect_bin(RSP, RW_RANGE, &ns_t, NULL, in->d, in->n, want->d, want->n);

	/* every single-byte key and range_end; "\0" alone is the from-key marker */
	for (int b = 0; b < 256; b++) {
		uint8_t k = (uint8_t)b, pk[4] = {'/', 't', '/', (uint8_t)b};

		in->n = want->n = 0;
		pb_bytes(in, 1, &k, 1);
		pb_bytes(in, 2, &k, 1);
		pb_bytes(want, 1, pk, 4);
		if (b == 0)
			pb_bytes(want, 2, "/t0", 3);
		else
			pb_bytes(want, 2, pk, 4);
		expect_bin(REQ, RW_RANGE, &ns_t, NULL, in->d, in->n, want->d, want->n);
	}
	free(in);
	free(want);
	free(kv);
	free(kv2);
}

static void test_prefix_with_odd_bytes(void **state UNUSED)
{
	struct rw_ns ns;

	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"\x00\x80\xff", 3), 0);
	expect_hex(REQ, RW_RANGE, &ns, NULL, "0a02ff00 120100", "0a05 0080ffff00 1202 0081");
	expect_hex(RSP, RW_PUT, &ns, NULL, "0a00 12 07 0a05 0080ff6b31", "0a00 12 04 0a02 6b31");
	rw_ns_free(&ns);
}

static void test_empty_key_refused(void **state UNUSED)
{
	/* absent key */
	expect_fail_hex(REQ, RW_RANGE, &ns_t, NULL, "", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_RANGE, &ns_t, NULL, "1203666f70", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_PUT, &ns_t, NULL, "1203626172", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_DELETE_RANGE, &ns_t, NULL, "1801", -EINVAL, 3, MSG_NO_KEY);
	/* explicit zero-length key */
	expect_fail_hex(REQ, RW_RANGE, &ns_t, NULL, "0a00", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_PUT, &ns_t, NULL, "0a00 1201 78", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_DELETE_RANGE, &ns_t, NULL, "0a00 120100", -EINVAL, 3, MSG_NO_KEY);
	/* a second, empty copy of the key is refused too */
	expect_fail_hex(REQ, RW_RANGE, &ns_t, NULL, "0a03666f6f 0a00", -EINVAL, 3, MSG_NO_KEY);
	/* Compare: absent and empty */
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "0a02 0801", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "0a04 0801 1a00", -EINVAL, 3, MSG_NO_KEY);
	/* Txn ops: range, put, delete, inside a nested txn */
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "1202 0a00", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "1204 1202 0a00", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "1a04 1a02 1801", -EINVAL, 3, MSG_NO_KEY);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "1209 2207 1205 1203 120178", -EINVAL, 3,
	                MSG_NO_KEY);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "1a08 2206 0a04 0806 1a00", -EINVAL, 3,
	                MSG_NO_KEY);
}

static void test_empty_txn_parts_pass(void **state UNUSED)
{
	/* An empty Txn, and an empty RequestOp, carry no key: etcd answers them itself. */
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "", "");
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "1200", "1200");
	/* a nested Compare is rewritten like a top-level one */
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "1a0a 2208 0a06 0806 1a02 6b31",
	           "1a0d 220b 0a09 0806 1a05 2f742f6b31");
}

static void test_watch_empty_key_mapped(void **state UNUSED)
{
	/* etcd reads an empty watch key as "\0": the tenant's "\0" is prefix || "\0" */
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 02 0a00", "0a 06 0a04 2f742f00");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 05 0a00 120100",
	           "0a 0b 0a04 2f742f00 1203 2f7430");
	/* absent: the key field is added (at the end) */
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 02 3001", "0a 08 3001 0a04 2f742f00");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 00", "0a 06 0a04 2f742f00");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 03 120100", "0a 0b 1203 2f7430 0a04 2f742f00");
}

static void test_range_end_explicit_empty(void **state UNUSED)
{
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a03666f6f 1200", "0a062f742f666f6f 1200");
	expect_hex(REQ, RW_DELETE_RANGE, &ns_t, NULL, "0a03666f6f 1200", "0a062f742f666f6f 1200");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a07 0a03666f6f 1200",
	           "0a0a 0a062f742f666f6f 1200");
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "0a08 1a03666f6f 820400",
	           "0a0b 1a062f742f666f6f 820400");
	/* "\0\0" is an ordinary range_end, only a lone "\0" means "from key" */
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a0161 12020000", "0a042f742f61 1205 2f742f0000");
}

static void test_repeated_key_fields(void **state UNUSED)
{
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a03666f6f 0a03626172",
	           "0a062f742f666f6f 0a062f742f626172");
	expect_hex(REQ, RW_PUT, &ns_t, NULL, "0a03666f6f 1201 76 0a03626172",
	           "0a062f742f666f6f 1201 76 0a062f742f626172");
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a0161 1201 62 1201 00",
	           "0a042f742f61 1204 2f742f62 1203 2f7430");
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "0a06 1a0161 1a0162",
	           "0a0c 1a042f742f61 1a042f742f62");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a06 0a0161 0a0162",
	           "0a0c 0a042f742f61 0a042f742f62");
	/* two create_requests in one WatchRequest: both rewritten */
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a03 0a0161 0a03 0a0162",
	           "0a06 0a042f742f61 0a06 0a042f742f62");
	/* RequestOp with two oneof members: both rewritten */
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "120a 0a03 0a0161 1203 0a0162",
	           "1210 0a06 0a042f742f61 1206 0a042f742f62");
	/* responses: two keys in one KeyValue, both must carry the prefix */
	expect_hex(RSP, RW_RANGE, &ns_t, NULL, "120c 0a042f742f61 0a042f742f62",
	           "1206 0a0161 0a0162");
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "120c 0a042f742f61 0a042f752f62", -EPROTO, 13,
	                MSG_FOREIGN_KEY);
}

static void test_put_value_untouched(void **state UNUSED)
{
	/* PutRequest.value is field 2 like a range_end, but it is data */
	expect_hex(REQ, RW_PUT, &ns_t, NULL, "0a03666f6f 1201 00", "0a062f742f666f6f 1201 00");
	expect_hex(REQ, RW_PUT, &ns_t, NULL, "0a03666f6f 1200 2001", "0a062f742f666f6f 1200 2001");
	/* Compare.value (f7) is data too */
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "0a0a 1003 1a0161 3a03666f6f",
	           "0a0d 1003 1a042f742f61 3a03666f6f");
}

static void test_unknown_fields_preserved(void **state UNUSED)
{
	/* fixed32 (f14), fixed64 (f15), unknown LEN (f20), the largest field number, varints */
	expect_hex(REQ, RW_RANGE, &ns_t, NULL,
	           "75 01020304 | 0a03666f6f | 79 0102030405060708 | a201 03 787878"
	           " | f8ffffff0f 05 | 2000 | 4801",
	           "75 01020304 | 0a062f742f666f6f | 79 0102030405060708 | a201 03 787878"
	           " | f8ffffff0f 05 | 2000 | 4801");
	/* unknown fields in embedded messages, next to rewritten ones */
	expect_hex(REQ, RW_TXN, &ns_t, NULL,
	           "0a11 75aabbccdd 1a0161 79 1122334455667788 | f201 02 6869",
	           "0a14 75aabbccdd 1a042f742f61 79 1122334455667788 | f201 02 6869");
	expect_hex(RSP, RW_WATCH, &ns_t, NULL, "5a 13 12 11 75aabbccdd 0a042f742f61 fd01 01020304",
	           "5a 10 12 0e 75aabbccdd 0a0161 fd01 01020304");
	/* a non-canonical tag for the key is still the key, and keeps its bytes */
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "8a00 03 666f6f", "8a00 06 2f742f666f6f");
	expect_hex(REQ, RW_PUT, &ns_t, NULL, "8a8000 03 666f6f", "8a8000 06 2f742f666f6f");
	/* non-canonical lengths are re-encoded canonically */
	expect_hex(REQ, RW_RANGE, &ns_t, NULL, "0a8300 666f6f", "0a06 2f742f666f6f");
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "0a8500 0a03666f6f", "0a08 0a062f742f666f6f");
	/* messages with nothing to rewrite are copied as they are */
	expect_hex(REQ, RW_COMPACT, &ns_t, NULL, "0864 1001 79 0102030405060708",
	           "0864 1001 79 0102030405060708");
	expect_hex(RSP, RW_STATUS, &ns_t, NULL, "0a02180d 1205 332e342e32 1880 01",
	           "0a02180d 1205 332e342e32 1880 01");
}

static void test_oneof_zero_preserved(void **state UNUSED)
{
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "0a07 1a0161 3000 2000",
	           "0a0a 1a042f742f61 3000 2000");
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "0a07 1a0161 2800 4000",
	           "0a0a 1a042f742f61 2800 4000");
	expect_hex(REQ, RW_TXN, &ns_t, NULL, "0a05 1a0161 3a00", "0a08 1a042f742f61 3a00");
}

/* A key of 125 bytes plus "/t/" crosses the 127/128 boundary of a length varint. */
static void test_varint_growth(void **state UNUSED)
{
	uint8_t key[125], pkey[128];
	struct pb *in = pb_new(), *want = pb_new(), *sub = pb_new(), *sub2 = pb_new();

	memset(key, 'k', sizeof(key));
	memcpy(pkey, "/t/", 3);
	memset(pkey + 3, 'k', sizeof(key));

	pb_bytes(in, 1, key, sizeof(key));
	pb_bytes(want, 1, pkey, sizeof(pkey));
	assert_int_equal(in->d[1], 0x7d);
	assert_int_equal(want->d[1], 0x80);
	assert_int_equal(want->d[2], 0x01);
	expect_bin(REQ, RW_RANGE, &ns_t, NULL, in->d, in->n, want->d, want->n);

	/* one level down: the create_request grows from 127 to 131 bytes */
	in->n = want->n = 0;
	pb_bytes(sub, 1, key, sizeof(key));
	pb_bytes(sub2, 1, pkey, sizeof(pkey));
	assert_int_equal(sub->n, 127);
	pb_msg(in, 1, sub);
	pb_msg(want, 1, sub2);
	expect_bin(REQ, RW_WATCH, &ns_t, NULL, in->d, in->n, want->d, want->n);

	/* and shrinks back in a response: KeyValue 128 -> 125 bytes */
	in->n = want->n = 0;
	sub->n = sub2->n = 0;
	pb_bytes(sub, 1, pkey, 126);
	pb_bytes(sub2, 1, key, 123);
	assert_int_equal(sub->n, 128);
	pb_msg(in, 2, sub);
	pb_msg(want, 2, sub2);
	expect_bin(RSP, RW_RANGE, &ns_t, NULL, in->d, in->n, want->d, want->n);
	free(in);
	free(want);
	free(sub);
	free(sub2);
}

/* A long prefix: each rewritten level's length varint grows. */
static void test_long_prefix(void **state UNUSED)
{
	uint8_t prefix[300], pkey[303];
	struct rw_ns ns;
	struct pb *in = pb_new(), *want = pb_new(), *a = pb_new(), *b = pb_new();

	memset(prefix, 'p', sizeof(prefix));
	assert_int_equal(rw_ns_init(&ns, prefix, sizeof(prefix)), 0);
	memcpy(pkey, prefix, sizeof(prefix));
	memcpy(pkey + sizeof(prefix), "foo", 3);
	/* Txn { success { put { key } } } */
	pb_str(a, 1, "foo");
	pb_msg(b, 2, a);
	pb_msg(in, 2, b);
	a->n = b->n = 0;
	pb_bytes(a, 1, pkey, sizeof(pkey));
	pb_msg(b, 2, a);
	pb_msg(want, 2, b);
	expect_bin(REQ, RW_TXN, &ns, NULL, in->d, in->n, want->d, want->n);
	/* and the reverse for a TxnResponse { responses { response_put { prev_kv } } } */
	in->n = want->n = a->n = b->n = 0;
	{
		struct pb *kv = pb_new();

		pb_bytes(kv, 1, pkey, sizeof(pkey));
		pb_uint(kv, 4, 1);
		pb_msg(a, 2, kv);
		pb_msg(b, 2, a);
		pb_msg(in, 3, b);
		kv->n = a->n = b->n = 0;
		pb_str(kv, 1, "foo");
		pb_uint(kv, 4, 1);
		pb_msg(a, 2, kv);
		pb_msg(b, 2, a);
		pb_msg(want, 3, b);
		expect_bin(RSP, RW_TXN, &ns, NULL, in->d, in->n, want->d, want->n);
		free(kv);
	}
	rw_ns_free(&ns);
	free(in);
	free(want);
	free(a);
	free(b);
}

/* ---- nested Txn ------------------------------------------------------------------- */

/* Txn nested `levels` deep (the outermost counts as 1) around a Put of key. */
static void build_txn(struct pb *out, int levels, const char *key, int64_t lease)
{
	struct pb *op = pb_new(), *inner = pb_new();

	if (levels == 1) {
		pb_str(inner, 1, key);
		pb_str(inner, 2, "v");
		if (lease)
			pb_uint(inner, 3, (uint64_t)lease);
		pb_msg(op, 2, inner);
		pb_str(out, 99, "unknown"); /* an unknown field at every level */
	} else {
		build_txn(inner, levels - 1, key, lease);
		pb_msg(op, 4, inner);
	}
	pb_msg(out, 2, op);
	free(op);
	free(inner);
}

/* TxnResponse nested `levels` deep around a RangeResponse with one key. */
static void build_txn_resp(struct pb *out, int levels, const char *key)
{
	struct pb *op = pb_new(), *inner = pb_new(), *kv = pb_new();

	pb_str(out, 1, "\x18\x05"); /* header { revision: 5 } */
	pb_uint(out, 2, 1);
	if (levels == 1) {
		pb_str(kv, 1, key);
		pb_uint(kv, 2, 7);
		pb_msg(inner, 2, kv);
		pb_msg(op, 1, inner);
	} else {
		build_txn_resp(inner, levels - 1, key);
		pb_msg(op, 4, inner);
	}
	pb_msg(out, 3, op);
	free(op);
	free(inner);
	free(kv);
}

static void test_txn_depth(void **state UNUSED)
{
	struct pb *in = pb_new(), *want = pb_new();

	build_txn(in, RW_MAX_DEPTH, "deep", 0);
	build_txn(want, RW_MAX_DEPTH, "/t/deep", 0);
	expect_bin(REQ, RW_TXN, &ns_t, NULL, in->d, in->n, want->d, want->n);

	in->n = 0;
	build_txn(in, RW_MAX_DEPTH + 1, "deep", 0);
	expect_fail_bin(REQ, RW_TXN, &ns_t, NULL, in->d, in->n, -EINVAL, 3,
	                "etcdproxy: Txn nested too deeply");

	in->n = want->n = 0;
	build_txn_resp(in, RW_MAX_DEPTH, "/t/deep");
	build_txn_resp(want, RW_MAX_DEPTH, "deep");
	expect_bin(RSP, RW_TXN, &ns_t, NULL, in->d, in->n, want->d, want->n);

	in->n = 0;
	build_txn_resp(in, RW_MAX_DEPTH + 1, "/t/deep");
	expect_fail_bin(RSP, RW_TXN, &ns_t, NULL, in->d, in->n, -EINVAL, 13,
	                "etcdproxy: Txn nested too deeply");
	free(in);
	free(want);
}

/* ---- responses ----------------------------------------------------------------------- */

static void test_response_foreign_key(void **state UNUSED)
{
	/* another tenant's key, a key shorter than the prefix, an empty and an absent key */
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "12 08 0a062f752f666f6f", -EPROTO, 13,
	                MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "12 04 0a022f74", -EPROTO, 13, MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "12 02 0a00", -EPROTO, 13, MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "12 02 1005", -EPROTO, 13, MSG_FOREIGN_KEY);
	/* the second of two kvs is foreign */
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "12 06 0a042f742f61 12 06 0a042f752f61",
	                -EPROTO, 13, MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_PUT, &ns_t, NULL, "12 05 0a03666f6f", -EPROTO, 13, MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_DELETE_RANGE, &ns_t, NULL, "1001 1a 05 0a03666f6f", -EPROTO, 13,
	                MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_WATCH, &ns_t, NULL, "5a 0a 12 03 0a0161 1a 03 0a0162", -EPROTO, 13,
	                MSG_FOREIGN_KEY);
	expect_fail_hex(RSP, RW_TXN, &ns_t, NULL, "1a09 1207 1205 0a03666f6f", -EPROTO, 13,
	                MSG_FOREIGN_KEY);
	/* the bare prefix is inside the namespace and strips to "" */
	expect_hex(RSP, RW_RANGE, &ns_t, NULL, "12 05 0a032f742f", "12 02 0a00");
}

static void test_response_kinds(void **state UNUSED)
{
	/* Put prev_kv, DeleteRange prev_kvs with count, Range more/count untouched */
	expect_hex(RSP, RW_PUT, &ns_t, NULL, "0a02180d 12 0b 0a042f742f61 2a0178 30 07",
	           "0a02180d 12 08 0a0161 2a0178 3007");
	expect_hex(RSP, RW_PUT, &ns_t, NULL, "0a02180d", "0a02180d");
	expect_hex(RSP, RW_DELETE_RANGE, &ns_t, NULL,
	           "0a02180d 1002 1a 06 0a042f742f61 1a 06 0a042f742f62",
	           "0a02180d 1002 1a 03 0a0161 1a 03 0a0162");
	expect_hex(RSP, RW_RANGE, &ns_t, NULL, "0a02180d 12 06 0a042f742f61 1801 2005",
	           "0a02180d 12 03 0a0161 1801 2005");
	/* the header's own field 2 (member_id) is never read as a key, and a key-shaped one is
	 * malformed: it is a number */
	expect_hex(RSP, RW_RANGE, &ns_t, NULL, "0a04 1007 180d", "0a04 1007 180d");
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "0a05 1203 6b6b6b", -EINVAL, 13,
	                MSG_BAD_RESPONSE);
	/* Txn: put, delete and nested txn responses */
	expect_hex(RSP, RW_TXN, &ns_t, NULL,
	           "1001 1a0a 1208 1206 0a042f742f61 1a0a 1a08 1a06 0a042f742f62"
	           " 1a0e 220c 1a0a 0a08 1206 0a042f742f63",
	           "1001 1a07 1205 1203 0a0161 1a07 1a05 1a03 0a0162"
	           " 1a0b 2209 1a07 0a05 1203 0a0163");
}

static void test_ttl_keys_filtered(void **state UNUSED)
{
	expect_hex(RSP, RW_LEASE_TTL, &ns_t, NULL,
	           "0a02180d 1007 183b 203c 2a04 2f742f61 2a04 2f782f62 2a02 2f74 2a03 2f742f"
	           " 2a00 2a04 2f742f63",
	           "0a02180d 1007 183b 203c 2a01 61 2a00 2a01 63");
	/* every key foreign: all dropped */
	expect_hex(RSP, RW_LEASE_TTL, &ns_t, NULL, "1007 2a04 2f782f62", "1007");
	/* TimeToLive requests pass (after the lease check) */
	expect_hex(REQ, RW_LEASE_TTL, &ns_t, NULL, "0807 1001", "0807 1001");
}

/* ---- lease hooks -------------------------------------------------------------------- */

struct lease_state {
	int64_t allowed[8];
	int nallowed;
	int64_t checked[16];
	int nchecked;
	int64_t granted[4];
	int ngranted;
	int nvisible;
};

static int is_allowed(struct lease_state *s, int64_t id)
{
	for (int i = 0; i < s->nallowed; i++) {
		if (s->allowed[i] == id)
			return 1;
	}
	return 0;
}

static int hook_check(void *ctx, int64_t id)
{
	struct lease_state *s = ctx;

	assert_true(s->nchecked < 16);
	s->checked[s->nchecked++] = id;
	return is_allowed(s, id) ? 0 : -ENOENT;
}

static int hook_visible(void *ctx, int64_t id)
{
	struct lease_state *s = ctx;

	s->nvisible++;
	return is_allowed(s, id);
}

static void hook_granted(void *ctx, int64_t id)
{
	struct lease_state *s = ctx;

	assert_true(s->ngranted < 4);
	s->granted[s->ngranted++] = id;
}

static void test_lease_check_put(void **state UNUSED)
{
	struct lease_state s = {.allowed = {7, -2}, .nallowed = 2};
	struct rw_hooks h = {hook_check, hook_visible, hook_granted, &s};
	struct pb *in = pb_new(), *want = pb_new();

	expect_hex(REQ, RW_PUT, &ns_t, &h, "0a0161 1201 76 1807", "0a042f742f61 1201 76 1807");
	assert_int_equal(s.nchecked, 1);
	assert_int_equal(s.checked[0], 7);
	/* lease 0 means "no lease": no check */
	s.nchecked = 0;
	expect_hex(REQ, RW_PUT, &ns_t, &h, "0a0161 1800", "0a042f742f61 1800");
	assert_int_equal(s.nchecked, 0);
	/* refused, and a negative (10-byte) ID */
	expect_fail_hex(REQ, RW_PUT, &ns_t, &h, "0a0161 1808", -ENOENT, 5, MSG_NO_LEASE);
	expect_hex(REQ, RW_PUT, &ns_t, &h, "0a0161 18feffffffffffffffff01",
	           "0a042f742f61 18feffffffffffffffff01");
	/* every occurrence is checked: a later foreign lease does not slip through */
	expect_fail_hex(REQ, RW_PUT, &ns_t, &h, "0a0161 1807 1809", -ENOENT, 5, MSG_NO_LEASE);

	/* inside a nested Txn */
	s.nchecked = 0;
	build_txn(in, 3, "k", 7);
	build_txn(want, 3, "/t/k", 7);
	expect_bin(REQ, RW_TXN, &ns_t, &h, in->d, in->n, want->d, want->n);
	assert_int_equal(s.nchecked, 1);
	in->n = 0;
	build_txn(in, 3, "k", 99);
	expect_fail_bin(REQ, RW_TXN, &ns_t, &h, in->d, in->n, -ENOENT, 5, MSG_NO_LEASE);
	/* without hooks every lease is allowed */
	in->n = want->n = 0;
	build_txn(in, 2, "k", 99);
	build_txn(want, 2, "/t/k", 99);
	expect_bin(REQ, RW_TXN, &ns_t, NULL, in->d, in->n, want->d, want->n);
	free(in);
	free(want);
}

static void test_lease_check_ids(void **state UNUSED)
{
	struct lease_state s = {.allowed = {7}, .nallowed = 1};
	struct rw_hooks h = {hook_check, hook_visible, hook_granted, &s};
	static const enum rw_kind kinds[] = {RW_LEASE_REVOKE, RW_LEASE_KEEPALIVE, RW_LEASE_TTL};

	for (size_t i = 0; i < 3; i++) {
		s.nchecked = 0;
		expect_hex(REQ, kinds[i], &ns_t, &h, "0807", "0807");
		assert_int_equal(s.nchecked, 1);
		assert_int_equal(s.checked[0], 7);
		expect_fail_hex(REQ, kinds[i], &ns_t, &h, "0808", -ENOENT, 5, MSG_NO_LEASE);
		expect_fail_hex(REQ, kinds[i], &ns_t, &h, "0807 0808", -ENOENT, 5, MSG_NO_LEASE);
		expect_fail_hex(REQ, kinds[i], &ns_t, &h, "0a0107", -EINVAL, 3, MSG_BAD_REQUEST);
		/* the response passes unchanged */
		expect_hex(RSP, kinds[i], &ns_t, &h, "0a02180d 1007 1805", "0a02180d 1007 1805");
	}
	/* LeaseGrant requests pass unchanged, a chosen ID included */
	s.nchecked = 0;
	expect_hex(REQ, RW_LEASE_GRANT, &ns_t, &h, "083c 1009", "083c 1009");
	assert_int_equal(s.nchecked, 0);
}

/* v3lockpb and v3electionpb: names and keys namespaced, leases the tenant's. */
static void test_lock_election(void **state UNUSED)
{
	struct lease_state s = {.allowed = {7}, .nallowed = 1};
	struct rw_hooks h = {hook_check, hook_visible, hook_granted, &s};

	/* LockRequest {name "l", lease 7} and CampaignRequest {name, lease, value "v"} */
	expect_hex(REQ, RW_LOCK, &ns_t, &h, "0a016c 1007", "0a042f742f6c 1007");
	assert_int_equal(s.nchecked, 1);
	expect_fail_hex(REQ, RW_LOCK, &ns_t, &h, "0a016c 1008", -ENOENT, 5, MSG_NO_LEASE);
	expect_fail_hex(REQ, RW_LOCK, &ns_t, &h, "1007", -EINVAL, 3, MSG_NO_KEY);
	expect_hex(REQ, RW_CAMPAIGN, &ns_t, &h, "0a0165 1007 1a0176", "0a042f742f65 1007 1a0176");
	expect_fail_hex(REQ, RW_CAMPAIGN, &ns_t, &h, "0a0165 1009 1a0176", -ENOENT, 5,
	                MSG_NO_LEASE);
	/* UnlockRequest {key}, LeaderRequest {name} (Leader and Observe) */
	expect_hex(REQ, RW_UNLOCK, &ns_t, &h, "0a036c2f37", "0a062f742f6c2f37");
	expect_hex(REQ, RW_LEADER, &ns_t, &h, "0a0165", "0a042f742f65");
	/* ProclaimRequest {leader {name, key, rev 3, lease 7}, value}; ResignRequest {leader} */
	expect_hex(REQ, RW_PROCLAIM, &ns_t, &h, "0a0c 0a0165 12036500 37 1803 2007 1201 77",
	           "0a12 0a042f742f65 12062f742f650037 1803 2007 1201 77");
	expect_hex(REQ, RW_RESIGN, &ns_t, &h, "0a0a 0a0165 12036500 37 2007",
	           "0a10 0a042f742f65 12062f742f650037 2007");
	expect_fail_hex(REQ, RW_RESIGN, &ns_t, &h, "0a0a 0a0165 12036500 37 2008", -ENOENT, 5,
	                MSG_NO_LEASE);
	/* LockResponse {header, key}: the key loses the prefix; a foreign one is refused */
	expect_hex(RSP, RW_LOCK, &ns_t, &h, "0a02180d 12062f742f6c2f37", "0a02180d 12036c2f37");
	expect_fail_hex(RSP, RW_LOCK, &ns_t, &h, "0a02180d 12062f752f6c2f37", -EPROTO, 13,
	                MSG_FOREIGN_KEY);
	/* CampaignResponse {header, leader {name, key, rev, lease}} */
	expect_hex(RSP, RW_CAMPAIGN, &ns_t, &h, "0a02180d 1210 0a042f742f65 12062f742f650037 1803",
	           "0a02180d 120a 0a0165 12036500 37 1803");
	/* LeaderResponse {header, kv}: Leader and each message of Observe */
	expect_hex(RSP, RW_LEADER, &ns_t, &h, "0a02180d 120b 0a062f742f650037 2a0176",
	           "0a02180d 1208 0a036500 37 2a0176");
	/* Unlock, Proclaim and Resign answer with a header only */
	expect_hex(RSP, RW_UNLOCK, &ns_t, &h, "0a02180d", "0a02180d");
	expect_hex(RSP, RW_PROCLAIM, &ns_t, &h, "0a02180d", "0a02180d");
	expect_hex(RSP, RW_RESIGN, &ns_t, &h, "0a02180d", "0a02180d");
}

static void test_lease_granted(void **state UNUSED)
{
	struct lease_state s = {.nallowed = 0};
	struct rw_hooks h = {hook_check, hook_visible, hook_granted, &s};

	expect_hex(RSP, RW_LEASE_GRANT, &ns_t, &h, "0a02180d 10e807 183c", "0a02180d 10e807 183c");
	assert_int_equal(s.ngranted, 1);
	assert_int_equal(s.granted[0], 1000);
	/* with an error, without an ID, or malformed: nothing granted */
	expect_hex(RSP, RW_LEASE_GRANT, &ns_t, &h, "10e807 183c 2203 657272",
	           "10e807 183c 2203 657272");
	expect_hex(RSP, RW_LEASE_GRANT, &ns_t, &h, "0a02180d 183c", "0a02180d 183c");
	expect_fail_hex(RSP, RW_LEASE_GRANT, &ns_t, &h, "10e807 183c 2205 65", -EINVAL, 13,
	                MSG_BAD_RESPONSE);
	assert_int_equal(s.ngranted, 1);
	/* an empty error field is no error */
	expect_hex(RSP, RW_LEASE_GRANT, &ns_t, &h, "1005 2200", "1005 2200");
	assert_int_equal(s.ngranted, 2);
	assert_int_equal(s.granted[1], 5);
}

static void test_lease_leases_filtered(void **state UNUSED)
{
	struct lease_state s = {.allowed = {1, 3}, .nallowed = 2};
	struct rw_hooks h = {hook_check, hook_visible, hook_granted, &s};

	expect_hex(RSP, RW_LEASE_LEASES, &ns_t, &h,
	           "0a02180d 1202 0801 1202 0802 1205 0803 f80101 1202 0804",
	           "0a02180d 1202 0801 1205 0803 f80101");
	assert_int_equal(s.nvisible, 4);
	/* all hidden; an entry without ID is lease 0 */
	expect_hex(RSP, RW_LEASE_LEASES, &ns_t, &h, "1202 0802 1200", "");
	/* last ID wins, as in protobuf */
	expect_hex(RSP, RW_LEASE_LEASES, &ns_t, &h, "1204 0802 0801 1204 0801 0802",
	           "1204 0802 0801");
	expect_fail_hex(RSP, RW_LEASE_LEASES, &ns_t, &h, "1202 0a00", -EINVAL, 13,
	                MSG_BAD_RESPONSE);
	expect_fail_hex(RSP, RW_LEASE_LEASES, &ns_t, &h, "1201 08", -EINVAL, 13, MSG_BAD_RESPONSE);
	/* without hooks everything is visible */
	expect_hex(RSP, RW_LEASE_LEASES, &ns_t, NULL, "1202 0802", "1202 0802");
	/* the request passes */
	expect_hex(REQ, RW_LEASE_LEASES, &ns_t, &h, "", "");
}

/* ---- policy by content ------------------------------------------------------------ */

static void test_alarm(void **state UNUSED)
{
	expect_hex(REQ, RW_ALARM, &ns_t, NULL, "", "");
	expect_hex(REQ, RW_ALARM, &ns_t, NULL, "0800", "0800");
	expect_hex(REQ, RW_ALARM, &ns_t, NULL, "0800 1005 1800", "0800 1005 1800");
	expect_fail_hex(REQ, RW_ALARM, &ns_t, NULL, "0801 1801", -EPERM, 7, MSG_ALARM);
	expect_fail_hex(REQ, RW_ALARM, &ns_t, NULL, "0802", -EPERM, 7, MSG_ALARM);
	expect_fail_hex(REQ, RW_ALARM, &ns_t, NULL, "0800 0801", -EPERM, 7, MSG_ALARM);
	expect_fail_hex(REQ, RW_ALARM, &ns_t, NULL, "088100", -EPERM, 7, MSG_ALARM);
	/* a non-canonical zero is still GET */
	expect_hex(REQ, RW_ALARM, &ns_t, NULL, "088000", "088000");
	expect_hex(RSP, RW_ALARM, &ns_t, NULL, "0a02180d 1204 0801 1001",
	           "0a02180d 1204 0801 1001");
}

static void test_pass_kinds(void **state UNUSED)
{
	static const enum rw_kind kinds[] = {RW_NONE,        RW_COMPACT,     RW_STATUS,
	                                     RW_LEASE_GRANT, RW_MEMBER_LIST, RW_HEALTH_CHECK};
	const char *msg = "0801 1205 68656c6c6f 1a03 0a0161 75 01020304";

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		expect_hex(REQ, kinds[i], &ns_t, NULL, msg, msg);
		expect_hex(REQ, kinds[i], &ns_t, NULL, "", "");
		expect_fail_hex(REQ, kinds[i], &ns_t, NULL, "0a05 61", -EINVAL, 3, MSG_BAD_REQUEST);
		/* answered locally, never from the core: their answers are not read */
		if (kinds[i] == RW_NONE || kinds[i] == RW_MEMBER_LIST || kinds[i] == RW_HEALTH_CHECK)
			expect_hex(RSP, kinds[i], &ns_t, NULL, msg, msg);
		expect_fail_hex(RSP, kinds[i], &ns_t, NULL, "0b", -EINVAL, 13, MSG_BAD_RESPONSE);
	}
	expect_hex(RSP, RW_HEALTH_CHECK, &ns_t, NULL, "0801", "0801");
}

/* ---- a large PutRequest, streamed (ps_head, ps_feed) ---------------------------------- */

/* A growable byte string, for messages larger than struct pb holds. */
struct big {
	uint8_t *d;
	size_t n, cap;
};

static void big_add(struct big *b, const void *p, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		/* doubling: valgrind's realloc always moves, and pieces come a byte at a time */
		b->cap = b->cap ? b->cap : 64;
		while (b->cap < b->n + n + 1)
			b->cap *= 2;
		b->d = realloc(b->d, b->cap);
		assert_non_null(b->d);
	}
	if (n)
		memcpy(b->d + b->n, p, n);
	b->n += n;
}

static void big_emit(void *ctx, const uint8_t *p, size_t len)
{
	big_add(ctx, p, len);
}

static void big_hex(struct big *b, const char *hex)
{
	uint8_t t[64];

	big_add(b, t, unhex(hex, t, sizeof(t)));
}

/* A field of N bytes of 'v' (tag given in hex). */
static void big_value(struct big *b, const char *tag_hex, size_t n)
{
	uint8_t t[10], *v = malloc(n + 1);
	size_t k = 0, m = n;

	assert_non_null(v);
	big_hex(b, tag_hex);
	while (m >= 0x80) {
		t[k++] = (uint8_t)(m | 0x80);
		m >>= 7;
	}
	t[k++] = (uint8_t)m;
	big_add(b, t, k);
	memset(v, 'v', n);
	big_add(b, v, n);
	free(v);
}

/*
 * Stream MSG in pieces of CHUNK as the proxy does: ps_head() on what arrived
 * until it finds the head, then ps_feed().  Returns 1 (OUT: the head's rewrite,
 * what went on, and the held last byte), ps_head()'s -EAGAIN, or ps_feed()'s
 * refusal (OUT: what went on before it).
 */
static struct pstream last_ps; /* put_stream()'s, at its end */

static long put_stream(const struct rw_hooks *h, const struct big *msg, size_t chunk,
		       struct big *out, struct rw_error *err)
{
	struct rw_buf head_out = { 0 };
	struct pstream s;
	size_t have = 0, off, used, scan = 0;
	long head = 0;
	int r = 0;

	out->n = 0;
	while (head == 0) {
		have = msg->n - have < chunk ? msg->n : have + chunk;
		head = ps_head(&ns_t, h, msg->d, have, msg->n, &scan, &head_out);
		assert_true(head != 0 || have < msg->n);
	}
	if (head < 0) {
		assert_int_equal(head, -EAGAIN);
		rw_buf_free(&head_out);
		return head;
	}
	assert_true((size_t)head <= have && (size_t)head < msg->n);
	big_add(out, head_out.data, head_out.len);
	rw_buf_free(&head_out);
	ps_init(&s, h, msg->n - (size_t)head, big_emit, out);
	for (off = (size_t)head; off < msg->n; off += used) {
		size_t n = off < have ? have - off : msg->n - off < chunk ? msg->n - off : chunk;

		r = ps_feed(&s, msg->d + off, n, &used, err);
		if (r < 0)
			return r;
		assert_int_equal(used, n);
		assert_true(r == 0 || off + n == msg->n);
	}
	assert_int_equal(r, 1);
	big_add(out, &s.last, 1); /* held back until here: never emitted */
	last_ps = s;
	return 1;
}

/*
 * A large Put streamed in pieces of every size comes out as the buffered
 * rewrite makes it; it is refused where that refuses it (and for a second
 * key), always before its last byte went on; a message whose key does not
 * come first (or is not fit to stream) is left to the buffered rewrite.
 */
static void test_put_stream(void **state UNUSED)
{
	static const size_t chunks[] = { 1, 2, 3, 7, 64, 1000, 16384, 300000 };
	struct lease_state ls = {.allowed = {7, -2}, .nallowed = 2};
	struct rw_hooks h = {hook_check, hook_visible, hook_granted, &ls};
	struct big msg = { 0 }, out = { 0 };
	struct rw_buf want = { 0 };
	size_t scan;
	struct rw_error err = { 0 };
	static const struct {
		const char *tail;
		int rc, status;
		const char *message;
		int buffered_accepts;
	} refused[] = {
		{ "1808", -ENOENT, 5, MSG_NO_LEASE, 0 },      /* a foreign lease after the value */
		{ "1807 1808", -ENOENT, 5, MSG_NO_LEASE, 0 }, /* every occurrence is checked */
		{ "0a0162", -EINVAL, 3, "etcdproxy: a large Put must carry its key once", 1 },
		{ "0801", -EINVAL, 3, MSG_BAD_REQUEST, 0 },          /* a key that is a varint */
		{ "1a0107", -EINVAL, 3, MSG_BAD_REQUEST, 0 },        /* a lease that is bytes */
		{ "220a 0000", -EINVAL, 3, MSG_BAD_REQUEST, 0 },     /* longer than the message */
		{ "28 808080808080808080 8001", -EINVAL, 3, MSG_BAD_REQUEST, 0 }, /* 11 bytes */
		{ "28 80", -EINVAL, 3, MSG_BAD_REQUEST, 0 },         /* a varint cut by the end */
		{ "80", -EINVAL, 3, MSG_BAD_REQUEST, 0 },            /* a tag cut by the end */
		{ "00", -EINVAL, 3, MSG_BAD_REQUEST, 0 },            /* field number 0 */
		{ "2f", -EINVAL, 3, MSG_BAD_REQUEST, 0 },            /* wire type 7 */
	};

	/* key, value, lease, prev_kv, an unknown string, an unknown fixed64, ignore_lease */
	for (int lease_first = 0; lease_first < 2; lease_first++) {
		msg.n = 0;
		if (lease_first)
			big_hex(&msg, "18feffffffffffffffff01"); /* -2: 10 bytes, in the head */
		big_hex(&msg, "0a0161");
		big_value(&msg, "12", 200000);
		big_hex(&msg, "1807 2001 9a06056c61746572 9106 3132333435363738 3001");
		want.len = 0;
		assert_int_equal(rw_request(RW_PUT, &ns_t, &h, msg.d, msg.n, &want, &err), 0);
		for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
			ls.nchecked = 0;
			assert_int_equal(put_stream(&h, &msg, chunks[c], &out, &err), 1);
			assert_bytes(out.d, out.n, want.data, want.len);
			assert_int_equal(ls.nchecked, 1 + lease_first);
			assert_int_equal(ls.checked[lease_first], 7);
			assert_int_equal(last_ps.value_len, 200000);
			assert_int_equal(last_ps.ignore_value, -1);
		}
	}

	/* the last value and ignore_value after the head, for the quota (usage_put_delta) */
	{
		static const struct {
			const char *head, *tail;
			int64_t value_len;
			int ignore_value;
		} seen[] = {
			{ "0a0161", "2801", 100000, 1 },
			{ "0a0161", "2801 2800", 100000, 0 },
			{ "0a0161", "1203616263", 3, -1 },  /* a second value: the last counts */
			{ "1203616263 0a0161", "", 100000, -1 },
			{ "2801 0a0161", "2800", 100000, 0 },
		};

		for (size_t i = 0; i < sizeof(seen) / sizeof(seen[0]); i++) {
			msg.n = 0;
			big_hex(&msg, seen[i].head);
			big_value(&msg, "12", 100000);
			big_hex(&msg, seen[i].tail);
			assert_int_equal(put_stream(&h, &msg, 7, &out, &err), 1);
			assert_int_equal(last_ps.value_len, seen[i].value_len);
			assert_int_equal(last_ps.ignore_value, seen[i].ignore_value);
		}
		/* no value after the head: the head's counts */
		msg.n = 0;
		big_hex(&msg, "1203616263 0a0161");
		big_value(&msg, "9a06", 100000);
		assert_int_equal(put_stream(&h, &msg, 1000, &out, &err), 1);
		assert_int_equal(last_ps.value_len, -1);
	}

	for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
		msg.n = 0;
		big_hex(&msg, "0a0161");
		big_value(&msg, "12", 100000);
		big_hex(&msg, refused[i].tail);
		for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
			err.grpc_status = 0;
			err.message = NULL;
			ls.nchecked = 0;
			assert_int_equal(put_stream(&h, &msg, chunks[c], &out, &err),
					 refused[i].rc);
			assert_int_equal(err.grpc_status, refused[i].status);
			assert_string_equal(err.message, refused[i].message);
			assert_true(out.n < msg.n + 3); /* the whole message never went on */
		}
		want.len = 0;
		ls.nchecked = 0;
		assert_int_equal(rw_request(RW_PUT, &ns_t, &h, msg.d, msg.n, &want, &err) == 0,
				 refused[i].buffered_accepts);
	}

	/* left to the buffered rewrite: the value first, a key too long, an empty key, ... */
	{
		static const char *heads[] = {
			"0a00",   /* an empty key */
			"0801",   /* a key that is a varint */
			"1808 0a0161", /* a foreign lease in the head */
			"ff",     /* a malformed tag */
		};

		for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
			msg.n = 0;
			big_hex(&msg, heads[i]);
			big_value(&msg, "12", 100000);
			ls.nchecked = 0;
			assert_int_equal(put_stream(&h, &msg, 1000, &out, &err), -EAGAIN);
		}
		msg.n = 0;
		big_value(&msg, "12", 70000);
		big_hex(&msg, "0a0161");
		assert_int_equal(put_stream(&h, &msg, 1000, &out, &err), -EAGAIN);
		msg.n = 0;
		big_value(&msg, "0a", 70000);
		big_value(&msg, "12", 10);
		assert_int_equal(put_stream(&h, &msg, 1000, &out, &err), -EAGAIN);
		/* a key with nothing after it: no last byte to hold back */
		msg.n = 0;
		big_hex(&msg, "0a0161");
		scan = 0;
		assert_int_equal(ps_head(&ns_t, &h, msg.d, msg.n, msg.n, &scan, &want), -EAGAIN);
		/* a key not yet whole: more bytes are wanted */
		scan = 0;
		assert_int_equal(ps_head(&ns_t, &h, msg.d, 2, 100, &scan, &want), 0);
		/* fields before the key are read once: the next call goes on after them */
		msg.n = 0;
		big_hex(&msg, "2001 2800 0a0161");
		scan = 0;
		assert_int_equal(ps_head(&ns_t, &h, msg.d, 5, 1000, &scan, &want), 0);
		assert_int_equal(scan, 4);
		want.len = 0;
		assert_int_equal(ps_head(&ns_t, &h, msg.d, msg.n, 1000, &scan, &want), 7);
		assert_bytes(want.data, want.len,
			     (const uint8_t *)"\x20\x01\x28\x00\x0a\x04/t/a", 10);
	}
	rw_buf_free(&want);
	free(msg.d);
	free(out.d);
}

/* One member: with ns.member_id set, every header's member_id and Status's leader are it. */
/* ---- a large RangeResponse, streamed (rs_feed) ------------------------------------ */

struct sink {
	uint8_t d[16384];
	size_t n;
};

static void sink_emit(void *ctx, const uint8_t *p, size_t len)
{
	struct sink *k = ctx;

	assert_true(k->n + len <= sizeof(k->d));
	memcpy(k->d + k->n, p, len);
	k->n += len;
}

/* MSG with every KeyValue's RW_PAD_FIELD left out (each KeyValue re-encoded). */
static void without_pads(const uint8_t *msg, size_t len, struct pb *out)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f, g;

	out->n = 0;
	while (ep_pb_next_field(&p, end, &f) > 0) {
		if (f.number == 2 && f.wire == EP_PB_LEN) {
			struct pb *kv = pb_new();
			const uint8_t *q = f.data;

			while (ep_pb_next_field(&q, f.data + f.len, &g) > 0) {
				assert_true(g.number != RW_PAD_FIELD || g.wire == EP_PB_LEN);
				if (g.number != RW_PAD_FIELD)
					pb_raw(kv, g.start, (size_t)(q - g.start));
			}
			pb_msg(out, 2, kv);
			free(kv);
		} else {
			pb_raw(out, f.start, (size_t)(p - f.start));
		}
	}
	assert_true(p == end);
}

/* The KeyValues of MSG, field by field, have the sizes in SIZES (n of them). */
static void kv_sizes(const uint8_t *msg, size_t len, size_t *sizes, size_t *n)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;

	*n = 0;
	while (ep_pb_next_field(&p, end, &f) > 0)
		if (f.number == 2 && f.wire == EP_PB_LEN)
			sizes[(*n)++] = f.len;
}

static int stream(const struct rw_ns *ns, const uint8_t *msg, size_t len, size_t chunk,
		  struct sink *out, struct rw_error *err)
{
	struct rstream s;
	size_t off = 0, used;
	int r = 0;

	out->n = 0;
	rs_init(&s, ns, NULL, len, sink_emit, out);
	while (off < len) {
		size_t n = len - off < chunk ? len - off : chunk;

		r = rs_feed(&s, msg + off, n, &used, err);
		if (r < 0)
			break;
		assert_int_equal(used, n);
		off += n;
		assert_true(r == 0 || off == len);
	}
	rs_free(&s);
	return r;
}

/*
 * Streamed in pieces of every size, a RangeResponse comes out as the buffered
 * rewrite makes it, but for one unknown field per KeyValue that keeps its size;
 * the gRPC prefix names the output's length, the header's growth included.
 */
static void test_range_stream(void **state UNUSED)
{
	static const size_t chunks[] = { 1, 2, 3, 5, 7, 64, 1000, 100000 };
	struct rw_ns ns;
	struct pb *msg = pb_new(), *hdr = pb_new(), *kv = pb_new(), *norm = pb_new();
	struct rw_buf want = { 0 };
	struct rw_error err = { 0 };
	struct sink *out = calloc(1, sizeof(*out));
	char key[300], value[3000];
	size_t in_sizes[8], out_sizes[8], n_in, n_out, len;

	assert_non_null(out);
	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"/t/", 3), 0);
	ns.member_id = 0x8000000000000001ull; /* 10 bytes where the core's took 1 */
	pb_uint(hdr, 1, 1234);
	pb_uint(hdr, 2, 7);
	pb_uint(hdr, 3, 99);
	pb_msg(msg, 1, hdr);
	memset(value, 'v', sizeof(value));
	for (int i = 0; i < 3; i++) {
		kv->n = 0;
		if (i == 0)
			snprintf(key, sizeof(key), "/t/a");
		else if (i == 1) /* 130 bytes: its length loses a byte of varint with the prefix */
			snprintf(key, sizeof(key), "/t/%0127d", 5);
		else
			snprintf(key, sizeof(key), "/t/"); /* the tenant's empty key */
		pb_str(kv, 1, key);
		pb_uint(kv, 2, 10 + (uint64_t)i);
		pb_uint(kv, 3, 20);
		pb_uint(kv, 4, 1);
		pb_bytes(kv, 5, value, i == 0 ? sizeof(value) : (size_t)(100 * i));
		pb_uint(kv, 6, 0x1234);
		pb_msg(msg, 2, kv);
	}
	pb_uint(msg, 3, 1);      /* more */
	pb_uint(msg, 4, 3);      /* count */
	pb_str(msg, 99, "later"); /* unknown fields pass */
	pb_varint(msg, 98 << 3 | 1);
	pb_raw(msg, "12345678", 8);
	assert_int_equal(rw_response(RW_RANGE, &ns, NULL, msg->d, msg->n, &want, &err), 0);
	kv_sizes(msg->d, msg->n, in_sizes, &n_in);
	for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
		assert_int_equal(stream(&ns, msg->d, msg->n, chunks[c], out, &err), 1);
		len = (size_t)out->d[1] << 24 | (size_t)out->d[2] << 16 | (size_t)out->d[3] << 8 |
		      out->d[4];
		assert_int_equal(out->d[0], 0);
		assert_int_equal(len, out->n - 5);
		assert_int_equal(len, msg->n + 9); /* the header's member_id grew by 9 */
		without_pads(out->d + 5, len, norm);
		assert_bytes(norm->d, norm->n, want.data, want.len);
		kv_sizes(out->d + 5, len, out_sizes, &n_out);
		assert_int_equal(n_out, n_in);
		for (size_t i = 0; i < n_in; i++)
			assert_int_equal(out_sizes[i], in_sizes[i]);
	}

	/* refused as the buffered rewrite refuses them */
	msg->n = 0;
	kv->n = 0;
	pb_str(kv, 1, "/u/a");
	pb_msg(msg, 2, kv);
	assert_true(stream(&ns, msg->d, msg->n, 3, out, &err) < 0);
	assert_string_equal(err.message, MSG_FOREIGN_KEY);
	/* fields in any order, a key given twice: as the buffered rewrite does */
	msg->n = 0;
	kv->n = 0;
	pb_str(kv, 5, "value first");
	pb_str(kv, 1, "/t/a");
	pb_uint(kv, 2, 300);
	pb_str(kv, 1, "/t/bb");
	pb_msg(msg, 2, kv);
	rw_buf_free(&want);
	assert_int_equal(rw_response(RW_RANGE, &ns, NULL, msg->d, msg->n, &want, &err), 0);
	for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
		assert_int_equal(stream(&ns, msg->d, msg->n, chunks[c], out, &err), 1);
		assert_int_equal(out->n - 5, msg->n);
		without_pads(out->d + 5, out->n - 5, norm);
		assert_bytes(norm->d, norm->n, want.data, want.len);
	}
	/* a KeyValue that ends the message with an empty field; a key with an overlong tag */
	{
		static const char *const cases[] = { "12080a042f742f612a00", "12078a00042f742f61" };

		for (size_t k = 0; k < 2; k++) {
			msg->n = unhex(cases[k], msg->d, sizeof(msg->d));
			rw_buf_free(&want);
			assert_int_equal(rw_response(RW_RANGE, &ns, NULL, msg->d, msg->n, &want, &err),
					 0);
			for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
				assert_int_equal(stream(&ns, msg->d, msg->n, chunks[c], out, &err), 1);
				without_pads(out->d + 5, out->n - 5, norm);
				assert_bytes(norm->d, norm->n, want.data, want.len);
			}
		}
	}
	msg->n = 0;
	kv->n = 0;
	pb_str(kv, 5, "value first");
	pb_str(kv, 1, "/t/a");
	pb_msg(msg, 2, kv);
	pb_str(msg, 2, ""); /* a KeyValue without a key */
	assert_true(stream(&ns, msg->d, msg->n, 5, out, &err) < 0);
	assert_string_equal(err.message, MSG_FOREIGN_KEY);
	msg->n = 0;
	kv->n = 0;
	pb_str(kv, 1, "/t/a");
	pb_str(kv, 1, "/u/a"); /* the second key of another tenant */
	pb_msg(msg, 2, kv);
	assert_true(stream(&ns, msg->d, msg->n, 1, out, &err) < 0);
	assert_string_equal(err.message, MSG_FOREIGN_KEY);
	msg->n = 0;
	pb_varint(msg, 2 << 3 | 2);
	pb_varint(msg, 50); /* a KeyValue longer than the message */
	pb_str(msg, 1, "/t/a");
	assert_true(stream(&ns, msg->d, msg->n, 1, out, &err) < 0);
	assert_string_equal(err.message, MSG_BAD_RESPONSE);
	msg->n = 0;
	pb_msg(msg, 1, hdr);
	pb_msg(msg, 1, hdr); /* a second header: its size would change a length already sent */
	assert_true(stream(&ns, msg->d, msg->n, 4, out, &err) < 0);

	/* a long prefix: a pad whose length takes two bytes */
	for (size_t plen = 120; plen <= 250; plen += 13) {
		struct rw_ns ns2;
		char prefix[260];

		memset(prefix, 'x', plen);
		prefix[0] = prefix[plen - 1] = '/';
		assert_int_equal(rw_ns_init(&ns2, (const uint8_t *)prefix, plen), 0);
		msg->n = 0;
		kv->n = 0;
		memcpy(key, prefix, plen);
		memcpy(key + plen, "k", 2);
		pb_str(kv, 1, key);
		pb_bytes(kv, 5, value, 500);
		pb_msg(msg, 2, kv);
		rw_buf_free(&want);
		assert_int_equal(rw_response(RW_RANGE, &ns2, NULL, msg->d, msg->n, &want, &err), 0);
		assert_int_equal(stream(&ns2, msg->d, msg->n, 7, out, &err), 1);
		assert_int_equal(out->n - 5, msg->n);
		without_pads(out->d + 5, out->n - 5, norm);
		assert_bytes(norm->d, norm->n, want.data, want.len);
		rw_ns_free(&ns2);
	}

	rw_buf_free(&want);
	rw_ns_free(&ns);
	free(msg);
	free(hdr);
	free(kv);
	free(norm);
	free(out);
}

static void test_member_identity(void **state UNUSED)
{
	struct rw_ns ns;

	assert_int_equal(rw_ns_init(&ns, (const uint8_t *)"/t/", 3), 0);
	/* unset: the core's IDs stay */
	expect_hex(RSP, RW_STATUS, &ns, NULL, "0a06 0801 1007 180d 1205 332e342e30 2007",
	           "0a06 0801 1007 180d 1205 332e342e30 2007");
	ns.member_id = 0x99;
	/* Status: header member_id 7 -> 0x99 (2 bytes), leader 7 -> 0x99; the rest as it is */
	expect_hex(RSP, RW_STATUS, &ns, NULL, "0a06 0801 1007 180d 1205 332e342e30 2007",
	           "0a07 0801 109901 180d 1205 332e342e30 209901");
	/* Range, Put, Watch, KeepAlive, Compact, Lock: the header, and nothing else changes */
	expect_hex(RSP, RW_RANGE, &ns, NULL, "0a04 1007 180d 12 06 0a042f742f61",
	           "0a05 109901 180d 12 03 0a0161");
	expect_hex(RSP, RW_PUT, &ns, NULL, "0a02 1007", "0a03 109901");
	expect_hex(RSP, RW_WATCH, &ns, NULL, "0a02 1007 1001 1801", "0a03 109901 1001 1801");
	expect_hex(RSP, RW_LEASE_KEEPALIVE, &ns, NULL, "0a02 1007 1005 183c",
	           "0a03 109901 1005 183c");
	expect_hex(RSP, RW_COMPACT, &ns, NULL, "0a02 1007", "0a03 109901");
	expect_hex(RSP, RW_LOCK, &ns, NULL, "0a02 1007 1206 2f742f6c2f37",
	           "0a03 109901 1203 6c2f37");
	/* a header without a member_id gains none */
	expect_hex(RSP, RW_PUT, &ns, NULL, "0a02 180d", "0a02 180d");
	rw_ns_free(&ns);
}

/* ---- malformed input ------------------------------------------------------------ */

static void test_malformed(void **state UNUSED)
{
	static const char *const bad[] = {
	    "0a",                                      /* tag without length */
	    "0a 05 6161",                              /* length past the end */
	    "0a 80",                                   /* truncated length varint */
	    "0a03666f6f 18",                           /* truncated varint field */
	    "0a03666f6f 18 ff",                        /* truncated varint field */
	    "0a03666f6f 0b 0c",                        /* group start/end */
	    "0a03666f6f 0c",                           /* group end */
	    "0a03666f6f 0e 00",                        /* wire type 6 */
	    "0a03666f6f 0f 00",                        /* wire type 7 */
	    "0a03666f6f 18 8080808080808080808001",    /* varint of 11 bytes */
	    "0a03666f6f 18 ffffffffffffffffff02",      /* overflows 64 bits */
	    "0a03666f6f 79 01020304",                  /* fixed64 cut short */
	    "0a03666f6f 75 0102",                      /* fixed32 cut short */
	    "02 00 0a03666f6f",                        /* field number 0 */
	    "0a03666f6f 8080808010 00",                /* tag above 32 bits */
	    "0a03666f6f 1801 0a ffffffffffffffffff01", /* huge length */
	    "0a03666f6f 12 8080808080808080808001 00",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		expect_fail_hex(REQ, RW_RANGE, &ns_t, NULL, bad[i], -EINVAL, 3, MSG_BAD_REQUEST);
		expect_fail_hex(REQ, RW_NONE, &ns_t, NULL, bad[i], -EINVAL, 3, MSG_BAD_REQUEST);
		expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, bad[i], -EINVAL, 13, MSG_BAD_RESPONSE);
	}
	/* a key field with the wrong wire type (a header elsewhere) */
	expect_fail_hex(REQ, RW_RANGE, &ns_t, NULL, "08 05", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(REQ, RW_PUT, &ns_t, NULL, "0a0161 1a0107", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(RSP, RW_RANGE, &ns_t, NULL, "1205 08 05", -EINVAL, 13, MSG_BAD_RESPONSE);
	/* nested: inside a Txn op, a Compare, a watch create and a KeyValue */
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "1205 1203 0a0561", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "0a05 1a0161 0b00", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "0a02 1803", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(REQ, RW_TXN, &ns_t, NULL, "0806", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 03 0a0561", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(REQ, RW_WATCH, &ns_t, NULL, "0a 02 0a05 61", -EINVAL, 3, MSG_BAD_REQUEST);
	expect_fail_hex(RSP, RW_WATCH, &ns_t, NULL, "5a 04 12 02 0a05", -EINVAL, 13,
	                MSG_BAD_RESPONSE);
	expect_fail_hex(RSP, RW_WATCH, &ns_t, NULL, "5805", -EINVAL, 13, MSG_BAD_RESPONSE);
	expect_fail_hex(RSP, RW_LEASE_TTL, &ns_t, NULL, "2805", -EINVAL, 13, MSG_BAD_RESPONSE);
	/* fields we do not open are not checked inside: etcd parses them itself */
	expect_hex(REQ, RW_WATCH, &ns_t, NULL, "12 02 0a05", "12 02 0a05");
}

/* ---- buffer handling -------------------------------------------------------------- */

static void test_buffer_append(void **state UNUSED)
{
	struct rw_buf out = {0};
	struct rw_error err;
	uint8_t in[] = {0x0a, 0x03, 'f', 'o', 'o'};
	uint8_t bad[] = {0x0a, 0x00};

	assert_int_equal(rw_request(RW_RANGE, &ns_t, NULL, in, sizeof(in), &out, &err), 0);
	assert_int_equal(err.grpc_status, 0);
	assert_null(err.message);
	assert_int_equal(out.len, 8);
	assert_int_equal(rw_request(RW_RANGE, &ns_t, NULL, in, sizeof(in), &out, &err), 0);
	assert_int_equal(out.len, 16);
	assert_memory_equal(out.data + 8, "\x0a\x06/t/foo", 8);
	assert_int_equal(rw_request(RW_RANGE, &ns_t, NULL, bad, sizeof(bad), &out, &err), -EINVAL);
	assert_int_equal(out.len, 16);
	/* err may be NULL */
	assert_int_equal(rw_request(RW_RANGE, &ns_t, NULL, bad, sizeof(bad), &out, NULL), -EINVAL);
	/* many appends grow the buffer */
	for (int i = 0; i < 1000; i++)
		assert_int_equal(rw_response(RW_NONE, &ns_t, NULL, in, sizeof(in), &out, &err), 0);
	assert_int_equal(out.len, 16 + 5000);
	assert_true(out.cap >= out.len);
	rw_buf_free(&out);
	assert_null(out.data);
	assert_int_equal(out.cap, 0);
	rw_buf_free(&out);
}

static void test_bad_arguments(void **state UNUSED)
{
	struct rw_buf out = {0};
	struct rw_error err;
	struct rw_ns empty = {0};

	assert_int_equal(rw_request((enum rw_kind)99, &ns_t, NULL, NULL, 0, &out, &err), -EINVAL);
	assert_int_equal(err.grpc_status, 13);
	assert_int_equal(rw_response((enum rw_kind) - 1, &ns_t, NULL, NULL, 0, &out, &err),
	                 -EINVAL);
	assert_int_equal(rw_request(RW_RANGE, &empty, NULL, NULL, 0, &out, &err), -EINVAL);
	assert_int_equal(err.grpc_status, 13);
	assert_int_equal(rw_request(RW_RANGE, NULL, NULL, NULL, 0, &out, &err), -EINVAL);
	assert_int_equal(rw_request(RW_RANGE, &ns_t, NULL, NULL, 0, NULL, &err), -EINVAL);
	assert_int_equal(rw_request(RW_NONE, &ns_t, NULL, NULL, 0, &out, &err), 0);
	assert_int_equal(out.len, 0);
	rw_buf_free(&out);
}

/* ---- main ------------------------------------------------------------------------- */

static int setup(void **state UNUSED)
{
	return rw_ns_init(&ns_t, (const uint8_t *)"/t/", 3);
}

static int teardown(void **state UNUSED)
{
	rw_ns_free(&ns_t);
	return 0;
}

/* ---- lib/pb.h: the one protobuf codec ------------------------------------------------- */

static void test_pb_varint(void **state)
{
	static const struct {
		uint64_t v;
		const char *bytes;
		unsigned len;
	} cases[] = {
		{ 0, "\x00", 1 },
		{ 127, "\x7f", 1 },
		{ 128, "\x80\x01", 2 },
		{ 300, "\xac\x02", 2 },
		{ UINT64_MAX, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10 },
	};
	uint8_t buf[16];
	(void)state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const uint8_t *p = buf;
		uint64_t v;

		assert_int_equal(ep_pb_varint_size(cases[i].v), cases[i].len);
		assert_ptr_equal(ep_pb_put_varint(buf, cases[i].v), buf + cases[i].len);
		assert_memory_equal(buf, cases[i].bytes, cases[i].len);
		assert_int_equal(ep_pb_get_varint(&p, buf + cases[i].len, &v), 0);
		assert_true(v == cases[i].v);
		assert_ptr_equal(p, buf + cases[i].len);
		/* cut short */
		p = buf;
		assert_int_equal(ep_pb_get_varint(&p, buf + cases[i].len - 1, &v), -1);
	}
	/* 11 bytes, or a tenth byte above 1: more than 64 bits */
	static const uint8_t eleven[] = { 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01 };
	static const uint8_t big10[] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02 };
	const uint8_t *p = eleven;
	uint64_t v;

	assert_int_equal(ep_pb_get_varint(&p, eleven + sizeof(eleven), &v), -1);
	p = big10;
	assert_int_equal(ep_pb_get_varint(&p, big10 + sizeof(big10), &v), -1);
}

static void test_pb_fields(void **state)
{
	uint8_t buf[64], *e;
	const uint8_t *p = buf;
	struct ep_pb_field f;
	(void)state;

	e = ep_pb_put_bytes(buf, 1, "foo", 3);
	e = ep_pb_put_uint(e, 9, 1);
	e = ep_pb_put_bytes(e, 64, "", 0);
	assert_memory_equal(buf, "\x0a\x03" "foo" "\x48\x01" "\x82\x04\x00", 10);
	assert_int_equal(ep_pb_next_field(&p, e, &f), 1);
	assert_true(f.number == 1 && f.wire == EP_PB_LEN && f.len == 3 && f.start == buf &&
		    f.tag_end == buf + 1 && memcmp(f.data, "foo", 3) == 0);
	assert_int_equal(ep_pb_next_field(&p, e, &f), 1);
	assert_true(f.number == 9 && f.wire == EP_PB_VARINT && f.value == 1 && f.data == NULL);
	assert_int_equal(ep_pb_next_field(&p, e, &f), 1);
	assert_true(f.number == 64 && f.len == 0 && f.tag_end == f.start + 2);
	assert_int_equal(ep_pb_next_field(&p, e, &f), 0);

	static const struct {
		const char *bytes;
		size_t len;
	} bad[] = {
		{ "\x02\x00", 2 },                 /* field number 0 */
		{ "\x0b", 1 },                      /* group start (3) */
		{ "\x0c", 1 },                      /* group end (4) */
		{ "\x0e\x00", 2 },                 /* wire type 6 */
		{ "\x0a\x05" "abc", 5 },           /* LEN past the end */
		{ "\x09" "1234567", 8 },            /* I64 cut short */
		{ "\x0d" "123", 4 },                /* I32 cut short */
		{ "\x80\x80\x80\x80\x80\x01", 6 }, /* a tag above 32 bits */
		{ "\x08", 1 },                      /* VARINT without its value */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		p = (const uint8_t *)bad[i].bytes;
		if (ep_pb_next_field(&p, p + bad[i].len, &f) != -1)
			fail_msg("bad case %zu accepted", i);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pb_varint),
	    cmocka_unit_test(test_pb_fields),
	    cmocka_unit_test(test_ns_prefix_end),
	    cmocka_unit_test(test_ns_refused),
	    cmocka_unit_test(test_method_known),
	    cmocka_unit_test(test_method_unknown),
	    cmocka_unit_test(test_example_a),
	    cmocka_unit_test(test_example_b),
	    cmocka_unit_test(test_example_c),
	    cmocka_unit_test(test_example_d),
	    cmocka_unit_test(test_example_e),
	    cmocka_unit_test(test_example_f),
	    cmocka_unit_test(test_example_g),
	    cmocka_unit_test(test_prefix_ending_in_ff),
	    cmocka_unit_test(test_keys_every_byte),
	    cmocka_unit_test(test_prefix_with_odd_bytes),
	    cmocka_unit_test(test_empty_key_refused),
	    cmocka_unit_test(test_empty_txn_parts_pass),
	    cmocka_unit_test(test_watch_empty_key_mapped),
	    cmocka_unit_test(test_range_end_explicit_empty),
	    cmocka_unit_test(test_repeated_key_fields),
	    cmocka_unit_test(test_put_value_untouched),
	    cmocka_unit_test(test_unknown_fields_preserved),
	    cmocka_unit_test(test_oneof_zero_preserved),
	    cmocka_unit_test(test_varint_growth),
	    cmocka_unit_test(test_long_prefix),
	    cmocka_unit_test(test_txn_depth),
	    cmocka_unit_test(test_response_foreign_key),
	    cmocka_unit_test(test_response_kinds),
	    cmocka_unit_test(test_ttl_keys_filtered),
	    cmocka_unit_test(test_lease_check_put),
	    cmocka_unit_test(test_lease_check_ids),
	    cmocka_unit_test(test_lock_election),
	    cmocka_unit_test(test_member_identity),
	    cmocka_unit_test(test_range_stream),
	    cmocka_unit_test(test_put_stream),
	    cmocka_unit_test(test_lease_granted),
	    cmocka_unit_test(test_lease_leases_filtered),
	    cmocka_unit_test(test_alarm),
	    cmocka_unit_test(test_pass_kinds),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_buffer_append),
	    cmocka_unit_test(test_bad_arguments),
	};

	return cmocka_run_group_tests_name("rewrite", tests, setup, teardown);
}
