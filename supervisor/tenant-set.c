#include "build-config.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tenant-set.h"
#include "util.h"

static int has_json_suffix(const char *name)
{
	size_t len = strlen(name);

	return name[0] != '.' && len > 5 && strcmp(name + len - 5, ".json") == 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void set_error(struct ep_tenant_entry *e, char *error)
{
	ep_tenant_config_free(e->config);
	e->config = NULL;
	free(e->error);
	e->error = error;
	free(e->fingerprint);
	e->fingerprint = ep_strdup_printf("!%s", error);
}

/*
 * Whether an entry with an error must give up its name: a good tenant has it
 * (wherever its file sorts), or an earlier entry with an error does.
 */
static int name_taken(const struct ep_tenant_set *set, const struct ep_tenant_entry *e)
{
	for (size_t i = 0; i < set->n; i++) {
		const struct ep_tenant_entry *o = &set->entries[i];

		if (o != e && strcmp(o->name, e->name) == 0 && (o->config != NULL || o < e))
			return 1;
	}
	return 0;
}

/*
 * Names of entries with errors may collide; '~' never appears in a valid name.
 * Good tenants never collide (check_conflicts) and keep their names, so that a
 * broken file cannot take over the name of a running tenant.
 */
static void make_name_unique(struct ep_tenant_set *set, struct ep_tenant_entry *e)
{
	while (name_taken(set, e)) {
		char *n = ep_strdup_printf("%s~", e->name);

		free(e->name);
		e->name = n;
	}
}

/*
 * Whoever may create an EtcdStorage in the cluster must not reach the node's
 * files through it: etcdproxyd runs as root there.  Paths (spec.tls.files,
 * an outputDir, a Unix socket) belong in a file of storages_dir, which only
 * the node's operator writes.
 */
static void check_cluster_paths(struct ep_tenant_entry *e)
{
	const struct ep_tenant_config *t = e->config;
	const char *what = NULL;

	if (t->tls.cert_file != NULL)
		what = "spec.tls.files";
	else if (t->tls.n_client_certs > 0)
		what = "spec.tls.clientCertificates (outputDir)";
	else if (strncmp(t->listen, "unix:", 5) == 0)
		what = "a spec.listen of \"unix:\"";
	if (what != NULL)
		set_error(e, ep_strdup_printf("%s: %s names a path on the node, which an "
					      "EtcdStorage of the cluster may not do; put this "
					      "tenant in a file of storages_dir instead", e->file,
					      what));
}

/* The directories a tenant writes certificates into, resolved (NULL-terminated, malloc'ed). */
static char **output_dirs(const struct ep_tenant_config *t)
{
	char **dirs = ep_malloc0(sizeof(char *) * (t->tls.n_client_certs + 2));
	size_t n = 0;

	for (size_t i = 0; i < t->tls.n_client_certs; i++)
		dirs[n++] = ep_path_resolve(t->tls.client_certs[i].output_dir);
	if (t->external.certs_dir != NULL)
		dirs[n++] = ep_path_resolve(t->external.certs_dir);
	return dirs;
}

static void free_dirs(char **dirs)
{
	for (size_t i = 0; dirs[i] != NULL; i++)
		free(dirs[i]);
	free(dirs);
}

/* Two tenants writing into one directory would replace each other's certificates. */
static void check_shared_dirs(struct ep_tenant_entry *e, const struct ep_tenant_entry *o)
{
	char **mine = output_dirs(e->config), **theirs = output_dirs(o->config);

	for (size_t i = 0; mine[i] != NULL && e->config != NULL; i++)
		for (size_t j = 0; theirs[j] != NULL && e->config != NULL; j++)
			if (strcmp(mine[i], theirs[j]) == 0)
				set_error(e, ep_strdup_printf("%s: the certificate directory %s is "
							      "also tenant \"%s\"'s (%s): two "
							      "tenants may not share one",
							      e->file, mine[i], o->config->name,
							      o->file));
	free_dirs(mine);
	free_dirs(theirs);
}

static void check_conflicts(struct ep_tenant_set *set, struct ep_tenant_entry *e)
{
	for (size_t i = 0; i < set->n && e->config != NULL; i++) {
		const struct ep_tenant_entry *o = &set->entries[i];

		if (o->config == NULL)
			continue;
		if (strcmp(o->config->name, e->config->name) == 0)
			set_error(e, ep_strdup_printf("%s: metadata.name \"%s\" is already used by %s",
						      e->file, e->config->name, o->file));
		else if (strcmp(o->config->listen, e->config->listen) == 0)
			set_error(e, ep_strdup_printf("%s: spec.listen \"%s\" is already used by "
						      "tenant \"%s\" (%s)",
						      e->file, e->config->listen, o->config->name,
						      o->file));
		else
			check_shared_dirs(e, o);
	}
}

/* Append the "*.json" of dir to files, sorted; a missing dir is empty when may_be_missing. */
static int list_dir(const char *dir_path, const char *what, int may_be_missing, char ***files,
		    size_t *n, size_t *cap, char **error_r)
{
	DIR *dir = opendir(dir_path);
	struct dirent *de;
	size_t first = *n;

	if (dir == NULL) {
		int err = errno;

		if (may_be_missing && err == ENOENT)
			return 0;
		*error_r = ep_strdup_printf("%s %s: %s", what, dir_path, strerror(err));
		return -err;
	}
	while ((de = readdir(dir)) != NULL) {
		if (!has_json_suffix(de->d_name))
			continue;
		if (*n == *cap) {
			*cap = *cap ? *cap * 2 : 16;
			*files = ep_realloc(*files, *cap * sizeof(char *));
		}
		(*files)[(*n)++] = ep_strdup_printf("%s/%s", dir_path, de->d_name);
	}
	closedir(dir);
	if (*n > first)
		qsort(*files + first, *n - first, sizeof(char *), cmp_str);
	return 0;
}

char *ep_kube_cache_dir(const struct ep_global_config *g)
{
	return ep_strdup_printf("%s/kubernetes/etcdstorages", g->state_dir);
}

int ep_tenant_set_load(const struct ep_global_config *g, struct ep_tenant_set *set, char **error_r)
{
	char **files = NULL, *cache;
	size_t n = 0, cap = 0, n_files;
	int r;

	set->entries = NULL;
	set->n = 0;
	*error_r = NULL;
	if ((r = list_dir(g->storages_dir, "storages_dir", 0, &files, &n, &cap, error_r)) < 0)
		return r;
	n_files = n;
	if (g->kube.kubeconfig != NULL) {
		/* the cluster's objects, as the Kubernetes source last saw them: after the files */
		cache = ep_kube_cache_dir(g);
		r = list_dir(cache, "the cache of cluster tenants", 1, &files, &n, &cap, error_r);
		free(cache);
		if (r < 0) {
			for (size_t i = 0; i < n; i++)
				free(files[i]);
			free(files);
			return r;
		}
	}

	set->entries = ep_malloc0(sizeof(*set->entries) * (n + 1));
	for (size_t i = 0; i < n; i++) {
		struct ep_tenant_entry *e = &set->entries[set->n];
		char *name = NULL, *err = NULL;

		e->file = files[i];
		e->from_cluster = i >= n_files;
		if (ep_tenant_config_load(e->file, g, &e->config, &name, &err) < 0) {
			if (name == NULL || !ep_tenant_name_valid(name)) {
				const char *base = strrchr(e->file, '/') + 1;

				free(name);
				name = ep_strdup(base);
				name[strlen(name) - 5] = '\0';
			}
			e->name = name;
			set_error(e, err);
		} else {
			free(name);
			e->name = ep_strdup(e->config->name);
			if (e->from_cluster)
				check_cluster_paths(e);
			check_conflicts(set, e);
			if (e->config != NULL) {
				cJSON *payload = ep_worker_config_build(g, e->config);

				e->fingerprint = cJSON_PrintUnformatted(payload);
				cJSON_Delete(payload);
			}
		}
		set->n++;
	}
	free(files);
	for (size_t i = 0; i < set->n; i++)
		if (set->entries[i].config == NULL)
			make_name_unique(set, &set->entries[i]);
	return 0;
}

void ep_tenant_set_free(struct ep_tenant_set *set)
{
	for (size_t i = 0; i < set->n; i++) {
		struct ep_tenant_entry *e = &set->entries[i];

		free(e->name);
		free(e->file);
		ep_tenant_config_free(e->config);
		free(e->error);
		free(e->fingerprint);
	}
	free(set->entries);
	set->entries = NULL;
	set->n = 0;
}

struct ep_tenant_entry *ep_tenant_set_find(const struct ep_tenant_set *set, const char *name)
{
	for (size_t i = 0; i < set->n; i++)
		if (set->entries[i].name != NULL && strcmp(set->entries[i].name, name) == 0)
			return &set->entries[i];
	return NULL;
}

const char *ep_diff_action_name(enum ep_diff_action action)
{
	switch (action) {
	case EP_DIFF_KEEP: return "keep";
	case EP_DIFF_ADD: return "add";
	case EP_DIFF_REMOVE: return "remove";
	case EP_DIFF_CHANGE: return "change";
	}
	return "?";
}

void ep_tenant_set_diff(const struct ep_tenant_set *old_set, const struct ep_tenant_set *new_set,
			ep_diff_cb *cb, void *ctx)
{
	for (size_t i = 0; i < old_set->n; i++) {
		const struct ep_tenant_entry *o = &old_set->entries[i];

		if (ep_tenant_set_find(new_set, o->name) == NULL)
			cb(ctx, EP_DIFF_REMOVE, o, NULL);
	}
	for (size_t i = 0; i < new_set->n; i++) {
		const struct ep_tenant_entry *n = &new_set->entries[i];
		const struct ep_tenant_entry *o = ep_tenant_set_find(old_set, n->name);

		if (o == NULL)
			cb(ctx, EP_DIFF_ADD, NULL, n);
		else if (strcmp(o->fingerprint, n->fingerprint) == 0)
			cb(ctx, EP_DIFF_KEEP, o, n);
		else
			cb(ctx, EP_DIFF_CHANGE, o, n);
	}
}
