/* Restart delays: exponential, capped, forgotten after a stable run. */
#ifndef EP_BACKOFF_H
#define EP_BACKOFF_H

#include <stdint.h>

struct ep_backoff {
	uint64_t initial_ms;
	uint64_t max_ms;
	unsigned max_failures; /* consecutive failures before giving up */
	unsigned failures;     /* consecutive failures so far */
};

void ep_backoff_init(struct ep_backoff *b, uint64_t initial_ms, uint64_t max_ms,
		     unsigned max_failures);

/*
 * Record one failure.  Returns the delay before the next attempt in ms, or
 * -1 when max_failures consecutive failures have been reached (give up).
 * The first failure restarts at once; the second waits initial_ms, each next
 * one twice as long, up to max_ms.
 */
int64_t ep_backoff_fail(struct ep_backoff *b);

/* The process ran long enough: forget the failures. */
void ep_backoff_reset(struct ep_backoff *b);

#endif /* EP_BACKOFF_H */
