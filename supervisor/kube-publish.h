/*
 * Certificates into the cluster: each spec.clientCertSecret gets tls.crt,
 * tls.key and ca.crt, each spec.caCertConfigMap ca.crt and serving-ca.crt,
 * copied from the directories the ca source keeps for them
 * (ep_kube_output_dir()).
 *
 * Create or update with resourceVersion preconditions; nothing is written
 * when the cluster already has the same bytes; other keys of a Secret or
 * ConfigMap are left alone, an existing Secret keeps its type; objects
 * etcdproxyd creates carry the labels app.kubernetes.io/managed-by and
 * etcd.xmudrii.com/storage and an ownerReference to their EtcdStorage.  A
 * failure (a 403 in one namespace, say) stays with that output.
 */
#ifndef EP_KUBE_PUBLISH_H
#define EP_KUBE_PUBLISH_H

struct supervisor;
struct kube_client;
struct kube_publish;

struct kube_publish *kube_publish_new(struct supervisor *sv, struct kube_client *kc);
/* Before the client is freed: requests in flight are the client's to cancel. */
void kube_publish_free(struct kube_publish *kp);
/* Look at every output again soon (a rotation, a new tenant, the resync). */
void kube_publish_poke(struct kube_publish *kp, int resync);

/*
 * A tenant's CertificatesPublished: 1 every output holds the current
 * material, 0 one does not (reason and message say which and why), -1 not
 * yet (waiting for the ca source), -2 not looked at since this node became
 * the leader (what the condition said stays).  uid: the EtcdStorage's, for
 * ownerReferences.
 */
int kube_publish_state(struct kube_publish *kp, const char *tenant, const char **reason_r,
		       const char **message_r);
void kube_publish_set_uid(struct kube_publish *kp, const char *tenant, const char *uid);
/* The EtcdStorage's uid as last seen, or NULL. */
const char *kube_publish_uid(struct kube_publish *kp, const char *tenant);

#endif /* EP_KUBE_PUBLISH_H */
