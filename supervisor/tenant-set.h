/*
 * The tenant set: every EtcdStorage file of storages_dir, loaded side by side
 * with the running one on reload and compared by name and fingerprint.
 */
#ifndef EP_TENANT_SET_H
#define EP_TENANT_SET_H

#include <stddef.h>

#include "config.h"

struct ep_tenant_entry {
	char *name;   /* metadata.name; for an unreadable file a name derived from the file */
	char *file;   /* the EtcdStorage file */
	struct ep_tenant_config *config; /* NULL when the file has an error */
	char *error;  /* "FILE:LINE:COL: ..." or NULL */
	char *fingerprint; /* the worker's CONFIGURE payload as text ("!error" for errors) */
	int from_cluster;  /* an EtcdStorage object of the cluster (the Kubernetes source's cache) */
};

struct ep_tenant_set {
	struct ep_tenant_entry *entries; /* sorted by file name */
	size_t n;
};

/*
 * Where the Kubernetes source keeps the cluster's EtcdStorage objects, one
 * file per object, which the set loads after storages_dir (malloc'ed).
 */
char *ep_kube_cache_dir(const struct ep_global_config *g);

/*
 * Load every "*.json" of global->storages_dir (hidden files skipped), then,
 * when the Kubernetes source is on, the cluster's objects from its cache: a
 * name in both belongs to the file in storages_dir, and the object gets the
 * error "metadata.name is already used by FILE".  A bad
 * file becomes an entry with an error, never a failure of the whole set; two
 * files with one name or one listen address make the later one an error.
 * Returns 0, or -errno with *error_r when the directory cannot be read.
 */
int ep_tenant_set_load(const struct ep_global_config *global, struct ep_tenant_set *set,
		       char **error_r);
void ep_tenant_set_free(struct ep_tenant_set *set);

struct ep_tenant_entry *ep_tenant_set_find(const struct ep_tenant_set *set, const char *name);

enum ep_diff_action {
	EP_DIFF_KEEP,   /* same name, same fingerprint: leave it alone */
	EP_DIFF_ADD,    /* only in the new set */
	EP_DIFF_REMOVE, /* only in the old set */
	EP_DIFF_CHANGE, /* in both, fingerprints differ */
};

const char *ep_diff_action_name(enum ep_diff_action action);

/* old_entry is NULL for ADD, new_entry NULL for REMOVE. */
typedef void ep_diff_cb(void *ctx, enum ep_diff_action action, const struct ep_tenant_entry *old_entry,
			const struct ep_tenant_entry *new_entry);

/* Call cb once per name of either set: removals first, then the new set in order. */
void ep_tenant_set_diff(const struct ep_tenant_set *old_set, const struct ep_tenant_set *new_set,
			ep_diff_cb *cb, void *ctx);

#endif /* EP_TENANT_SET_H */
