/*
 * The control socket: one framed request per connection from etcdproxyctl,
 * one framed reply, then the supervisor closes the connection.
 */
#include "build-config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define EP_LOG_SUBSYS "control"
#include "log.h"
#include "messages.h"
#include "kube-source.h"
#include "purge.h"
#include "supervisor.h"
#include "util.h"

struct ctl_conn {
	uv_pipe_t pipe;
	struct supervisor *sv;
	struct ctl_conn *next, **prevp; /* in sv->control_conns */
	struct ep_frame_reader reader;
	int answered;
	/* a rotate or issue-client-cert relayed to a worker: its CERTS_REQ id and tenant */
	uint64_t certs_id;
	char *certs_tenant;
	uv_timer_t timer; /* the supervisor's own limit on the worker's answer */
	int handles;      /* the pipe and the timer: freed when both are closed */
};

/* The worker answers a relayed rotate or issue within this, or the client hears why. */
#define CERTS_ANSWER_MS (EP_CERTS_REQ_TIMEOUT_MS - 5000)

static void conn_closed(uv_handle_t *h)
{
	struct ctl_conn *c = h->data;

	if (--c->handles > 0)
		return;
	if (c->next != NULL)
		c->next->prevp = c->prevp;
	*c->prevp = c->next;
	ep_frame_reader_free(&c->reader);
	free(c->certs_tenant);
	free(c);
}

static void conn_close(struct ctl_conn *c)
{
	if (!uv_is_closing((uv_handle_t *)&c->pipe))
		uv_close((uv_handle_t *)&c->pipe, conn_closed);
	if (!uv_is_closing((uv_handle_t *)&c->timer))
		uv_close((uv_handle_t *)&c->timer, conn_closed);
}

static void reply_written(uv_shutdown_t *req, int status)
{
	struct ctl_conn *c = req->data;

	free(req);
	conn_close(c);
}

static void reply(struct ctl_conn *c, cJSON *answer)
{
	uv_shutdown_t *req;

	c->answered = 1;
	uv_timer_stop(&c->timer);
	ep_ipc_send((uv_stream_t *)&c->pipe, EP_MSG_CTL_REPLY, answer);
	cJSON_Delete(answer);
	uv_read_stop((uv_stream_t *)&c->pipe);
	req = ep_malloc0(sizeof(*req));
	req->data = c;
	/* shutdown completes after the queued reply is written */
	if (uv_shutdown(req, (uv_stream_t *)&c->pipe, reply_written) < 0) {
		free(req);
		conn_close(c);
	}
}

static cJSON *__attribute__((format(printf, 1, 2))) error_reply(const char *fmt, ...)
{
	cJSON *o = cJSON_CreateObject();
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = ep_strdup_vprintf(fmt, ap);
	va_end(ap);

	cJSON_AddBoolToObject(o, "ok", 0);
	cJSON_AddStringToObject(o, "error", msg);
	free(msg);
	return o;
}

static cJSON *status_reply(struct supervisor *sv, int detailed)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *d = cJSON_AddObjectToObject(o, "daemon");
	cJSON *list = cJSON_CreateArray();
	unsigned total, ready, failed;

	supervisor_counts(sv, &total, &ready, &failed);
	cJSON_AddBoolToObject(o, "ok", 1);
	cJSON_AddNumberToObject(d, "pid", (double)getpid());
	cJSON_AddStringToObject(d, "version", PACKAGE_VERSION);
	cJSON_AddStringToObject(d, "config", sv->config_path);
	cJSON_AddStringToObject(d, "storages_dir", sv->global->storages_dir);
	cJSON_AddNumberToObject(d, "uptime_s", (double)((ep_now_ms() - sv->started_ms) / 1000));
	cJSON_AddNumberToObject(d, "generation", (double)sv->generation);
	cJSON_AddNumberToObject(d, "tenants", total);
	cJSON_AddNumberToObject(d, "ready", ready);
	cJSON_AddNumberToObject(d, "failed", failed);
	cJSON_AddBoolToObject(d, "shutting_down", sv->shutting_down);
	if (sv->last_reload_error != NULL)
		cJSON_AddStringToObject(d, "last_reload_error", sv->last_reload_error);
	if (sv->kube != NULL)
		cJSON_AddItemToObject(d, "kubernetes", kube_source_describe(sv->kube));
	cJSON_AddItemToObject(d, "pending_purges", purge_list(sv));
	for (struct tenant *t = sv->tenants; t != NULL; t = t->next)
		cJSON_AddItemToArray(list, tenant_to_json(t, detailed));
	cJSON_AddItemToObject(o, "tenants", list);
	return o;
}

/*
 * rotate / issue-client-cert: the worker's certificate source does it.  The
 * answer comes later (control_certs_reply); NULL means "deferred".
 */
static void on_certs_timeout(uv_timer_t *h)
{
	struct ctl_conn *c = h->data;

	if (c->answered)
		return;
	ep_warn("tenant %s: its worker did not answer a %s request within %d s", c->certs_tenant,
		"certificate", CERTS_ANSWER_MS / 1000);
	reply(c, error_reply("the worker of tenant \"%s\" did not answer within %d s; it may "
			     "still finish the work: see etcdproxyctl show %s", c->certs_tenant,
			     CERTS_ANSWER_MS / 1000, c->certs_tenant));
}

static cJSON *relay_certs(struct ctl_conn *c, const cJSON *req, const char *cmd)
{
	static uint64_t next_id = 1;
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(req, "name");
	const cJSON *cn = cJSON_GetObjectItemCaseSensitive(req, "cn");
	const cJSON *out = cJSON_GetObjectItemCaseSensitive(req, "out");
	struct tenant *t;
	struct ep_msg_certs_req m;
	cJSON *msg;

	if (!cJSON_IsString(name))
		return error_reply("%s needs a tenant name", cmd);
	t = supervisor_find(c->sv, name->valuestring);
	if (t == NULL)
		return error_reply("no tenant named \"%s\"", name->valuestring);
	if (strcmp(cmd, "issue-client-cert") == 0 &&
	    (!cJSON_IsString(cn) || !cJSON_IsString(out) || out->valuestring[0] != '/'))
		return error_reply("issue-client-cert needs \"cn\" and an absolute \"out\"");
	if (strcmp(cmd, "issue-client-cert") == 0) {
		const char *sd = c->sv->global->state_dir;
		size_t n = strlen(sd);

		while (n > 1 && sd[n - 1] == '/')
			n--;

		/* the workers' private keys live there: nobody writes into it from outside */
		if (strncmp(out->valuestring, sd, n) == 0 &&
		    (out->valuestring[n] == '/' || out->valuestring[n] == '\0'))
			return error_reply("--out %s is inside state_dir %s, which belongs to "
					   "etcdproxy: give a directory of its own",
					   out->valuestring, sd);
	}
	if (t->pid <= 0 || !t->ipc_open ||
	    (t->state != TENANT_READY && t->state != TENANT_UNHEALTHY))
		return error_reply("tenant \"%s\" has no worker serving it now (state %s): try "
				   "again once it is ready", t->name, tenant_state_name(t->state));
	c->certs_id = next_id++;
	c->certs_tenant = ep_strdup(t->name);
	if (strcmp(cmd, "rotate") == 0)
		m = (struct ep_msg_certs_req){ .id = (int64_t)c->certs_id, .op = "rotate" };
	else
		m = (struct ep_msg_certs_req){ .id = (int64_t)c->certs_id, .op = "issue",
						 .cn = cn->valuestring, .out = out->valuestring };
	msg = ep_msg_certs_req_encode(&m);
	ep_ipc_send((uv_stream_t *)&t->ipc, EP_MSG_CERTS_REQ, msg);
	cJSON_Delete(msg);
	uv_timer_start(&c->timer, on_certs_timeout, CERTS_ANSWER_MS, 0);
	return NULL;
}

void control_certs_reply(struct supervisor *sv, const char *tenant,
			 const struct ep_msg_certs_reply *m)
{
	for (struct ctl_conn *c = sv->control_conns; c != NULL; c = c->next) {
		if (c->answered || c->certs_tenant == NULL || c->certs_id != (uint64_t)m->id ||
		    strcmp(c->certs_tenant, tenant) != 0)
			continue;
		/* the CTL_REPLY of rotate / issue-client-cert: ok, error, result */
		cJSON *o = cJSON_CreateObject();

		cJSON_AddBoolToObject(o, "ok", m->ok);
		if (m->error != NULL)
			cJSON_AddStringToObject(o, "error", m->error);
		if (m->result != NULL)
			cJSON_AddItemToObject(o, "result", cJSON_Duplicate(m->result, 1));
		reply(c, o);
		return;
	}
}

void control_tenant_gone(struct supervisor *sv, const char *tenant)
{
	for (struct ctl_conn *c = sv->control_conns; c != NULL; c = c->next)
		if (!c->answered && c->certs_tenant != NULL && strcmp(c->certs_tenant, tenant) == 0)
			reply(c, error_reply("the worker of tenant \"%s\" exited before it answered",
					     tenant));
}

static cJSON *handle_request(struct ctl_conn *conn, const cJSON *req)
{
	struct supervisor *sv = conn->sv;
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(req, "command");
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(req, "name");
	const char *c = cJSON_IsString(cmd) ? cmd->valuestring : "";
	char *error = NULL;
	cJSON *o;

	if (strcmp(c, "status") == 0 || strcmp(c, "list") == 0)
		return status_reply(sv, 0);
	if (strcmp(c, "show") == 0 || strcmp(c, "restart") == 0) {
		if (!cJSON_IsString(name))
			return error_reply("%s needs a tenant name", c);
		if (strcmp(c, "show") == 0) {
			struct tenant *t = supervisor_find(sv, name->valuestring);

			if (t == NULL)
				return error_reply("no tenant named \"%s\"", name->valuestring);
			o = cJSON_CreateObject();
			cJSON_AddBoolToObject(o, "ok", 1);
			cJSON_AddItemToObject(o, "tenant", tenant_to_json(t, 1));
			return o;
		}
		if (supervisor_restart_tenant(sv, name->valuestring, &error) < 0) {
			o = error_reply("%s", error);
			free(error);
			return o;
		}
		o = cJSON_CreateObject();
		cJSON_AddBoolToObject(o, "ok", 1);
		return o;
	}
	if (strcmp(c, "reload") == 0) {
		cJSON *summary = cJSON_CreateObject();

		if (sv->shutting_down) {
			cJSON_Delete(summary);
			return error_reply("%s", "the supervisor is shutting down");
		}
		if (supervisor_reload(sv, summary, &error) < 0) {
			cJSON_Delete(summary);
			o = error_reply("reload refused, nothing changed: %s", error);
			free(error);
			return o;
		}
		cJSON_AddBoolToObject(summary, "ok", 1);
		return summary;
	}
	if (strcmp(c, "rotate") == 0 || strcmp(c, "issue-client-cert") == 0)
		return relay_certs(conn, req, c);
	return error_reply("unknown command \"%s\" (expected status, list, show, reload, restart, "
			   "rotate, issue-client-cert)", c);
}

static int on_request(void *ctx, uint8_t type, cJSON *payload)
{
	struct ctl_conn *c = ctx;

	if (c->answered)
		return 1;
	if (type != EP_MSG_CTL_REQUEST)
		reply(c, error_reply("unexpected message type %s", ep_msg_type_name(type)));
	else {
		cJSON *answer = handle_request(c, payload);

		if (answer != NULL)
			reply(c, answer);
		else
			uv_read_stop((uv_stream_t *)&c->pipe); /* the worker answers later */
	}
	return 1; /* one request per connection */
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[16384];

	*buf = uv_buf_init(slab, sizeof(slab));
}

static void conn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct ctl_conn *c = s->data;
	const char *why = NULL;

	if (n == 0)
		return;
	if (n < 0) {
		conn_close(c);
		return;
	}
	if (ep_frame_reader_feed(&c->reader, buf->base, (size_t)n, on_request, c, &why) < 0) {
		ep_warn("dropping a control connection: %s", why);
		conn_close(c);
	}
}

static void on_connection(uv_stream_t *server, int status)
{
	struct supervisor *sv = server->data;
	struct ctl_conn *c;

	if (status < 0)
		return;
	c = ep_malloc0(sizeof(*c));
	c->sv = sv;
	c->next = sv->control_conns;
	if (c->next != NULL)
		c->next->prevp = &c->next;
	c->prevp = &sv->control_conns;
	sv->control_conns = c;
	ep_frame_reader_init(&c->reader);
	uv_pipe_init(sv->loop, &c->pipe, 0);
	c->pipe.data = c;
	uv_timer_init(sv->loop, &c->timer);
	c->timer.data = c;
	c->handles = 2;
	if (uv_accept(server, (uv_stream_t *)&c->pipe) < 0) {
		conn_close(c);
		return;
	}
	uv_read_start((uv_stream_t *)&c->pipe, conn_alloc, conn_read);
}

/* A socket file nobody answers on is a leftover of a crash; a live one is another daemon. */
static int socket_in_use(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, r;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	strncpy(sa.sun_path, path, sizeof(sa.sun_path) - 1);
	r = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	close(fd);
	return r == 0;
}

int control_start(struct supervisor *sv, char **error_r)
{
	const char *path = sv->global->control_socket;
	int r;

	if (socket_in_use(path)) {
		*error_r = ep_strdup_printf("another etcdproxyd already answers on %s", path);
		return -EADDRINUSE;
	}
	unlink(path);
	uv_pipe_init(sv->loop, &sv->control, 0);
	sv->control.data = sv;
	r = uv_pipe_bind(&sv->control, path);
	if (r == 0)
		r = chmod(path, 0660) < 0 ? uv_translate_sys_error(errno) : 0;
	if (r == 0)
		r = uv_listen((uv_stream_t *)&sv->control, 16, on_connection);
	if (r < 0) {
		*error_r = ep_strdup_printf("control socket %s: %s", path, uv_strerror(r));
		uv_close((uv_handle_t *)&sv->control, NULL);
		unlink(path);
		return r;
	}
	sv->control_open = 1;
	sv->control_path = ep_strdup(path);
	return 0;
}

void control_stop(struct supervisor *sv)
{
	if (!sv->control_open)
		return;
	sv->control_open = 0;
	uv_close((uv_handle_t *)&sv->control, NULL);
	/* a client that never sends its request must not keep the loop, and so etcdproxyd, alive */
	for (struct ctl_conn *c = sv->control_conns; c != NULL; c = c->next)
		conn_close(c);
	unlink(sv->control_path);
	free(sv->control_path);
	sv->control_path = NULL;
}
