/* A backend plugin that claims a plugin ABI this etcdproxy does not have. */
#include "build-config.h"

#include "etcdproxy/plugin.h"

static int badabi_init(struct ep_host *host, void **state_r, const char **error_r)
{
	*state_r = NULL;
	return 0;
}

static void badabi_fini(void *state)
{
}

static int badabi_start(void *state, const char **error_r)
{
	return 0;
}

static void badabi_stop(void *state, int graceful)
{
}

static const struct ep_backend_ops badabi_ops = {
	.start = badabi_start,
	.stop = badabi_stop,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = 999,
	.kind = EP_PLUGIN_BACKEND,
	.name = "badabi",
	.description = "test plugin built for a future ABI",
	.init = badabi_init,
	.fini = badabi_fini,
	.ops = &badabi_ops,
};
