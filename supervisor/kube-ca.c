/*
 * One set of CAs for a cluster tenant on every node: see kube-ca.h.
 */
#include "build-config.h"

#define EP_LOG_SUBSYS "kubernetes"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#include "files.h"
#include "kube-ca.h"
#include "kube-client.h"
#include "kube-publish.h"
#include "kube-source.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"

#define SYNC_MS 2000  /* the Secrets are listed this often */
#define RETRY_MS 5000
#define TIMEOUT_S 30
#define SECRET_PREFIX "etcdproxy-ca-"
#define STATE_LABEL "etcd.xmudrii.com/ca-state"
#define STORAGE_LABEL "etcd.xmudrii.com/storage"
#define DOC_KEY "ca.json"
#define DOC_MAX (1u << 20)

/* A tenant's CA Secret as last listed. */
struct secret {
	struct secret *next;
	char *tenant;
	char *rv;
	char *doc; /* ca.json; NULL when it holds no JSON object (the leader writes it again) */
	int owned; /* it has an ownerReference */
};

/* What this node did for a tenant in the current leadership term. */
struct term {
	struct term *next;
	char *tenant;
	int adopted; /* the leader holds the Secret's CAs (or there was none): it may write */
	int seen;
};

struct kube_ca {
	struct supervisor *sv;
	struct kube_client *kc;
	struct kube_publish *pub;
	uv_timer_t timer;
	struct kube_req *req;
	struct secret *secrets;
	struct term *terms;
	int leader; /* as last looked at: a change starts a new term */
	char *error;
	char *fetch;      /* a tenant whose Secret exists but was not listed: read it by name */
	char *posting;    /* the tenant whose Secret a POST in flight creates */
	int closing;
};

static void on_timer(uv_timer_t *t);

static void secrets_free(struct secret *s)
{
	while (s != NULL) {
		struct secret *n = s->next;

		free(s->tenant);
		free(s->rv);
		if (s->doc != NULL)
			explicit_bzero(s->doc, strlen(s->doc));
		free(s->doc);
		free(s);
		s = n;
	}
}

static struct secret *find_secret(struct kube_ca *kca, const char *tenant)
{
	for (struct secret *s = kca->secrets; s != NULL; s = s->next)
		if (strcmp(s->tenant, tenant) == 0)
			return s;
	return NULL;
}

static struct term *term_of(struct kube_ca *kca, const char *tenant)
{
	struct term *t;

	for (t = kca->terms; t != NULL; t = t->next)
		if (strcmp(t->tenant, tenant) == 0)
			return t;
	t = ep_malloc0(sizeof(*t));
	t->tenant = ep_strdup(tenant);
	t->next = kca->terms;
	kca->terms = t;
	return t;
}

static void terms_free(struct kube_ca *kca)
{
	while (kca->terms != NULL) {
		struct term *t = kca->terms;

		kca->terms = t->next;
		free(t->tenant);
		free(t);
	}
}

static void set_error(struct kube_ca *kca, const char *msg)
{
	if (msg != NULL && (kca->error == NULL || strcmp(kca->error, msg) != 0))
		ep_warn("CA sharing: %s", msg);
	else if (msg == NULL && kca->error != NULL)
		ep_info("CA sharing: working again");
	free(kca->error);
	kca->error = msg ? ep_strdup(msg) : NULL;
}

/* "serving:SERIAL@PUBLISHED,...;client:...;" of a shared.json: the same CAs when equal. */
static char *ca_fingerprint(const char *doc)
{
	cJSON *o = cJSON_Parse(doc);
	char *out = ep_strdup(""), *t;

	for (int k = 0; k < 2; k++) {
		const char *kind = k == 0 ? "serving" : "client";
		const cJSON *e;

		t = ep_strdup_printf("%s%s:", out, kind);
		free(out);
		out = t;
		cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(o, kind))
		{
			const cJSON *se = cJSON_GetObjectItemCaseSensitive(e, "serial");
			const cJSON *pu = cJSON_GetObjectItemCaseSensitive(e, "published_ms");

			t = ep_strdup_printf("%s%s@%lld,", out, cJSON_IsString(se) ? se->valuestring : "?",
					     cJSON_IsNumber(pu) ? (long long)pu->valuedouble : 0LL);
			free(out);
			out = t;
		}
		t = ep_strdup_printf("%s;", out);
		free(out);
		out = t;
	}
	cJSON_Delete(o);
	return out;
}

static int same_cas(const char *a, const char *b)
{
	char *fa = ca_fingerprint(a), *fb = ca_fingerprint(b);
	int same = strcmp(fa, fb) == 0;

	free(fa);
	free(fb);
	return same;
}

/*
 * Whether the ca source wrote local after taking doc's CAs as the leader
 * ("took": their fingerprint): its first run may change them at once (a CA
 * becomes published, or due), and then they are its own, not the Secret's.
 */
static int took(const char *local, const char *doc)
{
	cJSON *o = cJSON_Parse(local);
	const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "took"));
	char *fd = ca_fingerprint(doc);
	int r = t != NULL && strcmp(t, fd) == 0;

	free(fd);
	cJSON_Delete(o);
	return r;
}

static char *ca_dir(const struct kube_ca *kca, const char *tenant)
{
	return ep_strdup_printf("%s/%s/ca", kca->sv->global->state_dir, tenant);
}

/* The tenant's shared.json as its ca source last wrote it; NULL before the first. */
static char *local_doc(const struct kube_ca *kca, const char *tenant)
{
	char *dir = ca_dir(kca, tenant), *path = ep_strdup_printf("%s/current/shared.json", dir);
	char *text = NULL, *error = NULL;

	if (ep_file_read(path, DOC_MAX, &text, NULL, &error) < 0) {
		free(error);
		text = NULL;
	}
	free(path);
	free(dir);
	return text;
}

/* Make state_dir/NAME/ca/cluster.json say this (doc NULL: no "ca"). */
static void write_cluster(struct kube_ca *kca, const char *tenant, int lead, const char *doc)
{
	char *dir = ca_dir(kca, tenant), *path = ep_strdup_printf("%s/cluster.json", dir);
	char *want = NULL, *have = NULL, *error = NULL;

	want = doc != NULL ? ep_strdup_printf("{\"version\":1,\"lead\":%s,\"ca\":%s}\n",
					      lead ? "true" : "false", doc)
			   : ep_strdup_printf("{\"version\":1,\"lead\":%s}\n", lead ? "true" : "false");
	if (ep_file_read(path, DOC_MAX * 2, &have, NULL, &error) == 0 && strcmp(have, want) == 0)
		goto out;
	free(error);
	error = NULL;
	if (ep_mkdir_p(dir, 0700) < 0 ||
	    ep_file_write_atomic(path, want, strlen(want), 0600, &error) < 0) {
		char *msg = ep_strdup_printf("tenant %s: %s", tenant,
					     error ? error : strerror(errno));

		set_error(kca, msg);
		free(msg);
	}
out:
	if (want != NULL)
		explicit_bzero(want, strlen(want));
	if (have != NULL)
		explicit_bzero(have, strlen(have));
	free(want);
	free(have);
	free(error);
	free(path);
	free(dir);
}

/* ---- the leader's writes -------------------------------------------------------------------- */

static void on_written(void *ctx, const struct kube_result *res)
{
	struct kube_ca *kca = ctx;

	char *posted = kca->posting;

	kca->req = NULL;
	kca->posting = NULL;
	if (res->status == 200 || res->status == 201) {
		set_error(kca, NULL);
		free(posted);
		uv_timer_start(&kca->timer, on_timer, 10, 0); /* the next tenant, or the next look */
		return;
	}
	if (res->status == 409 && posted != NULL) {
		/* it exists without the label the list selects: read it by name, then patch it */
		free(kca->fetch);
		kca->fetch = posted;
		uv_timer_start(&kca->timer, on_timer, 10, 0);
		return;
	}
	free(posted);
	{
		char *msg = ep_strdup_printf("cannot write the CA Secret%s: %s",
					     res->status == 409 ? " (changed meanwhile: reading again)"
								: "",
					     kube_status_message(res));

		set_error(kca, msg);
		free(msg);
	}
	uv_timer_start(&kca->timer, on_timer, res->status == 409 ? 100 : RETRY_MS, 0);
}

/* Create or update the tenant's CA Secret to hold doc. */
static void export(struct kube_ca *kca, const char *tenant, const struct secret *sec,
		   const char *doc)
{
	const char *ns = kca->sv->global->kube.namespace;
	cJSON *body = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(body, "metadata");
	cJSON *labels = cJSON_AddObjectToObject(meta, "labels");
	cJSON *data;
	char *b64 = ep_base64_encode(doc, strlen(doc)), *text, *path;

	cJSON_AddStringToObject(labels, "app.kubernetes.io/managed-by", "etcdproxy");
	cJSON_AddStringToObject(labels, STORAGE_LABEL, tenant);
	cJSON_AddStringToObject(labels, STATE_LABEL, "true");
	const char *uid = kube_publish_uid(kca->pub, tenant);

	if (sec == NULL) {
		char *name = ep_strdup_printf(SECRET_PREFIX "%s", tenant);

		cJSON_AddStringToObject(body, "apiVersion", "v1");
		cJSON_AddStringToObject(body, "kind", "Secret");
		cJSON_AddStringToObject(body, "type", "Opaque");
		cJSON_AddStringToObject(meta, "name", name);
		cJSON_AddStringToObject(meta, "namespace", ns);
		free(name);
	} else {
		cJSON_AddStringToObject(meta, "resourceVersion", sec->rv);
	}
	/* with the EtcdStorage goes the Secret that holds its CAs' keys */
	if (uid != NULL && (sec == NULL || !sec->owned)) {
		cJSON *refs = cJSON_AddArrayToObject(meta, "ownerReferences");
		cJSON *r = cJSON_CreateObject();

		cJSON_AddStringToObject(r, "apiVersion", EP_API_VERSION);
		cJSON_AddStringToObject(r, "kind", EP_KIND);
		cJSON_AddStringToObject(r, "name", tenant);
		cJSON_AddStringToObject(r, "uid", uid);
		cJSON_AddItemToArray(refs, r);
	}
	data = cJSON_AddObjectToObject(body, "data");
	cJSON_AddStringToObject(data, DOC_KEY, b64);
	explicit_bzero(b64, strlen(b64));
	free(b64);
	text = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	if (sec == NULL)
		path = ep_strdup_printf("/api/v1/namespaces/%s/secrets", ns);
	else
		path = ep_strdup_printf("/api/v1/namespaces/%s/secrets/" SECRET_PREFIX "%s", ns,
					tenant);
	ep_info("tenant %s: %s the CA Secret %s/" SECRET_PREFIX "%s for the other nodes", tenant,
		sec == NULL ? "creating" : "updating", ns, tenant);
	if (sec == NULL)
		kca->posting = ep_strdup(tenant);
	kca->req = kube_request(kca->kc, sec == NULL ? "POST" : "PATCH", path,
				sec == NULL ? "application/json" : "application/merge-patch+json",
				text, TIMEOUT_S, on_written, NULL, kca);
	explicit_bzero(text, strlen(text));
	free(text);
	free(path);
}

/* ---- one look at every tenant ---------------------------------------------------------------- */

static int shared_tenant(const struct ep_tenant_entry *e)
{
	return e->from_cluster && e->config != NULL && e->config->tls.enabled &&
	       strcmp(e->config->tls.source, "ca") == 0;
}

static void reconcile(struct kube_ca *kca)
{
	const struct ep_tenant_set *set = &kca->sv->set;
	int leader = kube_source_is_leader(kca->sv->kube);

	if (leader != kca->leader) {
		terms_free(kca); /* a new term: a new leader takes the Secrets' CAs first */
		kca->leader = leader;
	}
	for (struct term *t = kca->terms; t != NULL; t = t->next)
		t->seen = 0;
	for (size_t i = 0; i < set->n; i++) {
		const struct ep_tenant_entry *e = &set->entries[i];
		const char *name = e->name;
		struct secret *sec;
		struct term *t;
		char *local;

		if (!shared_tenant(e))
			continue;
		sec = find_secret(kca, name);
		t = term_of(kca, name);
		t->seen = 1;
		if (!leader) {
			/*
			 * The leader's CAs.  Without a usable Secret (none written yet, or
			 * one someone damaged or unlabelled) what this node has stays: the
			 * CAs it followed last, or its own before any leader wrote.
			 */
			if (sec != NULL && sec->doc != NULL)
				write_cluster(kca, name, 0, sec->doc);
			continue;
		}
		local = local_doc(kca, name);
		if (!t->adopted) {
			if (sec != NULL && sec->doc != NULL &&
			    (local == NULL || !(same_cas(local, sec->doc) || took(local, sec->doc)))) {
				/* continue the predecessor's CAs; write once they are this node's */
				write_cluster(kca, name, 1, sec->doc);
				if (local != NULL)
					explicit_bzero(local, strlen(local)); /* it holds CA keys */
				free(local);
				continue;
			}
			t->adopted = 1;
			ep_info("tenant %s: this node leads the CAs%s", name,
				sec != NULL ? ", continuing the CA Secret's" : "");
		}
		write_cluster(kca, name, 1, NULL);
		if (local != NULL && (sec == NULL || sec->doc == NULL || strcmp(local, sec->doc) != 0) &&
		    kca->req == NULL && kube_source_is_leader(kca->sv->kube))
			export(kca, name, sec, local); /* one at a time; the others at the next look */
		if (local != NULL)
			explicit_bzero(local, strlen(local));
		free(local);
	}
	/* tenants that left the set (or the cluster) start over should they return */
	for (struct term **pp = &kca->terms; *pp != NULL;) {
		struct term *t = *pp;

		if (!t->seen) {
			*pp = t->next;
			free(t->tenant);
			free(t);
		} else {
			pp = &t->next;
		}
	}
}

static int is_object(const char *text)
{
	cJSON *o = cJSON_ParseWithOpts(text, NULL, 1); /* nothing after the object */
	int ok = cJSON_IsObject(o);

	cJSON_Delete(o);
	return ok;
}

/* One Secret of a list or a GET; NULL when it is not one of the CA Secrets. */
static struct secret *parse_secret(struct kube_ca *kca, const cJSON *item)
{
	const cJSON *meta = cJSON_GetObjectItemCaseSensitive(item, "metadata");
	const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(meta, "name"));
	const char *rv = cJSON_GetStringValue(
		cJSON_GetObjectItemCaseSensitive(meta, "resourceVersion"));
	const char *b64 = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(item, "data"), DOC_KEY));
	struct secret *s;
	char *doc = NULL;
	size_t len = 0;

	/* the name says the tenant: a label alone could be copied onto another Secret */
	if (name == NULL || rv == NULL || strncmp(name, SECRET_PREFIX, strlen(SECRET_PREFIX)) != 0)
		return NULL;
	if (b64 == NULL || ep_base64_decode(b64, &doc, &len) < 0 || len > DOC_MAX ||
	    strlen(doc) != len || !is_object(doc)) {
		/* the ca source judges the document itself; this is not even one */
		char *msg = ep_strdup_printf("Secret %s/%s: no JSON object in data.%s: the "
					     "followers keep their CAs, the leader writes it again",
					     kca->sv->global->kube.namespace, name, DOC_KEY);

		set_error(kca, msg);
		free(msg);
		free(doc);
		doc = NULL;
	}
	s = ep_malloc0(sizeof(*s));
	s->tenant = ep_strdup(name + strlen(SECRET_PREFIX));
	s->rv = ep_strdup(rv);
	s->doc = doc;
	s->owned = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(meta, "ownerReferences")) > 0;
	return s;
}

static void on_list(void *ctx, const struct kube_result *res)
{
	struct kube_ca *kca = ctx;
	struct secret *list = NULL;
	cJSON *o;
	const cJSON *item;

	kca->req = NULL;
	if (res->status != 200) {
		char *msg = ep_strdup_printf("cannot list the CA Secrets in %s: %s",
					     kca->sv->global->kube.namespace,
					     kube_status_message(res));

		set_error(kca, msg);
		free(msg);
		uv_timer_start(&kca->timer, on_timer, RETRY_MS, 0);
		return;
	}
	o = cJSON_ParseWithLength(res->body, res->len);
	cJSON_ArrayForEach(item, cJSON_GetObjectItemCaseSensitive(o, "items"))
	{
		struct secret *s = parse_secret(kca, item);

		if (s != NULL) {
			s->next = list;
			list = s;
		}
	}
	cJSON_Delete(o);
	if (kca->error != NULL && strncmp(kca->error, "cannot list", 11) == 0)
		set_error(kca, NULL);
	secrets_free(kca->secrets);
	kca->secrets = list;
	reconcile(kca);
	if (kca->req == NULL)
		uv_timer_start(&kca->timer, on_timer, SYNC_MS, 0);
}

/* A Secret the POST found existing, read by name: patched at once, its label back. */
static void on_fetched(void *ctx, const struct kube_result *res)
{
	struct kube_ca *kca = ctx;
	cJSON *o = res->status == 200 ? cJSON_ParseWithLength(res->body, res->len) : NULL;
	struct secret *s = o != NULL ? parse_secret(kca, o) : NULL;

	kca->req = NULL;
	cJSON_Delete(o);
	if (s == NULL) {
		char *msg = ep_strdup_printf("cannot read the CA Secret %s/" SECRET_PREFIX "%s: %s",
					     kca->sv->global->kube.namespace,
					     kca->fetch ? kca->fetch : "?", kube_status_message(res));

		set_error(kca, msg);
		free(msg);
		uv_timer_start(&kca->timer, on_timer, RETRY_MS, 0);
		return;
	}
	free(kca->fetch);
	kca->fetch = NULL;
	for (struct secret **pp = &kca->secrets; *pp != NULL; pp = &(*pp)->next)
		if (strcmp((*pp)->tenant, s->tenant) == 0) {
			struct secret *old = *pp;

			*pp = old->next;
			old->next = NULL;
			secrets_free(old);
			break;
		}
	s->next = kca->secrets;
	kca->secrets = s;
	reconcile(kca);
	if (kca->req == NULL)
		uv_timer_start(&kca->timer, on_timer, SYNC_MS, 0);
}

static void on_timer(uv_timer_t *t)
{
	struct kube_ca *kca = t->data;
	char *path;

	if (kca->closing || kca->req != NULL)
		return;
	if (kca->fetch != NULL) {
		path = ep_strdup_printf("/api/v1/namespaces/%s/secrets/" SECRET_PREFIX "%s",
					kca->sv->global->kube.namespace, kca->fetch);
		kca->req = kube_request(kca->kc, "GET", path, NULL, NULL, TIMEOUT_S, on_fetched,
					NULL, kca);
		free(path);
		return;
	}
	path = ep_strdup_printf("/api/v1/namespaces/%s/secrets?labelSelector=%s%%3Dtrue",
				kca->sv->global->kube.namespace, STATE_LABEL);
	kca->req = kube_request(kca->kc, "GET", path, NULL, NULL, TIMEOUT_S, on_list, NULL, kca);
	free(path);
}

void kube_ca_new_term(struct kube_ca *kca)
{
	if (kca == NULL || kca->closing)
		return;
	/* even a lost and regained lease: another leader may have written meanwhile */
	terms_free(kca);
	/* what is in flight was sent in the last term: a list may be older than the Secrets */
	kube_cancel(kca->req);
	kca->req = NULL;
	free(kca->posting);
	kca->posting = NULL;
	kube_ca_poke(kca);
}

void kube_ca_poke(struct kube_ca *kca)
{
	if (kca == NULL || kca->closing || kca->req != NULL)
		return;
	uv_timer_start(&kca->timer, on_timer, 10, 0);
}

struct kube_ca *kube_ca_new(struct supervisor *sv, struct kube_client *kc,
			    struct kube_publish *pub)
{
	struct kube_ca *kca = ep_malloc0(sizeof(*kca));

	kca->sv = sv;
	kca->kc = kc;
	kca->pub = pub;
	kca->leader = -1;
	uv_timer_init(sv->loop, &kca->timer);
	kca->timer.data = kca;
	kube_ca_poke(kca);
	return kca;
}

static void on_closed(uv_handle_t *h)
{
	struct kube_ca *kca = h->data;

	secrets_free(kca->secrets);
	terms_free(kca);
	free(kca->error);
	free(kca->fetch);
	free(kca->posting);
	free(kca);
}

void kube_ca_free(struct kube_ca *kca)
{
	if (kca == NULL)
		return;
	kca->closing = 1;
	kube_cancel(kca->req);
	kca->req = NULL;
	uv_close((uv_handle_t *)&kca->timer, on_closed);
}
