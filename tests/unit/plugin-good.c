/* A minimal, correct backend plugin for test-plugin-loader: "good". */
#include "build-config.h"

#include "etcdproxy/plugin.h"

static int good_init(struct ep_host *host, void **state_r, const char **error_r)
{
	*state_r = host;
	return 0;
}

static void good_fini(void *state)
{
}

static int good_start(void *state, const char **error_r)
{
	return 0;
}

static void good_stop(void *state, int graceful)
{
	struct ep_host *host = state;

	if (host != NULL && host->stopped != NULL)
		host->stopped(host);
}

static const struct ep_backend_ops good_ops = {
	.start = good_start,
	.stop = good_stop,
};

EP_PLUGIN_EXPORT const struct ep_plugin EP_PLUGIN_SYMBOL = {
	.abi_version = EP_PLUGIN_ABI_VERSION,
	.kind = EP_PLUGIN_BACKEND,
	.name = "good",
	.description = "test plugin that does nothing",
	.init = good_init,
	.fini = good_fini,
	.ops = &good_ops,
};
