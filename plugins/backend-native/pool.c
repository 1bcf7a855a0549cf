/*
 * A cache of freed blocks by size class in front of malloc, for what a call
 * allocates and frees again within microseconds: the call itself, its
 * metadata, its byte queues and everything nghttp2 allocates for its streams.
 *
 * Why: the loop handles a dozen calls at a time under load, so glibc's
 * per-size cache (7 blocks) runs dry and every call pays for malloc's slow
 * path, and the 1 KiB queues make it consolidate its fast bins each time.
 * Here a block of a class is taken from and given back to that class's list.
 *
 * Bounded: each class keeps at most POOL_KEEP_BYTES (and at least
 * POOL_KEEP_MIN blocks); beyond that, and for blocks above the largest
 * class, it is plain malloc and free.  A worker has one loop thread, so the
 * cache is a process global without locks.
 *
 * Large blocks (a message of 64 KiB and more, its rewrite) are kept too, a
 * few of them and POOL_BIG_KEEP_BYTES in all, while large messages flow:
 * glibc serves such sizes from fresh mmap()s or trims them back to the
 * kernel, and touching new pages cost a fifth of the worker's CPU on 1 MiB
 * messages (page faults, zeroing).  pool_trim(), at every STATUS (5 s), gives
 * them back when none was used since the previous one.
 *
 * Under AddressSanitizer every block is its own malloc, so that a use after
 * free is still found.
 */
#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native.h"

#define POOL_MIN_SHIFT 5  /* 32 bytes, header included */
#define POOL_CLASSES 10   /* 32 B .. 16 KiB */
#define POOL_BIG 0xffu
#define POOL_KEEP_BYTES (128 * 1024)
#define POOL_KEEP_MIN 16
#define POOL_BIG_SLOTS 4
#define POOL_BIG_MIN (64 * 1024)
#define POOL_BIG_KEEP_BYTES (4 * 1024 * 1024)

#if defined(__SANITIZE_ADDRESS__)
#define POOL_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_PASSTHROUGH 1
#endif
#endif

/* Before each block; 16 bytes keep the block aligned for anything malloc's is. */
struct pool_head {
	union {
		struct pool_head *next; /* on a free list */
		size_t cls;             /* in use: its class, or POOL_BIG */
	} u;
	size_t size;                    /* what was asked (POOL_BIG: for realloc) */
};

#ifndef POOL_PASSTHROUGH
static struct {
	struct pool_head *free[POOL_CLASSES];
	size_t n[POOL_CLASSES];
	struct pool_head *big[POOL_BIG_SLOTS]; /* kept large blocks */
	size_t big_cap[POOL_BIG_SLOTS];        /* their malloc_usable_size() */
	size_t n_big, big_bytes;
	int big_used; /* since the last pool_trim() */
} pool;

/* A kept large block of at least TOTAL bytes (the smallest), or NULL. */
static struct pool_head *big_take(size_t total)
{
	size_t best = POOL_BIG_SLOTS;
	struct pool_head *h;

	for (size_t i = 0; i < pool.n_big; i++)
		if (pool.big_cap[i] >= total && (best == POOL_BIG_SLOTS ||
						  pool.big_cap[i] < pool.big_cap[best]))
			best = i;
	if (best == POOL_BIG_SLOTS)
		return NULL;
	h = pool.big[best];
	pool.big_bytes -= pool.big_cap[best];
	pool.n_big--;
	pool.big[best] = pool.big[pool.n_big];
	pool.big_cap[best] = pool.big_cap[pool.n_big];
	return h;
}

/* Keep a large block, making room by giving back the oldest; 0 when it is not kept. */
static int big_keep(struct pool_head *h)
{
	size_t cap = malloc_usable_size(h);

	if (cap < POOL_BIG_MIN || cap > POOL_BIG_KEEP_BYTES)
		return 0;
	while (pool.n_big > 0 &&
	       (pool.n_big == POOL_BIG_SLOTS || pool.big_bytes + cap > POOL_BIG_KEEP_BYTES)) {
		free(pool.big[0]);
		pool.big_bytes -= pool.big_cap[0];
		pool.n_big--;
		memmove(pool.big, pool.big + 1, pool.n_big * sizeof(pool.big[0]));
		memmove(pool.big_cap, pool.big_cap + 1, pool.n_big * sizeof(pool.big_cap[0]));
	}
	pool.big[pool.n_big] = h;
	pool.big_cap[pool.n_big] = cap;
	pool.n_big++;
	pool.big_bytes += cap;
	pool.big_used = 1;
	return 1;
}


static size_t class_of(size_t total)
{
	size_t bits; /* of the smallest power of two >= total */

	if (total <= (size_t)1 << POOL_MIN_SHIFT)
		return 0;
	bits = (size_t)(8 * sizeof(unsigned long)) - (size_t)__builtin_clzl((unsigned long)total - 1);
	return bits - POOL_MIN_SHIFT < POOL_CLASSES ? bits - POOL_MIN_SHIFT : POOL_BIG;
}

static size_t class_keep(size_t cls)
{
	size_t n = POOL_KEEP_BYTES >> (POOL_MIN_SHIFT + cls);

	return n < POOL_KEEP_MIN ? POOL_KEEP_MIN : n;
}
#endif

void *pool_alloc(size_t size)
{
#ifdef POOL_PASSTHROUGH
	void *p = malloc(size ? size : 1);

	if (p == NULL)
		abort();
	return p;
#else
	size_t total = sizeof(struct pool_head) + size;
	size_t cls = class_of(total);
	struct pool_head *h;

	if (cls != POOL_BIG && pool.free[cls] != NULL) {
		h = pool.free[cls];
		pool.free[cls] = h->u.next;
		pool.n[cls]--;
		/* the next block's link, so that the next pop does not wait for memory */
		__builtin_prefetch(pool.free[cls]);
	} else if (cls == POOL_BIG && total >= POOL_BIG_MIN && (h = big_take(total)) != NULL) {
		pool.big_used = 1;
	} else {
		h = malloc(cls == POOL_BIG ? total : (size_t)1 << (POOL_MIN_SHIFT + cls));
		if (h == NULL)
			abort();
	}
	h->u.cls = cls;
	h->size = size;
	return h + 1;
#endif
}

void *pool_calloc(size_t size)
{
	void *p = pool_alloc(size);

	memset(p, 0, size);
	return p;
}

void pool_free(void *p)
{
#ifdef POOL_PASSTHROUGH
	free(p);
#else
	struct pool_head *h;
	size_t cls;

	if (p == NULL)
		return;
	h = (struct pool_head *)p - 1;
	cls = h->u.cls;
	if (cls == POOL_BIG) {
		if (!big_keep(h))
			free(h);
		return;
	}
	if (pool.n[cls] >= class_keep(cls)) {
		free(h);
		return;
	}
	h->u.next = pool.free[cls];
	pool.free[cls] = h;
	pool.n[cls]++;
#endif
}

void *pool_realloc(void *p, size_t size)
{
#ifdef POOL_PASSTHROUGH
	p = realloc(p, size ? size : 1);
	if (p == NULL)
		abort();
	return p;
#else
	struct pool_head *h;
	void *q;

	if (p == NULL)
		return pool_alloc(size);
	h = (struct pool_head *)p - 1;
	if (h->u.cls != POOL_BIG) {
		if (sizeof(*h) + size <= (size_t)1 << (POOL_MIN_SHIFT + h->u.cls)) {
			h->size = size; /* still fits its block */
			return p;
		}
	} else if (class_of(sizeof(*h) + size) == POOL_BIG) {
		h = realloc(h, sizeof(*h) + size);
		if (h == NULL)
			abort();
		h->size = size;
		return h + 1;
	}
	q = pool_alloc(size);
	memcpy(q, p, h->size < size ? h->size : size);
	pool_free(p);
	return q;
#endif
}

char *pool_strndup(const void *s, size_t len)
{
	char *p = pool_alloc(len + 1);

	memcpy(p, s, len);
	p[len] = '\0';
	return p;
}

/* ---- nghttp2's allocator ---- */

static void *ng_malloc(size_t size, void *ud)
{
	(void)ud;
	return pool_alloc(size);
}

static void ng_free(void *p, void *ud)
{
	(void)ud;
	pool_free(p);
}

static void *ng_calloc(size_t nmemb, size_t size, void *ud)
{
	(void)ud;
	if (size != 0 && nmemb > SIZE_MAX / size)
		return NULL;
	return pool_calloc(nmemb * size);
}

static void *ng_realloc(void *p, size_t size, void *ud)
{
	(void)ud;
	return pool_realloc(p, size);
}

nghttp2_mem native_nghttp2_mem = { NULL, ng_malloc, ng_free, ng_calloc, ng_realloc };

void pool_trim(void)
{
#ifndef POOL_PASSTHROUGH
	if (!pool.big_used) {
		for (size_t i = 0; i < pool.n_big; i++)
			free(pool.big[i]);
		pool.n_big = 0;
		pool.big_bytes = 0;
	}
	pool.big_used = 0;
#endif
}
