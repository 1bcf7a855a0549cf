/*
 * etcdproxy-worker: serves one tenant through one backend plugin.
 *
 *   etcdproxy-worker --tenant NAME
 *       supervised: speaks the IPC protocol on fd EP_IPC_FD (master-interface.h)
 *   etcdproxy-worker --standalone [-c GLOBAL.json] TENANT.json
 *       without a supervisor, for tests and debugging; stops on SIGTERM/SIGINT
 *   etcdproxy-worker --exec-child PARENT_PID FILE -- ARGV0 ARGS...
 *       internal trampoline for ep_host.spawn: PR_SET_PDEATHSIG, then exec
 *   etcdproxy-worker --describe-options PLUGIN_DIR backend|certs NAME
 *       a plugin's option table as JSON, for etcdproxyd --check-config
 */
#include "build-config.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define EP_LOG_SUBSYS "worker"
#include "config.h"
#include "ipc.h"
#include "log.h"
#include "messages.h"
#include "options.h"
#include "plugin-loader.h"
#include "util.h"

struct worker {
	uv_loop_t *loop;
	int standalone;
	const char *tenant_hint;

	uv_pipe_t ipc;
	int ipc_open;
	struct ep_frame_reader reader;
	uv_signal_t sigterm, sigint;
	uv_timer_t report; /* counters to the supervisor */

	/* from CONFIGURE */
	int configured;
	char *name, *prefix, *listen, *file, *state_dir, *runtime_dir, *plugin_dir, *backend;
	char **endpoints;
	size_t n_endpoints;
	char *ca_file, *cert_file, *key_file;
	char *options_json;
	char *policy_json;
	int listen_fd;
	char *tls_json;           /* spec.tls for the certificate source, NULL: plaintext */
	char *certs_source;       /* "ca", "files"; NULL: plaintext */
	char *certs_options_json; /* the global certs.<source> options */

	struct ep_tenant_info info;
	struct ep_host host;
	struct ep_loaded_plugin plugin;
	void *plugin_state;
	int plugin_inited, plugin_started, plugin_stopping, plugin_stopped;

	/* the certificate source, loaded before the backend when TLS is on */
	struct ep_tenant_info certs_info;
	struct ep_host certs_host;
	struct ep_loaded_plugin certs;
	void *certs_state;
	int certs_inited, certs_stopped;
	/* the material it published last (ours: copies) */
	struct ep_tls_material tls;
	char *tls_cert, *tls_key, *tls_client_ca, *tls_ca;
	int tls_published;

	int ready_sent;
	int healthy; /* last health sent: -1 none */
	int exit_code;
	int exiting;
};

static struct worker W;
static char self_exe[PATH_MAX];

static const struct ep_certs_ops *certs_ops(void)
{
	return W.certs_inited ? W.certs.plugin->ops : NULL;
}

static void worker_exit(int code);

/* ---- messages to the supervisor ------------------------------------------------------------- */

static void send_msg(uint8_t type, cJSON *payload)
{
	if (W.ipc_open)
		ep_ipc_send((uv_stream_t *)&W.ipc, type, payload);
	cJSON_Delete(payload);
}

static void send_fatal(int config, const char *reason)
{
	struct ep_msg_fatal m = { .reason = reason, .config = config };

	send_msg(EP_MSG_FATAL, ep_msg_fatal_encode(&m));
}

/* STATUS: the state and, when the backend keeps them, its counters. */
static void send_status(void)
{
	const struct ep_backend_ops *ops = W.plugin.plugin ? W.plugin.plugin->ops : NULL;
	struct ep_msg_status m = { .state = W.ready_sent ? "ready" : "starting",
				   .healthy = W.healthy == 1 };
	cJSON *counters = NULL, *certs = NULL;

	if (W.plugin_started && ops != NULL && ops->counters != NULL) {
		char *text = ops->counters(W.plugin_state);

		counters = text ? cJSON_Parse(text) : NULL;
		free(text);
		if (cJSON_IsObject(counters))
			m.counters = counters;
	}
	if (certs_ops() != NULL && certs_ops()->describe != NULL && !W.certs_stopped) {
		char *text = certs_ops()->describe(W.certs_state);

		certs = text ? cJSON_Parse(text) : NULL;
		free(text);
		if (cJSON_IsArray(certs))
			m.certificates = certs;
	}
	send_msg(EP_MSG_STATUS, ep_msg_status_encode(&m));
	cJSON_Delete(counters);
	cJSON_Delete(certs);
}

static void on_report(uv_timer_t *t)
{
	if (!W.exiting)
		send_status();
}

/* ---- the host API given to plugins -------------------------------------------------------------- */

static void host_log(struct ep_host *host, enum ep_log_level level, const char *fmt, ...)
{
	char subsys[64];
	va_list ap;

	if (host == &W.certs_host)
		snprintf(subsys, sizeof(subsys), "certs-%s", W.certs_source);
	else
		snprintf(subsys, sizeof(subsys), "backend-%s", W.backend ? W.backend : "?");
	va_start(ap, fmt);
	ep_logv(level, subsys, fmt, ap);
	va_end(ap);
}

static void host_ready(struct ep_host *host, const char *endpoint)
{

	if (W.exiting)
		return;
	if (!W.ready_sent) {
		W.ready_sent = 1;
		W.healthy = 1;
		ep_info("ready: serving %s on %s", W.prefix, endpoint);
		send_msg(EP_MSG_READY, ep_msg_ready_encode(&(struct ep_msg_ready){ .endpoint = endpoint }));
		return;
	}
	if (W.healthy != 1) {
		W.healthy = 1;
		ep_notice("healthy again");
		send_msg(EP_MSG_HEALTH, ep_msg_health_encode(&(struct ep_msg_health){ .healthy = 1 }));
	}
}

static void host_health(struct ep_host *host, int healthy, const char *reason)
{
	struct ep_msg_health m = { .healthy = 0, .reason = reason ? reason : "unhealthy" };

	if (healthy) {
		if (W.ready_sent)
			host_ready(host, W.listen);
		return;
	}
	if (W.healthy == 0 || W.exiting)
		return;
	W.healthy = 0;
	ep_warn("unhealthy: %s", reason ? reason : "no reason given");
	send_msg(EP_MSG_HEALTH, ep_msg_health_encode(&m));
}

static void host_fail(struct ep_host *host, int fatal_config, const char *reason)
{
	ep_err("%s", reason);
	send_fatal(fatal_config, reason);
	worker_exit(fatal_config ? EP_EXIT_CONFIG : EP_EXIT_UNAVAILABLE);
}

static void close_worker_handles(void);

static void host_stopped(struct ep_host *host)
{
	W.plugin_stopped = 1;
	if (W.exiting)
		close_worker_handles();
}

/*
 * Run the program through our own --exec-child trampoline, which sets
 * PR_SET_PDEATHSIG before exec: uv_spawn has no hook in the child.
 */
static int host_spawn(struct ep_host *host, uv_process_t *process,
		      const uv_process_options_t *options)
{
	uv_process_options_t o = *options;
	size_t n = 0;
	char **args;
	char ppid[32];
	int r;

	while (options->args[n] != NULL)
		n++;
	args = ep_malloc0(sizeof(char *) * (n + 6));
	snprintf(ppid, sizeof(ppid), "%ld", (long)getpid());
	args[0] = self_exe;
	args[1] = "--exec-child";
	args[2] = ppid;
	args[3] = (char *)options->file;
	args[4] = "--";
	for (size_t i = 0; i < n; i++)
		args[5 + i] = options->args[i];
	args[5 + n] = NULL;
	o.file = self_exe;
	o.args = args;
	r = uv_spawn(W.loop, process, &o);
	free(args);
	return r;
}

static const struct ep_tls_material *host_tls_material(struct ep_host *host)
{
	return W.tls_published ? &W.tls : NULL;
}

static void replace_str(char **slot, const char *value)
{
	char *copy = value != NULL ? ep_strdup(value) : NULL;

	free(*slot);
	*slot = copy;
}

static void host_tls_publish(struct ep_host *host, const struct ep_tls_material *m)
{
	const struct ep_backend_ops *ops;

	if (host != &W.certs_host || m == NULL || m->cert_file == NULL || m->key_file == NULL ||
	    m->client_ca_file == NULL) {
		ep_err("a certificate source published incomplete TLS material: ignored");
		return;
	}
	replace_str(&W.tls_cert, m->cert_file);
	replace_str(&W.tls_key, m->key_file);
	replace_str(&W.tls_client_ca, m->client_ca_file);
	replace_str(&W.tls_ca, m->ca_file);
	memset(&W.tls, 0, sizeof(W.tls));
	W.tls.cert_file = W.tls_cert;
	W.tls.key_file = W.tls_key;
	W.tls.client_ca_file = W.tls_client_ca;
	W.tls.ca_file = W.tls_ca;
	W.tls.generation = m->generation;
	W.tls.client_ca_changed = m->client_ca_changed;
	W.tls_published = 1;
	ep_info("TLS material generation %llu from certs-%s%s", (unsigned long long)m->generation,
		W.certs_source, m->client_ca_changed ? " (new client CA bundle)" : "");
	ops = W.plugin_started ? W.plugin.plugin->ops : NULL;
	if (ops != NULL && !W.plugin_stopped && ops->tls_changed != NULL)
		ops->tls_changed(W.plugin_state);
}

static void host_certs_changed(struct ep_host *host)
{
	if (!W.exiting && !W.standalone && W.configured)
		send_status();
}

/* ---- configuration -------------------------------------------------------------------------------- */

static char *dup_field(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsString(v) ? ep_strdup(v->valuestring) : NULL;
}

static void free_config(void)
{
	free(W.name);
	free(W.prefix);
	free(W.listen);
	free(W.file);
	free(W.state_dir);
	free(W.runtime_dir);
	free(W.plugin_dir);
	free(W.backend);
	for (size_t i = 0; i < W.n_endpoints; i++)
		free(W.endpoints[i]);
	free(W.endpoints);
	free(W.ca_file);
	free(W.cert_file);
	free(W.key_file);
	free(W.options_json);
	free(W.policy_json);
	free(W.tls_json);
	free(W.certs_source);
	free(W.certs_options_json);
	free(W.tls_cert);
	free(W.tls_key);
	free(W.tls_client_ca);
	free(W.tls_ca);
}

/* Returns 0, or -EINVAL with *error_r (malloc'ed). */
static int read_configure(const cJSON *p, char **error_r)
{
	const cJSON *tenant = cJSON_GetObjectItemCaseSensitive(p, "tenant");
	const cJSON *core = cJSON_GetObjectItemCaseSensitive(p, "core_etcd");
	const cJSON *eps = cJSON_GetObjectItemCaseSensitive(core, "endpoints");
	const cJSON *opts = cJSON_GetObjectItemCaseSensitive(p, "backend_options");
	const cJSON *level = cJSON_GetObjectItemCaseSensitive(p, "log_level");
	const cJSON *e;
	enum ep_log_level lv;

	W.name = dup_field(tenant, "name");
	W.prefix = dup_field(tenant, "prefix");
	W.listen = dup_field(tenant, "listen");
	W.file = dup_field(tenant, "file");
	W.state_dir = dup_field(p, "state_dir");
	W.runtime_dir = dup_field(p, "runtime_dir");
	W.plugin_dir = dup_field(p, "plugin_dir");
	W.backend = dup_field(p, "backend");
	W.ca_file = dup_field(core, "ca_file");
	W.cert_file = dup_field(core, "cert_file");
	W.key_file = dup_field(core, "key_file");
	if (W.name == NULL || W.prefix == NULL || W.listen == NULL || W.state_dir == NULL ||
	    W.runtime_dir == NULL || W.plugin_dir == NULL || W.backend == NULL ||
	    !cJSON_IsArray(eps) || !cJSON_IsObject(opts)) {
		*error_r = ep_strdup("CONFIGURE lacks a required field");
		return -EINVAL;
	}
	W.endpoints = ep_malloc0(sizeof(char *) * ((size_t)cJSON_GetArraySize(eps) + 1));
	cJSON_ArrayForEach(e, eps)
	{
		if (cJSON_IsString(e))
			W.endpoints[W.n_endpoints++] = ep_strdup(e->valuestring);
	}
	W.options_json = cJSON_PrintUnformatted(opts);
	const cJSON *policy = cJSON_GetObjectItemCaseSensitive(tenant, "policy");
	W.policy_json = cJSON_IsObject(policy) ? cJSON_PrintUnformatted(policy) : ep_strdup("{}");
	const cJSON *tls = cJSON_GetObjectItemCaseSensitive(tenant, "tls");
	if (cJSON_IsObject(tls)) {
		const cJSON *copts = cJSON_GetObjectItemCaseSensitive(p, "certs_options");

		W.certs_source = dup_field(tls, "source");
		if (W.certs_source == NULL) {
			*error_r = ep_strdup("CONFIGURE: tenant.tls lacks its source");
			return -EINVAL;
		}
		W.tls_json = cJSON_PrintUnformatted(tls);
		W.certs_options_json = cJSON_IsObject(copts) ? cJSON_PrintUnformatted(copts)
							     : ep_strdup("{}");
	}
	const cJSON *lfd = cJSON_GetObjectItemCaseSensitive(p, "listen_fd");
	W.listen_fd = -1;
	if (cJSON_IsNumber(lfd) && lfd->valueint == EP_LISTEN_FD &&
	    fcntl(EP_LISTEN_FD, F_SETFD, FD_CLOEXEC) == 0) /* not for the backend's own children */
		W.listen_fd = EP_LISTEN_FD;
	if (cJSON_IsString(level) && ep_log_level_parse(level->valuestring, &lv) == 0)
		ep_log_set_level(lv);
	ep_log_set_tenant(W.name);
	return 0;
}

/*
 * Load the certificate source and have it publish the first material, before
 * the backend starts.  Returns 0, or a negative errno code (-EINVAL: the
 * configuration or the files are wrong) with *error_r (malloc'ed).
 */
static int start_certs(char **error_r)
{
	const struct ep_certs_ops *ops;
	const char *perr = NULL;
	int r;

	r = ep_plugin_load(W.plugin_dir, EP_PLUGIN_CERTS, W.certs_source, &W.certs, error_r);
	if (r < 0)
		return -EINVAL;
	W.certs_info = W.info;
	W.certs_info.options_json = W.certs_options_json;
	W.certs_info.listen_fd = -1;
	W.certs_host = W.host;
	W.certs_host.tenant = &W.certs_info;
	W.certs_host.tls_material = NULL;
	W.certs_host.tls_publish = host_tls_publish;
	W.certs_host.certs_changed = host_certs_changed;
	r = W.certs.plugin->init(&W.certs_host, &W.certs_state, &perr);
	if (r < 0) {
		*error_r = ep_strdup_printf("certificate source %s: %s", W.certs_source,
					    perr ? perr : strerror(-r));
		return r;
	}
	W.certs_inited = 1;
	ops = W.certs.plugin->ops;
	r = ops->refresh(W.certs_state, &perr);
	if (r == 0 && !W.tls_published) {
		perr = "refresh() returned without publishing TLS material";
		r = -EPROTO;
	}
	if (r < 0) {
		*error_r = ep_strdup_printf("certificate source %s: %s", W.certs_source,
					    perr ? perr : strerror(-r));
		return r;
	}
	return 0;
}

/* ep_host.options_parse: the plugin's options by its table, with the one checker of lib/options.c. */
static int host_options_parse(struct ep_host *host, void *out, const char **error_r)
{
	/* the last error, kept until the next call: init() reads it right after */
	static char *error;
	int certs = host == &W.certs_host;
	const struct ep_plugin *p = certs ? W.certs.plugin : W.plugin.plugin;
	char *section = ep_strdup_printf("%s.%s", certs ? "certs" : "backends",
					 certs ? W.certs_source : W.backend);
	cJSON *o = cJSON_Parse(host->tenant->options_json);
	const cJSON *node;
	int r;

	free(error);
	error = NULL;
	if (p->options == NULL) {
		error = ep_strdup_printf("%s: the plugin calls options_parse() but describes no "
					 "options (ep_plugin.options is NULL)", section);
		r = -EINVAL;
	} else {
		r = ep_options_apply(p->options, section, o, out, &node, &error);
	}
	*error_r = error;
	cJSON_Delete(o);
	free(section);
	return r;
}

/*
 * etcdproxy-worker --describe-options PLUGIN_DIR KIND NAME: the plugin's
 * option table as JSON on standard output, for etcdproxyd --check-config.
 */
static int describe_options(const char *dir, const char *kind, const char *name)
{
	struct ep_loaded_plugin lp = { 0 };
	char *error = NULL, *text;
	cJSON *o;

	if (strcmp(kind, "backend") != 0 && strcmp(kind, "certs") != 0) {
		fprintf(stderr, "etcdproxy-worker: --describe-options: the kind is \"backend\" or "
				"\"certs\", not \"%s\"\n", kind);
		return EP_EXIT_USAGE;
	}
	if (ep_plugin_load(dir, strcmp(kind, "backend") == 0 ? EP_PLUGIN_BACKEND : EP_PLUGIN_CERTS,
			   name, &lp, &error) < 0) {
		fprintf(stderr, "%s\n", error);
		free(error);
		return EP_EXIT_CONFIG;
	}
	o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "options", lp.plugin->options != NULL
						    ? ep_options_describe(lp.plugin->options)
						    : cJSON_CreateNull());
	text = cJSON_PrintUnformatted(o);
	printf("%s\n", text);
	cJSON_free(text);
	cJSON_Delete(o);
	ep_plugin_unload(&lp);
	return 0;
}

/* Load the plugin and start serving; on error the worker exits with the right code. */
static void apply_configure(const cJSON *p)
{
	const struct ep_backend_ops *ops;
	const char *perr = NULL;
	char *error = NULL;
	int r;

	if (W.configured) {
		ep_warn("a second CONFIGURE is ignored: a changed tenant gets a new worker");
		return;
	}
	W.configured = 1;
	if (read_configure(p, &error) < 0)
		goto fatal_config;
	if (ep_mkdir_p(W.state_dir, 0700) < 0 || ep_mkdir_p(W.runtime_dir, 0700) < 0) {
		error = ep_strdup_printf("cannot create %s or %s: %s", W.state_dir, W.runtime_dir,
					 strerror(errno));
		send_fatal(0, error);
		ep_err("%s", error);
		free(error);
		worker_exit(EP_EXIT_UNAVAILABLE);
		return;
	}
	r = ep_plugin_load(W.plugin_dir, EP_PLUGIN_BACKEND, W.backend, &W.plugin, &error);
	if (r < 0)
		goto fatal_config;
	ep_debug("loaded %s (%s)", W.plugin.path, W.plugin.plugin->description);

	W.info.name = W.name;
	W.info.prefix = W.prefix;
	W.info.listen = W.listen;
	W.info.state_dir = W.state_dir;
	W.info.runtime_dir = W.runtime_dir;
	W.info.source_file = W.file;
	W.info.core.endpoints = (const char *const *)W.endpoints;
	W.info.core.n_endpoints = W.n_endpoints;
	W.info.core.ca_file = W.ca_file;
	W.info.core.cert_file = W.cert_file;
	W.info.core.key_file = W.key_file;
	W.info.options_json = W.options_json;
	W.info.policy_json = W.policy_json;
	W.info.listen_fd = W.listen_fd;
	W.info.tls_json = W.tls_json;
	W.host.abi_version = EP_PLUGIN_ABI_VERSION;
	W.host.loop = W.loop;
	W.host.tenant = &W.info;
	W.host.log = host_log;
	W.host.ready = host_ready;
	W.host.health = host_health;
	W.host.fail = host_fail;
	W.host.stopped = host_stopped;
	W.host.spawn = host_spawn;
	W.host.tls_material = host_tls_material;
	W.host.options_parse = host_options_parse;

	if (W.certs_source != NULL) {
		r = start_certs(&error);
		if (r < 0) {
			send_fatal(r == -EINVAL, error);
			ep_err("%s", error);
			free(error);
			worker_exit(r == -EINVAL ? EP_EXIT_CONFIG : EP_EXIT_UNAVAILABLE);
			return;
		}
		host_certs_changed(&W.certs_host); /* show has the certificates from the start */
	}

	r = W.plugin.plugin->init(&W.host, &W.plugin_state, &perr);
	if (r < 0) {
		error = ep_strdup_printf("backend %s: %s", W.backend, perr ? perr : strerror(-r));
		if (r == -EINVAL)
			goto fatal_config;
		send_fatal(0, error);
		ep_err("%s", error);
		free(error);
		worker_exit(EP_EXIT_UNAVAILABLE);
		return;
	}
	W.plugin_inited = 1;
	ops = W.plugin.plugin->ops;
	r = ops->start(W.plugin_state, &perr);
	if (r < 0) {
		error = ep_strdup_printf("backend %s: cannot start: %s", W.backend,
					 perr ? perr : strerror(-r));
		send_fatal(r == -EINVAL, error);
		ep_err("%s", error);
		free(error);
		W.plugin_stopped = 1;
		worker_exit(r == -EINVAL ? EP_EXIT_CONFIG : EP_EXIT_UNAVAILABLE);
		return;
	}
	W.plugin_started = 1;
	if (W.exiting) {
		/*
		 * host->fail() from inside start(): worker_exit() saw no started
		 * backend and did not stop it, so its handles would keep the loop
		 * (and this process) alive.
		 */
		W.plugin_stopping = 1;
		ops->stop(W.plugin_state, 1);
		return;
	}
	if (!W.standalone && ((const struct ep_backend_ops *)W.plugin.plugin->ops)->counters != NULL)
		uv_timer_start(&W.report, on_report, EP_REPORT_INTERVAL_MS, EP_REPORT_INTERVAL_MS);
	return;

fatal_config:
	send_fatal(1, error);
	ep_err("%s", error);
	free(error);
	worker_exit(EP_EXIT_CONFIG);
}

/* ---- shutdown ------------------------------------------------------------------------------------------ */

static void ipc_shutdown_done(uv_shutdown_t *req, int status)
{
	free(req);
	if (W.ipc_open) {
		W.ipc_open = 0;
		uv_close((uv_handle_t *)&W.ipc, NULL);
	}
}

static void close_worker_handles(void)
{
	static int done;

	if (done)
		return;
	done = 1;
	if (certs_ops() != NULL && !W.certs_stopped) {
		W.certs_stopped = 1;
		if (certs_ops()->stop != NULL)
			certs_ops()->stop(W.certs_state);
	}
	if (!uv_is_closing((uv_handle_t *)&W.sigterm)) {
		uv_close((uv_handle_t *)&W.sigterm, NULL);
		uv_close((uv_handle_t *)&W.sigint, NULL);
		uv_close((uv_handle_t *)&W.report, NULL);
	}
	if (W.ipc_open) {
		uv_shutdown_t *req = ep_malloc0(sizeof(*req));

		uv_read_stop((uv_stream_t *)&W.ipc);
		/* let a queued FATAL reach the supervisor before the socket closes */
		if (uv_shutdown(req, (uv_stream_t *)&W.ipc, ipc_shutdown_done) < 0) {
			free(req);
			W.ipc_open = 0;
			uv_close((uv_handle_t *)&W.ipc, NULL);
		}
	}
}

/* Stop the backend (gracefully unless it never started) and leave the loop. */
static void worker_exit(int code)
{
	if (W.exiting) {
		/* asked twice: make the backend hurry */
		if (W.plugin_started && !W.plugin_stopped)
			((const struct ep_backend_ops *)W.plugin.plugin->ops)->stop(W.plugin_state, 0);
		return;
	}
	W.exiting = 1;
	W.exit_code = code;
	if (W.plugin_started && !W.plugin_stopped && !W.plugin_stopping) {
		W.plugin_stopping = 1;
		((const struct ep_backend_ops *)W.plugin.plugin->ops)->stop(W.plugin_state, 1);
		if (!W.plugin_stopped)
			return; /* host_stopped() closes the rest */
	}
	close_worker_handles();
}

static void on_signal(uv_signal_t *h, int signum)
{
	ep_info("%s: stopping", signum == SIGTERM ? "SIGTERM" : "SIGINT");
	worker_exit(EP_EXIT_OK);
}

/* ---- IPC ------------------------------------------------------------------------------------------------- */

/* etcdproxyctl rotate / issue-client-cert, relayed by the supervisor. */
static void handle_certs_req(const cJSON *req)
{
	struct ep_msg_certs_req q;
	struct ep_msg_certs_reply m = { .id = -1 };
	const struct ep_certs_ops *ops = certs_ops();
	const char *cerr = NULL;
	char *error = NULL, *result = NULL;
	cJSON *result_json = NULL;
	int r = -ENOTSUP;

	int bad = ep_msg_certs_req_parse(req, &q) < 0;

	m.id = bad ? -1 : q.id;
	if (bad) {
		error = ep_strdup("CERTS_REQ: a field has the wrong type");
	} else if (ops == NULL || W.certs_stopped) {
		error = ep_strdup("this tenant has no certificate source (spec.tls.enabled is false)");
	} else if (q.op != NULL && strcmp(q.op, "rotate") == 0) {
		if (ops->rotate == NULL) {
			error = ep_strdup_printf("the %s certificate source cannot rotate",
						 W.certs_source);
		} else if ((r = ops->rotate(W.certs_state, &cerr)) < 0) {
			error = ep_strdup(cerr ? cerr : strerror(-r));
		} else {
			ep_notice("rotation started on request");
		}
	} else if (q.op != NULL && strcmp(q.op, "issue") == 0 && q.cn != NULL && q.out != NULL) {
		if (ops->issue_client == NULL) {
			error = ep_strdup_printf("the %s certificate source does not issue client "
						 "certificates; the operator's CA does",
						 W.certs_source);
		} else if ((r = ops->issue_client(W.certs_state, q.cn, q.out, &result, &error)) < 0) {
			if (error == NULL)
				error = ep_strdup(strerror(-r));
		} else {
			ep_notice("issued a client certificate for \"%s\" into %s", q.cn, q.out);
		}
	} else {
		error = ep_strdup("CERTS_REQ: expected op \"rotate\", or \"issue\" with cn and out");
	}
	m.ok = error == NULL;
	m.error = error;
	result_json = result != NULL ? cJSON_Parse(result) : NULL;
	if (cJSON_IsObject(result_json)) /* what CERTS_REPLY carries; anything else is dropped */
		m.result = result_json;
	send_msg(EP_MSG_CERTS_REPLY, ep_msg_certs_reply_encode(&m));
	cJSON_Delete(result_json);
	free(error);
	free(result);
	if (r == 0)
		send_status(); /* show reflects it at once */
}

/* POLICY: a reload changed only the tenant's limits; the running backend takes them. */
static void apply_policy(const cJSON *payload)
{
	const struct ep_backend_ops *ops = W.plugin.plugin ? W.plugin.plugin->ops : NULL;
	struct ep_msg_policy m;
	const char *error = NULL;
	int r;

	if (ep_msg_policy_parse(payload, &m) < 0) {
		ep_err("the supervisor sent a malformed POLICY");
		worker_exit(EP_EXIT_PROTOCOL);
		return;
	}
	free(W.policy_json);
	W.policy_json = cJSON_PrintUnformatted(m.policy);
	W.info.policy_json = W.policy_json;
	W.certs_info.policy_json = W.policy_json; /* a copy of info: no pointer to the old text */
	if (!W.plugin_started || W.exiting)
		return; /* it reads the new policy when it starts */
	if (ops->policy_changed == NULL) {
		ep_notice("backend %s takes a new policy only when it starts: restarting with it",
			  W.backend);
		worker_exit(EP_EXIT_UNAVAILABLE);
		return;
	}
	r = ops->policy_changed(W.plugin_state, &error);
	if (r < 0) {
		ep_err("backend %s cannot apply the new policy (%s): restarting with it", W.backend,
		       error ? error : strerror(-r));
		worker_exit(EP_EXIT_UNAVAILABLE);
		return;
	}
	ep_notice("new policy applied without a restart: %s", W.policy_json);
	send_status(); /* show reflects it at once */
}

static int on_message(void *ctx, uint8_t type, cJSON *payload)
{
	switch (type) {
	case EP_MSG_CONFIGURE:
		apply_configure(payload);
		break;
	case EP_MSG_STOP: {
		struct ep_msg_stop m = { .graceful = 1 };

		if (ep_msg_stop_parse(payload, &m) < 0)
			m.graceful = 1; /* a malformed flag: the gentle way */
		ep_info("STOP from the supervisor%s", m.graceful ? "" : " (at once, not graceful)");
		worker_exit(EP_EXIT_OK);
		if (!m.graceful)
			worker_exit(EP_EXIT_OK); /* asked twice: the backend stops without draining */
		break;
	}
	case EP_MSG_STATUS_REQ:
		send_status();
		break;
	case EP_MSG_CERTS_REQ:
		handle_certs_req(payload);
		break;
	case EP_MSG_POLICY:
		apply_policy(payload);
		break;
	default:
		ep_warn("unexpected message %s from the supervisor", ep_msg_type_name(type));
		break;
	}
	/*
	 * Always 0: the reader (W.reader) lives until main() returns, and a
	 * non-zero value would leave this frame in it, to be delivered again
	 * with the next bytes.  Frames after STOP are still read: a second STOP
	 * (not graceful) makes the backend hurry.
	 */
	return 0;
}

static void ipc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];

	*buf = uv_buf_init(slab, sizeof(slab));
}

static void on_ipc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	const char *why = NULL;

	if (n == 0)
		return;
	if (n < 0) {
		/* the supervisor is gone: nobody will restart or stop us, so stop now */
		if (!W.exiting)
			ep_warn("the supervisor's end of the IPC socket closed: stopping");
		W.ipc_open = 0;
		uv_close((uv_handle_t *)&W.ipc, NULL);
		worker_exit(W.exiting ? W.exit_code : EP_EXIT_OK);
		return;
	}
	if (ep_frame_reader_feed(&W.reader, buf->base, (size_t)n, on_message, NULL, &why) < 0) {
		ep_err("protocol error from the supervisor: %s", why);
		worker_exit(EP_EXIT_PROTOCOL);
	}
}

/* ---- entry points ------------------------------------------------------------------------------------------ */

static int exec_child(int argc, char **argv)
{
	/* argv: --exec-child PPID FILE -- ARGV0 ARGS... */
	long ppid;

	if (argc < 6 || strcmp(argv[4], "--") != 0)
		return EP_EXIT_USAGE;
	ppid = strtol(argv[2], NULL, 10);
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if ((long)getppid() != ppid)
		_exit(EP_EXIT_UNAVAILABLE); /* the worker died before we could ask */
	execvp(argv[3], argv + 5);
	fprintf(stderr, "etcdproxy-worker: cannot execute %s: %s\n", argv[3], strerror(errno));
	_exit(127);
}

static void usage(FILE *out)
{
	fprintf(out, "Usage: etcdproxy-worker --tenant NAME   (started by etcdproxyd)\n"
		     "       etcdproxy-worker --standalone [-c GLOBAL.json] TENANT.json\n"
		     "       etcdproxy-worker --describe-options PLUGIN_DIR backend|certs NAME\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "tenant", required_argument, NULL, 't' },
		{ "standalone", no_argument, NULL, 'S' },
		{ "config", required_argument, NULL, 'c' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *config = EP_DEFAULT_CONFIG;
	const char *log_env = getenv(EP_ENV_LOG);
	ssize_t len;
	int opt;

	if (argc >= 2 && strcmp(argv[1], "--exec-child") == 0)
		return exec_child(argc, argv);
	if (argc == 5 && strcmp(argv[1], "--describe-options") == 0)
		return describe_options(argv[2], argv[3], argv[4]);

	while ((opt = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 't': W.tenant_hint = optarg; break;
		case 'S': W.standalone = 1; break;
		case 'c': config = optarg; break;
		case 'V': printf("etcdproxy-worker %s (plugin ABI %u)\n", PACKAGE_VERSION, EP_PLUGIN_ABI_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return EP_EXIT_USAGE;
		}
	}
	if (W.standalone ? optind != argc - 1 : optind != argc) {
		usage(stderr);
		return EP_EXIT_USAGE;
	}
	len = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
	if (len < 0) {
		fprintf(stderr, "etcdproxy-worker: /proc/self/exe: %s\n", strerror(errno));
		return EP_EXIT_SOFTWARE;
	}
	self_exe[len] = '\0';
	ep_log_init("etcdproxy-worker", W.tenant_hint,
		    log_env && strcmp(log_env, "syslog") == 0 ? EP_LOG_TARGET_SYSLOG
							      : EP_LOG_TARGET_STDERR,
		    EP_LOG_INFO);
	signal(SIGPIPE, SIG_IGN);

	W.loop = uv_default_loop();
	W.healthy = -1;
	ep_frame_reader_init(&W.reader);
	uv_signal_init(W.loop, &W.sigterm);
	uv_signal_init(W.loop, &W.sigint);
	uv_signal_start(&W.sigterm, on_signal, SIGTERM);
	uv_signal_start(&W.sigint, on_signal, SIGINT);
	uv_timer_init(W.loop, &W.report);

	if (W.standalone) {
		struct ep_global_config *g;
		struct ep_tenant_config *t;
		char *error, *name;
		cJSON *payload;

		if (ep_global_config_load(config, &g, &error) < 0 ||
		    ep_tenant_config_load(argv[optind], g, &t, &name, &error) < 0) {
			ep_err("%s", error);
			return EP_EXIT_CONFIG;
		}
		free(name);
		payload = ep_worker_config_build(g, t);
		ep_tenant_config_free(t);
		ep_global_config_free(g);
		apply_configure(payload);
		cJSON_Delete(payload);
	} else {
		const char *sup = getenv(EP_ENV_SUPERVISOR_PID);
		struct ep_msg_hello hello;

		/* the supervisor may die by SIGKILL: we want to hear of it at once */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (sup != NULL && strtol(sup, NULL, 10) != (long)getppid()) {
			fprintf(stderr, "etcdproxy-worker: the supervisor is already gone\n");
			return EP_EXIT_UNAVAILABLE;
		}
		/* children (etcd grpc-proxy) must not inherit the IPC socket */
		if (fcntl(EP_IPC_FD, F_SETFD, FD_CLOEXEC) < 0) {
			fprintf(stderr, "etcdproxy-worker: no IPC socket on fd %d: run by etcdproxyd, "
					"or use --standalone\n", EP_IPC_FD);
			return EP_EXIT_USAGE;
		}
		uv_pipe_init(W.loop, &W.ipc, 1);
		if (uv_pipe_open(&W.ipc, EP_IPC_FD) < 0) {
			fprintf(stderr, "etcdproxy-worker: fd %d is not a socket\n", EP_IPC_FD);
			return EP_EXIT_USAGE;
		}
		W.ipc_open = 1;
		uv_read_start((uv_stream_t *)&W.ipc, ipc_alloc, on_ipc_read);
		hello = (struct ep_msg_hello){ .pid = getpid(), .version = PACKAGE_VERSION,
					       .abi = EP_PLUGIN_ABI_VERSION };
		send_msg(EP_MSG_HELLO, ep_msg_hello_encode(&hello));
	}

	uv_run(W.loop, UV_RUN_DEFAULT);

	if (W.plugin_inited)
		W.plugin.plugin->fini(W.plugin_state);
	ep_plugin_unload(&W.plugin);
	if (W.certs_inited)
		W.certs.plugin->fini(W.certs_state);
	ep_plugin_unload(&W.certs);
	if (W.runtime_dir != NULL)
		rmdir(W.runtime_dir); /* plugins remove what they created in it */
	ep_frame_reader_free(&W.reader);
	free_config();
	uv_loop_close(W.loop);
	ep_info("exiting with code %d", W.exit_code);
	return W.exit_code;
}
