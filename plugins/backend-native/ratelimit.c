/*
 * spec.rateLimit: see ratelimit.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "native.h"
#include "ratelimit.h"

struct ratelimit {
	struct native *n;
	double rate, burst, tokens;
	uint64_t last_us;
	/* bytesPerSecond: a bucket of message bytes that may run into debt (see rl_charge) */
	double byte_rate, byte_burst, byte_tokens;
	uint64_t byte_last_us;
	uint64_t max_wait_us;
	size_t max_queue;
	unsigned max_watches;
	struct call *head, *tail; /* waiting, oldest first (call.rl_next) */
	size_t queued;
	uint64_t limited, delayed;
	uv_timer_t timer;
	void (*done)(void *ctx);
	void *done_ctx;
};

void rl_bucket_refill(double *tokens, uint64_t *last_us, double rate, double burst,
		      uint64_t now_us)
{
	if (now_us > *last_us) {
		*tokens += (double)(now_us - *last_us) * rate / 1e6;
		if (*tokens > burst)
			*tokens = burst;
	}
	*last_us = now_us;
}

int rl_bucket_take(double *tokens, uint64_t *last_us, double rate, double burst, uint64_t now_us)
{
	rl_bucket_refill(tokens, last_us, rate, burst, now_us);
	if (*tokens < 1.0)
		return 0;
	*tokens -= 1.0;
	return 1;
}

uint64_t rl_bucket_wait_us(double tokens, double rate)
{
	if (tokens >= 1.0 || rate <= 0)
		return 0;
	return (uint64_t)((1.0 - tokens) * 1e6 / rate) + 1;
}

uint64_t rl_debt_wait_us(double tokens, double rate)
{
	if (tokens >= 0 || rate <= 0)
		return 0;
	return (uint64_t)(-tokens * 1e6 / rate) + 1;
}

static uint64_t now_us(void)
{
	return uv_hrtime() / 1000;
}

/* A call may go now: no byte debt (bytesPerSecond), and a request token (requestsPerSecond). */
static int take(struct ratelimit *rl, uint64_t now)
{
	if (rl->byte_rate > 0) {
		rl_bucket_refill(&rl->byte_tokens, &rl->byte_last_us, rl->byte_rate, rl->byte_burst,
				 now);
		if (rl->byte_tokens < 0)
			return 0;
	}
	if (rl->rate <= 0)
		return 1;
	return rl_bucket_take(&rl->tokens, &rl->last_us, rl->rate, rl->burst, now);
}

/* Until take() can succeed. */
static uint64_t wait_us(const struct ratelimit *rl)
{
	uint64_t a = rl->rate > 0 ? rl_bucket_wait_us(rl->tokens, rl->rate) : 0;
	uint64_t b = rl->byte_rate > 0 ? rl_debt_wait_us(rl->byte_tokens, rl->byte_rate) : 0;

	return a > b ? a : b;
}

void rl_charge(struct ratelimit *rl, size_t bytes)
{
	if (rl == NULL || rl->byte_rate <= 0)
		return;
	rl_bucket_refill(&rl->byte_tokens, &rl->byte_last_us, rl->byte_rate, rl->byte_burst,
			 now_us());
	rl->byte_tokens -= (double)bytes;
}

/* The policy's "rate_limit" object into rl's settings; -1 with *error_r when it is not one. */
static int set_limits(struct ratelimit *rl, const cJSON *o, const char **error_r)
{
	const cJSON *rps = cJSON_GetObjectItemCaseSensitive(o, "requests_per_second");
	const cJSON *burst = cJSON_GetObjectItemCaseSensitive(o, "burst");
	const cJSON *wait = cJSON_GetObjectItemCaseSensitive(o, "max_wait_ms");
	const cJSON *queue = cJSON_GetObjectItemCaseSensitive(o, "max_queue");
	const cJSON *watches = cJSON_GetObjectItemCaseSensitive(o, "max_watches");
	const cJSON *bps = cJSON_GetObjectItemCaseSensitive(o, "bytes_per_second");

	if ((bps != NULL && (!cJSON_IsNumber(bps) || bps->valuedouble < 0)) || !cJSON_IsNumber(rps) || !cJSON_IsNumber(burst) || !cJSON_IsNumber(wait) ||
	    !cJSON_IsNumber(queue) || !cJSON_IsNumber(watches) || rps->valuedouble < 0) {
		*error_r = "policy.rate_limit: expected {\"requests_per_second\", \"burst\", "
			   "\"max_wait_ms\", \"max_queue\", \"max_watches\", \"bytes_per_second\"}";
		return -1;
	}
	rl->rate = rps->valuedouble;
	rl->burst = burst->valuedouble < 1 ? 1 : burst->valuedouble;
	rl->max_wait_us = (uint64_t)wait->valuedouble * 1000;
	rl->max_queue = (size_t)queue->valuedouble;
	rl->max_watches = (unsigned)watches->valuedouble;
	rl->byte_rate = bps != NULL ? bps->valuedouble : 0;
	rl->byte_burst = rl->byte_rate; /* one second's worth */
	return 0;
}

struct ratelimit *rl_new(struct native *n, const void *obj, const char **error_r)
{
	struct ratelimit *rl = calloc(1, sizeof(*rl));

	if (rl == NULL)
		abort();
	if (set_limits(rl, obj, error_r) < 0) {
		free(rl);
		return NULL;
	}
	rl->n = n;
	rl->tokens = rl->burst; /* a fresh worker starts with a full bucket */
	rl->last_us = now_us();
	rl->byte_tokens = rl->byte_burst;
	rl->byte_last_us = rl->last_us;
	uv_timer_init(n->loop, &rl->timer);
	rl->timer.data = rl;
	return rl;
}

static void refuse(struct ratelimit *rl, struct call *c, const char *why)
{
	char msg[300];

	rl->limited++;
	if (rl->byte_rate > 0 && rl->rate > 0)
		snprintf(msg, sizeof(msg), "etcdproxy: rate limit: %s (spec.rateLimit: %.0f requests "
			 "per second, burst %.0f; %.0f bytes per second)", why, rl->rate, rl->burst,
			 rl->byte_rate);
	else if (rl->byte_rate > 0)
		snprintf(msg, sizeof(msg), "etcdproxy: rate limit: %s (spec.rateLimit: %.0f bytes "
			 "per second)", why, rl->byte_rate);
	else
		snprintf(msg, sizeof(msg), "etcdproxy: rate limit: %s (spec.rateLimit: %.0f requests "
			 "per second, burst %.0f)", why, rl->rate, rl->burst);
	call_finish(c, 8, msg); /* RESOURCE_EXHAUSTED */
}

static void unlink_call(struct ratelimit *rl, struct call *c)
{
	struct call **pp = &rl->head, *prev = NULL;

	while (*pp != NULL && *pp != c) {
		prev = *pp;
		pp = &(*pp)->rl_next;
	}
	if (*pp == NULL)
		return;
	*pp = c->rl_next;
	if (rl->tail == c)
		rl->tail = prev;
	c->rl_next = NULL;
	c->rl_queued = 0;
	rl->queued--;
}

static void on_timer(uv_timer_t *t);

static void schedule(struct ratelimit *rl)
{
	uint64_t now = now_us(), wait, deadline;

	if (rl->head == NULL) {
		uv_timer_stop(&rl->timer);
		return;
	}
	wait = wait_us(rl);
	deadline = rl->head->rl_since_us + rl->max_wait_us;
	if (deadline > now && deadline - now < wait)
		wait = deadline - now;
	if (deadline <= now)
		wait = 0;
	uv_timer_start(&rl->timer, on_timer, (wait + 999) / 1000, 0);
}

static void on_timer(uv_timer_t *t)
{
	struct ratelimit *rl = t->data;
	uint64_t now = now_us();

	/* the oldest first, as long as there are tokens */
	while (rl->head != NULL && take(rl, now)) {
		struct call *c = rl->head;

		unlink_call(rl, c);
		native_call_admitted(c);
	}
	/* those that waited too long */
	while (rl->head != NULL && now - rl->head->rl_since_us >= rl->max_wait_us) {
		struct call *c = rl->head;
		char why[120];

		unlink_call(rl, c);
		snprintf(why, sizeof(why), "waited %llu ms for its turn",
			 (unsigned long long)((now - c->rl_since_us) / 1000));
		refuse(rl, c, why);
	}
	schedule(rl);
}

int rl_admit(struct ratelimit *rl, struct call *c)
{
	uint64_t now = now_us();

	if (rl == NULL)
		return 1;
	if (c->m->kind == RW_WATCH && rl->max_watches > 0 &&
	    c->n->counters.active_watch_streams > rl->max_watches) {
		char why[160];

		snprintf(why, sizeof(why), "%llu watch streams would be open, the limit is %u "
			 "(spec.rateLimit.maxWatches)",
			 (unsigned long long)c->n->counters.active_watch_streams, rl->max_watches);
		refuse(rl, c, why);
		return -1;
	}
	if (rl->rate <= 0 && rl->byte_rate <= 0)
		return 1; /* only a watch limit */
	if (c->m->kind == RW_LEASE_KEEPALIVE) {
		/* counted when a token is there, never held: a lease must not expire behind a queue */
		if (rl->rate > 0)
			rl_bucket_take(&rl->tokens, &rl->last_us, rl->rate, rl->burst, now);
		return 1;
	}
	/* first come, first served: nobody overtakes a waiting call */
	if (rl->head == NULL && take(rl, now))
		return 1;
	if (rl->queued >= rl->max_queue || rl->max_wait_us == 0) {
		char why[120];

		snprintf(why, sizeof(why), "%zu calls already wait", rl->queued);
		refuse(rl, c, why);
		return -1;
	}
	c->rl_queued = 1;
	c->rl_since_us = now;
	c->rl_next = NULL;
	if (rl->tail != NULL)
		rl->tail->rl_next = c;
	else
		rl->head = c;
	rl->tail = c;
	rl->queued++;
	rl->delayed++;
	if (rl->head == c)
		schedule(rl);
	return 0;
}

int rl_update(struct ratelimit *rl, const void *obj, const char **error_r)
{
	if (obj == NULL) {
		/* no limit any more: whatever waits goes on */
		rl->rate = 0;
		rl->max_watches = 0;
	} else if (set_limits(rl, obj, error_r) < 0) {
		return -1;
	}
	if (rl->tokens > rl->burst)
		rl->tokens = rl->burst;
	if (rl->byte_tokens > rl->byte_burst)
		rl->byte_tokens = rl->byte_burst;
	if (rl->rate <= 0 && rl->byte_rate <= 0) {
		while (rl->head != NULL) {
			struct call *c = rl->head;

			unlink_call(rl, c);
			native_call_admitted(c);
		}
	}
	schedule(rl); /* the next token and the deadlines, at the new rate */
	return 0;
}

void rl_forget(struct ratelimit *rl, struct call *c)
{
	if (rl == NULL || !c->rl_queued)
		return;
	unlink_call(rl, c);
	schedule(rl);
}

void rl_counts(const struct ratelimit *rl, uint64_t *limited_r, uint64_t *delayed_r,
	       size_t *queued_r)
{
	*limited_r = rl ? rl->limited : 0;
	*delayed_r = rl ? rl->delayed : 0;
	*queued_r = rl ? rl->queued : 0;
}

static void on_closed(uv_handle_t *h)
{
	struct ratelimit *rl = h->data;
	void (*done)(void *) = rl->done;
	void *ctx = rl->done_ctx;

	free(rl);
	if (done != NULL)
		done(ctx);
}

void rl_close(struct ratelimit *rl, void (*done)(void *ctx), void *ctx)
{
	if (rl == NULL) {
		if (done != NULL)
			done(ctx);
		return;
	}
	while (rl->head != NULL) {
		struct call *c = rl->head;

		unlink_call(rl, c);
		refuse(rl, c, "the worker is stopping");
	}
	rl->done = done;
	rl->done_ctx = ctx;
	uv_timer_stop(&rl->timer);
	uv_close((uv_handle_t *)&rl->timer, on_closed);
}
