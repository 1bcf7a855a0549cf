/*
 * The one place plugins are loaded: by absolute path from the plugin
 * directory only, with immediate binding, checked before use.
 */
#ifndef EP_PLUGIN_LOADER_H
#define EP_PLUGIN_LOADER_H

#include "etcdproxy/plugin.h"

struct ep_loaded_plugin {
	void *handle; /* lt_dlhandle */
	const struct ep_plugin *plugin;
	char *path;
};

/* "backend" or "certs". */
const char *ep_plugin_kind_prefix(enum ep_plugin_kind kind);

/*
 * Load "<dir>/<kind>-<name>.so" and check its descriptor: ABI version, kind,
 * name and the callbacks the kind needs.  dir must be absolute.  Returns 0,
 * or a negative errno code with one line in *error_r (malloc'ed) that names
 * the file and says what is wrong and what to do.
 */
int ep_plugin_load(const char *dir, enum ep_plugin_kind kind, const char *name,
		   struct ep_loaded_plugin *out, char **error_r);

void ep_plugin_unload(struct ep_loaded_plugin *lp);

#endif /* EP_PLUGIN_LOADER_H */
