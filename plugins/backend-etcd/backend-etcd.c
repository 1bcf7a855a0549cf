/*
 * The "etcd" backend: the stock `etcd grpc-proxy --namespace=/<name>/`,
 * supervised as a child of the worker.
 *
 * The child is restarted with backoff when it dies; its health is read from
 * its metrics endpoint (a Unix socket in the tenant's runtime directory,
 * GET /health, which asks the core etcd) together with a TCP connect to the
 * tenant's listen address.  Blocking checks run on libuv's thread pool.  The
 * metrics socket (unix://) stays plain HTTP with TLS on, and a TCP connect
 * needs no handshake, so the checks are the same with and without TLS.
 *
 * TLS towards the clients (etcd 3.4.23, verified by hand with openssl s_client
 * and etcdctl):
 * - --cert-file/--key-file/--trusted-ca-file make grpc-proxy *require* a
 *   client certificate that chains to the trusted CA bundle (Go's
 *   RequireAndVerifyClientCert, chosen because --trusted-ca-file is set;
 *   the "client-cert-auth = false" in its start-up log line is misleading):
 *   without one, or with one of another CA, the handshake ends with the
 *   alert "bad certificate".
 * - It reads --cert-file and --key-file again at every handshake, so a
 *   renewed serving certificate needs no restart.  It reads
 *   --trusted-ca-file (and the core etcd's --cacert) only at start, so a new
 *   client CA bundle (or core CA) needs a restart, which drops the open
 *   connections: clients reconnect.
 * A certificate source may publish each generation under new paths
 * (certs-files: gen-N/) and remove the previous files once tls_changed()
 * returns, so grpc-proxy is never given its paths: the backend copies the material
 * into files of its own in the runtime directory (fixed names, replaced by
 * rename()) and restarts the child only when the client CA bundle's bytes
 * differ from what the running child read.  A handshake that falls between
 * the two renames of a certificate and its key fails once; clients retry.
 *
 * The core etcd's ca_file is watched (uv_fs_poll, 2 s); a change restarts the
 * child the same planned way.  Planned restarts are no failures: no backoff,
 * no count towards giving up.
 *
 * A stuck child is restarted the same way.  grpc-proxy sends no keepalives
 * to the core: a connection to a member that stops answering without closing
 * it (a stopped process, a link that swallows packets) stays in its
 * round-robin, and every call it picks hangs until the client's deadline.
 * Each health check therefore asks HEALTH_PROBES times at once (each /health
 * is a Get through the proxy's client, so they spread over its connections);
 * when some answer and some do not, twice in a row, the child is restarted:
 * the new one uses only the members that finish its handshake.
 *
 * Options (global config "backends": {"etcd": {...}}):
 *   "binary":          path of etcd (default /usr/bin/etcd)
 *   "health_interval": Go duration between health checks (default "5s")
 *   "extra_args":      more arguments for `etcd grpc-proxy start`
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "etcdproxy/plugin.h"
#include "util.h"

#define METRICS_SOCKET "metrics.sock"
#define CHILD_BACKOFF_INITIAL_MS 200
#define CHILD_BACKOFF_MAX_MS 10000
#define CHILD_MAX_FAILURES 8      /* consecutive deaths before the worker gives up */
#define STARTUP_CHECK_MS 200      /* health check interval until the first success */
#define CHILD_STOP_GRACE_MS 3000  /* SIGTERM -> SIGKILL */
#define ENDPOINTS_MAX 4096        /* the --endpoints argument, with its NUL */
#define CORE_CA_POLL_MS 2000      /* how often core_etcd.ca_file is checked for changes */
#define HEALTH_PROBES 4           /* /health requests at once per check */
#define STUCK_CHECKS 2            /* checks in a row with some probes unanswered: restart */
#define STUCK_RESTART_GAP_MS 10000 /* at most one such restart this often ... */
#define STUCK_RESTART_GAP_MAX_MS 300000 /* ... doubling while they do not help, up to this */
#define STUCK_HEALED_MS 60000 /* healthy this long: the gap is STUCK_RESTART_GAP_MS again */
#define PEM_MAX (1024 * 1024)     /* a PEM file larger than this is not TLS material */
/* the child's copies of the TLS material, in the tenant's runtime directory */
#define TLS_CERT_NAME "grpc-proxy-tls.crt"
#define TLS_KEY_NAME "grpc-proxy-tls.key"
#define TLS_CLIENT_CA_NAME "grpc-proxy-client-ca.crt"

struct etcd_backend {
	struct ep_host *host;
	char *binary;
	uint64_t health_interval_ms;
	struct ep_option_strings extra_args;
	char *metrics_path;

	uv_process_t child;
	int child_alive;
	int child_handle_open;
	uv_timer_t health_timer;
	uv_timer_t restart_timer;
	uv_timer_t kill_timer;
	uv_fs_poll_t ca_poll; /* core_etcd.ca_file */
	int timers_open;      /* the three timers and ca_poll until closed */
	unsigned failures;      /* consecutive child deaths */
	uint64_t healthy_since; /* 0 while the current child has not been healthy */
	int ever_ready;

	/* TLS towards the clients: on when the tenant had material at start */
	int tls;
	char *tls_cert; /* the copies grpc-proxy is given (runtime_dir) */
	char *tls_key;
	char *tls_client_ca;

	/*
	 * A planned restart (new client CA, new core CA): SIGTERM sent, the
	 * exit is no failure, and the next child starts as soon as the old one's
	 * handle is closed (it held the listening port).
	 */
	int restart_planned;
	int respawn_on_close;
	unsigned spawn_count; /* numbers the children, so a check of an old one is ignored */

	uv_work_t work;
	int work_pending;
	unsigned check_child; /* spawn_count of the child the pending check probed */
	int check_healthy;
	int check_partial; /* some probes answered, some did not */
	char check_reason[256];
	unsigned stuck_checks;  /* consecutive partial checks */
	uint64_t stuck_restart; /* uv_now() of the last restart for it */
	uint64_t stuck_gap;     /* the least time to the next one */

	char error[600]; /* start()'s reason */

	int stopping;
	int closing;
	int handles_to_close;
	int stopped_reported;
};

static char *xstrdup(const char *s)
{
	char *d = strdup(s);

	if (d == NULL)
		abort();
	return d;
}

/* backends.etcd, parsed by the host from this table (options_parse) */
#define OPT(name, type, flags, field, lo, hi, help)                                            \
	{ name, type, flags, offsetof(struct etcd_backend, field), lo, hi, NULL, help }
static const struct ep_option etcd_options[] = {
	OPT("binary", EP_OPT_PATH, EP_OPT_EXECUTABLE, binary, 0, 0,
	    "the etcd program: install the etcd-server package, or set the path"),
	OPT("health_interval", EP_OPT_DURATION, 0, health_interval_ms, 1, 1e15,
	    "between health checks of the grpc-proxy"),
	OPT("extra_args", EP_OPT_STRINGS, 0, extra_args, 0, 0,
	    "more arguments for etcd grpc-proxy start"),
	{ NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL },
};
#undef OPT

static int parse_options(struct etcd_backend *b, const char **error_r)
{
	static char msg[1024];

	b->binary = xstrdup("/usr/bin/etcd");
	b->health_interval_ms = 5000;
	if (b->host->options_parse(b->host, b, error_r) < 0)
		return -EINVAL;
	/* the default path, when the file leaves it out, is checked here */
	if (access(b->binary, X_OK) < 0) {
		snprintf(msg, sizeof(msg), "backends.etcd.binary %s: %s (install the etcd-server "
			 "package, or set the path)", b->binary, strerror(errno));
		*error_r = msg;
		return -EINVAL;
	}
	return 0;
}

/* ---- health checks (on the thread pool) ------------------------------------------------------------ */

static size_t collect_body(char *data, size_t size, size_t n, void *ctx)
{
	char *buf = ctx;
	size_t have = strlen(buf), len = size * n;

	if (have + len >= 256)
		len = 255 - have;
	memcpy(buf + have, data, len);
	buf[have + len] = '\0';
	return size * n;
}

/* Connect to the listen address with a timeout; returns 0 or -errno. */
static int tcp_probe(const char *listen, int timeout_ms)
{
	struct ep_listen_addr a;
	const char *why;
	int fd, r;

	if (ep_listen_parse(listen, &a, &why) < 0)
		return -EINVAL;
	fd = socket(a.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	r = connect(fd, (struct sockaddr *)&a.sa, a.sa_len);
	if (r < 0 && errno == EINPROGRESS) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int err = 0;
		socklen_t el = sizeof(err);

		r = poll(&p, 1, timeout_ms);
		if (r == 0)
			err = ETIMEDOUT;
		else if (r > 0)
			getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
		else
			err = errno;
		r = err ? -err : 0;
	} else if (r < 0) {
		r = -errno;
	}
	close(fd);
	return r;
}

/* {"health":"true","reason":""} when the proxy reaches the core etcd */
static int health_true(const char *body)
{
	cJSON *doc = cJSON_Parse(body);
	const cJSON *health = cJSON_GetObjectItemCaseSensitive(doc, "health");
	int healthy = cJSON_IsString(health) && strcmp(health->valuestring, "true") == 0;

	cJSON_Delete(doc);
	return healthy;
}

static void check_work(uv_work_t *req)
{
	struct etcd_backend *b = req->data;
	const struct ep_tenant_info *t = b->host->tenant;
	char body[HEALTH_PROBES][256];
	CURL *curl[HEALTH_PROBES] = { NULL };
	CURLcode cc[HEALTH_PROBES];
	CURLM *multi;
	CURLMsg *msg;
	int r, running = 0, left, ok = 0, bad = -1;
	long status, bad_status = 0;

	b->check_healthy = 0;
	b->check_partial = 0;
	r = tcp_probe(t->listen, 1000);
	if (r < 0) {
		snprintf(b->check_reason, sizeof(b->check_reason), "%s does not accept connections: %s",
			 t->listen, strerror(-r));
		return;
	}
	multi = curl_multi_init();
	if (multi == NULL) {
		snprintf(b->check_reason, sizeof(b->check_reason), "curl_multi_init failed");
		return;
	}
	for (int i = 0; i < HEALTH_PROBES; i++) {
		body[i][0] = '\0';
		cc[i] = CURLE_FAILED_INIT;
		curl[i] = curl_easy_init();
		if (curl[i] == NULL)
			continue;
		curl_easy_setopt(curl[i], CURLOPT_UNIX_SOCKET_PATH, b->metrics_path);
		curl_easy_setopt(curl[i], CURLOPT_URL, "http://localhost/health");
		curl_easy_setopt(curl[i], CURLOPT_TIMEOUT_MS, 3000L);
		curl_easy_setopt(curl[i], CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(curl[i], CURLOPT_WRITEFUNCTION, collect_body);
		curl_easy_setopt(curl[i], CURLOPT_WRITEDATA, body[i]);
		curl_easy_setopt(curl[i], CURLOPT_PRIVATE, (void *)(intptr_t)i);
		curl_multi_add_handle(multi, curl[i]);
	}
	do {
		if (curl_multi_perform(multi, &running) != CURLM_OK)
			break;
		if (running > 0 && curl_multi_poll(multi, NULL, 0, 1000, NULL) != CURLM_OK)
			break;
	} while (running > 0);
	while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
		void *priv = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
		cc[(intptr_t)priv] = msg->data.result;
	}
	for (int i = 0; i < HEALTH_PROBES; i++) {
		status = 0;
		if (curl[i] != NULL && cc[i] == CURLE_OK)
			curl_easy_getinfo(curl[i], CURLINFO_RESPONSE_CODE, &status);
		if (status == 200 && health_true(body[i])) {
			ok++;
		} else if (bad < 0) {
			bad = i;
			bad_status = status;
		}
		if (curl[i] != NULL) {
			curl_multi_remove_handle(multi, curl[i]);
			curl_easy_cleanup(curl[i]);
		}
	}
	curl_multi_cleanup(multi);
	if (ok == HEALTH_PROBES) {
		b->check_healthy = 1;
		return;
	}
	b->check_partial = ok > 0;
	if (cc[bad] != CURLE_OK) {
		snprintf(b->check_reason, sizeof(b->check_reason),
			 "grpc-proxy metrics endpoint %.100s: %d of %d probes: %.80s", b->metrics_path,
			 HEALTH_PROBES - ok, HEALTH_PROBES, curl_easy_strerror(cc[bad]));
		return;
	}
	for (char *p = body[bad]; *p; p++)
		if (!isprint((unsigned char)*p))
			*p = ' ';
	snprintf(b->check_reason, sizeof(b->check_reason),
		 "grpc-proxy reports unhealthy on %d of %d probes (HTTP %ld: %.100s): %s",
		 HEALTH_PROBES - ok, HEALTH_PROBES, bad_status, body[bad],
		 ok > 0 ? "a member of the core etcd does not answer it"
			: "is the core etcd reachable?");
}

static void maybe_finish_stop(struct etcd_backend *b);
static void schedule_check(struct etcd_backend *b);
static void planned_restart(struct etcd_backend *b, const char *why);

static void check_done(uv_work_t *req, int status)
{
	struct etcd_backend *b = req->data;

	b->work_pending = 0;
	if (b->stopping) {
		maybe_finish_stop(b);
		return;
	}
	if (!b->child_alive || b->restart_planned)
		return;
	if (b->check_child != b->spawn_count) {
		/* it probed the child before a restart: say nothing, probe the new one */
		schedule_check(b);
		return;
	}
	if (!b->check_partial)
		b->stuck_checks = 0; /* two partial checks in a row, nothing between */
	if (b->healthy_since && uv_now(b->host->loop) - b->healthy_since >= STUCK_HEALED_MS)
		b->stuck_gap = 0;
	if (b->check_partial && ++b->stuck_checks >= STUCK_CHECKS &&
	    (b->stuck_restart == 0 ||
	     uv_now(b->host->loop) - b->stuck_restart >=
		     (b->stuck_gap ? b->stuck_gap : STUCK_RESTART_GAP_MS))) {
		char why[300];

		b->stuck_checks = 0;
		b->stuck_restart = uv_now(b->host->loop);
		/* a member that is slow rather than gone stays: do not drop clients every 10 s */
		b->stuck_gap = !b->stuck_gap ? STUCK_RESTART_GAP_MS
			       : b->stuck_gap * 2 < STUCK_RESTART_GAP_MAX_MS ? b->stuck_gap * 2
									     : STUCK_RESTART_GAP_MAX_MS;
		snprintf(why, sizeof(why), "stuck on a member (%.250s)", b->check_reason);
		planned_restart(b, why);
		return;
	}
	if (b->check_healthy) {
		if (b->healthy_since == 0) {
			b->healthy_since = uv_now(b->host->loop);
			b->failures = 0;
		}
		b->ever_ready = 1;
		b->host->ready(b->host, b->host->tenant->listen);
	} else {
		b->healthy_since = 0;
		/* before the first success this is start-up, not illness */
		if (b->ever_ready)
			b->host->health(b->host, 0, b->check_reason);
		else
			b->host->log(b->host, EP_LOG_DEBUG, "not ready yet: %s", b->check_reason);
	}
	schedule_check(b);
}

static void on_health_timer(uv_timer_t *t)
{
	struct etcd_backend *b = t->data;

	if (b->work_pending || b->stopping || !b->child_alive || b->restart_planned)
		return;
	b->work_pending = 1;
	b->check_child = b->spawn_count;
	b->work.data = b;
	if (uv_queue_work(b->host->loop, &b->work, check_work, check_done) < 0)
		b->work_pending = 0;
}

static void schedule_check(struct etcd_backend *b)
{
	uv_timer_start(&b->health_timer, on_health_timer,
		       b->healthy_since ? b->health_interval_ms : STARTUP_CHECK_MS, 0);
}

/* ---- the child ------------------------------------------------------------------------------------------ */

static void spawn_child(struct etcd_backend *b);

static void on_child_closed(uv_handle_t *h)
{
	struct etcd_backend *b = h->data;

	b->child_handle_open = 0;
	if (b->stopping) {
		maybe_finish_stop(b);
	} else if (b->respawn_on_close) {
		b->respawn_on_close = 0;
		spawn_child(b);
	}
}

static void on_restart_timer(uv_timer_t *t)
{
	struct etcd_backend *b = t->data;

	if (!b->stopping)
		spawn_child(b);
}

static void on_child_exit(uv_process_t *p, int64_t exit_status, int term_signal)
{
	struct etcd_backend *b = p->data;
	char reason[256];
	uint64_t delay = CHILD_BACKOFF_INITIAL_MS;

	b->child_alive = 0;
	uv_timer_stop(&b->kill_timer);
	uv_close((uv_handle_t *)&b->child, on_child_closed);
	if (b->stopping)
		return;
	if (b->restart_planned) {
		/* the port is free now; the handle (b->child) is reused once closed */
		b->restart_planned = 0;
		b->healthy_since = 0;
		b->respawn_on_close = 1;
		b->host->log(b->host, EP_LOG_DEBUG, "etcd grpc-proxy pid %d stopped for the restart",
			     p->pid);
		return;
	}

	if (term_signal)
		snprintf(reason, sizeof(reason), "etcd grpc-proxy (pid %d) killed by signal %d",
			 p->pid, term_signal);
	else
		snprintf(reason, sizeof(reason), "etcd grpc-proxy (pid %d) exited with code %lld",
			 p->pid, (long long)exit_status);
	/* a child that was healthy for a while starts the count afresh */
	if (b->healthy_since && uv_now(b->host->loop) - b->healthy_since > 30000)
		b->failures = 0;
	b->healthy_since = 0;
	b->failures++;
	if (b->failures >= CHILD_MAX_FAILURES) {
		char msg[400];

		snprintf(msg, sizeof(msg), "%s; gave up after %u consecutive failures", reason,
			 b->failures);
		b->host->fail(b->host, 0, msg);
		return;
	}
	for (unsigned i = 1; i < b->failures && delay < CHILD_BACKOFF_MAX_MS; i++)
		delay *= 2;
	if (delay > CHILD_BACKOFF_MAX_MS)
		delay = CHILD_BACKOFF_MAX_MS;
	b->host->log(b->host, EP_LOG_WARNING, "%s; restarting it in %llu ms", reason,
		     (unsigned long long)delay);
	/* also before the first READY: status then shows why the tenant does not start */
	b->host->health(b->host, 0, reason);
	uv_timer_start(&b->restart_timer, on_restart_timer, delay, 0);
}

static void spawn_child(struct etcd_backend *b)
{
	const struct ep_tenant_info *t = b->host->tenant;
	uv_process_options_t opts;
	uv_stdio_container_t stdio[3];
	char *args[64 + 8];
	char ns[300], eps[ENDPOINTS_MAX], listen[300], metrics[64], datadir[4200], cacert[4200],
		cert[4200], key[4200], tls_cert[4200], tls_key[4200], tls_ca[4200];
	size_t n = 0, off = 0;
	int r;

	/* a leftover socket of a killed child would make the new one fail to bind */
	unlink(b->metrics_path);

	eps[0] = '\0';
	for (size_t i = 0; i < t->core.n_endpoints; i++)
		off += (size_t)snprintf(eps + off, sizeof(eps) - off, "%s%s", i ? "," : "",
					t->core.endpoints[i]);
	snprintf(ns, sizeof(ns), "--namespace=%s", t->prefix);
	snprintf(listen, sizeof(listen), "--listen-addr=%s", t->listen);
	/* relative to the child's working directory, the tenant's runtime directory */
	snprintf(metrics, sizeof(metrics), "--metrics-addr=unix://" METRICS_SOCKET);
	snprintf(datadir, sizeof(datadir), "--data-dir=%s/grpc-proxy", t->state_dir);
	args[n++] = b->binary;
	args[n++] = "grpc-proxy";
	args[n++] = "start";
	args[n++] = ns;
	args[n++] = (char *)"--endpoints";
	args[n++] = eps;
	args[n++] = listen;
	args[n++] = metrics;
	args[n++] = datadir;
	if (t->core.ca_file != NULL) {
		snprintf(cacert, sizeof(cacert), "--cacert=%s", t->core.ca_file);
		args[n++] = cacert;
	}
	if (t->core.cert_file != NULL) {
		snprintf(cert, sizeof(cert), "--cert=%s", t->core.cert_file);
		snprintf(key, sizeof(key), "--key=%s", t->core.key_file);
		args[n++] = cert;
		args[n++] = key;
	}
	if (b->tls) {
		/* --trusted-ca-file makes grpc-proxy require a client certificate of that bundle */
		snprintf(tls_cert, sizeof(tls_cert), "--cert-file=%s", b->tls_cert);
		snprintf(tls_key, sizeof(tls_key), "--key-file=%s", b->tls_key);
		snprintf(tls_ca, sizeof(tls_ca), "--trusted-ca-file=%s", b->tls_client_ca);
		args[n++] = tls_cert;
		args[n++] = tls_key;
		args[n++] = tls_ca;
	}
	for (size_t i = 0; i < b->extra_args.n && n < 64; i++)
		args[n++] = b->extra_args.v[i];
	args[n] = NULL;

	memset(&opts, 0, sizeof(opts));
	memset(stdio, 0, sizeof(stdio));
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = UV_INHERIT_FD;
	stdio[1].data.fd = 2; /* its log lines belong with ours on stderr */
	stdio[2].flags = UV_INHERIT_FD;
	stdio[2].data.fd = 2;
	opts.file = b->binary;
	opts.args = args;
	opts.cwd = t->runtime_dir;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	opts.exit_cb = on_child_exit;
	b->child.data = b;
	r = b->host->spawn(b->host, &b->child, &opts);
	b->child_handle_open = 1;
	if (r < 0) {
		char msg[512];

		uv_close((uv_handle_t *)&b->child, on_child_closed);
		snprintf(msg, sizeof(msg), "cannot start %s grpc-proxy: %s", b->binary, uv_strerror(r));
		b->host->fail(b->host, 0, msg);
		return;
	}
	b->child_alive = 1;
	b->healthy_since = 0;
	b->spawn_count++;
	b->host->log(b->host, EP_LOG_INFO, "started etcd grpc-proxy pid %d: %s on %s%s -> %s",
		     b->child.pid, t->prefix, t->listen, b->tls ? " (TLS, client certificates "
		     "required)" : "", eps);
	uv_timer_start(&b->health_timer, on_health_timer, STARTUP_CHECK_MS, 0);
}

/* ---- stopping --------------------------------------------------------------------------------------------- */

static void on_timer_closed(uv_handle_t *h)
{
	struct etcd_backend *b = h->data;

	if (--b->timers_open == 0)
		maybe_finish_stop(b);
}

static void maybe_finish_stop(struct etcd_backend *b)
{
	if (b->child_alive || b->child_handle_open || b->work_pending)
		return;
	if (!b->closing) {
		b->closing = 1;
		uv_close((uv_handle_t *)&b->health_timer, on_timer_closed);
		uv_close((uv_handle_t *)&b->restart_timer, on_timer_closed);
		uv_close((uv_handle_t *)&b->kill_timer, on_timer_closed);
		uv_close((uv_handle_t *)&b->ca_poll, on_timer_closed);
		return;
	}
	if (b->timers_open == 0 && !b->stopped_reported) {
		b->stopped_reported = 1;
		unlink(b->metrics_path);
		/* no copy of the serving key outlives the child */
		unlink(b->tls_cert);
		unlink(b->tls_key);
		unlink(b->tls_client_ca);
		b->host->stopped(b->host);
	}
}

static void on_kill_timer(uv_timer_t *t)
{
	struct etcd_backend *b = t->data;

	if (b->child_alive) {
		b->host->log(b->host, EP_LOG_WARNING, "etcd grpc-proxy pid %d ignored SIGTERM: SIGKILL",
			     b->child.pid);
		uv_process_kill(&b->child, SIGKILL);
	}
}

static void backend_stop(void *state, int graceful)
{
	struct etcd_backend *b = state;

	b->stopping = 1;
	uv_timer_stop(&b->health_timer);
	uv_timer_stop(&b->restart_timer);
	uv_fs_poll_stop(&b->ca_poll);
	if (b->child_alive) {
		/* grpc-proxy has no drain of its own: SIGTERM lets it close its listener */
		uv_process_kill(&b->child, graceful ? SIGTERM : SIGKILL);
		if (graceful)
			uv_timer_start(&b->kill_timer, on_kill_timer, CHILD_STOP_GRACE_MS, 0);
	}
	maybe_finish_stop(b);
}

/* ---- TLS material and the core etcd's credentials ------------------------------------------------ */

static const struct ep_tls_material *tls_material(struct etcd_backend *b)
{
	/* an older host has no tls_material(): plaintext */
	return b->host->tls_material != NULL ? b->host->tls_material(b->host) : NULL;
}

static char *path_in(const char *dir, const char *name)
{
	size_t len = strlen(dir) + strlen(name) + 2;
	char *p = malloc(len);

	if (p == NULL)
		abort();
	snprintf(p, len, "%s/%s", dir, name);
	return p;
}

static const char *file_error(int r)
{
	if (r == -EFBIG)
		return "larger than 1 MiB, not a PEM file";
	if (r == -EINVAL)
		return "not a regular file";
	if (r == -ENODATA)
		return "empty";
	return strerror(-r);
}

/* Opens path for reading, a non-empty regular file of at most PEM_MAX bytes: the fd or -errno. */
static int open_pem_file(const char *path, size_t *size_r)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		r = -errno;
	else if (S_ISDIR(st.st_mode))
		r = -EISDIR;
	else if (!S_ISREG(st.st_mode))
		r = -EINVAL;
	else if (st.st_size > PEM_MAX)
		r = -EFBIG;
	else if (st.st_size == 0)
		r = -ENODATA;
	else {
		*size_r = (size_t)st.st_size;
		return fd;
	}
	close(fd);
	return r;
}

/* The whole of a PEM file (NUL-terminated): 0 or -errno. */
static int read_pem_file(const char *path, char **data_r, size_t *len_r)
{
	size_t size = 0, len = 0;
	int fd = open_pem_file(path, &size);
	char *data;

	if (fd < 0)
		return fd;
	data = malloc(size + 1);
	if (data == NULL)
		abort();
	while (len < size) {
		ssize_t n = read(fd, data + len, size - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			int r = -errno;

			close(fd);
			free(data);
			return r;
		}
		if (n == 0)
			break; /* truncated since fstat(): what is there */
		len += (size_t)n;
	}
	close(fd);
	data[len] = '\0';
	*data_r = data;
	*len_r = len;
	return 0;
}

/* Writes data into path (mode 0600, a fresh file): 0 or -errno. */
static int write_new_file(const char *path, const char *data, size_t len)
{
	int fd, r = 0;

	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	while (len > 0) {
		ssize_t n = write(fd, data, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			break;
		}
		data += n;
		len -= (size_t)n;
	}
	if (close(fd) < 0 && r == 0)
		r = -errno;
	if (r < 0)
		unlink(path);
	return r;
}

static void free_secret(char *data, size_t len)
{
	if (data != NULL)
		explicit_bzero(data, len);
	free(data);
}

/*
 * Brings the child's copies up to date with m: the certificate and its key
 * always (a running child reads them at its next handshake), the client CA
 * bundle when its bytes differ from the copy (*ca_changed_r = 1: the child
 * must restart to read it).  Everything is read and written to ".new" files
 * first and renamed afterwards, so a failure leaves the previous copies
 * whole.  0, or -errno with the reason in err.
 */
static int copy_material(struct etcd_backend *b, const struct ep_tls_material *m,
			 int *ca_changed_r, char *err, size_t err_size)
{
	static const char *const what[3] = { "serving certificate", "serving key",
					      "client CA bundle" };
	const char *src[3] = { m->cert_file, m->key_file, m->client_ca_file };
	const char *dst[3] = { b->tls_cert, b->tls_key, b->tls_client_ca };
	char *data[3] = { NULL, NULL, NULL }, *tmp[3] = { NULL, NULL, NULL }, *old = NULL;
	size_t len[3] = { 0, 0, 0 }, old_len = 0;
	int r = 0, ca_changed;

	for (int i = 0; i < 3; i++) {
		r = read_pem_file(src[i], &data[i], &len[i]);
		if (r < 0) {
			snprintf(err, err_size, "cannot read the %s %s: %s", what[i], src[i],
				 file_error(r));
			goto out;
		}
	}
	ca_changed = read_pem_file(dst[2], &old, &old_len) < 0 || old_len != len[2] ||
		     memcmp(old, data[2], len[2]) != 0;
	for (int i = 0; i < 3; i++) {
		if (i == 2 && !ca_changed)
			continue;
		tmp[i] = malloc(strlen(dst[i]) + sizeof(".new"));
		if (tmp[i] == NULL)
			abort();
		strcpy(stpcpy(tmp[i], dst[i]), ".new");
		r = write_new_file(tmp[i], data[i], len[i]);
		if (r < 0) {
			snprintf(err, err_size, "cannot write %s: %s", tmp[i], strerror(-r));
			goto out;
		}
	}
	for (int i = 0; i < 3; i++) {
		if (tmp[i] != NULL && rename(tmp[i], dst[i]) < 0) {
			r = -errno;
			snprintf(err, err_size, "cannot rename %s to %s: %s", tmp[i], dst[i],
				 strerror(errno));
			goto out;
		}
		free(tmp[i]);
		tmp[i] = NULL;
	}
	*ca_changed_r = ca_changed;
out:
	for (int i = 0; i < 3; i++) {
		if (tmp[i] != NULL)
			unlink(tmp[i]);
		free(tmp[i]);
		free_secret(data[i], len[i]);
	}
	free(old);
	return r;
}

/*
 * grpc-proxy reads the client CA bundle and the core CA only at start:
 * SIGTERM the child (it exits within milliseconds), start the next one as
 * soon as its handle is closed (on_child_exit, on_child_closed).  It holds
 * the listening port, so the two cannot overlap.  No failure, no backoff.
 */
static void planned_restart(struct etcd_backend *b, const char *why)
{
	char reason[300];

	if (b->stopping)
		return;
	if (!b->child_alive || b->restart_planned) {
		b->host->log(b->host, EP_LOG_INFO, "%s: the next etcd grpc-proxy reads it at its start",
			     why);
		return;
	}
	b->restart_planned = 1;
	snprintf(reason, sizeof(reason), "restarting etcd grpc-proxy: %s", why);
	b->host->log(b->host, EP_LOG_NOTICE, "%s (pid %d; its client connections are closed)",
		     reason, b->child.pid);
	uv_timer_stop(&b->health_timer);
	if (b->ever_ready)
		b->host->health(b->host, 0, reason);
	uv_process_kill(&b->child, SIGTERM);
	uv_timer_start(&b->kill_timer, on_kill_timer, CHILD_STOP_GRACE_MS, 0);
}

static void backend_tls_changed(void *state)
{
	struct etcd_backend *b = state;
	const struct ep_tls_material *m = tls_material(b);
	char err[600], why[100];
	int ca_changed = 0;

	if (b->stopping)
		return;
	if (m == NULL || !b->tls) {
		b->host->log(b->host, EP_LOG_WARNING, "TLS %s since start: etcd grpc-proxy goes on "
			     "as it started", m == NULL ? "material withdrawn" : "material appeared");
		return;
	}
	if (copy_material(b, m, &ca_changed, err, sizeof(err)) < 0) {
		b->host->log(b->host, EP_LOG_WARNING, "TLS material generation %llu cannot be used, "
			     "etcd grpc-proxy keeps the previous: %s",
			     (unsigned long long)m->generation, err);
		return;
	}
	if (ca_changed) {
		snprintf(why, sizeof(why), "new client CA bundle (TLS material generation %llu)",
			 (unsigned long long)m->generation);
		planned_restart(b, why);
		return;
	}
	b->host->log(b->host, EP_LOG_DEBUG, "TLS material generation %llu: serving certificate "
		     "in place, etcd grpc-proxy reads it at its next handshake; client CA bundle "
		     "unchanged: no restart", (unsigned long long)m->generation);
}

static void on_core_ca_changed(uv_fs_poll_t *h, int status, const uv_stat_t *prev,
			       const uv_stat_t *curr)
{
	struct etcd_backend *b = h->data;
	const char *path = b->host->tenant->core.ca_file;
	char *data = NULL;
	size_t len = 0;
	int r;

	(void)prev;
	(void)curr;
	if (b->stopping)
		return;
	if (status < 0) {
		b->host->log(b->host, EP_LOG_WARNING, "core_etcd.ca_file %s: %s; etcd grpc-proxy "
			     "keeps the CA it read at its start", path, uv_strerror(status));
		return;
	}
	/* a file being written shows up here again once it is complete */
	r = read_pem_file(path, &data, &len);
	if (r < 0 || strstr(data, "-----END CERTIFICATE-----") == NULL) {
		b->host->log(b->host, EP_LOG_WARNING, "core_etcd.ca_file %s changed but %s; etcd "
			     "grpc-proxy keeps the CA it read at its start", path,
			     r < 0 ? file_error(r) : "holds no complete PEM certificate");
		free(data);
		return;
	}
	free(data);
	planned_restart(b, "core_etcd.ca_file changed");
}

/*
 * grpc-proxy would start and then exit with a bare "open FILE: ..." for a
 * missing core credential, over and over: say it once, with the setting.
 */
static int check_core_files(struct etcd_backend *b, const char **error_r)
{
	static const char *const names[3] = { "core_etcd.ca_file", "core_etcd.cert_file",
					      "core_etcd.key_file" };
	static const char *const uses[3] = {
		"etcd grpc-proxy verifies the core etcd with it (--cacert)",
		"etcd grpc-proxy presents it to the core etcd (--cert)",
		"the private key of core_etcd.cert_file (--key)",
	};
	const struct ep_core_etcd *core = &b->host->tenant->core;
	const char *files[3] = { core->ca_file, core->cert_file, core->key_file };

	for (int i = 0; i < 3; i++) {
		size_t size;
		int fd;

		if (files[i] == NULL)
			continue;
		fd = open_pem_file(files[i], &size);
		if (fd < 0) {
			snprintf(b->error, sizeof(b->error), "%s %s: %s (%s)", names[i], files[i],
				 file_error(fd), uses[i]);
			*error_r = b->error;
			return -EINVAL;
		}
		close(fd);
	}
	return 0;
}

static void free_backend(struct etcd_backend *b);

/* ---- plugin entry points -------------------------------------------------------------------------------- */

static int backend_init(struct ep_host *host, void **state_r, const char **error_r)
{
	struct etcd_backend *b = calloc(1, sizeof(*b));
	size_t len;
	int r;

	if (b == NULL)
		return -ENOMEM;
	b->host = host;
	r = parse_options(b, error_r);
	if (r == 0 && strncmp(host->tenant->listen, "unix:", 5) == 0) {
		*error_r = "the etcd backend (etcd grpc-proxy) listens on TCP only";
		r = -EINVAL;
	}
	/* spawn_child() joins them into one fixed buffer: refuse what would not fit */
	len = 0;
	for (size_t i = 0; i < host->tenant->core.n_endpoints; i++)
		len += strlen(host->tenant->core.endpoints[i]) + 1;
	if (r == 0 && len > ENDPOINTS_MAX) {
		*error_r = "core_etcd.endpoints: too long for etcd grpc-proxy's --endpoints "
			   "(4095 characters at most, commas included)";
		r = -EINVAL;
	}
	if (r < 0) {
		free_backend(b);
		return r;
	}
	len = strlen(host->tenant->runtime_dir) + sizeof("/" METRICS_SOCKET);
	b->metrics_path = malloc(len);
	if (b->metrics_path == NULL)
		abort();
	snprintf(b->metrics_path, len, "%s/" METRICS_SOCKET, host->tenant->runtime_dir);
	b->tls_cert = path_in(host->tenant->runtime_dir, TLS_CERT_NAME);
	b->tls_key = path_in(host->tenant->runtime_dir, TLS_KEY_NAME);
	b->tls_client_ca = path_in(host->tenant->runtime_dir, TLS_CLIENT_CA_NAME);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	uv_timer_init(host->loop, &b->health_timer);
	uv_timer_init(host->loop, &b->restart_timer);
	uv_timer_init(host->loop, &b->kill_timer);
	uv_fs_poll_init(host->loop, &b->ca_poll);
	b->health_timer.data = b->restart_timer.data = b->kill_timer.data = b->ca_poll.data = b;
	b->timers_open = 4;
	*state_r = b;
	return 0;
}

static int backend_start(void *state, const char **error_r)
{
	struct etcd_backend *b = state;
	const struct ep_tls_material *m = tls_material(b);
	const char *core_ca = b->host->tenant->core.ca_file;
	int r, ca_changed;

	r = check_core_files(b, error_r);
	if (r < 0)
		return r;
	if (m != NULL) {
		b->tls = 1;
		/* a copy left by a killed worker must not pass for the running child's */
		unlink(b->tls_client_ca);
		r = copy_material(b, m, &ca_changed, b->error, sizeof(b->error));
		if (r < 0) {
			*error_r = b->error;
			return r;
		}
	}
	if (core_ca != NULL) {
		r = uv_fs_poll_start(&b->ca_poll, on_core_ca_changed, core_ca, CORE_CA_POLL_MS);
		if (r < 0)
			b->host->log(b->host, EP_LOG_WARNING, "cannot watch core_etcd.ca_file %s: %s; "
				     "a new core CA needs a restart of the tenant", core_ca,
				     uv_strerror(r));
	}
	spawn_child(b);
	return 0;
}

static void free_backend(struct etcd_backend *b)
{
	free(b->binary);
	for (size_t i = 0; i < b->extra_args.n; i++)
		free(b->extra_args.v[i]);
	free(b->extra_args.v);
	free(b->metrics_path);
	free(b->tls_cert);
	free(b->tls_key);
	free(b->tls_client_ca);
	free(b);
}

static void backend_fini(void *state)
{
	struct etcd_backend *b = state;

	if (!b->closing) {
		/* start never ran, or stop was never asked for: close the idle timers */
		uv_close((uv_handle_t *)&b->health_timer, NULL);
		uv_close((uv_handle_t *)&b->restart_timer, NULL);
		uv_close((uv_handle_t *)&b->kill_timer, NULL);
		uv_close((uv_handle_t *)&b->ca_poll, NULL);
		uv_run(b->host->loop, UV_RUN_NOWAIT);
	}
	curl_global_cleanup();
	free_backend(b);
}

static const struct ep_backend_ops backend_ops = {
	.start = backend_start,
	.stop = backend_stop,
	.tls_changed = backend_tls_changed,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_BACKEND,
	.name = "etcd",
	.description = "the stock etcd grpc-proxy with --namespace, supervised",
	.init = backend_init,
	.fini = backend_fini,
	.ops = &backend_ops,
	.options = etcd_options,
};
