/*
 * spec.quota: see quota.h, and doc/native-backend.md, "Quotas".
 *
 * The count reads the tenant's prefix in pages at one revision R (the first
 * page's), into a fresh index; then a watch from R + 1 keeps that index
 * current, whichever worker or node wrote.  A lost or cancelled watch (a
 * compaction past it, a lost connection) counts again from the start.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "native.h"
#include "pb.h"
#include "quota.h"
#include "usage.h"

#define PAGE_KEYS 1000           /* keys per page of the count, at most */
#define PAGE_BYTES (4 << 20)     /* pages are made smaller when one came back larger */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000

enum quota_state { Q_IDLE, Q_COUNTING, Q_OPENING, Q_READY };

/* A write that was answered: its reservation is held until the watch has seen rev. */
struct settling {
	int64_t rev;
	uint64_t keys, bytes;
};

struct quota {
	struct native *n;
	uint64_t max_keys, max_bytes, max_leases; /* 0: no limit */
	uint8_t *prefix, *end;                    /* the tenant's range in the core etcd */
	size_t prefix_len, end_len;

	enum quota_state state;
	struct usage u;    /* current while Q_READY */
	struct usage next; /* the count under way */
	int64_t count_rev;
	uint8_t *resume;   /* the count goes on after this key (core etcd's view) */
	size_t resume_len;
	unsigned page_keys;
	struct call *watch; /* the internal Watch stream, or NULL */
	int watch_created;
	uv_timer_t retry;
	unsigned failures;
	int busy; /* an internal call of the count is out */
	int leases_out; /* lease counts out (for show); they point at q too */

	uint64_t res_keys, res_bytes, res_leases; /* reserved by writes not yet settled */
	struct settling *settling;
	size_t n_settling, cap_settling;
	struct call *wait_head, *wait_tail; /* writes waiting for the count, oldest first */
	uv_timer_t wait_timer;
	int64_t seen_rev; /* the latest write of this worker's answered that changed the prefix */
	int64_t leases; /* the tenant's leases at the last count, -1: not counted */
	uint64_t refused;
	int closing;
	int handles;
	void (*done)(void *ctx);
	void *done_ctx;
};

static uint64_t now_ms(struct quota *q)
{
	return uv_now(q->n->loop);
}

static uint64_t json_u64(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : 0;
}

static int set_limits(struct quota *q, const cJSON *o, const char **error_r)
{
	if (!cJSON_IsObject(o)) {
		*error_r = "policy.quota: expected {\"max_keys\", \"max_bytes\", \"max_leases\"}";
		return -1;
	}
	q->max_keys = json_u64(o, "max_keys");
	q->max_bytes = json_u64(o, "max_bytes");
	q->max_leases = json_u64(o, "max_leases");
	return 0;
}

int quota_update(struct quota *q, const void *obj, const char **error_r)
{
	return set_limits(q, obj, error_r);
}

struct quota *quota_new(struct native *n, const void *obj, const char **error_r)
{
	const char *prefix = n->host->tenant->prefix;
	struct quota *q = calloc(1, sizeof(*q));

	if (q == NULL)
		abort();
	if (set_limits(q, obj, error_r) < 0) {
		free(q);
		return NULL;
	}
	q->n = n;
	q->prefix_len = strlen(prefix);
	q->prefix = (uint8_t *)strdup(prefix);
	q->end = (uint8_t *)strdup(prefix);
	if (q->prefix == NULL || q->end == NULL)
		abort();
	q->end_len = q->prefix_len;
	q->end[q->end_len - 1]++; /* "/name/" ends before "/name0" */
	q->leases = -1;
	q->page_keys = PAGE_KEYS;
	usage_init(&q->u);
	usage_init(&q->next);
	uv_timer_init(n->loop, &q->retry);
	q->retry.data = q;
	uv_timer_init(n->loop, &q->wait_timer);
	q->wait_timer.data = q;
	q->handles = 2;
	return q;
}

/* ---- waiting writes ------------------------------------------------------------------------ */

static void unlink_waiting(struct quota *q, struct call *c)
{
	struct call **pp = &q->wait_head, *prev = NULL;

	while (*pp != NULL && *pp != c) {
		prev = *pp;
		pp = &(*pp)->q_next;
	}
	if (*pp == NULL)
		return;
	*pp = c->q_next;
	if (q->wait_tail == c)
		q->wait_tail = prev;
	c->q_next = NULL;
	c->q_waiting = 0;
}

static void on_wait_timer(uv_timer_t *t);

/* A write waits for the count (QUOTA_WAIT_MS), or for the watch to catch up (QUOTA_CATCHUP_MS). */
static uint64_t deadline(const struct quota *q, const struct call *c)
{
	return c->q_since + (q->state == Q_READY ? QUOTA_CATCHUP_MS : QUOTA_WAIT_MS);
}

static void schedule_wait(struct quota *q)
{
	uint64_t now = now_ms(q), first = UINT64_MAX;

	for (struct call *c = q->wait_head; c != NULL; c = c->q_next)
		if (deadline(q, c) < first)
			first = deadline(q, c);
	if (first == UINT64_MAX)
		uv_timer_stop(&q->wait_timer);
	else
		uv_timer_start(&q->wait_timer, on_wait_timer, first > now ? first - now : 0, 0);
}

static void wait_for(struct quota *q, struct call *c)
{
	if (c->q_since == 0)
		c->q_since = now_ms(q);
	c->q_waiting = 1;
	if (q->wait_tail != NULL)
		q->wait_tail->q_next = c;
	else
		q->wait_head = c;
	q->wait_tail = c;
	c->waiting_lookup = 1;
	schedule_wait(q);
}

static void on_wait_timer(uv_timer_t *t)
{
	struct quota *q = t->data;
	uint64_t now = now_ms(q);
	struct call *c = q->wait_head, *next;

	for (; c != NULL; c = next) {
		next = c->q_next;
		if (deadline(q, c) > now)
			continue;
		unlink_waiting(q, c);
		if (q->state == Q_READY) {
			/* the watch did not catch up in time: decide on what it has seen */
			c->q_decide = 1;
			call_quota_resumed(c);
			continue;
		}
		c->waiting_lookup = 0;
		call_finish(c, 14, "etcdproxy: quota: the tenant's usage is not counted yet (the "
				   "core etcd did not answer the count); retry");
	}
	schedule_wait(q);
}

/* The count is done: every waiting write is admitted again, in order. */
static void release_waiting(struct quota *q)
{
	struct call *list = q->wait_head;

	q->wait_head = q->wait_tail = NULL;
	uv_timer_stop(&q->wait_timer);
	while (list != NULL) {
		struct call *c = list;

		list = c->q_next;
		c->q_next = NULL;
		c->q_waiting = 0;
		call_quota_resumed(c);
	}
}

/* ---- reservations -------------------------------------------------------------------------- */

static void release(struct quota *q, uint64_t keys, uint64_t bytes)
{
	q->res_keys -= keys < q->res_keys ? keys : q->res_keys;
	q->res_bytes -= bytes < q->res_bytes ? bytes : q->res_bytes;
}

/* The index is current to u.rev: what settled at or before it is in the index now. */
static void settle_up_to(struct quota *q, int64_t rev)
{
	size_t k = 0;

	for (size_t i = 0; i < q->n_settling; i++) {
		if (q->settling[i].rev <= rev)
			release(q, q->settling[i].keys, q->settling[i].bytes);
		else
			q->settling[k++] = q->settling[i];
	}
	q->n_settling = k;
}

void quota_settle(struct quota *q, struct call *c, int ok)
{
	if (q == NULL)
		return;
	if (c->q_leases) {
		/* the lease's record was written before the answer: the next count has it */
		q->res_leases -= c->q_leases < q->res_leases ? c->q_leases : q->res_leases;
		if (ok && q->leases >= 0)
			q->leases++;
		c->q_leases = 0;
	}
	if (!c->q_reserved)
		return;
	c->q_reserved = 0;
	if (!ok || !c->q_wrote || q->state != Q_READY || c->q_rev <= q->u.rev) {
		release(q, c->q_keys, c->q_bytes);
		return;
	}
	if (q->n_settling == q->cap_settling) {
		q->cap_settling = q->cap_settling ? q->cap_settling * 2 : 16;
		q->settling = realloc(q->settling, q->cap_settling * sizeof(*q->settling));
		if (q->settling == NULL)
			abort();
	}
	q->settling[q->n_settling++] = (struct settling){ c->q_rev, c->q_keys, c->q_bytes };
}

void quota_forget(struct quota *q, struct call *c)
{
	if (q == NULL)
		return;
	if (c->q_waiting) {
		unlink_waiting(q, c);
		schedule_wait(q);
	}
	quota_settle(q, c, 0);
}

void quota_response(struct quota *q, struct call *c, const uint8_t *msg, size_t len)
{
	int64_t rev;
	int wrote;

	if (q == NULL ||
	    (c->m->kind != RW_PUT && c->m->kind != RW_TXN && c->m->kind != RW_DELETE_RANGE))
		return;
	if (usage_write_response(c->m->kind, msg, len, &rev, &wrote) < 0) {
		/* unreadable (etcd never sends that): nothing to wait for, the watch counts it */
		rev = 0;
		wrote = 0;
	}
	if (wrote && rev > q->seen_rev)
		q->seen_rev = rev;
	if (c->q_reserved) {
		c->q_rev = rev;
		c->q_wrote = wrote;
	}
}

/* ---- admission ---------------------------------------------------------------------------- */

static int refuse(struct quota *q, struct call *c, const char *msg)
{
	q->refused++;
	call_finish(c, 8, msg); /* RESOURCE_EXHAUSTED */
	return -1;
}

static void on_leases_counted(struct native *n, void *ctx, int ok, int64_t count);

static int admit(struct quota *q, struct call *c, struct usage_delta d);

int quota_admit(struct quota *q, struct call *c, const uint8_t *msg, size_t len)
{
	struct usage_delta d;

	if (c->m->kind == RW_LEASE_GRANT) {
		if (q->max_leases == 0 || c->q_leases)
			return 1;
		/* count the tenant's lease records now: grants are rare, leases expire on their own */
		c->waiting_lookup = 1;
		c->pending_internal++;
		if (native_leases_count(q->n, on_leases_counted, c) < 0) {
			c->pending_internal--;
			c->waiting_lookup = 0;
			call_finish(c, 14, "etcdproxy: quota: cannot count the tenant's leases in the "
					   "core etcd");
			return -1;
		}
		return 0;
	}
	if ((c->m->kind != RW_PUT && c->m->kind != RW_TXN) || c->q_reserved ||
	    (q->max_keys == 0 && q->max_bytes == 0))
		return 1;
	if (q->state != Q_READY) {
		wait_for(q, c);
		return 0;
	}
	if (usage_request_delta(&q->u, c->m->kind, msg, len, &d) < 0)
		return 1; /* malformed: the core etcd refuses it with its own error */
	return admit(q, c, d);
}

int quota_admit_put(struct quota *q, struct call *c, const uint8_t *head, size_t head_len,
		    int64_t value_len, int ignore_value)
{
	struct usage_delta d;

	if (c->q_reserved || (q->max_keys == 0 && q->max_bytes == 0))
		return 1;
	if (q->state != Q_READY) {
		wait_for(q, c);
		return 0;
	}
	if (usage_put_delta(&q->u, head, head_len, value_len, ignore_value, &d) < 0)
		return 1; /* malformed: the core etcd refuses it with its own error */
	return admit(q, c, d);
}

/* A write that adds D at worst, the usage counted: 1 reserved, 0 it waits, -1 refused. */
static int admit(struct quota *q, struct call *c, struct usage_delta d)
{
	char why[400];
	int over;

	over = (q->max_keys > 0 && d.keys > 0 && q->u.keys + q->res_keys + d.keys > q->max_keys) ||
	       (q->max_bytes > 0 && d.bytes > 0 && q->u.bytes + q->res_bytes + d.bytes > q->max_bytes);
	if (over && !c->q_decide && q->seen_rev > q->u.rev) {
		/* a delete this worker saw answered may not have reached the index yet: wait for it */
		wait_for(q, c);
		return 0;
	}
	if (q->max_keys > 0 && d.keys > 0 && q->u.keys + q->res_keys + d.keys > q->max_keys) {
		snprintf(why, sizeof(why), "etcdproxy: quota: maxKeys %" PRIu64 " reached: the tenant "
			 "has %" PRIu64 " keys (and %" PRIu64 " more being written), this request adds "
			 "up to %" PRIu64, q->max_keys, q->u.keys, q->res_keys, d.keys);
		return refuse(q, c, why);
	}
	if (q->max_bytes > 0 && d.bytes > 0 && q->u.bytes + q->res_bytes + d.bytes > q->max_bytes) {
		snprintf(why, sizeof(why), "etcdproxy: quota: maxBytes %" PRIu64 " exceeded: the "
			 "tenant uses %" PRIu64 " bytes (and %" PRIu64 " more being written), this "
			 "request adds up to %" PRIu64 " bytes", q->max_bytes, q->u.bytes,
			 q->res_bytes, d.bytes);
		return refuse(q, c, why);
	}
	c->q_reserved = 1;
	c->q_keys = d.keys;
	c->q_bytes = d.bytes;
	c->q_rev = 0;
	c->q_wrote = 0;
	q->res_keys += d.keys;
	q->res_bytes += d.bytes;
	return 1;
}

static void on_leases_counted(struct native *n, void *ctx, int ok, int64_t count)
{
	struct call *c = ctx;
	struct quota *q = n->quota;
	char why[300];

	if (!call_internal_returned(c))
		return;
	c->waiting_lookup = 0;
	if (q == NULL) {
		call_quota_resumed(c);
		return;
	}
	if (!ok) {
		call_finish(c, 14, "etcdproxy: quota: cannot count the tenant's leases in the core "
				   "etcd");
		return;
	}
	q->leases = count;
	if ((uint64_t)count + q->res_leases + 1 > q->max_leases) {
		snprintf(why, sizeof(why), "etcdproxy: quota: maxLeases %" PRIu64 " reached: the "
			 "tenant holds %" PRId64 " leases (and %" PRIu64 " more being granted), this "
			 "request adds 1", q->max_leases, count, q->res_leases);
		refuse(q, c, why);
		return;
	}
	c->q_leases = 1;
	q->res_leases++;
	call_quota_resumed(c);
}

/* ---- the count and the watch --------------------------------------------------------------- */

static void start_count(struct quota *q);

static void on_retry(uv_timer_t *t)
{
	quota_kick(t->data);
}

/* Something failed: back to idle, try again after a while (sooner when a connection comes). */
static void failed(struct quota *q, const char *what)
{
	uint64_t delay = RETRY_MIN_MS;

	for (unsigned i = 0; i < q->failures && delay < RETRY_MAX_MS; i++)
		delay *= 2;
	if (delay > RETRY_MAX_MS)
		delay = RETRY_MAX_MS;
	q->failures++;
	q->state = Q_IDLE;
	usage_free(&q->next);
	if (q->closing || q->n->stopping)
		return;
	if (q->failures == 1 || q->failures % 10 == 0)
		q->n->host->log(q->n->host, EP_LOG_WARNING, "quota: %s; counting the tenant's usage "
				"again%s", what, q->failures > 1 ? " (still failing)" : "");
	uv_timer_start(&q->retry, on_retry, delay, 0);
}

static size_t range_request(struct quota *q, uint8_t *buf, const uint8_t *key, size_t klen)
{
	uint8_t *p = buf;

	p = ep_pb_put_bytes(p, 1, key, klen);
	p = ep_pb_put_bytes(p, 2, q->end, q->end_len);
	p = ep_pb_put_uint(p, 3, q->page_keys); /* limit */
	if (q->count_rev > 0)
		p = ep_pb_put_uint(p, 4, (uint64_t)q->count_rev); /* revision */
	return (size_t)(p - buf);
}

static void on_watch_message(struct native *n, void *ctx, const uint8_t *msg, size_t len);
static void on_watch_end(struct native *n, void *ctx, int ok, const uint8_t *msg, size_t len);

static void open_watch(struct quota *q)
{
	uint8_t *create = malloc(q->prefix_len + q->end_len + 64);
	uint8_t *req = malloc(q->prefix_len + q->end_len + 80);
	uint8_t *p = create;

	if (create == NULL || req == NULL)
		abort();
	/* WatchCreateRequest: key 1, range_end 2, start_revision 3 */
	p = ep_pb_put_bytes(p, 1, q->prefix, q->prefix_len);
	p = ep_pb_put_bytes(p, 2, q->end, q->end_len);
	p = ep_pb_put_uint(p, 3, (uint64_t)q->u.rev + 1);
	/* WatchRequest: create_request 1 */
	p = ep_pb_put_bytes(req, 1, create, (size_t)(p - create));
	q->state = Q_OPENING;
	q->watch_created = 0;
	q->watch = native_internal_stream(q->n, "/etcdserverpb.Watch/Watch", req,
					  (size_t)(p - req), on_watch_message, on_watch_end, q);
	free(create);
	free(req);
	if (q->watch == NULL)
		failed(q, "cannot open the watch on the tenant's prefix");
}

static void maybe_free(struct quota *q);

static void on_page(struct native *n, void *ctx, int ok, const uint8_t *msg, size_t len)
{
	struct quota *q = ctx;
	const uint8_t *last;
	size_t last_len;
	int64_t rev;
	int more;
	uint8_t *buf;

	q->busy = 0;
	if (q->closing) {
		maybe_free(q); /* closed while this page was out */
		return;
	}
	if (n->stopping)
		return;
	if (!ok || usage_load_page(&q->next, q->prefix_len, msg, len, &rev, &more, &last,
				   &last_len) < 0) {
		failed(q, ok ? "the core etcd's answer to the count cannot be read"
			     : "the count of the tenant's keys failed in the core etcd");
		return;
	}
	if (q->count_rev == 0)
		q->count_rev = rev; /* every further page is read at the first one's revision */
	if (len > PAGE_BYTES && q->page_keys > 1)
		q->page_keys = q->page_keys / 2 > 0 ? q->page_keys / 2 : 1;
	if (more && last != NULL) {
		free(q->resume);
		/* the next key after the last one: the key with a 0 byte appended */
		q->resume = malloc(last_len + 1);
		if (q->resume == NULL)
			abort();
		memcpy(q->resume, last, last_len);
		q->resume[last_len] = 0;
		q->resume_len = last_len + 1;
		buf = malloc(q->resume_len + q->end_len + 40);
		if (buf == NULL)
			abort();
		q->busy = 1;
		if (native_internal_call(n, "/etcdserverpb.KV/Range", buf,
					 range_request(q, buf, q->resume, q->resume_len), on_page,
					 q) < 0) {
			q->busy = 0;
			failed(q, "no connection to the core etcd for the count");
		}
		free(buf);
		return;
	}
	/* counted at count_rev: this is the index now */
	usage_free(&q->u);
	q->u = q->next;
	usage_init(&q->next);
	q->u.rev = q->count_rev;
	settle_up_to(q, q->u.rev);
	open_watch(q);
}

static void on_leases_initial(struct native *n, void *ctx, int ok, int64_t count)
{
	struct quota *q = ctx;

	q->leases_out--;
	if (q->closing) {
		maybe_free(q);
		return;
	}
	if (ok)
		q->leases = count;
}

static void start_count(struct quota *q)
{
	uint8_t *buf = malloc(q->prefix_len + q->end_len + 40);

	if (buf == NULL)
		abort();
	usage_free(&q->next);
	q->count_rev = 0;
	q->state = Q_COUNTING;
	/* the leases too, so that show has them before the first grant */
	if (q->max_leases > 0 && native_leases_count(q->n, on_leases_initial, q) == 0)
		q->leases_out++;
	q->busy = 1;
	if (native_internal_call(q->n, "/etcdserverpb.KV/Range", buf,
				 range_request(q, buf, q->prefix, q->prefix_len), on_page, q) < 0) {
		q->busy = 0;
		failed(q, "no connection to the core etcd for the count");
	}
	free(buf);
}

static void on_watch_message(struct native *n, void *ctx, const uint8_t *msg, size_t len)
{
	struct quota *q = ctx;
	struct usage_watch w;
	char why[300];

	if (q->closing || q->watch == NULL)
		return;
	if (usage_watch_response(&q->u, q->prefix_len, msg, len, &w) < 0) {
		native_internal_cancel(q->watch);
		q->watch = NULL;
		failed(q, "the watch on the tenant's prefix sent an event that cannot be read");
		return;
	}
	if (w.canceled) {
		native_internal_cancel(q->watch);
		q->watch = NULL;
		if (w.compact_revision > 0)
			snprintf(why, sizeof(why), "the watch on the tenant's prefix fell behind a "
				 "compaction (revision %" PRId64 ")", w.compact_revision);
		else
			snprintf(why, sizeof(why), "the core etcd cancelled the watch on the "
				 "tenant's prefix (%.*s)", (int)w.reason_len,
				 w.reason != NULL ? (const char *)w.reason : "");
		q->failures = 0;
		failed(q, why);
		return;
	}
	if (w.created && q->state == Q_OPENING) {
		q->state = Q_READY;
		q->failures = 0;
	}
	settle_up_to(q, q->u.rev);
	/* counted, or caught up a little: what waits is judged again (and may wait on) */
	if (q->state == Q_READY && q->wait_head != NULL)
		release_waiting(q);
}

static void on_watch_end(struct native *n, void *ctx, int ok, const uint8_t *msg, size_t len)
{
	struct quota *q = ctx;

	if (q->watch == NULL)
		return; /* cancelled by us, handled there */
	q->watch = NULL;
	if (q->closing)
		return;
	failed(q, "the watch on the tenant's prefix ended");
}

void quota_kick(struct quota *q)
{
	if (q == NULL || q->closing || q->n->stopping || q->state != Q_IDLE || q->busy)
		return;
	uv_timer_stop(&q->retry);
	if (!up_any_ready(q->n))
		return; /* native_upstream_changed() kicks again */
	start_count(q);
}

/* ---- life --------------------------------------------------------------------------------- */

void quota_report(const struct quota *q, void *obj)
{
	cJSON *o = obj;

	if (q == NULL)
		return;
	cJSON_AddStringToObject(o, "quota_state", q->state == Q_READY ? "counted" : "counting");
	if (q->state == Q_READY) {
		cJSON_AddNumberToObject(o, "quota_keys", (double)q->u.keys);
		cJSON_AddNumberToObject(o, "quota_bytes", (double)q->u.bytes);
	}
	if (q->leases >= 0)
		cJSON_AddNumberToObject(o, "quota_leases", (double)q->leases);
	if (q->max_keys > 0)
		cJSON_AddNumberToObject(o, "quota_max_keys", (double)q->max_keys);
	if (q->max_bytes > 0)
		cJSON_AddNumberToObject(o, "quota_max_bytes", (double)q->max_bytes);
	if (q->max_leases > 0)
		cJSON_AddNumberToObject(o, "quota_max_leases", (double)q->max_leases);
	cJSON_AddNumberToObject(o, "quota_refused", (double)q->refused);
}

/* Freed once its timers are closed and no page of the count is out (it points at q). */
static void maybe_free(struct quota *q)
{
	void (*done)(void *);
	void *ctx;

	if (q->handles > 0 || q->busy || q->leases_out > 0)
		return;
	done = q->done;
	ctx = q->done_ctx;
	usage_free(&q->u);
	usage_free(&q->next);
	free(q->settling);
	free(q->resume);
	free(q->prefix);
	free(q->end);
	free(q);
	if (done != NULL)
		done(ctx);
}

static void on_closed(uv_handle_t *h)
{
	struct quota *q = h->data;

	q->handles--;
	maybe_free(q);
}

void quota_close(struct quota *q, void (*done)(void *ctx), void *ctx)
{
	if (q == NULL) {
		if (done != NULL)
			done(ctx);
		return;
	}
	q->closing = 1;
	while (q->wait_head != NULL) {
		struct call *c = q->wait_head;

		unlink_waiting(q, c);
		if (q->n->stopping) {
			c->waiting_lookup = 0;
			call_finish(c, 14, "etcdproxy: the worker is stopping");
		} else {
			call_quota_resumed(c); /* the quota was removed (n->quota is NULL): it goes on */
		}
	}
	if (q->watch != NULL) {
		struct call *w = q->watch;

		q->watch = NULL;
		native_internal_cancel(w);
	}
	q->done = done;
	q->done_ctx = ctx;
	uv_timer_stop(&q->retry);
	uv_timer_stop(&q->wait_timer);
	uv_close((uv_handle_t *)&q->retry, on_closed);
	uv_close((uv_handle_t *)&q->wait_timer, on_closed);
}
