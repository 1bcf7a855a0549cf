/*
 * One set of CAs for a cluster tenant on every node.
 *
 * The ca source of each node keeps its CAs in state_dir/NAME/ca; every
 * generation holds shared.json (the CAs with their keys, and what keeps them
 * trusted).  The leader copies its shared.json into the Secret
 * "etcdproxy-ca-NAME" of kubernetes.namespace (key ca.json, label
 * etcd.xmudrii.com/ca-state=true), with resourceVersion preconditions; every
 * other node copies that Secret into state_dir/NAME/ca/cluster.json with
 * "lead": false, and its ca source then uses those CAs, issuing only its own
 * leaves.  A node that becomes the leader first takes the Secret's CAs
 * (cluster.json with "lead": true and "ca"), and writes the Secret only once
 * its own shared.json holds them: a new leader continues its predecessor's
 * CAs, it never replaces them with its own.
 *
 * Tenants of storages_dir are the node's own and are not shared.
 */
#ifndef EP_KUBE_CA_H
#define EP_KUBE_CA_H

struct supervisor;
struct kube_client;
struct kube_publish;
struct kube_ca;

/* pub: where the EtcdStorages' uids are known (for ownerReferences). */
struct kube_ca *kube_ca_new(struct supervisor *sv, struct kube_client *kc,
			    struct kube_publish *pub);
/* Before the client is freed: requests in flight are the client's to cancel. */
void kube_ca_free(struct kube_ca *kca);
/* Look again soon (the tenant set changed). */
void kube_ca_poke(struct kube_ca *kca);
/* This node became or stopped being the leader: a new leader takes the Secrets' CAs first. */
void kube_ca_new_term(struct kube_ca *kca);

#endif /* EP_KUBE_CA_H */
