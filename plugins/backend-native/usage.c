/*
 * The usage index of spec.quota (usage.h): a hash table of the tenant's keys
 * with their value sizes, kept by the count and the watch, and read by the
 * admission of writes.  Messages are read with lib/pb.h.
 */
#include <stdlib.h>
#include <string.h>

#include "pb.h"
#include "usage.h"

#define MAX_TXN_DEPTH 16 /* etcd refuses deeper; so do we, as malformed */

/* FNV-1a; never 0, which marks a free slot. */
static uint64_t key_hash(const uint8_t *key, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < len; i++) {
		h ^= key[i];
		h *= 0x100000001b3ull;
	}
	return h != 0 ? h : 1;
}

void usage_init(struct usage *u)
{
	memset(u, 0, sizeof(*u));
}

void usage_free(struct usage *u)
{
	for (size_t i = 0; i < u->cap; i++)
		free(u->slots[i].key);
	free(u->slots);
	usage_init(u);
}

static struct usage_entry *find(const struct usage *u, uint64_t h, const uint8_t *key, size_t klen)
{
	if (u->cap == 0)
		return NULL;
	for (size_t i = h & (u->cap - 1);; i = (i + 1) & (u->cap - 1)) {
		struct usage_entry *e = &u->slots[i];

		if (e->hash == 0)
			return NULL;
		if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
			return e;
	}
}

static void insert_slot(struct usage *u, struct usage_entry e)
{
	size_t i = e.hash & (u->cap - 1);

	while (u->slots[i].hash != 0)
		i = (i + 1) & (u->cap - 1);
	u->slots[i] = e;
}

static void grow(struct usage *u)
{
	struct usage_entry *old = u->slots;
	size_t old_cap = u->cap;

	u->cap = old_cap ? old_cap * 2 : 64;
	u->slots = calloc(u->cap, sizeof(*u->slots));
	if (u->slots == NULL)
		abort();
	for (size_t i = 0; i < old_cap; i++)
		if (old[i].hash != 0)
			insert_slot(u, old[i]);
	free(old);
}

void usage_put(struct usage *u, const uint8_t *key, size_t klen, size_t vlen)
{
	uint64_t h = key_hash(key, klen);
	struct usage_entry *e = find(u, h, key, klen);
	struct usage_entry ne;

	if (e != NULL) {
		u->bytes = u->bytes - e->vlen + vlen;
		e->vlen = (uint32_t)vlen;
		return;
	}
	if ((u->n + 1) * 10 > u->cap * 7)
		grow(u);
	ne.hash = h;
	ne.klen = (uint32_t)klen;
	ne.vlen = (uint32_t)vlen;
	ne.key = malloc(klen > 0 ? klen : 1);
	if (ne.key == NULL)
		abort();
	memcpy(ne.key, key, klen);
	insert_slot(u, ne);
	u->n++;
	u->keys++;
	u->bytes += klen + vlen;
}

void usage_delete(struct usage *u, const uint8_t *key, size_t klen)
{
	struct usage_entry *e = find(u, key_hash(key, klen), key, klen);
	size_t i, j;

	if (e == NULL)
		return;
	u->keys--;
	u->bytes -= e->klen + e->vlen;
	u->n--;
	free(e->key);
	/* backward-shift deletion: no tombstones, probes stay short */
	i = (size_t)(e - u->slots);
	u->slots[i].hash = 0;
	u->slots[i].key = NULL;
	for (j = (i + 1) & (u->cap - 1); u->slots[j].hash != 0; j = (j + 1) & (u->cap - 1)) {
		size_t home = u->slots[j].hash & (u->cap - 1);

		/* move j back to the hole unless its home lies cyclically in (i, j] */
		if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
			continue;
		u->slots[i] = u->slots[j];
		u->slots[j].hash = 0;
		u->slots[j].key = NULL;
		i = j;
	}
}

int64_t usage_value_size(const struct usage *u, const uint8_t *key, size_t klen)
{
	const struct usage_entry *e = find(u, key_hash(key, klen), key, klen);

	return e != NULL ? (int64_t)e->vlen : -1;
}

/* ---- what a request adds ------------------------------------------------------------------ */

/*
 * PutRequest: key 1, value 2, ignore_value 5; value_len and ignore_value, when
 * not -1, are the message's last ones (usage_put_delta()).
 */
static int put_delta(const struct usage *u, const uint8_t *msg, size_t len, int64_t value_len,
		     int ignore_value_after, struct usage_delta *d)
{
	const uint8_t *p = msg, *end = msg + len, *key = (const uint8_t *)"";
	size_t klen = 0, vlen = 0;
	int ignore_value = 0, r;
	struct ep_pb_field f;
	int64_t old;

	while ((r = ep_pb_next_field(&p, end, &f)) > 0) {
		if (f.number == 1 && f.wire == EP_PB_LEN) {
			key = f.data;
			klen = f.len;
		} else if (f.number == 2 && f.wire == EP_PB_LEN) {
			vlen = f.len;
		} else if (f.number == 5 && f.wire == EP_PB_VARINT) {
			ignore_value = f.value != 0;
		}
	}
	if (r < 0)
		return -1;
	if (value_len >= 0)
		vlen = (size_t)value_len;
	if (ignore_value_after >= 0)
		ignore_value = ignore_value_after;
	old = usage_value_size(u, key, klen);
	if (old < 0) {
		d->keys += 1;
		d->bytes += klen + vlen; /* ignore_value on a new key: etcd refuses it */
	} else if (!ignore_value && vlen > (uint64_t)old) {
		d->bytes += vlen - (uint64_t)old;
	}
	return 0;
}

static int txn_delta(const struct usage *u, const uint8_t *msg, size_t len, unsigned depth,
		     struct usage_delta *d);

/* One branch of a TxnRequest: every RequestOp (field 2 or 3) of that branch, added up. */
static int branch_delta(const struct usage *u, const uint8_t *msg, size_t len, unsigned field,
			unsigned depth, struct usage_delta *d)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f, op;
	int r;

	while ((r = ep_pb_next_field(&p, end, &f)) > 0) {
		const uint8_t *q, *qend;

		if (f.number != field || f.wire != EP_PB_LEN)
			continue;
		q = f.data;
		qend = f.data + f.len;
		/* RequestOp: request_put 2, request_txn 4 */
		while ((r = ep_pb_next_field(&q, qend, &op)) > 0) {
			if (op.wire != EP_PB_LEN)
				continue;
			if (op.number == 2 && put_delta(u, op.data, op.len, -1, -1, d) < 0)
				return -1;
			if (op.number == 4 && txn_delta(u, op.data, op.len, depth + 1, d) < 0)
				return -1;
		}
		if (r < 0)
			return -1;
	}
	return r < 0 ? -1 : 0;
}

/* TxnRequest: success 2, failure 3; the larger of the two, added to *d. */
static int txn_delta(const struct usage *u, const uint8_t *msg, size_t len, unsigned depth,
		     struct usage_delta *d)
{
	struct usage_delta ok = { 0, 0 }, failed = { 0, 0 };

	if (depth > MAX_TXN_DEPTH)
		return -1;
	if (branch_delta(u, msg, len, 2, depth, &ok) < 0 ||
	    branch_delta(u, msg, len, 3, depth, &failed) < 0)
		return -1;
	d->keys += ok.keys > failed.keys ? ok.keys : failed.keys;
	d->bytes += ok.bytes > failed.bytes ? ok.bytes : failed.bytes;
	return 0;
}

int usage_request_delta(const struct usage *u, enum rw_kind kind, const uint8_t *msg, size_t len,
			struct usage_delta *d)
{
	d->keys = d->bytes = 0;
	if (kind == RW_PUT)
		return put_delta(u, msg, len, -1, -1, d);
	if (kind == RW_TXN)
		return txn_delta(u, msg, len, 0, d);
	return 0;
}

int usage_put_delta(const struct usage *u, const uint8_t *head, size_t len, int64_t value_len,
		    int ignore_value, struct usage_delta *d)
{
	d->keys = d->bytes = 0;
	return put_delta(u, head, len, value_len, ignore_value, d);
}

/* ---- what the core etcd says -------------------------------------------------------------- */

/* ResponseHeader.revision (3). */
static int64_t header_revision(const uint8_t *msg, size_t len)
{
	return (int64_t)ep_pb_find_varint(msg, len, 3);
}

/* KeyValue: key 1, mod_revision 3, value 5. */
struct kv {
	const uint8_t *key;
	size_t klen, vlen;
	int64_t mod_revision;
};

static int read_kv(const uint8_t *msg, size_t len, struct kv *kv)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int r;

	memset(kv, 0, sizeof(*kv));
	kv->key = (const uint8_t *)"";
	while ((r = ep_pb_next_field(&p, end, &f)) > 0) {
		if (f.number == 1 && f.wire == EP_PB_LEN) {
			kv->key = f.data;
			kv->klen = f.len;
		} else if (f.number == 3 && f.wire == EP_PB_VARINT) {
			kv->mod_revision = (int64_t)f.value;
		} else if (f.number == 5 && f.wire == EP_PB_LEN) {
			kv->vlen = f.len;
		}
	}
	return r;
}

int usage_load_page(struct usage *u, size_t strip, const uint8_t *msg, size_t len,
		    int64_t *rev_r, int *more_r, const uint8_t **last_r, size_t *last_len_r)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int r;

	*rev_r = 0;
	*more_r = 0;
	*last_r = NULL;
	*last_len_r = 0;
	/* RangeResponse: header 1, kvs 2, more 3 */
	while ((r = ep_pb_next_field(&p, end, &f)) > 0) {
		struct kv kv;

		if (f.number == 1 && f.wire == EP_PB_LEN) {
			*rev_r = header_revision(f.data, f.len);
		} else if (f.number == 3 && f.wire == EP_PB_VARINT) {
			*more_r = f.value != 0;
		} else if (f.number == 2 && f.wire == EP_PB_LEN) {
			if (read_kv(f.data, f.len, &kv) < 0 || kv.klen < strip)
				return -1;
			usage_put(u, kv.key + strip, kv.klen - strip, kv.vlen);
			*last_r = kv.key;
			*last_len_r = kv.klen;
		}
	}
	return r < 0 ? -1 : 0;
}

/* Event: type 1 (PUT 0, DELETE 1), kv 2. */
static int apply_event(struct usage *u, size_t strip, const uint8_t *msg, size_t len)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	uint64_t type = 0;
	struct kv kv = { (const uint8_t *)"", 0, 0, 0 };
	int r;

	while ((r = ep_pb_next_field(&p, end, &f)) > 0) {
		if (f.number == 1 && f.wire == EP_PB_VARINT)
			type = f.value;
		else if (f.number == 2 && f.wire == EP_PB_LEN && read_kv(f.data, f.len, &kv) < 0)
			return -1;
	}
	if (r < 0 || kv.klen < strip)
		return -1;
	if (type == 0)
		usage_put(u, kv.key + strip, kv.klen - strip, kv.vlen);
	else
		usage_delete(u, kv.key + strip, kv.klen - strip);
	if (kv.mod_revision > u->rev)
		u->rev = kv.mod_revision;
	return 0;
}

int usage_watch_response(struct usage *u, size_t strip, const uint8_t *msg, size_t len,
			 struct usage_watch *w)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int r;

	memset(w, 0, sizeof(*w));
	/* WatchResponse: header 1, created 3, canceled 4, compact_revision 5, cancel_reason 6,
	 * events 11 */
	while ((r = ep_pb_next_field(&p, end, &f)) > 0) {
		if (f.number == 1 && f.wire == EP_PB_LEN)
			w->header_rev = header_revision(f.data, f.len);
		else if (f.number == 3 && f.wire == EP_PB_VARINT)
			w->created = f.value != 0;
		else if (f.number == 4 && f.wire == EP_PB_VARINT)
			w->canceled = f.value != 0;
		else if (f.number == 5 && f.wire == EP_PB_VARINT)
			w->compact_revision = (int64_t)f.value;
		else if (f.number == 6 && f.wire == EP_PB_LEN) {
			w->reason = f.data;
			w->reason_len = f.len;
		} else if (f.number == 11 && f.wire == EP_PB_LEN && !w->canceled &&
			   apply_event(u, strip, f.data, f.len) < 0)
			return -1;
	}
	return r < 0 ? -1 : 0;
}

/* DeleteRangeResponse.deleted (2) above 0. */
static int deleted_some(const uint8_t *msg, size_t len)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;

	while (ep_pb_next_field(&p, end, &f) > 0)
		if (f.number == 2 && f.wire == EP_PB_VARINT && f.value > 0)
			return 1;
	return 0;
}

/*
 * A TxnResponse changed keys: one of its responses (field 3) is a
 * ResponseOp with response_put (2), response_delete_range (3) that deleted
 * some, or response_txn (4) that did.
 */
static int response_changed(const uint8_t *msg, size_t len, unsigned depth)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f, op;

	if (depth > MAX_TXN_DEPTH)
		return 0;
	while (ep_pb_next_field(&p, end, &f) > 0) {
		const uint8_t *q, *qend;

		if (f.number != 3 || f.wire != EP_PB_LEN)
			continue;
		q = f.data;
		qend = f.data + f.len;
		while (ep_pb_next_field(&q, qend, &op) > 0) {
			if (op.wire != EP_PB_LEN)
				continue;
			if (op.number == 2 || (op.number == 3 && deleted_some(op.data, op.len)) ||
			    (op.number == 4 && response_changed(op.data, op.len, depth + 1)))
				return 1;
		}
	}
	return 0;
}

int usage_write_response(enum rw_kind kind, const uint8_t *msg, size_t len, int64_t *rev_r,
			 int *wrote_r)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int r;

	*rev_r = 0;
	while ((r = ep_pb_next_field(&p, end, &f)) > 0)
		if (f.number == 1 && f.wire == EP_PB_LEN)
			*rev_r = header_revision(f.data, f.len);
	if (r < 0)
		return -1;
	if (kind == RW_PUT)
		*wrote_r = 1;
	else if (kind == RW_DELETE_RANGE)
		*wrote_r = deleted_some(msg, len);
	else
		*wrote_r = kind == RW_TXN && response_changed(msg, len, 0);
	return 0;
}
