/*
 * The Kubernetes source: see kube-source.h.
 */
#include "build-config.h"

#define EP_LOG_SUBSYS "kubernetes"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "files.h"
#include "kube-ca.h"
#include "kube-client.h"
#include "kube-lease.h"
#include "kube-publish.h"
#include "kube-source.h"
#include "kubeconfig.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"

#define API_PATH "/apis/etcd.xmudrii.com/v1alpha1/etcdstorages"
#define BACKOFF_INITIAL_MS 500
#define BACKOFF_MAX_MS 30000
#define APPLY_DELAY_MS 50   /* a burst of events becomes one reload of the tenant set */
#define STATUS_DELAY_MS 100 /* tenant state changes come in bursts too */
#define REQUEST_TIMEOUT_S 30

/* What the source knows of one object. */
struct kobj {
	struct kobj *next;
	char *name;
	char *rv;          /* the object's resourceVersion, NULL until seen from the server */
	long long generation;
	cJSON *status;     /* the status as the server last showed it */
	char *cache_text;  /* what its cache file holds */
	int seen;          /* during a relist */
};

struct kube_source {
	struct supervisor *sv;
	struct kube_client *kc;
	struct kube_publish *pub;
	struct kube_ca *ca;
	struct kube_lease *lease;
	char *origin;
	char *cache_dir;

	/* the reflector */
	struct kube_req *req; /* the list or watch in flight */
	int watching;
	uint64_t watch_started_ms;
	unsigned watch_events;
	int relist;           /* the watch must be replaced by a list (410) */
	char *rv;             /* the last resourceVersion seen: where a watch starts */
	int synced;           /* a list has completed */
	unsigned failures;
	uv_timer_t retry;
	uv_timer_t apply;
	struct kobj *objs;
	char *last_error;
	uint64_t lists, watches;

	/* status */
	uv_timer_t status_timer;
	struct kube_req *status_req;
	char *status_name; /* the object status_req writes */
	cJSON *status_flips; /* the Events it brings, once it has landed */
	int status_again;  /* something changed during a pass */
	uint64_t next_resync_ms;
	unsigned status_failures; /* in a row: the retry backs off */
	char *status_error;
	char **queue;      /* names still to write in this pass */
	size_t n_queue;
	uint64_t status_writes;

	int handles;
	int stopping;
};

static void start_list(struct kube_source *ks);
static void start_watch(struct kube_source *ks);
static void status_schedule(struct kube_source *ks, uint64_t delay_ms);

/* ---- the cache ----------------------------------------------------------------------------- */

static struct kobj *kobj_find(struct kube_source *ks, const char *name)
{
	for (struct kobj *o = ks->objs; o != NULL; o = o->next)
		if (strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

static void kobj_free(struct kobj *o)
{
	free(o->name);
	free(o->rv);
	cJSON_Delete(o->status);
	free(o->cache_text);
	free(o);
}

/* A name that can be a file name here: the CRD's pattern allows nothing else anyway. */
static int name_ok(const char *name)
{
	return name[0] != '\0' && name[0] != '.' && strchr(name, '/') == NULL &&
	       strlen(name) <= 253;
}

static char *cache_path(const struct kube_source *ks, const char *name)
{
	return ep_strdup_printf("%s/%s.json", ks->cache_dir, name);
}

static void on_apply(uv_timer_t *t)
{
	struct kube_source *ks = t->data;

	supervisor_reload_tenants(ks->sv, "kubernetes");
	kube_publish_poke(ks->pub, 0);
	kube_ca_poke(ks->ca);
	status_schedule(ks, STATUS_DELAY_MS);
}

static void schedule_apply(struct kube_source *ks)
{
	if (!uv_is_active((uv_handle_t *)&ks->apply))
		uv_timer_start(&ks->apply, on_apply, APPLY_DELAY_MS, 0);
}

/*
 * The part of an object that makes the tenant: its cache file.  Status and
 * the metadata that changes with every write stay out, so that a status
 * write does not rewrite the file.
 */
static char *cache_text_of(const cJSON *obj)
{
	const cJSON *meta = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
	cJSON *o = cJSON_CreateObject(), *m;
	static const char *const keep[] = { "name", "uid", "generation", "labels", "annotations" };
	char *text;

	cJSON_AddStringToObject(o, "apiVersion", EP_API_VERSION);
	cJSON_AddStringToObject(o, "kind", EP_KIND);
	m = cJSON_AddObjectToObject(o, "metadata");
	for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(meta, keep[i]);

		if (v != NULL && strcmp(keep[i], "annotations") != 0)
			cJSON_AddItemToObject(m, keep[i], cJSON_Duplicate(v, 1));
	}
	if (cJSON_GetObjectItemCaseSensitive(obj, "spec") != NULL)
		cJSON_AddItemToObject(o, "spec",
				      cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(obj, "spec"), 1));
	text = cJSON_Print(o);
	cJSON_Delete(o);
	return text;
}

static void upsert(struct kube_source *ks, const cJSON *obj)
{
	const cJSON *meta = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(meta, "name");
	const cJSON *rv = cJSON_GetObjectItemCaseSensitive(meta, "resourceVersion");
	const cJSON *gen = cJSON_GetObjectItemCaseSensitive(meta, "generation");
	struct kobj *o;
	char *text, *path, *error = NULL;

	if (!cJSON_IsString(name) || !name_ok(name->valuestring)) {
		ep_warn("an EtcdStorage without a usable metadata.name is ignored");
		return;
	}
	o = kobj_find(ks, name->valuestring);
	if (o == NULL) {
		o = ep_malloc0(sizeof(*o));
		o->name = ep_strdup(name->valuestring);
		o->next = ks->objs;
		ks->objs = o;
	}
	o->seen = 1;
	kube_publish_set_uid(ks->pub, o->name,
			     cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(meta, "uid")));
	free(o->rv);
	o->rv = cJSON_IsString(rv) ? ep_strdup(rv->valuestring) : NULL;
	o->generation = cJSON_IsNumber(gen) ? (long long)gen->valuedouble : 0;
	cJSON_Delete(o->status);
	o->status = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(obj, "status"), 1);
	text = cache_text_of(obj);
	if (o->cache_text != NULL && strcmp(o->cache_text, text) == 0) {
		free(text);
		return;
	}
	path = cache_path(ks, o->name);
	if (ep_file_write_atomic(path, text, strlen(text), 0600, &error) < 0) {
		ep_err("cannot keep EtcdStorage %s: %s", o->name, error);
		free(error);
	} else {
		ep_info("EtcdStorage %s %s", o->name, o->cache_text ? "changed" : "is new");
	}
	free(path);
	free(o->cache_text);
	o->cache_text = text;
	schedule_apply(ks);
}

static void remove_obj(struct kube_source *ks, const char *name)
{
	for (struct kobj **pp = &ks->objs; *pp != NULL; pp = &(*pp)->next) {
		struct kobj *o = *pp;
		char *path;

		if (strcmp(o->name, name) != 0)
			continue;
		path = cache_path(ks, name);
		if (unlink(path) < 0 && errno != ENOENT)
			ep_err("cannot remove %s: %s", path, strerror(errno));
		free(path);
		ep_info("EtcdStorage %s was deleted", name);
		*pp = o->next;
		kobj_free(o);
		schedule_apply(ks);
		return;
	}
}

/* The objects of the last run, from their files: a relist diffs against them. */
static void load_cache(struct kube_source *ks)
{
	struct ep_tenant_set *set = &ks->sv->set;

	for (size_t i = 0; i < set->n; i++) {
		const struct ep_tenant_entry *e = &set->entries[i];
		const char *base;
		struct kobj *o;
		char *text = NULL, *error = NULL;
		size_t len;

		if (!e->from_cluster)
			continue;
		base = strrchr(e->file, '/') + 1;
		o = ep_malloc0(sizeof(*o));
		o->name = ep_strdup(base);
		o->name[strlen(o->name) - 5] = '\0'; /* ".json" */
		if (ep_file_read(e->file, 1 << 20, &text, &len, &error) == 0)
			o->cache_text = text;
		free(error);
		o->next = ks->objs;
		ks->objs = o;
	}
}

/* ---- the reflector ------------------------------------------------------------------------- */

static void set_error(struct kube_source *ks, const char *what, const char *why)
{
	char *msg = ep_strdup_printf("%s: %s", what, why);

	if (ks->last_error == NULL || strcmp(ks->last_error, msg) != 0)
		ep_warn("%s (%s)", msg, ks->origin);
	free(ks->last_error);
	ks->last_error = msg;
}

static void on_retry(uv_timer_t *t)
{
	struct kube_source *ks = t->data;

	if (ks->relist || ks->rv == NULL)
		start_list(ks);
	else
		start_watch(ks);
}

/* Try again after a backoff with jitter, at least what Retry-After asked for. */
static void retry_later(struct kube_source *ks, unsigned retry_after_s)
{
	uint64_t ms = BACKOFF_INITIAL_MS;

	for (unsigned i = 0; i < ks->failures && ms < BACKOFF_MAX_MS; i++)
		ms *= 2;
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	ms = ms / 2 + (uint64_t)rand() % (ms / 2 + 1); /* jitter: half to the whole */
	if ((uint64_t)retry_after_s * 1000 > ms)
		ms = (uint64_t)retry_after_s * 1000;
	ks->failures++;
	uv_timer_start(&ks->retry, on_retry, ms, 0);
}

static void on_list(void *ctx, const struct kube_result *res)
{
	struct kube_source *ks = ctx;
	cJSON *list, *items, *item;
	const cJSON *rv;
	int n;

	ks->req = NULL;
	if (res->status != 200) {
		set_error(ks, "listing EtcdStorages", kube_status_message(res));
		retry_later(ks, res->retry_after);
		return;
	}
	list = cJSON_ParseWithLength(res->body, res->len);
	items = cJSON_GetObjectItemCaseSensitive(list, "items");
	rv = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(list, "metadata"),
					      "resourceVersion");
	if (!cJSON_IsArray(items) || !cJSON_IsString(rv)) {
		cJSON_Delete(list);
		set_error(ks, "listing EtcdStorages", "the answer is not an EtcdStorageList");
		retry_later(ks, 0);
		return;
	}
	for (struct kobj *o = ks->objs; o != NULL; o = o->next)
		o->seen = 0;
	cJSON_ArrayForEach(item, items)
		upsert(ks, item);
	/* what the list does not have was deleted, maybe while no watch was open */
	for (struct kobj *o = ks->objs, *next; o != NULL; o = next) {
		next = o->next;
		if (!o->seen)
			remove_obj(ks, o->name);
	}
	free(ks->rv);
	ks->rv = ep_strdup(rv->valuestring);
	n = cJSON_GetArraySize(items);
	cJSON_Delete(list);
	ks->lists++;
	ks->relist = 0;
	ks->failures = 0;
	free(ks->last_error);
	ks->last_error = NULL;
	if (!ks->synced)
		ep_notice("in sync with the cluster: %d EtcdStorage%s (%s)", n, n == 1 ? "" : "s",
			  ks->origin);
	ks->synced = 1;
	schedule_apply(ks);
	start_watch(ks);
}

static void start_list(struct kube_source *ks)
{
	if (ks->stopping)
		return;
	ks->watching = 0;
	ks->req = kube_request(ks->kc, "GET", API_PATH, NULL, NULL, REQUEST_TIMEOUT_S, on_list,
			       NULL, ks);
}

/* One watch event: {"type": ..., "object": ...}.  -1 ends the watch (the done callback acts). */
static int on_event(void *ctx, const char *line, size_t len)
{
	struct kube_source *ks = ctx;
	cJSON *ev = cJSON_ParseWithLength(line, len);
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
	const cJSON *obj = cJSON_GetObjectItemCaseSensitive(ev, "object");
	const cJSON *meta = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
	const cJSON *rv = cJSON_GetObjectItemCaseSensitive(meta, "resourceVersion");
	int r = 0;

	if (!cJSON_IsString(type) || !cJSON_IsObject(obj)) {
		set_error(ks, "watching EtcdStorages", "a line of the watch is not an event");
		ks->relist = 1;
		cJSON_Delete(ev);
		return -1;
	}
	if (strcmp(type->valuestring, "ERROR") == 0) {
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(obj, "code");
		const cJSON *msg = cJSON_GetObjectItemCaseSensitive(obj, "message");

		if (cJSON_IsNumber(code) && code->valueint == 410) {
			ep_info("the watch's resourceVersion %s has expired: listing again",
				ks->rv ? ks->rv : "");
			ks->relist = 1;
		} else {
			set_error(ks, "watching EtcdStorages",
				  cJSON_IsString(msg) ? msg->valuestring : "an ERROR event");
		}
		r = -1;
	} else if (strcmp(type->valuestring, "ADDED") == 0 ||
		   strcmp(type->valuestring, "MODIFIED") == 0) {
		upsert(ks, obj);
	} else if (strcmp(type->valuestring, "DELETED") == 0) {
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(meta, "name");

		if (cJSON_IsString(name))
			remove_obj(ks, name->valuestring);
	}
	ks->watch_events++;
	/* BOOKMARK: only its resourceVersion matters */
	if (r == 0 && cJSON_IsString(rv)) {
		free(ks->rv);
		ks->rv = ep_strdup(rv->valuestring);
	}
	cJSON_Delete(ev);
	return r;
}

static void on_watch_end(void *ctx, const struct kube_result *res)
{
	struct kube_source *ks = ctx;

	ks->req = NULL;
	ks->watching = 0;
	if (ks->relist) {
		start_list(ks);
		return;
	}
	if (res->status == 410) {
		ks->relist = 1;
		start_list(ks);
		return;
	}
	if (res->status == 200 && res->error == NULL && ks->last_error == NULL &&
	    (ks->watch_events > 0 || ep_now_ms() - ks->watch_started_ms >= 1000)) {
		/* the server's timeout: watch on from where this one ended, no list */
		ks->failures = 0;
		start_watch(ks);
		return;
	}
	if (res->status != 200 || res->error != NULL)
		set_error(ks, "watching EtcdStorages", kube_status_message(res));
	free(ks->last_error); /* reported; the next success is not an error */
	ks->last_error = NULL;
	retry_later(ks, res->retry_after);
}

static void start_watch(struct kube_source *ks)
{
	char *path;
	int timeout;

	if (ks->stopping)
		return;
	/* spread over 5 to 10 minutes, as client-go does, so that nodes do not re-watch together */
	timeout = 300 + rand() % 300;
	path = ep_strdup_printf(API_PATH "?watch=1&allowWatchBookmarks=true&resourceVersion=%s"
				"&timeoutSeconds=%d", ks->rv, timeout);
	ks->watching = 1;
	ks->watches++;
	ks->watch_started_ms = ep_now_ms();
	ks->watch_events = 0;
	/* the server ends it within timeoutSeconds; a silent peer is given up a minute later */
	ks->req = kube_request(ks->kc, "GET", path, NULL, NULL, timeout + 60, on_watch_end,
			       on_event, ks);
	free(path);
}

/* ---- status --------------------------------------------------------------------------------- */

static void now_rfc3339(char *buf, size_t size)
{
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The error text without its "FILE:LINE:COL: " (the file is only our cache of the object). */
static const char *strip_position(const char *error)
{
	const char *p = strstr(error, ".json:");

	if (p == NULL)
		return error;
	p = strstr(p, ": ");
	return p != NULL ? p + 2 : error;
}

static const cJSON *find_condition(const cJSON *status, const char *type)
{
	const cJSON *c;

	cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(status, "conditions"))
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "type");

		if (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0)
			return c;
	}
	return NULL;
}

/* metav1.Condition; lastTransitionTime moves only when the status flips. */
static void add_condition(cJSON *conds, const cJSON *old_status, const char *type, int status,
			  const char *reason, const char *message, long long generation)
{
	const cJSON *old = find_condition(old_status, type);
	const cJSON *old_s = cJSON_GetObjectItemCaseSensitive(old, "status");
	const cJSON *old_t = cJSON_GetObjectItemCaseSensitive(old, "lastTransitionTime");
	const char *s = status > 0 ? "True" : status == 0 ? "False" : "Unknown";
	cJSON *c = cJSON_CreateObject();
	char now[32];

	cJSON_AddStringToObject(c, "type", type);
	cJSON_AddStringToObject(c, "status", s);
	cJSON_AddNumberToObject(c, "observedGeneration", (double)generation);
	if (cJSON_IsString(old_s) && strcmp(old_s->valuestring, s) == 0 && cJSON_IsString(old_t)) {
		cJSON_AddStringToObject(c, "lastTransitionTime", old_t->valuestring);
	} else {
		now_rfc3339(now, sizeof(now));
		cJSON_AddStringToObject(c, "lastTransitionTime", now);
	}
	cJSON_AddStringToObject(c, "reason", reason);
	cJSON_AddStringToObject(c, "message", message != NULL ? message : "");
	cJSON_AddItemToArray(conds, c);
}

/* What this node would write into o's status: conditions, observedGeneration, its node entry. */
static cJSON *desired_status(struct kube_source *ks, const struct kobj *o, int leader)
{
	struct supervisor *sv = ks->sv;
	const struct ep_tenant_entry *e = NULL;
	const struct tenant *t;
	cJSON *st, *conds, *nodes, *node;
	const char *ready_reason, *msg = NULL;
	char *file = cache_path(ks, o->name);
	int ready = 0;

	/* its entry by file: a name that a file in storages_dir has is not this object's */
	for (size_t i = 0; i < sv->set.n && e == NULL; i++)
		if (sv->set.entries[i].from_cluster && strcmp(sv->set.entries[i].file, file) == 0)
			e = &sv->set.entries[i];
	free(file);
	if (e == NULL)
		return NULL; /* not loaded yet */
	t = e->error == NULL ? supervisor_find(sv, o->name) : NULL;
	st = cJSON_CreateObject();
	if (!leader)
		goto node_only;
	cJSON_AddNumberToObject(st, "observedGeneration", (double)o->generation);
	conds = cJSON_AddArrayToObject(st, "conditions");
	if (e->error != NULL) {
		const char *why = strip_position(e->error);
		const char *reason = strstr(why, "overlaps the reserved prefix") ? "NameReserved"
				     : strstr(why, "is already used by")	   ? "Conflict"
										   : "InvalidSpec";

		add_condition(conds, o->status, "Accepted", 0, reason, why, o->generation);
		ready_reason = "NotAccepted";
		msg = why;
	} else {
		add_condition(conds, o->status, "Accepted", 1, "Valid",
			      "the spec is valid and the tenant is served", o->generation);
		if (t == NULL) {
			ready_reason = "Pending";
		} else {
			switch (t->state) {
			case TENANT_READY: ready = 1; ready_reason = "Serving"; break;
			case TENANT_STARTING: ready_reason = "Starting"; break;
			case TENANT_UNHEALTHY: ready_reason = "Unhealthy"; break;
			case TENANT_BACKOFF: ready_reason = "Restarting"; break;
			case TENANT_FAILED: ready_reason = "Failed"; break;
			default: ready_reason = "Stopped"; break;
			}
			msg = ready ? t->endpoint : t->last_error;
		}
	}
	if (e->error == NULL) {
		const char *reason, *message;
		int published = kube_publish_state(ks->pub, o->name, &reason, &message);
		const cJSON *was = find_condition(o->status, "CertificatesPublished");
		const char *ws = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(was, "status"));
		const char *wr = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(was, "reason"));
		const char *wm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(was, "message"));

		if (published == -2 && ws != NULL && wr != NULL) {
			/* a new leader has not looked yet: what its predecessor found stays */
			published = strcmp(ws, "True") == 0 ? 1 : strcmp(ws, "False") == 0 ? 0 : -1;
			reason = wr;
			message = wm;
		} else if (published == -2) {
			published = -1;
		}
		add_condition(conds, o->status, "CertificatesPublished", published, reason, message,
			      o->generation);
	}
	add_condition(conds, o->status, "Ready", ready, ready_reason,
		      ready ? "the endpoint answers" : msg, o->generation);
	/* the etcdproxy-controller's condition, for tools written against it */
	add_condition(conds, o->status, "Deployed", ready, ready_reason,
		      ready ? "the endpoint answers" : msg, o->generation);
node_only:
	if (e->error != NULL) {
		msg = strip_position(e->error);
	} else if (t != NULL) {
		ready = t->state == TENANT_READY;
		msg = ready ? t->endpoint : t->last_error;
	}
	nodes = cJSON_AddObjectToObject(st, "nodes");
	node = cJSON_AddObjectToObject(nodes, sv->global->kube.node_name);
	cJSON_AddBoolToObject(node, "ready", ready);
	cJSON_AddStringToObject(node, "state", t != NULL ? tenant_state_name(t->state) : "none");
	if (t != NULL && t->endpoint != NULL)
		cJSON_AddStringToObject(node, "endpoint", t->endpoint);
	if (!ready && msg != NULL)
		cJSON_AddStringToObject(node, "message", msg);
	return st;
}

/* The server's status already says what we would write (other nodes' entries aside). */
static int status_current(const struct kube_source *ks, const cJSON *have, const cJSON *want)
{
	const char *node = ks->sv->global->kube.node_name;
	const cJSON *hn, *wn;

	if (have == NULL)
		return 0;
	if (cJSON_GetObjectItemCaseSensitive(want, "conditions") != NULL &&
	    (!cJSON_Compare(cJSON_GetObjectItemCaseSensitive(have, "observedGeneration"),
			    cJSON_GetObjectItemCaseSensitive(want, "observedGeneration"), 1) ||
	     !cJSON_Compare(cJSON_GetObjectItemCaseSensitive(have, "conditions"),
			    cJSON_GetObjectItemCaseSensitive(want, "conditions"), 1)))
		return 0; /* the leader's part */
	hn = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(have, "nodes"), node);
	wn = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(want, "nodes"), node);
	return cJSON_Compare(hn, wn, 1);
}

static void status_next(struct kube_source *ks);

static void on_status_get(void *ctx, const struct kube_result *res);

/* ---- Events --------------------------------------------------------------------------------- */

static void on_event_posted(void *ctx, const struct kube_result *res)
{
	(void)ctx;
	if (res->status != 201 && res->status != 200)
		ep_debug("an Event was not recorded: %s", kube_status_message(res));
}

/*
 * An Event about the EtcdStorage name, for `kubectl describe` and `kubectl
 * get events`: in the namespace "default", where client-go's recorder puts
 * those of cluster-scoped objects.  Fire and forget: a lost Event loses no
 * state (the conditions say it all).
 */
static void post_event(struct kube_source *ks, const char *name, const char *uid, int normal,
		       const char *reason, const char *message)
{
	const char *node = ks->sv->global->kube.node_name;
	cJSON *ev = cJSON_CreateObject(), *meta, *inv, *src;
	char now[32], *gen = ep_strdup_printf("%s.", name), *body;

	now_rfc3339(now, sizeof(now));
	cJSON_AddStringToObject(ev, "apiVersion", "v1");
	cJSON_AddStringToObject(ev, "kind", "Event");
	meta = cJSON_AddObjectToObject(ev, "metadata");
	cJSON_AddStringToObject(meta, "generateName", gen);
	cJSON_AddStringToObject(meta, "namespace", "default");
	inv = cJSON_AddObjectToObject(ev, "involvedObject");
	cJSON_AddStringToObject(inv, "apiVersion", EP_API_VERSION);
	cJSON_AddStringToObject(inv, "kind", EP_KIND);
	cJSON_AddStringToObject(inv, "name", name);
	if (uid != NULL)
		cJSON_AddStringToObject(inv, "uid", uid);
	cJSON_AddStringToObject(ev, "type", normal ? "Normal" : "Warning");
	cJSON_AddStringToObject(ev, "reason", reason);
	cJSON_AddStringToObject(ev, "message", message);
	src = cJSON_AddObjectToObject(ev, "source");
	cJSON_AddStringToObject(src, "component", "etcdproxyd");
	cJSON_AddStringToObject(src, "host", node);
	cJSON_AddStringToObject(ev, "reportingComponent", "etcdproxyd");
	cJSON_AddStringToObject(ev, "reportingInstance", node);
	cJSON_AddStringToObject(ev, "firstTimestamp", now);
	cJSON_AddStringToObject(ev, "lastTimestamp", now);
	cJSON_AddNumberToObject(ev, "count", 1);
	body = cJSON_PrintUnformatted(ev);
	cJSON_Delete(ev);
	kube_request(ks->kc, "POST", "/api/v1/namespaces/default/events", "application/json", body,
		     REQUEST_TIMEOUT_S, on_event_posted, NULL, ks);
	free(body);
	free(gen);
}

/*
 * The Events of a status write: one for each condition that flips from what
 * the server holds (before) to what is written (after).  Posted once the
 * write has landed (flips_post()); decided before it, since the watch may
 * bring the written status back before the write's own answer.
 */
static void flips_decide(struct kube_source *ks, const cJSON *before, const cJSON *after)
{
	static const char *const types[] = { "Accepted", "CertificatesPublished", "Ready" };

	cJSON_Delete(ks->status_flips);
	ks->status_flips = cJSON_CreateArray();

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		const cJSON *a = find_condition(after, types[i]), *b = find_condition(before, types[i]);
		const char *as = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "status"));
		const char *bs = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(b, "status"));
		const char *reason = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "reason"));
		const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(a, "message"));
		char *text;

		if (as == NULL || reason == NULL || (bs != NULL && strcmp(as, bs) == 0))
			continue;
		text = ep_strdup_printf("%s=%s: %.900s", types[i], as, msg != NULL ? msg : "");
		{
			cJSON *f = cJSON_CreateObject();

			cJSON_AddBoolToObject(f, "normal", strcmp(as, "False") != 0);
			cJSON_AddStringToObject(f, "reason", reason);
			cJSON_AddStringToObject(f, "message", text);
			cJSON_AddItemToArray(ks->status_flips, f);
		}
		free(text);
	}
}

static void flips_post(struct kube_source *ks, const char *name, const char *uid)
{
	const cJSON *f;

	cJSON_ArrayForEach(f, ks->status_flips)
		post_event(ks, name, uid, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(f, "normal")),
			   cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(f, "reason")),
			   cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(f, "message")));
	cJSON_Delete(ks->status_flips);
	ks->status_flips = NULL;
}

static void on_status_written(void *ctx, const struct kube_result *res)
{
	struct kube_source *ks = ctx;
	struct kobj *o = kobj_find(ks, ks->status_name);
	char *path;

	ks->status_req = NULL;
	if (res->status == 200) {
		cJSON *obj = cJSON_ParseWithLength(res->body, res->len);

		ks->status_writes++;
		if (o != NULL && obj != NULL) {
			const cJSON *meta = cJSON_GetObjectItemCaseSensitive(obj, "metadata");
			const cJSON *rv = cJSON_GetObjectItemCaseSensitive(meta, "resourceVersion");

			flips_post(ks, o->name,
				   cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(meta, "uid")));
			cJSON_Delete(o->status);
			o->status = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(obj, "status"), 1);
			if (cJSON_IsString(rv)) {
				free(o->rv);
				o->rv = ep_strdup(rv->valuestring);
			}
		}
		cJSON_Delete(obj);
	} else if (res->status == 409 && o != NULL) {
		/* someone wrote in between: read the object again and decide again */
		ep_debug("status of %s: conflict, reading it again", ks->status_name);
		path = ep_strdup_printf(API_PATH "/%s", ks->status_name);
		ks->status_req = kube_request(ks->kc, "GET", path, NULL, NULL, REQUEST_TIMEOUT_S,
					      on_status_get, NULL, ks);
		free(path);
		return;
	} else if (res->status != 404) {
		const char *why = kube_status_message(res);

		if (ks->status_error == NULL || strcmp(ks->status_error, why) != 0)
			ep_warn("writing the status of %s: %s", ks->status_name, why);
		free(ks->status_error);
		ks->status_error = ep_strdup(why);
		ks->status_failures++;
		ks->status_again = 1;
	} else {
		ks->status_failures = 0;
	}
	if (res->status == 200) {
		ks->status_failures = 0;
		free(ks->status_error);
		ks->status_error = NULL;
	}
	status_next(ks);
}

static void on_status_get(void *ctx, const struct kube_result *res)
{
	struct kube_source *ks = ctx;
	struct kobj *o = kobj_find(ks, ks->status_name);

	ks->status_req = NULL;
	if (res->status == 200 && o != NULL) {
		cJSON *obj = cJSON_ParseWithLength(res->body, res->len);

		if (obj != NULL)
			upsert(ks, obj);
		cJSON_Delete(obj);
		/* again, with the fresh resourceVersion */
		ks->queue = ep_realloc(ks->queue, (ks->n_queue + 1) * sizeof(char *));
		ks->queue[ks->n_queue++] = ep_strdup(ks->status_name);
	} else if (res->status != 404) {
		ks->status_again = 1;
	}
	status_next(ks);
}

/* Write the next status of the pass that needs it; at the end, maybe another pass. */
static void status_next(struct kube_source *ks)
{
	while (ks->n_queue > 0 && ks->status_req == NULL && !ks->stopping) {
		char *name = ks->queue[--ks->n_queue];
		struct kobj *o = kobj_find(ks, name);
		cJSON *want, *patch, *meta;
		char *body, *path;

		free(ks->status_name);
		ks->status_name = name;
		if (o == NULL || o->rv == NULL)
			continue;
		want = desired_status(ks, o, kube_lease_is_leader(ks->lease));
		if (want == NULL || status_current(ks, o->status, want)) {
			cJSON_Delete(want);
			continue;
		}
		/* a merge patch removes a key only when it says null */
		{
			cJSON *node = cJSON_GetObjectItemCaseSensitive(
				cJSON_GetObjectItemCaseSensitive(want, "nodes"),
				ks->sv->global->kube.node_name);

			if (cJSON_GetObjectItemCaseSensitive(node, "message") == NULL)
				cJSON_AddNullToObject(node, "message");
			if (cJSON_GetObjectItemCaseSensitive(node, "endpoint") == NULL)
				cJSON_AddNullToObject(node, "endpoint");
		}
		flips_decide(ks, o->status, want);
		patch = cJSON_CreateObject();
		meta = cJSON_AddObjectToObject(patch, "metadata");
		cJSON_AddStringToObject(meta, "resourceVersion", o->rv);
		cJSON_AddItemToObject(patch, "status", want);
		body = cJSON_PrintUnformatted(patch);
		cJSON_Delete(patch);
		path = ep_strdup_printf(API_PATH "/%s/status", name);
		ks->status_req = kube_request(ks->kc, "PATCH", path, "application/merge-patch+json",
					      body, REQUEST_TIMEOUT_S, on_status_written, NULL, ks);
		free(path);
		free(body);
	}
	if (ks->n_queue == 0 && ks->status_req == NULL && ks->status_again) {
		uint64_t delay = STATUS_DELAY_MS;

		/* failing writes (no RBAC for the status, say) back off to a minute */
		for (unsigned i = 0; i < ks->status_failures && delay < 60000; i++)
			delay *= 2;
		ks->status_again = 0;
		status_schedule(ks, delay < 60000 ? delay : 60000);
	}
}

static void on_status_timer(uv_timer_t *t)
{
	struct kube_source *ks = t->data;

	if (ks->status_req != NULL || ks->n_queue > 0) {
		ks->status_again = 1;
		return;
	}
	if (!ks->synced)
		return; /* the first list pokes again */
	for (struct kobj *o = ks->objs; o != NULL; o = o->next) {
		ks->queue = ep_realloc(ks->queue, (ks->n_queue + 1) * sizeof(char *));
		ks->queue[ks->n_queue++] = ep_strdup(o->name);
	}
	status_next(ks);
	/* the resync: a status, Secret or ConfigMap someone else changed is put right */
	if (ep_now_ms() >= ks->next_resync_ms) {
		ks->next_resync_ms = ep_now_ms() + ks->sv->global->kube.resync_ms;
		kube_publish_poke(ks->pub, 1);
	}
	if (!uv_is_active((uv_handle_t *)&ks->status_timer))
		uv_timer_start(&ks->status_timer, on_status_timer,
			       ks->next_resync_ms - ep_now_ms() + 1, 0);
}

static void status_schedule(struct kube_source *ks, uint64_t delay_ms)
{
	if (ks->stopping)
		return;
	if (uv_is_active((uv_handle_t *)&ks->status_timer) &&
	    uv_timer_get_due_in(&ks->status_timer) <= delay_ms)
		return;
	uv_timer_start(&ks->status_timer, on_status_timer, delay_ms, 0);
}

void kube_source_poke(struct kube_source *ks)
{
	if (ks != NULL)
		status_schedule(ks, STATUS_DELAY_MS);
}

/* ---- life ----------------------------------------------------------------------------------- */

static void on_leader(void *ctx, int leader)
{
	struct kube_source *ks = ctx;

	/* the new leader puts conditions and certificates right; a former one stops writing */
	kube_publish_poke(ks->pub, 1);
	kube_ca_new_term(ks->ca);
	status_schedule(ks, STATUS_DELAY_MS);
}

int kube_source_is_leader(const struct kube_source *ks)
{
	return ks != NULL && kube_lease_is_leader(ks->lease);
}

int kube_source_start(struct supervisor *sv, struct kube_source **ks_r, char **error_r)
{
	const struct ep_kube_settings *k = &sv->global->kube;
	struct ep_kube_conn conn;
	struct kube_source *ks;
	int r;

	*ks_r = NULL;
	if (strcmp(k->kubeconfig, "in-cluster") == 0)
		r = ep_kube_in_cluster(k->service_account_dir, &conn, error_r);
	else
		r = ep_kubeconfig_load(k->kubeconfig, &conn, error_r);
	if (r < 0)
		return r;
	ks = ep_malloc0(sizeof(*ks));
	ks->sv = sv;
	ks->origin = ep_strdup(conn.origin);
	ks->kc = kube_client_new(sv->loop, &conn, error_r);
	ep_kube_conn_free(&conn);
	if (ks->kc == NULL) {
		free(ks->origin);
		free(ks);
		return -EINVAL;
	}
	kube_client_set_agent(ks->kc, k->node_name);
	ks->pub = kube_publish_new(sv, ks->kc);
	ks->ca = kube_ca_new(sv, ks->kc, ks->pub);
	ks->cache_dir = ep_kube_cache_dir(sv->global);
	if (ep_mkdir_p(ks->cache_dir, 0700) < 0) {
		*error_r = ep_strdup_printf("%s: %s", ks->cache_dir, strerror(errno));
		kube_ca_free(ks->ca);
		kube_publish_free(ks->pub);
		kube_client_free(ks->kc);
		free(ks->cache_dir);
		free(ks->origin);
		free(ks);
		return -EINVAL;
	}
	uv_timer_init(sv->loop, &ks->retry);
	uv_timer_init(sv->loop, &ks->apply);
	uv_timer_init(sv->loop, &ks->status_timer);
	ks->retry.data = ks->apply.data = ks->status_timer.data = ks;
	ks->handles = 3;
	load_cache(ks);
	ks->lease = kube_lease_start(sv->loop, ks->kc, &sv->global->kube, on_leader, ks);
	ep_notice("watching EtcdStorages of the cluster (%s)", ks->origin);
	srand((unsigned)(ep_now_ms() ^ (uint64_t)getpid()));
	start_list(ks);
	*ks_r = ks;
	return 0;
}

static void on_closed(uv_handle_t *h)
{
	struct kube_source *ks = h->data;

	if (--ks->handles > 0)
		return;
	while (ks->objs != NULL) {
		struct kobj *o = ks->objs;

		ks->objs = o->next;
		kobj_free(o);
	}
	for (size_t i = 0; i < ks->n_queue; i++)
		free(ks->queue[i]);
	free(ks->queue);
	free(ks->status_name);
	cJSON_Delete(ks->status_flips);
	free(ks->status_error);
	free(ks->rv);
	free(ks->last_error);
	free(ks->cache_dir);
	free(ks->origin);
	free(ks);
}

/* The lease is given back (or was not ours): now the client can go. */
static void stop_finish(void *ctx)
{
	struct kube_source *ks = ctx;

	kube_lease_stop(ks->lease);
	kube_client_free(ks->kc); /* cancels whatever is still in flight */
	uv_close((uv_handle_t *)&ks->retry, on_closed);
	uv_close((uv_handle_t *)&ks->apply, on_closed);
	uv_close((uv_handle_t *)&ks->status_timer, on_closed);
}

void kube_source_stop(struct kube_source *ks)
{
	if (ks == NULL || ks->stopping)
		return;
	ks->stopping = 1;
	kube_cancel(ks->req);
	kube_cancel(ks->status_req);
	ks->req = ks->status_req = NULL;
	uv_timer_stop(&ks->retry);
	uv_timer_stop(&ks->apply);
	uv_timer_stop(&ks->status_timer);
	kube_ca_free(ks->ca);
	ks->ca = NULL;
	kube_publish_free(ks->pub);
	ks->pub = NULL;
	kube_lease_release(ks->lease, stop_finish, ks);
}

static size_t n_objs(const struct kube_source *ks)
{
	size_t n = 0;

	for (const struct kobj *o = ks->objs; o != NULL; o = o->next)
		n++;
	return n;
}

cJSON *kube_source_describe(const struct kube_source *ks)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "connection", ks->origin);
	cJSON_AddBoolToObject(o, "synced", ks->synced);
	cJSON_AddBoolToObject(o, "leader", kube_lease_is_leader(ks->lease));
	cJSON_AddStringToObject(o, "lease_holder", kube_lease_holder(ks->lease));
	cJSON_AddStringToObject(o, "state", ks->watching ? "watching" : ks->req ? "listing"
								   : "waiting");
	if (ks->rv != NULL)
		cJSON_AddStringToObject(o, "resource_version", ks->rv);
	cJSON_AddNumberToObject(o, "objects", (double)n_objs(ks));
	cJSON_AddNumberToObject(o, "lists", (double)ks->lists);
	cJSON_AddNumberToObject(o, "watches", (double)ks->watches);
	cJSON_AddNumberToObject(o, "status_writes", (double)ks->status_writes);
	if (ks->last_error != NULL)
		cJSON_AddStringToObject(o, "last_error", ks->last_error);
	return o;
}
