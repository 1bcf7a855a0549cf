/*
 * The Kubernetes API client's transport: libcurl's multi interface on libuv
 * (kube-client.h).  One curl easy handle per request; connections are reused
 * by the multi handle's pool.
 */
#include "build-config.h"

#define EP_LOG_SUBSYS "kubernetes"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "files.h"
#include "kube-client.h"
#include "log.h"
#include "util.h"

#define TOKEN_REREAD_MS 60000 /* a projected token rotates; kubelet renews it well before expiry */
#define BODY_MAX (64u << 20)  /* a list of every EtcdStorage fits many times over */
#define LINE_MAX_BYTES (16u << 20)

struct kube_client {
	uv_loop_t *loop;
	CURLM *multi;
	uv_timer_t timer;
	struct ep_kube_conn conn;
	char *token;            /* the bearer token in use */
	uint64_t token_read_ms; /* when token_file was read; 0: read it before the next request */
	struct kube_req *reqs;
	struct sock_ctx *socks; /* the polls of libcurl's sockets */
	char *agent;            /* User-Agent */
	int closing;
	int handles; /* the timer and the socket polls still open */
};

struct kube_req {
	struct kube_req *next, **pprev;
	struct kube_client *kc;
	CURL *easy;
	struct curl_slist *headers;
	char *body_out;
	char *buf; /* the body, or the line being assembled */
	size_t len, cap;
	unsigned retry_after;
	kube_done_cb *done;
	kube_line_cb *line;
	void *ctx;
	int stopped; /* line() asked to stop */
	int as_body; /* a line request answered with an error: its body goes to done() whole */
	char errbuf[CURL_ERROR_SIZE];
};

struct sock_ctx {
	uv_poll_t poll;
	curl_socket_t fd;
	struct kube_client *kc;
	struct sock_ctx *next, **pprev;
};

static void check_done(struct kube_client *kc);

/* ---- libcurl on libuv --------------------------------------------------------------------- */

static void on_poll_closed(uv_handle_t *h)
{
	struct sock_ctx *s = h->data;
	struct kube_client *kc = s->kc;

	free(s);
	if (--kc->handles == 0 && kc->closing)
		free(kc);
}

static void sock_close(struct sock_ctx *s)
{
	*s->pprev = s->next;
	if (s->next != NULL)
		s->next->pprev = s->pprev;
	uv_poll_stop(&s->poll);
	uv_close((uv_handle_t *)&s->poll, on_poll_closed);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
	struct sock_ctx *s = p->data;
	int flags = 0, running;

	if (status < 0)
		flags = CURL_CSELECT_ERR;
	if (events & UV_READABLE)
		flags |= CURL_CSELECT_IN;
	if (events & UV_WRITABLE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(s->kc->multi, s->fd, flags, &running);
	check_done(s->kc);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct kube_client *kc = userp;
	struct sock_ctx *s = socketp;
	int events = 0;

	if (what == CURL_POLL_REMOVE) {
		if (s != NULL) {
			sock_close(s);
			curl_multi_assign(kc->multi, fd, NULL);
		}
		return 0;
	}
	if (s == NULL) {
		s = ep_malloc0(sizeof(*s));
		s->fd = fd;
		s->kc = kc;
		if (uv_poll_init_socket(kc->loop, &s->poll, fd) < 0) {
			free(s);
			return -1;
		}
		s->poll.data = s;
		kc->handles++;
		s->next = kc->socks;
		s->pprev = &kc->socks;
		if (kc->socks != NULL)
			kc->socks->pprev = &s->next;
		kc->socks = s;
		curl_multi_assign(kc->multi, fd, s);
	}
	if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
		events |= UV_READABLE;
	if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
		events |= UV_WRITABLE;
	uv_poll_start(&s->poll, events, on_poll);
	return 0;
}

static void on_timer(uv_timer_t *t)
{
	struct kube_client *kc = t->data;
	int running;

	curl_multi_socket_action(kc->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	check_done(kc);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct kube_client *kc = userp;

	if (timeout_ms < 0)
		uv_timer_stop(&kc->timer);
	else
		uv_timer_start(&kc->timer, on_timer, (uint64_t)timeout_ms, 0);
	return 0;
}

/* ---- requests ----------------------------------------------------------------------------- */

static void unlink_req(struct kube_req *r);

/* Out of the list and the multi handle (both are no-ops when already out), then freed. */
static void req_free(struct kube_req *r)
{
	unlink_req(r);
	if (r->kc->multi != NULL)
		curl_multi_remove_handle(r->kc->multi, r->easy);
	curl_easy_cleanup(r->easy);
	curl_slist_free_all(r->headers);
	free(r->body_out);
	free(r->buf);
	free(r);
}

static void unlink_req(struct kube_req *r)
{
	*r->pprev = r->next;
	if (r->next != NULL)
		r->next->pprev = r->pprev;
	r->next = NULL;
	r->pprev = &r->next;
}

/*
 * Finished transfers: each request leaves the client before its done() runs,
 * so that done() may start, cancel, or free the client itself.
 */
static void check_done(struct kube_client *kc)
{
	CURLMsg *m;
	int left;

	while (!kc->closing && (m = curl_multi_info_read(kc->multi, &left)) != NULL) {
		struct kube_req *r = NULL;
		struct kube_result res = { 0 };
		CURLcode result = m->data.result;

		if (m->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
		unlink_req(r);
		curl_multi_remove_handle(kc->multi, r->easy);
		if (result == CURLE_OK || r->stopped)
			curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &res.status);
		else
			res.error = r->errbuf[0] ? r->errbuf : curl_easy_strerror(result);
		if (r->line != NULL && !r->as_body && r->len > 0 && !r->stopped &&
		    res.error == NULL) {
			/* the last line had no newline */
			r->buf[r->len] = '\0';
			r->line(r->ctx, r->buf, r->len);
			r->len = 0;
		}
		res.body = (r->line == NULL || r->as_body) && r->buf != NULL ? r->buf : "";
		res.len = r->line == NULL || r->as_body ? r->len : 0;
		res.retry_after = r->retry_after;
		if (res.status == 401)
			kube_client_token_stale(kc);
		r->done(r->ctx, &res);
		req_free(r);
	}
}

static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
	struct kube_req *r = userp;
	size_t len = size * n;

	if (len > 12 && strncasecmp(data, "Retry-After:", 12) == 0)
		r->retry_after = (unsigned)strtoul(data + 12, NULL, 10);
	return len;
}

static int grow(struct kube_req *r, size_t more)
{
	if (r->len + more + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;

		while (cap < r->len + more + 1)
			cap *= 2;
		if (cap > (r->line ? LINE_MAX_BYTES : BODY_MAX) + 1)
			return -1;
		r->buf = ep_realloc(r->buf, cap);
		r->cap = cap;
	}
	return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *userp)
{
	struct kube_req *r = userp;
	size_t len = size * n;

	if (r->line != NULL && !r->as_body && r->len == 0) {
		long code = 0;

		/* a Status (403, 429, 500...) is not a stream of events: done() reads it */
		curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
		if (code < 200 || code > 299)
			r->as_body = 1;
	}
	if (r->line == NULL || r->as_body) {
		if (grow(r, len) < 0)
			return 0; /* too large: libcurl fails the transfer */
		memcpy(r->buf + r->len, data, len);
		r->len += len;
		r->buf[r->len] = '\0';
		return len;
	}
	for (size_t i = 0; i < len; i++) {
		if (data[i] != '\n') {
			if (grow(r, 1) < 0)
				return 0;
			r->buf[r->len++] = data[i];
			continue;
		}
		r->buf[r->len] = '\0';
		if (r->len > 0 && r->line(r->ctx, r->buf, r->len) < 0) {
			r->stopped = 1;
			return 0;
		}
		r->len = 0;
	}
	return len;
}

static const char *token(struct kube_client *kc)
{
	uint64_t now = ep_now_ms();

	if (kc->conn.token_file != NULL &&
	    (kc->token_read_ms == 0 || now - kc->token_read_ms >= TOKEN_REREAD_MS)) {
		char *text = NULL, *error = NULL;
		size_t len;

		if (ep_file_read(kc->conn.token_file, 65536, &text, &len, &error) == 0) {
			while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' ||
					   text[len - 1] == ' '))
				text[--len] = '\0';
			free(kc->token);
			kc->token = text;
		} else {
			/* keep the last one: the file is being replaced, say */
			ep_warn("kubernetes: cannot read the token: %s", error);
			free(error);
		}
		kc->token_read_ms = now;
	}
	return kc->token != NULL ? kc->token : kc->conn.token;
}

void kube_client_token_stale(struct kube_client *kc)
{
	kc->token_read_ms = 0;
}

struct kube_req *kube_request(struct kube_client *kc, const char *method, const char *path,
			      const char *content_type, const char *body, long timeout_s,
			      kube_done_cb *done, kube_line_cb *line, void *ctx)
{
	struct kube_req *r = ep_malloc0(sizeof(*r));
	const struct ep_kube_conn *c = &kc->conn;
	const char *tok = token(kc);
	char *url = ep_strdup_printf("%s%s", c->server, path);
	char *h;

	r->kc = kc;
	r->done = done;
	r->line = line;
	r->ctx = ctx;
	r->easy = curl_easy_init();
	if (r->easy == NULL)
		abort();
	curl_easy_setopt(r->easy, CURLOPT_URL, url);
	free(url);
	curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
	curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(r->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
	curl_easy_setopt(r->easy, CURLOPT_USERAGENT,
			 kc->agent != NULL ? kc->agent : "etcdproxyd/" PACKAGE_VERSION);
	curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	if (timeout_s > 0)
		curl_easy_setopt(r->easy, CURLOPT_TIMEOUT, timeout_s);
	/* a long watch: notice a dead peer even when no event is due */
	curl_easy_setopt(r->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	if (c->ca.data != NULL) {
		struct curl_blob b = { c->ca.data, c->ca.len, CURL_BLOB_NOCOPY };

		curl_easy_setopt(r->easy, CURLOPT_CAINFO_BLOB, &b);
	} else if (c->ca_file != NULL) {
		curl_easy_setopt(r->easy, CURLOPT_CAINFO, c->ca_file);
	}
	if (c->cert.data != NULL) {
		struct curl_blob b = { c->cert.data, c->cert.len, CURL_BLOB_NOCOPY };

		curl_easy_setopt(r->easy, CURLOPT_SSLCERT_BLOB, &b);
		curl_easy_setopt(r->easy, CURLOPT_SSLCERTTYPE, "PEM");
	} else if (c->cert_file != NULL) {
		curl_easy_setopt(r->easy, CURLOPT_SSLCERT, c->cert_file);
	}
	if (c->key.data != NULL) {
		struct curl_blob b = { c->key.data, c->key.len, CURL_BLOB_NOCOPY };

		curl_easy_setopt(r->easy, CURLOPT_SSLKEY_BLOB, &b);
		curl_easy_setopt(r->easy, CURLOPT_SSLKEYTYPE, "PEM");
	} else if (c->key_file != NULL) {
		curl_easy_setopt(r->easy, CURLOPT_SSLKEY, c->key_file);
	}
	if (c->insecure) {
		curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	r->headers = curl_slist_append(r->headers, "Accept: application/json");
	if (tok != NULL && tok[0] != '\0') {
		h = ep_strdup_printf("Authorization: Bearer %s", tok);
		r->headers = curl_slist_append(r->headers, h);
		free(h);
	}
	if (body != NULL) {
		h = ep_strdup_printf("Content-Type: %s", content_type);
		r->headers = curl_slist_append(r->headers, h);
		free(h);
		r->body_out = ep_strdup(body);
		curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body_out);
		curl_easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE, (long)strlen(r->body_out));
	}
	r->headers = curl_slist_append(r->headers, "Expect:");
	curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
	r->next = kc->reqs;
	r->pprev = &kc->reqs;
	if (kc->reqs != NULL)
		kc->reqs->pprev = &r->next;
	kc->reqs = r;
	curl_multi_add_handle(kc->multi, r->easy);
	return r;
}

void kube_cancel(struct kube_req *r)
{
	if (r != NULL)
		req_free(r);
}

const char *kube_status_message(const struct kube_result *res)
{
	static char buf[512];
	cJSON *o;
	const cJSON *m;

	if (res->error != NULL) {
		snprintf(buf, sizeof(buf), "%s", res->error);
		return buf;
	}
	o = cJSON_ParseWithLength(res->body, res->len);
	m = cJSON_GetObjectItemCaseSensitive(o, "message");
	if (cJSON_IsString(m))
		snprintf(buf, sizeof(buf), "HTTP %ld: %s", res->status, m->valuestring);
	else
		snprintf(buf, sizeof(buf), "HTTP %ld", res->status);
	cJSON_Delete(o);
	return buf;
}

/* ---- the client --------------------------------------------------------------------------- */

static char *dup_blob(const struct ep_kube_blob *b, size_t *len_r)
{
	char *p;

	if (b->data == NULL)
		return NULL;
	p = ep_malloc0(b->len + 1);
	memcpy(p, b->data, b->len);
	*len_r = b->len;
	return p;
}

struct kube_client *kube_client_new(uv_loop_t *loop, const struct ep_kube_conn *conn,
				    char **error_r)
{
	struct kube_client *kc = ep_malloc0(sizeof(*kc));
	struct ep_kube_conn *c = &kc->conn;

	kc->loop = loop;
	kc->multi = curl_multi_init();
	if (kc->multi == NULL) {
		free(kc);
		*error_r = ep_strdup("kubernetes: curl_multi_init failed");
		return NULL;
	}
	c->server = ep_strdup(conn->server);
	c->ca_file = ep_strdup(conn->ca_file);
	c->ca.data = dup_blob(&conn->ca, &c->ca.len);
	c->cert_file = ep_strdup(conn->cert_file);
	c->cert.data = dup_blob(&conn->cert, &c->cert.len);
	c->key_file = ep_strdup(conn->key_file);
	c->key.data = dup_blob(&conn->key, &c->key.len);
	c->token = ep_strdup(conn->token);
	c->token_file = ep_strdup(conn->token_file);
	c->insecure = conn->insecure;
	c->namespace = ep_strdup(conn->namespace);
	c->origin = ep_strdup(conn->origin);
	uv_timer_init(loop, &kc->timer);
	kc->timer.data = kc;
	kc->handles = 1;
	curl_multi_setopt(kc->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_multi_setopt(kc->multi, CURLMOPT_SOCKETDATA, kc);
	curl_multi_setopt(kc->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
	curl_multi_setopt(kc->multi, CURLMOPT_TIMERDATA, kc);
	return kc;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct kube_client *kc = h->data;

	if (--kc->handles == 0)
		free(kc);
}

void kube_client_set_agent(struct kube_client *kc, const char *node)
{
	free(kc->agent);
	/* as client-go's: the API server's audit log then tells the nodes apart */
	kc->agent = ep_strdup_printf("etcdproxyd/%s (node %s)", PACKAGE_VERSION, node);
}

void kube_client_free(struct kube_client *kc)
{
	if (kc == NULL)
		return;
	kc->closing = 1;
	while (kc->reqs != NULL)
		req_free(kc->reqs);
	curl_multi_cleanup(kc->multi);
	kc->multi = NULL;
	while (kc->socks != NULL) /* what libcurl did not remove itself */
		sock_close(kc->socks);
	ep_kube_conn_free(&kc->conn);
	free(kc->agent);
	free(kc->token);
	kc->token = NULL;
	uv_close((uv_handle_t *)&kc->timer, on_timer_closed);
}
