/*
 * The metrics and health endpoints (global setting "metrics"): /metrics in
 * the Prometheus text format, /healthz, /readyz, /readyz?verbose and
 * /readyz/NAME, served by libmicrohttpd on the supervisor's own loop.
 *
 * libmicrohttpd runs without a thread of its own (MHD_USE_EPOLL): its epoll
 * descriptor is watched with a uv_poll_t and its timeout with a uv_timer_t,
 * and MHD_run() does what is ready without blocking.  So a scrape never
 * waits for a lock, and reads what the supervisor already holds: the
 * workers' last STATUS reports, the tenant states, the certificates, and the
 * processes' /proc entries.  The workers do nothing for it.
 */
#ifndef EP_METRICS_H
#define EP_METRICS_H

#include <cjson/cJSON.h>

struct supervisor;

/* Start serving on sv->global->metrics.listen (nothing when NULL); a bind failure is retried. */
void metrics_start(struct supervisor *sv);
/* Close the listener and every connection. */
void metrics_stop(struct supervisor *sv);

/* The Prometheus text of everything (malloc'ed; *len_r its length): for tests and the bench. */
char *metrics_render(struct supervisor *sv, size_t *len_r);

/* Add every number of from into into, recursively (objects by key, arrays by index). */
void metrics_json_add(cJSON *into, const cJSON *from);

#endif /* EP_METRICS_H */
