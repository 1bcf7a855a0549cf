/*
 * backend-hello: the smallest backend plugin, built out of tree against the
 * installed SDK by tests/integration/test_sdk.py:
 *
 *   cc -shared -o backend-hello.so backend-hello.c \
 *      $(pkg-config --cflags --libs etcdproxy-plugin)
 *
 * start() listens on the tenant's TCP address and calls host->ready(); every
 * connection gets one line "<greeting> <tenant> <prefix>\n" and is closed.
 * Its one option, "greeting" (default "hello"), is described by a table that
 * the host parses for it and etcdproxyd --check-config judges.  stop()
 * closes the listener and the open connections and calls host->stopped()
 * once the last handle is closed.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <etcdproxy/plugin.h>

struct conn {
	uv_tcp_t tcp;
	uv_write_t write;
	struct hello *h;
	struct conn *next;
	char line[256];
};

struct hello {
	struct ep_host *host;
	char *greeting; /* the option, malloc'ed */
	uv_tcp_t server;
	int server_open;
	struct conn *conns;
	int stopping;
	int stopped_reported;
};

static void maybe_stopped(struct hello *h)
{
	if (h->stopping && !h->server_open && h->conns == NULL && !h->stopped_reported) {
		h->stopped_reported = 1;
		h->host->log(h->host, EP_LOG_INFO, "stopped");
		h->host->stopped(h->host);
	}
}

static void conn_closed(uv_handle_t *handle)
{
	struct conn *c = handle->data;
	struct hello *h = c->h;

	for (struct conn **pp = &h->conns; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	free(c);
	maybe_stopped(h);
}

static void conn_close(struct conn *c)
{
	if (!uv_is_closing((uv_handle_t *)&c->tcp))
		uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void written(uv_write_t *req, int status)
{
	(void)status;
	conn_close(req->data);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct hello *h = server->data;
	struct conn *c;
	uv_buf_t buf;

	if (status < 0 || h->stopping)
		return;
	c = calloc(1, sizeof(*c));
	if (c == NULL)
		return;
	c->h = h;
	uv_tcp_init(h->host->loop, &c->tcp);
	c->tcp.data = c;
	c->write.data = c;
	c->next = h->conns;
	h->conns = c;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
		conn_close(c);
		return;
	}
	snprintf(c->line, sizeof(c->line), "%s %s %s\n", h->greeting, h->host->tenant->name,
		 h->host->tenant->prefix);
	buf = uv_buf_init(c->line, (unsigned)strlen(c->line));
	if (uv_write(&c->write, (uv_stream_t *)&c->tcp, &buf, 1, written) < 0)
		conn_close(c);
}

static const struct ep_option hello_options[] = {
	{ "greeting", EP_OPT_STRING, 0, offsetof(struct hello, greeting), 0, 0, NULL,
	  "the first word of every answer" },
	{ NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL },
};

static void hello_fini(void *state);

static int hello_init(struct ep_host *host, void **state_r, const char **error_r)
{
	struct hello *h;

	if (strncmp(host->tenant->listen, "unix:", 5) == 0) {
		*error_r = "the hello backend listens on TCP only";
		return -EINVAL;
	}
	h = calloc(1, sizeof(*h));
	if (h == NULL || (h->greeting = strdup("hello")) == NULL) {
		free(h);
		return -ENOMEM;
	}
	h->host = host;
	/* the host checks the options against hello_options and fills h->greeting */
	if (host->options_parse(host, h, error_r) < 0) {
		hello_fini(h);
		return -EINVAL;
	}
	*state_r = h;
	return 0;
}

static int hello_start(void *state, const char **error_r)
{
	struct hello *h = state;
	const char *listen = h->host->tenant->listen;
	const char *colon = strrchr(listen, ':');
	char host[64];
	struct sockaddr_storage sa;
	size_t len;
	int r;

	if (colon == NULL || (len = (size_t)(colon - listen)) >= sizeof(host)) {
		*error_r = "spec.listen: expected HOST:PORT";
		return -EINVAL;
	}
	memcpy(host, listen, len);
	host[len] = '\0';
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");
	if (host[0] == '[') {
		memmove(host, host + 1, len);
		host[strlen(host) - 1] = '\0';
		r = uv_ip6_addr(host, atoi(colon + 1), (struct sockaddr_in6 *)&sa);
	} else {
		r = uv_ip4_addr(host, atoi(colon + 1), (struct sockaddr_in *)&sa);
	}
	if (r < 0) {
		*error_r = "spec.listen: not an IP address";
		return -EINVAL;
	}
	uv_tcp_init(h->host->loop, &h->server);
	h->server.data = h;
	h->server_open = 1;
	r = uv_tcp_bind(&h->server, (const struct sockaddr *)&sa, 0);
	if (r == 0)
		r = uv_listen((uv_stream_t *)&h->server, 16, on_connection);
	if (r < 0) {
		/* the worker exits right after a failed start(): close before it runs the loop */
		*error_r = uv_strerror(r);
		h->stopping = 1;
		uv_close((uv_handle_t *)&h->server, NULL);
		h->server_open = 0;
		h->stopped_reported = 1;
		return r == UV_EADDRINUSE ? -EADDRINUSE : -EIO;
	}
	h->host->log(h->host, EP_LOG_INFO, "listening on %s", listen);
	h->host->ready(h->host, listen);
	return 0;
}

static void server_closed(uv_handle_t *handle)
{
	struct hello *h = handle->data;

	h->server_open = 0;
	maybe_stopped(h);
}

static void hello_stop(void *state, int graceful)
{
	struct hello *h = state;

	(void)graceful;
	h->stopping = 1;
	if (h->server_open && !uv_is_closing((uv_handle_t *)&h->server))
		uv_close((uv_handle_t *)&h->server, server_closed);
	for (struct conn *c = h->conns; c != NULL; c = c->next)
		conn_close(c);
	maybe_stopped(h);
}

static void hello_fini(void *state)
{
	struct hello *h = state;

	free(h->greeting);
	free(h);
}

static const struct ep_backend_ops hello_ops = {
	.start = hello_start,
	.stop = hello_stop,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_BACKEND,
	.name = "hello",
	.description = "says hello on the tenant's TCP address (SDK test plugin)",
	.init = hello_init,
	.fini = hello_fini,
	.ops = &hello_ops,
	.options = hello_options,
};
