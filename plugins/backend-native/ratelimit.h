/*
 * spec.rateLimit: a token bucket per tenant (per worker, so per node) in
 * front of the calls the backend forwards, with a bounded FIFO queue.
 *
 * A call that finds a token goes on at once; otherwise it waits its turn in
 * the queue, at most max_wait, and is then refused with RESOURCE_EXHAUSTED
 * "etcdproxy: rate limit ...".  A full queue refuses at once.  A waiting
 * call holds its client's bytes unacknowledged (as during a lease lookup),
 * so its stream's flow control bounds what waits.
 *
 * LeaseKeepAlive streams are never queued: a lease must not expire behind a
 * backlog.  They take a token when one is there and go on regardless.  Watch
 * streams beyond max_watches open at once are refused at creation; a watch
 * stream's events are never held back.
 */
#ifndef EP_NATIVE_RATELIMIT_H
#define EP_NATIVE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

struct native;
struct call;
struct ratelimit;

/* The bucket itself, for the unit test: refill to now (at most burst tokens). */
void rl_bucket_refill(double *tokens, uint64_t *last_us, double rate, double burst,
		      uint64_t now_us);
/* Refill, then take one token if there is one. */
int rl_bucket_take(double *tokens, uint64_t *last_us, double rate, double burst, uint64_t now_us);
/* Microseconds until a token is there (0: now). */
uint64_t rl_bucket_wait_us(double tokens, double rate);
/* Microseconds until a byte bucket in debt (tokens < 0) is out of it (0: now). */
uint64_t rl_debt_wait_us(double tokens, double rate);

/* From the policy's "rate_limit" object; NULL with *error_r (static) when it is not one. */
struct ratelimit *rl_new(struct native *n, const void *policy_json_object, const char **error_r);
/*
 * New settings from a reload (obj NULL: the tenant has no spec.rateLimit any
 * more; what waits goes on).  The bucket keeps its tokens, up to the new
 * burst.  0, or -1 with *error_r (static) and the old settings kept.
 */
int rl_update(struct ratelimit *rl, const void *policy_json_object, const char **error_r);
/* Refuse what waits (the backend stops) and close the timer; done() once it is closed. */
void rl_close(struct ratelimit *rl, void (*done)(void *ctx), void *ctx);

/*
 * A call that is about to be forwarded: 1 go on, 0 it waits (its
 * continuation is native_call_admitted()), -1 refused (it is finished).
 */
int rl_admit(struct ratelimit *rl, struct call *c);
/*
 * bytesPerSecond: message bytes a call moved (a request message, or the
 * answer of a unary call) are taken from the byte bucket, which may run
 * into debt; no call goes on while it is in debt.  A message is never held
 * back itself, so a stream's events are never delayed.
 */
void rl_charge(struct ratelimit *rl, size_t bytes);
/* A call that ends while it waits leaves the queue. */
void rl_forget(struct ratelimit *rl, struct call *c);
void rl_counts(const struct ratelimit *rl, uint64_t *limited_r, uint64_t *delayed_r,
	       size_t *queued_r);

#endif /* EP_NATIVE_RATELIMIT_H */
