/*
 * spec.quota: the tenant's usage, counted in the core etcd and kept current
 * by a watch on its prefix (usage.c holds it), and the admission of writes
 * against maxKeys, maxBytes and maxLeases.
 *
 * A Put, or a Txn at the worst of its branches, that would take usage plus
 * what the writes in flight reserved past a limit is refused with
 * RESOURCE_EXHAUSTED "etcdproxy: quota: ...".  A write's reservation is held
 * until the watch has seen the revision the core etcd answered it at, so a
 * worker never counts its own writes twice nor forgets one.  Deletes, reads
 * and watches always pass.  Until the first count is done (and while a lost
 * watch is counted again) writes wait, at most QUOTA_WAIT_MS.
 */
#ifndef EP_NATIVE_QUOTA_H
#define EP_NATIVE_QUOTA_H

#include <stddef.h>
#include <stdint.h>

struct native;
struct call;
struct quota;

#define QUOTA_WAIT_MS 10000 /* a write waits this long for the count, then UNAVAILABLE */
/*
 * A write that would be refused while this worker has seen a write (a
 * delete, say) answered that the watch has not brought yet waits this long
 * for the watch before it is judged on what the watch has seen.
 */
#define QUOTA_CATCHUP_MS 1000

/* From the policy's "quota" object; NULL with *error_r (static) when it is not one. */
struct quota *quota_new(struct native *n, const void *policy_json_object, const char **error_r);
/* New limits from a reload; the count goes on.  0, or -1 with *error_r (old limits kept). */
int quota_update(struct quota *q, const void *policy_json_object, const char **error_r);
/* An upstream connection is up: count, then watch, if that is not under way. */
void quota_kick(struct quota *q);
/*
 * Stop the watch and close the timers; done() once closed.  What waits is
 * refused when the worker stops, and goes on when the quota was removed
 * (n->quota already NULL).
 */
void quota_close(struct quota *q, void (*done)(void *ctx), void *ctx);

/*
 * A tenant's request message (keys as the tenant sees them) about to be
 * rewritten: 1 go on, 0 it waits (call_quota_resumed() continues it, the
 * message stays in the reader), -1 refused (the call is finished).
 */
int quota_admit(struct quota *q, struct call *c, const uint8_t *msg, size_t len);
/*
 * The same for a large Put that streamed (call.c): HEAD, its fields up to its
 * key as the client sent them, and the last value length and ignore_value
 * after the head (-1: none), as usage_put_delta() takes them.  Asked once the
 * message is whole but for its last byte, so that a refused one never completes.
 */
int quota_admit_put(struct quota *q, struct call *c, const uint8_t *head, size_t head_len,
		    int64_t value_len, int ignore_value);
/* The core etcd's answer to an admitted write (before rewriting). */
void quota_response(struct quota *q, struct call *c, const uint8_t *msg, size_t len);
/* The call ended (ok: with status 0): its reservation settles or goes. */
void quota_settle(struct quota *q, struct call *c, int ok);
/* A call that ends while it waits, or that still holds a reservation. */
void quota_forget(struct quota *q, struct call *c);
/* For the counters: adds quota_* members to a cJSON object. */
void quota_report(const struct quota *q, void *cjson_object);

#endif /* EP_NATIVE_QUOTA_H */
