/*
 * One leader among the nodes' etcdproxyd, elected the way client-go's
 * leaderelection package does it, with a coordination.k8s.io/v1 Lease named
 * "etcdproxyd" in kubernetes.namespace:
 *
 *   - every retry_period, read the Lease; a node acquires it when there is
 *     none, or when its record has not changed for lease_duration by this
 *     node's own clock (the holder's renewTime is never compared with our
 *     time: clocks of two nodes may disagree);
 *   - writes are updates with the resourceVersion read (optimistic
 *     concurrency): of two nodes that try at once, one gets 409 and stays a
 *     follower;
 *   - the leader renews every retry_period, and steps down at once, before
 *     anyone else could take over, when no renewal succeeded for
 *     renew_deadline;
 *   - a leader that stops releases the Lease (holder "", duration 1 s), so a
 *     successor need not wait. The release is an update of our last write; a
 *     renewal still in flight when the stop came may have been committed since
 *     (409): then the Lease is read again and released if it is still ours, at
 *     most RELEASE_TRIES times.
 */
#include "build-config.h"

#define EP_LOG_SUBSYS "kubernetes"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <cjson/cJSON.h>

#include "kube-client.h"
#include "kube-lease.h"
#include "log.h"
#include "util.h"

#define LEASE_NAME "etcdproxyd"
#define TIMEOUT_S 10
#define RELEASE_TRIES 3

struct kube_lease {
	uv_loop_t *loop;
	struct kube_client *kc;
	char *ns, *identity;
	uint64_t duration_ms, renew_deadline_ms, retry_ms;
	kube_lease_cb *cb;
	void *ctx;

	uv_timer_t timer;
	struct kube_req *req;
	int leader;
	uint64_t last_renew_ms;   /* our last successful write as leader (monotonic) */
	char *observed;           /* the record last read: holder, renewTime, transitions */
	uint64_t observed_ms;     /* when it last changed, by our clock */
	char *holder;             /* who holds it, as last read */
	cJSON *written;           /* the Lease as our last successful write left it */
	uint64_t sent_ms;         /* when the write in flight was sent */
	int releasing, closing;
	int release_tries;
	void (*released)(void *ctx);
	void *released_ctx;
};

static void attempt(struct kube_lease *l);
static void release_read(struct kube_lease *l);

static char *lease_path(const struct kube_lease *l, int collection)
{
	if (collection)
		return ep_strdup_printf("/apis/coordination.k8s.io/v1/namespaces/%s/leases", l->ns);
	return ep_strdup_printf("/apis/coordination.k8s.io/v1/namespaces/%s/leases/" LEASE_NAME,
				l->ns);
}

/* metav1.MicroTime, as client-go writes it */
static void micro_time(char *buf, size_t size)
{
	struct timeval tv;
	struct tm tm;
	char sec[32];

	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(sec, sizeof(sec), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, size, "%s.%06ldZ", sec, (long)tv.tv_usec);
}

static void set_leader(struct kube_lease *l, int leader, const char *why)
{
	if (l->leader == leader)
		return;
	l->leader = leader;
	if (leader)
		ep_notice("this node (%s) is the leader now: %s", l->identity, why);
	else
		ep_notice("this node (%s) is no longer the leader: %s", l->identity, why);
	l->cb(l->ctx, leader);
}

static void on_timer(uv_timer_t *t);

static void schedule(struct kube_lease *l, uint64_t ms)
{
	if (!l->closing && !l->releasing)
		uv_timer_start(&l->timer, on_timer, ms, 0);
}

static void check_deadline(struct kube_lease *l)
{
	/* a leader that could not renew in time must stop before another may take over */
	if (l->leader && ep_now_ms() - l->last_renew_ms >= l->renew_deadline_ms)
		set_leader(l, 0, "the lease could not be renewed in time");
}

static cJSON *spec_of(const struct kube_lease *l, const cJSON *old_spec, int release)
{
	const cJSON *holder = cJSON_GetObjectItemCaseSensitive(old_spec, "holderIdentity");
	const cJSON *acq = cJSON_GetObjectItemCaseSensitive(old_spec, "acquireTime");
	const cJSON *tr = cJSON_GetObjectItemCaseSensitive(old_spec, "leaseTransitions");
	int same = cJSON_IsString(holder) && strcmp(holder->valuestring, l->identity) == 0;
	cJSON *spec = cJSON_CreateObject();
	char now[48];

	micro_time(now, sizeof(now));
	cJSON_AddStringToObject(spec, "holderIdentity", release ? "" : l->identity);
	cJSON_AddNumberToObject(spec, "leaseDurationSeconds",
				release ? 1 : (double)((l->duration_ms + 999) / 1000));
	cJSON_AddStringToObject(spec, "acquireTime",
				same && cJSON_IsString(acq) ? acq->valuestring : now);
	cJSON_AddStringToObject(spec, "renewTime", now);
	/* as client-go counts: 0 when created, one more each time the holder changes */
	cJSON_AddNumberToObject(spec, "leaseTransitions",
				(cJSON_IsNumber(tr) ? tr->valuedouble : 0) +
					(same || release || old_spec == NULL ? 0 : 1));
	return spec;
}

static void on_written(void *ctx, const struct kube_result *res)
{
	struct kube_lease *l = ctx;

	l->req = NULL;
	if (l->releasing) {
		if (res->status == 200) {
			ep_info("the lease is released");
		} else if (res->status == 409 && l->release_tries < RELEASE_TRIES) {
			release_read(l); /* it changed since our last write: still ours? */
			return;
		} else {
			ep_warn("cannot release the lease %s/" LEASE_NAME ": %s", l->ns,
				kube_status_message(res));
		}
		l->released(l->released_ctx);
		return;
	}
	if (res->status == 200 || res->status == 201) {
		cJSON_Delete(l->written);
		l->written = cJSON_ParseWithLength(res->body, res->len);
		/* from when it was sent: the server may have committed it long before we heard */
		l->last_renew_ms = l->sent_ms;
		set_leader(l, 1, res->status == 201 ? "it created the lease" : "it holds the lease");
	} else {
		/* 409: another node wrote first; it is the leader now, or will be */
		if (res->status != 409)
			ep_warn("cannot write the lease %s/" LEASE_NAME ": %s", l->ns,
				kube_status_message(res));
		check_deadline(l);
		if (res->status == 409)
			set_leader(l, 0, "another node took the lease");
	}
	schedule(l, l->retry_ms);
}

static void write_lease(struct kube_lease *l, const cJSON *obj, int release)
{
	cJSON *body = cJSON_CreateObject(), *meta;
	const cJSON *old_meta = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
	const cJSON *rv = cJSON_GetObjectItemCaseSensitive(old_meta, "resourceVersion");
	char *text, *path;

	cJSON_AddStringToObject(body, "apiVersion", "coordination.k8s.io/v1");
	cJSON_AddStringToObject(body, "kind", "Lease");
	meta = cJSON_AddObjectToObject(body, "metadata");
	cJSON_AddStringToObject(meta, "name", LEASE_NAME);
	cJSON_AddStringToObject(meta, "namespace", l->ns);
	if (cJSON_IsString(rv))
		cJSON_AddStringToObject(meta, "resourceVersion", rv->valuestring);
	cJSON_AddItemToObject(body, "spec",
			      spec_of(l, cJSON_GetObjectItemCaseSensitive(obj, "spec"), release));
	text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	path = lease_path(l, obj == NULL);
	l->sent_ms = ep_now_ms();
	l->req = kube_request(l->kc, obj == NULL ? "POST" : "PUT", path, "application/json", text,
			      TIMEOUT_S, on_written, NULL, l);
	free(path);
	free(text);
}

static void on_read(void *ctx, const struct kube_result *res)
{
	struct kube_lease *l = ctx;
	cJSON *obj;
	const cJSON *spec, *holder;
	char *record;
	uint64_t now = ep_now_ms();
	int mine;

	l->req = NULL;
	if (res->status == 404) {
		write_lease(l, NULL, 0);
		return;
	}
	if (res->status != 200) {
		ep_warn("cannot read the lease %s/" LEASE_NAME ": %s", l->ns, kube_status_message(res));
		check_deadline(l);
		schedule(l, l->retry_ms);
		return;
	}
	obj = cJSON_ParseWithLength(res->body, res->len);
	spec = cJSON_GetObjectItemCaseSensitive(obj, "spec");
	holder = cJSON_GetObjectItemCaseSensitive(spec, "holderIdentity");
	if (!cJSON_IsObject(spec)) {
		ep_warn("the lease %s/" LEASE_NAME " is not a Lease", l->ns);
		cJSON_Delete(obj);
		check_deadline(l);
		schedule(l, l->retry_ms);
		return;
	}
	record = cJSON_PrintUnformatted(spec);
	if (l->observed == NULL || strcmp(l->observed, record) != 0) {
		/* the record moved: the holder is alive as of now, by our clock */
		free(l->observed);
		l->observed = record;
		l->observed_ms = now;
		free(l->holder);
		l->holder = ep_strdup(cJSON_IsString(holder) ? holder->valuestring : "");
	} else {
		free(record);
	}
	mine = strcmp(l->holder, l->identity) == 0;
	if (!mine && l->holder[0] != '\0' && now - l->observed_ms < l->duration_ms) {
		set_leader(l, 0, "another node holds the lease");
		cJSON_Delete(obj);
		schedule(l, l->retry_ms);
		return;
	}
	write_lease(l, obj, 0); /* renew ours, or take an expired or released one */
	cJSON_Delete(obj);
}

static void attempt(struct kube_lease *l)
{
	char *path;

	if (l->req != NULL || l->closing)
		return;
	check_deadline(l);
	path = lease_path(l, 0);
	l->req = kube_request(l->kc, "GET", path, NULL, NULL, TIMEOUT_S, on_read, NULL, l);
	free(path);
}

static void on_timer(uv_timer_t *t)
{
	attempt(t->data);
}

struct kube_lease *kube_lease_start(uv_loop_t *loop, struct kube_client *kc,
				    const struct ep_kube_settings *k, kube_lease_cb *cb, void *ctx)
{
	struct kube_lease *l = ep_malloc0(sizeof(*l));

	l->loop = loop;
	l->kc = kc;
	l->ns = ep_strdup(k->namespace);
	l->identity = ep_strdup(k->node_name);
	l->duration_ms = k->lease_duration_ms;
	l->renew_deadline_ms = k->renew_deadline_ms;
	l->retry_ms = k->retry_period_ms;
	l->cb = cb;
	l->ctx = ctx;
	uv_timer_init(loop, &l->timer);
	l->timer.data = l;
	uv_timer_start(&l->timer, on_timer, 0, 0);
	return l;
}

int kube_lease_is_leader(const struct kube_lease *l)
{
	return l != NULL && l->leader && !l->closing &&
	       ep_now_ms() - l->last_renew_ms < l->renew_deadline_ms;
}

const char *kube_lease_holder(const struct kube_lease *l)
{
	return l != NULL && l->holder != NULL ? l->holder : "";
}

static void on_closed(uv_handle_t *h)
{
	struct kube_lease *l = h->data;

	free(l->ns);
	free(l->identity);
	free(l->observed);
	free(l->holder);
	cJSON_Delete(l->written);
	free(l);
}

static void on_release_read(void *ctx, const struct kube_result *res)
{
	struct kube_lease *l = ctx;
	cJSON *obj = NULL;
	const cJSON *holder;

	l->req = NULL;
	if (res->status == 200)
		obj = cJSON_ParseWithLength(res->body, res->len);
	holder = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(obj, "spec"),
						  "holderIdentity");
	if (cJSON_IsString(holder) && strcmp(holder->valuestring, l->identity) == 0) {
		write_lease(l, obj, 1);
		cJSON_Delete(obj);
		return;
	}
	if (res->status != 200)
		ep_warn("cannot release the lease %s/" LEASE_NAME ": %s", l->ns,
			kube_status_message(res));
	else
		ep_info("the lease is no longer this node's: nothing to release");
	cJSON_Delete(obj);
	l->released(l->released_ctx);
}

static void release_read(struct kube_lease *l)
{
	char *path = lease_path(l, 0);

	l->release_tries++;
	l->req = kube_request(l->kc, "GET", path, NULL, NULL, TIMEOUT_S, on_release_read, NULL, l);
	free(path);
}

void kube_lease_release(struct kube_lease *l, void (*done)(void *ctx), void *ctx)
{
	int was_leader;

	if (l == NULL || l->closing || l->releasing) {
		done(ctx);
		return;
	}
	was_leader = l->leader;
	/* step down first: nothing is written as leader from here on */
	set_leader(l, 0, "stopping");
	if (l->req != NULL) {
		kube_cancel(l->req);
		l->req = NULL;
	}
	uv_timer_stop(&l->timer);
	l->releasing = 1;
	if (!was_leader || l->written == NULL) {
		done(ctx);
		return;
	}
	l->released = done;
	l->released_ctx = ctx;
	/* our last write's resourceVersion: if anyone wrote since, this fails (409) */
	write_lease(l, l->written, 1);
}

void kube_lease_stop(struct kube_lease *l)
{
	if (l == NULL)
		return;
	l->closing = 1;
	kube_cancel(l->req);
	l->req = NULL;
	uv_close((uv_handle_t *)&l->timer, on_closed);
}
