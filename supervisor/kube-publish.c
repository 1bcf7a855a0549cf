/*
 * Certificates into Secrets and ConfigMaps: see kube-publish.h.
 */
#include "build-config.h"

#define EP_LOG_SUBSYS "kubernetes"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>

#include "files.h"
#include "kube-client.h"
#include "kube-publish.h"
#include "kube-source.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"

#define CHECK_EVERY_MS 2000 /* the ca source's directories are looked at this often */
#define RETRY_MS 5000
#define MANAGED_BY "etcdproxy"
#define TIMEOUT_S 30

enum out_kind { OUT_SECRET, OUT_CONFIGMAP };

struct output {
	struct output *next;
	char *tenant;
	enum out_kind kind;
	char *ns, *name;
	char *dir;        /* where the ca source keeps the material */
	char *published;  /* the data (JSON text) the cluster was last seen to hold */
	int state;        /* 1 published, 0 failed, -1 not yet */
	char *reason, *message;
	int present;
	int queued;
};

struct tenant_uid {
	struct tenant_uid *next;
	char *tenant, *uid;
};

struct kube_publish {
	struct supervisor *sv;
	struct kube_client *kc;
	struct output *outs;
	struct tenant_uid *uids;
	uv_timer_t timer;
	struct kube_req *req;
	struct output *current; /* the output req is about */
	char *current_data;     /* what it should hold */
	int resync;
	int settled; /* the outputs were looked at since this node became the leader */
	int closing;
};

static void pass(struct kube_publish *kp);
static void next(struct kube_publish *kp);
static void on_timer(uv_timer_t *t);

static const char *kind_name(enum out_kind k)
{
	return k == OUT_SECRET ? "Secret" : "ConfigMap";
}

static void set_state(struct output *o, int state, const char *reason, const char *message)
{
	if (state == 0 && (o->state != 0 || o->message == NULL || strcmp(o->message, message) != 0))
		ep_warn("%s %s/%s of tenant %s: %s", kind_name(o->kind), o->ns, o->name, o->tenant,
			message);
	o->state = state;
	free(o->reason);
	free(o->message);
	o->reason = ep_strdup(reason);
	o->message = ep_strdup(message);
}

const char *kube_publish_uid(struct kube_publish *kp, const char *tenant)
{
	for (struct tenant_uid *u = kp->uids; u != NULL; u = u->next)
		if (strcmp(u->tenant, tenant) == 0)
			return u->uid;
	return NULL;
}

void kube_publish_set_uid(struct kube_publish *kp, const char *tenant, const char *uid)
{
	struct tenant_uid *u;

	if (kp == NULL || uid == NULL)
		return;
	for (u = kp->uids; u != NULL; u = u->next)
		if (strcmp(u->tenant, tenant) == 0)
			break;
	if (u == NULL) {
		u = ep_malloc0(sizeof(*u));
		u->tenant = ep_strdup(tenant);
		u->next = kp->uids;
		kp->uids = u;
	}
	free(u->uid);
	u->uid = ep_strdup(uid);
}

/* ---- what should be where ----------------------------------------------------------------- */

static struct output *find_out(struct kube_publish *kp, const char *tenant, enum out_kind k,
			       const char *ns, const char *name)
{
	for (struct output *o = kp->outs; o != NULL; o = o->next)
		if (o->kind == k && strcmp(o->tenant, tenant) == 0 && strcmp(o->ns, ns) == 0 &&
		    strcmp(o->name, name) == 0)
			return o;
	return NULL;
}

static void want(struct kube_publish *kp, const char *tenant, enum out_kind k,
		 const struct ep_k8s_ref *ref, char *dir)
{
	struct output *o = find_out(kp, tenant, k, ref->namespace, ref->name);

	if (o == NULL) {
		o = ep_malloc0(sizeof(*o));
		o->tenant = ep_strdup(tenant);
		o->kind = k;
		o->ns = ep_strdup(ref->namespace);
		o->name = ep_strdup(ref->name);
		o->state = -1;
		o->next = kp->outs;
		kp->outs = o;
	}
	free(o->dir);
	o->dir = dir;
	o->present = 1;
}

static void output_free(struct output *o)
{
	free(o->tenant);
	free(o->ns);
	free(o->name);
	free(o->dir);
	free(o->published);
	free(o->reason);
	free(o->message);
	free(o);
}

/* The outputs of the tenant set as it is now. */
static void rebuild(struct kube_publish *kp)
{
	const struct ep_global_config *g = kp->sv->global;
	const struct ep_tenant_set *set = &kp->sv->set;

	for (struct output *o = kp->outs; o != NULL; o = o->next)
		o->present = 0;
	for (size_t i = 0; i < set->n; i++) {
		const struct ep_tenant_config *t = set->entries[i].config;

		if (t == NULL || !t->tls.enabled || strcmp(t->tls.source, "ca") != 0)
			continue;
		for (size_t k = 0; k < t->n_client_cert_secrets; k++)
			want(kp, t->name, OUT_SECRET, &t->client_cert_secrets[k],
			     ep_kube_output_dir(g, t->name, &t->client_cert_secrets[k]));
		for (size_t k = 0; k < t->n_ca_cert_config_maps; k++)
			want(kp, t->name, OUT_CONFIGMAP, &t->ca_cert_config_maps[k],
			     ep_kube_output_dir(g, t->name,
						t->n_client_cert_secrets ? &t->client_cert_secrets[0]
									 : NULL));
	}
	for (struct output **pp = &kp->outs; *pp != NULL;) {
		struct output *o = *pp;

		if (!o->present && o != kp->current) {
			*pp = o->next;
			output_free(o);
		} else {
			pp = &o->next;
		}
	}
}

/* The data the object should hold, base64 for a Secret: {"tls.crt": ..., ...}; NULL: not yet. */
static char *data_of(const struct output *o)
{
	static const char *const secret_keys[] = { "tls.crt", "tls.key", "ca.crt" };
	cJSON *d = cJSON_CreateObject();
	char *text = NULL, *error = NULL, *path, *res;
	size_t len;

	for (size_t i = 0; i < (o->kind == OUT_SECRET ? 3u : 1u); i++) {
		const char *key = o->kind == OUT_SECRET ? secret_keys[i] : "ca.crt";

		path = ep_strdup_printf("%s/%s", o->dir, key);
		if (ep_file_read(path, 1 << 20, &text, &len, &error) < 0) {
			free(error);
			free(path);
			cJSON_Delete(d);
			return NULL;
		}
		free(path);
		if (o->kind == OUT_SECRET) {
			char *b = ep_base64_encode(text, len);

			cJSON_AddStringToObject(d, key, b);
			free(b);
		} else {
			/* serving-ca.crt: the name the etcdproxy-controller used */
			cJSON_AddStringToObject(d, "ca.crt", text);
			cJSON_AddStringToObject(d, "serving-ca.crt", text);
		}
		free(text);
	}
	res = cJSON_PrintUnformatted(d);
	cJSON_Delete(d);
	return res;
}

/* ---- writing -------------------------------------------------------------------------------- */

static char *object_path(const struct output *o, int collection)
{
	const char *res = o->kind == OUT_SECRET ? "secrets" : "configmaps";

	if (collection)
		return ep_strdup_printf("/api/v1/namespaces/%s/%s", o->ns, res);
	return ep_strdup_printf("/api/v1/namespaces/%s/%s/%s", o->ns, res, o->name);
}

static void add_labels(cJSON *meta, const char *tenant)
{
	cJSON *l = cJSON_AddObjectToObject(meta, "labels");

	cJSON_AddStringToObject(l, "app.kubernetes.io/managed-by", MANAGED_BY);
	cJSON_AddStringToObject(l, "etcd.xmudrii.com/storage", tenant);
}

/* Whether obj's data has every key of want with the same value. */
static int holds(const cJSON *obj, const cJSON *want)
{
	const cJSON *have = cJSON_GetObjectItemCaseSensitive(obj, "data"), *w;

	cJSON_ArrayForEach(w, want)
	{
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(have, w->string);

		if (!cJSON_IsString(h) || strcmp(h->valuestring, w->valuestring) != 0)
			return 0;
	}
	return 1;
}

static void done_current(struct kube_publish *kp, int state, const char *reason,
			 const char *message)
{
	struct output *o = kp->current;

	if (state == 1) {
		if (o->state != 1)
			ep_info("%s %s/%s of tenant %s holds its certificates", kind_name(o->kind),
				o->ns, o->name, o->tenant);
		free(o->published);
		o->published = kp->current_data;
		kp->current_data = NULL;
	} else {
		free(o->published);
		o->published = NULL;
	}
	set_state(o, state, reason, message);
	free(kp->current_data);
	kp->current_data = NULL;
	kp->current = NULL;
	kube_source_poke(kp->sv->kube); /* CertificatesPublished */
	next(kp);
}

static void failed(struct kube_publish *kp, const char *what, const struct kube_result *res)
{
	char *msg = ep_strdup_printf("%s %s/%s: %s: %s", kind_name(kp->current->kind),
				     kp->current->ns, kp->current->name, what,
				     kube_status_message(res));

	done_current(kp, 0, res->status == 403 ? "Forbidden" : res->status == 404 ? "NotFound"
							 : "Error", msg);
	free(msg);
	uv_timer_start(&kp->timer, on_timer, RETRY_MS, 0);
}

static void on_written(void *ctx, const struct kube_result *res)
{
	struct kube_publish *kp = ctx;

	kp->req = NULL;
	if (res->status == 200 || res->status == 201)
		done_current(kp, 1, "Published", "every output holds the current certificates");
	else if (res->status == 409) /* written in between: the next pass reads it again */
		failed(kp, "changed by someone else meanwhile, trying again", res);
	else
		failed(kp, "cannot write", res);
}

static void on_read(void *ctx, const struct kube_result *res)
{
	struct kube_publish *kp = ctx;
	struct output *o = kp->current;
	cJSON *want, *body, *meta;
	char *text, *path;

	kp->req = NULL;
	if (!kube_source_is_leader(kp->sv->kube)) {
		/* the lease went while this was read: the new leader writes */
		free(kp->current_data);
		kp->current_data = NULL;
		kp->current = NULL;
		return;
	}
	want = cJSON_Parse(kp->current_data);
	body = cJSON_CreateObject();
	meta = cJSON_AddObjectToObject(body, "metadata");
	if (res->status == 404) {
		const char *uid = kube_publish_uid(kp, o->tenant);

		cJSON_AddStringToObject(body, "apiVersion", "v1");
		cJSON_AddStringToObject(body, "kind", kind_name(o->kind));
		cJSON_AddStringToObject(meta, "name", o->name);
		cJSON_AddStringToObject(meta, "namespace", o->ns);
		add_labels(meta, o->tenant);
		if (uid != NULL) {
			/* garbage-collected with its EtcdStorage: only what etcdproxyd created */
			cJSON *refs = cJSON_AddArrayToObject(meta, "ownerReferences");
			cJSON *r = cJSON_CreateObject();

			cJSON_AddStringToObject(r, "apiVersion", EP_API_VERSION);
			cJSON_AddStringToObject(r, "kind", EP_KIND);
			cJSON_AddStringToObject(r, "name", o->tenant);
			cJSON_AddStringToObject(r, "uid", uid);
			cJSON_AddItemToArray(refs, r);
		}
		if (o->kind == OUT_SECRET)
			cJSON_AddStringToObject(body, "type", "kubernetes.io/tls");
		cJSON_AddItemToObject(body, "data", want);
		text = cJSON_PrintUnformatted(body);
		path = object_path(o, 1);
		kp->req = kube_request(kp->kc, "POST", path, "application/json", text, TIMEOUT_S,
				       on_written, NULL, kp);
		free(path);
		free(text);
	} else if (res->status == 200) {
		cJSON *obj = cJSON_ParseWithLength(res->body, res->len);
		const cJSON *rv = cJSON_GetObjectItemCaseSensitive(
			cJSON_GetObjectItemCaseSensitive(obj, "metadata"), "resourceVersion");

		if (holds(obj, want)) {
			cJSON_Delete(want);
			cJSON_Delete(obj);
			cJSON_Delete(body);
			done_current(kp, 1, "Published", "every output holds the current certificates");
			return;
		}
		/* a merge patch: other keys, the type and the owner stay as they are */
		cJSON_AddStringToObject(meta, "resourceVersion",
					cJSON_IsString(rv) ? rv->valuestring : "");
		add_labels(meta, o->tenant);
		cJSON_AddItemToObject(body, "data", want);
		text = cJSON_PrintUnformatted(body);
		path = object_path(o, 0);
		kp->req = kube_request(kp->kc, "PATCH", path, "application/merge-patch+json", text,
				       TIMEOUT_S, on_written, NULL, kp);
		free(path);
		free(text);
		cJSON_Delete(obj);
	} else {
		cJSON_Delete(want);
		cJSON_Delete(body);
		failed(kp, "cannot read", res);
		return;
	}
	cJSON_Delete(body);
}

/* The next output that needs a look, one request at a time. */
static void next(struct kube_publish *kp)
{
	while (kp->req == NULL && kp->current == NULL && !kp->closing &&
	       kube_source_is_leader(kp->sv->kube)) {
		struct output *o = NULL;
		char *path;

		for (struct output *c = kp->outs; c != NULL && o == NULL; c = c->next)
			if (c->queued)
				o = c;
		if (o == NULL)
			return;
		o->queued = 0;
		kp->current = o;
		kp->current_data = data_of(o);
		if (kp->current_data == NULL) {
			kp->current = NULL;
			if (o->state != -1 || o->reason == NULL)
				set_state(o, -1, "Pending", "waiting for the ca source to issue it");
			continue;
		}
		path = object_path(o, 0);
		kp->req = kube_request(kp->kc, "GET", path, NULL, NULL, TIMEOUT_S, on_read, NULL, kp);
		free(path);
	}
}

static void pass(struct kube_publish *kp)
{
	int resync = kp->resync;

	if (kp->closing)
		return;
	if (!kube_source_is_leader(kp->sv->kube)) {
		/* only the leader writes; a follower looks again, should it become the leader */
		kp->settled = 0;
		uv_timer_start(&kp->timer, on_timer, CHECK_EVERY_MS, 0);
		return;
	}
	kp->resync = 0;
	rebuild(kp);
	kp->settled = 1;
	for (struct output *o = kp->outs; o != NULL; o = o->next) {
		char *data;

		if (resync || o->state != 1) {
			o->queued = 1;
			continue;
		}
		/* a rotation: the ca source wrote new files */
		data = data_of(o);
		if (data != NULL && (o->published == NULL || strcmp(data, o->published) != 0))
			o->queued = 1;
		free(data);
	}
	next(kp);
	uv_timer_start(&kp->timer, on_timer, CHECK_EVERY_MS, 0);
}

static void on_timer(uv_timer_t *t)
{
	pass(t->data);
}

void kube_publish_poke(struct kube_publish *kp, int resync)
{
	if (kp == NULL || kp->closing)
		return;
	if (resync)
		kp->resync = 1;
	uv_timer_start(&kp->timer, on_timer, 10, 0);
}

int kube_publish_state(struct kube_publish *kp, const char *tenant, const char **reason_r,
		       const char **message_r)
{
	int state = 1, any = 0;

	*reason_r = "Pending";
	*message_r = "the outputs were not looked at yet";
	if (!kp->settled)
		return -2;
	for (struct output *o = kp->outs; o != NULL; o = o->next)
		if (strcmp(o->tenant, tenant) == 0 && o->state == -1 && o->reason == NULL)
			return -2;
	*reason_r = "NothingToPublish";
	*message_r = "no spec.clientCertSecret or spec.caCertConfigMap";
	for (struct output *o = kp->outs; o != NULL; o = o->next) {
		if (strcmp(o->tenant, tenant) != 0)
			continue;
		if (!any) {
			*reason_r = "Published";
			*message_r = "every output holds the current certificates";
		}
		any = 1;
		if (o->state == 0 || (o->state == -1 && state == 1)) {
			state = o->state;
			*reason_r = o->reason ? o->reason : "Pending";
			*message_r = o->message ? o->message : "not written yet";
		}
	}
	return state;
}

struct kube_publish *kube_publish_new(struct supervisor *sv, struct kube_client *kc)
{
	struct kube_publish *kp = ep_malloc0(sizeof(*kp));

	kp->sv = sv;
	kp->kc = kc;
	uv_timer_init(sv->loop, &kp->timer);
	kp->timer.data = kp;
	kube_publish_poke(kp, 1);
	return kp;
}

static void on_closed(uv_handle_t *h)
{
	struct kube_publish *kp = h->data;

	while (kp->outs != NULL) {
		struct output *o = kp->outs;

		kp->outs = o->next;
		output_free(o);
	}
	while (kp->uids != NULL) {
		struct tenant_uid *u = kp->uids;

		kp->uids = u->next;
		free(u->tenant);
		free(u->uid);
		free(u);
	}
	free(kp->current_data);
	free(kp);
}

void kube_publish_free(struct kube_publish *kp)
{
	if (kp == NULL)
		return;
	kp->closing = 1;
	/* the client lives on a moment (the lease is given back): nothing may call back here */
	kube_cancel(kp->req);
	kp->req = NULL;
	uv_close((uv_handle_t *)&kp->timer, on_closed);
}
