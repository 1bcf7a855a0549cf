/*
 * libFuzzer target for the native backend's message rewriter (rewrite.h).
 *
 * Input: byte 0 selects what to do, the rest is the protobuf message.
 *   bits 0-3  the rw_kind (0 .. RW_HEALTH_CHECK)
 *   bit  4    0 = rw_request, 1 = rw_response
 *   bits 5-6  the namespace: "/t/", "a\xff", "\x00", or a 130-byte prefix
 *   bit  7    lease hooks installed (deterministic by ID) or NULL hooks
 *
 * Besides "no crash, no leak, no undefined behaviour" it checks:
 *  - rw_method_lookup on the message bytes matches only a path of exactly
 *    that length and content;
 *  - a failure leaves the output buffer exactly as it was and names a status;
 *  - kinds that only inspect a message copy it unchanged;
 *  - responses never grow;
 *  - every key and range_end in a rewritten request lies inside the prefix,
 *    and every key of an accepted response did, checked by a separate reader
 *    written for this purpose only;
 *  - a rewritten request rewrites again (the output is well-formed);
 *  - Put round trip: prefixing, stripping (as a KeyValue) and prefixing again
 *    gives the same bytes as prefixing once;
 *  - a RangeResponse streamed through rs_feed() in pieces of 1 to 16 bytes
 *    (the last input byte picks): accepted only if the buffered rewrite
 *    accepts it, with a gRPC prefix that names its length, and the same
 *    bytes once the pad fields are taken out of its KeyValues;
 *  - a PutRequest streamed through ps_head() and ps_feed() in pieces of 1 to
 *    16 bytes: accepted only if the buffered rewrite accepts it, with the
 *    same bytes; refused only where that refuses it, with its status and
 *    message (or for a second key); never with its last byte passed on.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "rewrite.h"
#include "usage.h"

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			__builtin_trap();                                                          \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct rw_ns namespaces[4];
static int ready;

static void init_namespaces(void)
{
	uint8_t longp[130];

	memset(longp, 'L', sizeof(longp));
	longp[0] = '/';
	longp[sizeof(longp) - 1] = '/';
	CHECK(rw_ns_init(&namespaces[0], (const uint8_t *)"/t/", 3) == 0);
	CHECK(rw_ns_init(&namespaces[1], (const uint8_t *)"a\xff", 2) == 0);
	CHECK(rw_ns_init(&namespaces[2], (const uint8_t *)"\x00", 1) == 0);
	CHECK(rw_ns_init(&namespaces[3], longp, sizeof(longp)) == 0);
	/* the truncating prefix end, worked out by hand */
	CHECK(namespaces[0].prefix_end_len == 3 && memcmp(namespaces[0].prefix_end, "/t0", 3) == 0);
	CHECK(namespaces[1].prefix_end_len == 1 && namespaces[1].prefix_end[0] == 'b');
	CHECK(namespaces[2].prefix_end_len == 1 && namespaces[2].prefix_end[0] == 1);
	CHECK(namespaces[3].prefix_end_len == sizeof(longp) &&
	      memcmp(namespaces[3].prefix_end, longp, sizeof(longp) - 1) == 0 &&
	      namespaces[3].prefix_end[sizeof(longp) - 1] == '0');
	ready = 1;
}

/* Deterministic hooks, so that a second pass makes the same decisions. */
static int hook_check(void *ctx, int64_t id)
{
	(void)ctx;
	return (id % 3 == 0) ? -ENOENT : 0;
}

static int hook_visible(void *ctx, int64_t id)
{
	(void)ctx;
	return (int)(id & 1);
}

static void hook_granted(void *ctx, int64_t id)
{
	(*(int64_t *)ctx) ^= id;
}

/* ---- an independent reader for rewritten requests ---------------------------------- */

struct rd {
	const uint8_t *p, *end;
};

static int rd_varint(struct rd *r, uint64_t *v)
{
	uint64_t x = 0;

	for (int shift = 0; shift < 70; shift += 7) {
		if (r->p >= r->end)
			return -1;
		uint8_t b = *r->p++;
		x |= (uint64_t)(b & 0x7f) << (shift < 64 ? shift : 0);
		if (!(b & 0x80)) {
			*v = x;
			return 0;
		}
	}
	return -1;
}

/* Next field; for LEN fields val and len are set.  Returns field number or -1. */
static long rd_field(struct rd *r, unsigned *wt, const uint8_t **val, size_t *len)
{
	uint64_t tag, v;

	if (rd_varint(r, &tag))
		return -1;
	*wt = tag & 7;
	switch (*wt) {
	case 0:
		if (rd_varint(r, &v))
			return -1;
		break;
	case 1:
		if (r->end - r->p < 8)
			return -1;
		r->p += 8;
		break;
	case 2:
		if (rd_varint(r, &v) || v > (uint64_t)(r->end - r->p))
			return -1;
		*val = r->p;
		*len = (size_t)v;
		r->p += v;
		break;
	case 5:
		if (r->end - r->p < 4)
			return -1;
		r->p += 4;
		break;
	default: return -1;
	}
	return (long)(tag >> 3);
}

static int inside(const struct rw_ns *ns, const uint8_t *k, size_t n)
{
	return n >= ns->prefix_len && memcmp(k, ns->prefix, ns->prefix_len) == 0;
}

static void check_key(const struct rw_ns *ns, const uint8_t *k, size_t n)
{
	CHECK(inside(ns, k, n));
}

/* range_end: empty (single key), the prefix end, or inside the prefix */
static void check_range_end(const struct rw_ns *ns, const uint8_t *k, size_t n)
{
	CHECK(n == 0 || (n == ns->prefix_end_len && memcmp(k, ns->prefix_end, n) == 0) ||
	      inside(ns, k, n));
}

enum shape {
	/* requests */
	SH_RANGE,
	SH_PUT,
	SH_TXN,
	SH_COMPARE,
	SH_OP,
	SH_WATCH,
	SH_CREATE,
	/* responses */
	SH_KV,
	SH_RANGE_R,
	SH_PUT_R,
	SH_DELETE_R,
	SH_TXN_R,
	SH_OP_R,
	SH_WATCH_R,
	SH_EVENT,
};

static void check_shape(const struct rw_ns *ns, enum shape sh, const uint8_t *p, size_t n,
                        int depth)
{
	struct rd r = {p, p + n};
	int keys = 0;

	CHECK(depth < 64);
	while (r.p < r.end) {
		unsigned wt;
		const uint8_t *val = NULL;
		size_t len = 0;
		long f = rd_field(&r, &wt, &val, &len);

		CHECK(f > 0);
		if (wt != 2)
			continue;
		switch (sh) {
		case SH_RANGE:
		case SH_CREATE:
			if (f == 1) {
				check_key(ns, val, len);
				keys++;
			} else if (f == 2) {
				check_range_end(ns, val, len);
			}
			break;
		case SH_PUT:
			if (f == 1) {
				check_key(ns, val, len);
				keys++;
			}
			break;
		case SH_COMPARE:
			if (f == 3) {
				check_key(ns, val, len);
				keys++;
			} else if (f == 64) {
				check_range_end(ns, val, len);
			}
			break;
		case SH_TXN:
			if (f == 1)
				check_shape(ns, SH_COMPARE, val, len, depth + 1);
			else if (f == 2 || f == 3)
				check_shape(ns, SH_OP, val, len, depth + 1);
			break;
		case SH_OP:
			if (f == 1 || f == 3)
				check_shape(ns, SH_RANGE, val, len, depth + 1);
			else if (f == 2)
				check_shape(ns, SH_PUT, val, len, depth + 1);
			else if (f == 4)
				check_shape(ns, SH_TXN, val, len, depth + 1);
			break;
		case SH_WATCH:
			if (f == 1)
				check_shape(ns, SH_CREATE, val, len, depth + 1);
			break;
		case SH_KV:
			if (f == 1) {
				check_key(ns, val, len);
				keys++;
			}
			break;
		case SH_RANGE_R:
		case SH_PUT_R:
			if (f == 2)
				check_shape(ns, SH_KV, val, len, depth + 1);
			break;
		case SH_DELETE_R:
			if (f == 3)
				check_shape(ns, SH_KV, val, len, depth + 1);
			break;
		case SH_TXN_R:
			if (f == 3)
				check_shape(ns, SH_OP_R, val, len, depth + 1);
			break;
		case SH_OP_R:
			if (f >= 1 && f <= 4) {
				static const enum shape sub[] = {SH_RANGE_R, SH_PUT_R, SH_DELETE_R,
				                                 SH_TXN_R};
				check_shape(ns, sub[f - 1], val, len, depth + 1);
			}
			break;
		case SH_WATCH_R:
			if (f == 11)
				check_shape(ns, SH_EVENT, val, len, depth + 1);
			break;
		case SH_EVENT:
			if (f == 2 || f == 3)
				check_shape(ns, SH_KV, val, len, depth + 1);
			break;
		}
	}
	/* every message that needs a key has one (watch creates get "\0") */
	if (sh == SH_RANGE || sh == SH_PUT || sh == SH_COMPARE || sh == SH_CREATE || sh == SH_KV)
		CHECK(keys > 0);
}

/* ---- the target ------------------------------------------------------------------- */

static int copies_unchanged(int response, enum rw_kind kind)
{
	/*
	 * Every response but the locally answered ones has its ResponseHeader
	 * rewritten (the member identity, doc/wire.md section 3a), which writes
	 * an overlong length the canonical way: the same message, not the same bytes.
	 */
	if (response)
		return kind == RW_NONE || kind == RW_MEMBER_LIST || kind == RW_HEALTH_CHECK;
	switch (kind) {
	case RW_RANGE:
	case RW_PUT:
	case RW_DELETE_RANGE:
	case RW_TXN:
	case RW_WATCH: return 0;
	case RW_LEASE_TTL:
	case RW_LEASE_LEASES: return !response;
	default: return 1;
	}
}

static const uint8_t sentinel[8] = {'s', 'e', 'n', 't', 'i', 'n', 'e', 'l'};

static void buf_with_sentinel(struct rw_buf *b)
{
	b->data = malloc(sizeof(sentinel));
	CHECK(b->data != NULL);
	memcpy(b->data, sentinel, sizeof(sentinel));
	b->len = b->cap = sizeof(sentinel);
}

/* ---- the streamed RangeResponse ------------------------------------------------------ */

struct sink {
	uint8_t *d;
	size_t n, cap;
};

static void sink_emit(void *ctx, const uint8_t *p, size_t n)
{
	struct sink *k = ctx;

	if (k->n + n > k->cap) {
		k->cap = (k->n + n) * 2;
		k->d = realloc(k->d, k->cap);
		CHECK(k->d != NULL);
	}
	memcpy(k->d + k->n, p, n);
	k->n += n;
}

/* MSG with the pad fields of its KeyValues (field 2) left out, into OUT. */
static void strip_pads(const uint8_t *msg, size_t len, struct sink *out)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f, g;

	while (ep_pb_next_field(&p, end, &f) > 0) {
		if (f.number == 2 && f.wire == EP_PB_LEN) {
			struct sink kv = { 0 };
			const uint8_t *q = f.data;
			uint8_t head[20], *e;

			while (ep_pb_next_field(&q, f.data + f.len, &g) > 0)
				if (g.number != RW_PAD_FIELD)
					sink_emit(&kv, g.start, (size_t)(q - g.start));
			CHECK(q == f.data + f.len);
			e = ep_pb_put_varint(ep_pb_put_varint(head, 2 << 3 | EP_PB_LEN), kv.n);
			sink_emit(out, head, (size_t)(e - head));
			if (kv.n > 0)
				sink_emit(out, kv.d, kv.n);
			free(kv.d);
		} else {
			sink_emit(out, f.start, (size_t)(p - f.start));
		}
	}
	CHECK(p == end);
}

static void check_stream(const struct rw_ns *ns, const struct rw_hooks *h, const uint8_t *msg,
			 size_t len, int rc, const uint8_t *res, size_t res_len, size_t chunk)
{
	struct rstream s;
	struct sink k = { 0 }, norm = { 0 };
	struct rw_error err = { 0 };
	size_t off = 0, used, out_len;
	int r;

	rs_init(&s, ns, h, len, sink_emit, &k);
	do {
		size_t n = len - off < chunk ? len - off : chunk;

		r = rs_feed(&s, msg + off, n, &used, &err);
		if (r < 0)
			break;
		CHECK(used == n);
		off += n;
	} while (r == 0 && off < len);
	rs_free(&s);
	if (r < 0) {
		CHECK(err.message != NULL && err.grpc_status == 13);
		free(k.d);
		return;
	}
	CHECK(r == 1 && off == len && rc == 0);
	CHECK(k.n >= 5 && k.d[0] == 0);
	out_len = (size_t)k.d[1] << 24 | (size_t)k.d[2] << 16 | (size_t)k.d[3] << 8 | k.d[4];
	CHECK(out_len == k.n - 5);
	strip_pads(k.d + 5, out_len, &norm);
	CHECK(norm.n == res_len && (res_len == 0 || memcmp(norm.d, res, res_len) == 0));
	free(k.d);
	free(norm.d);
}

/*
 * A PutRequest streamed as the proxy streams a large one: ps_head() on what
 * arrived in pieces of CHUNK, then ps_feed().  Accepted only if the buffered
 * rewrite accepts it, with the same bytes; refused where that refuses it, or
 * for a second key; never with its last byte passed on.
 */
/*
 * What the quota reserves for a streamed Put (its head, and the value length
 * and ignore_value the stream saw after it) is what it reserves for the whole
 * message: with the key new, and with it present (ignore_value then counts).
 */
static void check_put_quota(const uint8_t *msg, size_t len, size_t head, const struct pstream *s)
{
	const uint8_t *p = msg;
	struct ep_pb_field f = { 0 };
	struct usage u;
	struct usage_delta whole, streamed;

	while (ep_pb_next_field(&p, msg + head, &f) > 0 && f.number != 1)
		;
	CHECK(f.number == 1 && f.wire == EP_PB_LEN && p == msg + head); /* it ends with its key */
	usage_init(&u);
	for (int present = 0; present < 2; present++) {
		CHECK(usage_request_delta(&u, RW_PUT, msg, len, &whole) == 0);
		CHECK(usage_put_delta(&u, msg, head, s->value_len, s->ignore_value, &streamed) == 0);
		CHECK(whole.keys == streamed.keys && whole.bytes == streamed.bytes);
		usage_put(&u, f.data, f.len, 1);
	}
	usage_free(&u);
}

static void check_put_stream(const struct rw_ns *ns, const struct rw_hooks *h, const uint8_t *msg,
			     size_t len, int rc, const struct rw_error *berr, const uint8_t *res,
			     size_t res_len, size_t chunk)
{
	struct rw_buf head_out = { 0 };
	struct rw_error err = { 0 };
	struct pstream s;
	struct sink k = { 0 };
	size_t have = 0, off, used, scan = 0;
	long head = 0;
	int r = 0;

	while (head == 0) {
		have = len - have < chunk ? len : have + chunk;
		head = ps_head(ns, h, msg, have, len, &scan, &head_out);
		CHECK(head != 0 || have < len);
	}
	if (head < 0) {
		CHECK(head == -EAGAIN);
		rw_buf_free(&head_out);
		return;
	}
	CHECK((size_t)head <= have && (size_t)head < len);
	sink_emit(&k, head_out.data, head_out.len);
	ps_init(&s, h, len - (size_t)head, sink_emit, &k);
	for (off = (size_t)head; off < len; off += used) {
		size_t n = off < have ? have - off : len - off < chunk ? len - off : chunk;

		r = ps_feed(&s, msg + off, n, &used, &err);
		if (r < 0)
			break;
		CHECK(used == n && (r == 0 || off + n == len));
	}
	if (r < 0) {
		CHECK(err.message != NULL && (err.grpc_status == 3 || err.grpc_status == 5));
		/* the buffered rewrite's own status and message, but for a second key */
		if (strcmp(err.message, "etcdproxy: a large Put must carry its key once") != 0)
			CHECK(rc != 0 && err.grpc_status == berr->grpc_status &&
			      strcmp(err.message, berr->message) == 0);
		CHECK(k.n < head_out.len + (len - (size_t)head)); /* the last byte never went on */
	} else {
		CHECK(r == 1 && rc == 0);
		sink_emit(&k, &s.last, 1);
		CHECK(k.n == res_len && memcmp(k.d, res, res_len) == 0);
		check_put_quota(msg, len, (size_t)head, &s);
	}
	rw_buf_free(&head_out);
	free(k.d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	int64_t granted = 0;
	struct rw_hooks hooks = {hook_check, hook_visible, hook_granted, &granted};
	struct rw_buf out = {0}, again = {0};
	struct rw_error err;
	const struct rw_ns *ns;
	const struct rw_hooks *h;
	enum rw_kind kind;
	const uint8_t *msg;
	size_t len;
	int response, rc;

	if (!ready)
		init_namespaces();
	if (size < 1)
		return 0;
	kind = (enum rw_kind)(data[0] & 0x0f);
	response = (data[0] >> 4) & 1;
	ns = &namespaces[(data[0] >> 5) & 3];
	h = (data[0] & 0x80) ? &hooks : NULL;
	msg = data + 1;
	len = size - 1;

	/* the method table: exact (path, len) matches only */
	{
		const struct rw_method *m = rw_method_lookup((const char *)msg, len);

		CHECK(m != NULL);
		if (m->path != NULL)
			CHECK(strlen(m->path) == len && memcmp(m->path, msg, len) == 0);
		else
			CHECK(m->policy == RW_UNIMPLEMENTED);
	}

	buf_with_sentinel(&out);
	if (response)
		rc = rw_response(kind, ns, h, msg, len, &out, &err);
	else
		rc = rw_request(kind, ns, h, msg, len, &out, &err);
	CHECK(out.len >= sizeof(sentinel));
	CHECK(memcmp(out.data, sentinel, sizeof(sentinel)) == 0);

	if (response && kind == RW_RANGE && ns->prefix_len >= 3)
		check_stream(ns, h, msg, len, rc, out.data + sizeof(sentinel),
			     out.len - sizeof(sentinel), len > 0 ? 1 + msg[len - 1] % 16 : 1);
	if (!response && kind == RW_PUT)
		check_put_stream(ns, h, msg, len, rc, &err, out.data + sizeof(sentinel),
				 out.len - sizeof(sentinel), len > 0 ? 1 + msg[len - 1] % 16 : 1);
	if (rc != 0) {
		CHECK(rc == -EINVAL || rc == -ENOENT || rc == -EPERM || rc == -EPROTO);
		CHECK(out.len == sizeof(sentinel));
		CHECK(err.message != NULL);
		CHECK(err.grpc_status == 3 || err.grpc_status == 5 || err.grpc_status == 7 ||
		      err.grpc_status == 13);
		rw_buf_free(&out);
		return 0;
	}
	CHECK(err.grpc_status == 0 && err.message == NULL);

	const uint8_t *res = out.data + sizeof(sentinel);
	size_t res_len = out.len - sizeof(sentinel);

	if (copies_unchanged(response, kind))
		CHECK(res_len == len && (len == 0 || memcmp(res, msg, len) == 0));
	if (response) {
		CHECK(res_len <= len);
		/* accepted only if every key the core etcd sent lies inside the prefix */
		switch (kind) {
		case RW_RANGE: check_shape(ns, SH_RANGE_R, msg, len, 0); break;
		case RW_PUT: check_shape(ns, SH_PUT_R, msg, len, 0); break;
		case RW_DELETE_RANGE: check_shape(ns, SH_DELETE_R, msg, len, 0); break;
		case RW_TXN: check_shape(ns, SH_TXN_R, msg, len, 0); break;
		case RW_WATCH: check_shape(ns, SH_WATCH_R, msg, len, 0); break;
		default: break;
		}
		rw_buf_free(&out);
		return 0;
	}

	/* requests: everything lands inside the prefix */
	switch (kind) {
	case RW_RANGE:
	case RW_DELETE_RANGE: check_shape(ns, SH_RANGE, res, res_len, 0); break;
	case RW_PUT: check_shape(ns, SH_PUT, res, res_len, 0); break;
	case RW_TXN: check_shape(ns, SH_TXN, res, res_len, 0); break;
	case RW_WATCH: check_shape(ns, SH_WATCH, res, res_len, 0); break;
	default: break;
	}

	/* the output is a valid request of the same kind */
	rc = rw_request(kind, ns, h, res, res_len, &again, &err);
	CHECK(rc == 0);
	rw_buf_free(&again);

	/* Put: P(S(P(x))) == P(x), S reading the PutRequest as a RangeResponse's KeyValue */
	if (kind == RW_PUT && res_len < (1u << 20)) {
		struct rw_buf wrapped = {0}, stripped = {0}, back = {0};
		uint8_t hdr[11];
		size_t hn = 0;
		uint64_t v = res_len;

		hdr[hn++] = 0x12;
		while (v >= 0x80) {
			hdr[hn++] = (uint8_t)(v | 0x80);
			v >>= 7;
		}
		hdr[hn++] = (uint8_t)v;
		wrapped.data = malloc(hn + res_len);
		CHECK(wrapped.data != NULL);
		memcpy(wrapped.data, hdr, hn);
		memcpy(wrapped.data + hn, res, res_len);
		wrapped.len = wrapped.cap = hn + res_len;

		rc = rw_response(RW_RANGE, ns, h, wrapped.data, wrapped.len, &stripped, &err);
		CHECK(rc == 0);
		/* unwrap: 0x12, length, body */
		{
			const uint8_t *p = stripped.data + 1, *end = stripped.data + stripped.len;
			uint64_t body = 0;
			int shift = 0;

			CHECK(stripped.len >= 2 && stripped.data[0] == 0x12);
			while (*p & 0x80) {
				body |= (uint64_t)(*p++ & 0x7f) << shift;
				shift += 7;
			}
			body |= (uint64_t)(*p++) << shift;
			CHECK(body == (uint64_t)(end - p));
			rc = rw_request(RW_PUT, ns, h, p, (size_t)body, &back, &err);
			CHECK(rc == 0);
			CHECK(back.len == res_len && memcmp(back.data, res, res_len) == 0);
		}
		rw_buf_free(&wrapped);
		rw_buf_free(&stripped);
		rw_buf_free(&back);
	}
	rw_buf_free(&out);
	return 0;
}
