/* Leader election with a coordination.k8s.io/v1 Lease: see kube-lease.c. */
#ifndef EP_KUBE_LEASE_H
#define EP_KUBE_LEASE_H

#include <uv.h>

#include "config.h"

struct kube_client;
struct kube_lease;

/* leader: 1 when this node became the leader, 0 when it stopped being it. */
typedef void kube_lease_cb(void *ctx, int leader);

struct kube_lease *kube_lease_start(uv_loop_t *loop, struct kube_client *kc,
				    const struct ep_kube_settings *k, kube_lease_cb *cb, void *ctx);
/* Leader, and renewed within renew_deadline: may write as the leader now. */
int kube_lease_is_leader(const struct kube_lease *l);
/* The holder as last read ("" when none). */
const char *kube_lease_holder(const struct kube_lease *l);
/* Step down and give the lease back (a successor need not wait); done() runs when finished. */
void kube_lease_release(struct kube_lease *l, void (*done)(void *ctx), void *ctx);
/* Close the timer (the client cancels what is in flight). */
void kube_lease_stop(struct kube_lease *l);

#endif /* EP_KUBE_LEASE_H */
