/*
 * The "external" backend: a proxy someone else runs (an etcd grpc-proxy
 * under systemd, a proxy in a pod, a vendor's) serves the tenant; etcdproxyd
 * carries none of its traffic.  The worker
 *
 * - publishes the proxy's TLS material from the tenant's certificate source
 *   into spec.external.certificatesDir (tls.crt, tls.key, client-ca.crt and
 *   ca.crt, swapped as one through a ..data symlink, as the kubelet does with
 *   a Secret volume), again at every rotation;
 * - checks the proxy's health every spec.external.interval, on the thread
 *   pool: "grpc" makes a Range on the tenant's key "health" through the proxy
 *   at spec.listen (TLS with the client certificate in clientCertificateDir),
 *   "http" a GET of healthURL that must answer 200 (and {"health":"true"}
 *   when it answers JSON, as etcd's /health does);
 * - reports ready when a check first passes, and not ready with the reason
 *   when one fails, so that status, show and the metrics say what the proxy
 *   does.
 *
 * Options: none of its own (backends.external must be {} or absent); the
 * tenant's spec.external reaches it as policy.external.
 */
#include "build-config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "etcdc.h"
#include "etcdproxy/plugin.h"
#include "files.h"
#include "pb.h"
#include "util.h"

struct external {
	struct ep_host *host;
	char *check;      /* "grpc" or "http" */
	char *url;        /* grpc: the proxy's base URL; http: healthURL */
	char *client_dir; /* tls.crt, tls.key, ca.crt for the check, or NULL */
	char *certs_dir;  /* where the proxy's material goes, or NULL */
	uint64_t interval_ms, timeout_ms;
	uv_timer_t timer;
	uv_work_t work;
	int working;
	int stopping, stopped_reported, timer_closed;
	int ever_ready, healthy;
	uint64_t checks, failures, published;
	/* the check's result, written on the thread pool */
	int w_ok;
	char w_reason[600];
	char reason[700];
};

/* ---- the check, on the thread pool -------------------------------------------------------- */

static size_t sink(char *data, size_t size, size_t n, void *ud)
{
	char *buf = ud;
	size_t have = strlen(buf), len = size * n;

	if (have + 1 < 512) {
		size_t take = len < 511 - have ? len : 511 - have;

		memcpy(buf + have, data, take);
		buf[have + take] = '\0';
	}
	return len;
}

static void check_http(struct external *x)
{
	CURL *curl = curl_easy_init();
	char body[512] = "", err[CURL_ERROR_SIZE] = "", *cert = NULL, *key = NULL, *ca = NULL;
	long status = 0;
	CURLcode rc;

	if (curl == NULL) {
		snprintf(x->w_reason, sizeof(x->w_reason), "cannot make a libcurl handle");
		return;
	}
	curl_easy_setopt(curl, CURLOPT_URL, x->url);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)x->timeout_ms);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, err);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	if (x->client_dir != NULL) {
		cert = ep_strdup_printf("%s/tls.crt", x->client_dir);
		key = ep_strdup_printf("%s/tls.key", x->client_dir);
		ca = ep_strdup_printf("%s/ca.crt", x->client_dir);
		curl_easy_setopt(curl, CURLOPT_SSLCERT, cert);
		curl_easy_setopt(curl, CURLOPT_SSLKEY, key);
		curl_easy_setopt(curl, CURLOPT_CAINFO, ca);
	}
	rc = curl_easy_perform(curl);
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(curl);
	free(cert);
	free(key);
	free(ca);
	if (rc != CURLE_OK) {
		snprintf(x->w_reason, sizeof(x->w_reason), "%s: %s", x->url,
			 err[0] ? err : curl_easy_strerror(rc));
		return;
	}
	if (status != 200) {
		snprintf(x->w_reason, sizeof(x->w_reason), "%s answered HTTP %ld: %.200s", x->url,
			 status, body);
		return;
	}
	if (body[0] == '{') {
		cJSON *doc = cJSON_Parse(body);
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(doc, "health");
		int bad = cJSON_IsString(h) && strcmp(h->valuestring, "true") != 0;

		cJSON_Delete(doc);
		if (bad) {
			snprintf(x->w_reason, sizeof(x->w_reason), "%s reports it unhealthy: %.200s",
				 x->url, body);
			return;
		}
	}
	x->w_ok = 1;
}

static void check_grpc(struct external *x)
{
	char *urls[1] = { x->url }, *why = NULL;
	char *cert = NULL, *key = NULL, *ca = NULL;
	struct etcdc_tls tls = { NULL, NULL, NULL };
	struct etcdc *e;
	uint8_t req[32], *p;
	const uint8_t *resp;
	size_t rlen;
	const char *error;

	if (x->client_dir != NULL) {
		cert = ep_strdup_printf("%s/tls.crt", x->client_dir);
		key = ep_strdup_printf("%s/tls.key", x->client_dir);
		ca = ep_strdup_printf("%s/ca.crt", x->client_dir);
		tls = (struct etcdc_tls){ ca, cert, key };
	}
	e = etcdc_open(urls, 1, &tls, &why);
	if (e == NULL) {
		snprintf(x->w_reason, sizeof(x->w_reason), "%s", why);
		free(why);
	} else {
		etcdc_set_timeout(e, x->timeout_ms);
		/* a Range of one key under the tenant: what an API server does first */
		p = ep_pb_put_bytes(req, 1, "health", 6);
		p = ep_pb_put_uint(p, 3, 1); /* limit */
		if (etcdc_call(e, "/etcdserverpb.KV/Range", req, (size_t)(p - req), &resp, &rlen,
			       &error) < 0)
			snprintf(x->w_reason, sizeof(x->w_reason), "a Range through %s: %s", x->url,
				 error);
		else
			x->w_ok = 1;
		etcdc_close(e);
	}
	free(cert);
	free(key);
	free(ca);
}

static void do_check(uv_work_t *w)
{
	struct external *x = w->data;

	x->w_ok = 0;
	x->w_reason[0] = '\0';
	if (strcmp(x->check, "http") == 0)
		check_http(x);
	else
		check_grpc(x);
}

/* ---- on the loop --------------------------------------------------------------------------- */

static void maybe_stopped(struct external *x)
{
	if (x->stopping && x->timer_closed && !x->working && !x->stopped_reported) {
		x->stopped_reported = 1;
		x->host->stopped(x->host);
	}
}

static void on_timer(uv_timer_t *t);

static void checked(uv_work_t *w, int status)
{
	struct external *x = w->data;

	x->working = 0;
	if (x->stopping) {
		maybe_stopped(x);
		return;
	}
	x->checks++;
	if (status == 0 && x->w_ok) {
		x->reason[0] = '\0';
		if (!x->ever_ready) {
			x->ever_ready = x->healthy = 1;
			x->host->log(x->host, EP_LOG_INFO, "the external proxy answers (%s check of %s)",
				     x->check, x->url);
			x->host->ready(x->host, x->host->tenant->listen);
		} else if (!x->healthy) {
			x->healthy = 1;
			x->host->log(x->host, EP_LOG_NOTICE, "the external proxy answers again");
			x->host->health(x->host, 1, NULL);
		}
	} else {
		x->failures++;
		snprintf(x->reason, sizeof(x->reason), "the external proxy does not answer: %s",
			 status != 0 ? uv_strerror(status) : x->w_reason);
		if (x->healthy || !x->ever_ready) {
			x->host->log(x->host, EP_LOG_WARNING, "%s", x->reason);
			x->host->health(x->host, 0, x->reason);
		}
		x->healthy = 0;
	}
	uv_timer_start(&x->timer, on_timer, x->interval_ms, 0);
}

static void on_timer(uv_timer_t *t)
{
	struct external *x = t->data;
	int r;

	if (x->stopping || x->working)
		return;
	x->work.data = x;
	r = uv_queue_work(t->loop, &x->work, do_check, checked);
	if (r == 0)
		x->working = 1;
	else
		uv_timer_start(&x->timer, on_timer, x->interval_ms, 0);
}

/* ---- the proxy's certificates -------------------------------------------------------------- */

static int publish(struct external *x, const char **error_r)
{
	static char error[700];
	const struct ep_tls_material *m =
		x->host->tls_material != NULL ? x->host->tls_material(x->host) : NULL;
	const char *paths[4], *names[4] = { "tls.crt", "tls.key", "client-ca.crt", "ca.crt" };
	char *data[4] = { NULL, NULL, NULL, NULL }, *why = NULL;
	struct ep_pub_file files[4];
	size_t n = 0, len;
	int changed = 0, r = 0;

	if (m == NULL || x->certs_dir == NULL)
		return 0;
	paths[0] = m->cert_file;
	paths[1] = m->key_file;
	paths[2] = m->client_ca_file;
	paths[3] = m->ca_file;
	for (size_t i = 0; i < 4 && r == 0; i++) {
		if (paths[i] == NULL)
			continue;
		if (ep_file_read(paths[i], 1 << 20, &data[i], &len, &why) < 0) {
			snprintf(error, sizeof(error), "%s", why);
			free(why);
			r = -EIO;
			break;
		}
		files[n++] = (struct ep_pub_file){ names[i], data[i], len, i == 1 ? 0600 : 0644 };
	}
	if (r == 0 && ep_publish_files(x->certs_dir, files, n, &changed, &why) < 0) {
		snprintf(error, sizeof(error), "%s", why);
		free(why);
		r = -EIO;
	}
	for (size_t i = 0; i < 4; i++)
		free(data[i]);
	if (r < 0) {
		*error_r = error;
		return r;
	}
	x->published = m->generation;
	if (changed)
		x->host->log(x->host, m->client_ca_changed ? EP_LOG_NOTICE : EP_LOG_INFO,
			     "published the proxy's certificates (generation %llu) into %s%s",
			     (unsigned long long)m->generation, x->certs_dir,
			     m->client_ca_changed ? ": client-ca.crt changed, restart the proxy if it "
						    "reads its trusted CA file only at start (etcd "
						    "grpc-proxy does)"
						  : "");
	return 0;
}

static void external_tls_changed(void *state)
{
	struct external *x = state;
	const char *error;

	if (x->stopping)
		return;
	if (publish(x, &error) < 0)
		x->host->log(x->host, EP_LOG_WARNING, "the new certificates cannot be published into "
			     "%s; the proxy keeps the previous ones: %s", x->certs_dir, error);
}

/* ---- life ---------------------------------------------------------------------------------- */

static char *policy_str(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	return cJSON_IsString(v) ? ep_strdup(v->valuestring) : NULL;
}

static int external_init(struct ep_host *host, void **state_r, const char **error_r)
{
	const struct ep_tenant_info *t = host->tenant;
	cJSON *opts = cJSON_Parse(t->options_json ? t->options_json : "{}");
	cJSON *policy = cJSON_Parse(t->policy_json ? t->policy_json : "{}");
	const cJSON *o = cJSON_GetObjectItemCaseSensitive(policy, "external");
	const cJSON *iv = cJSON_GetObjectItemCaseSensitive(o, "interval_ms");
	const cJSON *to = cJSON_GetObjectItemCaseSensitive(o, "timeout_ms");
	struct external *x;

	if (!cJSON_IsObject(opts) || opts->child != NULL) {
		cJSON_Delete(opts);
		cJSON_Delete(policy);
		*error_r = "backends.external: takes no options (its settings are the tenant's "
			   "spec.external)";
		return -EINVAL;
	}
	cJSON_Delete(opts);
	if (!cJSON_IsObject(o) || !cJSON_IsNumber(iv) || !cJSON_IsNumber(to)) {
		cJSON_Delete(policy);
		*error_r = "policy.external: expected {\"check\", \"interval_ms\", \"timeout_ms\", ...}";
		return -EINVAL;
	}
	x = ep_malloc0(sizeof(*x));
	x->host = host;
	x->check = policy_str(o, "check");
	x->client_dir = policy_str(o, "client_dir");
	x->certs_dir = policy_str(o, "certificates_dir");
	x->interval_ms = (uint64_t)iv->valuedouble;
	x->timeout_ms = (uint64_t)to->valuedouble;
	if (x->check != NULL && strcmp(x->check, "http") == 0)
		x->url = policy_str(o, "health_url");
	cJSON_Delete(policy);
	if (x->check == NULL || (strcmp(x->check, "http") == 0 && x->url == NULL) ||
	    (strcmp(x->check, "http") != 0 && strncmp(t->listen, "unix:", 5) == 0)) {
		free(x->check);
		free(x->client_dir);
		free(x->certs_dir);
		free(x->url);
		free(x);
		*error_r = "policy.external: a check of \"grpc\" needs a TCP spec.listen, \"http\" a "
			   "health_url";
		return -EINVAL;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	uv_timer_init(host->loop, &x->timer);
	x->timer.data = x;
	*state_r = x;
	return 0;
}

static int external_start(void *state, const char **error_r)
{
	struct external *x = state;
	int r = publish(x, error_r);
	int tls = x->host->tls_material != NULL && x->host->tls_material(x->host) != NULL;

	if (r < 0)
		return r;
	/* the certificate source has published by now: TLS or not is known */
	if (x->url == NULL)
		x->url = ep_strdup_printf("%s://%s", tls ? "https" : "http", x->host->tenant->listen);
	x->host->log(x->host, EP_LOG_INFO, "checking the external proxy every %llu ms (%s: %s)",
		     (unsigned long long)x->interval_ms, x->check, x->url);
	uv_timer_start(&x->timer, on_timer, 0, 0);
	return 0;
}

static void timer_closed(uv_handle_t *h)
{
	struct external *x = h->data;

	x->timer_closed = 1;
	maybe_stopped(x);
}

static void external_stop(void *state, int graceful)
{
	struct external *x = state;

	(void)graceful;
	if (x->stopping)
		return;
	x->stopping = 1;
	uv_timer_stop(&x->timer);
	uv_close((uv_handle_t *)&x->timer, timer_closed);
}

static char *external_counters(void *state)
{
	struct external *x = state;
	cJSON *o = cJSON_CreateObject();
	char *text;

	cJSON_AddNumberToObject(o, "health_checks", (double)x->checks);
	cJSON_AddNumberToObject(o, "health_check_failures", (double)x->failures);
	cJSON_AddBoolToObject(o, "proxy_healthy", x->healthy);
	if (x->reason[0] != '\0')
		cJSON_AddStringToObject(o, "proxy_reason", x->reason);
	if (x->certs_dir != NULL)
		cJSON_AddNumberToObject(o, "certificates_generation", (double)x->published);
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	return text;
}

static void external_fini(void *state)
{
	struct external *x = state;

	if (!x->stopping) {
		/* start() failed or stop() never ran: the timer still has to go */
		uv_close((uv_handle_t *)&x->timer, NULL);
		uv_run(x->host->loop, UV_RUN_NOWAIT);
	}
	free(x->check);
	free(x->url);
	free(x->client_dir);
	free(x->certs_dir);
	free(x);
}

static const struct ep_backend_ops external_ops = {
	.start = external_start,
	.stop = external_stop,
	.counters = external_counters,
	.tls_changed = external_tls_changed,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_BACKEND,
	.name = "external",
	.description = "a proxy run by someone else: health checks and its certificates",
	.init = external_init,
	.fini = external_fini,
	.ops = &external_ops,
};
