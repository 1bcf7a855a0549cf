#include "build-config.h"

#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "files.h"
#include "json.h"
#include "util.h"

#ifndef LOCALSTATEDIR
#define LOCALSTATEDIR "/var"
#endif
#ifndef RUNSTATEDIR
#define RUNSTATEDIR "/run"
#endif
#ifndef PKGLIBDIR
#define PKGLIBDIR "/usr/lib/etcdproxy"
#endif
#ifndef BINDIR
#define BINDIR "/usr/bin"
#endif
#ifndef PKGLIBEXECDIR
#define PKGLIBEXECDIR "/usr/libexec/etcdproxy"
#endif

#define DEFAULT_VALIDITY_MS (8760ull * 3600 * 1000) /* one year, as the original controller */

/* Parsing context: the document and the file, so that errors carry positions. */
struct pctx {
	const struct ep_json_doc *doc;
	const char *file;
	char *error;
};

static int __attribute__((format(printf, 3, 4)))
fail_at(struct pctx *c, const cJSON *node, const char *fmt, ...)
{
	unsigned line = 0, col = 0;
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = ep_strdup_vprintf(fmt, ap);
	va_end(ap);
	free(c->error);
	if (node != NULL && ep_json_position(c->doc, node, &line, &col) == 0)
		c->error = ep_strdup_printf("%s:%u:%u: %s", c->file, line, col, msg);
	else
		c->error = ep_strdup_printf("%s: %s", c->file, msg);
	free(msg);
	return -EINVAL;
}

static const char *json_type_name(const cJSON *v)
{
	if (cJSON_IsString(v))
		return "a string";
	if (cJSON_IsNumber(v))
		return "a number";
	if (cJSON_IsBool(v))
		return "a boolean";
	if (cJSON_IsNull(v))
		return "null";
	if (cJSON_IsArray(v))
		return "an array";
	if (cJSON_IsObject(v))
		return "an object";
	return "an invalid value";
}

static int want_string(struct pctx *c, const cJSON *v, const char *what, char **out)
{
	if (!cJSON_IsString(v) || v->valuestring[0] == '\0')
		return fail_at(c, v, "%s: expected a non-empty string, got %s", what,
			       cJSON_IsString(v) ? "an empty string" : json_type_name(v));
	free(*out);
	*out = ep_strdup(v->valuestring);
	return 0;
}

static int want_object(struct pctx *c, const cJSON *v, const char *what)
{
	if (!cJSON_IsObject(v))
		return fail_at(c, v, "%s: expected an object, got %s", what, json_type_name(v));
	return 0;
}

/* An absolute path; null clears it when nullable. */
static int want_path(struct pctx *c, const cJSON *v, const char *what, int nullable, char **out)
{
	if (nullable && cJSON_IsNull(v)) {
		free(*out);
		*out = NULL;
		return 0;
	}
	if (!cJSON_IsString(v) || v->valuestring[0] != '/')
		return fail_at(c, v, "%s: expected an absolute path%s, got %s", what,
			       nullable ? " or null" : "",
			       cJSON_IsString(v) ? "a relative path" : json_type_name(v));
	return want_string(c, v, what, out);
}

static int want_duration(struct pctx *c, const cJSON *v, const char *what, int allow_zero,
			 uint64_t *ms)
{
	if (!cJSON_IsString(v) || ep_parse_duration_ms(v->valuestring, ms) < 0)
		return fail_at(c, v,
			       "%s: expected a duration such as \"730h\", \"1h30m\" or \"500ms\", got %s%s%s",
			       what, cJSON_IsString(v) ? "\"" : json_type_name(v),
			       cJSON_IsString(v) ? v->valuestring : "", cJSON_IsString(v) ? "\"" : "");
	if (!allow_zero && *ms == 0)
		return fail_at(c, v, "%s: expected a duration above zero", what);
	return 0;
}

static int want_uint(struct pctx *c, const cJSON *v, const char *what, unsigned lo, unsigned hi,
		     unsigned *out)
{
	if (!cJSON_IsNumber(v) || v->valuedouble != (double)(long long)v->valuedouble ||
	    v->valuedouble < lo || v->valuedouble > hi)
		return fail_at(c, v, "%s: expected an integer from %u to %u", what, lo, hi);
	*out = (unsigned)v->valuedouble;
	return 0;
}

static int unknown_key(struct pctx *c, const cJSON *m, const char *where, const char *expected)
{
	return fail_at(c, m, "unknown key \"%s\"%s%s (expected one of: %s)", m->string,
		       where[0] ? " in " : "", where, expected);
}

/* ---- global configuration ------------------------------------------------------- */

/*
 * The keys of the global file, as tables: a key's name, what its value is,
 * and where it goes (nginx's ngx_command_t, Dovecot's setting definitions).
 * parse_keys() walks an object with one table and gives every error the same
 * shape: "FILE:LINE:COL: section.key: expected ..., got ...".
 */
enum key_type {
	K_PATH,          /* an absolute path: char * */
	K_PATH_OR_NULL,  /* an absolute path or null: char * */
	K_STRING,        /* a non-empty string: char * */
	K_DURATION,      /* a duration above zero: uint64_t milliseconds */
	K_DURATION_ZERO, /* a duration, zero allowed: uint64_t milliseconds */
	K_UINT,          /* an integer in [lo, hi]: unsigned */
	K_BOOL,          /* true or false: int */
	K_CALL,          /* parse() handles the value */
};

struct key {
	const char *name;
	enum key_type type;
	size_t offset; /* in the struct parse_keys() fills */
	unsigned lo, hi;
	int (*parse)(struct pctx *c, const cJSON *v, const char *what, void *base);
};

#define KEY(name, type, st, field) { name, type, offsetof(st, field), 0, 0, NULL }
#define KEY_UINT(name, st, field, lo, hi) { name, K_UINT, offsetof(st, field), lo, hi, NULL }
#define KEY_CALL(name, fn) { name, K_CALL, 0, 0, 0, fn }

/* "a, b, c": the keys of a table, for "unknown key" errors. */
static char *key_list(const struct key *keys, size_t n)
{
	char *out = ep_strdup("");

	for (size_t i = 0; i < n; i++) {
		char *next = ep_strdup_printf("%s%s%s", out, i ? ", " : "", keys[i].name);

		free(out);
		out = next;
	}
	return out;
}

/* Every member of obj by keys[] into base; section is "" at the top level. */
static int parse_keys(struct pctx *c, const cJSON *obj, const char *section,
		      const struct key *keys, size_t n, void *base)
{
	const cJSON *m;
	int r;

	if (section[0] != '\0' && (r = want_object(c, obj, section)) < 0)
		return r;
	cJSON_ArrayForEach(m, obj)
	{
		const struct key *k = NULL;
		char *slot, *what;

		for (size_t i = 0; i < n && k == NULL; i++)
			if (strcmp(keys[i].name, m->string) == 0)
				k = &keys[i];
		if (k == NULL) {
			char *expected = key_list(keys, n);

			r = unknown_key(c, m, section, expected);
			free(expected);
			return r;
		}
		slot = (char *)base + k->offset;
		what = section[0] ? ep_strdup_printf("%s.%s", section, k->name) : ep_strdup(k->name);
		switch (k->type) {
		case K_PATH:
		case K_PATH_OR_NULL:
			r = want_path(c, m, what, k->type == K_PATH_OR_NULL, (char **)(void *)slot);
			break;
		case K_STRING:
			r = want_string(c, m, what, (char **)(void *)slot);
			break;
		case K_DURATION:
		case K_DURATION_ZERO:
			r = want_duration(c, m, what, k->type == K_DURATION_ZERO, (uint64_t *)(void *)slot);
			break;
		case K_UINT:
			r = want_uint(c, m, what, k->lo, k->hi, (unsigned *)(void *)slot);
			break;
		case K_BOOL:
			if (!cJSON_IsBool(m))
				r = fail_at(c, m, "%s: expected true or false", what);
			else
				*(int *)(void *)slot = cJSON_IsTrue(m);
			break;
		case K_CALL:
			r = k->parse(c, m, what, base);
			break;
		}
		free(what);
		if (r < 0)
			return r;
	}
	return 0;
}

#define PARSE_KEYS(c, obj, section, keys, base) \
	parse_keys(c, obj, section, keys, sizeof(keys) / sizeof(keys[0]), base)

static int parse_endpoints(struct pctx *c, const cJSON *m, const char *what, void *base)
{
	struct ep_core_etcd_config *core = base;
	const cJSON *e;
	size_t n = 0;

	if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) == 0)
		return fail_at(c, m, "%s: expected a non-empty array of URLs", what);
	for (size_t i = 0; i < core->n_endpoints; i++)
		free(core->endpoints[i]);
	free(core->endpoints);
	core->n_endpoints = 0;
	core->endpoints = ep_malloc0(sizeof(char *) * (size_t)cJSON_GetArraySize(m));
	cJSON_ArrayForEach(e, m)
	{
		if (!cJSON_IsString(e) ||
		    (strncmp(e->valuestring, "http://", 7) != 0 &&
		     strncmp(e->valuestring, "https://", 8) != 0) ||
		    strchr(e->valuestring, ':') == strrchr(e->valuestring, ':'))
			return fail_at(c, e,
				       "%s: expected a URL such as \"https://127.0.0.1:2379\" (scheme, "
				       "host and port)", what);
		core->endpoints[n++] = ep_strdup(e->valuestring);
		core->n_endpoints = n;
	}
	return 0;
}

static const struct key core_etcd_keys[] = {
	KEY_CALL("endpoints", parse_endpoints),
	KEY("ca_file", K_PATH_OR_NULL, struct ep_core_etcd_config, ca_file),
	KEY("cert_file", K_PATH_OR_NULL, struct ep_core_etcd_config, cert_file),
	KEY("key_file", K_PATH_OR_NULL, struct ep_core_etcd_config, key_file),
};

static int parse_core_etcd(struct pctx *c, const cJSON *obj, const char *what, void *base)
{
	struct ep_core_etcd_config *core = &((struct ep_global_config *)base)->core;
	int r = PARSE_KEYS(c, obj, what, core_etcd_keys, core);

	if (r == 0 && (core->cert_file == NULL) != (core->key_file == NULL))
		return fail_at(c, obj, "core_etcd: cert_file and key_file go together: set both or neither");
	return r;
}

static const struct key defaults_keys[] = {
	KEY("backend", K_STRING, struct ep_global_config, default_backend),
	KEY("signingCertificateValidity", K_DURATION, struct ep_global_config,
	    default_signing_validity_ms),
	KEY("servingCertificateValidity", K_DURATION, struct ep_global_config,
	    default_serving_validity_ms),
	KEY("clientCertificateValidity", K_DURATION, struct ep_global_config,
	    default_client_validity_ms),
};

static int parse_defaults(struct pctx *c, const cJSON *obj, const char *what, void *base)
{
	return PARSE_KEYS(c, obj, what, defaults_keys, base);
}

static const struct key supervisor_keys[] = {
	KEY("stop_timeout", K_DURATION, struct ep_global_config, stop_timeout_ms),
	KEY("restart_backoff_initial", K_DURATION_ZERO, struct ep_global_config, backoff_initial_ms),
	KEY("restart_backoff_max", K_DURATION, struct ep_global_config, backoff_max_ms),
	KEY("stable_after", K_DURATION, struct ep_global_config, stable_after_ms),
	KEY_UINT("max_failures", struct ep_global_config, max_failures, 1, 1000),
	KEY("purge_delay", K_DURATION_ZERO, struct ep_global_config, purge_delay_ms),
	KEY("start_timeout", K_DURATION, struct ep_global_config, start_timeout_ms),
};

static int parse_kubeconfig(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_global_config *g = base;

	if (cJSON_IsString(v) && strcmp(v->valuestring, "in-cluster") == 0)
		return want_string(c, v, what, &g->kube.kubeconfig);
	if (!cJSON_IsString(v) || v->valuestring[0] != '/')
		return fail_at(c, v, "%s: expected the absolute path of a kubeconfig file or "
			       "\"in-cluster\" (the pod's service account), got %s", what,
			       cJSON_IsString(v) ? "a relative path" : json_type_name(v));
	return want_string(c, v, what, &g->kube.kubeconfig);
}

static const struct key kube_keys[] = {
	KEY_CALL("kubeconfig", parse_kubeconfig),
	KEY("namespace", K_STRING, struct ep_global_config, kube.namespace),
	KEY("node_name", K_STRING, struct ep_global_config, kube.node_name),
	KEY("node_address", K_STRING, struct ep_global_config, kube.node_address),
	KEY("service_account_dir", K_PATH, struct ep_global_config, kube.service_account_dir),
	KEY("lease_duration", K_DURATION, struct ep_global_config, kube.lease_duration_ms),
	KEY("renew_deadline", K_DURATION, struct ep_global_config, kube.renew_deadline_ms),
	KEY("retry_period", K_DURATION, struct ep_global_config, kube.retry_period_ms),
	KEY("resync", K_DURATION, struct ep_global_config, kube.resync_ms),
};

static int parse_metrics_listen(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_global_config *g = base;
	struct ep_listen_addr a;
	const char *why;

	if (!cJSON_IsString(v) && !cJSON_IsNull(v))
		return fail_at(c, v, "%s: expected \"HOST:PORT\", \"unix:PATH\" or null", what);
	free(g->metrics.listen);
	g->metrics.listen = NULL;
	if (cJSON_IsNull(v))
		return 0;
	if (ep_listen_parse(v->valuestring, &a, &why) < 0)
		return fail_at(c, v, "%s: \"%s\": %s", what, v->valuestring, why);
	g->metrics.listen = ep_strdup(v->valuestring);
	return 0;
}

static const struct key audit_keys[] = {
	KEY("directory", K_PATH, struct ep_global_config, audit.directory),
	KEY_UINT("max_size", struct ep_global_config, audit.max_size, 4096, 4294967295u),
	KEY_UINT("files", struct ep_global_config, audit.files, 0, 1000),
	KEY("default", K_BOOL, struct ep_global_config, audit.on),
};

static int parse_audit(struct pctx *c, const cJSON *obj, const char *what, void *base)
{
	return PARSE_KEYS(c, obj, what, audit_keys, base);
}

static const struct key metrics_keys[] = {
	KEY_CALL("listen", parse_metrics_listen),
};

static int parse_metrics(struct pctx *c, const cJSON *obj, const char *what, void *base)
{
	return PARSE_KEYS(c, obj, what, metrics_keys, base);
}

static int parse_kube(struct pctx *c, const cJSON *obj, const char *what, void *base)
{
	struct ep_global_config *g = base;
	int r = PARSE_KEYS(c, obj, what, kube_keys, g);

	if (r < 0)
		return r;
	/* client-go's rule: a leader renews well before its lease could run out, and tries often */
	if (g->kube.renew_deadline_ms >= g->kube.lease_duration_ms)
		return fail_at(c, obj, "%s.renew_deadline (%llu ms) must be shorter than "
			       "%s.lease_duration (%llu ms)", what,
			       (unsigned long long)g->kube.renew_deadline_ms, what,
			       (unsigned long long)g->kube.lease_duration_ms);
	if (g->kube.retry_period_ms >= g->kube.renew_deadline_ms)
		return fail_at(c, obj, "%s.retry_period (%llu ms) must be shorter than "
			       "%s.renew_deadline (%llu ms)", what,
			       (unsigned long long)g->kube.retry_period_ms, what,
			       (unsigned long long)g->kube.renew_deadline_ms);
	if (g->kube.kubeconfig != NULL && strcmp(g->kube.kubeconfig, "in-cluster") == 0 &&
	    cJSON_GetObjectItemCaseSensitive(obj, "namespace") == NULL) {
		/* in a pod, etcdproxyd's own namespace is the pod's, as client-go programs take it */
		char *path = ep_strdup_printf("%s/namespace", g->kube.service_account_dir);
		char *ns = NULL, *err = NULL;
		size_t len = 0;

		if (ep_file_read(path, 4096, &ns, &len, &err) == 0) {
			while (len > 0 && strchr("\n\r\t ", ns[len - 1]) != NULL)
				ns[--len] = '\0';
			if (len > 0 && len <= 63 &&
			    strspn(ns, "abcdefghijklmnopqrstuvwxyz0123456789-") == len) {
				free(g->kube.namespace);
				g->kube.namespace = ns;
				ns = NULL;
			}
		}
		free(ns);
		free(err);
		free(path);
	}
	if (g->kube.node_address != NULL) {
		struct ep_listen_addr a;
		char *listen = ep_strdup_printf(strchr(g->kube.node_address, ':') ? "[%s]:1" : "%s:1",
						g->kube.node_address);
		const char *why;
		int bad = ep_listen_parse(listen, &a, &why) < 0 || a.family == AF_UNIX;

		free(listen);
		if (bad)
			return fail_at(c, cJSON_GetObjectItemCaseSensitive(obj, "node_address"),
				       "%s.node_address: expected an IP address, got \"%s\"", what,
				       g->kube.node_address);
	}
	return 0;
}

static int parse_supervisor(struct pctx *c, const cJSON *obj, const char *what, void *base)
{
	struct ep_global_config *g = base;
	int r = PARSE_KEYS(c, obj, what, supervisor_keys, g);

	if (r == 0 && g->backoff_max_ms < g->backoff_initial_ms)
		return fail_at(c, obj,
			       "supervisor: restart_backoff_max must not be below restart_backoff_initial");
	return r;
}

static void reserved_add(struct ep_global_config *g, const char *prefix, char *origin)
{
	g->reserved = ep_realloc(g->reserved, (g->n_reserved + 1) * sizeof(*g->reserved));
	g->reserved[g->n_reserved].prefix = ep_strdup(prefix);
	g->reserved[g->n_reserved].origin = origin;
	g->n_reserved++;
}

/* Drop everything but EP_OWN_PREFIX, which stays first. */
static void reserved_clear(struct ep_global_config *g)
{
	while (g->n_reserved > 1) {
		g->n_reserved--;
		free(g->reserved[g->n_reserved].prefix);
		free(g->reserved[g->n_reserved].origin);
	}
}

static int parse_reserved_prefixes(struct pctx *c, const cJSON *m, const char *what, void *base)
{
	struct ep_global_config *g = base;
	const cJSON *e;
	int i = 0;

	if (!cJSON_IsArray(m))
		return fail_at(c, m, "reserved_prefixes: expected an array of key prefixes such as "
			       "[\"/registry/\"], got %s", json_type_name(m));
	reserved_clear(g);
	cJSON_ArrayForEach(e, m)
	{
		unsigned line = 0, col = 0;

		if (!cJSON_IsString(e) || e->valuestring[0] != '/')
			return fail_at(c, e,
				       "reserved_prefixes[%d]: expected a key prefix starting with "
				       "\"/\" (every tenant's prefix does), got %s%s%s",
				       i, cJSON_IsString(e) ? "\"" : json_type_name(e),
				       cJSON_IsString(e) ? e->valuestring : "",
				       cJSON_IsString(e) ? "\"" : "");
		ep_json_position(c->doc, e, &line, &col);
		reserved_add(g, e->valuestring,
			     ep_strdup_printf("reserved_prefixes in %s:%u:%u", c->file, line, col));
		i++;
	}
	return 0;
}

/*
 * "backends" or "certs": an object of option objects by plugin name, each
 * judged by its plugin's own table (etcdproxyd --check-config, the worker).
 */
static int parse_plugin_options(struct pctx *c, const cJSON *obj, const char *section,
				const char *what, cJSON **out)
{
	const cJSON *m;
	int r;

	if ((r = want_object(c, obj, section)) < 0)
		return r;
	cJSON_ArrayForEach(m, obj)
	{
		if (!cJSON_IsObject(m))
			return fail_at(c, m, "%s.%s: expected an object of options for the %s %s",
				       section, m->string, m->string, what);
	}
	cJSON_Delete(*out);
	*out = cJSON_Duplicate(obj, 1);
	return 0;
}

static int parse_backends(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	return parse_plugin_options(c, v, what, "backend", &((struct ep_global_config *)base)->backends);
}

static int parse_certs(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	return parse_plugin_options(c, v, what, "certificate source",
				    &((struct ep_global_config *)base)->certs);
}

static int parse_log_level(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	if (!cJSON_IsString(v) ||
	    ep_log_level_parse(v->valuestring, &((struct ep_global_config *)base)->log_level) < 0)
		return fail_at(c, v, "%s: expected one of \"err\", \"warning\", \"notice\", \"info\", "
			       "\"debug\"", what);
	return 0;
}

/* The top level of etcdproxyd.json, in the order etcdproxyd.json(5) documents it. */
static const struct key global_keys[] = {
	KEY("storages_dir", K_PATH, struct ep_global_config, storages_dir),
	KEY("state_dir", K_PATH, struct ep_global_config, state_dir),
	KEY("runtime_dir", K_PATH, struct ep_global_config, runtime_dir),
	KEY("plugin_dir", K_PATH, struct ep_global_config, plugin_dir),
	KEY("worker", K_PATH, struct ep_global_config, worker_path),
	KEY("etcdproxyctl", K_PATH, struct ep_global_config, ctl_path),
	KEY("control_socket", K_PATH, struct ep_global_config, control_socket),
	KEY_CALL("log_level", parse_log_level),
	KEY_CALL("core_etcd", parse_core_etcd),
	KEY_CALL("reserved_prefixes", parse_reserved_prefixes),
	KEY_CALL("defaults", parse_defaults),
	KEY_CALL("supervisor", parse_supervisor),
	KEY_CALL("backends", parse_backends),
	KEY_CALL("certs", parse_certs),
	KEY_CALL("kubernetes", parse_kube),
	KEY_CALL("metrics", parse_metrics),
	KEY_CALL("audit", parse_audit),
};

static void global_defaults(struct ep_global_config *g)
{
	g->storages_dir = ep_strdup(SYSCONFDIR "/etcdproxy/storages.d");
	g->state_dir = ep_strdup(LOCALSTATEDIR "/lib/etcdproxy");
	g->runtime_dir = ep_strdup(RUNSTATEDIR "/etcdproxy");
	g->plugin_dir = ep_strdup(PKGLIBDIR);
	g->worker_path = ep_strdup(PKGLIBEXECDIR "/etcdproxy-worker");
	g->ctl_path = ep_strdup(BINDIR "/etcdproxyctl");
	g->purge_delay_ms = 10 * 60 * 1000;
	g->start_timeout_ms = 30000;
	g->log_level = EP_LOG_INFO;
	g->core.endpoints = ep_malloc0(sizeof(char *));
	g->core.endpoints[0] = ep_strdup("https://127.0.0.1:2379");
	g->core.n_endpoints = 1;
	/* kubeadm's layout: the kube-apiserver's own etcd client credentials */
	g->core.ca_file = ep_strdup("/etc/kubernetes/pki/etcd/ca.crt");
	g->core.cert_file = ep_strdup("/etc/kubernetes/pki/apiserver-etcd-client.crt");
	g->core.key_file = ep_strdup("/etc/kubernetes/pki/apiserver-etcd-client.key");
	reserved_add(g, EP_OWN_PREFIX,
		     ep_strdup("always reserved: etcdproxy's own records, whatever "
			       "reserved_prefixes says"));
	/* the kube-apiserver's default --etcd-prefix, and OpenShift's two */
	reserved_add(g, "/registry/", ep_strdup("the default of reserved_prefixes"));
	reserved_add(g, "/kubernetes.io/", ep_strdup("the default of reserved_prefixes"));
	reserved_add(g, "/openshift.io/", ep_strdup("the default of reserved_prefixes"));
	g->default_backend = ep_strdup("etcd");
	g->default_signing_validity_ms = DEFAULT_VALIDITY_MS;
	g->default_serving_validity_ms = DEFAULT_VALIDITY_MS;
	g->default_client_validity_ms = DEFAULT_VALIDITY_MS;
	g->stop_timeout_ms = 10000;
	g->backoff_initial_ms = 100;
	g->backoff_max_ms = 30000;
	g->stable_after_ms = 60000;
	g->max_failures = 10;
	g->backends = cJSON_CreateObject();
	g->certs = cJSON_CreateObject();
	g->kube.namespace = ep_strdup("kube-system");
	g->audit.directory = ep_strdup(LOCALSTATEDIR "/log/etcdproxy");
	g->audit.max_size = 100u << 20;
	g->audit.files = 5;
	g->kube.service_account_dir = ep_strdup("/var/run/secrets/kubernetes.io/serviceaccount");
	/* client-go's leader election defaults */
	g->kube.lease_duration_ms = 15000;
	g->kube.renew_deadline_ms = 10000;
	g->kube.retry_period_ms = 2000;
	g->kube.resync_ms = 300000;
}

static int parse_global(struct pctx *c, const cJSON *root, struct ep_global_config *g)
{
	int r;

	if (!cJSON_IsObject(root))
		return fail_at(c, root, "expected a JSON object at the top level, got %s",
			       json_type_name(root));
	if ((r = PARSE_KEYS(c, root, "", global_keys, g)) < 0)
		return r;
	if (g->control_socket == NULL)
		g->control_socket = ep_strdup_printf("%s/etcdproxyd.sock", g->runtime_dir);
	if (g->kube.node_name == NULL) {
		char host[256] = "";

		gethostname(host, sizeof(host) - 1);
		g->kube.node_name = ep_strdup(host[0] ? host : "localhost");
	}
	if (strlen(g->control_socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
		return fail_at(c, cJSON_GetObjectItemCaseSensitive(root, "control_socket"),
			       "control_socket: %s is longer than a Unix socket path may be",
			       g->control_socket);
	return 0;
}

int ep_global_config_load(const char *path, struct ep_global_config **cfg_r, char **error_r)
{
	struct ep_json_doc *doc;
	struct ep_global_config *g;
	struct pctx c = { .file = path };
	int r;

	*cfg_r = NULL;
	*error_r = NULL;
	doc = ep_json_load_file(path, error_r);
	if (doc == NULL)
		return -EINVAL;
	c.doc = doc;
	g = ep_malloc0(sizeof(*g));
	g->path = ep_strdup(path);
	global_defaults(g);
	r = parse_global(&c, ep_json_root(doc), g);
	ep_json_doc_free(doc);
	if (r < 0) {
		ep_global_config_free(g);
		*error_r = c.error;
		return r;
	}
	*cfg_r = g;
	return 0;
}

void ep_global_config_free(struct ep_global_config *g)
{
	if (g == NULL)
		return;
	free(g->path);
	free(g->storages_dir);
	free(g->state_dir);
	free(g->runtime_dir);
	free(g->plugin_dir);
	free(g->worker_path);
	free(g->ctl_path);
	free(g->control_socket);
	for (size_t i = 0; i < g->core.n_endpoints; i++)
		free(g->core.endpoints[i]);
	free(g->core.endpoints);
	free(g->core.ca_file);
	free(g->core.cert_file);
	free(g->core.key_file);
	for (size_t i = 0; i < g->n_reserved; i++) {
		free(g->reserved[i].prefix);
		free(g->reserved[i].origin);
	}
	free(g->reserved);
	free(g->default_backend);
	cJSON_Delete(g->backends);
	cJSON_Delete(g->certs);
	free(g->metrics.listen);
	free(g->audit.directory);
	free(g->kube.kubeconfig);
	free(g->kube.namespace);
	free(g->kube.node_name);
	free(g->kube.node_address);
	free(g->kube.service_account_dir);
	free(g);
}

/* ---- tenants ---------------------------------------------------------------------- */

int ep_backend_takes_socket(const char *backend)
{
	return backend != NULL && strcmp(backend, "native") == 0;
}

int ep_prefix_overlaps(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);

	return memcmp(a, b, la < lb ? la : lb) == 0;
}

int ep_tenant_prefix_check(const struct ep_global_config *g, const char *name,
			   const char *prefix, char **why_r)
{
	*why_r = NULL;
	for (size_t i = 0; i < g->n_reserved; i++) {
		const struct ep_reserved_prefix *rp = &g->reserved[i];

		if (ep_prefix_overlaps(prefix, rp->prefix)) {
			*why_r = ep_strdup_printf("tenant \"%s\" would have the key prefix \"%s\", "
						  "which overlaps the reserved prefix \"%s\" (%s); "
						  "no worker is started for it",
						  name, prefix, rp->prefix, rp->origin);
			return -EPERM;
		}
	}
	return 0;
}

int ep_tenant_name_valid(const char *name)
{
	size_t len = strlen(name);
	int label_start = 1;

	if (len == 0 || len > EP_TENANT_NAME_MAX)
		return 0;
	for (size_t i = 0; i < len; i++) {
		char ch = name[i];

		if (ch == '.') {
			/* labels neither start nor end with '-' and are never empty */
			if (label_start || name[i - 1] == '-')
				return 0;
			label_start = 1;
			continue;
		}
		if (!(islower((unsigned char)ch) || isdigit((unsigned char)ch) || ch == '-'))
			return 0;
		if (ch == '-' && label_start)
			return 0;
		label_start = 0;
	}
	return !label_start && name[len - 1] != '-';
}

int ep_listen_validate(const char *listen, int tls, const char **why_r)
{
	struct ep_listen_addr a;

	if (ep_listen_parse(listen, &a, why_r) < 0)
		return -EINVAL;
	if (!tls && !ep_listen_is_local(&a)) {
		*why_r = "plaintext (spec.tls.enabled false) is only allowed on a loopback address "
			 "(127.0.0.0/8, ::1) or a Unix socket";
		return -EINVAL;
	}
	return 0;
}

/* ---- tenants: the EtcdStorage spec, by tables like the global file's ------------------------------ */

static const struct key k8s_ref_keys[] = {
	KEY("name", K_STRING, struct ep_k8s_ref, name),
	KEY("namespace", K_STRING, struct ep_k8s_ref, namespace),
};

/* [{"name", "namespace"}, ...]: what is "spec.caCertConfigMap" or "spec.clientCertSecret" */
static int parse_k8s_refs(struct pctx *c, const cJSON *v, const char *what,
			  struct ep_k8s_ref **refs_r, size_t *n_r)
{
	char *section = ep_strdup_printf("%s[]", what);
	const cJSON *e;
	size_t n = 0;
	int r = 0;

	if (!cJSON_IsArray(v)) {
		free(section);
		return fail_at(c, v, "%s: expected an array of {\"name\", \"namespace\"}", what);
	}
	*refs_r = ep_malloc0(sizeof(**refs_r) * ((size_t)cJSON_GetArraySize(v) + 1));
	cJSON_ArrayForEach(e, v)
	{
		struct ep_k8s_ref *ref = &(*refs_r)[n++];

		*n_r = n;
		if (!cJSON_IsObject(e)) {
			r = fail_at(c, e, "%s: expected an object {\"name\", \"namespace\"}", what);
			break;
		}
		if ((r = PARSE_KEYS(c, e, section, k8s_ref_keys, ref)) < 0)
			break;
		if (ref->name == NULL || ref->namespace == NULL) {
			r = fail_at(c, e, "%s: every entry needs both \"name\" and \"namespace\"",
				    what);
			break;
		}
	}
	free(section);
	return r;
}

static int parse_ca_config_maps(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;

	return parse_k8s_refs(c, v, what, &t->ca_cert_config_maps, &t->n_ca_cert_config_maps);
}

static int parse_client_cert_secrets(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;

	return parse_k8s_refs(c, v, what, &t->client_cert_secrets, &t->n_client_cert_secrets);
}

static int parse_compaction(struct pctx *c, const cJSON *m, const char *what, void *base)
{
	struct ep_tenant_config *t = base;

	if (!cJSON_IsString(m) || (strcmp(m->valuestring, "ignore") != 0 &&
				   strcmp(m->valuestring, "allow") != 0 &&
				   strcmp(m->valuestring, "deny") != 0))
		return fail_at(c, m, "%s: expected \"ignore\" (answer success, leave compaction to "
			       "the cluster), \"allow\" or \"deny\"", what);
	free(t->compaction);
	t->compaction = ep_strdup(m->valuestring);
	return 0;
}

/*
 * A size in bytes: an integer, or a string in Kubernetes' quantity notation
 * ("512Mi", "2Gi", "100M", "1500").  0 and -1 return; the value in *out.
 */
int ep_parse_quantity(const char *s, uint64_t *out)
{
	static const struct {
		const char *suffix;
		uint64_t factor;
	} units[] = {
		{ "", 1 },
		{ "Ki", 1ull << 10 },
		{ "Mi", 1ull << 20 },
		{ "Gi", 1ull << 30 },
		{ "Ti", 1ull << 40 },
		{ "Pi", 1ull << 50 },
		{ "k", 1000ull },
		{ "M", 1000000ull },
		{ "G", 1000000000ull },
		{ "T", 1000000000000ull },
		{ "P", 1000000000000000ull },
	};
	uint64_t v = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(p, units[i].suffix) != 0)
			continue;
		if (v > UINT64_MAX / units[i].factor)
			return -1;
		*out = v * units[i].factor;
		return 0;
	}
	return -1;
}

/* A size above zero: an integer, or a quantity string (ep_parse_quantity). */
static int want_size(struct pctx *c, const cJSON *v, const char *what, uint64_t *out)
{
	uint64_t bytes = 0;
	int ok;

	if (cJSON_IsNumber(v))
		ok = v->valuedouble >= 1 && v->valuedouble <= 9007199254740992.0 &&
		     v->valuedouble == (double)(long long)v->valuedouble;
	else
		ok = cJSON_IsString(v) && ep_parse_quantity(v->valuestring, &bytes) == 0 &&
		     bytes > 0;
	if (!ok)
		return fail_at(c, v, "%s: expected a size above zero in bytes, as an integer or a "
			       "quantity such as \"512Mi\", \"2Gi\" or \"100M\", got %s%s%s", what,
			       cJSON_IsString(v) ? "\"" : json_type_name(v),
			       cJSON_IsString(v) ? v->valuestring : "", cJSON_IsString(v) ? "\"" : "");
	*out = cJSON_IsNumber(v) ? (uint64_t)v->valuedouble : bytes;
	return 0;
}

static int parse_max_bytes(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	return want_size(c, v, what, &((struct ep_tenant_config *)base)->quota.max_bytes);
}

static int parse_bytes_per_second(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	return want_size(c, v, what, &((struct ep_tenant_config *)base)->rate_limit.bytes_per_second);
}

static const struct key quota_keys[] = {
	KEY_UINT("maxKeys", struct ep_tenant_config, quota.max_keys, 1, 4000000000u),
	KEY_CALL("maxBytes", parse_max_bytes),
	KEY_UINT("maxLeases", struct ep_tenant_config, quota.max_leases, 1, 4000000000u),
};

static int parse_quota(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;
	int r;

	t->quota.set = 1;
	if ((r = PARSE_KEYS(c, v, what, quota_keys, base)) < 0)
		return r;
	if (t->quota.max_keys == 0 && t->quota.max_bytes == 0 && t->quota.max_leases == 0)
		return fail_at(c, v, "%s: expected maxKeys, maxBytes or maxLeases", what);
	return 0;
}

static const struct key rate_limit_keys[] = {
	KEY_UINT("requestsPerSecond", struct ep_tenant_config, rate_limit.requests_per_second, 1,
		 1000000),
	KEY_UINT("burst", struct ep_tenant_config, rate_limit.burst, 1, 1000000),
	KEY("maxWait", K_DURATION_ZERO, struct ep_tenant_config, rate_limit.max_wait_ms),
	KEY_UINT("maxQueue", struct ep_tenant_config, rate_limit.max_queue, 0, 100000),
	KEY_UINT("maxWatches", struct ep_tenant_config, rate_limit.max_watches, 0, 100000),
	KEY_CALL("bytesPerSecond", parse_bytes_per_second),
};

static int parse_rate_limit(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;
	int r;

	t->rate_limit.set = 1;
	t->rate_limit.max_wait_ms = 1000;
	t->rate_limit.max_queue = 1000;
	if ((r = PARSE_KEYS(c, v, what, rate_limit_keys, base)) < 0)
		return r;
	if (t->rate_limit.requests_per_second == 0 && t->rate_limit.max_watches == 0 &&
	    t->rate_limit.bytes_per_second == 0)
		return fail_at(c, v, "%s: expected requestsPerSecond, bytesPerSecond or maxWatches",
			       what);
	if (t->rate_limit.burst == 0)
		t->rate_limit.burst = t->rate_limit.requests_per_second;
	return 0;
}

static const struct key policy_keys[] = {
	KEY_CALL("compaction", parse_compaction),
};

static int parse_policy(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	return PARSE_KEYS(c, v, what, policy_keys, base);
}

/* A DNS name (labels of letters, digits and '-', a leading "*." allowed) or an IP literal. */
static int server_name_valid(const char *n)
{
	struct in6_addr a6;
	size_t label = 0;

	if (inet_pton(AF_INET6, n, &a6) == 1)
		return 1;
	if (strncmp(n, "*.", 2) == 0)
		n += 2;
	if (n[0] == '\0' || strlen(n) > 253)
		return 0;
	for (const char *p = n; *p; p++) {
		if (*p == '.') {
			if (label == 0 || p[-1] == '-')
				return 0;
			label = 0;
		} else if (isalnum((unsigned char)*p) || (*p == '-' && label > 0)) {
			if (++label > 63)
				return 0;
		} else {
			return 0;
		}
	}
	return label > 0 && n[strlen(n) - 1] != '-';
}

/* A client certificate's name: its common name and the name of its files. */
static int client_cert_name_valid(const char *n)
{
	size_t len = strlen(n);

	if (len == 0 || len > 64 || n[0] == '.' || n[0] == '-')
		return 0;
	for (const char *p = n; *p; p++)
		if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.' || *p == ':' ||
		      *p == '@'))
			return 0;
	return 1;
}

static const struct key tls_files_keys[] = {
	KEY("certFile", K_PATH, struct ep_tls_config, cert_file),
	KEY("keyFile", K_PATH, struct ep_tls_config, key_file),
	KEY("clientCAFile", K_PATH, struct ep_tls_config, client_ca_file),
	KEY("caFile", K_PATH, struct ep_tls_config, ca_file),
};

static int parse_tls_files(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tls_config *tls = base;
	int r = PARSE_KEYS(c, v, what, tls_files_keys, tls);

	if (r == 0 && (tls->cert_file == NULL || tls->key_file == NULL || tls->client_ca_file == NULL))
		return fail_at(c, v, "%s: certFile, keyFile and clientCAFile are required "
			       "(caFile, the bundle clients verify the proxy with, is optional)", what);
	return r;
}

static const struct key client_cert_keys[] = {
	KEY("name", K_STRING, struct ep_client_cert_config, name),
	KEY("outputDir", K_PATH, struct ep_client_cert_config, output_dir),
};

static int parse_client_certs(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tls_config *tls = base;
	const cJSON *e;
	int r;

	if (!cJSON_IsArray(v))
		return fail_at(c, v, "spec.tls.clientCertificates: expected an array of "
			       "{\"name\", \"outputDir\"}");
	tls->client_certs = ep_malloc0(sizeof(*tls->client_certs) * ((size_t)cJSON_GetArraySize(v) + 1));
	cJSON_ArrayForEach(e, v)
	{
		struct ep_client_cert_config *cc = &tls->client_certs[tls->n_client_certs++];

		if (!cJSON_IsObject(e))
			return fail_at(c, e, "spec.tls.clientCertificates: expected an object "
				       "{\"name\", \"outputDir\"}");
		if ((r = PARSE_KEYS(c, e, "spec.tls.clientCertificates[]", client_cert_keys, cc)) < 0)
			return r;
		if (cc->name == NULL || cc->output_dir == NULL)
			return fail_at(c, e, "spec.tls.clientCertificates: every entry needs both "
				       "\"name\" and \"outputDir\"");
		if (!client_cert_name_valid(cc->name))
			return fail_at(c, cJSON_GetObjectItemCaseSensitive(e, "name"),
				       "spec.tls.clientCertificates[].name: \"%s\": expected 1 to 64 "
				       "letters, digits, '-', '_', '.', ':' or '@' (it becomes the "
				       "certificate's common name)", cc->name);
		for (size_t i = 0; i + 1 < tls->n_client_certs; i++) {
			if (strcmp(tls->client_certs[i].name, cc->name) == 0)
				return fail_at(c, e, "spec.tls.clientCertificates: the name \"%s\" "
					       "appears twice", cc->name);
			if (strcmp(tls->client_certs[i].output_dir, cc->output_dir) == 0)
				return fail_at(c, e, "spec.tls.clientCertificates: the outputDir "
					       "\"%s\" appears twice", cc->output_dir);
		}
	}
	return 0;
}

static int parse_tls_source(struct pctx *c, const cJSON *m, const char *what, void *base)
{
	struct ep_tls_config *tls = base;

	if (!cJSON_IsString(m) || (strcmp(m->valuestring, "ca") != 0 &&
				   strcmp(m->valuestring, "files") != 0))
		return fail_at(c, m, "%s: expected \"ca\" (a built-in CA per tenant) or \"files\" "
			       "(PEM files kept by the operator)", what);
	free(tls->source);
	tls->source = ep_strdup(m->valuestring);
	return 0;
}

static int parse_server_names(struct pctx *c, const cJSON *m, const char *what, void *base)
{
	struct ep_tls_config *tls = base;
	const cJSON *e;

	if (!cJSON_IsArray(m))
		return fail_at(c, m, "%s: expected an array of DNS names or IP addresses", what);
	tls->server_names = ep_malloc0(sizeof(char *) * ((size_t)cJSON_GetArraySize(m) + 1));
	cJSON_ArrayForEach(e, m)
	{
		if (!cJSON_IsString(e) || !server_name_valid(e->valuestring))
			return fail_at(c, e, "%s: expected a DNS name (\"etcd.example.com\", "
				       "\"*.example.com\") or an IP address", what);
		tls->server_names[tls->n_server_names++] = ep_strdup(e->valuestring);
	}
	return 0;
}

static const struct key tls_keys[] = {
	KEY("enabled", K_BOOL, struct ep_tls_config, enabled),
	KEY_CALL("source", parse_tls_source),
	KEY_CALL("serverNames", parse_server_names),
	KEY_CALL("clientCertificates", parse_client_certs),
	KEY_CALL("files", parse_tls_files),
};

static int parse_tls(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	return PARSE_KEYS(c, v, what, tls_keys, &((struct ep_tenant_config *)base)->tls);
}

static int backend_name_valid(const char *name)
{
	for (const char *p = name; *p; p++)
		if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '-' || *p == '_'))
			return 0;
	return name[0] != '\0' && strlen(name) <= 32;
}

/*
 * The "ca" source's grace against this tenant's signing validity: the plugin
 * would refuse to start, so the tenant is refused here, where --check-config
 * and etcdproxyctl status see it.  Options of the wrong type are left to the
 * plugin's own table (--check-config reports them on the global file).
 */
static int check_ca_grace(struct pctx *c, const cJSON *spec, const struct ep_global_config *g,
			  const struct ep_tenant_config *t)
{
	const cJSON *opts = cJSON_GetObjectItemCaseSensitive(g->certs, "ca");
	const cJSON *grace = cJSON_GetObjectItemCaseSensitive(opts, "grace");
	const cJSON *frac = cJSON_GetObjectItemCaseSensitive(opts, "ca_renew_fraction");
	const cJSON *validity = cJSON_GetObjectItemCaseSensitive(spec, "signingCertificateValidity");
	uint64_t grace_ms = EP_CA_GRACE_DEFAULT_MS;
	char *why;
	int r;

	if (strcmp(t->tls.source, "ca") != 0)
		return 0;
	if (cJSON_IsString(grace) && ep_parse_duration_ms(grace->valuestring, &grace_ms) < 0)
		return 0;
	why = ep_ca_grace_check(grace_ms, t->signing_validity_ms,
				cJSON_IsNumber(frac) ? frac->valuedouble : EP_CA_RENEW_FRACTION_DEFAULT);
	if (why == NULL)
		return 0;
	r = fail_at(c, validity != NULL ? validity : spec, "%s%s (certs.ca in %s)",
		    validity != NULL ? "spec.signingCertificateValidity: " : "", why, g->path);
	free(why);
	return r;
}

static int parse_external_check(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;

	if (!cJSON_IsString(v) ||
	    (strcmp(v->valuestring, "grpc") != 0 && strcmp(v->valuestring, "http") != 0))
		return fail_at(c, v, "%s: expected \"grpc\" (a Range through the proxy, the "
			       "default) or \"http\" (GET healthURL, as etcd's /health)", what);
	free(t->external.check);
	t->external.check = ep_strdup(v->valuestring);
	return 0;
}

static int parse_external_url(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;

	if (!cJSON_IsString(v) || (strncmp(v->valuestring, "http://", 7) != 0 &&
				   strncmp(v->valuestring, "https://", 8) != 0))
		return fail_at(c, v, "%s: expected an http:// or https:// URL, such as "
			       "\"http://127.0.0.1:9379/health\"", what);
	free(t->external.health_url);
	t->external.health_url = ep_strdup(v->valuestring);
	return 0;
}

static const struct key external_keys[] = {
	KEY_CALL("check", parse_external_check),
	KEY_CALL("healthURL", parse_external_url),
	KEY("interval", K_DURATION, struct ep_tenant_config, external.interval_ms),
	KEY("timeout", K_DURATION, struct ep_tenant_config, external.timeout_ms),
	KEY("clientCertificateDir", K_PATH, struct ep_tenant_config, external.client_dir),
	KEY("certificatesDir", K_PATH, struct ep_tenant_config, external.certs_dir),
};

static int parse_external(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;
	int r;

	t->external.set = 1;
	if ((r = PARSE_KEYS(c, v, what, external_keys, base)) < 0)
		return r;
	if (t->external.check != NULL && strcmp(t->external.check, "http") == 0 &&
	    t->external.health_url == NULL)
		return fail_at(c, v, "%s: check \"http\" needs healthURL", what);
	return 0;
}

static int parse_deletion_policy(struct pctx *c, const cJSON *v, const char *what, void *base)
{
	struct ep_tenant_config *t = base;

	if (!cJSON_IsString(v) ||
	    (strcmp(v->valuestring, "Retain") != 0 && strcmp(v->valuestring, "Purge") != 0))
		return fail_at(c, v, "%s: expected \"Retain\" (keep the keys when the tenant goes, the "
			       "default) or \"Purge\" (delete them after supervisor.purge_delay)",
			       what);
	t->deletion_purge = strcmp(v->valuestring, "Purge") == 0;
	return 0;
}

static const struct key spec_keys[] = {
	KEY_CALL("caCertConfigMap", parse_ca_config_maps),
	KEY_CALL("clientCertSecret", parse_client_cert_secrets),
	KEY("signingCertificateValidity", K_DURATION, struct ep_tenant_config, signing_validity_ms),
	KEY("servingCertificateValidity", K_DURATION, struct ep_tenant_config, serving_validity_ms),
	KEY("clientCertificateValidity", K_DURATION, struct ep_tenant_config, client_validity_ms),
	KEY("backend", K_STRING, struct ep_tenant_config, backend),
	KEY("listen", K_STRING, struct ep_tenant_config, listen),
	KEY_CALL("policy", parse_policy),
	KEY_CALL("tls", parse_tls),
	KEY("audit", K_BOOL, struct ep_tenant_config, audit),
	KEY_CALL("rateLimit", parse_rate_limit),
	KEY_CALL("quota", parse_quota),
	KEY_CALL("deletionPolicy", parse_deletion_policy),
	KEY_CALL("external", parse_external),
};

/* spec.external belongs to the external backend, which carries no traffic: it enforces nothing. */
static int check_external(struct pctx *c, const cJSON *spec, struct ep_tenant_config *t)
{
	static const char *const native_only[] = { "policy", "rateLimit", "quota", "audit" };
	const cJSON *ext = cJSON_GetObjectItemCaseSensitive(spec, "external");
	int external = strcmp(t->backend, "external") == 0;

	if (!external) {
		if (t->external.set)
			return fail_at(c, ext, "spec.external: belongs to the external backend "
				       "(spec.backend: \"external\"), not to \"%s\"", t->backend);
		return 0;
	}
	for (size_t i = 0; i < sizeof(native_only) / sizeof(native_only[0]); i++) {
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(spec, native_only[i]);

		if (m != NULL && !(cJSON_IsFalse(m) && strcmp(native_only[i], "audit") == 0))
			return fail_at(c, m, "spec.%s: enforced by the native backend only; the external "
				       "backend carries none of the tenant's traffic", native_only[i]);
	}
	if (t->external.check == NULL)
		t->external.check = ep_strdup("grpc");
	if (t->external.interval_ms == 0)
		t->external.interval_ms = 5000;
	if (t->external.timeout_ms == 0)
		t->external.timeout_ms = 2000;
	if (t->tls.enabled && t->external.certs_dir == NULL)
		return fail_at(c, ext != NULL ? ext : spec, "spec.external.certificatesDir: required "
			       "with TLS: where etcdproxyd publishes the proxy's serving certificate, "
			       "key and client CA bundle");
	if (t->tls.enabled && strcmp(t->external.check, "grpc") == 0 &&
	    t->external.client_dir == NULL)
		return fail_at(c, ext != NULL ? ext : spec, "spec.external.clientCertificateDir: "
			       "required for the \"grpc\" check with TLS: a directory with tls.crt and "
			       "tls.key the proxy accepts (one of spec.tls.clientCertificates' "
			       "outputDir), or check \"http\"");
	return 0;
}

static int parse_spec(struct pctx *c, const cJSON *spec, const struct ep_global_config *g,
		      struct ep_tenant_config *t)
{
	const cJSON *backend_node, *listen_node, *policy_node, *tls_node;
	const cJSON *enabled_node, *files_node, *certs_node;
	const char *why;
	int r;

	if ((r = PARSE_KEYS(c, spec, "spec", spec_keys, t)) < 0)
		return r;
	/* the nodes later checks point at (NULL when absent) */
	backend_node = cJSON_GetObjectItemCaseSensitive(spec, "backend");
	listen_node = cJSON_GetObjectItemCaseSensitive(spec, "listen");
	policy_node = cJSON_GetObjectItemCaseSensitive(spec, "policy");
	tls_node = cJSON_GetObjectItemCaseSensitive(spec, "tls");
	enabled_node = cJSON_GetObjectItemCaseSensitive(tls_node, "enabled");
	files_node = cJSON_GetObjectItemCaseSensitive(tls_node, "files");
	certs_node = cJSON_GetObjectItemCaseSensitive(tls_node, "clientCertificates");

	if (t->listen != NULL && t->listen[0] == ':' && t->listen[1] != '\0' &&
	    strspn(t->listen + 1, "0123456789") == strlen(t->listen + 1)) {
		/* ":PORT": every node binds the port on its own address */
		char *full;

		if (g->kube.node_address == NULL)
			return fail_at(c, listen_node, "spec.listen: \"%s\" gives only a port, which "
				       "each node binds on its own address: set kubernetes.node_address "
				       "in %s", t->listen, g->path);
		full = ep_strdup_printf(strchr(g->kube.node_address, ':') ? "[%s]%s" : "%s%s",
					g->kube.node_address, t->listen);
		free(t->listen);
		t->listen = full;
	}
	if (t->listen == NULL)
		return fail_at(c, spec,
			       "spec.listen is required: the address this tenant is served on "
			       "(\"127.0.0.1:23790\", \":23790\" for every node's "
			       "kubernetes.node_address, or in a tenant file "
			       "\"unix:/run/etcdproxy/%s.sock\")",
			       t->name);
	if (ep_listen_validate(t->listen, 1, &why) < 0)
		return fail_at(c, listen_node, "spec.listen: \"%s\": %s", t->listen, why);
	if (!t->tls.enabled && ep_listen_validate(t->listen, 0, &why) < 0)
		return fail_at(c, enabled_node, "spec.tls.enabled: false: \"%s\": %s", t->listen, why);
	if (t->tls.enabled && strcmp(t->tls.source, "files") == 0 && files_node == NULL)
		return fail_at(c, tls_node, "spec.tls.source \"files\" needs spec.tls.files "
			       "{\"certFile\", \"keyFile\", \"clientCAFile\"}");
	if (strcmp(t->tls.source, "files") != 0 && files_node != NULL)
		return fail_at(c, files_node, "spec.tls.files: only used with spec.tls.source "
			       "\"files\"; the source is \"%s\"", t->tls.source);
	if (strcmp(t->tls.source, "ca") != 0 && certs_node != NULL)
		return fail_at(c, certs_node, "spec.tls.clientCertificates: only the \"ca\" source "
			       "issues client certificates; the source is \"%s\"", t->tls.source);
	for (size_t i = 0; i < t->tls.n_client_certs; i++) {
		/* where it really is: a symbolic link or ".." must not lead into state_dir */
		char *state = ep_path_resolve(g->state_dir);
		char *out = ep_path_resolve(t->tls.client_certs[i].output_dir);
		size_t n = strlen(state);
		int inside = strncmp(out, state, n) == 0 &&
			     (out[n] == '/' || out[n] == '\0' || strcmp(state, "/") == 0);

		if (inside) {
			r = fail_at(c, certs_node, "spec.tls.clientCertificates: outputDir \"%s\" "
				    "is inside state_dir %s%s%s%s, which belongs to etcdproxy",
				    t->tls.client_certs[i].output_dir, g->state_dir,
				    strcmp(out, t->tls.client_certs[i].output_dir) != 0 ? " (it is " : "",
				    strcmp(out, t->tls.client_certs[i].output_dir) != 0 ? out : "",
				    strcmp(out, t->tls.client_certs[i].output_dir) != 0 ? ")" : "");
		}
		free(state);
		free(out);
		if (inside)
			return r;
	}

	if (!backend_name_valid(t->backend))
		return fail_at(c, backend_node, "spec.backend: \"%s\" is not a plugin name "
			       "(lower-case letters, digits, '-' and '_')", t->backend);
	if ((r = check_external(c, spec, t)) < 0)
		return r;
	if (strcmp(t->backend, "etcd") == 0 && t->compaction != NULL && policy_node != NULL)
		return fail_at(c, policy_node,
			       "spec.policy: enforced by the native backend only; the etcd backend "
			       "(etcd grpc-proxy) passes Compact to the core etcd");
	if (strcmp(t->backend, "etcd") == 0 && t->rate_limit.set)
		return fail_at(c, cJSON_GetObjectItemCaseSensitive(spec, "rateLimit"),
			       "spec.rateLimit: enforced by the native backend only; the etcd backend "
			       "(etcd grpc-proxy) passes every call through");
	if (strcmp(t->backend, "etcd") == 0 && t->quota.set)
		return fail_at(c, cJSON_GetObjectItemCaseSensitive(spec, "quota"),
			       "spec.quota: enforced by the native backend only; the etcd backend "
			       "(etcd grpc-proxy) passes every write through");
	if (strcmp(t->backend, "etcd") == 0 && t->audit == 1)
		return fail_at(c, cJSON_GetObjectItemCaseSensitive(spec, "audit"),
			       "spec.audit: written by the native backend only; the etcd backend "
			       "(etcd grpc-proxy) does not see the calls' contents");
	if (strcmp(t->backend, "etcd") == 0 && strncmp(t->listen, "unix:", 5) == 0)
		return fail_at(c, listen_node,
			       "spec.listen: the etcd backend (etcd grpc-proxy) listens on TCP only; "
			       "use HOST:PORT");

	/* the supervisor loads no plugin, but it can tell that the file is not there */
	char *plugin = ep_strdup_printf("%s/backend-%s.so", g->plugin_dir, t->backend);
	struct stat st;
	if (stat(plugin, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = fail_at(c, backend_node != NULL ? backend_node : spec,
			    "spec.backend: \"%s\": no plugin %s (%s)", t->backend, plugin,
			    stat(plugin, &st) < 0 ? strerror(errno) : "not a regular file");
		free(plugin);
		return r;
	}
	free(plugin);
	if (!t->tls.enabled)
		return 0;
	if ((r = check_ca_grace(c, spec, g, t)) < 0)
		return r;
	plugin = ep_strdup_printf("%s/certs-%s.so", g->plugin_dir, t->tls.source);
	if (stat(plugin, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = fail_at(c, tls_node != NULL ? tls_node : spec,
			    "spec.tls.source: \"%s\": no plugin %s (%s)", t->tls.source, plugin,
			    stat(plugin, &st) < 0 ? strerror(errno) : "not a regular file");
		free(plugin);
		return r;
	}
	free(plugin);
	return 0;
}

static int parse_tenant(struct pctx *c, const cJSON *root, const struct ep_global_config *g,
			struct ep_tenant_config *t, char **name_r)
{
	const cJSON *m, *api = NULL, *kind = NULL, *meta = NULL, *spec = NULL, *name = NULL;
	char *why;
	int r;

	if (!cJSON_IsObject(root))
		return fail_at(c, root, "expected an EtcdStorage object, got %s", json_type_name(root));
	cJSON_ArrayForEach(m, root)
	{
		if (strcmp(m->string, "apiVersion") == 0)
			api = m;
		else if (strcmp(m->string, "kind") == 0)
			kind = m;
		else if (strcmp(m->string, "metadata") == 0)
			meta = m;
		else if (strcmp(m->string, "spec") == 0)
			spec = m;
		else if (strcmp(m->string, "status") != 0) /* status: written by controllers, ignored */
			return unknown_key(c, m, "", "apiVersion, kind, metadata, spec, status");
	}
	if (meta != NULL) {
		if ((r = want_object(c, meta, "metadata")) < 0)
			return r;
		/* everything else kubectl prints in metadata (uid, labels, ...) is kept out of our way */
		name = cJSON_GetObjectItemCaseSensitive(meta, "name");
	}
	if (name != NULL && cJSON_IsString(name))
		*name_r = ep_strdup(name->valuestring);

	if (api == NULL || !cJSON_IsString(api) || strcmp(api->valuestring, EP_API_VERSION) != 0)
		return fail_at(c, api != NULL ? api : root,
			       "apiVersion: expected \"" EP_API_VERSION "\"%s%s%s",
			       api != NULL && cJSON_IsString(api) ? ", got \"" : "",
			       api != NULL && cJSON_IsString(api) ? api->valuestring : "",
			       api != NULL && cJSON_IsString(api) ? "\"" : "");
	if (kind == NULL || !cJSON_IsString(kind) || strcmp(kind->valuestring, EP_KIND) != 0)
		return fail_at(c, kind != NULL ? kind : root, "kind: expected \"" EP_KIND "\"");
	if (meta == NULL)
		return fail_at(c, root, "metadata.name is required");
	if (name == NULL)
		return fail_at(c, meta, "metadata.name is required");
	if (!cJSON_IsString(name) || !ep_tenant_name_valid(name->valuestring))
		return fail_at(c, name,
			       "metadata.name: expected a lower-case DNS-1123 name of at most %d "
			       "characters (a-z, 0-9, '-' and '.', starting and ending with a letter "
			       "or digit)",
			       EP_TENANT_NAME_MAX);
	t->name = ep_strdup(name->valuestring);
	t->prefix = ep_strdup_printf("/%s/", t->name);
	if (ep_tenant_prefix_check(g, t->name, t->prefix, &why) < 0) {
		r = fail_at(c, name, "metadata.name: %s", why);
		free(why);
		return r;
	}
	t->backend = ep_strdup(g->default_backend);
	t->signing_validity_ms = g->default_signing_validity_ms;
	t->serving_validity_ms = g->default_serving_validity_ms;
	t->client_validity_ms = g->default_client_validity_ms;
	t->tls.enabled = 1;
	t->tls.source = ep_strdup("ca");
	t->audit = -1;
	if (spec == NULL)
		return fail_at(c, root, "spec is required (at least spec.listen)");
	return parse_spec(c, spec, g, t);
}

int ep_tenant_config_load(const char *path, const struct ep_global_config *global,
			  struct ep_tenant_config **tenant_r, char **name_r, char **error_r)
{
	struct ep_json_doc *doc;
	struct ep_tenant_config *t;
	struct pctx c = { .file = path };
	int r;

	*tenant_r = NULL;
	*name_r = NULL;
	*error_r = NULL;
	doc = ep_json_load_file(path, error_r);
	if (doc == NULL)
		return -EINVAL;
	c.doc = doc;
	t = ep_malloc0(sizeof(*t));
	t->file = ep_strdup(path);
	r = parse_tenant(&c, ep_json_root(doc), global, t, name_r);
	ep_json_doc_free(doc);
	if (r < 0) {
		ep_tenant_config_free(t);
		*error_r = c.error;
		return r;
	}
	*tenant_r = t;
	return 0;
}

static void free_refs(struct ep_k8s_ref *refs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(refs[i].name);
		free(refs[i].namespace);
	}
	free(refs);
}

void ep_tenant_config_free(struct ep_tenant_config *t)
{
	if (t == NULL)
		return;
	free(t->file);
	free(t->name);
	free(t->prefix);
	free(t->backend);
	free(t->listen);
	free_refs(t->ca_cert_config_maps, t->n_ca_cert_config_maps);
	free_refs(t->client_cert_secrets, t->n_client_cert_secrets);
	free(t->compaction);
	free(t->external.check);
	free(t->external.health_url);
	free(t->external.client_dir);
	free(t->external.certs_dir);
	for (size_t i = 0; i < t->tls.n_server_names; i++)
		free(t->tls.server_names[i]);
	free(t->tls.server_names);
	for (size_t i = 0; i < t->tls.n_client_certs; i++) {
		free(t->tls.client_certs[i].name);
		free(t->tls.client_certs[i].output_dir);
	}
	free(t->tls.client_certs);
	free(t->tls.source);
	free(t->tls.cert_file);
	free(t->tls.key_file);
	free(t->tls.client_ca_file);
	free(t->tls.ca_file);
	free(t);
}

static cJSON *refs_json(const struct ep_k8s_ref *refs, size_t n)
{
	cJSON *a = cJSON_CreateArray();

	for (size_t i = 0; i < n; i++) {
		cJSON *o = cJSON_CreateObject();

		cJSON_AddStringToObject(o, "name", refs[i].name);
		cJSON_AddStringToObject(o, "namespace", refs[i].namespace);
		cJSON_AddItemToArray(a, o);
	}
	return a;
}

static void add_nullable(cJSON *o, const char *key, const char *value)
{
	if (value != NULL)
		cJSON_AddStringToObject(o, key, value);
	else
		cJSON_AddNullToObject(o, key);
}

int ep_tenant_audits(const struct ep_global_config *g, const struct ep_tenant_config *t)
{
	if (t->audit >= 0)
		return t->audit;
	return g->audit.on && strcmp(t->backend, "native") == 0;
}

char *ep_kube_output_dir(const struct ep_global_config *g, const char *tenant,
			 const struct ep_k8s_ref *secret)
{
	if (secret == NULL)
		return ep_strdup_printf("%s/kubernetes/outputs/%s/ca-bundle", g->state_dir, tenant);
	return ep_strdup_printf("%s/kubernetes/outputs/%s/secret.%s.%s", g->state_dir, tenant,
				secret->namespace, secret->name);
}

/*
 * The Kubernetes source publishes a client certificate into each
 * spec.clientCertSecret, and the CA bundle into each spec.caCertConfigMap: the
 * ca source issues them into directories of state_dir like any other output,
 * and the supervisor copies them into the cluster (kube-publish.c).
 */
static void add_kube_outputs(const struct ep_global_config *g, const struct ep_tenant_config *t,
			     cJSON *list)
{
	for (size_t i = 0; i < t->n_client_cert_secrets; i++) {
		cJSON *o = cJSON_CreateObject();
		char *dir = ep_kube_output_dir(g, t->name, &t->client_cert_secrets[i]);
		char *cn = ep_strdup_printf("%s:%s", t->client_cert_secrets[i].namespace,
					    t->client_cert_secrets[i].name);

		cJSON_AddStringToObject(o, "name", cn);
		cJSON_AddStringToObject(o, "outputDir", dir);
		cJSON_AddItemToArray(list, o);
		free(dir);
		free(cn);
	}
	if (t->n_client_cert_secrets == 0 && t->n_ca_cert_config_maps > 0) {
		/* the bundle comes with a client certificate, which nobody is given */
		cJSON *o = cJSON_CreateObject();
		char *dir = ep_kube_output_dir(g, t->name, NULL);

		cJSON_AddStringToObject(o, "name", "etcdproxy-ca-bundle");
		cJSON_AddStringToObject(o, "outputDir", dir);
		cJSON_AddItemToArray(list, o);
		free(dir);
	}
}

cJSON *ep_worker_config_build(const struct ep_global_config *g, const struct ep_tenant_config *t)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *tenant = cJSON_AddObjectToObject(root, "tenant");
	cJSON *core = cJSON_AddObjectToObject(root, "core_etcd");
	cJSON *eps = cJSON_AddArrayToObject(core, "endpoints");
	const cJSON *opts = cJSON_GetObjectItemCaseSensitive(g->backends, t->backend);

	cJSON_AddStringToObject(tenant, "name", t->name);
	cJSON_AddStringToObject(tenant, "prefix", t->prefix);
	cJSON_AddStringToObject(tenant, "listen", t->listen);
	cJSON_AddStringToObject(tenant, "file", t->file);
	cJSON_AddNumberToObject(tenant, "signing_validity_ms", (double)t->signing_validity_ms);
	cJSON_AddNumberToObject(tenant, "serving_validity_ms", (double)t->serving_validity_ms);
	cJSON_AddNumberToObject(tenant, "client_validity_ms", (double)t->client_validity_ms);
	cJSON_AddItemToObject(tenant, "caCertConfigMap",
			      refs_json(t->ca_cert_config_maps, t->n_ca_cert_config_maps));
	cJSON_AddItemToObject(tenant, "clientCertSecret",
			      refs_json(t->client_cert_secrets, t->n_client_cert_secrets));
	cJSON *policy = cJSON_AddObjectToObject(tenant, "policy");
	if (t->compaction != NULL)
		cJSON_AddStringToObject(policy, "compaction", t->compaction);
	if (t->rate_limit.set) {
		cJSON *rl = cJSON_AddObjectToObject(policy, "rate_limit");

		cJSON_AddNumberToObject(rl, "requests_per_second", t->rate_limit.requests_per_second);
		cJSON_AddNumberToObject(rl, "burst", t->rate_limit.burst);
		cJSON_AddNumberToObject(rl, "max_wait_ms", (double)t->rate_limit.max_wait_ms);
		cJSON_AddNumberToObject(rl, "max_queue", t->rate_limit.max_queue);
		cJSON_AddNumberToObject(rl, "max_watches", t->rate_limit.max_watches);
		if (t->rate_limit.bytes_per_second > 0)
			cJSON_AddNumberToObject(rl, "bytes_per_second",
						(double)t->rate_limit.bytes_per_second);
	}
	if (strcmp(t->backend, "external") == 0) {
		cJSON *x = cJSON_AddObjectToObject(policy, "external");

		cJSON_AddStringToObject(x, "check", t->external.check);
		if (t->external.health_url != NULL)
			cJSON_AddStringToObject(x, "health_url", t->external.health_url);
		cJSON_AddNumberToObject(x, "interval_ms", (double)t->external.interval_ms);
		cJSON_AddNumberToObject(x, "timeout_ms", (double)t->external.timeout_ms);
		if (t->external.client_dir != NULL)
			cJSON_AddStringToObject(x, "client_dir", t->external.client_dir);
		if (t->external.certs_dir != NULL)
			cJSON_AddStringToObject(x, "certificates_dir", t->external.certs_dir);
	}
	if (t->quota.set) {
		cJSON *q = cJSON_AddObjectToObject(policy, "quota");

		cJSON_AddNumberToObject(q, "max_keys", t->quota.max_keys);
		cJSON_AddNumberToObject(q, "max_bytes", (double)t->quota.max_bytes);
		cJSON_AddNumberToObject(q, "max_leases", t->quota.max_leases);
	}
	if (ep_tenant_audits(g, t)) {
		cJSON *a = cJSON_AddObjectToObject(policy, "audit");
		char *file = ep_strdup_printf("%s/%s.log", g->audit.directory, t->name);

		cJSON_AddStringToObject(a, "file", file);
		cJSON_AddNumberToObject(a, "max_size", g->audit.max_size);
		cJSON_AddNumberToObject(a, "files", g->audit.files);
		free(file);
	}
	if (t->tls.enabled) {
		const cJSON *copts = cJSON_GetObjectItemCaseSensitive(g->certs, t->tls.source);
		cJSON *tls = cJSON_AddObjectToObject(tenant, "tls");
		cJSON *a = cJSON_AddArrayToObject(tls, "serverNames");

		cJSON_AddStringToObject(tls, "source", t->tls.source);
		for (size_t i = 0; i < t->tls.n_server_names; i++)
			cJSON_AddItemToArray(a, cJSON_CreateString(t->tls.server_names[i]));
		a = cJSON_AddArrayToObject(tls, "clientCertificates");
		for (size_t i = 0; i < t->tls.n_client_certs; i++) {
			cJSON *o = cJSON_CreateObject();

			cJSON_AddStringToObject(o, "name", t->tls.client_certs[i].name);
			cJSON_AddStringToObject(o, "outputDir", t->tls.client_certs[i].output_dir);
			cJSON_AddItemToArray(a, o);
		}
		if (g->kube.kubeconfig != NULL && strcmp(t->tls.source, "ca") == 0)
			add_kube_outputs(g, t, a);
		if (t->tls.cert_file != NULL) {
			cJSON *f = cJSON_AddObjectToObject(tls, "files");

			cJSON_AddStringToObject(f, "certFile", t->tls.cert_file);
			cJSON_AddStringToObject(f, "keyFile", t->tls.key_file);
			cJSON_AddStringToObject(f, "clientCAFile", t->tls.client_ca_file);
			add_nullable(f, "caFile", t->tls.ca_file);
		}
		cJSON_AddNumberToObject(tls, "signing_validity_ms", (double)t->signing_validity_ms);
		cJSON_AddNumberToObject(tls, "serving_validity_ms", (double)t->serving_validity_ms);
		cJSON_AddNumberToObject(tls, "client_validity_ms", (double)t->client_validity_ms);
		cJSON_AddItemToObject(root, "certs_options",
				      copts != NULL ? cJSON_Duplicate(copts, 1) : cJSON_CreateObject());
	} else {
		cJSON_AddNullToObject(tenant, "tls");
	}
	for (size_t i = 0; i < g->core.n_endpoints; i++)
		cJSON_AddItemToArray(eps, cJSON_CreateString(g->core.endpoints[i]));
	add_nullable(core, "ca_file", g->core.ca_file);
	add_nullable(core, "cert_file", g->core.cert_file);
	add_nullable(core, "key_file", g->core.key_file);
	cJSON_AddStringToObject(root, "backend", t->backend);
	cJSON_AddItemToObject(root, "backend_options",
			      opts != NULL ? cJSON_Duplicate(opts, 1) : cJSON_CreateObject());
	cJSON_AddStringToObject(root, "plugin_dir", g->plugin_dir);
	char *dir = ep_strdup_printf("%s/%s", g->state_dir, t->name);
	cJSON_AddStringToObject(root, "state_dir", dir);
	free(dir);
	dir = ep_strdup_printf("%s/%s", g->runtime_dir, t->name);
	cJSON_AddStringToObject(root, "runtime_dir", dir);
	free(dir);
	return root;
}
