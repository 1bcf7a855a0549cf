/*
 * The native backend's message rewriter: etcd v3 gRPC messages are rewritten
 * on the wire, without a full protobuf decode (doc/wire.md sections 1, 3 to 5).
 * Keys and range ends gain the tenant prefix on the way in and lose it on the
 * way out; every other byte, unknown fields and oneof zero values included,
 * passes unchanged; lengths are re-encoded bottom-up.
 *
 * Pure functions over byte buffers: no I/O, no libuv, no nghttp2, so that the
 * fuzz target and the unit tests drive exactly the code the proxy runs.
 */
#ifndef EP_NATIVE_REWRITE_H
#define EP_NATIVE_REWRITE_H

#include <stddef.h>
#include <stdint.h>

/* What the proxy does with a method, decided from its :path alone. */
enum rw_policy {
	RW_FORWARD,        /* rewrite with the kind's rules and forward */
	RW_LOCAL,          /* answered by the proxy itself (MemberList, Health) */
	RW_DENY,           /* PERMISSION_DENIED with a message saying why */
	RW_UNIMPLEMENTED,  /* UNIMPLEMENTED (unknown methods, RangeStream) */
};

/* The message shapes the rewriter knows; one per method. */
enum rw_kind {
	RW_NONE = 0,          /* pass through unchanged (Status, Alarm GET, Compact) */
	RW_RANGE,             /* KV/Range */
	RW_PUT,               /* KV/Put */
	RW_DELETE_RANGE,      /* KV/DeleteRange */
	RW_TXN,               /* KV/Txn */
	RW_COMPACT,           /* KV/Compact: policy decides (spec.policy.compaction) */
	RW_WATCH,             /* Watch/Watch (bidi stream) */
	RW_LEASE_GRANT,       /* Lease/LeaseGrant */
	RW_LEASE_REVOKE,      /* Lease/LeaseRevoke */
	RW_LEASE_KEEPALIVE,   /* Lease/LeaseKeepAlive (bidi stream) */
	RW_LEASE_TTL,         /* Lease/LeaseTimeToLive */
	RW_LEASE_LEASES,      /* Lease/LeaseLeases */
	RW_STATUS,            /* Maintenance/Status: pass */
	RW_ALARM,             /* Maintenance/Alarm: only action GET (0) is forwarded */
	RW_MEMBER_LIST,       /* Cluster/MemberList: answered locally */
	RW_HEALTH_CHECK,      /* grpc.health.v1.Health/Check: answered locally */
	RW_LOCK,              /* v3lockpb.Lock/Lock */
	RW_UNLOCK,            /* v3lockpb.Lock/Unlock */
	RW_CAMPAIGN,          /* v3electionpb.Election/Campaign */
	RW_PROCLAIM,          /* v3electionpb.Election/Proclaim */
	RW_LEADER,            /* v3electionpb.Election/Leader, and Observe (server stream) */
	RW_RESIGN,            /* v3electionpb.Election/Resign */
};

struct rw_method {
	const char *path; /* "/etcdserverpb.KV/Range" */
	enum rw_policy policy;
	enum rw_kind kind;
	int client_stream; /* several request messages (Watch, LeaseKeepAlive) */
	int server_stream; /* several response messages */
	const char *deny_reason; /* for RW_DENY: the text after "etcdproxy: " */
};

/*
 * Look up a method by its :path (not NUL-terminated).  Always returns an
 * entry: unknown paths get a static RW_UNIMPLEMENTED entry whose path is NULL.
 */
const struct rw_method *rw_method_lookup(const char *path, size_t len);

/* A growable output buffer.  Owned by the caller; free with rw_buf_free(). */
struct rw_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	/* the allocator of data; NULL: the C library's (a caller may hand data on) */
	void *(*realloc_fn)(void *p, size_t size);
	void (*free_fn)(void *p);
};
void rw_buf_free(struct rw_buf *b);

/* The tenant's namespace, prepared once. */
struct rw_ns {
	const uint8_t *prefix; /* "/a/" */
	size_t prefix_len;
	uint8_t *prefix_end;   /* the truncating prefix end ("/a0"); owned */
	size_t prefix_end_len;
	/*
	 * The one member the tenant sees (0: leave the core's): every response
	 * header's member_id and Status's leader become it, as MemberList names it.
	 */
	uint64_t member_id;
};

/*
 * Prepare a namespace (the prefix is copied).  Refuses (-EINVAL) an empty
 * prefix and one whose truncating prefix end would be the end of the keyspace
 * ("\xff\xff").  Free a namespace before preparing it again.
 */
int rw_ns_init(struct rw_ns *ns, const uint8_t *prefix, size_t len);
void rw_ns_free(struct rw_ns *ns);

/* The gRPC status a failed rewrite becomes, with etcd's own message where one exists. */
struct rw_error {
	int grpc_status;     /* 3 INVALID_ARGUMENT, 5 NOT_FOUND, 7 PERMISSION_DENIED, 13 INTERNAL, ... */
	const char *message; /* static: "etcdserver: key is not provided" */
};

/*
 * Lease scoping hooks, called for every lease ID a message carries: in a
 * request (Put.lease, Txn put ops, LeaseRevoke/KeepAlive/TimeToLive ID) and
 * in a response (LeaseGrant ID, each LeaseLeases ID).  NULL hooks allow all.
 */
struct rw_hooks {
	/* a request names this lease: return 0 to allow, -ENOENT to refuse (NOT_FOUND) */
	int (*lease_check)(void *ctx, int64_t id);
	/* a LeaseLeases response lists this lease: return 1 to keep it, 0 to drop it */
	int (*lease_visible)(void *ctx, int64_t id);
	/* a LeaseGrant response (without error) carries this new lease ID */
	void (*lease_granted)(void *ctx, int64_t id);
	void *ctx;
};

/*
 * Rewrite one request message (the gRPC payload, without the 5-byte prefix)
 * of the given kind into out (appended).  Returns 0, or a negative errno
 * code with err filled in:
 *   -EINVAL   malformed protobuf (INVALID_ARGUMENT/INTERNAL), an empty key
 *             ("etcdserver: key is not provided", status 3), Txn nested
 *             deeper than RW_MAX_DEPTH
 *   -ENOENT   a lease hook refused an ID ("etcdserver: requested lease not found", 5)
 *   -EPERM    a message the policy refuses by content (Alarm other than GET)
 *   -ENOMEM   out of memory (RESOURCE_EXHAUSTED)
 * On failure out->len is back to its value on entry; on success err is
 * {0, NULL}.  err may be NULL.  An empty Watch key means "everything from
 * the start of the namespace", as etcd reads an empty watch key as "\0".
 */
int rw_request(enum rw_kind kind, const struct rw_ns *ns, const struct rw_hooks *hooks,
	       const uint8_t *in, size_t len, struct rw_buf *out, struct rw_error *err);

/*
 * Rewrite one response message from the core etcd.  Every key must carry the
 * prefix (a key that does not is refused: -EPROTO, INTERNAL), and loses it;
 * LeaseTimeToLive keys without the prefix are dropped (they belong to others);
 * LeaseLeases entries the hook hides are dropped.  Returns 0 or -errno with err.
 */
int rw_response(enum rw_kind kind, const struct rw_ns *ns, const struct rw_hooks *hooks,
		const uint8_t *in, size_t len, struct rw_buf *out, struct rw_error *err);

/*
 * A large RangeResponse rewritten as it streams, so that the worker neither
 * waits for the whole message nor holds it twice (rewrite.c, doc/wire.md
 * section 3b).  The output has the input's length but for the header's
 * change (known from the header, which etcd sends first): each KeyValue keeps
 * its size, the bytes its key loses going to an unknown field
 * (RW_PAD_FIELD, skipped by every protobuf reader) at its end.
 */
#define RW_PAD_FIELD 2047 /* the largest field number with a 2-byte tag */
#define RW_STREAM_HEADER_MAX (64 * 1024)

enum rs_state {
	RS_FIELD,     /* a field of the RangeResponse begins */
	RS_HEADER,    /* the header, held whole */
	RS_COPY,      /* a field passed on as it comes */
	RS_VARINT,    /* a varint passed on */
	RS_KV_FIELD,  /* a field of a KeyValue begins */
	RS_KV_KEY,    /* its key, held whole */
	RS_KV_COPY,   /* another of its fields, passed on as it comes (the value) */
	RS_KV_VARINT, /* one of its varints */
};

struct rstream {
	const struct rw_ns *ns;
	const struct rw_hooks *hooks;
	enum rs_state state;
	uint64_t in_len;    /* the message's length (its gRPC prefix) */
	uint64_t left;      /* message bytes not yet read */
	uint64_t run;       /* bytes left of the field (or key, or header) being read */
	uint64_t kv_left;   /* bytes left of the current KeyValue */
	size_t pad;         /* owed at the end of the current KeyValue */
	unsigned kv_keys;   /* keys seen in it (etcd sends one) */
	int started;        /* the gRPC prefix went out */
	uint8_t acc[24];    /* a tag and a length being read */
	size_t acc_len;
	struct rw_buf hold; /* the header, or a key, being read */
	struct rw_buf out;  /* the rewritten header */
	uint8_t *header;    /* the core's ResponseHeader as a message of its own, or NULL */
	size_t header_len;
	void (*emit)(void *ctx, const uint8_t *p, size_t len);
	void *ctx;
};

/* Start one: LEN is the message's length, EMIT gets the output (gRPC prefix included). */
void rs_init(struct rstream *s, const struct rw_ns *ns, const struct rw_hooks *hooks,
	     uint64_t len, void (*emit)(void *ctx, const uint8_t *p, size_t len), void *ctx);
/*
 * Feed bytes of the message: 0 when more are wanted, 1 when the message is
 * complete, <0 with err when it cannot be rewritten.  *used: the bytes taken
 * (fewer than len only at the end of the message).
 */
int rs_feed(struct rstream *s, const uint8_t *in, size_t len, size_t *used,
	    struct rw_error *err);
void rs_free(struct rstream *s);

/*
 * A large PutRequest forwarded as it arrives (doc/wire.md section 3c): its
 * head, every field up to and including its key, is rewritten whole by
 * ps_head(); what follows (the value above all) goes on unchanged through
 * ps_feed(), which checks it as rw_request() would.  The message's last byte
 * is held back until the whole message passed every check: the core etcd
 * never has a complete message the proxy would have refused.
 */
enum ps_state {
	PS_FIELD,  /* a field begins */
	PS_COPY,   /* a field passed on as it comes */
	PS_VARINT, /* a varint passed on (and read: a lease, ignore_value) */
};

struct pstream {
	const struct rw_hooks *hooks;
	enum ps_state state;
	uint64_t left;     /* message bytes not yet read */
	uint64_t run;      /* bytes left of the field being copied, or of the varint read */
	uint64_t value;    /* the varint being read */
	uint32_t varint;   /* its field number */
	int64_t lease;     /* the last lease the message named after its head */
	int lease_named;   /* it named one there (maybe 0: no lease) */
	int64_t value_len; /* the length of its last value after the head; -1: none there */
	int ignore_value;  /* its last ignore_value after the head (0 or 1); -1: none there */
	uint8_t acc[24];   /* a tag and a length being read */
	size_t acc_len;
	uint8_t last;      /* the message's last byte, held back (set when ps_feed() returns 1) */
	void (*emit)(void *ctx, const uint8_t *p, size_t len);
	void *ctx;
};

/*
 * The head of a PutRequest of LEN bytes, HAVE of which are at MSG: its
 * length, with the rewritten head appended to OUT, when a key field ends
 * within the first RW_STREAM_HEADER_MAX bytes; 0 when more bytes are needed;
 * -EAGAIN when the message is not streamed (no key in time, a head that does
 * not rewrite, anything unusual): the buffered rewrite then decides.  *SCAN
 * (0 at first) is where the fields before the key were read up to: a call
 * with more bytes goes on from there rather than from the start.
 */
long ps_head(const struct rw_ns *ns, const struct rw_hooks *hooks, const uint8_t *msg,
	     size_t have, uint64_t len, size_t *scan, struct rw_buf *out);
/* The rest of the message, REST bytes after its head; EMIT gets them as they pass. */
void ps_init(struct pstream *s, const struct rw_hooks *hooks, uint64_t rest,
	     void (*emit)(void *ctx, const uint8_t *p, size_t len), void *ctx);
/*
 * Feed bytes after the head: 0 when more are wanted, 1 when the message is
 * complete (its last byte in s->last, not emitted), <0 with err when it is
 * refused: malformed, a lease the hook refuses, or a second key field (its
 * prefix would change the length already sent).  *used: the bytes taken.
 */
int ps_feed(struct pstream *s, const uint8_t *in, size_t len, size_t *used, struct rw_error *err);

/* Nested Txn depth limit (etcd itself has none but max-txn-ops bounds it). */
#define RW_MAX_DEPTH 16

#endif /* EP_NATIVE_REWRITE_H */
