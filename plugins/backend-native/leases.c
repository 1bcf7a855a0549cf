/*
 * Lease scoping: the ownership records of a tenant's leases in the core etcd
 * (under EP_OWN_PREFIX "leases/<tenant>/"), the worker's cache of the IDs it
 * knows are the tenant's, and the internal calls that write and read the
 * records.  doc/native-backend.md, "Lease scoping", has the design.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lease-records.h"
#include "native.h"
#include "pb.h"

#define RECORD_PREFIX EP_LEASE_RECORDS

/* The proxy's own requests are written and their answers read with lib/pb.h. */
static size_t put_bytes(uint8_t *p, unsigned field, const void *data, size_t len)
{
	return (size_t)(ep_pb_put_bytes(p, field, data, len) - p);
}

static size_t put_uint(uint8_t *p, unsigned field, uint64_t v)
{
	return (size_t)(ep_pb_put_uint(p, field, v) - p);
}

/* ---- lease ownership ------------------------------------------------------------------------- */

int native_lease_known(const struct native *n, int64_t id)
{
	for (size_t i = 0; i < n->n_leases; i++)
		if (n->leases[i] == id)
			return 1;
	return 0;
}

void native_lease_add(struct native *n, int64_t id)
{
	if (native_lease_known(n, id))
		return;
	/* a cache, not the truth (that is in the core etcd): when full, forget the oldest */
	if (n->n_leases == NATIVE_LEASE_CACHE) {
		n->leases[n->lease_evict] = id;
		n->lease_evict = (n->lease_evict + 1) % NATIVE_LEASE_CACHE;
		return;
	}
	if (n->n_leases == n->cap_leases) {
		n->cap_leases = n->cap_leases ? n->cap_leases * 2 : 64;
		n->leases = realloc(n->leases, n->cap_leases * sizeof(int64_t));
		if (n->leases == NULL)
			abort();
	}
	n->leases[n->n_leases++] = id;
}

struct lease_op {
	lease_cb *cb;
	void *ctx;
	int64_t id;
};

static size_t record_key(const struct native *n, int64_t id, uint8_t *buf, size_t size)
{
	int len = snprintf((char *)buf, size, EP_LEASE_RECORD_FMT, n->name, (uint64_t)id);

	return (size_t)len < size ? (size_t)len : size - 1;
}

static struct lease_op *lease_op_new(lease_cb *cb, void *ctx, int64_t id)
{
	struct lease_op *op = malloc(sizeof(*op));

	if (op == NULL)
		abort();
	op->cb = cb;
	op->ctx = ctx;
	op->id = id;
	return op;
}

/* RangeResponse: count (f4) for a count_only lookup. */
static void on_lookup(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct lease_op *op = ctx;
	uint64_t count = ok ? ep_pb_find_varint(resp, len, 4) : 0; /* RangeResponse.count */

	op->cb(n, op->ctx, ok, op->id, count > 0);
	free(op);
}

int native_lease_lookup(struct native *n, int64_t id, lease_cb *cb, void *ctx)
{
	uint8_t key[200], msg[256];
	size_t klen = record_key(n, id, key, sizeof(key));
	size_t len = put_bytes(msg, 1, key, klen);
	struct lease_op *op = lease_op_new(cb, ctx, id);
	int r;

	len += put_uint(msg + len, 9, 1); /* count_only */
	r = native_internal_call(n, "/etcdserverpb.KV/Range", msg, len, on_lookup, op);
	if (r < 0)
		free(op);
	return r;
}

/* RangeResponse: every kvs (f2) key (f1) is a record "<prefix><16 hex digits>". */
static void on_refresh(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct lease_op *op = ctx;
	const uint8_t *p = resp, *end = resp + len;
	struct ep_pb_field f, k;

	while (ok && ep_pb_next_field(&p, end, &f) > 0) {
		const uint8_t *q, *qend;

		if (f.wire != EP_PB_LEN || f.number != 2) /* kvs */
			continue;
		q = f.data;
		qend = f.data + f.len;
		while (ep_pb_next_field(&q, qend, &k) > 0) {
			char hex[17];

			if (k.wire != EP_PB_LEN || k.number != 1 || k.len < 16) /* key */
				continue;
			memcpy(hex, k.data + k.len - 16, 16);
			hex[16] = '\0';
			native_lease_add(n, (int64_t)strtoull(hex, NULL, 16));
		}
	}
	n->leases_loaded = ok;
	op->cb(n, op->ctx, ok, 0, 0);
	free(op);
}

/* A RangeRequest's key and range_end: every record of this tenant. */
static size_t records_range(const struct native *n, uint8_t *msg)
{
	uint8_t key[200], end[200];
	int klen = snprintf((char *)key, sizeof(key), RECORD_PREFIX "%s/", n->name);
	size_t len;

	memcpy(end, key, (size_t)klen);
	end[klen - 1]++; /* '/' + 1: the end of the range of this tenant's records */
	len = put_bytes(msg, 1, key, (size_t)klen);
	return len + put_bytes(msg + len, 2, end, (size_t)klen);
}

int native_leases_refresh(struct native *n, lease_cb *cb, void *ctx)
{
	uint8_t msg[512];
	size_t len = records_range(n, msg);
	struct lease_op *op = lease_op_new(cb, ctx, 0);
	int r;

	len += put_uint(msg + len, 8, 1); /* keys_only */
	r = native_internal_call(n, "/etcdserverpb.KV/Range", msg, len, on_refresh, op);
	if (r < 0)
		free(op);
	return r;
}

static void on_recorded(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct lease_op *op = ctx;

	op->cb(n, op->ctx, ok, op->id, 1);
	free(op);
}

int native_lease_record(struct native *n, int64_t id, lease_cb *cb, void *ctx)
{
	uint8_t key[200], msg[256];
	size_t klen = record_key(n, id, key, sizeof(key));
	size_t len = put_bytes(msg, 1, key, klen);
	struct lease_op *op = lease_op_new(cb, ctx, id);
	int r;

	/* attached to the lease itself: revoked or expired, the record goes with it */
	len += put_uint(msg + len, 3, (uint64_t)id);
	r = native_internal_call(n, "/etcdserverpb.KV/Put", msg, len, on_recorded, op);
	if (r < 0)
		free(op);
	return r;
}

struct count_op {
	lease_count_cb *cb;
	void *ctx;
};

/* RangeResponse: count (f4) of a count_only range. */
static void on_counted(struct native *n, void *ctx, int ok, const uint8_t *resp, size_t len)
{
	struct count_op *op = ctx;
	uint64_t count = ok ? ep_pb_find_varint(resp, len, 4) : 0; /* RangeResponse.count */

	op->cb(n, op->ctx, ok, (int64_t)count);
	free(op);
}

int native_leases_count(struct native *n, lease_count_cb *cb, void *ctx)
{
	uint8_t msg[512];
	size_t len = records_range(n, msg);
	struct count_op *op = malloc(sizeof(*op));
	int r;

	if (op == NULL)
		abort();
	op->cb = cb;
	op->ctx = ctx;
	len += put_uint(msg + len, 9, 1); /* count_only */
	r = native_internal_call(n, "/etcdserverpb.KV/Range", msg, len, on_counted, op);
	if (r < 0)
		free(op);
	return r;
}
