/*
 * Requests to the Kubernetes API server on the supervisor's loop: one libcurl
 * multi handle driven by libuv (curl_multi_socket_action from uv_poll_t and
 * uv_timer_t callbacks), so nothing ever blocks the loop.
 *
 * A request ends with done(), exactly once, unless it was cancelled.  A watch
 * (or any request with a line callback) hands each complete line of the body
 * to line() as it arrives: a chunk of the stream is not an event, a line is.
 */
#ifndef EP_KUBE_CLIENT_H
#define EP_KUBE_CLIENT_H

#include <stddef.h>
#include <uv.h>

#include "kubeconfig.h"

struct kube_client;
struct kube_req;

struct kube_result {
	long status;          /* HTTP status; 0 when no answer came (error says why) */
	const char *error;    /* transport error, or NULL */
	const char *body;     /* the whole body (not for line requests); NUL-terminated */
	size_t len;
	unsigned retry_after; /* seconds from a Retry-After header, 0 when absent */
};

typedef void kube_done_cb(void *ctx, const struct kube_result *res);
/* One line of the body, without its newline.  Return -1 to stop (the request is cancelled). */
typedef int kube_line_cb(void *ctx, const char *line, size_t len);

/* conn is copied.  Returns NULL with *error_r when libcurl cannot start. */
struct kube_client *kube_client_new(uv_loop_t *loop, const struct ep_kube_conn *conn,
				    char **error_r);
/* Cancels every request (no callback runs) and frees the client once its handles are closed. */
void kube_client_free(struct kube_client *kc);

/*
 * Start a request.  path: "/apis/...?query" (appended to the server URL).
 * body may be NULL; content_type is then ignored.  timeout_s: 0 for none
 * (watches end by their own timeoutSeconds).  Returns the request, valid
 * until done() returns or kube_cancel().
 */
struct kube_req *kube_request(struct kube_client *kc, const char *method, const char *path,
			      const char *content_type, const char *body, long timeout_s,
			      kube_done_cb *done, kube_line_cb *line, void *ctx);
void kube_cancel(struct kube_req *r);

/* The User-Agent names this node: "etcdproxyd/VERSION (node NODE)". */
void kube_client_set_agent(struct kube_client *kc, const char *node);

/* A 401 was answered: read the token file again before the next request. */
void kube_client_token_stale(struct kube_client *kc);

/* "message" of a Kubernetes Status body, or a short description of the answer (static buffer). */
const char *kube_status_message(const struct kube_result *res);

#endif /* EP_KUBE_CLIENT_H */
