/*
 * A tenant's usage for spec.quota: every key it has (as the tenant sees it,
 * without the prefix) with its value's size, and the totals, in keys and in
 * bytes (key plus value).  Pure code: the messages in, the index and the
 * totals out; quota.c feeds it from the core etcd and asks it what a request
 * would add.  doc/native-backend.md, "Quotas", has the design.
 */
#ifndef EP_NATIVE_USAGE_H
#define EP_NATIVE_USAGE_H

#include <stddef.h>
#include <stdint.h>

#include "rewrite.h"

struct usage_entry {
	uint64_t hash; /* 0: a free slot */
	uint8_t *key;
	uint32_t klen;
	uint32_t vlen;
};

struct usage {
	struct usage_entry *slots;
	size_t cap, n; /* open addressing, linear probing; n entries */
	uint64_t keys, bytes;
	int64_t rev; /* the core etcd's revision the index is current to */
};

/* What a request adds at worst. */
struct usage_delta {
	uint64_t keys, bytes;
};

void usage_init(struct usage *u);
void usage_free(struct usage *u); /* back to empty */
/* A put of key (tenant's view) with a value of vlen bytes. */
void usage_put(struct usage *u, const uint8_t *key, size_t klen, size_t vlen);
void usage_delete(struct usage *u, const uint8_t *key, size_t klen);
/* The value size of key, or -1 when the index does not have it. */
int64_t usage_value_size(const struct usage *u, const uint8_t *key, size_t klen);

/*
 * The worst case of a tenant's request (PutRequest or TxnRequest, keys as the
 * tenant sees them): a new key adds one key and its key and value bytes, an
 * existing one the growth of its value; a Txn adds the larger of its two
 * branches (nested Txns likewise).  Deletes never count: they only free.
 * 0, or -1 when the message is malformed (etcd will refuse it anyway).
 */
int usage_request_delta(const struct usage *u, enum rw_kind kind, const uint8_t *msg, size_t len,
			struct usage_delta *d);
/*
 * The same for a PutRequest that streams (a large Put, rewrite.h's pstream):
 * HEAD is its fields up to its key; VALUE_LEN and IGNORE_VALUE are the last
 * value length and ignore_value that came after the head, -1 for none (the
 * head's then count).  Sets *d; 0, or -1 when the head is malformed.
 */
int usage_put_delta(const struct usage *u, const uint8_t *head, size_t len, int64_t value_len,
		    int ignore_value, struct usage_delta *d);

/*
 * A page of the count: a RangeResponse of keys under the prefix (strip bytes
 * long).  Adds its keys; *rev_r gets its header's revision, *more_r its more
 * flag, *last_r and *last_len_r its last key (in msg) to go on after.  0 or -1.
 */
int usage_load_page(struct usage *u, size_t strip, const uint8_t *msg, size_t len,
		    int64_t *rev_r, int *more_r, const uint8_t **last_r, size_t *last_len_r);

/* What a WatchResponse said, beside its events (applied to the index). */
struct usage_watch {
	int created, canceled;
	int64_t compact_revision;
	int64_t header_rev;
	const uint8_t *reason; /* cancel_reason, in msg */
	size_t reason_len;
};

/* Apply a WatchResponse's events (keys under the prefix, strip bytes long).  0 or -1. */
int usage_watch_response(struct usage *u, size_t strip, const uint8_t *msg, size_t len,
			 struct usage_watch *w);

/*
 * A PutResponse, DeleteRangeResponse or TxnResponse: the revision it was
 * answered at, and whether it changed a key (so that the watch brings an
 * event at that revision): a Put always, a delete that deleted some, a Txn
 * whose branch did either.  0 or -1.
 */
int usage_write_response(enum rw_kind kind, const uint8_t *msg, size_t len, int64_t *rev_r,
			 int *wrote_r);

#endif /* EP_NATIVE_USAGE_H */
