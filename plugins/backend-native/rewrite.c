/*
 * The native backend's message rewriter (see rewrite.h and doc/wire.md).
 *
 * One table-driven walker serves every message: a schema lists the few
 * fields of a message that matter (key fields, embedded messages on the way
 * to a key, lease IDs); every other field is only skipped over and copied
 * later as part of a "run" of untouched bytes.  A message without anything
 * to rewrite therefore costs one validating walk and one memcpy.
 *
 * Embedded messages are written in place: the walker reserves as many bytes
 * for the new length as the old length needed, writes the rewritten body
 * after them, and moves the body only when the length's varint grew or
 * shrank (127 <-> 128 and so on).  No allocation happens per field; the
 * output buffer grows geometrically.
 *
 * Decisions behind the rules of doc/wire.md (its section 7 compares them with etcd's):
 *  - A field the schema knows, sent with another wire type, is malformed.
 *    etcd's gogo-generated decoder refuses such a message too ("wrong
 *    wireType"), so nothing is lost, and no parser can read it as a key.
 *  - Field number 0, a tag above 32 bits and a varint whose tenth byte
 *    overflows 64 bits are malformed (as in protowire).
 *  - Empty keys: a Range/Put/DeleteRange (stand-alone or inside a Txn at
 *    any depth) or Compare whose key is absent, or any of whose key fields
 *    is zero-length, is refused with etcd's "key is not provided".
 *  - Watch create with an empty key is mapped, not refused: etcd itself
 *    treats an empty watch key as "\0", so the tenant's "\0" becomes
 *    prefix || "\0" (added as a new field when the key is absent).  That is
 *    exactly etcd's meaning seen from inside the namespace and cannot reach
 *    outside it, whereas client/v3/namespace would watch the bare prefix.
 *  - Lease hooks see every non-zero lease ID occurrence; ID 0 means "no
 *    lease" and etcd itself answers "requested lease not found" for it.
 *    LeaseGrant and LeaseStatus IDs follow protobuf's last-one-wins rule.
 *  - Txn nesting: the outermost Txn is level 1; level RW_MAX_DEPTH is the
 *    deepest accepted, in requests and responses alike.
 *  - A response KeyValue without a key counts as a key outside the prefix.
 *  - Pass-through kinds validate the top-level message only; embedded
 *    messages that carry no keys are copied without being opened.
 *  - Alarm: every occurrence of action must be GET (0), so a later ACTIVATE
 *    cannot hide behind an earlier GET.
 *  - MemberList and Health Check messages (answered by the proxy) and all
 *    other pass kinds are validated and copied unchanged in both directions.
 *  - rw_ns_init copies the prefix into the allocation that holds prefix_end,
 *    so ns->prefix never dangles; rw_ns_free releases both.
 *  - On failure the output buffer is cut back to the length it had on entry;
 *    on success err is set to {0, NULL}.  Out of memory is -ENOMEM with
 *    status 8 (RESOURCE_EXHAUSTED); a bad kind, namespace or argument is
 *    -EINVAL with status 13.
 */
#include "rewrite.h"
#include "pb.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- method table --------------------------------------------------------- */

struct method_entry {
	struct rw_method m;
	size_t len;
};

/* clang-format off */
#define FWD(p, k, cs, ss)   {{p, RW_FORWARD, k, cs, ss, NULL}, sizeof(p) - 1}
#define LOCAL(p, k)         {{p, RW_LOCAL, k, 0, 0, NULL}, sizeof(p) - 1}
#define DENY(p, ss, why)    {{p, RW_DENY, RW_NONE, 0, ss, why}, sizeof(p) - 1}
#define UNIMPL(p, cs, ss)   {{p, RW_UNIMPLEMENTED, RW_NONE, cs, ss, NULL}, sizeof(p) - 1}

#define WHY_MEMBERS  "cluster membership is not the tenant's to change"
#define WHY_AUTH     "authentication and roles are managed for the whole cluster"

static const struct method_entry methods[] = {
	FWD("/etcdserverpb.KV/Range", RW_RANGE, 0, 0),
	FWD("/etcdserverpb.KV/Put", RW_PUT, 0, 0),
	FWD("/etcdserverpb.KV/DeleteRange", RW_DELETE_RANGE, 0, 0),
	FWD("/etcdserverpb.KV/Txn", RW_TXN, 0, 0),
	FWD("/etcdserverpb.KV/Compact", RW_COMPACT, 0, 0),
	UNIMPL("/etcdserverpb.KV/RangeStream", 0, 1),

	FWD("/etcdserverpb.Watch/Watch", RW_WATCH, 1, 1),

	FWD("/etcdserverpb.Lease/LeaseGrant", RW_LEASE_GRANT, 0, 0),
	FWD("/etcdserverpb.Lease/LeaseRevoke", RW_LEASE_REVOKE, 0, 0),
	FWD("/etcdserverpb.Lease/LeaseKeepAlive", RW_LEASE_KEEPALIVE, 1, 1),
	FWD("/etcdserverpb.Lease/LeaseTimeToLive", RW_LEASE_TTL, 0, 0),
	FWD("/etcdserverpb.Lease/LeaseLeases", RW_LEASE_LEASES, 0, 0),

	FWD("/etcdserverpb.Maintenance/Status", RW_STATUS, 0, 0),
	FWD("/etcdserverpb.Maintenance/Alarm", RW_ALARM, 0, 0),
	DENY("/etcdserverpb.Maintenance/Defragment", 0, "Defragment stalls the shared etcd member"),
	DENY("/etcdserverpb.Maintenance/Hash", 0,
	     "Hash reads the whole shared database, every tenant's data included"),
	DENY("/etcdserverpb.Maintenance/HashKV", 0,
	     "HashKV reads the whole shared keyspace, every tenant's data included"),
	DENY("/etcdserverpb.Maintenance/Snapshot", 1, "Snapshot would copy every tenant's data"),
	DENY("/etcdserverpb.Maintenance/MoveLeader", 0,
	     "MoveLeader changes the leader of the shared cluster"),
	DENY("/etcdserverpb.Maintenance/Downgrade", 0,
	     "Downgrade changes the version of the shared cluster"),

	LOCAL("/etcdserverpb.Cluster/MemberList", RW_MEMBER_LIST),
	DENY("/etcdserverpb.Cluster/MemberAdd", 0, WHY_MEMBERS),
	DENY("/etcdserverpb.Cluster/MemberRemove", 0, WHY_MEMBERS),
	DENY("/etcdserverpb.Cluster/MemberUpdate", 0, WHY_MEMBERS),
	DENY("/etcdserverpb.Cluster/MemberPromote", 0, WHY_MEMBERS),

	DENY("/etcdserverpb.Auth/AuthEnable", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/AuthDisable", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/AuthStatus", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/Authenticate", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserAdd", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserGet", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserList", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserDelete", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserChangePassword", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserGrantRole", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/UserRevokeRole", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/RoleAdd", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/RoleGet", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/RoleList", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/RoleDelete", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/RoleGrantPermission", 0, WHY_AUTH),
	DENY("/etcdserverpb.Auth/RoleRevokePermission", 0, WHY_AUTH),

	/* namespaced like KV: names and keys gain the prefix, leases must be the tenant's */
	FWD("/v3lockpb.Lock/Lock", RW_LOCK, 0, 0),
	FWD("/v3lockpb.Lock/Unlock", RW_UNLOCK, 0, 0),
	FWD("/v3electionpb.Election/Campaign", RW_CAMPAIGN, 0, 0),
	FWD("/v3electionpb.Election/Proclaim", RW_PROCLAIM, 0, 0),
	FWD("/v3electionpb.Election/Leader", RW_LEADER, 0, 0),
	FWD("/v3electionpb.Election/Observe", RW_LEADER, 0, 1),
	FWD("/v3electionpb.Election/Resign", RW_RESIGN, 0, 0),

	LOCAL("/grpc.health.v1.Health/Check", RW_HEALTH_CHECK),
};
/* clang-format on */

static const struct rw_method method_unknown = {NULL, RW_UNIMPLEMENTED, RW_NONE, 0, 0, NULL};

const struct rw_method *rw_method_lookup(const char *path, size_t len)
{
	if (path == NULL)
		return &method_unknown;
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		if (methods[i].len == len && memcmp(methods[i].m.path, path, len) == 0)
			return &methods[i].m;
	}
	return &method_unknown;
}

/* ---- buffers and namespaces ---------------------------------------------- */

void rw_buf_free(struct rw_buf *b)
{
	if (b == NULL)
		return;
	if (b->free_fn != NULL)
		b->free_fn(b->data);
	else
		free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

/*
 * One allocation holds the prefix end followed by a copy of the prefix, so
 * ns->prefix does not depend on the caller's buffer staying alive; both are
 * released through prefix_end.
 */
int rw_ns_init(struct rw_ns *ns, const uint8_t *prefix, size_t len)
{
	size_t end_len = len;
	uint8_t *mem;

	if (ns == NULL)
		return -EINVAL;
	memset(ns, 0, sizeof(*ns));
	if (prefix == NULL || len == 0)
		return -EINVAL;
	while (end_len > 0 && prefix[end_len - 1] == 0xff)
		end_len--;
	if (end_len == 0)
		return -EINVAL; /* the prefix end would be the end of the keyspace */
	if (len > SIZE_MAX / 2)
		return -EINVAL;
	mem = malloc(end_len + len);
	if (mem == NULL)
		return -ENOMEM;
	memcpy(mem, prefix, end_len);
	mem[end_len - 1]++;
	memcpy(mem + end_len, prefix, len);
	ns->prefix_end = mem;
	ns->prefix_end_len = end_len;
	ns->prefix = mem + end_len;
	ns->prefix_len = len;
	return 0;
}

void rw_ns_free(struct rw_ns *ns)
{
	if (ns == NULL)
		return;
	free(ns->prefix_end);
	memset(ns, 0, sizeof(*ns));
}

/* ---- error texts ----------------------------------------------------------- */

#define MSG_BAD_REQUEST  "etcdproxy: malformed request"
#define MSG_BAD_RESPONSE "etcdproxy: malformed response from the core etcd"
#define MSG_NO_KEY       "etcdserver: key is not provided"
#define MSG_FOREIGN_KEY  "etcdproxy: the core etcd returned a key outside the tenant's prefix"
#define MSG_NO_LEASE     "etcdserver: requested lease not found"
#define MSG_ALARM        "etcdproxy: only Alarm GET is allowed; alarms are managed for the whole cluster"
#define MSG_DEPTH        "etcdproxy: Txn nested too deeply"
#define MSG_NOMEM        "etcdproxy: out of memory"
#define MSG_BAD_KIND     "etcdproxy: internal error: no rewriter for this message kind"
#define MSG_BAD_NS       "etcdproxy: internal error: namespace not prepared"
#define MSG_BAD_ARGS     "etcdproxy: internal error: bad rewriter arguments"

enum {
	ST_INVALID_ARGUMENT = 3,
	ST_NOT_FOUND = 5,
	ST_PERMISSION_DENIED = 7,
	ST_RESOURCE_EXHAUSTED = 8,
	ST_INTERNAL = 13
};

/* ---- schemas -------------------------------------------------------------- */

enum wire { WT_VARINT = EP_PB_VARINT, WT_I64 = EP_PB_I64, WT_LEN = EP_PB_LEN, WT_I32 = EP_PB_I32 };

enum action {
	ACT_KEY,          /* P: prefix; must not be empty */
	ACT_WATCH_KEY,    /* P; empty means "\0", as etcd reads it */
	ACT_RANGE_END,    /* R */
	ACT_STRIP,        /* S: must carry the prefix; loses it */
	ACT_FILTER,       /* F: dropped without the prefix, else stripped */
	ACT_MSG,          /* embedded message, rewritten with schema `sub` */
	ACT_LEASE,        /* lease ID: lease_check when non-zero */
	ACT_ALARM_ACTION, /* AlarmRequest.action: GET (0) only */
	ACT_LEASE_STATUS, /* LeaseLeasesResponse entry: kept if lease_visible */
	ACT_GRANT_ID,     /* LeaseGrantResponse.ID */
	ACT_GRANT_ERROR,  /* LeaseGrantResponse.error */
	ACT_MEMBER_ID,    /* a member ID in a response: ns->member_id when set */
};

enum schema_id {
	SC_PASS,
	SC_RANGE_REQ,
	SC_PUT_REQ,
	SC_DELETE_REQ,
	SC_TXN_REQ,
	SC_COMPARE,
	SC_REQUEST_OP,
	SC_WATCH_REQ,
	SC_WATCH_CREATE,
	SC_LEASE_ID_REQ,
	SC_ALARM_REQ,
	SC_KV,
	SC_RANGE_RESP,
	SC_PUT_RESP,
	SC_DELETE_RESP,
	SC_TXN_RESP,
	SC_RESPONSE_OP,
	SC_WATCH_RESP,
	SC_EVENT,
	SC_TTL_RESP,
	SC_LEASES_RESP,
	SC_GRANT_RESP,
	SC_LOCK_REQ,
	SC_UNLOCK_REQ,
	SC_CAMPAIGN_REQ,
	SC_LEADER_KEY_REQ,
	SC_PROCLAIM_REQ,
	SC_LEADER_REQ,
	SC_LOCK_RESP,
	SC_CAMPAIGN_RESP,
	SC_LEADER_KEY_RESP,
	SC_LEADER_RESP,
	SC_HEADER,
	SC_HEADER_ONLY,
	SC_STATUS_RESP,
};

struct rule {
	uint32_t field;
	uint8_t wire;
	uint8_t act;
	uint8_t sub; /* enum schema_id, for ACT_MSG */
};

#define SF_NEEDS_KEY 1u /* a key field must be present (ACT_KEY / ACT_STRIP) */
#define SF_WATCH_KEY 2u /* an absent key becomes "\0" */
#define SF_TXN       4u /* one Txn level, counted against RW_MAX_DEPTH */
#define SF_GRANT     8u /* report the granted lease once the message is read */

struct schema {
	const struct rule *rules;
	unsigned nrules;
	unsigned flags;
};

/* clang-format off */
#define MSG(f, s)  {f, WT_LEN, ACT_MSG, s}
#define LENF(f, a) {f, WT_LEN, a, 0}
#define VARF(f, a) {f, WT_VARINT, a, 0}

static const struct rule r_range_req[] = {LENF(1, ACT_KEY), LENF(2, ACT_RANGE_END)};
static const struct rule r_put_req[] = {LENF(1, ACT_KEY), VARF(3, ACT_LEASE)};
static const struct rule r_txn_req[] = {MSG(1, SC_COMPARE), MSG(2, SC_REQUEST_OP),
					MSG(3, SC_REQUEST_OP)};
static const struct rule r_compare[] = {LENF(3, ACT_KEY), LENF(64, ACT_RANGE_END)};
static const struct rule r_request_op[] = {MSG(1, SC_RANGE_REQ), MSG(2, SC_PUT_REQ),
					   MSG(3, SC_DELETE_REQ), MSG(4, SC_TXN_REQ)};
static const struct rule r_watch_req[] = {MSG(1, SC_WATCH_CREATE)};
static const struct rule r_watch_create[] = {LENF(1, ACT_WATCH_KEY), LENF(2, ACT_RANGE_END)};
static const struct rule r_lease_id_req[] = {VARF(1, ACT_LEASE)};
static const struct rule r_alarm_req[] = {VARF(1, ACT_ALARM_ACTION)};
static const struct rule r_kv[] = {LENF(1, ACT_STRIP)};
/* every response's ResponseHeader (field 1): member_id (2) is the tenant's one member */
static const struct rule r_header[] = {VARF(2, ACT_MEMBER_ID)};
static const struct rule r_header_only[] = {MSG(1, SC_HEADER)};
static const struct rule r_status_resp[] = {MSG(1, SC_HEADER), VARF(4, ACT_MEMBER_ID)};
static const struct rule r_range_resp[] = {MSG(1, SC_HEADER), MSG(2, SC_KV)};
static const struct rule r_delete_resp[] = {MSG(1, SC_HEADER), MSG(3, SC_KV)};
static const struct rule r_txn_resp[] = {MSG(1, SC_HEADER), MSG(3, SC_RESPONSE_OP)};
static const struct rule r_response_op[] = {MSG(1, SC_RANGE_RESP), MSG(2, SC_PUT_RESP),
					    MSG(3, SC_DELETE_RESP), MSG(4, SC_TXN_RESP)};
static const struct rule r_watch_resp[] = {MSG(1, SC_HEADER), MSG(11, SC_EVENT)};
static const struct rule r_event[] = {MSG(2, SC_KV), MSG(3, SC_KV)};
static const struct rule r_ttl_resp[] = {MSG(1, SC_HEADER), LENF(5, ACT_FILTER)};
static const struct rule r_leases_resp[] = {MSG(1, SC_HEADER), LENF(2, ACT_LEASE_STATUS)};
static const struct rule r_grant_resp[] = {MSG(1, SC_HEADER), VARF(2, ACT_GRANT_ID),
					   LENF(4, ACT_GRANT_ERROR)};
/* v3lockpb, v3electionpb: a name is a key prefix etcd appends the lease's ID to */
static const struct rule r_lock_req[] = {LENF(1, ACT_KEY), VARF(2, ACT_LEASE)};
static const struct rule r_unlock_req[] = {LENF(1, ACT_KEY)};
static const struct rule r_campaign_req[] = {LENF(1, ACT_KEY), VARF(2, ACT_LEASE)};
static const struct rule r_leader_key_req[] = {LENF(1, ACT_KEY), LENF(2, ACT_KEY),
					       VARF(4, ACT_LEASE)};
static const struct rule r_proclaim_req[] = {MSG(1, SC_LEADER_KEY_REQ)};
static const struct rule r_leader_req[] = {LENF(1, ACT_KEY)};
static const struct rule r_lock_resp[] = {MSG(1, SC_HEADER), LENF(2, ACT_STRIP)};
static const struct rule r_campaign_resp[] = {MSG(1, SC_HEADER), MSG(2, SC_LEADER_KEY_RESP)};
static const struct rule r_leader_key_resp[] = {LENF(1, ACT_STRIP), LENF(2, ACT_STRIP)};
static const struct rule r_leader_resp[] = {MSG(1, SC_HEADER), MSG(2, SC_KV)};

#define RULES(r) r, sizeof(r) / sizeof(r[0])

static const struct schema schemas[] = {
	[SC_PASS] = {NULL, 0, 0},
	[SC_RANGE_REQ] = {RULES(r_range_req), SF_NEEDS_KEY},
	[SC_PUT_REQ] = {RULES(r_put_req), SF_NEEDS_KEY},
	[SC_DELETE_REQ] = {RULES(r_range_req), SF_NEEDS_KEY}, /* same key/range_end fields */
	[SC_TXN_REQ] = {RULES(r_txn_req), SF_TXN},
	[SC_COMPARE] = {RULES(r_compare), SF_NEEDS_KEY},
	[SC_REQUEST_OP] = {RULES(r_request_op), 0},
	[SC_WATCH_REQ] = {RULES(r_watch_req), 0},
	[SC_WATCH_CREATE] = {RULES(r_watch_create), SF_WATCH_KEY},
	[SC_LEASE_ID_REQ] = {RULES(r_lease_id_req), 0},
	[SC_ALARM_REQ] = {RULES(r_alarm_req), 0},
	[SC_KV] = {RULES(r_kv), SF_NEEDS_KEY},
	[SC_RANGE_RESP] = {RULES(r_range_resp), 0},
	[SC_PUT_RESP] = {RULES(r_range_resp), 0}, /* prev_kv is field 2 as well */
	[SC_DELETE_RESP] = {RULES(r_delete_resp), 0},
	[SC_TXN_RESP] = {RULES(r_txn_resp), SF_TXN},
	[SC_RESPONSE_OP] = {RULES(r_response_op), 0},
	[SC_WATCH_RESP] = {RULES(r_watch_resp), 0},
	[SC_EVENT] = {RULES(r_event), 0},
	[SC_TTL_RESP] = {RULES(r_ttl_resp), 0},
	[SC_LEASES_RESP] = {RULES(r_leases_resp), 0},
	[SC_GRANT_RESP] = {RULES(r_grant_resp), SF_GRANT},
	[SC_LOCK_REQ] = {RULES(r_lock_req), SF_NEEDS_KEY},
	[SC_UNLOCK_REQ] = {RULES(r_unlock_req), SF_NEEDS_KEY},
	[SC_CAMPAIGN_REQ] = {RULES(r_campaign_req), SF_NEEDS_KEY},
	[SC_LEADER_KEY_REQ] = {RULES(r_leader_key_req), 0},
	[SC_PROCLAIM_REQ] = {RULES(r_proclaim_req), 0},
	[SC_LEADER_REQ] = {RULES(r_leader_req), SF_NEEDS_KEY},
	[SC_LOCK_RESP] = {RULES(r_lock_resp), 0},
	[SC_CAMPAIGN_RESP] = {RULES(r_campaign_resp), 0},
	[SC_LEADER_KEY_RESP] = {RULES(r_leader_key_resp), 0},
	[SC_LEADER_RESP] = {RULES(r_leader_resp), 0},
	[SC_HEADER] = {RULES(r_header), 0},
	[SC_HEADER_ONLY] = {RULES(r_header_only), 0},
	[SC_STATUS_RESP] = {RULES(r_status_resp), 0},
};
/* clang-format on */

/* ---- context and output --------------------------------------------------- */

struct ctx {
	const struct rw_ns *ns;
	const struct rw_hooks *hooks;
	struct rw_buf *out;
	struct rw_error *err;
	int response;
};

static int fail(struct ctx *c, int rc, int status, const char *message)
{
	c->err->grpc_status = status;
	c->err->message = message;
	return rc;
}

static int malformed(struct ctx *c)
{
	if (c->response)
		return fail(c, -EINVAL, ST_INTERNAL, MSG_BAD_RESPONSE);
	return fail(c, -EINVAL, ST_INVALID_ARGUMENT, MSG_BAD_REQUEST);
}

static int grow(struct ctx *c, size_t need)
{
	struct rw_buf *b = c->out;
	size_t cap = b->cap ? b->cap : 256;
	uint8_t *data;

	if (need > SIZE_MAX - b->len)
		return fail(c, -ENOMEM, ST_RESOURCE_EXHAUSTED, MSG_NOMEM);
	while (cap - b->len < need) {
		if (cap > SIZE_MAX / 2) {
			cap = b->len + need;
			break;
		}
		cap *= 2;
	}
	data = b->realloc_fn != NULL ? b->realloc_fn(b->data, cap) : realloc(b->data, cap);
	if (data == NULL)
		return fail(c, -ENOMEM, ST_RESOURCE_EXHAUSTED, MSG_NOMEM);
	b->data = data;
	b->cap = cap;
	return 0;
}

static inline int reserve(struct ctx *c, size_t n)
{
	if (c->out->cap - c->out->len >= n)
		return 0;
	return grow(c, n);
}

/* Copy [from, to) of the input: a run of fields that stay as they are. */
static inline int copy_run(struct ctx *c, const uint8_t *from, const uint8_t *to)
{
	size_t n = (size_t)(to - from);

	if (n == 0)
		return 0;
	if (reserve(c, n))
		return -ENOMEM;
	memcpy(c->out->data + c->out->len, from, n);
	c->out->len += n;
	return 0;
}

/*
 * Emit one LEN field: the original tag bytes, then the length of a ‖ b, then
 * a and b.  Either part may be empty.
 */
static int put_len_field(struct ctx *c, const uint8_t *tag, size_t tag_len, const uint8_t *a,
                         size_t a_len, const uint8_t *b, size_t b_len)
{
	size_t n = a_len + b_len;
	uint8_t *d;

	if (reserve(c, tag_len + 10 + n))
		return -ENOMEM;
	d = c->out->data + c->out->len;
	memcpy(d, tag, tag_len);
	d = ep_pb_put_varint(d + tag_len, n);
	if (a_len) {
		memcpy(d, a, a_len);
		d += a_len;
	}
	if (b_len) {
		memcpy(d, b, b_len);
		d += b_len;
	}
	c->out->len = (size_t)(d - c->out->data);
	return 0;
}

static inline int has_prefix(const struct rw_ns *ns, const uint8_t *key, size_t len)
{
	return len >= ns->prefix_len && memcmp(key, ns->prefix, ns->prefix_len) == 0;
}

/* ---- wire reading ----------------------------------------------------------- */

static inline const struct rule *find_rule(const struct schema *s, uint32_t num)
{
	for (unsigned i = 0; i < s->nrules; i++) {
		if (s->rules[i].field == num)
			return &s->rules[i];
	}
	return NULL;
}

/* ---- the walker ------------------------------------------------------------ */

static int rewrite_msg(struct ctx *c, enum schema_id id, const uint8_t *in, size_t len,
                       unsigned depth);

/* An embedded message: tag, new length, rewritten body, written in place. */
static int rewrite_embedded(struct ctx *c, const struct ep_pb_field *f, enum schema_id sub,
                            unsigned depth)
{
	size_t tag_len = (size_t)(f->tag_end - f->start);
	unsigned guess = ep_pb_varint_size(f->len), need;
	size_t body, n;
	int rc;

	if (reserve(c, tag_len + guess))
		return -ENOMEM;
	memcpy(c->out->data + c->out->len, f->start, tag_len);
	c->out->len += tag_len + guess;
	body = c->out->len;
	rc = rewrite_msg(c, sub, f->data, f->len, depth);
	if (rc)
		return rc;
	n = c->out->len - body;
	need = ep_pb_varint_size(n);
	if (need != guess) {
		if (need > guess && reserve(c, need - guess))
			return -ENOMEM;
		memmove(c->out->data + body - guess + need, c->out->data + body, n);
		c->out->len = c->out->len - guess + need;
	}
	ep_pb_put_varint(c->out->data + body - guess, n);
	return 0;
}

/* The ID of a LeaseStatus (last occurrence wins, 0 when absent). */
static int lease_status_id(struct ctx *c, const uint8_t *p, size_t len, int64_t *id)
{
	const uint8_t *end = p + len;
	struct ep_pb_field f;

	*id = 0;
	while (p < end) {
		if (ep_pb_next_field(&p, end, &f) < 0)
			return malformed(c);
		if (f.number == 1) {
			if (f.wire != WT_VARINT)
				return malformed(c);
			*id = (int64_t)f.value;
		}
	}
	return 0;
}

static int rewrite_msg(struct ctx *c, enum schema_id id, const uint8_t *in, size_t len,
                       unsigned depth)
{
	const struct schema *s = &schemas[id];
	const struct rw_ns *ns = c->ns;
	const struct rw_hooks *h = c->hooks;
	const uint8_t *p = in, *end = in + len, *run = in;
	int have_key = 0;
	uint64_t grant_id = 0;
	size_t grant_error_len = 0;
	struct ep_pb_field f;
	int rc;

	if (s->flags & SF_TXN) {
		if (++depth > RW_MAX_DEPTH)
			return fail(c, -EINVAL, c->response ? ST_INTERNAL : ST_INVALID_ARGUMENT,
			            MSG_DEPTH);
	}

	while (p < end) {
		const struct rule *r;

		if (ep_pb_next_field(&p, end, &f) < 0)
			return malformed(c);
		r = find_rule(s, f.number);
		if (r == NULL)
			continue; /* unknown or uninteresting: stays in the run */
		if (r->wire != f.wire)
			return malformed(c);

		switch (r->act) {
		case ACT_LEASE:
			if (f.value != 0 && h && h->lease_check &&
			    h->lease_check(h->ctx, (int64_t)f.value) != 0)
				return fail(c, -ENOENT, ST_NOT_FOUND, MSG_NO_LEASE);
			continue;
		case ACT_ALARM_ACTION:
			if (f.value != 0)
				return fail(c, -EPERM, ST_PERMISSION_DENIED, MSG_ALARM);
			continue;
		case ACT_GRANT_ID: grant_id = f.value; continue;
		case ACT_MEMBER_ID:
			if (ns->member_id == 0 || f.value == ns->member_id)
				continue; /* stays in the run */
			if (copy_run(c, run, f.start) || reserve(c, (size_t)(f.tag_end - f.start) + 10))
				return -ENOMEM;
			run = p;
			memcpy(c->out->data + c->out->len, f.start, (size_t)(f.tag_end - f.start));
			c->out->len = (size_t)(ep_pb_put_varint(c->out->data + c->out->len +
			                                        (size_t)(f.tag_end - f.start),
			                                        ns->member_id) - c->out->data);
			continue;
		case ACT_GRANT_ERROR: grant_error_len = f.len; continue;
		case ACT_LEASE_STATUS: {
			int64_t lease;

			rc = lease_status_id(c, f.data, f.len, &lease);
			if (rc)
				return rc;
			if (!h || !h->lease_visible || h->lease_visible(h->ctx, lease))
				continue; /* kept as it is */
			if (copy_run(c, run, f.start))
				return -ENOMEM;
			run = p; /* dropped */
			continue;
		}
		default: break;
		}

		/* Everything below replaces the field: flush what came before. */
		if (copy_run(c, run, f.start))
			return -ENOMEM;
		run = p;

		switch (r->act) {
		case ACT_KEY:
			if (f.len == 0)
				return fail(c, -EINVAL, ST_INVALID_ARGUMENT, MSG_NO_KEY);
			have_key = 1;
			rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start), ns->prefix,
			                   ns->prefix_len, f.data, f.len);
			break;
		case ACT_WATCH_KEY:
			have_key = 1;
			if (f.len == 0)
				rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start),
				                   ns->prefix, ns->prefix_len, (const uint8_t *)"",
				                   1);
			else
				rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start),
				                   ns->prefix, ns->prefix_len, f.data, f.len);
			break;
		case ACT_RANGE_END:
			if (f.len == 0) /* explicit empty: still a single key */
				rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start), NULL,
				                   0, NULL, 0);
			else if (f.len == 1 && f.data[0] == 0) /* "every key >= key" */
				rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start),
				                   ns->prefix_end, ns->prefix_end_len, NULL, 0);
			else
				rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start),
				                   ns->prefix, ns->prefix_len, f.data, f.len);
			break;
		case ACT_STRIP:
			if (!has_prefix(ns, f.data, f.len))
				return fail(c, -EPROTO, ST_INTERNAL, MSG_FOREIGN_KEY);
			have_key = 1;
			rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start),
			                   f.data + ns->prefix_len, f.len - ns->prefix_len, NULL, 0);
			break;
		case ACT_FILTER:
			if (!has_prefix(ns, f.data, f.len))
				continue; /* another tenant's key: dropped */
			rc = put_len_field(c, f.start, (size_t)(f.tag_end - f.start),
			                   f.data + ns->prefix_len, f.len - ns->prefix_len, NULL, 0);
			break;
		case ACT_MSG: rc = rewrite_embedded(c, &f, (enum schema_id)r->sub, depth); break;
		default:
			rc = malformed(c); /* not reached: every action is handled above */
			break;
		}
		if (rc)
			return rc;
	}
	if (copy_run(c, run, end))
		return -ENOMEM;

	if (!have_key) {
		if (s->flags & SF_NEEDS_KEY) {
			if (c->response)
				return fail(c, -EPROTO, ST_INTERNAL, MSG_FOREIGN_KEY);
			return fail(c, -EINVAL, ST_INVALID_ARGUMENT, MSG_NO_KEY);
		}
		if (s->flags & SF_WATCH_KEY) {
			static const uint8_t key_tag = 0x0a; /* field 1, LEN */

			rc = put_len_field(c, &key_tag, 1, ns->prefix, ns->prefix_len,
			                   (const uint8_t *)"", 1);
			if (rc)
				return rc;
		}
	}
	if ((s->flags & SF_GRANT) && grant_id != 0 && grant_error_len == 0 && h && h->lease_granted)
		h->lease_granted(h->ctx, (int64_t)grant_id);
	return 0;
}

/* ---- entry points ---------------------------------------------------------- */

static int request_schema(enum rw_kind kind, enum schema_id *id)
{
	switch (kind) {
	case RW_NONE:
	case RW_COMPACT:
	case RW_STATUS:
	case RW_LEASE_GRANT:
	case RW_LEASE_LEASES:
	case RW_MEMBER_LIST:
	case RW_HEALTH_CHECK: *id = SC_PASS; return 0;
	case RW_RANGE: *id = SC_RANGE_REQ; return 0;
	case RW_PUT: *id = SC_PUT_REQ; return 0;
	case RW_DELETE_RANGE: *id = SC_DELETE_REQ; return 0;
	case RW_TXN: *id = SC_TXN_REQ; return 0;
	case RW_WATCH: *id = SC_WATCH_REQ; return 0;
	case RW_LEASE_REVOKE:
	case RW_LEASE_KEEPALIVE:
	case RW_LEASE_TTL: *id = SC_LEASE_ID_REQ; return 0;
	case RW_ALARM: *id = SC_ALARM_REQ; return 0;
	case RW_LOCK: *id = SC_LOCK_REQ; return 0;
	case RW_UNLOCK: *id = SC_UNLOCK_REQ; return 0;
	case RW_CAMPAIGN: *id = SC_CAMPAIGN_REQ; return 0;
	case RW_PROCLAIM:
	case RW_RESIGN: *id = SC_PROCLAIM_REQ; return 0; /* both: leader (field 1) */
	case RW_LEADER: *id = SC_LEADER_REQ; return 0;
	}
	return -1;
}

static int response_schema(enum rw_kind kind, enum schema_id *id)
{
	switch (kind) {
	case RW_NONE:
	case RW_MEMBER_LIST:
	case RW_HEALTH_CHECK: *id = SC_PASS; return 0; /* answered locally */
	case RW_COMPACT:
	case RW_ALARM:
	case RW_LEASE_REVOKE:
	case RW_LEASE_KEEPALIVE: *id = SC_HEADER_ONLY; return 0;
	case RW_STATUS: *id = SC_STATUS_RESP; return 0;
	case RW_RANGE: *id = SC_RANGE_RESP; return 0;
	case RW_PUT: *id = SC_PUT_RESP; return 0;
	case RW_DELETE_RANGE: *id = SC_DELETE_RESP; return 0;
	case RW_TXN: *id = SC_TXN_RESP; return 0;
	case RW_WATCH: *id = SC_WATCH_RESP; return 0;
	case RW_LEASE_GRANT: *id = SC_GRANT_RESP; return 0;
	case RW_LEASE_TTL: *id = SC_TTL_RESP; return 0;
	case RW_LEASE_LEASES: *id = SC_LEASES_RESP; return 0;
	case RW_UNLOCK:
	case RW_PROCLAIM:
	case RW_RESIGN: *id = SC_HEADER_ONLY; return 0;
	case RW_LOCK: *id = SC_LOCK_RESP; return 0;
	case RW_CAMPAIGN: *id = SC_CAMPAIGN_RESP; return 0;
	case RW_LEADER: *id = SC_LEADER_RESP; return 0;
	}
	return -1;
}

static int rewrite(int response, enum rw_kind kind, const struct rw_ns *ns,
                   const struct rw_hooks *hooks, const uint8_t *in, size_t len, struct rw_buf *out,
                   struct rw_error *err)
{
	struct rw_error dummy;
	struct ctx c = {ns, hooks, out, err ? err : &dummy, response};
	enum schema_id id;
	size_t start;
	int rc;

	c.err->grpc_status = 0;
	c.err->message = NULL;
	if (out == NULL || (in == NULL && len > 0))
		return fail(&c, -EINVAL, ST_INTERNAL, MSG_BAD_ARGS);
	if ((response ? response_schema(kind, &id) : request_schema(kind, &id)) != 0)
		return fail(&c, -EINVAL, ST_INTERNAL, MSG_BAD_KIND);
	if (ns == NULL || ns->prefix == NULL || ns->prefix_len == 0 || ns->prefix_end == NULL ||
	    ns->prefix_end_len == 0)
		return fail(&c, -EINVAL, ST_INTERNAL, MSG_BAD_NS);
	if (in == NULL)
		in = (const uint8_t *)"";

	if (len > SIZE_MAX / 4)
		return fail(&c, -ENOMEM, ST_RESOURCE_EXHAUSTED, MSG_NOMEM);
	start = out->len;
	/* Room for the usual key + range_end growth, so most calls allocate at most once. */
	if (reserve(&c, len + (response ? 0 : 2 * (ns->prefix_len + 2) + 16)))
		return -ENOMEM;
	rc = rewrite_msg(&c, id, in, len, 0);
	if (rc)
		out->len = start;
	return rc;
}

int rw_request(enum rw_kind kind, const struct rw_ns *ns, const struct rw_hooks *hooks,
               const uint8_t *in, size_t len, struct rw_buf *out, struct rw_error *err)
{
	return rewrite(0, kind, ns, hooks, in, len, out, err);
}

int rw_response(enum rw_kind kind, const struct rw_ns *ns, const struct rw_hooks *hooks,
                const uint8_t *in, size_t len, struct rw_buf *out, struct rw_error *err)
{
	return rewrite(1, kind, ns, hooks, in, len, out, err);
}

/* ---- a large RangeResponse, as it streams ------------------------------------ */

void rs_init(struct rstream *s, const struct rw_ns *ns, const struct rw_hooks *hooks,
	     uint64_t len, void (*emit)(void *ctx, const uint8_t *p, size_t len), void *ctx)
{
	memset(s, 0, sizeof(*s));
	s->ns = ns;
	s->hooks = hooks;
	s->state = RS_FIELD;
	s->in_len = len;
	s->left = len;
	s->emit = emit;
	s->ctx = ctx;
}

void rs_free(struct rstream *s)
{
	rw_buf_free(&s->hold);
	rw_buf_free(&s->out);
	free(s->header);
	s->header = NULL;
}

static int rs_fail(struct rw_error *err, int rc, const char *message)
{
	err->grpc_status = ST_INTERNAL;
	err->message = message;
	return rc;
}

/* The gRPC prefix of the output, DELTA bytes longer than the input. */
static int rs_start(struct rstream *s, int64_t delta, struct rw_error *err)
{
	uint64_t len = s->in_len + (uint64_t)delta;
	uint8_t h[5];

	if (delta < 0 && (uint64_t)-delta > s->in_len)
		return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
	if (len > 0xffffffffu)
		return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
	h[0] = 0;
	h[1] = (uint8_t)(len >> 24);
	h[2] = (uint8_t)(len >> 16);
	h[3] = (uint8_t)(len >> 8);
	h[4] = (uint8_t)len;
	s->emit(s->ctx, h, 5);
	s->started = 1;
	return 0;
}

/*
 * PAD bytes (at least 3: a prefix is never shorter) of an unknown
 * length-delimited field: a 2-byte tag, a length of one to three bytes
 * (maybe an overlong varint, which every protobuf reader takes), and zeros.
 */
static int rs_pad(struct rstream *s, size_t pad, struct rw_error *err)
{
	static const uint8_t zeros[256];
	uint8_t head[5];
	size_t body, k;

	if (pad < 3 || pad > 2000000)
		return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
	head[0] = (uint8_t)((RW_PAD_FIELD << 3 | EP_PB_LEN) | 0x80);
	head[1] = (uint8_t)((RW_PAD_FIELD << 3 | EP_PB_LEN) >> 7);
	k = pad - 3 <= 0x7f ? 1 : pad - 4 <= 0x3fff ? 2 : 3; /* bytes of the length */
	body = pad - 2 - k;
	for (size_t i = 0; i < k; i++)
		head[2 + i] = (uint8_t)((body >> (7 * i)) & 0x7f) | (i + 1 < k ? 0x80 : 0);
	s->emit(s->ctx, head, 2 + k);
	while (body > 0) {
		size_t n = body < sizeof(zeros) ? body : sizeof(zeros);

		s->emit(s->ctx, zeros, n);
		body -= n;
	}
	return 0;
}

/*
 * Take one byte into ACC until it holds a whole tag and, for a
 * length-delimited field, its length: 1 and the field, 0 for more, -1 when
 * malformed (as ep_pb_next_field() would find it).
 */
static int field_head(uint8_t *acc, size_t *acc_len, size_t cap, uint8_t byte, uint32_t *number,
		      unsigned *wire, uint64_t *length)
{
	const uint8_t *p = acc, *end;
	uint64_t tag;

	if (*acc_len >= cap)
		return -1;
	acc[(*acc_len)++] = byte;
	end = acc + *acc_len;
	if (ep_pb_get_varint(&p, end, &tag) < 0)
		return *acc_len >= 10 ? -1 : 0;
	*number = (uint32_t)(tag >> 3);
	*wire = (unsigned)(tag & 7);
	if (tag >> 3 == 0 || tag >> 3 > 0x1fffffff ||
	    (*wire != EP_PB_VARINT && *wire != EP_PB_I64 && *wire != EP_PB_LEN && *wire != EP_PB_I32))
		return -1;
	*length = 0;
	if (*wire == EP_PB_LEN && ep_pb_get_varint(&p, end, length) < 0)
		return *acc_len >= 20 ? -1 : 0;
	return 1;
}

static int rs_field_head(struct rstream *s, uint8_t byte, uint32_t *number, unsigned *wire,
			 uint64_t *length, struct rw_error *err)
{
	int r = field_head(s->acc, &s->acc_len, sizeof(s->acc), byte, number, wire, length);

	return r < 0 ? rs_fail(err, -EPROTO, MSG_BAD_RESPONSE) : r;
}

static int rs_hold(struct rstream *s, const uint8_t *p, size_t n, struct rw_error *err)
{
	struct rw_buf *b = &s->hold;

	if (n == 0)
		return 0;
	if (b->cap - b->len < n) {
		size_t cap = b->len + n < 2 * b->cap ? 2 * b->cap : b->len + n;
		uint8_t *d;

		if (cap < 256)
			cap = 256;
		d = realloc(b->data, cap);
		if (d == NULL)
			return rs_fail(err, -ENOMEM, MSG_NOMEM);
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

/* The header is in hold (its tag and length first): rewrite it, and start. */
static int rs_header_done(struct rstream *s, struct rw_error *err)
{
	int r;

	s->out.len = 0;
	r = rw_response(RW_RANGE, s->ns, s->hooks, s->hold.data, s->hold.len, &s->out, err);
	if (r < 0)
		return r;
	s->header = malloc(s->hold.len);
	if (s->header == NULL)
		return rs_fail(err, -ENOMEM, MSG_NOMEM);
	memcpy(s->header, s->hold.data, s->hold.len);
	s->header_len = s->hold.len;
	r = rs_start(s, (int64_t)s->out.len - (int64_t)s->hold.len, err);
	if (r < 0)
		return r;
	s->emit(s->ctx, s->out.data, s->out.len);
	s->hold.len = 0;
	return 0;
}

/* The key is in hold: the tenant's prefix must be there, and goes. */
static int rs_key_done(struct rstream *s, struct rw_error *err)
{
	const struct rw_ns *ns = s->ns;
	uint8_t head[32], *h = head;
	const uint8_t *p = s->acc;
	size_t keep, in_bytes = s->acc_len + s->hold.len, out_bytes;
	uint64_t tag;

	if (!has_prefix(ns, s->hold.data, s->hold.len))
		return rs_fail(err, -EPROTO, MSG_FOREIGN_KEY);
	keep = s->hold.len - ns->prefix_len;
	/* the tag as it came (put_len_field() keeps it too), a new length */
	if (ep_pb_get_varint(&p, s->acc + s->acc_len, &tag) < 0)
		return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
	memcpy(h, s->acc, (size_t)(p - s->acc));
	h += p - s->acc;
	h = ep_pb_put_varint(h, keep);
	out_bytes = (size_t)(h - head) + keep;
	s->pad += in_bytes - out_bytes;
	s->emit(s->ctx, head, (size_t)(h - head));
	s->emit(s->ctx, s->hold.data + ns->prefix_len, keep);
	s->hold.len = 0;
	return 0;
}

int rs_feed(struct rstream *s, const uint8_t *in, size_t len, size_t *used,
	    struct rw_error *err)
{
	const uint8_t *start = in;
	uint32_t number;
	unsigned wire;
	uint64_t length;
	size_t n;
	int r;

	if (s->ns == NULL || s->ns->prefix == NULL)
		return rs_fail(err, -EINVAL, MSG_BAD_NS);
	if (len > s->left)
		len = (size_t)s->left;
	while (len > 0) {
		switch (s->state) {
		case RS_FIELD:
			r = rs_field_head(s, *in, &number, &wire, &length, err);
			in++, len--, s->left--;
			if (r <= 0) {
				if (r < 0)
					return r;
				break;
			}
			if (wire == EP_PB_LEN && length > s->left)
				return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
			if ((number == 1 || number == 2) && wire != EP_PB_LEN)
				return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE); /* as rewrite_msg() */
			if (number == 1 && wire == EP_PB_LEN) {
				/* the header, which etcd sends first: its change of size is the message's */
				if (s->started || length > RW_STREAM_HEADER_MAX)
					return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
				if ((r = rs_hold(s, s->acc, s->acc_len, err)) < 0)
					return r;
				s->run = length;
				s->state = RS_HEADER;
			} else {
				if (!s->started && (r = rs_start(s, 0, err)) < 0)
					return r;
				s->emit(s->ctx, s->acc, s->acc_len);
				if (number == 2 && wire == EP_PB_LEN) {
					s->kv_left = length;
					s->pad = 0;
					s->kv_keys = 0;
					s->state = RS_KV_FIELD;
				} else if (wire == EP_PB_VARINT) {
					s->state = RS_VARINT;
				} else {
					s->run = wire == EP_PB_LEN ? length : wire == EP_PB_I64 ? 8 : 4;
					if (s->run > s->left)
						return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
					s->state = RS_COPY;
				}
			}
			s->acc_len = 0;
			if (s->state == RS_HEADER && s->run == 0 && (r = rs_header_done(s, err)) < 0)
				return r;
			if ((s->state == RS_HEADER || s->state == RS_COPY) && s->run == 0)
				s->state = RS_FIELD;
			if (s->state == RS_KV_FIELD && s->kv_left == 0)
				return rs_fail(err, -EPROTO, MSG_FOREIGN_KEY); /* a KeyValue without a key */
			break;
		case RS_HEADER:
			n = len < s->run ? len : (size_t)s->run;
			if ((r = rs_hold(s, in, n, err)) < 0)
				return r;
			in += n, len -= n, s->left -= n, s->run -= n;
			if (s->run == 0) {
				if ((r = rs_header_done(s, err)) < 0)
					return r;
				s->state = RS_FIELD;
			}
			break;
		case RS_COPY:
			n = len < s->run ? len : (size_t)s->run;
			s->emit(s->ctx, in, n);
			in += n, len -= n, s->left -= n, s->run -= n;
			if (s->run == 0)
				s->state = RS_FIELD;
			break;
		case RS_VARINT:
			/* at most 10 bytes, the 10th 0 or 1, as ep_pb_get_varint() reads them */
			if (++s->run > 10 || (s->run == 10 && *in > 1))
				return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
			s->emit(s->ctx, in, 1);
			if (*in < 0x80) {
				s->run = 0;
				s->state = RS_FIELD;
			}
			in++, len--, s->left--;
			break;
		case RS_KV_FIELD:
			if (s->kv_left == 0) {
				/* the KeyValue is whole: its key (or keys) lost bytes, the pad gives them back */
				if (s->kv_keys == 0)
					return rs_fail(err, -EPROTO, MSG_FOREIGN_KEY);
				if ((r = rs_pad(s, s->pad, err)) < 0)
					return r;
				s->state = RS_FIELD;
				break;
			}
			r = rs_field_head(s, *in, &number, &wire, &length, err);
			in++, len--, s->left--, s->kv_left--;
			if (r < 0)
				return r;
			if (r == 0) {
				if (s->kv_left == 0)
					return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
				break;
			}
			if (wire == EP_PB_LEN && length > s->kv_left)
				return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
			if (number == 1 && wire != EP_PB_LEN)
				return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
			if (number == 1) {
				s->run = length;
				s->state = RS_KV_KEY;
				if (length == 0) { /* an empty key: refused by rs_key_done() */
					if ((r = rs_key_done(s, err)) < 0)
						return r;
				}
			} else {
				s->emit(s->ctx, s->acc, s->acc_len);
				s->acc_len = 0;
				if (wire == EP_PB_VARINT) {
					s->state = RS_KV_VARINT;
				} else {
					s->run = wire == EP_PB_LEN ? length : wire == EP_PB_I64 ? 8 : 4;
					if (s->run > s->kv_left)
						return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
					/* an empty field is whole already */
					s->state = s->run > 0 ? RS_KV_COPY : RS_KV_FIELD;
				}
			}
			break;
		case RS_KV_KEY:
			n = len < s->run ? len : (size_t)s->run;
			if ((r = rs_hold(s, in, n, err)) < 0)
				return r;
			in += n, len -= n, s->left -= n, s->run -= n, s->kv_left -= n;
			if (s->run > 0)
				break;
			if ((r = rs_key_done(s, err)) < 0)
				return r;
			s->acc_len = 0;
			s->kv_keys++;
			s->state = RS_KV_FIELD;
			break;
		case RS_KV_COPY: /* a value is most of a large answer: it goes on as it comes */
			n = len < s->run ? len : (size_t)s->run;
			s->emit(s->ctx, in, n);
			in += n, len -= n, s->left -= n, s->run -= n, s->kv_left -= n;
			if (s->run == 0)
				s->state = RS_KV_FIELD;
			break;
		case RS_KV_VARINT:
			if (++s->run > 10 || (s->run == 10 && *in > 1) || s->kv_left == 0)
				return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE);
			s->emit(s->ctx, in, 1);
			if (*in < 0x80) {
				s->run = 0;
				s->state = RS_KV_FIELD;
			}
			in++, len--, s->left--, s->kv_left--;
			break;
		}
		/* a KeyValue that ends with the message still gets its pad */
		if (len == 0 && s->left == 0 && s->state == RS_KV_FIELD && s->kv_left == 0) {
			if (s->kv_keys == 0)
				return rs_fail(err, -EPROTO, MSG_FOREIGN_KEY);
			if ((r = rs_pad(s, s->pad, err)) < 0)
				return r;
			s->state = RS_FIELD;
		}
	}
	*used = (size_t)(in - start);
	if (s->left > 0)
		return 0;
	if (s->state != RS_FIELD || s->acc_len != 0)
		return rs_fail(err, -EPROTO, MSG_BAD_RESPONSE); /* cut inside a field */
	if (!s->started && (r = rs_start(s, 0, err)) < 0)
		return r;
	return 1;
}

/* ---- a large PutRequest, as it arrives ------------------------------------------ */

long ps_head(const struct rw_ns *ns, const struct rw_hooks *hooks, const uint8_t *msg,
	     size_t have, uint64_t len, size_t *scan, struct rw_buf *out)
{
	const uint8_t *end = msg + (have < len ? have : len);
	const uint8_t *p = msg + (*scan < (size_t)(end - msg) ? *scan : (size_t)(end - msg));
	struct rw_error err = { 0 };
	struct ep_pb_field f;
	size_t head;

	for (;;) {
		int r = ep_pb_next_field(&p, end, &f);

		if (r <= 0) {
			/* cut by what arrived so far, or malformed: wait while the head may come */
			size_t got = (size_t)(end - msg);

			return got < RW_STREAM_HEADER_MAX && (uint64_t)got < len ? 0 : -EAGAIN;
		}
		if ((size_t)(p - msg) > RW_STREAM_HEADER_MAX)
			return -EAGAIN;
		if (f.number == 1)
			break;
		*scan = (size_t)(p - msg); /* read once: the next call starts after it */
	}
	if (f.wire != EP_PB_LEN)
		return -EAGAIN;
	head = (size_t)(p - msg);
	if (head == len || rw_request(RW_PUT, ns, hooks, msg, head, out, &err) < 0)
		return -EAGAIN;
	return (long)head;
}

void ps_init(struct pstream *s, const struct rw_hooks *hooks, uint64_t rest,
	     void (*emit)(void *ctx, const uint8_t *p, size_t len), void *ctx)
{
	memset(s, 0, sizeof(*s));
	s->hooks = hooks;
	s->state = PS_FIELD;
	s->left = rest;
	s->value_len = -1;
	s->ignore_value = -1;
	s->emit = emit;
	s->ctx = ctx;
}

static int ps_fail(struct rw_error *err, int rc, int status, const char *message)
{
	err->grpc_status = status;
	err->message = message;
	return rc;
}

static int ps_malformed(struct rw_error *err)
{
	return ps_fail(err, -EINVAL, ST_INVALID_ARGUMENT, MSG_BAD_REQUEST);
}

/* Bytes just read go on, but for the message's last byte, which waits. */
static void ps_out(struct pstream *s, const uint8_t *p, size_t n)
{
	if (n == 0)
		return;
	if (s->left == 0) {
		s->last = p[n - 1];
		n--;
	}
	if (n > 0)
		s->emit(s->ctx, p, n);
}

int ps_feed(struct pstream *s, const uint8_t *in, size_t len, size_t *used, struct rw_error *err)
{
	const uint8_t *start = in;
	const struct rw_hooks *h = s->hooks;
	uint32_t number;
	unsigned wire;
	uint64_t length;
	size_t n;
	int r;

	*used = 0;
	if (s->left == 0 && s->state == PS_FIELD && s->acc_len == 0)
		return 1;
	if (len > s->left)
		len = (size_t)s->left;
	while (len > 0) {
		switch (s->state) {
		case PS_FIELD:
			r = field_head(s->acc, &s->acc_len, sizeof(s->acc), *in, &number, &wire,
				       &length);
			in++, len--, s->left--;
			if (r < 0)
				return ps_malformed(err);
			if (r == 0) {
				if (s->left == 0)
					return ps_malformed(err);
				break;
			}
			if ((number == 1 && wire != EP_PB_LEN) ||
			    (number == 3 && wire != EP_PB_VARINT))
				return ps_malformed(err);
			if (number == 1) /* its prefix would change the length already sent */
				return ps_fail(err, -EINVAL, ST_INVALID_ARGUMENT,
					       "etcdproxy: a large Put must carry its key once");
			s->run = wire == EP_PB_LEN   ? length
				 : wire == EP_PB_I64 ? 8
				 : wire == EP_PB_I32 ? 4
						     : 0;
			if (s->run > s->left || (wire == EP_PB_VARINT && s->left == 0))
				return ps_malformed(err);
			ps_out(s, s->acc, s->acc_len);
			s->acc_len = 0;
			if (number == 2 && wire == EP_PB_LEN) /* the last one is the value */
				s->value_len = (int64_t)length;
			if (wire == EP_PB_VARINT) {
				s->varint = number;
				s->value = 0;
				s->state = PS_VARINT;
			} else if (s->run > 0) {
				s->state = PS_COPY;
			}
			break;
		case PS_COPY: /* the value: it goes on as it comes */
			n = len < s->run ? len : (size_t)s->run;
			in += n, len -= n, s->left -= n, s->run -= n;
			ps_out(s, in - n, n);
			if (s->run == 0)
				s->state = PS_FIELD;
			break;
		case PS_VARINT:
			/* at most 10 bytes, the 10th 0 or 1, as ep_pb_get_varint() reads them */
			if (s->run >= 10 || (s->run == 9 && *in > 1))
				return ps_malformed(err);
			s->value |= (uint64_t)(*in & 0x7f) << (7 * s->run);
			s->run++;
			in++, len--, s->left--;
			if (in[-1] >= 0x80) {
				if (s->left == 0)
					return ps_malformed(err);
				ps_out(s, in - 1, 1);
				break;
			}
			s->run = 0;
			s->state = PS_FIELD;
			if (s->varint == 5)
				s->ignore_value = s->value != 0;
			if (s->varint == 3) {
				s->lease = (int64_t)s->value;
				s->lease_named = 1;
				if (s->value != 0 && h && h->lease_check &&
				    h->lease_check(h->ctx, (int64_t)s->value) != 0)
					return ps_fail(err, -ENOENT, ST_NOT_FOUND, MSG_NO_LEASE);
			}
			ps_out(s, in - 1, 1);
			break;
		}
	}
	*used = (size_t)(in - start);
	return s->left == 0 ? 1 : 0;
}
