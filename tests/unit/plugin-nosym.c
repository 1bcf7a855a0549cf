/* A shared object that loads fine but exports no plugin descriptor. */
#include "build-config.h"

#include "etcdproxy/plugin.h"

EP_PLUGIN_EXPORT int ep_test_nosym_dummy(void);

EP_PLUGIN_EXPORT int ep_test_nosym_dummy(void)
{
	return 42;
}
