/*
 * The audit log of a tenant (spec.audit): one JSON line per mutating call
 * (Put, DeleteRange, Txn, Compact, LeaseGrant, LeaseRevoke) that went to the
 * core etcd, with the time, the tenant, the client's identity, the method,
 * the keys as the tenant sees them (never values), lease IDs, the result
 * code and the revision.  doc/native-backend.md, "Audit log", has the format.
 *
 * The proxy path only formats a line into a memory buffer.  The file is
 * written, and rotated by size, on libuv's thread pool, one batch at a time;
 * meanwhile lines gather in the buffer.  When the buffer is full (the disk is
 * slow) or a write fails (the disk is full), lines are dropped and counted,
 * with a log line at most every 10 s: requests never wait for the disk.
 */
#ifndef EP_NATIVE_AUDIT_H
#define EP_NATIVE_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "rewrite.h"

struct ep_host;
struct audit;
struct audit_call;

/*
 * Start the log of tenant into file (its directory is made when missing);
 * NULL with *error_r (malloc'ed) when the directory cannot be made.
 */
struct audit *audit_open(struct ep_host *host, uv_loop_t *loop, const char *tenant,
			 const char *file, uint64_t max_size, unsigned files, char **error_r);
/* Write what is left, then close; done(ctx) once nothing of it is on the loop any more. */
void audit_close(struct audit *a, void (*done)(void *ctx), void *ctx);
void audit_counts(const struct audit *a, uint64_t *records_r, uint64_t *dropped_r);

/*
 * A mutating call's request, as its line needs it, and who made it (a JSON
 * object text); NULL when the method is not audited.
 */
struct audit_call *audit_request(enum rw_kind kind, const char *method, const uint8_t *msg,
				 size_t len, const char *client);
/* The (first) response message: its revision, a Txn's branch, a granted lease's ID. */
void audit_response(struct audit_call *ac, const uint8_t *msg, size_t len);
/* The call ended with grpc_status: write its line; frees ac. */
void audit_finish(struct audit *a, struct audit_call *ac, int grpc_status);
void audit_call_free(struct audit_call *ac);

/* A JSON string of bytes (each byte above 0x7e or below 0x20 as \u00XX); malloc'ed. */
char *audit_json_bytes(const uint8_t *s, size_t len);

#endif /* EP_NATIVE_AUDIT_H */
