#include "build-config.h"

#include <errno.h>
#include <ltdl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "plugin-loader.h"
#include "util.h"

static int ltdl_ready;

const char *ep_plugin_kind_prefix(enum ep_plugin_kind kind)
{
	switch (kind) {
	case EP_PLUGIN_BACKEND: return "backend";
	case EP_PLUGIN_CERTS: return "certs";
	}
	return "unknown";
}

static int init_ltdl(char **error_r)
{
	if (ltdl_ready)
		return 0;
	if (lt_dlinit() != 0) {
		*error_r = ep_strdup_printf("cannot initialise libltdl: %s", lt_dlerror());
		return -EIO;
	}
	/* a root daemon must never search $LTDL_LIBRARY_PATH or any other path */
	lt_dlsetsearchpath("");
	ltdl_ready = 1;
	return 0;
}

static int check_descriptor(const char *path, const struct ep_plugin *p, enum ep_plugin_kind kind,
			    const char *name, char **error_r)
{
	if (p->abi_version != EP_PLUGIN_ABI_VERSION) {
		*error_r = ep_strdup_printf("plugin %s: built for plugin ABI %u, this etcdproxy has "
					    "ABI %u: rebuild it against this version's etcdproxy/plugin.h",
					    path, p->abi_version, EP_PLUGIN_ABI_VERSION);
		return -EPROTO;
	}
	if (p->kind != (uint32_t)kind) {
		*error_r = ep_strdup_printf("plugin %s: its descriptor says kind %u, expected %u (%s)",
					    path, p->kind, (unsigned)kind, ep_plugin_kind_prefix(kind));
		return -EPROTO;
	}
	if (p->name == NULL || strcmp(p->name, name) != 0) {
		*error_r = ep_strdup_printf("plugin %s: its descriptor is named \"%s\", expected \"%s\" "
					    "(the file name and the descriptor must agree)",
					    path, p->name ? p->name : "(null)", name);
		return -EPROTO;
	}
	if (p->init == NULL || p->fini == NULL || p->ops == NULL) {
		*error_r = ep_strdup_printf("plugin %s: its descriptor lacks init, fini or ops", path);
		return -EPROTO;
	}
	if (kind == EP_PLUGIN_BACKEND) {
		const struct ep_backend_ops *ops = p->ops;

		if (ops->start == NULL || ops->stop == NULL) {
			*error_r = ep_strdup_printf("plugin %s: a backend needs start and stop", path);
			return -EPROTO;
		}
	} else if (kind == EP_PLUGIN_CERTS) {
		const struct ep_certs_ops *ops = p->ops;

		if (ops->refresh == NULL) {
			*error_r = ep_strdup_printf("plugin %s: a certificate source needs refresh", path);
			return -EPROTO;
		}
	}
	return 0;
}

int ep_plugin_load(const char *dir, enum ep_plugin_kind kind, const char *name,
		   struct ep_loaded_plugin *out, char **error_r)
{
	lt_dladvise advise;
	lt_dlhandle handle;
	const struct ep_plugin *p;
	struct stat st;
	char *path;
	int r;

	memset(out, 0, sizeof(*out));
	*error_r = NULL;
	if (dir[0] != '/') {
		*error_r = ep_strdup_printf("plugin_dir %s is not an absolute path", dir);
		return -EINVAL;
	}
	if ((r = init_ltdl(error_r)) < 0)
		return r;
	path = ep_strdup_printf("%s/%s-%s.so", dir, ep_plugin_kind_prefix(kind), name);
	if (stat(path, &st) < 0) {
		r = -errno;
		*error_r = ep_strdup_printf("plugin %s: %s (is the %s \"%s\" installed in plugin_dir?)",
					    path, strerror(errno), ep_plugin_kind_prefix(kind), name);
		free(path);
		return r;
	}
	if (!S_ISREG(st.st_mode)) {
		*error_r = ep_strdup_printf("plugin %s: not a regular file", path);
		free(path);
		return -EINVAL;
	}

	lt_dladvise_init(&advise);
	lt_dladvise_local(&advise);
	handle = lt_dlopenadvise(path, advise);
	lt_dladvise_destroy(&advise);
	if (handle == NULL) {
		*error_r = ep_strdup_printf("plugin %s: cannot load: %s (an unresolved symbol means "
					    "the plugin needs a library or an ABI this worker lacks)",
					    path, lt_dlerror());
		free(path);
		return -ENOEXEC;
	}
	p = lt_dlsym(handle, EP_PLUGIN_SYMBOL_NAME);
	if (p == NULL) {
		*error_r = ep_strdup_printf("plugin %s: no symbol " EP_PLUGIN_SYMBOL_NAME
					    " (not an etcdproxy plugin, or built without "
					    "EP_PLUGIN_EXPORT on its descriptor)",
					    path);
		lt_dlclose(handle);
		free(path);
		return -ENOENT;
	}
	if ((r = check_descriptor(path, p, kind, name, error_r)) < 0) {
		lt_dlclose(handle);
		free(path);
		return r;
	}
	out->handle = handle;
	out->plugin = p;
	out->path = path;
	return 0;
}

void ep_plugin_unload(struct ep_loaded_plugin *lp)
{
	if (lp->handle != NULL)
		lt_dlclose((lt_dlhandle)lp->handle);
	free(lp->path);
	memset(lp, 0, sizeof(*lp));
}
