/*
 * Plugin options by table (struct ep_option in etcdproxy/plugin.h): the one
 * checker that the worker runs for a plugin (ep_host.options_parse) and that
 * `etcdproxyd --check-config` runs on the global file, so that the two can
 * never disagree.
 */
#ifndef EP_OPTIONS_H
#define EP_OPTIONS_H

#include <cjson/cJSON.h>

#include "etcdproxy/plugin.h"

/*
 * Check obj, one plugin's options object, against table and, when out is
 * not NULL, store the values into out (see struct ep_option).  section names
 * the object in messages ("backends.native").  Returns 0, or -EINVAL with
 * *error_r (malloc'ed) naming the key and the value, and *node_r: the JSON
 * node the error is about (for its position), or NULL.
 */
int ep_options_apply(const struct ep_option *table, const char *section, const cJSON *obj,
		     void *out, const cJSON **node_r, char **error_r);

/* The table as JSON (what etcdproxy-worker --describe-options prints). */
cJSON *ep_options_describe(const struct ep_option *table);

/*
 * A table back from ep_options_describe()'s JSON (offsets are 0: for
 * checking only).  Returns NULL and *error_r when desc is not such a list.
 * Free it with ep_options_free().
 */
struct ep_option *ep_options_from_json(const cJSON *desc, char **error_r);
void ep_options_free(struct ep_option *table);

#endif /* EP_OPTIONS_H */
