/*
 * spec.deletionPolicy: Purge (purge.h).
 */
#include "build-config.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>

#define EP_LOG_SUBSYS "supervisor"
#include "config.h"
#include "files.h"
#include "log.h"
#include "purge.h"
#include "supervisor.h"
#include "util.h"

#define RETRY_MS 60000 /* a purge that failed is tried again after this */

struct purge {
	struct purge *next;
	struct supervisor *sv;
	char *name;
	int64_t due; /* wall clock, seconds */
	uv_timer_t timer;
	uv_process_t proc;
	uv_pipe_t out;
	int running;
	int handles;
	int dropped; /* cancelled or shut down: freed once its handles are closed */
	char line[1024];
	size_t line_len;
};

static char *purge_dir(const struct supervisor *sv)
{
	return ep_strdup_printf("%s/purges", sv->global->state_dir);
}

static char *purge_file(const struct supervisor *sv, const char *name)
{
	return ep_strdup_printf("%s/purges/%s.json", sv->global->state_dir, name);
}

static struct purge *find(const struct supervisor *sv, const char *name)
{
	for (struct purge *p = sv->purges; p != NULL; p = p->next)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

static void on_handle_closed(uv_handle_t *h)
{
	struct purge *p = h->data;

	if (--p->handles > 0)
		return;
	free(p->name);
	free(p);
}

/* Out of the list; freed once its handles are closed (a running child finishes on its own). */
static void drop(struct purge *p)
{
	struct purge **pp;

	for (pp = &p->sv->purges; *pp != NULL; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	p->dropped = 1;
	uv_timer_stop(&p->timer);
	uv_close((uv_handle_t *)&p->timer, on_handle_closed);
}

static void remove_file(const struct supervisor *sv, const char *name)
{
	char *path = purge_file(sv, name);

	if (unlink(path) < 0 && errno != ENOENT)
		ep_warn("cannot remove %s: %s", path, strerror(errno));
	free(path);
}

static void on_due(uv_timer_t *t);

static void arm(struct purge *p)
{
	int64_t now = (int64_t)time(NULL);
	uint64_t ms = p->due > now ? (uint64_t)(p->due - now) * 1000 : 0;

	uv_timer_start(&p->timer, on_due, ms, 0);
}

static struct purge *add(struct supervisor *sv, const char *name, int64_t due)
{
	struct purge *p = ep_malloc0(sizeof(*p));

	p->sv = sv;
	p->name = ep_strdup(name);
	p->due = due;
	uv_timer_init(sv->loop, &p->timer);
	p->timer.data = p;
	p->handles = 1;
	p->next = sv->purges;
	sv->purges = p;
	arm(p);
	return p;
}

void purge_schedule(struct supervisor *sv, const char *name)
{
	int64_t due = (int64_t)time(NULL) + (int64_t)(sv->global->purge_delay_ms / 1000);
	char *dir = purge_dir(sv), *path = purge_file(sv, name), *text, *error = NULL, when[40];
	cJSON *o = cJSON_CreateObject();
	struct purge *p = find(sv, name);

	if (p != NULL && !p->running)
		drop(p); /* removed again: the delay starts anew */
	cJSON_AddStringToObject(o, "tenant", name);
	cJSON_AddNumberToObject(o, "due", (double)due);
	text = cJSON_PrintUnformatted(o);
	if (ep_dir_make(dir, 0700, &error) < 0 ||
	    ep_file_write_atomic(path, text, strlen(text), 0600, &error) < 0) {
		ep_err("tenant %s: its purge will not survive a restart of etcdproxyd: %s", name,
		       error);
		free(error);
	}
	free(text);
	cJSON_Delete(o);
	free(dir);
	free(path);
	ep_time_format(due, when, sizeof(when));
	ep_notice("tenant %s removed with deletionPolicy Purge: its keys in the core etcd will be "
		  "purged at %s (supervisor.purge_delay); add it again before then to keep them",
		  name, when);
	if (p == NULL || !p->running)
		add(sv, name, due);
}

void purge_cancel(struct supervisor *sv, const char *name)
{
	struct purge *p = find(sv, name);

	if (p == NULL)
		return;
	if (p->running) {
		ep_warn("tenant %s is back while its purge runs: what the purge has deleted stays "
			"deleted", name);
		return;
	}
	ep_notice("tenant %s is back: its purge is cancelled, its keys stay", name);
	remove_file(sv, name);
	drop(p);
}

/* ---- the purge: etcdproxyctl purge NAME --yes ---------------------------------------------- */

static void log_lines(struct purge *p, const char *data, size_t len, int flush)
{
	for (size_t i = 0; i < len; i++) {
		if (data[i] == '\n' || p->line_len == sizeof(p->line) - 1) {
			p->line[p->line_len] = '\0';
			ep_notice("tenant %s: %s", p->name, p->line);
			p->line_len = 0;
			if (data[i] == '\n')
				continue;
		}
		p->line[p->line_len++] = data[i];
	}
	if (flush && p->line_len > 0) {
		p->line[p->line_len] = '\0';
		ep_notice("tenant %s: %s", p->name, p->line);
		p->line_len = 0;
	}
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	static char slab[4096];

	*buf = uv_buf_init(slab, sizeof(slab));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
	struct purge *p = s->data;

	if (n > 0)
		log_lines(p, buf->base, (size_t)n, 0);
	else if (n < 0) {
		log_lines(p, "", 0, 1);
		uv_read_stop(s);
		uv_close((uv_handle_t *)s, on_handle_closed);
	}
}

static void on_purge_exit(uv_process_t *proc, int64_t status, int signal)
{
	struct purge *p = proc->data;

	p->running = 0;
	uv_close((uv_handle_t *)proc, on_handle_closed);
	if (p->dropped)
		return;
	if (status == 0 && signal == 0) {
		ep_notice("tenant %s purged from the core etcd (deletionPolicy Purge)", p->name);
		remove_file(p->sv, p->name);
		drop(p);
		return;
	}
	ep_err("tenant %s: the purge failed (etcdproxyctl exited %lld%s%s); trying again in %d s",
	       p->name, (long long)status, signal ? ", signal " : "", signal ? strsignal(signal) : "",
	       RETRY_MS / 1000);
	uv_timer_start(&p->timer, on_due, RETRY_MS, 0);
}

static void on_due(uv_timer_t *t)
{
	struct purge *p = t->data;
	struct supervisor *sv = p->sv;
	const char *ctl = sv->global->ctl_path;
	char *args[] = { (char *)ctl, "-c", sv->config_path, "-s", sv->global->control_socket,
			 "purge", p->name, "--yes", NULL };
	uv_stdio_container_t stdio[3];
	uv_process_options_t opts = { 0 };
	int r;

	if (supervisor_find(sv, p->name) != NULL) {
		/* it came back by a way that did not cancel (a reload raced): keep its keys */
		purge_cancel(sv, p->name);
		return;
	}
	uv_pipe_init(sv->loop, &p->out, 0);
	p->out.data = p;
	stdio[0].flags = UV_IGNORE;
	stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
	stdio[1].data.stream = (uv_stream_t *)&p->out;
	stdio[2].flags = UV_INHERIT_FD;
	stdio[2].data.fd = 2;
	opts.file = ctl;
	opts.args = args;
	opts.stdio = stdio;
	opts.stdio_count = 3;
	opts.exit_cb = on_purge_exit;
	p->proc.data = p;
	ep_notice("tenant %s: purging its keys from the core etcd: %s purge %s --yes", p->name, ctl,
		  p->name);
	r = uv_spawn(sv->loop, &p->proc, &opts);
	if (r < 0) {
		ep_err("tenant %s: cannot run %s: %s; trying again in %d s", p->name, ctl,
		       uv_strerror(r), RETRY_MS / 1000);
		uv_close((uv_handle_t *)&p->out, NULL);
		uv_timer_start(&p->timer, on_due, RETRY_MS, 0);
		return;
	}
	p->running = 1;
	p->handles += 2;
	uv_read_start((uv_stream_t *)&p->out, on_alloc, on_read);
}

void purge_restore(struct supervisor *sv)
{
	char *dir = purge_dir(sv);
	DIR *d = opendir(dir);
	struct dirent *de;

	if (d == NULL) {
		free(dir);
		return;
	}
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		char *path, *data = NULL, *error = NULL, *name, when[40];
		const cJSON *due;
		cJSON *o;
		size_t n;

		if (len < 6 || strcmp(de->d_name + len - 5, ".json") != 0)
			continue;
		path = ep_strdup_printf("%s/%s", dir, de->d_name);
		name = ep_strdup(de->d_name);
		name[len - 5] = '\0';
		o = ep_file_read(path, 4096, &data, &n, &error) == 0 ? cJSON_Parse(data) : NULL;
		due = cJSON_GetObjectItemCaseSensitive(o, "due");
		if (!cJSON_IsNumber(due) || !ep_tenant_name_valid(name)) {
			ep_warn("%s: not a pending purge (%s); left alone", path,
				error ? error : "expected {\"tenant\", \"due\"}");
		} else if (supervisor_find(sv, name) != NULL) {
			ep_notice("tenant %s is there: its pending purge is cancelled", name);
			unlink(path);
		} else if (find(sv, name) == NULL) {
			ep_time_format((int64_t)due->valuedouble, when, sizeof(when));
			ep_notice("tenant %s: its keys will be purged at %s (pending from before the "
				  "restart)", name, when);
			add(sv, name, (int64_t)due->valuedouble);
		}
		cJSON_Delete(o);
		free(data);
		free(error);
		free(name);
		free(path);
	}
	closedir(d);
	free(dir);
}

void purge_shutdown(struct supervisor *sv)
{
	while (sv->purges != NULL)
		drop(sv->purges);
}

void *purge_list(const struct supervisor *sv)
{
	cJSON *a = cJSON_CreateArray();

	for (const struct purge *p = sv->purges; p != NULL; p = p->next) {
		cJSON *o = cJSON_CreateObject();
		char when[40];

		ep_time_format(p->due, when, sizeof(when));
		cJSON_AddStringToObject(o, "tenant", p->name);
		cJSON_AddStringToObject(o, "due", when);
		cJSON_AddBoolToObject(o, "running", p->running);
		cJSON_AddItemToArray(a, o);
	}
	return a;
}
