/*
 * The metrics and health endpoints: see metrics.h.
 */
#include "build-config.h"

#define EP_LOG_SUBSYS "metrics"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <microhttpd.h>

#include "kube-source.h"
#include "log.h"
#include "metrics.h"
#include "supervisor.h"
#include "util.h"

#define RETRY_MS 5000 /* a listener that could not bind tries again */

struct metrics {
	struct supervisor *sv;
	char *listen;
	struct MHD_Daemon *d;
	uv_poll_t poll;
	uv_timer_t timer;
	int poll_open;
	int handles;
	int stopping;
	uint64_t scrapes;
};

/* ---- the text --------------------------------------------------------------------------- */

struct out {
	FILE *f;
	char *buf;
	size_t len;
};

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	fprintf(o->f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value, escaped as the exposition format wants (\\, \" and \n). */
static void label_value(struct out *o, const char *v)
{
	for (; v != NULL && *v != '\0'; v++) {
		if (*v == '\\' || *v == '"')
			fprintf(o->f, "\\%c", *v);
		else if (*v == '\n')
			fputs("\\n", o->f);
		else
			fputc(*v, o->f);
	}
}

/* name{tenant="t"[,k="v"...]} value: labels as NULL-terminated pairs. */
static void sample(struct out *o, const char *name, const char *const *labels, double value)
{
	fputs(name, o->f);
	if (labels != NULL && labels[0] != NULL) {
		fputc('{', o->f);
		for (size_t i = 0; labels[i] != NULL; i += 2) {
			fprintf(o->f, "%s%s=\"", i ? "," : "", labels[i]);
			label_value(o, labels[i + 1]);
			fputc('"', o->f);
		}
		fputc('}', o->f);
	}
	if (value == (double)(long long)value)
		fprintf(o->f, " %lld\n", (long long)value);
	else
		fprintf(o->f, " %.9g\n", value);
}

static double num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* The gRPC status codes, by number: the "code" label's fixed set. */
static const char *const grpc_codes[17] = {
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
	"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
};

/* The "method" label: the method of etcd's API services, else "other" (a bounded set). */
static const char *method_label(const char *path)
{
	static const char *const services[] = {
		"/etcdserverpb.KV/", "/etcdserverpb.Watch/", "/etcdserverpb.Lease/",
		"/etcdserverpb.Cluster/", "/etcdserverpb.Maintenance/", "/etcdserverpb.Auth/",
		"/v3electionpb.Election/", "/v3lockpb.Lock/", "/grpc.health.v1.Health/",
	};

	for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++)
		if (strncmp(path, services[i], strlen(services[i])) == 0 &&
		    path[strlen(services[i])] != '\0')
			return path + strlen(services[i]);
	return "other";
}

/* The latency buckets' upper bounds, in seconds, as the native backend counts them. */
static const char *const le_text[] = { "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
				       "0.005", "0.01", "0.025", "0.05", "0.1", "1", "+Inf" };
#define N_LE (sizeof(le_text) / sizeof(le_text[0]))

/* "2026-12-04T08:37:58Z" -> seconds since the epoch, or -1. */
static double rfc3339(const char *s)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	if (s == NULL || strptime(s, "%Y-%m-%dT%H:%M:%SZ", &tm) == NULL)
		return -1;
	return (double)timegm(&tm);
}

/* utime+stime (s) and RSS (bytes) of a process from /proc; 0 when it cannot be read. */
static int proc_stats(pid_t pid, double *cpu_r, double *rss_r)
{
	char path[64], buf[1024], *p;
	unsigned long utime, stime;
	long rss;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	/* after the command's ")" (it may hold spaces): field 3 onwards */
	if ((p = strrchr(buf, ')')) == NULL ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu %*d %*d %*d %*d "
			  "%*d %*d %*u %*u %ld", &utime, &stime, &rss) != 3)
		return -1;
	*cpu_r = (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
	*rss_r = (double)rss * (double)sysconf(_SC_PAGESIZE);
	return 0;
}

/* The tenant's counters added up over its workers: the earlier ones' and the live one's. */
static cJSON *totals(const struct tenant *t)
{
	cJSON *sum = t->counters_base != NULL ? cJSON_Duplicate(t->counters_base, 1)
					      : cJSON_CreateObject();

	if (t->counters_live != NULL)
		metrics_json_add(sum, t->counters_live);
	return sum;
}

static void render_tenants(struct out *o, struct supervisor *sv)
{
	static const char *const states[] = { "stopped", "starting", "ready", "unhealthy",
					      "backoff", "failed", "stopping" };
	uint64_t now_mono = ep_now_ms();
	double now_wall = (double)time(NULL);
	cJSON **sums;
	size_t n = 0, i;

	for (struct tenant *t = sv->tenants; t != NULL; t = t->next)
		n++;
	sums = ep_malloc0(sizeof(*sums) * (n + 1));
	i = 0;
	for (struct tenant *t = sv->tenants; t != NULL; t = t->next)
		sums[i++] = totals(t);

#define EACH for (i = 0, t = sv->tenants; t != NULL; t = t->next, i++)
	struct tenant *t;

	family(o, "etcdproxy_tenant_ready", "gauge",
	       "Whether the tenant's endpoint answers (1) or not (0).");
	EACH {
		const char *l[] = { "tenant", t->name, "backend", t->backend ? t->backend : "",
				    NULL };

		sample(o, "etcdproxy_tenant_ready", l, t->state == TENANT_READY);
	}
	family(o, "etcdproxy_tenant_state", "gauge",
	       "The tenant's state: 1 for the state it is in, 0 for the others.");
	EACH {
		for (size_t s = 0; s < sizeof(states) / sizeof(states[0]); s++) {
			const char *l[] = { "tenant", t->name, "state", states[s], NULL };

			sample(o, "etcdproxy_tenant_state", l,
			       strcmp(tenant_state_name(t->state), states[s]) == 0);
		}
	}
	family(o, "etcdproxy_tenant_info", "gauge",
	       "The tenant's backend, listen address and where it was declared (1).");
	EACH {
		const char *l[] = { "tenant", t->name, "backend", t->backend ? t->backend : "",
				    "listen", t->listen ? t->listen : "", "source",
				    t->from_cluster ? "cluster" : "file", NULL };

		sample(o, "etcdproxy_tenant_info", l, 1);
	}
	family(o, "etcdproxy_worker_restarts_total", "counter",
	       "Workers started again for the tenant after the first.");
	EACH {
		const char *l[] = { "tenant", t->name, NULL };

		sample(o, "etcdproxy_worker_restarts_total", l, t->restarts);
	}
	family(o, "etcdproxy_worker_start_time_seconds", "gauge",
	       "When the tenant's running worker was started (seconds since the epoch).");
	EACH {
		const char *l[] = { "tenant", t->name, NULL };

		if (t->process_alive)
			sample(o, "etcdproxy_worker_start_time_seconds", l,
			       (double)(long long)(now_wall -
						   (double)(now_mono - t->started_ms) / 1000.0));
	}

	family(o, "etcdproxy_requests_total", "counter",
	       "Calls of the tenant's clients that ended, by method and gRPC status code.");
	EACH {
		const cJSON *m;

		cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(sums[i], "methods"))
		{
			const cJSON *c;

			cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(m, "codes"))
			{
				int code = atoi(c->string);
				const char *l[] = { "tenant", t->name, "method", method_label(m->string),
						    "code", code >= 0 && code <= 16 ? grpc_codes[code]
										    : "Unknown",
						    NULL };

				sample(o, "etcdproxy_requests_total", l, c->valuedouble);
			}
		}
	}
	family(o, "etcdproxy_request_duration_seconds", "histogram",
	       "Time from a call's request headers to its final status, by method.");
	EACH {
		const cJSON *m;

		cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(sums[i], "methods"))
		{
			const cJSON *b = cJSON_GetObjectItemCaseSensitive(m, "latency_us");
			double cum = 0;

			if (!cJSON_IsArray(b) || (size_t)cJSON_GetArraySize(b) != N_LE)
				continue;
			for (size_t k = 0; k < N_LE; k++) {
				const char *l[] = { "tenant", t->name, "method",
						    method_label(m->string), "le", le_text[k], NULL };

				cum += cJSON_GetArrayItem(b, (int)k)->valuedouble;
				sample(o, "etcdproxy_request_duration_seconds_bucket", l, cum);
			}
			{
				const char *l[] = { "tenant", t->name, "method",
						    method_label(m->string), NULL };

				sample(o, "etcdproxy_request_duration_seconds_sum", l,
				       num(m, "latency_us_sum") / 1e6);
				sample(o, "etcdproxy_request_duration_seconds_count", l, cum);
			}
		}
	}

	static const struct {
		const char *name, *key, *type, *help;
		int gauge;
	} simple[] = {
		{ "etcdproxy_received_bytes_total", "bytes_in", "counter",
		  "Request message bytes from the tenant's clients (before the prefix is added).", 0 },
		{ "etcdproxy_sent_bytes_total", "bytes_out", "counter",
		  "Response message bytes for the tenant's clients (before the prefix is removed).",
		  0 },
		{ "etcdproxy_denied_requests_total", "denied", "counter",
		  "Calls refused by the method table (cluster-wide calls, for instance).", 0 },
		{ "etcdproxy_upstream_errors_total", "upstream_errors", "counter",
		  "Failed connections to the core etcd, and calls its reset or loss ended.", 0 },
		{ "etcdproxy_tls_handshakes_total", "tls_handshakes", "counter",
		  "Client TLS handshakes that succeeded.", 0 },
		{ "etcdproxy_audit_lines_total", "audit_lines", "counter",
		  "Lines written to the tenant's audit log (spec.audit).", 0 },
		{ "etcdproxy_audit_dropped_lines_total", "audit_dropped", "counter",
		  "Audit lines dropped because the disk was full or did not keep up.", 0 },
		{ "etcdproxy_rate_limited_requests_total", "rate_limited", "counter",
		  "Calls refused by spec.rateLimit (a full queue, a wait too long, a watch too many).",
		  0 },
		{ "etcdproxy_rate_delayed_requests_total", "rate_delayed", "counter",
		  "Calls that waited their turn under spec.rateLimit.", 0 },
		{ "etcdproxy_rate_queued_requests", "rate_queued", "gauge",
		  "Calls waiting for spec.rateLimit at the worker's last report.", 1 },
		{ "etcdproxy_quota_keys", "quota_keys", "gauge",
		  "Keys the tenant holds (spec.quota), as the worker counted them at its last report.",
		  1 },
		{ "etcdproxy_quota_bytes", "quota_bytes", "gauge",
		  "Bytes of key plus value the tenant holds (spec.quota) at the worker's last report.",
		  1 },
		{ "etcdproxy_quota_leases", "quota_leases", "gauge",
		  "Leases the tenant holds (spec.quota.maxLeases), at their last count.", 1 },
		{ "etcdproxy_quota_max_keys", "quota_max_keys", "gauge", "spec.quota.maxKeys.", 1 },
		{ "etcdproxy_quota_max_bytes", "quota_max_bytes", "gauge", "spec.quota.maxBytes.", 1 },
		{ "etcdproxy_quota_max_leases", "quota_max_leases", "gauge", "spec.quota.maxLeases.",
		  1 },
		{ "etcdproxy_quota_refused_requests_total", "quota_refused", "counter",
		  "Writes and lease grants refused by spec.quota.", 0 },
		{ "etcdproxy_open_streams", "active_streams", "gauge",
		  "Client calls open at the worker's last report.", 1 },
		{ "etcdproxy_open_watch_streams", "active_watch_streams", "gauge",
		  "Client Watch streams open at the worker's last report.", 1 },
	};
	for (size_t k = 0; k < sizeof(simple) / sizeof(simple[0]); k++) {
		family(o, simple[k].name, simple[k].type, simple[k].help);
		EACH {
			const cJSON *src = simple[k].gauge ? t->counters_live : sums[i];
			const char *l[] = { "tenant", t->name, NULL };

			if (src != NULL && cJSON_GetObjectItemCaseSensitive(src, simple[k].key))
				sample(o, simple[k].name, l, num(src, simple[k].key));
		}
	}
	family(o, "etcdproxy_tls_handshake_failures_total", "counter",
	       "Client TLS handshakes that failed, by reason.");
	EACH {
		const cJSON *r;

		cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(sums[i], "tls_failures"))
		{
			const char *l[] = { "tenant", t->name, "reason", r->string, NULL };

			sample(o, "etcdproxy_tls_handshake_failures_total", l, r->valuedouble);
		}
	}

	family(o, "etcdproxy_certificate_expiry_timestamp_seconds", "gauge",
	       "When a certificate in use expires (seconds since the epoch), by role and serial.");
	EACH {
		const cJSON *c;

		cJSON_ArrayForEach(c, t->certificates)
		{
			const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "role"));
			const char *serial = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(c, "serial"));
			double na = rfc3339(cJSON_GetStringValue(
				cJSON_GetObjectItemCaseSensitive(c, "not_after")));
			const char *l[] = { "tenant", t->name, "certificate", role, "serial", serial,
					    NULL };

			/* records and errors are no certificates in use */
			if (role == NULL || serial == NULL || na < 0 ||
			    strcmp(role, "client-record") == 0)
				continue;
			sample(o, "etcdproxy_certificate_expiry_timestamp_seconds", l, na);
		}
	}

	/* one read of /proc per process for both families: [0] is etcdproxyd, then the tenants */
	{
		double *cpu = ep_malloc0(sizeof(double) * (n + 1));
		double *rss = ep_malloc0(sizeof(double) * (n + 1));
		int *have = ep_malloc0(sizeof(int) * (n + 1));
		static const struct {
			const char *name, *type, *help;
		} fams[2] = {
			{ "etcdproxy_process_resident_memory_bytes", "gauge",
			  "Resident memory of etcdproxyd (process=\"supervisor\") and of each worker." },
			{ "etcdproxy_process_cpu_seconds_total", "counter",
			  "User and system CPU time of etcdproxyd and of each worker (a worker's restarts "
			  "reset it)." },
		};

		have[0] = proc_stats(getpid(), &cpu[0], &rss[0]) == 0;
		EACH
			have[i + 1] = t->process_alive && t->pid > 0 &&
				      proc_stats(t->pid, &cpu[i + 1], &rss[i + 1]) == 0;
		for (int f = 0; f < 2; f++) {
			const double *v = f == 0 ? rss : cpu;

			family(o, fams[f].name, fams[f].type, fams[f].help);
			if (have[0]) {
				const char *l[] = { "process", "supervisor", "tenant", "", NULL };

				sample(o, fams[f].name, l, v[0]);
			}
			EACH {
				const char *l[] = { "process", "worker", "tenant", t->name, NULL };

				if (have[i + 1])
					sample(o, fams[f].name, l, v[i + 1]);
			}
		}
		free(cpu);
		free(rss);
		free(have);
	}
#undef EACH
	for (i = 0; i < n; i++)
		cJSON_Delete(sums[i]);
	free(sums);
}

char *metrics_render(struct supervisor *sv, size_t *len_r)
{
	struct out o = { 0 };
	unsigned total, ready, failed;

	o.f = open_memstream(&o.buf, &o.len);
	if (o.f == NULL)
		abort();
	family(&o, "etcdproxy_build_info", "gauge", "The etcdproxyd version (1).");
	{
		const char *l[] = { "version", PACKAGE_VERSION, NULL };

		sample(&o, "etcdproxy_build_info", l, 1);
	}
	supervisor_counts(sv, &total, &ready, &failed);
	family(&o, "etcdproxy_tenants", "gauge", "Tenants known to etcdproxyd.");
	sample(&o, "etcdproxy_tenants", NULL, total);
	family(&o, "etcdproxy_start_time_seconds", "gauge",
	       "When etcdproxyd started (seconds since the epoch).");
	sample(&o, "etcdproxy_start_time_seconds", NULL,
	       (double)(long long)((double)time(NULL) -
				   (double)(ep_now_ms() - sv->started_ms) / 1000.0));
	if (sv->kube != NULL) {
		family(&o, "etcdproxy_kubernetes_leader", "gauge",
		       "Whether this node holds the Lease and writes for the cluster (1) or not (0).");
		sample(&o, "etcdproxy_kubernetes_leader", NULL, kube_source_is_leader(sv->kube));
	}
	render_tenants(&o, sv);
	fclose(o.f);
	*len_r = o.len;
	return o.buf;
}

void metrics_json_add(cJSON *into, const cJSON *from)
{
	const cJSON *f;

	if (cJSON_IsArray(from)) {
		int i = 0;

		cJSON_ArrayForEach(f, from)
		{
			cJSON *t = cJSON_GetArrayItem(into, i);

			if (t == NULL)
				cJSON_AddItemToArray(into, cJSON_Duplicate(f, 1));
			else if (cJSON_IsNumber(t) && cJSON_IsNumber(f))
				cJSON_SetNumberValue(t, t->valuedouble + f->valuedouble);
			else if (cJSON_IsObject(t) || cJSON_IsArray(t))
				metrics_json_add(t, f);
			i++;
		}
		return;
	}
	cJSON_ArrayForEach(f, from)
	{
		cJSON *t = cJSON_GetObjectItemCaseSensitive(into, f->string);

		if (t == NULL)
			cJSON_AddItemToObject(into, f->string, cJSON_Duplicate(f, 1));
		else if (cJSON_IsNumber(t) && cJSON_IsNumber(f))
			cJSON_SetNumberValue(t, t->valuedouble + f->valuedouble);
		else if ((cJSON_IsObject(t) && cJSON_IsObject(f)) ||
			 (cJSON_IsArray(t) && cJSON_IsArray(f)))
			metrics_json_add(t, f);
	}
}

/* ---- health ------------------------------------------------------------------------------- */

/* /readyz: 200 when every tenant is ready; verbose: one line per tenant. */
static int readyz(struct supervisor *sv, int verbose, char **body_r)
{
	struct out o = { 0 };
	int ok = 1;

	o.f = open_memstream(&o.buf, &o.len);
	if (o.f == NULL)
		abort();
	for (struct tenant *t = sv->tenants; t != NULL; t = t->next) {
		int ready = t->state == TENANT_READY;

		ok &= ready;
		if (verbose && ready)
			fprintf(o.f, "[+]tenant %s ok\n", t->name);
		else if (verbose || !ready)
			fprintf(o.f, "[-]tenant %s %s%s%s\n", t->name, tenant_state_name(t->state),
				t->last_error ? ": " : "", t->last_error ? t->last_error : "");
	}
	if (sv->shutting_down) {
		ok = 0;
		fputs("[-]etcdproxyd is shutting down\n", o.f);
	}
	if (verbose || !ok)
		fprintf(o.f, "readyz check %s\n", ok ? "passed" : "failed");
	else
		fputs("ok", o.f);
	fclose(o.f);
	*body_r = o.buf;
	return ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
}

static int readyz_tenant(struct supervisor *sv, const char *name, char **body_r)
{
	struct tenant *t = supervisor_find(sv, name);

	if (t == NULL) {
		*body_r = ep_strdup_printf("no tenant %s\n", name);
		return MHD_HTTP_NOT_FOUND;
	}
	if (t->state == TENANT_READY) {
		*body_r = ep_strdup("ok");
		return MHD_HTTP_OK;
	}
	*body_r = ep_strdup_printf("tenant %s %s%s%s\n", t->name, tenant_state_name(t->state),
				   t->last_error ? ": " : "", t->last_error ? t->last_error : "");
	return MHD_HTTP_SERVICE_UNAVAILABLE;
}

/* ---- HTTP ----------------------------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, char *body, size_t len,
			     const char *type)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result ret;

	if (r == NULL) {
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
	ret = MHD_queue_response(c, code, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **req_cls)
{
	struct metrics *m = cls;
	struct supervisor *sv = m->sv;
	char *body = NULL;
	unsigned code;

	(void)version;
	(void)upload;
	if (*upload_size != 0) {
		*upload_size = 0; /* a body: ignored, the method is refused below */
		return MHD_YES;
	}
	(void)req_cls;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
		body = ep_strdup("only GET and HEAD\n");
		return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, body, strlen(body),
			     "text/plain; charset=utf-8");
	}
	if (strcmp(url, "/metrics") == 0) {
		size_t len;

		m->scrapes++;
		body = metrics_render(sv, &len);
		return reply(c, MHD_HTTP_OK, body, len, "text/plain; version=0.0.4; charset=utf-8");
	}
	if (strcmp(url, "/healthz") == 0 || strcmp(url, "/livez") == 0) {
		/* answered from the loop: the loop runs */
		body = ep_strdup("ok");
		code = MHD_HTTP_OK;
	} else if (strcmp(url, "/readyz") == 0) {
		const char *v;
		size_t vl;
		int verbose = MHD_lookup_connection_value_n(c, MHD_GET_ARGUMENT_KIND, "verbose", 7,
							    &v, &vl) == MHD_YES;

		code = (unsigned)readyz(sv, verbose, &body);
	} else if (strncmp(url, "/readyz/", 8) == 0 && url[8] != '\0') {
		code = (unsigned)readyz_tenant(sv, url + 8, &body);
	} else {
		body = ep_strdup("not found: /metrics, /healthz, /readyz, /readyz?verbose and "
				 "/readyz/NAME are served here\n");
		code = MHD_HTTP_NOT_FOUND;
	}
	return reply(c, code, body, strlen(body), "text/plain; charset=utf-8");
}

static void on_mhd_timer(uv_timer_t *t);

/* Let libmicrohttpd do what is ready, then wait for its next timeout. */
static void run_mhd(struct metrics *m)
{
	MHD_UNSIGNED_LONG_LONG timeout;

	if (m->d == NULL)
		return;
	MHD_run(m->d);
	if (MHD_get_timeout(m->d, &timeout) == MHD_YES)
		uv_timer_start(&m->timer, on_mhd_timer, timeout, 0);
	else
		uv_timer_stop(&m->timer);
}

static void on_mhd_timer(uv_timer_t *t)
{
	struct metrics *m = t->data;

	if (m->d == NULL) {
		metrics_start(m->sv); /* the retry of a listener that could not bind */
		return;
	}
	run_mhd(m);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
	(void)status;
	(void)events;
	run_mhd(p->data);
}

static void on_closed(uv_handle_t *h)
{
	struct metrics *m = h->data;

	if (--m->handles == 0) {
		free(m->listen);
		free(m);
	}
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char buf[512];

	(void)cls;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	buf[strcspn(buf, "\n")] = '\0';
	ep_debug("libmicrohttpd: %s", buf);
}

void metrics_start(struct supervisor *sv)
{
	struct metrics *m = sv->metrics;
	const union MHD_DaemonInfo *info;
	char *error = NULL;
	int fd;

	if (sv->global->metrics.listen == NULL || sv->shutting_down)
		return;
	if (m == NULL) {
		m = ep_malloc0(sizeof(*m));
		m->sv = sv;
		m->listen = ep_strdup(sv->global->metrics.listen);
		uv_timer_init(sv->loop, &m->timer);
		m->timer.data = m;
		m->handles = 1;
		sv->metrics = m;
	}
	if (ep_listen_bind(m->listen, &fd, &error) < 0) {
		ep_err("metrics: %s; trying again in %d s", error, RETRY_MS / 1000);
		free(error);
		uv_timer_start(&m->timer, on_mhd_timer, RETRY_MS, 0);
		return;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	m->d = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, m,
				MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
				/* a scrape or a probe takes milliseconds: idle or half-sent
				 * connections of one peer must not keep the others out */
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
				MHD_OPTION_CONNECTION_LIMIT, (unsigned)256,
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)64,
				MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
	if (m->d == NULL || (info = MHD_get_daemon_info(m->d, MHD_DAEMON_INFO_EPOLL_FD)) == NULL) {
		ep_err("metrics: libmicrohttpd cannot serve on %s; trying again in %d s", m->listen,
		       RETRY_MS / 1000);
		if (m->d != NULL)
			MHD_stop_daemon(m->d); /* closes the listening socket it was given */
		else
			close(fd);
		m->d = NULL;
		uv_timer_start(&m->timer, on_mhd_timer, RETRY_MS, 0);
		return;
	}
	uv_poll_init(sv->loop, &m->poll, info->epoll_fd);
	m->poll.data = m;
	m->poll_open = 1;
	m->handles++;
	uv_poll_start(&m->poll, UV_READABLE, on_poll);
	ep_notice("metrics and health on %s: /metrics, /healthz, /readyz", m->listen);
	run_mhd(m);
}

void metrics_stop(struct supervisor *sv)
{
	struct metrics *m = sv->metrics;

	if (m == NULL)
		return;
	sv->metrics = NULL;
	if (m->poll_open) {
		uv_poll_stop(&m->poll);
		uv_close((uv_handle_t *)&m->poll, on_closed);
	}
	if (m->d != NULL) {
		MHD_stop_daemon(m->d); /* closes the listener and every connection */
		m->d = NULL;
	}
	uv_close((uv_handle_t *)&m->timer, on_closed);
}
