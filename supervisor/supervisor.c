/*
 * etcdproxyd: one worker process per tenant, restarted with backoff, reloaded
 * by diffing the tenant set, stopped gracefully.  Signal handlers only record
 * (uv_signal_t); everything happens on the one loop.
 */
#include "build-config.h"

#include <errno.h>
#include <getopt.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define EP_LOG_SUBSYS "supervisor"
#include "json.h"
#include "log.h"
#include "messages.h"
#include "options.h"
#include "sdnotify.h"
#include "kube-source.h"
#include "metrics.h"
#include "purge.h"
#include "kubeconfig.h"
#include "supervisor.h"
#include "util.h"

extern char **environ;

static void tenant_spawn(struct tenant *t);
static void on_start_timeout(uv_timer_t *timer);
static void on_restart_timer(uv_timer_t *timer);
static void tenant_stop(struct tenant *t);
static void tenant_hurry(struct tenant *t);
static void tenant_release(struct tenant *t);
static void maybe_finish_shutdown(struct supervisor *sv);
static void notify_status(struct supervisor *sv);

const char *tenant_state_name(enum tenant_state s)
{
	switch (s) {
	case TENANT_STOPPED: return "stopped";
	case TENANT_STARTING: return "starting";
	case TENANT_READY: return "ready";
	case TENANT_UNHEALTHY: return "unhealthy";
	case TENANT_BACKOFF: return "backoff";
	case TENANT_FAILED: return "failed";
	case TENANT_STOPPING: return "stopping";
	}
	return "?";
}

static void set_str(char **dst, const char *src)
{
	free(*dst);
	*dst = ep_strdup(src);
}

/* Record why the tenant is not (or was not) serving, and when: msg is taken over. */
static void tenant_error(struct tenant *t, char *msg)
{
	free(t->last_error);
	t->last_error = msg;
	t->last_error_time = time(NULL);
}

static void tenant_close_socket(struct tenant *t);

static void tenant_set_state(struct tenant *t, enum tenant_state s)
{
	if (t->state == s)
		return;
	/* a tenant that will not be retried refuses clients instead of keeping them waiting */
	if (s == TENANT_FAILED)
		tenant_close_socket(t);
	ep_debug("tenant %s: %s -> %s", t->name, tenant_state_name(t->state), tenant_state_name(s));
	t->state = s;
	notify_status(t->sv);
	if (t->from_cluster)
		kube_source_poke(t->sv->kube);
}

/* ---- tenant objects ---------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
	struct tenant *t = h->data;

	if (--t->handles == 0) {
		ep_frame_reader_free(&t->reader);
		free(t->name);
		free(t->file);
		free(t->backend);
		free(t->listen);
		free(t->prefix);
		free(t->payload);
		free(t->config_error);
		free(t->last_error);
		free(t->fatal_reason);
		free(t->endpoint);
		cJSON_Delete(t->counters);
		cJSON_Delete(t->counters_live);
		cJSON_Delete(t->counters_base);
		cJSON_Delete(t->certificates);
		free(t);
	}
}

static struct tenant *tenant_new(struct supervisor *sv, const struct ep_tenant_entry *e)
{
	struct tenant *t = ep_malloc0(sizeof(*t));
	const struct ep_global_config *g = sv->global;

	t->sv = sv;
	t->name = ep_strdup(e->name);
	t->file = ep_strdup(e->file);
	t->from_cluster = e->from_cluster;
	if (e->config != NULL) {
		t->backend = ep_strdup(e->config->backend);
		t->listen = ep_strdup(e->config->listen);
		t->prefix = ep_strdup(e->config->prefix);
		t->payload = ep_strdup(e->fingerprint);
	} else {
		t->config_error = ep_strdup(e->error);
		tenant_error(t, ep_strdup(e->error));
	}
	t->listen_fd = -1;
	ep_frame_reader_init(&t->reader);
	uv_timer_init(sv->loop, &t->timer);
	t->timer.data = t;
	t->handles = 1;
	ep_backoff_init(&t->backoff, g->backoff_initial_ms, g->backoff_max_ms, g->max_failures);
	t->state = TENANT_STOPPED;
	return t;
}

/*
 * A tenant's listening socket in systemd's file descriptor store: its name,
 * "ep-TENANT@LISTEN" with ':' (which FDNAME may not hold) as '_'.
 */
static char *fd_name(const struct tenant *t)
{
	char *name = ep_strdup_printf("ep-%s@%s", t->name, t->listen);

	for (char *p = name; *p; p++)
		if (*p == ':' || *p < 0x21 || *p > 0x7e)
			*p = '_';
	if (strlen(name) > 255)
		name[255] = '\0';
	return name;
}

/* Kept by systemd (FileDescriptorStoreMax): a restart of etcdproxyd gets it back. */
static void fd_store(const struct tenant *t)
{
	char *name = fd_name(t), *msg = ep_strdup_printf("FDSTORE=1\nFDNAME=%s", name);
	int r = ep_sd_notify_fd(msg, t->listen_fd);

	if (r < 0)
		ep_warn("tenant %s: cannot hand its listening socket to systemd's store: %s", t->name,
			strerror(-r));
	free(msg);
	free(name);
}

/* The socket a previous etcdproxyd bound for this tenant, kept by systemd; or -1. */
static int fd_take_inherited(struct supervisor *sv, const struct tenant *t)
{
	char *name = fd_name(t);
	int fd = -1;

	for (size_t i = 0; i < sv->n_inherited && fd < 0; i++) {
		if (sv->inherited[i].fd >= 0 && strcmp(sv->inherited[i].name, name) == 0) {
			fd = sv->inherited[i].fd;
			sv->inherited[i].fd = -1;
		}
	}
	free(name);
	return fd;
}

/* Close the listening socket this tenant's workers were given: clients are refused from now on. */
static void tenant_close_socket(struct tenant *t)
{
	if (t->listen_fd < 0)
		return;
	if (!t->sv->shutting_down) {
		/* gone for good (a shutdown keeps the store for the next start) */
		char *name = fd_name(t), *msg = ep_strdup_printf("FDSTOREREMOVE=1\nFDNAME=%s", name);

		ep_sd_notify(msg);
		free(msg);
		free(name);
	}
	close(t->listen_fd);
	t->listen_fd = -1;
	if (strncmp(t->listen, "unix:", 5) == 0)
		unlink(t->listen + 5);
}

/* Unlink from the list and close its handles; freed when the last one is closed. */
static void tenant_release(struct tenant *t)
{
	struct tenant **pp;

	tenant_close_socket(t);
	for (pp = &t->sv->tenants; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	}
	if (t->successor != NULL)
		tenant_release(t->successor);
	uv_close((uv_handle_t *)&t->timer, on_handle_closed);
}

static void tenant_append(struct supervisor *sv, struct tenant *t)
{
	struct tenant **pp = &sv->tenants;

	while (*pp != NULL)
		pp = &(*pp)->next;
	t->next = NULL;
	*pp = t;
}

/* Start a tenant that was just added (or whose file has an error). */
static void tenant_activate(struct tenant *t)
{
	if (t->config_error != NULL) {
		ep_err("tenant %s not started: %s", t->name, t->config_error);
		tenant_set_state(t, TENANT_FAILED);
		return;
	}
	tenant_spawn(t);
}

struct tenant *supervisor_find(struct supervisor *sv, const char *name)
{
	for (struct tenant *t = sv->tenants; t != NULL; t = t->next)
		if (strcmp(t->name, name) == 0)
			return t;
	return NULL;
}

/* ---- IPC with a worker ------------------------------------------------------------------ */

static void send_configure(struct tenant *t)
{
	cJSON *payload = cJSON_Parse(t->payload);

	/* not part of the fingerprint: a new log level must not restart every tenant */
	cJSON_AddNumberToObject(payload, "generation", (double)t->sv->generation);
	if (t->listen_fd >= 0)
		cJSON_AddNumberToObject(payload, "listen_fd", EP_LISTEN_FD);
	cJSON_AddStringToObject(payload, "log_level", ep_log_level_name(t->sv->global->log_level));
	if (ep_ipc_send((uv_stream_t *)&t->ipc, EP_MSG_CONFIGURE, payload) < 0)
		ep_warn("tenant %s: cannot send CONFIGURE", t->name);
	else
		t->configured = 1;
	cJSON_Delete(payload);
}

static const char *sv_worker_path(const struct tenant *t)
{
	return t->sv->global->worker_path;
}

/* A message of the wrong shape from a worker: kill it, as for a framing error. */
static int bad_message(struct tenant *t, uint8_t type)
{
	ep_err("tenant %s: worker pid %ld sent a malformed %s; killing it", t->name, (long)t->pid,
	       ep_msg_type_name(type));
	free(t->fatal_reason);
	t->fatal_reason = ep_strdup_printf("IPC protocol error: a malformed %s",
					   ep_msg_type_name(type));
	tenant_error(t, ep_strdup(t->fatal_reason));
	if (t->process_alive)
		uv_process_kill(&t->process, SIGKILL);
	return 0;
}

static int on_worker_message(void *ctx, uint8_t type, cJSON *payload)
{
	struct tenant *t = ctx;

	ep_debug("tenant %s: worker sent %s", t->name, ep_msg_type_name(type));
	switch (type) {
	case EP_MSG_HELLO: {
		struct ep_msg_hello m;

		if (ep_msg_hello_parse(payload, &m) < 0)
			return bad_message(t, type);
		if (t->stop_phase == 0)
			uv_timer_stop(&t->timer); /* the start timeout: it said HELLO */
		if (m.version == NULL || strcmp(m.version, PACKAGE_VERSION) != 0)
			ep_warn("tenant %s: worker %s is version %s, the supervisor %s: restart etcdproxyd "
				"after an upgrade", t->name, sv_worker_path(t),
				m.version ? m.version : "unknown", PACKAGE_VERSION);
		send_configure(t);
		break;
	}
	case EP_MSG_READY: {
		struct ep_msg_ready m;

		if (ep_msg_ready_parse(payload, &m) < 0)
			return bad_message(t, type);
		set_str(&t->endpoint, m.endpoint != NULL ? m.endpoint : t->listen);
		t->healthy = 1;
		if (t->ready_ms == 0)
			t->ready_ms = ep_now_ms();
		if (t->state == TENANT_STARTING || t->state == TENANT_UNHEALTHY) {
			ep_info("tenant %s ready on %s (worker pid %ld)", t->name, t->endpoint,
				(long)t->pid);
			tenant_set_state(t, TENANT_READY);
		}
		break;
	}
	case EP_MSG_HEALTH: {
		struct ep_msg_health m;

		if (ep_msg_health_parse(payload, &m) < 0)
			return bad_message(t, type);
		t->healthy = m.healthy;
		if (t->healthy && t->state == TENANT_UNHEALTHY) {
			ep_notice("tenant %s healthy again", t->name);
			tenant_set_state(t, TENANT_READY);
		} else if (!t->healthy && t->state == TENANT_READY) {
			ep_warn("tenant %s unhealthy: %s", t->name, m.reason ? m.reason : "no reason given");
			tenant_error(t, ep_strdup(m.reason));
			tenant_set_state(t, TENANT_UNHEALTHY);
		} else if (!t->healthy && m.reason != NULL) {
			tenant_error(t, ep_strdup(m.reason));
		}
		break;
	}
	case EP_MSG_FATAL: {
		struct ep_msg_fatal m;

		if (ep_msg_fatal_parse(payload, &m) < 0)
			return bad_message(t, type);
		set_str(&t->fatal_reason, m.reason != NULL ? m.reason : "no reason given");
		t->fatal_config = m.config;
		ep_err("tenant %s: worker: %s", t->name, t->fatal_reason);
		break;
	}
	case EP_MSG_STATUS: {
		struct ep_msg_status m;

		if (ep_msg_status_parse(payload, &m) < 0)
			return bad_message(t, type);
		if (m.counters != NULL) {
			cJSON_Delete(t->counters);
			t->counters = cJSON_Duplicate(m.counters, 1);
			cJSON_Delete(t->counters_live);
			t->counters_live = cJSON_Duplicate(m.counters, 1);
		}
		if (m.certificates != NULL) {
			cJSON_Delete(t->certificates);
			t->certificates = cJSON_Duplicate(m.certificates, 1);
		}
		break;
	}
	case EP_MSG_CERTS_REPLY: {
		struct ep_msg_certs_reply m;

		if (ep_msg_certs_reply_parse(payload, &m) < 0)
			return bad_message(t, type);
		control_certs_reply(t->sv, t->name, &m);
		break;
	}
	default:
		ep_warn("tenant %s: worker sent unexpected message type %u", t->name, type);
		break;
	}
	return 0;
}

static void ipc_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[65536];

	(void)h;
	(void)suggested;
	*buf = uv_buf_init(slab, sizeof(slab));
}

static void ipc_close(struct tenant *t)
{
	if (t->ipc_open) {
		t->ipc_open = 0;
		uv_close((uv_handle_t *)&t->ipc, on_handle_closed);
	}
}

static void on_ipc_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct tenant *t = s->data;
	const char *why = NULL;

	if (n == 0)
		return;
	if (n < 0) {
		/* EOF: the worker is exiting; its exit callback does the rest */
		ipc_close(t);
		return;
	}
	if (ep_frame_reader_feed(&t->reader, buf->base, (size_t)n, on_worker_message, t, &why) < 0) {
		ep_err("tenant %s: protocol error from worker pid %ld: %s; killing it", t->name,
		       (long)t->pid, why);
		/* on_worker_exit() makes last_error "killed by signal 9 (Killed): " + this */
		free(t->fatal_reason);
		t->fatal_reason = ep_strdup_printf("IPC protocol error: %s", why);
		tenant_error(t, ep_strdup(t->fatal_reason));
		ipc_close(t);
		if (t->process_alive)
			uv_process_kill(&t->process, SIGKILL);
	}
}

/*
 * The exit callback may run before the last frames were read (FATAL with
 * its reason, typically): read what the socket still holds before closing it.
 */
static void ipc_drain(struct tenant *t)
{
	char buf[8192];
	const char *why = NULL;
	uv_os_fd_t fd;
	ssize_t n;
	int r;

	if (!t->ipc_open || uv_fileno((uv_handle_t *)&t->ipc, &fd) < 0)
		return;
	while ((n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT)) > 0) {
		r = ep_frame_reader_feed(&t->reader, buf, (size_t)n, on_worker_message, t, &why);
		if (r < 0) {
			if (t->fatal_reason == NULL)
				t->fatal_reason = ep_strdup_printf("IPC protocol error: %s", why);
			break;
		}
	}
}

/* ---- worker processes --------------------------------------------------------------- */

/*
 * A tenant's worker is gone after a stop that was asked for: hand over to the
 * successor (changed by reload), free it (removed), spawn it again (restart),
 * or leave it stopped.
 */
static void tenant_after_stop(struct tenant *t)
{
	struct supervisor *sv = t->sv;

	if (t->successor != NULL) {
		struct tenant *succ = t->successor;
		struct tenant **pp;

		t->successor = NULL;
		/* the new configuration takes this one's place in the list */
		for (pp = &sv->tenants; *pp != t; pp = &(*pp)->next)
			;
		succ->next = t->next;
		*pp = succ;
		t->next = NULL;
		succ->restarts = t->restarts;
		succ->counters_base = t->counters_base;
		t->counters_base = NULL;
		/* same address: hand the socket over, so that no client is refused in between */
		if (t->listen_fd >= 0 && succ->listen != NULL && strcmp(t->listen, succ->listen) == 0 &&
		    ep_backend_takes_socket(succ->backend)) {
			succ->listen_fd = t->listen_fd;
			t->listen_fd = -1;
		}
		tenant_close_socket(t);
		uv_close((uv_handle_t *)&t->timer, on_handle_closed);
		if (!sv->shutting_down)
			tenant_activate(succ);
		else
			tenant_release(succ);
	} else if (t->remove_on_exit || sv->shutting_down) {
		tenant_release(t);
	} else if (t->restart_on_exit) {
		/*
		 * Spawn from the timer: the process and IPC handles of the old
		 * worker are still closing and cannot be initialised again yet.
		 */
		t->restart_on_exit = 0;
		tenant_set_state(t, TENANT_BACKOFF);
		uv_timer_start(&t->timer, on_restart_timer, 0, 0);
	} else {
		tenant_set_state(t, TENANT_STOPPED);
	}
	maybe_finish_shutdown(sv);
	notify_status(sv);
}

static void on_restart_timer(uv_timer_t *timer)
{
	struct tenant *t = timer->data;

	if (t->state == TENANT_BACKOFF)
		tenant_spawn(t);
}

static void on_worker_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
	struct tenant *t = p->data;
	struct supervisor *sv = t->sv;
	char how[160];
	uint64_t now = ep_now_ms();
	int was_stable;

	t->process_alive = 0;
	uv_close((uv_handle_t *)&t->process, on_handle_closed);
	ipc_drain(t);
	ipc_close(t);
	control_tenant_gone(sv, t->name);
	/* what a dead worker used is not shown as current; the next one reports its own */
	cJSON_Delete(t->certificates);
	t->certificates = NULL;
	/* its counts stay in the totals: the next worker counts from zero */
	if (t->counters_live != NULL) {
		if (t->counters_base == NULL)
			t->counters_base = cJSON_CreateObject();
		metrics_json_add(t->counters_base, t->counters_live);
		cJSON_Delete(t->counters_live);
		t->counters_live = NULL;
	}
	uv_timer_stop(&t->timer);
	ep_exit_describe(exit_status, term_signal, how, sizeof(how));

	if (t->state == TENANT_STOPPING) {
		ep_info("tenant %s: worker pid %ld %s", t->name, (long)t->pid, how);
		t->pid = 0;
		t->stop_phase = 0;
		tenant_after_stop(t);
		return;
	}

	/* an exit nobody asked for */
	if (t->fatal_reason != NULL)
		tenant_error(t, ep_strdup_printf("%s: %s", how, t->fatal_reason));
	else
		tenant_error(t, ep_strdup(how));
	ep_warn("tenant %s: worker pid %ld %s", t->name, (long)t->pid, t->last_error);
	t->pid = 0;

	if ((exit_status == EP_EXIT_CONFIG && term_signal == 0) || t->fatal_config) {
		ep_err("tenant %s failed: fatal configuration error, not retried until its "
		       "configuration changes (or etcdproxyctl restart %s)",
		       t->name, t->name);
		tenant_set_state(t, TENANT_FAILED);
		return;
	}
	was_stable = t->ready_ms != 0 && now - t->ready_ms >= sv->global->stable_after_ms;
	if (was_stable)
		ep_backoff_reset(&t->backoff);
	int64_t delay = ep_backoff_fail(&t->backoff);
	if (delay < 0) {
		char *msg = ep_strdup_printf("gave up after %u consecutive failures; last: %s",
					     t->backoff.failures, t->last_error);

		tenant_error(t, msg);
		ep_err("tenant %s failed: %s (etcdproxyctl restart %s tries again)", t->name, msg,
		       t->name);
		tenant_set_state(t, TENANT_FAILED);
		return;
	}
	ep_info("tenant %s: restarting in %lld ms (failure %u of at most %u)", t->name,
		(long long)delay, t->backoff.failures, t->backoff.max_failures - 1);
	tenant_set_state(t, TENANT_BACKOFF);
	uv_timer_start(&t->timer, on_restart_timer, (uint64_t)delay, 0);
}

/* Something kept the worker from starting: record why and try again later. */
static void spawn_failed(struct tenant *t, char *msg)
{
	int64_t delay;

	ep_err("tenant %s: %s", t->name, msg);
	tenant_error(t, msg);
	delay = ep_backoff_fail(&t->backoff);
	if (delay < 0) {
		tenant_set_state(t, TENANT_FAILED);
	} else {
		tenant_set_state(t, TENANT_BACKOFF);
		uv_timer_start(&t->timer, on_restart_timer, (uint64_t)delay, 0);
	}
}

static void tenant_spawn(struct tenant *t)
{
	struct supervisor *sv = t->sv;
	uv_process_options_t opts;
	uv_stdio_container_t stdio[EP_LISTEN_FD + 1];
	char *args[4];
	char **env;
	size_t n_env = 0, k = 0;
	char *error;
	int r;

	/*
	 * Bound once and kept across worker restarts, and across restarts of
	 * etcdproxyd itself through systemd's file descriptor store: clients
	 * wait in the backlog meanwhile.
	 */
	if (ep_backend_takes_socket(t->backend) && t->listen_fd < 0) {
		t->listen_fd = fd_take_inherited(sv, t);
		if (t->listen_fd >= 0) {
			ep_notice("tenant %s: listening on %s with the socket systemd kept across the "
				  "restart (no connection was refused meanwhile)", t->name, t->listen);
		} else if (ep_listen_bind(t->listen, &t->listen_fd, &error) < 0) {
			spawn_failed(t, error);
			return;
		}
		fd_store(t);
	}

	for (char **e = environ; *e != NULL; e++)
		n_env++;
	env = ep_malloc0(sizeof(char *) * (n_env + 4));
	for (char **e = environ; *e != NULL; e++) {
		if (strncmp(*e, "ETCDPROXY_", 10) == 0 || strncmp(*e, "NOTIFY_SOCKET=", 14) == 0 ||
		    strncmp(*e, "WATCHDOG_", 9) == 0 || strncmp(*e, "LISTEN_", 7) == 0)
			continue; /* systemd's variables are the supervisor's, not the workers' */
		env[k++] = *e;
	}
	env[k++] = ep_strdup_printf(EP_ENV_TENANT "=%s", t->name);
	env[k++] = ep_strdup_printf(EP_ENV_SUPERVISOR_PID "=%ld", (long)getpid());
	env[k++] = ep_strdup_printf(EP_ENV_LOG "=%s",
				    ep_log_get_target() == EP_LOG_TARGET_SYSLOG ? "syslog" : "stderr");
	env[k] = NULL;

	args[0] = sv->global->worker_path;
	args[1] = "--tenant";
	args[2] = t->name;
	args[3] = NULL;

	uv_pipe_init(sv->loop, &t->ipc, 1);
	t->ipc.data = t;
	t->ipc_open = 1;
	t->configured = 0;
	t->handles++;
	ep_frame_reader_free(&t->reader);
	ep_frame_reader_init(&t->reader);

	memset(&opts, 0, sizeof(opts));
	memset(stdio, 0, sizeof(stdio));
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = UV_INHERIT_FD;
	stdio[1].data.fd = 1;
	stdio[2].flags = UV_INHERIT_FD;
	stdio[2].data.fd = 2;
	stdio[EP_IPC_FD].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
	stdio[EP_IPC_FD].data.stream = (uv_stream_t *)&t->ipc;
	stdio[EP_LISTEN_FD].flags = UV_IGNORE;
	if (t->listen_fd >= 0) {
		stdio[EP_LISTEN_FD].flags = UV_INHERIT_FD;
		stdio[EP_LISTEN_FD].data.fd = t->listen_fd;
	}
	opts.file = sv->global->worker_path;
	opts.args = args;
	opts.env = env;
	opts.stdio = stdio;
	opts.stdio_count = t->listen_fd >= 0 ? EP_LISTEN_FD + 1 : EP_IPC_FD + 1;
	opts.exit_cb = on_worker_exit;
	/* own session: a ^C on the supervisor's terminal must not hit the workers directly */
	opts.flags = UV_PROCESS_DETACHED;

	t->process.data = t;
	free(t->fatal_reason);
	t->fatal_reason = NULL;
	t->fatal_config = 0;
	t->ready_ms = 0;
	t->healthy = 0;
	r = uv_spawn(sv->loop, &t->process, &opts);
	for (size_t i = k - 3; i < k; i++)
		free(env[i]);
	free(env);
	if (r < 0) {
		ipc_close(t);
		t->handles++; /* uv_spawn initialised the handle even though it failed */
		uv_close((uv_handle_t *)&t->process, on_handle_closed);
		spawn_failed(t, ep_strdup_printf("cannot start worker %s: %s",
						 sv->global->worker_path, uv_strerror(r)));
		return;
	}
	t->handles++;
	t->process_alive = 1;
	t->pid = t->process.pid;
	t->started_ms = ep_now_ms();
	if (t->spawns++ > 0)
		t->restarts++;
	uv_read_start((uv_stream_t *)&t->ipc, ipc_alloc, on_ipc_read);
	uv_timer_start(&t->timer, on_start_timeout, sv->global->start_timeout_ms, 0);
	ep_info("tenant %s: started worker pid %ld (backend %s, listen %s)", t->name, (long)t->pid,
		t->backend, t->listen);
	tenant_set_state(t, TENANT_STARTING);
}

/* A worker that never says HELLO (hung in a plugin's constructor, say) is killed. */
static void on_start_timeout(uv_timer_t *timer)
{
	struct tenant *t = timer->data;
	char took[32];

	if (!t->process_alive || t->configured || t->stop_phase != 0)
		return;
	ep_format_duration_ms(t->sv->global->start_timeout_ms, took, sizeof(took));
	free(t->fatal_reason);
	t->fatal_reason = ep_strdup_printf("the worker sent no HELLO within %s "
					   "(supervisor.start_timeout)", took);
	ep_err("tenant %s: worker pid %ld sent no HELLO within %s (supervisor.start_timeout); "
	       "killing it", t->name, (long)t->pid, took);
	tenant_error(t, ep_strdup(t->fatal_reason));
	uv_process_kill(&t->process, SIGKILL);
}

static void on_stop_timer(uv_timer_t *timer)
{
	struct tenant *t = timer->data;
	uint64_t half = t->sv->global->stop_timeout_ms / 2;

	if (!t->process_alive)
		return;
	if (t->stop_phase == 1) {
		ep_warn("tenant %s: worker pid %ld still running after STOP; sending SIGTERM", t->name,
			(long)t->pid);
		uv_process_kill(&t->process, SIGTERM);
		t->stop_phase = 2;
		uv_timer_start(&t->timer, on_stop_timer, half > 0 ? half : 1, 0);
	} else {
		ep_err("tenant %s: worker pid %ld ignored SIGTERM; sending SIGKILL", t->name,
		       (long)t->pid);
		uv_process_kill(&t->process, SIGKILL);
		t->stop_phase = 3;
	}
}

/*
 * Drain, then escalate: STOP over IPC; SIGTERM after half the stop timeout;
 * SIGKILL after the other half.
 */
static void tenant_stop(struct tenant *t)
{
	cJSON *p;

	/*
	 * Already on its way out (a second reload, a restart, shutdown): the
	 * timer is its escalation to SIGTERM and SIGKILL and must keep running.
	 */
	if (t->process_alive && t->stop_phase > 0)
		return;
	uv_timer_stop(&t->timer);
	if (!t->process_alive) {
		/* nothing runs (backoff, failed, stopped): the stop is complete at once */
		tenant_after_stop(t);
		return;
	}
	tenant_set_state(t, TENANT_STOPPING);
	t->stop_phase = 1;
	p = ep_msg_stop_encode(&(struct ep_msg_stop){ .graceful = 1 });
	if (!t->ipc_open || ep_ipc_send((uv_stream_t *)&t->ipc, EP_MSG_STOP, p) < 0) {
		uv_process_kill(&t->process, SIGTERM);
		t->stop_phase = 2;
	}
	cJSON_Delete(p);
	uv_timer_start(&t->timer, on_stop_timer,
		       t->sv->global->stop_timeout_ms / 2 ? t->sv->global->stop_timeout_ms / 2 : 1, 0);
}

/* A stopping worker is told to stop without draining (STOP graceful false). */
static void tenant_hurry(struct tenant *t)
{
	struct ep_msg_stop m = { .graceful = 0 };
	cJSON *p;

	if (!t->process_alive || !t->ipc_open || t->stop_phase != 1)
		return;
	p = ep_msg_stop_encode(&m);
	ep_info("tenant %s: telling worker pid %ld to stop at once", t->name, (long)t->pid);
	if (ep_ipc_send((uv_stream_t *)&t->ipc, EP_MSG_STOP, p) < 0)
		uv_process_kill(&t->process, SIGTERM);
	cJSON_Delete(p);
}

/* ---- status -------------------------------------------------------------------------- */

void supervisor_counts(const struct supervisor *sv, unsigned *total, unsigned *ready,
		       unsigned *failed)
{
	*total = *ready = *failed = 0;
	for (const struct tenant *t = sv->tenants; t != NULL; t = t->next) {
		(*total)++;
		if (t->state == TENANT_READY)
			(*ready)++;
		else if (t->state == TENANT_FAILED)
			(*failed)++;
	}
}

static void notify_status(struct supervisor *sv)
{
	unsigned total, ready, failed;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	supervisor_counts(sv, &total, &ready, &failed);
	ep_sd_notifyf("STATUS=%u tenants: %u ready, %u failed, %u other", total, ready, failed,
		      total - ready - failed);
}

static void add_opt_string(cJSON *o, const char *key, const char *value)
{
	if (value != NULL)
		cJSON_AddStringToObject(o, key, value);
	else
		cJSON_AddNullToObject(o, key);
}

cJSON *tenant_to_json(const struct tenant *t, int detailed)
{
	cJSON *o = cJSON_CreateObject();
	uint64_t now = ep_now_ms();
	const struct tenant *shown = t;

	cJSON_AddStringToObject(o, "name", t->name);
	cJSON_AddStringToObject(o, "state", tenant_state_name(t->state));
	add_opt_string(o, "backend", t->backend);
	add_opt_string(o, "listen", t->listen);
	add_opt_string(o, "prefix", t->prefix);
	if (t->pid > 0)
		cJSON_AddNumberToObject(o, "pid", (double)t->pid);
	else
		cJSON_AddNullToObject(o, "pid");
	cJSON_AddNumberToObject(o, "restarts", t->restarts);
	add_opt_string(o, "last_error", t->last_error);
	if (t->last_error != NULL) {
		char when[32];
		time_t wall = time(NULL);

		ep_time_format((int64_t)t->last_error_time, when, sizeof(when));
		cJSON_AddStringToObject(o, "last_error_at", when);
		cJSON_AddNumberToObject(o, "last_error_age_s",
					wall > t->last_error_time ? (double)(wall - t->last_error_time) : 0);
	} else {
		cJSON_AddNullToObject(o, "last_error_at");
		cJSON_AddNullToObject(o, "last_error_age_s");
	}
	if (t->ready_ms != 0 && t->pid > 0)
		cJSON_AddNumberToObject(o, "uptime_s", (double)((now - t->ready_ms) / 1000));
	else
		cJSON_AddNullToObject(o, "uptime_s");
	cJSON_AddBoolToObject(o, "healthy", t->healthy);
	cJSON_AddStringToObject(o, "file", t->file);
	if (detailed) {
		add_opt_string(o, "endpoint", t->endpoint);
		add_opt_string(o, "config_error", t->config_error);
		cJSON_AddNumberToObject(o, "consecutive_failures", t->backoff.failures);
		if (t->successor != NULL)
			shown = t->successor;
		if (t->counters != NULL)
			cJSON_AddItemToObject(o, "counters", cJSON_Duplicate(t->counters, 1));
		if (t->certificates != NULL)
			cJSON_AddItemToObject(o, "certificates", cJSON_Duplicate(t->certificates, 1));
		if (shown->payload != NULL)
			cJSON_AddItemToObject(o, shown == t ? "config" : "next_config",
					      cJSON_Parse(shown->payload));
	}
	return o;
}

/* ---- reload ----------------------------------------------------------------------------- */

/* Stop t and start a tenant made from e in its place once t's worker has exited. */
static void tenant_replace(struct tenant *t, const struct ep_tenant_entry *e)
{
	if (t->successor != NULL) /* changed twice before the first change took effect */
		tenant_release(t->successor);
	t->successor = tenant_new(t->sv, e);
	t->successor->restarts = t->restarts;
	tenant_stop(t);
}

/* A worker payload without the limits a running worker takes (tenant.policy.quota, .rate_limit). */
static cJSON *without_limits(const char *payload)
{
	cJSON *p = cJSON_Parse(payload);
	cJSON *policy = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(p, "tenant"), "policy");

	cJSON_DeleteItemFromObjectCaseSensitive(policy, "quota");
	cJSON_DeleteItemFromObjectCaseSensitive(policy, "rate_limit");
	return p;
}

/*
 * A change of nothing but spec.quota or spec.rateLimit reaches a running
 * worker as POLICY, without a restart: its clients, watches and leases go
 * on.  Returns 1 when done so, 0 when t must be replaced.
 */
static int tenant_update_live(struct tenant *t, const struct ep_tenant_entry *e)
{
	cJSON *a, *b, *next, *policy;
	int same;

	if (e->config == NULL || t->payload == NULL || t->successor != NULL ||
	    strcmp(t->file, e->file) != 0 || !t->process_alive || !t->ipc_open ||
	    t->stop_phase != 0 ||
	    (t->state != TENANT_STARTING && t->state != TENANT_READY &&
	     t->state != TENANT_UNHEALTHY))
		return 0;
	a = without_limits(t->payload);
	b = without_limits(e->fingerprint);
	same = a != NULL && b != NULL && cJSON_Compare(a, b, 1);
	cJSON_Delete(a);
	cJSON_Delete(b);
	if (!same)
		return 0;
	next = cJSON_Parse(e->fingerprint);
	policy = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(next, "tenant"),
						  "policy");
	if (t->configured) {
		struct ep_msg_policy m = { .policy = policy };
		cJSON *msg = ep_msg_policy_encode(&m);
		int r = ep_ipc_send((uv_stream_t *)&t->ipc, EP_MSG_POLICY, msg);

		cJSON_Delete(msg);
		if (r < 0) {
			cJSON_Delete(next);
			return 0;
		}
	}
	/* the next CONFIGURE (a worker not yet configured, a restart) carries it too */
	free(t->payload);
	t->payload = ep_strdup(e->fingerprint);
	cJSON_Delete(next);
	ep_info("reload: tenant %s: new limits (spec.quota, spec.rateLimit) applied without a "
		"restart", t->name);
	return 1;
}

struct reload_ctx {
	struct supervisor *sv;
	cJSON *added, *removed, *changed, *unchanged;
};

static void on_diff(void *ctx, enum ep_diff_action action, const struct ep_tenant_entry *o,
		    const struct ep_tenant_entry *n)
{
	struct reload_ctx *rc = ctx;
	struct supervisor *sv = rc->sv;
	struct tenant *t;

	switch (action) {
	case EP_DIFF_KEEP:
		cJSON_AddItemToArray(rc->unchanged, cJSON_CreateString(n->name));
		break;
	case EP_DIFF_ADD:
		ep_info("reload: new tenant %s (%s)", n->name, n->file);
		cJSON_AddItemToArray(rc->added, cJSON_CreateString(n->name));
		purge_cancel(sv, n->name);
		t = supervisor_find(sv, n->name);
		if (t != NULL) {
			/*
			 * Removed by an earlier reload, its worker still stopping: the
			 * new tenant takes its place once it has exited, so that one
			 * name never has two workers (same runtime directory, same
			 * port) and later reloads find the live one.
			 */
			t->remove_on_exit = 0;
			t->restarts = 0; /* a new tenant as far as anyone can tell */
			tenant_replace(t, n);
			break;
		}
		t = tenant_new(sv, n);
		tenant_append(sv, t);
		tenant_activate(t);
		break;
	case EP_DIFF_REMOVE:
		ep_info("reload: tenant %s removed", o->name);
		cJSON_AddItemToArray(rc->removed, cJSON_CreateString(o->name));
		t = supervisor_find(sv, o->name);
		if (t != NULL) {
			/* a change waiting for the old worker's exit must not bring it back */
			if (t->successor != NULL) {
				tenant_release(t->successor);
				t->successor = NULL;
			}
			t->remove_on_exit = 1;
			tenant_stop(t);
		}
		if (o->config != NULL && o->config->deletion_purge)
			purge_schedule(sv, o->name);
		break;
	case EP_DIFF_CHANGE:
		if (n->error != NULL && o->error == NULL) /* a reserved prefix, or a broken file */
			ep_warn("reload: tenant %s is stopped: %s", n->name, n->error);
		else
			ep_info("reload: tenant %s changed (%s)", n->name, n->file);
		cJSON_AddItemToArray(rc->changed, cJSON_CreateString(n->name));
		t = supervisor_find(sv, o->name);
		if (t == NULL) {
			t = tenant_new(sv, n);
			tenant_append(sv, t);
			tenant_activate(t);
			break;
		}
		if (o->error == NULL && n->error == NULL && tenant_update_live(t, n))
			break;
		tenant_replace(t, n);
		break;
	}
}

/* Start what set adds, stop what it removes, replace what changed; set is taken over. */
static void apply_set(struct supervisor *sv, struct ep_tenant_set *set, cJSON *summary,
		      int quiet)
{
	struct reload_ctx rc = { .sv = sv };

	rc.added = cJSON_AddArrayToObject(summary, "added");
	rc.removed = cJSON_AddArrayToObject(summary, "removed");
	rc.changed = cJSON_AddArrayToObject(summary, "changed");
	rc.unchanged = cJSON_AddArrayToObject(summary, "unchanged");
	ep_tenant_set_diff(&sv->set, set, on_diff, &rc);
	ep_tenant_set_free(&sv->set);
	sv->set = *set;
	if (!quiet || cJSON_GetArraySize(rc.added) || cJSON_GetArraySize(rc.removed) ||
	    cJSON_GetArraySize(rc.changed))
		ep_notice("reload done: %d added, %d removed, %d changed, %d unchanged",
			  cJSON_GetArraySize(rc.added), cJSON_GetArraySize(rc.removed),
			  cJSON_GetArraySize(rc.changed), cJSON_GetArraySize(rc.unchanged));
	notify_status(sv);
	kube_source_poke(sv->kube);
}

static int same_str(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

static int kube_settings_equal(const struct ep_kube_settings *a, const struct ep_kube_settings *b)
{
	return same_str(a->kubeconfig, b->kubeconfig) && same_str(a->namespace, b->namespace) &&
	       same_str(a->node_name, b->node_name) && same_str(a->node_address, b->node_address) &&
	       same_str(a->service_account_dir, b->service_account_dir) &&
	       a->lease_duration_ms == b->lease_duration_ms &&
	       a->renew_deadline_ms == b->renew_deadline_ms &&
	       a->retry_period_ms == b->retry_period_ms && a->resync_ms == b->resync_ms;
}

static void kube_restart(struct supervisor *sv)
{
	char *error = NULL;

	kube_source_stop(sv->kube);
	sv->kube = NULL;
	if (sv->global->kube.kubeconfig == NULL || sv->shutting_down)
		return;
	if (kube_source_start(sv, &sv->kube, &error) < 0) {
		/* the cluster's tenants of the last run keep serving from the cache */
		ep_err("the Kubernetes source cannot start: %s", error);
		free(error);
	}
}

int supervisor_reload(struct supervisor *sv, cJSON *summary, char **error_r)
{
	struct ep_global_config *g = NULL;
	struct ep_tenant_set set;
	int r, kube_changed, metrics_changed;

	*error_r = NULL;
	ep_sd_notify("RELOADING=1");
	ep_notice("reloading %s", sv->config_path);
	r = ep_global_config_load(sv->config_path, &g, error_r);
	if (r == 0)
		r = ep_tenant_set_load(g, &set, error_r);
	if (r < 0) {
		ep_err("reload refused, everything keeps running as it was: %s", *error_r);
		set_str(&sv->last_reload_error, *error_r);
		ep_global_config_free(g);
		ep_sd_notify("READY=1");
		return -EINVAL;
	}
	if (strcmp(g->runtime_dir, sv->global->runtime_dir) != 0 ||
	    strcmp(g->control_socket, sv->global->control_socket) != 0)
		ep_warn("reload: runtime_dir and control_socket changes take effect at the next start");
	ep_log_set_level(g->log_level);

	/* the new global settings apply to everything spawned from now on */
	kube_changed = !kube_settings_equal(&sv->global->kube, &g->kube) ||
		       strcmp(sv->global->state_dir, g->state_dir) != 0;
	metrics_changed = !same_str(sv->global->metrics.listen, g->metrics.listen);
	ep_global_config_free(sv->global);
	sv->global = g;
	sv->generation++;
	for (struct tenant *t = sv->tenants; t != NULL; t = t->next) {
		t->backoff.initial_ms = g->backoff_initial_ms;
		t->backoff.max_ms = g->backoff_max_ms;
		t->backoff.max_failures = g->max_failures;
	}
	apply_set(sv, &set, summary, 0);
	free(sv->last_reload_error);
	sv->last_reload_error = NULL;
	sv->last_reload_ms = ep_now_ms();
	ep_sd_notify("READY=1");
	/*
	 * Only new kubernetes settings connect again: a restart gives the lease
	 * back, and a routine reload must not hand the leadership around.
	 */
	if (kube_changed)
		kube_restart(sv);
	if (metrics_changed) {
		metrics_stop(sv);
		metrics_start(sv);
	}
	return 0;
}

void supervisor_reload_tenants(struct supervisor *sv, const char *why)
{
	struct ep_tenant_set set;
	cJSON *summary;
	char *error = NULL;

	if (sv->shutting_down)
		return;
	if (ep_tenant_set_load(sv->global, &set, &error) < 0) {
		ep_err("%s: the tenants stay as they were: %s", why, error);
		free(error);
		return;
	}
	summary = cJSON_CreateObject();
	apply_set(sv, &set, summary, 1);
	cJSON_Delete(summary);
}

int supervisor_restart_tenant(struct supervisor *sv, const char *name, char **error_r)
{
	struct tenant *t = supervisor_find(sv, name);

	*error_r = NULL;
	if (t == NULL) {
		*error_r = ep_strdup_printf("no tenant named \"%s\"", name);
		return -ENOENT;
	}
	if (t->config_error != NULL) {
		*error_r = ep_strdup_printf("tenant \"%s\" cannot start until its file is fixed: %s",
					    name, t->config_error);
		return -EINVAL;
	}
	if (sv->shutting_down) {
		*error_r = ep_strdup("the supervisor is shutting down");
		return -ESHUTDOWN;
	}
	ep_notice("tenant %s: restart requested", name);
	ep_backoff_reset(&t->backoff);
	if (t->state == TENANT_STOPPING) {
		t->restart_on_exit = 1;
		return 0;
	}
	t->restart_on_exit = 1;
	tenant_stop(t);
	return 0;
}

/* ---- signals, watchdog, shutdown ----------------------------------------------------------- */

static void close_if_open(uv_handle_t *h)
{
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void maybe_finish_shutdown(struct supervisor *sv)
{
	if (!sv->shutting_down || sv->tenants != NULL)
		return;
	ep_notice("all workers stopped");
	control_stop(sv);
	close_if_open((uv_handle_t *)&sv->sighup);
	close_if_open((uv_handle_t *)&sv->sigterm);
	close_if_open((uv_handle_t *)&sv->sigint);
	close_if_open((uv_handle_t *)&sv->watchdog);
	close_if_open((uv_handle_t *)&sv->inherited_timer);
}

static void supervisor_shutdown(struct supervisor *sv, const char *why)
{
	struct tenant *t, *next;

	if (sv->shutting_down) {
		ep_notice("%s again: the workers stop at once, without draining their clients", why);
		for (t = sv->tenants; t != NULL; t = t->next)
			tenant_hurry(t);
		return;
	}
	ep_notice("%s: stopping %s", why, sv->tenants ? "every worker" : "");
	sv->shutting_down = 1;
	purge_shutdown(sv);
	kube_source_stop(sv->kube);
	sv->kube = NULL;
	metrics_stop(sv);
	ep_sd_notify("STOPPING=1");
	for (t = sv->tenants; t != NULL; t = next) {
		next = t->next;
		t->remove_on_exit = 1;
		tenant_stop(t);
	}
	maybe_finish_shutdown(sv);
}

#define INHERITED_GRACE_MS 60000 /* for the kept sockets of tenants that come back late */

/* Inherited sockets no tenant claimed: their tenants are gone, so are the sockets. */
static void on_inherited_timer(uv_timer_t *h)
{
	struct supervisor *sv = h->data;

	for (size_t i = 0; i < sv->n_inherited; i++) {
		if (sv->inherited[i].fd >= 0) {
			char *msg = ep_strdup_printf("FDSTOREREMOVE=1\nFDNAME=%s",
						     sv->inherited[i].name);

			ep_info("closing the kept listening socket %s: no tenant has it any more",
				sv->inherited[i].name);
			ep_sd_notify(msg);
			free(msg);
			close(sv->inherited[i].fd);
			sv->inherited[i].fd = -1;
		}
	}
}

static void on_signal(uv_signal_t *h, int signum)
{
	struct supervisor *sv = h->data;

	if (signum == SIGHUP) {
		cJSON *summary = cJSON_CreateObject();
		char *error = NULL;

		if (!sv->shutting_down)
			supervisor_reload(sv, summary, &error);
		free(error);
		cJSON_Delete(summary);
	} else {
		supervisor_shutdown(sv, signum == SIGTERM ? "SIGTERM" : "SIGINT");
	}
}

static void on_watchdog(uv_timer_t *timer)
{
	ep_sd_notify("WATCHDOG=1");
}

/* ---- startup ---------------------------------------------------------------------------------- */

/*
 * What the parser cannot see: files the configuration names must exist.
 * Prints one line per problem; returns how many there are.
 */
static int check_files(const struct ep_global_config *g)
{
	const struct {
		const char *key, *path;
		int mode;
	} files[] = {
		{ "worker", g->worker_path, X_OK },
		{ "plugin_dir", g->plugin_dir, X_OK },
		{ "core_etcd.ca_file", g->core.ca_file, F_OK },
		{ "core_etcd.cert_file", g->core.cert_file, F_OK },
		{ "core_etcd.key_file", g->core.key_file, F_OK },
	};
	int bad = 0;

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (files[i].path != NULL && access(files[i].path, files[i].mode) < 0) {
			ep_err("%s: %s %s: %s", g->path, files[i].key, files[i].path, strerror(errno));
			bad++;
		}
	}
	return bad;
}

/* Run argv and collect its standard output (at most 1 MiB); returns its exit status or -1. */
static int run_capture(char *const argv[], char **out_r)
{
	posix_spawn_file_actions_t fa;
	size_t len = 0, cap = 4096;
	char *out = ep_malloc0(cap);
	int fds[2], status;
	pid_t pid;
	ssize_t n;

	*out_r = NULL;
	if (pipe2(fds, O_CLOEXEC) < 0) {
		free(out);
		return -1;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
	status = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(fds[1]);
	if (status != 0) {
		close(fds[0]);
		free(out);
		return -1;
	}
	while ((n = read(fds[0], out + len, cap - len - 1)) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		len += (size_t)n;
		if (len + 1 == cap && cap < (1u << 20)) {
			cap *= 2;
			out = ep_realloc(out, cap);
		} else if (len + 1 == cap) {
			break;
		}
	}
	out[len] = '\0';
	close(fds[0]);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	*out_r = out;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * Judge every plugin section of the global file ("backends": {"native":
 * {...}}, "certs": {...}) by the plugin's own option table, which the worker
 * reads out of the plugin (etcdproxy-worker --describe-options): the
 * supervisor loads no plugin itself.  The same checker runs in the worker
 * when a tenant starts, so what passes here cannot fail there.  Prints one
 * "FILE:LINE:COL: ..." line per problem; returns how many there are.
 */
static int check_plugin_options(const struct ep_global_config *g)
{
	static const struct {
		const char *section, *kind, *what;
	} kinds[] = { { "backends", "backend", "backend" }, { "certs", "certs", "certificate source" } };
	struct ep_json_doc *doc;
	char *error = NULL;
	int bad = 0;

	doc = ep_json_load_file(g->path, &error);
	if (doc == NULL) {
		fprintf(stderr, "%s\n", error);
		free(error);
		return 1;
	}
	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		const cJSON *sec = cJSON_GetObjectItemCaseSensitive(ep_json_root(doc), kinds[k].section);
		const cJSON *m;

		cJSON_ArrayForEach(m, sec)
		{
			char *file = ep_strdup_printf("%s/%s-%s.so", g->plugin_dir, kinds[k].kind,
						      m->string);
			char *section = ep_strdup_printf("%s.%s", kinds[k].section, m->string);
			char *argv[] = { g->worker_path, (char *)"--describe-options", g->plugin_dir,
					 (char *)kinds[k].kind, m->string, NULL };
			const cJSON *node = m;
			char *out = NULL, *msg = NULL;
			unsigned line = 0, col = 0;
			cJSON *desc = NULL;
			int status;

			if (access(file, F_OK) < 0) {
				msg = ep_strdup_printf("%s: no %s named \"%s\" (%s: %s)", section,
						       kinds[k].what, m->string, file, strerror(errno));
			} else if ((status = run_capture(argv, &out)) != 0 ||
				   (desc = cJSON_Parse(out)) == NULL) {
				/* the worker said why on standard error */
				msg = ep_strdup_printf("%s: %s --describe-options could not read the "
						       "options of %s (exit status %d)",
						       section, g->worker_path, file, status);
			} else if (!cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(desc, "options"))) {
				struct ep_option *table = ep_options_from_json(
					cJSON_GetObjectItemCaseSensitive(desc, "options"), &msg);

				if (table != NULL &&
				    ep_options_apply(table, section, m, NULL, &node, &msg) == 0)
					msg = NULL;
				ep_options_free(table);
			}
			if (msg != NULL) {
				if (node == NULL || ep_json_position(doc, node, &line, &col) < 0)
					fprintf(stderr, "%s: %s\n", g->path, msg);
				else
					fprintf(stderr, "%s:%u:%u: %s\n", g->path, line, col, msg);
				bad++;
			}
			free(msg);
			cJSON_Delete(desc);
			free(out);
			free(section);
			free(file);
		}
	}
	ep_json_doc_free(doc);
	return bad;
}

static int check_config(const char *path)
{
	struct ep_global_config *g;
	struct ep_tenant_set set;
	char *error;
	int bad = 0;

	ep_log_init("etcdproxyd", NULL, EP_LOG_TARGET_STDERR, EP_LOG_WARNING);
	if (ep_global_config_load(path, &g, &error) < 0) {
		fprintf(stderr, "%s\n", error);
		free(error);
		return 1;
	}
	if (ep_tenant_set_load(g, &set, &error) < 0) {
		fprintf(stderr, "%s: %s\n", path, error);
		free(error);
		ep_global_config_free(g);
		return 1;
	}
	int global_bad = check_files(g);

	if (global_bad == 0) /* the worker must be there to read the plugins' options */
		global_bad = check_plugin_options(g);
	if (g->kube.kubeconfig != NULL && strcmp(g->kube.kubeconfig, "in-cluster") != 0) {
		struct ep_kube_conn kc;

		if (ep_kubeconfig_load(g->kube.kubeconfig, &kc, &error) < 0) {
			fprintf(stderr, "%s: kubernetes.kubeconfig: %s\n", path, error);
			free(error);
			global_bad++;
		} else {
			ep_kube_conn_free(&kc);
		}
	}
	for (size_t i = 0; i < set.n; i++) {
		if (set.entries[i].error != NULL) {
			fprintf(stderr, "%s\n", set.entries[i].error);
			bad++;
		}
	}
	printf("%s: %s; %zu tenant%s, %d with errors%s\n", path, bad || global_bad ? "errors" : "OK",
	       set.n, set.n == 1 ? "" : "s", bad,
	       global_bad ? "; the global file has errors (above)" : "");
	bad += global_bad;
	ep_tenant_set_free(&set);
	ep_global_config_free(g);
	return bad ? 1 : 0;
}

static void usage(FILE *out)
{
	fprintf(out,
		"Usage: etcdproxyd [-c FILE] [-f] [--check-config] [--version]\n"
		"Supervise one etcd proxy worker per EtcdStorage tenant.\n\n"
		"  -c, --config FILE   global configuration (default %s)\n"
		"  -f, --foreground    stay in the foreground and log to stderr\n"
		"      --check-config  validate the global file and every tenant file, then exit\n"
		"      --version       print the version and exit\n"
		"  -h, --help          this text\n",
		EP_DEFAULT_CONFIG);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "foreground", no_argument, NULL, 'f' },
		{ "check-config", no_argument, NULL, 'C' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct supervisor sv;
	const char *config = EP_DEFAULT_CONFIG;
	int foreground = 0, check_only = 0, opt;
	char *error = NULL;
	uint64_t wd;

	while ((opt = getopt_long(argc, argv, "c:fh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'c': config = optarg; break;
		case 'f': foreground = 1; break;
		case 'C': check_only = 1; break;
		case 'V': printf("etcdproxyd %s (plugin ABI %u)\n", PACKAGE_VERSION, EP_PLUGIN_ABI_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	if (check_only)
		return check_config(config);

	memset(&sv, 0, sizeof(sv));
	/* daemon() changes to /: a reload must still find a relative -c */
	/* systemd's file descriptor store gives back the sockets of a previous etcdproxyd */
	sv.n_inherited = ep_sd_listen_fds(&sv.inherited);
	sv.config_path = realpath(config, NULL);
	if (sv.config_path == NULL)
		sv.config_path = ep_strdup(config);
	ep_log_init("etcdproxyd", NULL, EP_LOG_TARGET_STDERR, EP_LOG_INFO);
	if (ep_global_config_load(config, &sv.global, &error) < 0) {
		ep_err("%s", error);
		free(error);
		return 1;
	}
	ep_log_set_level(sv.global->log_level);
	if (check_files(sv.global) > 0)
		return 1;
	if (ep_mkdir_p(sv.global->runtime_dir, 0755) < 0 || ep_mkdir_p(sv.global->state_dir, 0700) < 0) {
		ep_err("cannot create %s or %s: %s", sv.global->runtime_dir, sv.global->state_dir,
		       strerror(errno));
		return 1;
	}
	if (ep_tenant_set_load(sv.global, &sv.set, &error) < 0) {
		ep_err("%s", error);
		free(error);
		return 1;
	}
	if (!foreground) {
		/* before the loop exists: daemon() forks, and libuv must not see that */
		if (daemon(0, 0) < 0) {
			ep_err("cannot daemonize: %s", strerror(errno));
			return 1;
		}
		ep_log_init("etcdproxyd", NULL, EP_LOG_TARGET_SYSLOG, sv.global->log_level);
	}
	signal(SIGPIPE, SIG_IGN);

	sv.loop = uv_default_loop();
	sv.started_ms = ep_now_ms();
	if (control_start(&sv, &error) < 0) {
		ep_err("%s", error);
		free(error);
		return 1;
	}
	uv_signal_init(sv.loop, &sv.sighup);
	uv_signal_init(sv.loop, &sv.sigterm);
	uv_signal_init(sv.loop, &sv.sigint);
	sv.sighup.data = sv.sigterm.data = sv.sigint.data = &sv;
	uv_signal_start(&sv.sighup, on_signal, SIGHUP);
	uv_signal_start(&sv.sigterm, on_signal, SIGTERM);
	uv_signal_start(&sv.sigint, on_signal, SIGINT);
	uv_timer_init(sv.loop, &sv.watchdog);
	uv_timer_init(sv.loop, &sv.inherited_timer);
	sv.inherited_timer.data = &sv;
	wd = ep_sd_watchdog_usec();
	if (wd > 0)
		uv_timer_start(&sv.watchdog, on_watchdog, 0, wd / 2000 ? wd / 2000 : 1);

	ep_notice("etcdproxyd %s starting: %zu tenant%s from %s", PACKAGE_VERSION, sv.set.n,
		  sv.set.n == 1 ? "" : "s", sv.global->storages_dir);
	for (size_t i = 0; i < sv.set.n; i++) {
		struct tenant *t = tenant_new(&sv, &sv.set.entries[i]);

		tenant_append(&sv, t);
		tenant_activate(t);
	}
	purge_restore(&sv);
	if (sv.n_inherited > 0) /* tenants the cluster brings back later may still claim theirs */
		uv_timer_start(&sv.inherited_timer, on_inherited_timer, INHERITED_GRACE_MS, 0);
	kube_restart(&sv);
	metrics_start(&sv);
	ep_sd_notify("READY=1");
	notify_status(&sv);

	uv_run(sv.loop, UV_RUN_DEFAULT);

	ep_notice("etcdproxyd stopped");
	uv_loop_close(sv.loop);
	ep_tenant_set_free(&sv.set);
	ep_global_config_free(sv.global);
	for (size_t i = 0; i < sv.n_inherited; i++) {
		if (sv.inherited[i].fd >= 0)
			close(sv.inherited[i].fd);
		free(sv.inherited[i].name);
	}
	free(sv.inherited);
	free(sv.config_path);
	free(sv.last_reload_error);
	return sv.exit_code;
}
