/*
 * spec.deletionPolicy: Purge.  A removed tenant's keys are purged from the
 * core etcd after supervisor.purge_delay, unless it comes back meanwhile.
 * The purge itself is `etcdproxyctl purge NAME --yes` (ctl/data.c), run as a
 * child whose every line goes to the log.  Pending purges are files in
 * state_dir/purges/, so a restart of etcdproxyd keeps them.
 */
#ifndef EP_SUPERVISOR_PURGE_H
#define EP_SUPERVISOR_PURGE_H

struct supervisor;

/* A tenant with deletionPolicy Purge was removed: purge it after the delay. */
void purge_schedule(struct supervisor *sv, const char *name);
/* A tenant of this name is there again: a pending purge is cancelled (logged). */
void purge_cancel(struct supervisor *sv, const char *name);
/* At start, after the first tenants: the pending purges of state_dir/purges/. */
void purge_restore(struct supervisor *sv);
/* Shutdown: timers closed, a running purge left to finish on its own. */
void purge_shutdown(struct supervisor *sv);
/* Pending purges as a JSON array [{"tenant", "due", "running"}] for status (cJSON *). */
void *purge_list(const struct supervisor *sv);

#endif /* EP_SUPERVISOR_PURGE_H */
