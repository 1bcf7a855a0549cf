/*
 * The Kubernetes source: EtcdStorage objects of the cluster as tenants.
 *
 * A reflector, as client-go's: LIST, then WATCH from the list's
 * resourceVersion (bookmarks on, a randomised timeoutSeconds); a watch that
 * ends normally is started again from the last resourceVersion seen, a 410
 * (expired) lists again and diffs against the cache, so that deletions during
 * the gap are seen.  Errors back off with jitter, and Retry-After is honoured.
 *
 * Each object is kept as a file in state_dir (ep_kube_cache_dir()), which the
 * tenant set loads after storages_dir: the cluster's tenants survive an
 * unreachable API server and a daemon restart without it, and go through the
 * same checks as files (reserved prefixes included).
 *
 * Status: conditions (Accepted, Ready, Deployed) and this node's entry under
 * status.nodes, written through the /status subresource as a JSON merge
 * patch with metadata.resourceVersion as precondition, retried on 409, and
 * never when nothing changed.
 */
#ifndef EP_KUBE_SOURCE_H
#define EP_KUBE_SOURCE_H

#include <cjson/cJSON.h>

struct supervisor;
struct kube_source;

/* Start watching the cluster (the supervisor's global kubernetes settings). */
int kube_source_start(struct supervisor *sv, struct kube_source **ks_r, char **error_r);
/* Stop every request and close the handles (the loop can end afterwards). */
void kube_source_stop(struct kube_source *ks);
/* A tenant changed state, or the set was reloaded: the status is looked at again soon. */
void kube_source_poke(struct kube_source *ks);
/* This node holds the leader lease: it writes conditions, Secrets and ConfigMaps. */
int kube_source_is_leader(const struct kube_source *ks);
/* For etcdproxyctl status: where it connects, whether it is in sync, the last error. */
cJSON *kube_source_describe(const struct kube_source *ks);

#endif /* EP_KUBE_SOURCE_H */
