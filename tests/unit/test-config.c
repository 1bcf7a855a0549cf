#include "build-config.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "config.h"
#include "util.h"

#define UNUSED __attribute__((unused))
#define N_ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

#define HOUR_MS (3600ull * 1000)

/* Messages that many cases share. */
#define TOP_KEYS \
	"(expected one of: storages_dir, state_dir, runtime_dir, plugin_dir, worker, etcdproxyctl, " \
	"control_socket, log_level, core_etcd, reserved_prefixes, defaults, supervisor, backends, " \
	"certs, kubernetes, metrics, audit)"
#define MSG_LOG_LEVEL \
	"log_level: expected one of \"err\", \"warning\", \"notice\", \"info\", \"debug\""
#define MSG_DURATION(what, got) \
	what ": expected a duration such as \"730h\", \"1h30m\" or \"500ms\", got " got
#define MSG_URL \
	"core_etcd.endpoints: expected a URL such as \"https://127.0.0.1:2379\" (scheme, host " \
	"and port)"
#define MSG_MAX_FAILURES "supervisor.max_failures: expected an integer from 1 to 1000"
#define MSG_BACKOFF "supervisor: restart_backoff_max must not be below restart_backoff_initial"
#define MSG_CERT_KEY "core_etcd: cert_file and key_file go together: set both or neither"
#define MSG_LOOPBACK \
	"plaintext (spec.tls.enabled false) is only allowed on a loopback address " \
	"(127.0.0.0/8, ::1) or a Unix socket"
#define MSG_HOSTPORT "expected HOST:PORT (\"127.0.0.1:23790\", \"[::1]:23790\") or unix:PATH"
#define MSG_ETCD_UNIX \
	"spec.listen: the etcd backend (etcd grpc-proxy) listens on TCP only; use HOST:PORT"
#define MSG_BOTH(what) "spec." what ": every entry needs both \"name\" and \"namespace\""
#define MSG_PORT "the port must be a number from 1 to 65535"
#define MSG_PLUGIN_NAME "is not a plugin name (lower-case letters, digits, '-' and '_')"
/* the start of most specs below: the next key is at line 5, column 37 */
#define L1 "{\"listen\": \"127.0.0.1:1\", "

/* ---- fixture and helpers ------------------------------------------------------- */

struct fixture {
	char *dir;
	char *plugins;     /* dir/plugins: empty backend-etcd.so, backend-other.so, certs-ca.so */
	char *global_file; /* dir/etcdproxyd.json */
	char *tenant_file; /* dir/storages.d/t.json */
	struct ep_global_config *global;
};

static int rm_entry(const char *path, const struct stat *st UNUSED, int flag UNUSED,
		    struct FTW *ftw UNUSED)
{
	return remove(path);
}

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	if (fp == NULL)
		fail_msg("%s: %s", path, strerror(errno));
	assert_int_equal(fputs(text, fp) >= 0, 1);
	assert_int_equal(fclose(fp), 0);
}

/* Replace every "@D@" by the test directory and "@P@" by the plugin directory. */
static char *expand(const struct fixture *f, const char *text)
{
	size_t cap = strlen(text) + 1, n = 0;
	char *out = ep_malloc0(cap);

	for (const char *p = text; *p != '\0';) {
		const char *with = NULL;

		if (strncmp(p, "@D@", 3) == 0)
			with = f->dir;
		else if (strncmp(p, "@P@", 3) == 0)
			with = f->plugins;
		if (with != NULL) {
			cap += strlen(with);
			out = ep_realloc(out, cap);
			memcpy(out + n, with, strlen(with));
			n += strlen(with);
			p += 3;
		} else {
			out[n++] = *p++;
		}
	}
	out[n] = '\0';
	return out;
}

static struct ep_global_config *global_ok(struct fixture *f, const char *text)
{
	struct ep_global_config *cfg = NULL;
	char *error = NULL;
	char *expanded = expand(f, text);

	write_file(f->global_file, expanded);
	free(expanded);
	if (ep_global_config_load(f->global_file, &cfg, &error) != 0)
		fail_msg("global config refused: %s", error);
	assert_null(error);
	assert_non_null(cfg);
	return cfg;
}

/* The global configuration of most tenant tests: own plugin_dir, own defaults. */
static const char fixture_global[] =
	"{\n"
	"  \"storages_dir\": \"@D@/storages.d\",\n"
	"  \"state_dir\": \"@D@/state\",\n"
	"  \"runtime_dir\": \"@D@/run\",\n"
	"  \"plugin_dir\": \"@P@\",\n"
	"  \"log_level\": \"debug\",\n"
	"  \"core_etcd\": {\n"
	"    \"endpoints\": [\"https://10.1.0.1:2379\", \"https://10.1.0.2:2379\"],\n"
	"    \"ca_file\": null, \"cert_file\": null, \"key_file\": null\n"
	"  },\n"
	"  \"defaults\": {\n"
	"    \"signingCertificateValidity\": \"100h\",\n"
	"    \"servingCertificateValidity\": \"200h\",\n"
	"    \"clientCertificateValidity\": \"30m\"\n"
	"  },\n"
	"  \"backends\": {\"etcd\": {\"binary\": \"/usr/bin/etcd\", \"extra_args\": [\"--x\"]}}\n"
	"}\n";

static int setup(void **state)
{
	struct fixture *f = ep_malloc0(sizeof(*f));
	char tmpl[] = "/tmp/ep-test-config-XXXXXX";
	char *p;

	*state = f;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	f->dir = ep_strdup(tmpl);
	f->plugins = ep_strdup_printf("%s/plugins", f->dir);
	f->global_file = ep_strdup_printf("%s/etcdproxyd.json", f->dir);
	f->tenant_file = ep_strdup_printf("%s/storages.d/t.json", f->dir);
	if (mkdir(f->plugins, 0700) != 0)
		return -1;
	p = ep_strdup_printf("%s/storages.d", f->dir);
	if (mkdir(p, 0700) != 0)
		return -1;
	free(p);
	/* the tenant loader only stats the plugin file */
	p = ep_strdup_printf("%s/backend-etcd.so", f->plugins);
	write_file(p, "");
	free(p);
	p = ep_strdup_printf("%s/backend-other.so", f->plugins);
	write_file(p, "");
	free(p);
	p = ep_strdup_printf("%s/backend-external.so", f->plugins);
	write_file(p, "");
	free(p);
	p = ep_strdup_printf("%s/certs-ca.so", f->plugins);
	write_file(p, "");
	free(p);
	f->global = global_ok(f, fixture_global);
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	int r = 0;

	ep_global_config_free(f->global);
	if (f->dir != NULL)
		r = nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f->dir);
	free(f->plugins);
	free(f->global_file);
	free(f->tenant_file);
	free(f);
	return r;
}

/* error must be exactly "FILE:LINE:COL: message" (line 0: "FILE: message"). */
static void assert_error(const char *error, const char *file, unsigned line, unsigned col,
			 const char *message)
{
	char *expected;

	if (line != 0)
		expected = ep_strdup_printf("%s:%u:%u: %s", file, line, col, message);
	else
		expected = ep_strdup_printf("%s: %s", file, message);
	if (error == NULL)
		fail_msg("no error, expected \"%s\"", expected);
	if (strcmp(error, expected) != 0)
		fail_msg("error\n  \"%s\"\nexpected\n  \"%s\"", error, expected);
	free(expected);
}

static void assert_contains(const char *text, const char *needle)
{
	if (text == NULL || strstr(text, needle) == NULL)
		fail_msg("\"%s\" does not contain \"%s\"", text ? text : "(null)", needle);
}

/* Load text as the global configuration and expect exactly this error. */
static void global_fails(struct fixture *f, const char *text, unsigned line, unsigned col,
			 const char *message)
{
	struct ep_global_config *cfg = (struct ep_global_config *)f;
	char *error = NULL;
	char *t = expand(f, text);
	char *m = expand(f, message);
	int r;

	write_file(f->global_file, t);
	r = ep_global_config_load(f->global_file, &cfg, &error);
	if (r != -EINVAL)
		fail_msg("%s: returned %d, expected -EINVAL (error: %s)", text, r, error);
	assert_null(cfg);
	assert_error(error, f->global_file, line, col, m);
	free(error);
	free(m);
	free(t);
}

/* The members of an EtcdStorage document; NULL: the default, OMIT: left out. */
struct tdoc {
	const char *api, *kind, *metadata, *spec;
};

#define OMIT "omit"

/*
 * One member per line, so that positions are easy to tell:
 *   line 2 apiVersion (col 3), line 3 kind, line 4 metadata (its first key at
 *   col 16), line 5 spec (its first key at col 12), line 6 status.
 * A member left out is a comment line.
 */
static char *tenant_doc(const struct tdoc *d)
{
	const char *api = d->api ? d->api : "\"" EP_API_VERSION "\"";
	const char *kind = d->kind ? d->kind : "\"" EP_KIND "\"";
	const char *meta = d->metadata ? d->metadata : "{\"name\": \"a\"}";
	const char *spec = d->spec ? d->spec : "{\"listen\": \"127.0.0.1:23790\"}";
	char *l2, *l3, *l4, *l5, *doc;

	l2 = strcmp(api, OMIT) ? ep_strdup_printf("  \"apiVersion\": %s,", api) : ep_strdup("  //");
	l3 = strcmp(kind, OMIT) ? ep_strdup_printf("  \"kind\": %s,", kind) : ep_strdup("  //");
	l4 = strcmp(meta, OMIT) ? ep_strdup_printf("  \"metadata\": %s,", meta) : ep_strdup("  //");
	l5 = strcmp(spec, OMIT) ? ep_strdup_printf("  \"spec\": %s,", spec) : ep_strdup("  //");
	doc = ep_strdup_printf("{\n%s\n%s\n%s\n%s\n  \"status\": {}\n}\n", l2, l3, l4, l5);
	free(l2);
	free(l3);
	free(l4);
	free(l5);
	return doc;
}

static struct ep_tenant_config *tenant_ok_text(struct fixture *f, const struct ep_global_config *g,
					       const char *text)
{
	struct ep_tenant_config *t = NULL;
	char *name = NULL, *error = NULL;
	char *expanded = expand(f, text);

	write_file(f->tenant_file, expanded);
	if (ep_tenant_config_load(f->tenant_file, g, &t, &name, &error) != 0)
		fail_msg("tenant refused: %s\n%s", error, expanded);
	free(expanded);
	assert_null(error);
	assert_non_null(t);
	/* the name comes back also on success */
	assert_non_null(name);
	assert_string_equal(name, t->name);
	free(name);
	return t;
}

static struct ep_tenant_config *tenant_ok(struct fixture *f, const struct tdoc *d)
{
	char *text = tenant_doc(d);
	struct ep_tenant_config *t = tenant_ok_text(f, f->global, text);

	free(text);
	return t;
}

static void tenant_fails_text(struct fixture *f, const struct ep_global_config *g,
			      const char *text, unsigned line, unsigned col, const char *message,
			      const char *name_r)
{
	struct ep_tenant_config *t = (struct ep_tenant_config *)f;
	char *name = (char *)"untouched", *error = NULL;
	char *expanded = expand(f, text);
	char *m = expand(f, message);
	int r;

	write_file(f->tenant_file, expanded);
	r = ep_tenant_config_load(f->tenant_file, g, &t, &name, &error);
	if (r != -EINVAL)
		fail_msg("returned %d, expected -EINVAL (error: %s)\n%s", r, error, expanded);
	assert_null(t);
	assert_error(error, f->tenant_file, line, col, m);
	if (name_r == NULL) {
		if (name != NULL)
			fail_msg("name_r is \"%s\", expected NULL", name);
	} else {
		if (name == NULL)
			fail_msg("name_r is NULL, expected \"%s\"", name_r);
		assert_string_equal(name, name_r);
	}
	free(name);
	free(error);
	free(m);
	free(expanded);
}

static void tenant_fails(struct fixture *f, const struct tdoc *d, unsigned line, unsigned col,
			 const char *message, const char *name_r)
{
	char *text = tenant_doc(d);

	tenant_fails_text(f, f->global, text, line, col, message, name_r);
	free(text);
}

/* ---- global configuration: defaults and values ------------------------------------ */

static void test_global_defaults(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g = global_ok(f, "{}");

	assert_string_equal(g->path, f->global_file);
	assert_string_equal(g->storages_dir, SYSCONFDIR "/etcdproxy/storages.d");
	assert_string_equal(g->state_dir, LOCALSTATEDIR "/lib/etcdproxy");
	assert_string_equal(g->runtime_dir, RUNSTATEDIR "/etcdproxy");
	assert_string_equal(g->plugin_dir, PKGLIBDIR);
	assert_string_equal(g->worker_path, PKGLIBEXECDIR "/etcdproxy-worker");
	assert_string_equal(g->control_socket, RUNSTATEDIR "/etcdproxy/etcdproxyd.sock");
	assert_int_equal(g->log_level, EP_LOG_INFO);
	assert_int_equal(g->core.n_endpoints, 1);
	assert_string_equal(g->core.endpoints[0], "https://127.0.0.1:2379");
	assert_string_equal(g->core.ca_file, "/etc/kubernetes/pki/etcd/ca.crt");
	assert_string_equal(g->core.cert_file, "/etc/kubernetes/pki/apiserver-etcd-client.crt");
	assert_string_equal(g->core.key_file, "/etc/kubernetes/pki/apiserver-etcd-client.key");
	assert_string_equal(g->default_backend, "etcd");
	assert_int_equal(g->default_signing_validity_ms, 8760 * HOUR_MS);
	assert_int_equal(g->default_serving_validity_ms, 8760 * HOUR_MS);
	assert_int_equal(g->default_client_validity_ms, 8760 * HOUR_MS);
	assert_int_equal(g->stop_timeout_ms, 10000);
	assert_int_equal(g->backoff_initial_ms, 100);
	assert_int_equal(g->backoff_max_ms, 30000);
	assert_int_equal(g->stable_after_ms, 60000);
	assert_int_equal(g->max_failures, 10);
	assert_non_null(g->backends);
	assert_true(cJSON_IsObject(g->backends));
	assert_null(g->backends->child);
	/* etcdproxy's own prefix first, then the default of reserved_prefixes */
	assert_int_equal(g->n_reserved, 4);
	assert_string_equal(g->reserved[0].prefix, "/__etcdproxy/");
	assert_string_equal(g->reserved[0].origin,
			    "always reserved: etcdproxy's own records, whatever reserved_prefixes says");
	assert_string_equal(g->reserved[1].prefix, "/registry/");
	assert_string_equal(g->reserved[2].prefix, "/kubernetes.io/");
	assert_string_equal(g->reserved[3].prefix, "/openshift.io/");
	for (size_t i = 1; i < 4; i++)
		assert_string_equal(g->reserved[i].origin, "the default of reserved_prefixes");
	ep_global_config_free(g);

	/* empty sections keep their defaults too */
	g = global_ok(f, "{\"core_etcd\": {}, \"defaults\": {}, \"supervisor\": {}, "
			 "\"backends\": {}}");
	assert_int_equal(g->core.n_endpoints, 1);
	assert_string_equal(g->core.ca_file, "/etc/kubernetes/pki/etcd/ca.crt");
	assert_int_equal(g->max_failures, 10);
	assert_string_equal(g->default_backend, "etcd");
	ep_global_config_free(g);

	ep_global_config_free(NULL);
}

static void test_global_all_values(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g = global_ok(
		f, "// etcdproxyd.json with every key\n"
		   "{\n"
		   "  \"storages_dir\": \"/srv/storages\",\n"
		   "  \"state_dir\": \"/srv/state\",\n"
		   "  \"runtime_dir\": \"/srv/run\",\n"
		   "  \"plugin_dir\": \"/srv/plugins\",\n"
		   "  \"worker\": \"/srv/bin/worker\",\n"
		   "  \"control_socket\": \"/srv/ctl.sock\",\n"
		   "  \"log_level\": \"warning\", /* quieter */\n"
		   "  \"core_etcd\": {\n"
		   "    \"endpoints\": [\"http://127.0.0.1:2379\", \"https://[::1]:2379\"],\n"
		   "    \"ca_file\": \"/pki/ca.crt\",\n"
		   "    \"cert_file\": \"/pki/c.crt\",\n"
		   "    \"key_file\": \"/pki/c.key\"\n"
		   "  },\n"
		   "  \"defaults\": {\n"
		   "    \"backend\": \"other\",\n"
		   "    \"signingCertificateValidity\": \"730h\",\n"
		   "    \"servingCertificateValidity\": \"1h30m\",\n"
		   "    \"clientCertificateValidity\": \"90s\"\n"
		   "  },\n"
		   "  \"supervisor\": {\n"
		   "    \"stop_timeout\": \"3s\",\n"
		   "    \"restart_backoff_initial\": \"0\",\n"
		   "    \"restart_backoff_max\": \"2m\",\n"
		   "    \"stable_after\": \"1h\",\n"
		   "    \"max_failures\": 1000\n"
		   "  },\n"
		   "  \"backends\": {\"etcd\": {\"binary\": \"/opt/etcd\"}, \"other\": {}}\n"
		   "}\n");
	char *text;

	assert_string_equal(g->storages_dir, "/srv/storages");
	assert_string_equal(g->state_dir, "/srv/state");
	assert_string_equal(g->runtime_dir, "/srv/run");
	assert_string_equal(g->plugin_dir, "/srv/plugins");
	assert_string_equal(g->worker_path, "/srv/bin/worker");
	assert_string_equal(g->control_socket, "/srv/ctl.sock");
	assert_int_equal(g->log_level, EP_LOG_WARNING);
	assert_int_equal(g->core.n_endpoints, 2);
	assert_string_equal(g->core.endpoints[0], "http://127.0.0.1:2379");
	assert_string_equal(g->core.endpoints[1], "https://[::1]:2379");
	assert_string_equal(g->core.ca_file, "/pki/ca.crt");
	assert_string_equal(g->core.cert_file, "/pki/c.crt");
	assert_string_equal(g->core.key_file, "/pki/c.key");
	assert_string_equal(g->default_backend, "other");
	assert_int_equal(g->default_signing_validity_ms, 2628000000ull);
	assert_int_equal(g->default_serving_validity_ms, 5400000);
	assert_int_equal(g->default_client_validity_ms, 90000);
	assert_int_equal(g->stop_timeout_ms, 3000);
	assert_int_equal(g->backoff_initial_ms, 0);
	assert_int_equal(g->backoff_max_ms, 120000);
	assert_int_equal(g->stable_after_ms, HOUR_MS);
	assert_int_equal(g->max_failures, 1000);
	text = cJSON_PrintUnformatted(g->backends);
	assert_string_equal(text, "{\"etcd\":{\"binary\":\"/opt/etcd\"},\"other\":{}}");
	free(text);
	ep_global_config_free(g);

	/* each log level name */
	static const struct {
		const char *name;
		enum ep_log_level level;
	} levels[] = {
		{ "err", EP_LOG_ERR },   { "warning", EP_LOG_WARNING }, { "notice", EP_LOG_NOTICE },
		{ "info", EP_LOG_INFO }, { "debug", EP_LOG_DEBUG },
	};
	for (size_t i = 0; i < N_ELEMENTS(levels); i++) {
		char *doc = ep_strdup_printf("{\"log_level\": \"%s\"}", levels[i].name);

		g = global_ok(f, doc);
		assert_int_equal(g->log_level, levels[i].level);
		ep_global_config_free(g);
		free(doc);
	}

	/* the control socket follows runtime_dir when it is not set */
	g = global_ok(f, "{\"runtime_dir\": \"/srv/r\"}");
	assert_string_equal(g->control_socket, "/srv/r/etcdproxyd.sock");
	ep_global_config_free(g);
}

static void test_global_nulls(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g;

	g = global_ok(f, "{\"core_etcd\": {\"endpoints\": [\"http://127.0.0.1:2379\"], "
			 "\"ca_file\": null}}");
	assert_null(g->core.ca_file);
	/* the client certificate keeps its default */
	assert_string_equal(g->core.cert_file, "/etc/kubernetes/pki/apiserver-etcd-client.crt");
	ep_global_config_free(g);

	g = global_ok(f, "{\"core_etcd\": {\"ca_file\": null, \"cert_file\": null, "
			 "\"key_file\": null}}");
	assert_null(g->core.ca_file);
	assert_null(g->core.cert_file);
	assert_null(g->core.key_file);
	ep_global_config_free(g);

	/* the fixture has everything null too */
	assert_null(f->global->core.ca_file);
	assert_null(f->global->core.cert_file);
	assert_null(f->global->core.key_file);
	assert_int_equal(f->global->core.n_endpoints, 2);
}

static void test_global_control_socket_length(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g;
	char path[200], *doc, *msg;

	/* sun_path holds 108 bytes with the NUL: 107 is the longest path */
	memset(path, 'c', sizeof(path));
	path[0] = '/';
	path[107] = '\0';
	doc = ep_strdup_printf("{\"control_socket\": \"%s\"}", path);
	g = global_ok(f, doc);
	assert_int_equal(strlen(g->control_socket), 107);
	ep_global_config_free(g);
	free(doc);

	path[107] = 'c';
	path[108] = '\0';
	doc = ep_strdup_printf("{\n  \"control_socket\": \"%s\"\n}\n", path);
	msg = ep_strdup_printf("control_socket: %s is longer than a Unix socket path may be", path);
	global_fails(f, doc, 2, 3, msg);
	free(doc);
	free(msg);

	/* derived from a long runtime_dir: no position to show, the file still named */
	path[100] = '\0';
	doc = ep_strdup_printf("{\"runtime_dir\": \"%s\"}", path);
	msg = ep_strdup_printf("control_socket: %s/etcdproxyd.sock is longer than a Unix socket "
			       "path may be",
			       path);
	global_fails(f, doc, 0, 0, msg);
	free(doc);
	free(msg);
}

static void test_global_file_errors(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g = (struct ep_global_config *)f;
	char *error = NULL;
	char *missing = ep_strdup_printf("%s/nonexistent.json", f->dir);

	assert_int_equal(ep_global_config_load(missing, &g, &error), -EINVAL);
	assert_null(g);
	assert_error(error, missing, 0, 0, "No such file or directory");
	free(error);
	free(missing);

	/* a syntax error, with its position, from the JSON reader */
	write_file(f->global_file, "{\n  \"log_level\": \"info\",\n}\n");
	g = (struct ep_global_config *)f;
	assert_int_equal(ep_global_config_load(f->global_file, &g, &error), -EINVAL);
	assert_null(g);
	assert_error(error, f->global_file, 2, 22, "trailing comma before '}'");
	free(error);
}

/* ---- global configuration: every error ------------------------------------------- */

struct gcase {
	const char *text;
	unsigned line, col;
	const char *message;
};

static void run_global_cases(struct fixture *f, const struct gcase *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		global_fails(f, cases[i].text, cases[i].line, cases[i].col, cases[i].message);
}

static void test_global_unknown_keys(void **state)
{
	static const struct gcase cases[] = {
		{ "{\n  \"storages_dir\": \"/srv/s\",\n  \"bogus\": 1\n}\n", 3, 3,
		  "unknown key \"bogus\" " TOP_KEYS },
		/* keys are case-sensitive */
		{ "{\"Log_level\": \"info\"}", 1, 2, "unknown key \"Log_level\" " TOP_KEYS },
		{ "{\n  \"core_etcd\": {\n    \"endpoints\": [\"https://127.0.0.1:2379\"],\n"
		  "    \"cafile\": \"/x\"\n  }\n}\n",
		  4, 5,
		  "unknown key \"cafile\" in core_etcd (expected one of: endpoints, ca_file, "
		  "cert_file, key_file)" },
		{ "{\n  \"defaults\": {\n    \"backend\": \"etcd\",\n"
		  "    \"validity\": \"1h\"\n  }\n}\n",
		  4, 5,
		  "unknown key \"validity\" in defaults (expected one of: backend, "
		  "signingCertificateValidity, servingCertificateValidity, "
		  "clientCertificateValidity)" },
		{ "{\n  \"supervisor\": {\n    \"max_restarts\": 3\n  }\n}\n", 3, 5,
		  "unknown key \"max_restarts\" in supervisor (expected one of: stop_timeout, "
		  "restart_backoff_initial, restart_backoff_max, stable_after, max_failures, "
		  "purge_delay, start_timeout)" },
		{ "{\n  \"metrics\": {\"port\": 9379}\n}\n", 2, 15,
		  "unknown key \"port\" in metrics (expected one of: listen)" },
		{ "{\n  \"metrics\": {\"listen\": \"9379\"}\n}\n", 2, 15,
		  "metrics.listen: \"9379\": expected HOST:PORT (\"127.0.0.1:23790\", \"[::1]:23790\") "
		  "or unix:PATH" },
		{ "{\n  \"audit\": {\"max_size\": 100}\n}\n", 2, 13,
		  "audit.max_size: expected an integer from 4096 to 4294967295" },
		{ "{\n  \"audit\": {\"directory\": \"log\"}\n}\n", 2, 13,
		  "audit.directory: expected an absolute path, got a relative path" },
		{ "{\n  \"audit\": {\"rotate\": 1}\n}\n", 2, 13,
		  "unknown key \"rotate\" in audit (expected one of: directory, max_size, files, "
		  "default)" },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_global_wrong_types(void **state)
{
	static const struct gcase cases[] = {
		{ "[]", 1, 1, "expected a JSON object at the top level, got an array" },
		{ "\"config\"", 1, 1, "expected a JSON object at the top level, got a string" },
		{ "{\n  \"storages_dir\": 5\n}\n", 2, 3,
		  "storages_dir: expected an absolute path, got a number" },
		{ "{\"storages_dir\": null}", 1, 2,
		  "storages_dir: expected an absolute path, got null" },
		{ "{\"worker\": [\"/bin/w\"]}", 1, 2,
		  "worker: expected an absolute path, got an array" },
		{ "{\"core_etcd\": []}", 1, 2, "core_etcd: expected an object, got an array" },
		{ "{\"core_etcd\": {\"key_file\": false}}", 1, 16,
		  "core_etcd.key_file: expected an absolute path or null, got a boolean" },
		{ "{\"defaults\": \"etcd\"}", 1, 2, "defaults: expected an object, got a string" },
		{ "{\"defaults\": {\"backend\": \"\"}}", 1, 15,
		  "defaults.backend: expected a non-empty string, got an empty string" },
		{ "{\"defaults\": {\"backend\": 1}}", 1, 15,
		  "defaults.backend: expected a non-empty string, got a number" },
		{ "{\"supervisor\": true}", 1, 2, "supervisor: expected an object, got a boolean" },
		{ "{\"supervisor\": {\"max_failures\": \"3\"}}", 1, 17,
		  MSG_MAX_FAILURES },
		{ "{\"supervisor\": {\"max_failures\": 0}}", 1, 17,
		  MSG_MAX_FAILURES },
		{ "{\"supervisor\": {\"max_failures\": 1001}}", 1, 17,
		  MSG_MAX_FAILURES },
		{ "{\"supervisor\": {\"max_failures\": 2.5}}", 1, 17,
		  MSG_MAX_FAILURES },
		{ "{\"supervisor\": {\"max_failures\": -1}}", 1, 17,
		  MSG_MAX_FAILURES },
		{ "{\"backends\": []}", 1, 2, "backends: expected an object, got an array" },
		{ "{\"backends\": {\"etcd\": 1}}", 1, 15,
		  "backends.etcd: expected an object of options for the etcd backend" },
		{ "{\"log_level\": 6}", 1, 2,
		  MSG_LOG_LEVEL },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_global_relative_paths(void **state)
{
	static const struct gcase cases[] = {
		{ "{\"storages_dir\": \"storages.d\"}", 1, 2,
		  "storages_dir: expected an absolute path, got a relative path" },
		{ "{\"state_dir\": \"var/lib/etcdproxy\"}", 1, 2,
		  "state_dir: expected an absolute path, got a relative path" },
		{ "{\"runtime_dir\": \"./run\"}", 1, 2,
		  "runtime_dir: expected an absolute path, got a relative path" },
		{ "{\"plugin_dir\": \"lib\"}", 1, 2,
		  "plugin_dir: expected an absolute path, got a relative path" },
		{ "{\"worker\": \"etcdproxy-worker\"}", 1, 2,
		  "worker: expected an absolute path, got a relative path" },
		{ "{\"control_socket\": \"ctl.sock\"}", 1, 2,
		  "control_socket: expected an absolute path, got a relative path" },
		{ "{\"control_socket\": \"\"}", 1, 2,
		  "control_socket: expected an absolute path, got a relative path" },
		{ "{\"core_etcd\": {\"ca_file\": \"ca.crt\"}}", 1, 16,
		  "core_etcd.ca_file: expected an absolute path or null, got a relative path" },
		{ "{\"core_etcd\": {\"cert_file\": \"c.crt\", \"key_file\": \"/c.key\"}}", 1, 16,
		  "core_etcd.cert_file: expected an absolute path or null, got a relative path" },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_global_log_level(void **state)
{
	static const struct gcase cases[] = {
		{ "{\n  \"log_level\": \"verbose\"\n}\n", 2, 3,
		  MSG_LOG_LEVEL },
		{ "{\"log_level\": \"INFO\"}", 1, 2,
		  MSG_LOG_LEVEL },
		{ "{\"log_level\": \"\"}", 1, 2,
		  MSG_LOG_LEVEL },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_global_durations(void **state)
{
	static const struct gcase cases[] = {
		{ "{\"supervisor\": {\"stop_timeout\": \"10\"}}", 1, 17,
		  MSG_DURATION("supervisor.stop_timeout", "\"10\"") },
		{ "{\"supervisor\": {\"stop_timeout\": 10}}", 1, 17,
		  MSG_DURATION("supervisor.stop_timeout", "a number") },
		{ "{\"supervisor\": {\"stop_timeout\": \"0s\"}}", 1, 17,
		  "supervisor.stop_timeout: expected a duration above zero" },
		{ "{\"supervisor\": {\"restart_backoff_initial\": \"soon\"}}", 1, 17,
		  MSG_DURATION("supervisor.restart_backoff_initial", "\"soon\"") },
		{ "{\"supervisor\": {\"restart_backoff_max\": \"0\"}}", 1, 17,
		  "supervisor.restart_backoff_max: expected a duration above zero" },
		{ "{\"supervisor\": {\"stable_after\": \"1 hour\"}}", 1, 17,
		  MSG_DURATION("supervisor.stable_after", "\"1 hour\"") },
		{ "{\"defaults\": {\"signingCertificateValidity\": \"-1h\"}}", 1, 15,
		  MSG_DURATION("defaults.signingCertificateValidity", "\"-1h\"") },
		{ "{\"defaults\": {\"servingCertificateValidity\": \"1y\"}}", 1, 15,
		  MSG_DURATION("defaults.servingCertificateValidity", "\"1y\"") },
		{ "{\"defaults\": {\"clientCertificateValidity\": null}}", 1, 15,
		  MSG_DURATION("defaults.clientCertificateValidity", "null") },
		{ "{\"defaults\": {\"clientCertificateValidity\": \"0\"}}", 1, 15,
		  "defaults.clientCertificateValidity: expected a duration above zero" },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_global_backoff_order(void **state)
{
	static const struct gcase cases[] = {
		{ "{\n  \"supervisor\": {\n    \"restart_backoff_initial\": \"10s\",\n"
		  "    \"restart_backoff_max\": \"1s\"\n  }\n}\n",
		  2, 3, MSG_BACKOFF },
		/* below the default initial delay of 100ms */
		{ "{\"supervisor\": {\"restart_backoff_max\": \"50ms\"}}", 1, 2,
		  MSG_BACKOFF },
		/* above the default maximum of 30s */
		{ "{\"supervisor\": {\"restart_backoff_initial\": \"31s\"}}", 1, 2,
		  MSG_BACKOFF },
	};
	struct fixture *f = *state;
	struct ep_global_config *g;

	run_global_cases(f, cases, N_ELEMENTS(cases));

	/* equal is fine */
	g = global_ok(f, "{\"supervisor\": {\"restart_backoff_initial\": \"5s\", "
			 "\"restart_backoff_max\": \"5s\"}}");
	assert_int_equal(g->backoff_initial_ms, 5000);
	assert_int_equal(g->backoff_max_ms, 5000);
	ep_global_config_free(g);
}

static void test_global_cert_without_key(void **state)
{
	static const struct gcase cases[] = {
		{ "{\n  \"core_etcd\": {\n    \"cert_file\": \"/etc/c.crt\",\n"
		  "    \"key_file\": null\n  }\n}\n",
		  2, 3, MSG_CERT_KEY },
		{ "{\"core_etcd\": {\"cert_file\": null}}", 1, 2,
		  MSG_CERT_KEY },
		{ "{\"core_etcd\": {\"key_file\": null}}", 1, 2,
		  MSG_CERT_KEY },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_global_endpoints(void **state)
{
	static const struct gcase cases[] = {
		{ "{\"core_etcd\": {\"endpoints\": []}}", 1, 16,
		  "core_etcd.endpoints: expected a non-empty array of URLs" },
		{ "{\"core_etcd\": {\"endpoints\": \"https://127.0.0.1:2379\"}}", 1, 16,
		  "core_etcd.endpoints: expected a non-empty array of URLs" },
		{ "{\n  \"core_etcd\": {\n    \"endpoints\": [\n      \"https://127.0.0.1:2379\",\n"
		  "      \"127.0.0.2:2379\"\n    ]\n  }\n}\n",
		  5, 7,
		  MSG_URL },
		{ "{\"core_etcd\": {\"endpoints\": [\"http://localhost\"]}}", 1, 30,
		  MSG_URL },
		{ "{\"core_etcd\": {\"endpoints\": [\"ftp://127.0.0.1:21\"]}}", 1, 30,
		  MSG_URL },
		{ "{\"core_etcd\": {\"endpoints\": [2379]}}", 1, 30,
		  MSG_URL },
		{ "{\"core_etcd\": {\"endpoints\": [\"\"]}}", 1, 30,
		  MSG_URL },
	};

	run_global_cases(*state, cases, N_ELEMENTS(cases));
}

/* ---- tenant names and listen addresses ------------------------------------------------ */

/* ---- reserved prefixes -------------------------------------------------------------- */

static void test_prefix_overlaps(void **state UNUSED)
{
	static const struct {
		const char *a, *b;
		int overlaps;
	} cases[] = {
		{ "/registry/", "/registry/", 1 },          /* equal */
		{ "/registry/", "/registry/secrets/", 1 },  /* longer */
		{ "/registry/secrets/", "/registry/", 1 },  /* shorter */
		{ "/a/", "/b/", 0 },                        /* unrelated */
		{ "/a/", "/ab/", 0 },
		{ "/registry/", "/registry-x/", 0 },
		{ "/registry", "/registry/", 1 },           /* without the trailing slash: a byte prefix */
		{ "/registry", "/registry-x/", 1 },         /* ... of every name that starts so */
		{ "/registry", "/regis/", 0 },
		{ "", "/a/", 1 },                           /* empty: a prefix of everything */
		{ "/a/", "", 1 },
		{ "", "", 1 },
		{ "/caf\xc3\xa9/", "/caf\xc3\xa9/x", 1 }, /* non-ASCII: bytes, not characters */
		{ "/caf\xc3\xa9/", "/cafe/", 0 },
		{ "/caf\xc3", "/caf\xc3\xa9/", 1 },        /* half a UTF-8 sequence is a byte prefix */
		{ "/\xff/", "/\x7f/", 0 },
	};

	for (size_t i = 0; i < N_ELEMENTS(cases); i++) {
		int got = ep_prefix_overlaps(cases[i].a, cases[i].b);

		if (got != cases[i].overlaps)
			fail_msg("ep_prefix_overlaps(\"%s\", \"%s\") = %d, expected %d", cases[i].a,
				 cases[i].b, got, cases[i].overlaps);
		/* symmetric */
		assert_int_equal(ep_prefix_overlaps(cases[i].b, cases[i].a), cases[i].overlaps);
	}
}

static void test_global_reserved_prefixes(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g;
	char *why = NULL, *origin;

	/* a list of the operator's replaces the default; etcdproxy's own prefix stays */
	g = global_ok(f, "{\n  \"reserved_prefixes\": [\"/registry/\",\n    \"/team\"]\n}\n");
	assert_int_equal(g->n_reserved, 3);
	assert_string_equal(g->reserved[0].prefix, "/__etcdproxy/");
	assert_string_equal(g->reserved[1].prefix, "/registry/");
	assert_string_equal(g->reserved[2].prefix, "/team");
	origin = ep_strdup_printf("reserved_prefixes in %s:3:5", f->global_file);
	assert_string_equal(g->reserved[2].origin, origin);
	free(origin);
	assert_int_equal(ep_tenant_prefix_check(g, "team-a", "/team-a/", &why), -EPERM);
	origin = ep_strdup_printf("tenant \"team-a\" would have the key prefix \"/team-a/\", which "
				  "overlaps the reserved prefix \"/team\" (reserved_prefixes in "
				  "%s:3:5); no worker is started for it",
				  f->global_file);
	assert_string_equal(why, origin);
	free(origin);
	free(why);
	assert_int_equal(ep_tenant_prefix_check(g, "kubernetes.io", "/kubernetes.io/", &why), 0);
	assert_null(why);
	assert_int_equal(ep_tenant_prefix_check(g, "tea", "/tea/", &why), 0);
	assert_null(why);
	ep_global_config_free(g);

	/* an empty list reserves etcdproxy's own prefix only */
	g = global_ok(f, "{\"reserved_prefixes\": []}");
	assert_int_equal(g->n_reserved, 1);
	assert_int_equal(ep_tenant_prefix_check(g, "registry", "/registry/", &why), 0);
	assert_null(why);
	static const char *const own[] = { "/__etcdproxy/", "/__etcdproxy/leases/a/", "/__e", "/" };
	for (size_t i = 0; i < N_ELEMENTS(own); i++) {
		assert_int_equal(ep_tenant_prefix_check(g, "x", own[i], &why), -EPERM);
		assert_contains(why, "overlaps the reserved prefix \"/__etcdproxy/\" (always "
			       "reserved: etcdproxy's own records, whatever reserved_prefixes says)");
		free(why);
	}
	ep_global_config_free(g);

	static const struct {
		const char *text;
		unsigned line, col;
		const char *message;
	} bad[] = {
		{ "{\"reserved_prefixes\": \"/registry/\"}", 1, 2,
		  "reserved_prefixes: expected an array of key prefixes such as [\"/registry/\"], got "
		  "a string" },
		{ "{\"reserved_prefixes\": null}", 1, 2,
		  "reserved_prefixes: expected an array of key prefixes such as [\"/registry/\"], got "
		  "null" },
		{ "{\"reserved_prefixes\": [\"/a/\", \"\"]}", 1, 31,
		  "reserved_prefixes[1]: expected a key prefix starting with \"/\" (every tenant's "
		  "prefix does), got \"\"" },
		{ "{\"reserved_prefixes\": [\"registry/\"]}", 1, 24,
		  "reserved_prefixes[0]: expected a key prefix starting with \"/\" (every tenant's "
		  "prefix does), got \"registry/\"" },
		{ "{\"reserved_prefixes\": [\"/a/\", 5]}", 1, 31,
		  "reserved_prefixes[1]: expected a key prefix starting with \"/\" (every tenant's "
		  "prefix does), got a number" },
	};
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		global_fails(f, bad[i].text, bad[i].line, bad[i].col, bad[i].message);
}

static void test_tenant_reserved(void **state)
{
	struct fixture *f = *state;
	static const char *const refused[] = { "registry", "kubernetes.io", "openshift.io" };

	/* the default list, also with the fixture's own global file (no reserved_prefixes) */
	for (size_t i = 0; i < N_ELEMENTS(refused); i++) {
		char *meta = ep_strdup_printf("{\"name\": \"%s\"}", refused[i]);
		char *msg = ep_strdup_printf(
			"metadata.name: tenant \"%s\" would have the key prefix \"/%s/\", which "
			"overlaps the reserved prefix \"/%s/\" (the default of reserved_prefixes); "
			"no worker is started for it",
			refused[i], refused[i], refused[i]);
		struct tdoc d = { .metadata = meta };

		tenant_fails(f, &d, 4, 16, msg, refused[i]);
		/* whatever the backend, and before anything in the spec is judged */
		d.spec = "{\"backend\": \"other\", \"listen\": \"nowhere\"}";
		tenant_fails(f, &d, 4, 16, msg, refused[i]);
		free(msg);
		free(meta);
	}
	/* names that only look alike */
	static const char *const allowed[] = { "registry-x", "registry.example", "xregistry",
					       "kubernetes", "openshift.io.example", "io" };
	for (size_t i = 0; i < N_ELEMENTS(allowed); i++) {
		char *meta = ep_strdup_printf("{\"name\": \"%s\"}", allowed[i]);
		struct ep_tenant_config *t = tenant_ok(f, &(struct tdoc){ .metadata = meta });

		ep_tenant_config_free(t);
		free(meta);
	}

	/* an operator's list: "/team" without its slash takes every name that starts so */
	struct ep_global_config *g = global_ok(
		f, "{\"plugin_dir\": \"@P@\", \"state_dir\": \"@D@/state\",\n"
		   "  \"reserved_prefixes\": [\"/team\"]}");
	char *text = tenant_doc(&(struct tdoc){ .metadata = "{\"name\": \"team-a\"}" });
	char *msg = ep_strdup_printf("metadata.name: tenant \"team-a\" would have the key prefix "
				     "\"/team-a/\", which overlaps the reserved prefix \"/team\" "
				     "(reserved_prefixes in %s:2:25); no worker is started for it",
				     f->global_file);
	tenant_fails_text(f, g, text, 4, 16, msg, "team-a");
	free(msg);
	free(text);
	text = tenant_doc(&(struct tdoc){ .metadata = "{\"name\": \"registry\"}" });
	ep_tenant_config_free(tenant_ok_text(f, g, text));
	free(text);
	ep_global_config_free(g);
}

/* certs.ca.grace against a tenant's signing validity: refused at load, where --check-config sees it */
static void test_tenant_ca_grace(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g = global_ok(
		f, "{\"plugin_dir\": \"@P@\", \"state_dir\": \"@D@/state\",\n"
		   "  \"certs\": {\"ca\": {\"grace\": \"2h\"}}}");
	char *text, *msg;

	/* 6h: a third is left after the CA's renewal point, 2h, of which at most half for grace */
	text = tenant_doc(&(struct tdoc){
		.spec = "{\"listen\": \"127.0.0.1:1\", \"signingCertificateValidity\": \"6h\"}" });
	msg = ep_strdup_printf("spec.signingCertificateValidity: certs.ca.grace (7200000 ms) is too "
			       "long for a signingCertificateValidity of 21600000 ms: a new CA must "
			       "sign for a while before the old one expires (at most half of the "
			       "CA's last 33%%) (certs.ca in %s)", f->global_file);
	tenant_fails_text(f, g, text, 5, 37, msg, "a");
	free(msg);
	free(text);
	/* 12h leaves 4h, half of it 2h: fits */
	text = tenant_doc(&(struct tdoc){
		.spec = "{\"listen\": \"127.0.0.1:1\", \"signingCertificateValidity\": \"12h\"}" });
	ep_tenant_config_free(tenant_ok_text(f, g, text));
	free(text);
	/* the files source has no grace */
	msg = ep_strdup_printf("%s/certs-files.so", f->plugins);
	write_file(msg, "");
	free(msg);
	text = tenant_doc(&(struct tdoc){
		.spec = "{\"listen\": \"127.0.0.1:1\", \"signingCertificateValidity\": \"6h\", "
			"\"tls\": {\"source\": \"files\", \"files\": {\"certFile\": \"/c\", "
			"\"keyFile\": \"/k\", \"clientCAFile\": \"/a\"}}}" });
	ep_tenant_config_free(tenant_ok_text(f, g, text));
	free(text);
	ep_global_config_free(g);

	/* the default grace (10m) against a validity from the global defaults: points at spec */
	g = global_ok(f, "{\"plugin_dir\": \"@P@\", \"state_dir\": \"@D@/state\",\n"
			 "  \"defaults\": {\"signingCertificateValidity\": \"20m\"}}");
	text = tenant_doc(&(struct tdoc){ 0 });
	msg = ep_strdup_printf("certs.ca.grace (600000 ms) is too long for a "
			       "signingCertificateValidity of 1200000 ms: a new CA must sign for a "
			       "while before the old one expires (at most half of the CA's last 33%%) "
			       "(certs.ca in %s)", f->global_file);
	tenant_fails_text(f, g, text, 5, 3, msg, "a");
	free(msg);
	free(text);
	ep_global_config_free(g);
}

/* spec.listen ":PORT": bound on this node's kubernetes.node_address */
static void test_tenant_listen_port_only(void **state)
{
	struct fixture *f = *state;
	char *text = tenant_doc(&(struct tdoc){ .spec = "{\"listen\": \":23790\"}" });
	struct ep_global_config *g;
	struct ep_tenant_config *t;
	char *msg = ep_strdup_printf("spec.listen: \":23790\" gives only a port, which each node "
				     "binds on its own address: set kubernetes.node_address in %s",
				     f->global_file);

	tenant_fails_text(f, f->global, text, 5, 12, msg, "a");
	free(msg);
	g = global_ok(f, "{\"plugin_dir\": \"@P@\", \"state_dir\": \"@D@/state\",\n"
			 "  \"kubernetes\": {\"node_address\": \"127.0.0.2\"}}");
	t = tenant_ok_text(f, g, text);
	assert_string_equal(t->listen, "127.0.0.2:23790");
	ep_tenant_config_free(t);
	ep_global_config_free(g);
	g = global_ok(f, "{\"plugin_dir\": \"@P@\", \"state_dir\": \"@D@/state\",\n"
			 "  \"kubernetes\": {\"node_address\": \"::1\"}}");
	t = tenant_ok_text(f, g, text);
	assert_string_equal(t->listen, "[::1]:23790");
	ep_tenant_config_free(t);
	ep_global_config_free(g);
	free(text);
	global_fails(f, "{\"kubernetes\": {\"node_address\": \"node-1\"}}", 1, 17,
		     "kubernetes.node_address: expected an IP address, got \"node-1\"");
	global_fails(f, "{\"kubernetes\": {\"kubeconfig\": \"kube.conf\"}}", 1, 17,
		     "kubernetes.kubeconfig: expected the absolute path of a kubeconfig file or "
		     "\"in-cluster\" (the pod's service account), got a relative path");
	global_fails(f, "{\"kubernetes\": {\"lease_duration\": \"5s\"}}", 1, 2,
		     "kubernetes.renew_deadline (10000 ms) must be shorter than "
		     "kubernetes.lease_duration (5000 ms)");
}

static void test_tenant_name_valid(void **state UNUSED)
{
	static const char *const good[] = {
		"a", "0", "a0", "tenant-a", "a-b-c", "a.b", "a.b-c.d", "kube-system.etcd", "1.2.3",
		"a--b",
	};
	static const char *const bad[] = {
		"", "A", "Abc", "tenant_a", "-a", "a-", ".a", "a.", "a..b", "a.-b", "a-.b", "a b",
		"a/b", "a:b", "é", "a~",
	};
	char name[80];

	for (size_t i = 0; i < N_ELEMENTS(good); i++)
		if (!ep_tenant_name_valid(good[i]))
			fail_msg("\"%s\" refused, should be valid", good[i]);
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		if (ep_tenant_name_valid(bad[i]))
			fail_msg("\"%s\" accepted, should be invalid", bad[i]);

	memset(name, 'a', sizeof(name));
	name[EP_TENANT_NAME_MAX] = '\0';
	assert_int_equal(strlen(name), 59);
	assert_int_equal(ep_tenant_name_valid(name), 1);
	name[EP_TENANT_NAME_MAX] = 'a';
	name[EP_TENANT_NAME_MAX + 1] = '\0';
	assert_int_equal(strlen(name), 60);
	assert_int_equal(ep_tenant_name_valid(name), 0);
}

static void test_listen_validate(void **state UNUSED)
{
	static const char *const good[] = {
		"127.0.0.1:1",      "127.0.0.1:65535",  "127.1.2.3:23790",  "[::1]:2379",
		"localhost:80",     "unix:/abs",        "unix:/run/etcdproxy/a.sock",
	};
	static const struct {
		const char *listen;
		const char *why;
	} bad[] = {
		{ "10.0.0.1:1", MSG_LOOPBACK },
		{ "0.0.0.0:1", MSG_LOOPBACK },
		{ "[::]:1", MSG_LOOPBACK },
		{ "[2001:db8::1]:1", MSG_LOOPBACK },
		{ "host", MSG_HOSTPORT },
		{ ":2379", MSG_HOSTPORT },
		{ "127.0.0.1:0", MSG_PORT },
		{ "127.0.0.1:65536", MSG_PORT },
		{ "127.0.0.1:", MSG_PORT },
		{ "127.0.0.1:80x", MSG_PORT },
		{ "127.0.0.1:-1", MSG_PORT },
		{ "127.0.0.1:99999999999999999999", MSG_PORT },
		{ "::1:2379", "an IPv6 address goes in brackets: \"[::1]:23790\"" },
		{ "[::1:2379", "an IPv6 address goes in brackets: \"[::1]:23790\"" },
		{ "[]:2379", "an IPv6 address goes in brackets: \"[::1]:23790\"" },
		{ "example.com:80", "the host must be an IP address or \"localhost\"" },
		{ "127.0.0.256:80", "the host must be an IP address or \"localhost\"" },
		{ "unix:relative.sock", "a Unix socket needs an absolute path: "
					"\"unix:/run/etcdproxy/a.sock\"" },
		{ "unix:", "a Unix socket needs an absolute path: \"unix:/run/etcdproxy/a.sock\"" },
	};
	char path[200];
	const char *why;

	for (size_t i = 0; i < N_ELEMENTS(good); i++) {
		why = NULL;
		if (ep_listen_validate(good[i], 0, &why) != 0)
			fail_msg("\"%s\" refused (%s), should be valid", good[i], why);
	}
	for (size_t i = 0; i < N_ELEMENTS(bad); i++) {
		why = NULL;
		if (ep_listen_validate(bad[i].listen, 0, &why) != -EINVAL)
			fail_msg("\"%s\" accepted, should be invalid", bad[i].listen);
		if (why == NULL || strcmp(why, bad[i].why) != 0)
			fail_msg("\"%s\": why is \"%s\", expected \"%s\"", bad[i].listen,
				 why ? why : "(null)", bad[i].why);
	}

	/* a Unix socket path of 107 bytes fits sun_path, 108 does not */
	memset(path, 'u', sizeof(path));
	memcpy(path, "unix:/", 6);
	path[5 + 107] = '\0';
	assert_int_equal(ep_listen_validate(path, 0, &why), 0);
	path[5 + 107] = 'u';
	path[5 + 108] = '\0';
	assert_int_equal(ep_listen_validate(path, 0, &why), -EINVAL);
	assert_string_equal(why, "the Unix socket path is longer than 107 bytes");

	/* a host too long for any address */
	memset(path, '1', sizeof(path));
	memcpy(path + 100, ":80", 4);
	assert_int_equal(ep_listen_validate(path, 0, &why), -EINVAL);
	assert_string_equal(why, "the host is too long");
}

/* The one parser every backend and the supervisor use (lib/util.c). */
static void test_listen_parse(void **state UNUSED)
{
	struct ep_listen_addr a;
	const char *why = NULL;
	char addr[INET6_ADDRSTRLEN];

	assert_int_equal(ep_listen_parse("127.0.0.1:23790", &a, &why), 0);
	assert_int_equal(a.family, AF_INET);
	assert_int_equal(a.port, 23790);
	assert_int_equal(ntohs(((struct sockaddr_in *)&a.sa)->sin_port), 23790);
	assert_int_equal(a.sa_len, sizeof(struct sockaddr_in));
	assert_true(ep_listen_is_local(&a));

	assert_int_equal(ep_listen_parse("localhost:80", &a, &why), 0);
	assert_string_equal(a.host, "localhost");
	assert_int_equal(a.family, AF_INET);
	inet_ntop(AF_INET, &((struct sockaddr_in *)&a.sa)->sin_addr, addr, sizeof(addr));
	assert_string_equal(addr, "127.0.0.1");

	assert_int_equal(ep_listen_parse("[::1]:2379", &a, &why), 0);
	assert_int_equal(a.family, AF_INET6);
	assert_string_equal(a.host, "::1");
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&a.sa)->sin6_port), 2379);
	assert_true(ep_listen_is_local(&a));

	assert_int_equal(ep_listen_parse("[2001:db8::1]:443", &a, &why), 0);
	assert_false(ep_listen_is_local(&a));
	assert_int_equal(ep_listen_parse("0.0.0.0:443", &a, &why), 0);
	assert_false(ep_listen_is_local(&a));

	assert_int_equal(ep_listen_parse("unix:/run/x.sock", &a, &why), 0);
	assert_int_equal(a.family, AF_UNIX);
	assert_string_equal(a.path, "/run/x.sock");
	assert_string_equal(((struct sockaddr_un *)&a.sa)->sun_path, "/run/x.sock");
	assert_true(ep_listen_is_local(&a));

	assert_int_equal(ep_listen_parse("[127.0.0.1]:80", &a, &why), -EINVAL);
	assert_string_equal(why, "only an IPv6 address goes in brackets: \"[::1]:23790\"");
	assert_int_equal(ep_listen_parse("127.0.0.1:+80", &a, &why), -EINVAL);
	assert_string_equal(why, MSG_PORT);
}

/* A Unix socket path: a stale socket is replaced, anything else is left alone and refused. */
static void test_listen_unix(void **state)
{
	struct fixture *f = *state;
	char *path = ep_strdup_printf("%s/s.sock", f->dir);
	char *listen = ep_strdup_printf("unix:%s", path);
	char *error = NULL;
	struct stat st;
	int fd;

	/* nothing there: bound */
	assert_int_equal(ep_listen_bind(listen, &fd, &error), 0);
	close(fd); /* the socket file stays, as after a kill -9 */
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	/* a stale socket: replaced */
	assert_int_equal(ep_listen_bind(listen, &fd, &error), 0);
	close(fd);
	unlink(path);
	/* a regular file: refused and kept */
	write_file(path, "precious");
	assert_int_equal(ep_listen_bind(listen, &fd, &error), -EEXIST);
	char *want = ep_strdup_printf("cannot listen on %s: the path exists and is not a socket; "
				      "remove it or choose another", listen);
	assert_string_equal(error, want);
	free(want);
	free(error);
	error = NULL;
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	/* a directory too */
	unlink(path);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(ep_listen_bind(listen, &fd, &error), -EEXIST);
	free(error);
	rmdir(path);
	/* an address that does not parse says why */
	assert_int_equal(ep_listen_bind("127.0.0.1:0", &fd, &error), -EINVAL);
	assert_string_equal(error, "cannot listen on 127.0.0.1:0: " MSG_PORT);
	free(error);
	free(listen);
	free(path);
}

/* ---- tenants ------------------------------------------------------------------------ */

static void test_tenant_minimal(void **state)
{
	struct fixture *f = *state;
	struct tdoc d = { 0 };
	struct ep_tenant_config *t = tenant_ok(f, &d);

	assert_string_equal(t->file, f->tenant_file);
	assert_string_equal(t->name, "a");
	assert_string_equal(t->prefix, "/a/");
	assert_string_equal(t->backend, "etcd");
	assert_string_equal(t->listen, "127.0.0.1:23790");
	/* the global defaults of the fixture */
	assert_int_equal(t->signing_validity_ms, 100 * HOUR_MS);
	assert_int_equal(t->serving_validity_ms, 200 * HOUR_MS);
	assert_int_equal(t->client_validity_ms, 30 * 60 * 1000);
	assert_int_equal(t->n_ca_cert_config_maps, 0);
	assert_int_equal(t->n_client_cert_secrets, 0);
	ep_tenant_config_free(t);
	ep_tenant_config_free(NULL);
}

static void test_tenant_builtin_defaults(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g = global_ok(f, "{\"plugin_dir\": \"@P@\"}");
	struct tdoc d = { 0 };
	char *text = tenant_doc(&d);
	struct ep_tenant_config *t = tenant_ok_text(f, g, text);

	assert_int_equal(t->signing_validity_ms, 8760 * HOUR_MS);
	assert_int_equal(t->serving_validity_ms, 8760 * HOUR_MS);
	assert_int_equal(t->client_validity_ms, 8760 * HOUR_MS);
	assert_string_equal(t->backend, "etcd");
	ep_tenant_config_free(t);
	free(text);
	ep_global_config_free(g);

	/* defaults.backend picks the plugin when spec.backend is absent */
	g = global_ok(f, "{\"plugin_dir\": \"@P@\", \"defaults\": {\"backend\": \"other\"}}");
	d.spec = "{\"listen\": \"unix:/run/etcdproxy/a.sock\"}";
	text = tenant_doc(&d);
	t = tenant_ok_text(f, g, text);
	assert_string_equal(t->backend, "other");
	assert_string_equal(t->listen, "unix:/run/etcdproxy/a.sock");
	ep_tenant_config_free(t);
	free(text);
	ep_global_config_free(g);
}

static void test_tenant_full(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_config *t = tenant_ok_text(
		f, f->global,
		"// as kubectl get etcdstorage -o json prints it\n"
		"{\n"
		"  \"apiVersion\": \"" EP_API_VERSION "\",\n"
		"  \"kind\": \"" EP_KIND "\",\n"
		"  \"metadata\": {\n"
		"    \"name\": \"team-a.prod\",\n"
		"    \"uid\": \"6c1b1d3e-0000-4000-8000-000000000000\",\n"
		"    \"resourceVersion\": \"42\",\n"
		"    \"labels\": {\"team\": \"a\"},\n"
		"    \"annotations\": {\"x\": \"y\"}\n"
		"  },\n"
		"  \"spec\": {\n"
		"    \"caCertConfigMap\": [\n"
		"      {\"name\": \"ca\", \"namespace\": \"kube-system\"},\n"
		"      {\"namespace\": \"team-a\", \"name\": \"ca2\"}\n"
		"    ],\n"
		"    \"clientCertSecret\": [{\"name\": \"client\", \"namespace\": \"team-a\"}],\n"
		"    \"signingCertificateValidity\": \"730h\",\n"
		"    \"servingCertificateValidity\": \"1h30m\",\n"
		"    \"clientCertificateValidity\": \"500ms\",\n"
		"    \"backend\": \"other\",\n"
		"    \"listen\": \"[::1]:2379\"\n"
		"  },\n"
		"  \"status\": {\"conditions\": [{\"type\": \"Ready\"}]}\n"
		"}\n");

	assert_string_equal(t->name, "team-a.prod");
	assert_string_equal(t->prefix, "/team-a.prod/");
	assert_string_equal(t->backend, "other");
	assert_string_equal(t->listen, "[::1]:2379");
	assert_int_equal(t->signing_validity_ms, 2628000000ull);
	assert_int_equal(t->serving_validity_ms, 5400000);
	assert_int_equal(t->client_validity_ms, 500);
	assert_int_equal(t->n_ca_cert_config_maps, 2);
	assert_string_equal(t->ca_cert_config_maps[0].name, "ca");
	assert_string_equal(t->ca_cert_config_maps[0].namespace, "kube-system");
	assert_string_equal(t->ca_cert_config_maps[1].name, "ca2");
	assert_string_equal(t->ca_cert_config_maps[1].namespace, "team-a");
	assert_int_equal(t->n_client_cert_secrets, 1);
	assert_string_equal(t->client_cert_secrets[0].name, "client");
	assert_string_equal(t->client_cert_secrets[0].namespace, "team-a");
	ep_tenant_config_free(t);
}

static void test_tenant_valid_variants(void **state)
{
	static const struct tdoc docs[] = {
		{ .metadata = "{\"name\": \"a.b-c.d\"}" },
		{ .metadata = "{\"name\": \"0\"}" },
		{ .spec = "{\"listen\": \"localhost:80\"}" },
		{ .spec = "{\"listen\": \"127.0.0.1:1\"}" },
		{ .spec = "{\"listen\": \"[::1]:2379\"}" },
		{ .spec = "{\"listen\": \"unix:/abs\", \"backend\": \"other\"}" },
		{ .spec = "{\"listen\": \"127.0.0.1:1\", \"caCertConfigMap\": [], "
			  "\"clientCertSecret\": []}" },
		{ .metadata = "{\"name\": \"a\", \"uid\": \"u\", \"labels\": {\"k\": \"v\"}, "
			      "\"namespace\": \"default\", \"generation\": 3}" },
	};
	struct fixture *f = *state;

	for (size_t i = 0; i < N_ELEMENTS(docs); i++) {
		struct ep_tenant_config *t = tenant_ok(f, &docs[i]);

		ep_tenant_config_free(t);
	}

	/* 59 characters is the longest name */
	char meta[100];
	struct tdoc d = { .metadata = meta };
	snprintf(meta, sizeof(meta), "{\"name\": \"%.59s\"}",
		 "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz");
	struct ep_tenant_config *t = tenant_ok(f, &d);
	assert_int_equal(strlen(t->name), 59);
	ep_tenant_config_free(t);
}

struct tcase {
	struct tdoc doc;
	unsigned line, col;
	const char *message;
	const char *name_r; /* NULL: *name_r stays NULL */
};

static void run_tenant_cases(struct fixture *f, const struct tcase *cases, size_t n)
{
	for (size_t i = 0; i < n; i++)
		tenant_fails(f, &cases[i].doc, cases[i].line, cases[i].col, cases[i].message,
			     cases[i].name_r);
}

static void test_tenant_header_errors(void **state)
{
	static const struct tcase cases[] = {
		{ { .api = "\"v1\"" }, 2, 3,
		  "apiVersion: expected \"" EP_API_VERSION "\", got \"v1\"", "a" },
		{ { .api = "\"etcd.xmudrii.com/v1\"" }, 2, 3,
		  "apiVersion: expected \"" EP_API_VERSION "\", got \"etcd.xmudrii.com/v1\"", "a" },
		{ { .api = "1" }, 2, 3, "apiVersion: expected \"" EP_API_VERSION "\"", "a" },
		{ { .api = OMIT }, 1, 1, "apiVersion: expected \"" EP_API_VERSION "\"", "a" },
		{ { .kind = "\"Pod\"" }, 3, 3, "kind: expected \"" EP_KIND "\"", "a" },
		{ { .kind = "\"etcdstorage\"" }, 3, 3, "kind: expected \"" EP_KIND "\"", "a" },
		{ { .kind = OMIT }, 1, 1, "kind: expected \"" EP_KIND "\"", "a" },
		{ { .metadata = OMIT }, 1, 1, "metadata.name is required", NULL },
		{ { .metadata = "{\"namespace\": \"default\"}" }, 4, 3, "metadata.name is required",
		  NULL },
		{ { .metadata = "\"a\"" }, 4, 3, "metadata: expected an object, got a string",
		  NULL },
		{ { .spec = OMIT }, 1, 1, "spec is required (at least spec.listen)", "a" },
		{ { .spec = "[]" }, 5, 3, "spec: expected an object, got an array", "a" },
		{ { .spec = "{}" }, 5, 3,
		  "spec.listen is required: the address this tenant is served on "
		  "(\"127.0.0.1:23790\", \":23790\" for every node's kubernetes.node_address, "
		  "or in a tenant file \"unix:/run/etcdproxy/a.sock\")",
		  "a" },
	};
	struct fixture *f = *state;

	run_tenant_cases(f, cases, N_ELEMENTS(cases));

	/* not an object at all, and an unknown top-level key */
	tenant_fails_text(f, f->global, "[]", 1, 1, "expected an EtcdStorage object, got an array",
			  NULL);
	tenant_fails_text(f, f->global,
			  "{\n  \"apiVersion\": \"" EP_API_VERSION "\",\n  \"kind\": \"" EP_KIND
			  "\",\n  \"metadata\": {\"name\": \"a\"},\n  \"spec\": {\"listen\": "
			  "\"127.0.0.1:1\"},\n  \"Spec\": {}\n}\n",
			  6, 3,
			  "unknown key \"Spec\" (expected one of: apiVersion, kind, metadata, "
			  "spec, status)",
			  NULL);
}

static void test_tenant_file_errors(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_config *t = (struct ep_tenant_config *)f;
	char *name = (char *)"x", *error = NULL;
	char *missing = ep_strdup_printf("%s/none.json", f->dir);

	assert_int_equal(ep_tenant_config_load(missing, f->global, &t, &name, &error), -EINVAL);
	assert_null(t);
	assert_null(name);
	assert_error(error, missing, 0, 0, "No such file or directory");
	free(error);
	free(missing);

	write_file(f->tenant_file, "{\"metadata\": {\"name\": \"a\"},}");
	t = (struct ep_tenant_config *)f;
	name = (char *)"x";
	assert_int_equal(ep_tenant_config_load(f->tenant_file, f->global, &t, &name, &error),
			 -EINVAL);
	assert_null(t);
	assert_null(name);
	char *prefix = ep_strdup_printf("%s:1:", f->tenant_file);
	if (strncmp(error, prefix, strlen(prefix)) != 0)
		fail_msg("\"%s\" does not start with \"%s\"", error, prefix);
	free(prefix);
	free(error);
}

#define NAME60 "abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghij"

static void test_tenant_names(void **state)
{
	static const char msg[] =
		"metadata.name: expected a lower-case DNS-1123 name of at most 59 characters (a-z, "
		"0-9, '-' and '.', starting and ending with a letter or digit)";
	static const struct tcase cases[] = {
		{ { .metadata = "{\"name\": \"Abc\"}" }, 4, 16, msg, "Abc" },
		{ { .metadata = "{\"name\": \"-a\"}" }, 4, 16, msg, "-a" },
		{ { .metadata = "{\"name\": \"a..b\"}" }, 4, 16, msg, "a..b" },
		{ { .metadata = "{\"name\": \"a.\"}" }, 4, 16, msg, "a." },
		{ { .metadata = "{\"name\": \"a_b\"}" }, 4, 16, msg, "a_b" },
		{ { .metadata = "{\"name\": \"\"}" }, 4, 16, msg, "" },
		{ { .metadata = "{\"name\": 5}" }, 4, 16, msg, NULL },
		{ { .metadata = "{\"name\": null}" }, 4, 16, msg, NULL },
		/* 60 characters */
		{ { .metadata = "{\"name\": \"" NAME60 "\"}" }, 4, 16, msg, NAME60 },
		/* the name is checked before the spec */
		{ { .metadata = "{\"uid\": \"x\", \"name\": \"A\"}", .spec = OMIT }, 4, 28, msg,
		  "A" },
	};

	run_tenant_cases(*state, cases, N_ELEMENTS(cases));
}

static void test_tenant_listen(void **state)
{
	static const struct tcase cases[] = {
		{ { .spec = "{\"listen\": \"10.0.0.1:1\", \"tls\": {\"enabled\": false}}" }, 5, 44,
		  "spec.tls.enabled: false: \"10.0.0.1:1\": " MSG_LOOPBACK, "a" },
		{ { .spec = "{\"listen\": \"host\"}" }, 5, 12,
		  "spec.listen: \"host\": " MSG_HOSTPORT, "a" },
		{ { .spec = "{\"listen\": \"127.0.0.1:0\"}" }, 5, 12,
		  "spec.listen: \"127.0.0.1:0\": " MSG_PORT, "a" },
		{ { .spec = "{\"listen\": \"127.0.0.1:65536\"}" }, 5, 12,
		  "spec.listen: \"127.0.0.1:65536\": " MSG_PORT, "a" },
		{ { .spec = "{\"listen\": \"unix:relative.sock\", \"backend\": \"other\"}" }, 5, 12,
		  "spec.listen: \"unix:relative.sock\": a Unix socket needs an absolute path: "
		  "\"unix:/run/etcdproxy/a.sock\"",
		  "a" },
		{ { .spec = "{\"listen\": 23790}" }, 5, 12,
		  "spec.listen: expected a non-empty string, got a number", "a" },
		{ { .spec = "{\"listen\": \"\"}" }, 5, 12,
		  "spec.listen: expected a non-empty string, got an empty string", "a" },
		/* the etcd backend (grpc-proxy) cannot listen on a Unix socket */
		{ { .spec = "{\"listen\": \"unix:/run/a.sock\"}" }, 5, 12, MSG_ETCD_UNIX, "a" },
		{ { .spec = "{\"backend\": \"etcd\", \"listen\": \"unix:/run/a.sock\"}" }, 5, 31,
		  MSG_ETCD_UNIX, "a" },
	};
	struct fixture *f = *state;
	char spec[300], msg[400], path[120];
	struct tdoc d = { .spec = spec };

	run_tenant_cases(f, cases, N_ELEMENTS(cases));

	static const char *const refused[] = { "0.0.0.0:1", "[::]:1", "192.168.1.1:2379" };
	for (size_t i = 0; i < N_ELEMENTS(refused); i++) {
		snprintf(spec, sizeof(spec), "{\"listen\": \"%s\", \"tls\": {\"enabled\": false}}",
			 refused[i]);
		snprintf(msg, sizeof(msg), "spec.tls.enabled: false: \"%s\": %s", refused[i],
			 MSG_LOOPBACK);
		tenant_fails(f, &d, 5, (unsigned)(11 + strstr(spec, "\"enabled\"") - spec), msg, "a");
		/* with TLS (the default) any address will do */
		snprintf(spec, sizeof(spec), "{\"listen\": \"%s\"}", refused[i]);
		ep_tenant_config_free(tenant_ok(f, &d));
	}

	/* a Unix socket path above 107 bytes */
	memset(path, 's', sizeof(path));
	path[0] = '/';
	path[108] = '\0';
	snprintf(spec, sizeof(spec), "{\"listen\": \"unix:%s\", \"backend\": \"other\"}", path);
	snprintf(msg, sizeof(msg),
		 "spec.listen: \"unix:%s\": the Unix socket path is longer than 107 bytes", path);
	tenant_fails(f, &d, 5, 12, msg, "a");
}

static void test_tenant_backend(void **state)
{
	static const struct tcase cases[] = {
		{ { .spec = L1 "\"backend\": \"nope\"}" }, 5, 37,
		  "spec.backend: \"nope\": no plugin @P@/backend-nope.so (No such file or "
		  "directory)",
		  "a" },
		{ { .spec = L1 "\"backend\": \"Bad\"}" }, 5, 37,
		  "spec.backend: \"Bad\" " MSG_PLUGIN_NAME, "a" },
		{ { .spec = L1 "\"backend\": \"../etcd\"}" }, 5, 37,
		  "spec.backend: \"../etcd\" " MSG_PLUGIN_NAME, "a" },
		{ { .spec = L1 "\"backend\": \"\"}" }, 5, 37,
		  "spec.backend: expected a non-empty string, got an empty string", "a" },
		{ { .spec = L1 "\"backend\": \"dir\"}" }, 5, 37,
		  "spec.backend: \"dir\": no plugin @P@/backend-dir.so (not a regular file)", "a" },
	};
	struct fixture *f = *state;
	char *p = ep_strdup_printf("%s/backend-dir.so", f->plugins);

	assert_int_equal(mkdir(p, 0700), 0);
	free(p);
	run_tenant_cases(f, cases, N_ELEMENTS(cases));

	/* the default backend's plugin is missing: the error points at spec */
	struct ep_global_config *g =
		global_ok(f, "{\"plugin_dir\": \"@P@\", \"defaults\": {\"backend\": \"ghost\"}}");
	struct tdoc d = { 0 };
	char *text = tenant_doc(&d);
	tenant_fails_text(f, g, text, 5, 3,
			  "spec.backend: \"ghost\": no plugin @P@/backend-ghost.so (No such file "
			  "or directory)",
			  "a");
	free(text);
	ep_global_config_free(g);
}

static void test_tenant_spec_errors(void **state)
{
	static const struct tcase cases[] = {
		{ { .spec = L1 "\"replicas\": 3}" }, 5, 37,
		  "unknown key \"replicas\" in spec (expected one of: caCertConfigMap, "
		  "clientCertSecret, signingCertificateValidity, servingCertificateValidity, "
		  "clientCertificateValidity, backend, listen, policy, tls, audit, rateLimit, quota, "
		  "deletionPolicy, external)",
		  "a" },
		{ { .spec = L1 "\"policy\": []}" }, 5, 37,
		  "spec.policy: expected an object, got an array", "a" },
		{ { .spec = L1 "\"policy\": {\"compaction\": \"sometimes\"}}" }, 5, 48,
		  "spec.policy.compaction: expected \"ignore\" (answer success, leave compaction "
		  "to the cluster), \"allow\" or \"deny\"",
		  "a" },
		{ { .spec = L1 "\"policy\": {\"snapshots\": \"allow\"}}" }, 5, 48,
		  "unknown key \"snapshots\" in spec.policy (expected one of: compaction)", "a" },
		/* the etcd backend passes Compact through: a policy there would be a false promise */
		{ { .spec = L1 "\"policy\": {\"compaction\": \"deny\"}}" }, 5, 37,
		  "spec.policy: enforced by the native backend only; the etcd backend (etcd "
		  "grpc-proxy) passes Compact to the core etcd",
		  "a" },
		{ { .spec = L1 "\"signingCertificateValidity\": \"1y\"}" }, 5, 37,
		  MSG_DURATION("spec.signingCertificateValidity", "\"1y\""), "a" },
		/* the etcd backend does not see the calls: an audit log there would be empty */
		{ { .spec = L1 "\"audit\": true}" }, 5, 37,
		  "spec.audit: written by the native backend only; the etcd backend (etcd "
		  "grpc-proxy) does not see the calls' contents",
		  "a" },
		{ { .spec = L1 "\"audit\": \"yes\"}" }, 5, 37, "spec.audit: expected true or false",
		  "a" },
		/* the etcd backend passes writes through unseen: a quota there would be a false promise */
		{ { .spec = L1 "\"quota\": {\"maxKeys\": 10}}" }, 5, 37,
		  "spec.quota: enforced by the native backend only; the etcd backend (etcd "
		  "grpc-proxy) passes every write through",
		  "a" },
		{ { .spec = L1 "\"rateLimit\": {\"bytesPerSecond\": \"1MB\"}}" }, 5, 51,
		  "spec.rateLimit.bytesPerSecond: expected a size above zero in bytes, as an integer "
		  "or a quantity such as \"512Mi\", \"2Gi\" or \"100M\", got \"1MB\"",
		  "a" },
		{ { .spec = L1 "\"rateLimit\": {\"burst\": 5}}" }, 5, 37,
		  "spec.rateLimit: expected requestsPerSecond, bytesPerSecond or maxWatches", "a" },
		/* spec.external belongs to the external backend, which enforces nothing */
		{ { .spec = L1 "\"external\": {\"check\": \"grpc\"}}" }, 5, 37,
		  "spec.external: belongs to the external backend (spec.backend: \"external\"), not "
		  "to \"etcd\"",
		  "a" },
		{ { .spec = L1 "\"backend\": \"external\", \"quota\": {\"maxKeys\": 1}}" }, 5, 60,
		  "spec.quota: enforced by the native backend only; the external backend carries "
		  "none of the tenant's traffic",
		  "a" },
		{ { .spec = L1 "\"backend\": \"external\", \"external\": {\"check\": \"tcp\"}}" }, 5,
		  73,
		  "spec.external.check: expected \"grpc\" (a Range through the proxy, the default) or "
		  "\"http\" (GET healthURL, as etcd's /health)",
		  "a" },
		{ { .spec = L1 "\"backend\": \"external\", \"external\": {\"check\": \"http\"}}" }, 5,
		  60, "spec.external: check \"http\" needs healthURL", "a" },
		{ { .spec = L1 "\"deletionPolicy\": \"Delete\"}" }, 5, 37,
		  "spec.deletionPolicy: expected \"Retain\" (keep the keys when the tenant goes, the "
		  "default) or \"Purge\" (delete them after supervisor.purge_delay)",
		  "a" },
		{ { .spec = L1 "\"quota\": {}}" }, 5, 37,
		  "spec.quota: expected maxKeys, maxBytes or maxLeases", "a" },
		{ { .spec = L1 "\"quota\": {\"maxKeys\": 0}}" }, 5, 47,
		  "spec.quota.maxKeys: expected an integer from 1 to 4000000000", "a" },
		{ { .spec = L1 "\"quota\": {\"maxBytes\": \"1.5Gi\"}}" }, 5, 47,
		  "spec.quota.maxBytes: expected a size above zero in bytes, as an integer or a "
		  "quantity such as \"512Mi\", \"2Gi\" or \"100M\", got \"1.5Gi\"",
		  "a" },
		{ { .spec = L1 "\"quota\": {\"maxBytes\": -1}}" }, 5, 47,
		  "spec.quota.maxBytes: expected a size above zero in bytes, as an integer or a "
		  "quantity such as \"512Mi\", \"2Gi\" or \"100M\", got a number",
		  "a" },
		{ { .spec = L1 "\"quota\": {\"maxObjects\": 3}}" }, 5, 47,
		  "unknown key \"maxObjects\" in spec.quota (expected one of: maxKeys, maxBytes, "
		  "maxLeases)",
		  "a" },
		{ { .spec = L1 "\"servingCertificateValidity\": 730}" }, 5, 37,
		  MSG_DURATION("spec.servingCertificateValidity", "a number"), "a" },
		{ { .spec = L1 "\"clientCertificateValidity\": \"0s\"}" }, 5, 37,
		  "spec.clientCertificateValidity: expected a duration above zero", "a" },
		{ { .spec = L1 "\"caCertConfigMap\": [{\"name\": \"ca\"}]}" }, 5, 57,
		  MSG_BOTH("caCertConfigMap"), "a" },
		{ { .spec = L1 "\"caCertConfigMap\": [{\"namespace\": \"n\"}]}" }, 5, 57,
		  MSG_BOTH("caCertConfigMap"), "a" },
		{ { .spec = L1 "\"clientCertSecret\": \"x\"}" }, 5, 37,
		  "spec.clientCertSecret: expected an array of {\"name\", \"namespace\"}", "a" },
		{ { .spec = L1 "\"clientCertSecret\": [1]}" }, 5, 58,
		  "spec.clientCertSecret: expected an object {\"name\", \"namespace\"}", "a" },
		{ { .spec = L1 "\"caCertConfigMap\": [{\"name\": \"ca\", \"namespace\": \"ns\", "
			       "\"kind\": \"x\"}]}" },
		  5, 91,
		  "unknown key \"kind\" in spec.caCertConfigMap[] (expected one of: name, namespace)",
		  "a" },
		{ { .spec = L1 "\"caCertConfigMap\": [{\"name\": \"\", \"namespace\": \"ns\"}]}" },
		  5, 58, "spec.caCertConfigMap[].name: expected a non-empty string, got an empty string",
		  "a" },
		/* a later entry is checked as well as the first */
		{ { .spec = L1 "\"clientCertSecret\": [{\"name\": \"c\", \"namespace\": \"n\"}, "
			       "{\"name\": \"d\"}]}" },
		  5, 91, MSG_BOTH("clientCertSecret"), "a" },
	};

	run_tenant_cases(*state, cases, N_ELEMENTS(cases));
}

/* spec.tls: TLS towards the tenant's clients */
static void test_tenant_tls(void **state)
{
	static const struct tcase cases[] = {
		{ { .spec = L1 "\"tls\": []}" }, 5, 37, "spec.tls: expected an object, got an array", "a" },
		{ { .spec = L1 "\"tls\": {\"enabled\": \"yes\"}}" }, 5, 45,
		  "spec.tls.enabled: expected true or false", "a" },
		{ { .spec = L1 "\"tls\": {\"source\": \"vault\"}}" }, 5, 45,
		  "spec.tls.source: expected \"ca\" (a built-in CA per tenant) or \"files\" (PEM "
		  "files kept by the operator)", "a" },
		{ { .spec = L1 "\"tls\": {\"sauce\": 1}}" }, 5, 45,
		  "unknown key \"sauce\" in spec.tls (expected one of: enabled, source, serverNames, "
		  "clientCertificates, files)", "a" },
		{ { .spec = L1 "\"tls\": {\"serverNames\": [\"ok.example\", \"bad name\"]}}" }, 5, 75,
		  "spec.tls.serverNames: expected a DNS name (\"etcd.example.com\", "
		  "\"*.example.com\") or an IP address", "a" },
		{ { .spec = L1 "\"tls\": {\"serverNames\": [\"-x.example\"]}}" }, 5, 61,
		  "spec.tls.serverNames: expected a DNS name (\"etcd.example.com\", "
		  "\"*.example.com\") or an IP address", "a" },
		{ { .spec = L1 "\"tls\": {\"clientCertificates\": {}}}" }, 5, 45,
		  "spec.tls.clientCertificates: expected an array of {\"name\", \"outputDir\"}", "a" },
		{ { .spec = L1 "\"tls\": {\"clientCertificates\": [{\"name\": \"x\"}]}}" }, 5, 68,
		  "spec.tls.clientCertificates: every entry needs both \"name\" and \"outputDir\"",
		  "a" },
		{ { .spec = L1 "\"tls\": {\"clientCertificates\": [{\"name\": \"x\", \"outputDir\": "
			       "\"rel\"}]}}" }, 5, 82,
		  "spec.tls.clientCertificates[].outputDir: expected an absolute path, got a relative "
		  "path", "a" },
		{ { .spec = L1 "\"tls\": {\"clientCertificates\": [{\"name\": \"a b\", \"outputDir\": "
			       "\"/o\"}]}}" }, 5, 69,
		  "spec.tls.clientCertificates[].name: \"a b\": expected 1 to 64 letters, digits, "
		  "'-', '_', '.', ':' or '@' (it becomes the certificate's common name)", "a" },
		{ { .spec = L1 "\"tls\": {\"clientCertificates\": [{\"name\": \"x\", \"outputDir\": "
			       "\"/o\"}, {\"name\": \"x\", \"outputDir\": \"/p\"}]}}" }, 5, 102,
		  "spec.tls.clientCertificates: the name \"x\" appears twice", "a" },
		{ { .spec = L1 "\"tls\": {\"clientCertificates\": [{\"name\": \"x\", \"outputDir\": "
			       "\"/o\"}, {\"name\": \"y\", \"outputDir\": \"/o\"}]}}" }, 5, 102,
		  "spec.tls.clientCertificates: the outputDir \"/o\" appears twice", "a" },
		{ { .spec = L1 "\"tls\": {\"source\": \"files\"}}" }, 5, 37,
		  "spec.tls.source \"files\" needs spec.tls.files {\"certFile\", \"keyFile\", "
		  "\"clientCAFile\"}", "a" },
		{ { .spec = L1 "\"tls\": {\"source\": \"files\", \"files\": {\"certFile\": \"/c\"}}}" },
		  5, 64, "spec.tls.files: certFile, keyFile and clientCAFile are required (caFile, "
		  "the bundle clients verify the proxy with, is optional)", "a" },
		{ { .spec = L1 "\"tls\": {\"files\": {\"certFile\": \"/c\", \"keyFile\": \"/k\", "
			       "\"clientCAFile\": \"/ca\"}}}" }, 5, 45,
		  "spec.tls.files: only used with spec.tls.source \"files\"; the source is \"ca\"",
		  "a" },
		{ { .spec = L1 "\"tls\": {\"source\": \"files\", \"files\": {\"certFile\": \"/c\", "
			       "\"keyFile\": \"/k\", \"clientCAFile\": \"/ca\"}, \"clientCertificates\": "
			       "[]}}" }, 5, 133,
		  "spec.tls.clientCertificates: only the \"ca\" source issues client certificates; "
		  "the source is \"files\"", "a" },
		{ { .spec = L1 "\"tls\": {\"files\": {\"certFile\": \"c\"}}}" }, 5, 55,
		  "spec.tls.files.certFile: expected an absolute path, got a relative path", "a" },
		{ { .spec = L1 "\"tls\": {\"files\": {\"pem\": \"/c\"}}}" }, 5, 55,
		  "unknown key \"pem\" in spec.tls.files (expected one of: certFile, keyFile, "
		  "clientCAFile, caFile)", "a" },
	};
	struct fixture *f = *state;
	struct ep_tenant_config *t;
	struct tdoc d = { 0 };
	char *path;

	run_tenant_cases(f, cases, N_ELEMENTS(cases));

	/* a whole spec.tls, as the worker gets it */
	d.spec = L1 "\"tls\": {\"serverNames\": [\"etcd.example.com\", \"10.0.0.1\", \"*.x.example\"], "
		    "\"clientCertificates\": [{\"name\": \"system:apiserver\", \"outputDir\": \"/o\"}]}}";
	t = tenant_ok(f, &d);
	assert_true(t->tls.enabled);
	assert_string_equal(t->tls.source, "ca");
	assert_int_equal(t->tls.n_server_names, 3);
	assert_int_equal(t->tls.n_client_certs, 1);
	assert_string_equal(t->tls.client_certs[0].name, "system:apiserver");
	cJSON *w = ep_worker_config_build(f->global, t);
	char *text = cJSON_PrintUnformatted(
		cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(w, "tenant"), "tls"));
	assert_non_null(strstr(text, "\"clientCertificates\":[{\"name\":\"system:apiserver\","
				     "\"outputDir\":\"/o\"}]"));
	free(text);
	cJSON_Delete(w);
	ep_tenant_config_free(t);

	/* TLS off: no certificate source in the payload */
	d.spec = L1 "\"tls\": {\"enabled\": false}}";
	t = tenant_ok(f, &d);
	w = ep_worker_config_build(f->global, t);
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(w, "tenant"), "tls")));
	assert_null(cJSON_GetObjectItemCaseSensitive(w, "certs_options"));
	cJSON_Delete(w);
	ep_tenant_config_free(t);

	/* the plugin of the source must exist */
	d.spec = L1 "\"tls\": {\"source\": \"files\", \"files\": {\"certFile\": \"/c\", "
		    "\"keyFile\": \"/k\", \"clientCAFile\": \"/ca\"}}}";
	path = ep_strdup_printf("spec.tls.source: \"files\": no plugin %s/certs-files.so "
				"(No such file or directory)", f->plugins);
	tenant_fails(f, &d, 5, 37, path, "a");
	free(path);

	/* an outputDir inside state_dir */
	path = ep_strdup_printf(L1 "\"tls\": {\"clientCertificates\": [{\"name\": \"x\", "
				"\"outputDir\": \"%s/state/x\"}]}}", f->dir);
	d.spec = path;
	char *msg = ep_strdup_printf("spec.tls.clientCertificates: outputDir \"%s/state/x\" is "
				     "inside state_dir %s/state, which belongs to etcdproxy",
				     f->dir, f->dir);
	tenant_fails(f, &d, 5, 45, msg, "a");
	free(msg);
	free(path);
}

static void test_tenant_policy(void **state)
{
	struct fixture *f = *state;
	struct tdoc d = { .spec = L1 "\"backend\": \"other\", \"policy\": {\"compaction\": \"deny\"}}" };
	struct ep_tenant_config *t = tenant_ok(f, &d);
	cJSON *w = ep_worker_config_build(f->global, t);
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(w, "tenant"), "policy");

	assert_string_equal(t->compaction, "deny");
	/* in the payload, hence in the fingerprint: a policy change restarts the tenant */
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(p, "compaction")->valuestring, "deny");
	cJSON_Delete(w);
	ep_tenant_config_free(t);

	d.spec = L1 "\"policy\": {}}";
	t = tenant_ok(f, &d);
	assert_null(t->compaction);
	w = ep_worker_config_build(f->global, t);
	p = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(w, "tenant"), "policy");
	assert_true(cJSON_IsObject(p));
	assert_null(p->child);
	cJSON_Delete(w);
	ep_tenant_config_free(t);
}

/* spec.quota: the limits reach the worker's policy; maxBytes takes Kubernetes quantities */
static void test_tenant_quota(void **state)
{
	static const struct {
		const char *text;
		uint64_t bytes;
	} sizes[] = {
		{ "0", 0 },	       { "1500", 1500 }, { "512Ki", 512ull << 10 }, { "2Mi", 2ull << 20 },
		{ "8Gi", 8ull << 30 }, { "1Ti", 1ull << 40 }, { "100M", 100000000 }, { "3k", 3000 },
		{ "2G", 2000000000ull },
	};
	static const char *const bad[] = { "", "Mi", "1.5Gi", "1 Gi", "1gi", "1KiB", "-1", "1e3",
					   "99999999999999999999", "20000000Pi" };
	struct fixture *f = *state;
	struct tdoc d = { .spec = L1 "\"backend\": \"other\", \"quota\": {\"maxKeys\": 1000, "
				  "\"maxBytes\": \"64Mi\", \"maxLeases\": 20}}" };
	struct ep_tenant_config *t = tenant_ok(f, &d);
	cJSON *w = ep_worker_config_build(f->global, t);
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(w, "tenant"),
						 "policy"),
		"quota");
	uint64_t v;

	assert_int_equal(t->quota.set, 1);
	assert_int_equal(t->quota.max_keys, 1000);
	assert_int_equal(t->quota.max_bytes, 64ull << 20);
	assert_int_equal(t->quota.max_leases, 20);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(q, "max_keys")->valuedouble, 1000);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(q, "max_bytes")->valuedouble,
			 64 << 20);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(q, "max_leases")->valuedouble, 20);
	cJSON_Delete(w);
	ep_tenant_config_free(t);

	d.spec = L1 "\"backend\": \"other\", \"quota\": {\"maxBytes\": 4096}}";
	t = tenant_ok(f, &d);
	assert_int_equal(t->quota.max_bytes, 4096);
	assert_int_equal(t->quota.max_keys, 0);
	ep_tenant_config_free(t);

	for (size_t i = 0; i < N_ELEMENTS(sizes); i++) {
		assert_int_equal(ep_parse_quantity(sizes[i].text, &v), 0);
		assert_int_equal(v, sizes[i].bytes);
	}
	for (size_t i = 0; i < N_ELEMENTS(bad); i++)
		assert_int_equal(ep_parse_quantity(bad[i], &v), -1);
}

/* ---- the worker's configuration ------------------------------------------------------ */

static void test_worker_config_build(void **state)
{
	struct fixture *f = *state;
	struct tdoc d = {
		.metadata = "{\"name\": \"team-a\"}",
		.spec = "{\"listen\": \"127.0.0.1:23790\", "
			"\"caCertConfigMap\": [{\"name\": \"ca\", \"namespace\": \"ns\"}], "
			"\"signingCertificateValidity\": \"730h\"}",
	};
	struct ep_tenant_config *t = tenant_ok(f, &d), *t2;
	cJSON *w = ep_worker_config_build(f->global, t), *w2, *x;
	char *text, *text2, *expected;

	assert_non_null(w);
	x = cJSON_GetObjectItemCaseSensitive(w, "tenant");
	assert_true(cJSON_IsObject(x));
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(x, "name")->valuestring, "team-a");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(x, "prefix")->valuestring, "/team-a/");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(x, "listen")->valuestring,
			    "127.0.0.1:23790");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(x, "file")->valuestring,
			    f->tenant_file);
	assert_true(cJSON_GetObjectItemCaseSensitive(x, "signing_validity_ms")->valuedouble ==
		    2628000000.0);
	assert_true(cJSON_GetObjectItemCaseSensitive(x, "serving_validity_ms")->valuedouble ==
		    720000000.0);
	assert_true(cJSON_GetObjectItemCaseSensitive(x, "client_validity_ms")->valuedouble ==
		    1800000.0);
	text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(x, "caCertConfigMap"));
	assert_string_equal(text, "[{\"name\":\"ca\",\"namespace\":\"ns\"}]");
	free(text);
	text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(x, "clientCertSecret"));
	assert_string_equal(text, "[]");
	free(text);
	/* TLS is on by default, from the built-in CA */
	text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(x, "tls"));
	assert_string_equal(text, "{\"serverNames\":[],\"source\":\"ca\",\"clientCertificates\":[],"
				  "\"signing_validity_ms\":2628000000,\"serving_validity_ms\":720000000,"
				  "\"client_validity_ms\":1800000}");
	free(text);
	text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(w, "certs_options"));
	assert_string_equal(text, "{}");
	free(text);

	x = cJSON_GetObjectItemCaseSensitive(w, "core_etcd");
	text = cJSON_PrintUnformatted(x);
	assert_string_equal(text, "{\"endpoints\":[\"https://10.1.0.1:2379\","
				  "\"https://10.1.0.2:2379\"],"
				  "\"ca_file\":null,\"cert_file\":null,\"key_file\":null}");
	free(text);

	assert_string_equal(cJSON_GetObjectItemCaseSensitive(w, "backend")->valuestring, "etcd");
	text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(w, "backend_options"));
	assert_string_equal(text, "{\"binary\":\"/usr/bin/etcd\",\"extra_args\":[\"--x\"]}");
	free(text);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(w, "plugin_dir")->valuestring,
			    f->plugins);
	expected = ep_strdup_printf("%s/state/team-a", f->dir);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(w, "state_dir")->valuestring,
			    expected);
	free(expected);
	expected = ep_strdup_printf("%s/run/team-a", f->dir);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(w, "runtime_dir")->valuestring,
			    expected);
	free(expected);
	/* the log level is added when sent: changing it must not restart tenants */
	assert_null(cJSON_GetObjectItemCaseSensitive(w, "log_level"));
	/* nothing else */
	assert_int_equal(cJSON_GetArraySize(w), 8);

	/* deterministic: a second build, and a build from a second load, print the same */
	text = cJSON_PrintUnformatted(w);
	w2 = ep_worker_config_build(f->global, t);
	text2 = cJSON_PrintUnformatted(w2);
	assert_string_equal(text, text2);
	free(text2);
	cJSON_Delete(w2);
	t2 = tenant_ok(f, &d);
	w2 = ep_worker_config_build(f->global, t2);
	text2 = cJSON_PrintUnformatted(w2);
	assert_string_equal(text, text2);
	free(text2);
	cJSON_Delete(w2);
	ep_tenant_config_free(t2);

	/* and it changes with the tenant */
	d.spec = "{\"listen\": \"127.0.0.1:23791\", \"caCertConfigMap\": [{\"name\": \"ca\", "
		 "\"namespace\": \"ns\"}], \"signingCertificateValidity\": \"730h\"}";
	t2 = tenant_ok(f, &d);
	w2 = ep_worker_config_build(f->global, t2);
	text2 = cJSON_PrintUnformatted(w2);
	assert_string_not_equal(text, text2);
	free(text2);
	cJSON_Delete(w2);
	ep_tenant_config_free(t2);
	free(text);
	cJSON_Delete(w);

	/* a backend without options gets an empty object; set CA files show up */
	struct ep_global_config *g = global_ok(
		f, "{\"plugin_dir\": \"@P@\", \"core_etcd\": {\"ca_file\": \"/pki/ca.crt\"}}");
	w = ep_worker_config_build(g, t);
	text = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(w, "backend_options"));
	assert_string_equal(text, "{}");
	free(text);
	x = cJSON_GetObjectItemCaseSensitive(w, "core_etcd");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(x, "ca_file")->valuestring,
			    "/pki/ca.crt");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(x, "cert_file")->valuestring,
			    "/etc/kubernetes/pki/apiserver-etcd-client.crt");
	cJSON_Delete(w);
	ep_global_config_free(g);

	/* two globals that differ only in log_level give one fingerprint */
	g = global_ok(f, "{\"plugin_dir\": \"@P@\", \"log_level\": \"err\"}");
	struct ep_global_config *g2 = global_ok(f, "{\"plugin_dir\": \"@P@\", \"log_level\": \"debug\"}");
	w = ep_worker_config_build(g, t);
	w2 = ep_worker_config_build(g2, t);
	text = cJSON_PrintUnformatted(w);
	text2 = cJSON_PrintUnformatted(w2);
	assert_string_equal(text, text2);
	free(text);
	free(text2);
	cJSON_Delete(w);
	cJSON_Delete(w2);
	ep_global_config_free(g);
	ep_global_config_free(g2);
	ep_tenant_config_free(t);
	assert_contains(f->tenant_file, "/storages.d/t.json");
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest global_tests[] = {
		T(test_global_defaults),
		T(test_global_all_values),
		T(test_global_nulls),
		T(test_global_control_socket_length),
		T(test_global_file_errors),
		T(test_global_unknown_keys),
		T(test_global_wrong_types),
		T(test_global_relative_paths),
		T(test_global_log_level),
		T(test_global_durations),
		T(test_global_backoff_order),
		T(test_global_cert_without_key),
		T(test_global_endpoints),
		T(test_global_reserved_prefixes),
	};
	const struct CMUnitTest tenant_tests[] = {
		cmocka_unit_test(test_prefix_overlaps),
		T(test_tenant_ca_grace),
		T(test_tenant_listen_port_only),
		cmocka_unit_test(test_tenant_name_valid),
		cmocka_unit_test(test_listen_validate),
		cmocka_unit_test(test_listen_parse),
		T(test_listen_unix),
		T(test_tenant_minimal),
		T(test_tenant_builtin_defaults),
		T(test_tenant_full),
		T(test_tenant_valid_variants),
		T(test_tenant_header_errors),
		T(test_tenant_file_errors),
		T(test_tenant_names),
		T(test_tenant_reserved),
		T(test_tenant_listen),
		T(test_tenant_backend),
		T(test_tenant_spec_errors),
		T(test_tenant_quota),
		T(test_tenant_policy),
		T(test_tenant_tls),
		T(test_worker_config_build),
	};
#undef T
	int failed;

	failed = cmocka_run_group_tests_name("global config", global_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("tenant config", tenant_tests, NULL, NULL);
	return failed;
}
