/*
 * The audit log of a tenant: see audit.h.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <etcdproxy/plugin.h>

#include "audit.h"
#include "pb.h"

#define FLUSH_BYTES (64u << 10)   /* a batch this large goes to the disk at once */
#define FLUSH_MS 200              /* else within this long */
#define MAX_PENDING (4u << 20)    /* lines waiting beyond this are dropped */
#define DROP_LOG_MS 10000         /* a log line about drops at most this often */
#define MAX_OPS_TEXT (256u << 10) /* a Txn's line keeps at most this much of its ops */

/* ---- a growing string ------------------------------------------------------------------- */

struct sb {
	char *s;
	size_t len, cap;
};

static void sb_add(struct sb *b, const char *s, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (b->len + len + 1 > cap)
			cap *= 2;
		b->s = realloc(b->s, cap);
		if (b->s == NULL)
			abort();
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, len);
	b->len += len;
	b->s[b->len] = '\0';
}

static void sb_str(struct sb *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* A decimal number without printf, for the lines every call writes. */
static void sb_i64(struct sb *b, int64_t v)
{
	char buf[24], *p = buf + sizeof(buf);
	uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;

	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		*--p = '-';
	sb_add(b, p, (size_t)(buf + sizeof(buf) - p));
}

static void sb_hex(struct sb *b, uint64_t v)
{
	static const char hex[] = "0123456789abcdef";
	char buf[16], *p = buf + sizeof(buf);

	do {
		*--p = hex[v & 15];
		v >>= 4;
	} while (v != 0);
	sb_add(b, p, (size_t)(buf + sizeof(buf) - p));
}

static void sb_json_bytes(struct sb *b, const uint8_t *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";

	sb_add(b, "\"", 1);
	for (size_t i = 0; i < len; i++) {
		uint8_t c = s[i];

		if (c == '"' || c == '\\') {
			char e[2] = { '\\', (char)c };

			sb_add(b, e, 2);
		} else if (c < 0x20 || c > 0x7e) {
			/* a byte, not a character: keys are bytes, and this keeps every one */
			char e[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

			sb_add(b, e, 6);
		} else {
			sb_add(b, (const char *)&c, 1);
		}
	}
	sb_add(b, "\"", 1);
}

char *audit_json_bytes(const uint8_t *s, size_t len)
{
	struct sb b = { 0 };

	sb_json_bytes(&b, s, len);
	return b.s;
}

/* ---- what a line says about its request ------------------------------------------------------ */

struct audit_call {
	enum rw_kind kind;
	const char *method; /* "Put", ... (static) */
	char *ops;          /* JSON array text of the writes (Put, DeleteRange) */
	char *then_ops, *else_ops; /* a Txn's branches */
	int64_t lease;      /* Put's lease, LeaseGrant's asked or granted ID, LeaseRevoke's */
	int64_t ttl;        /* LeaseGrant */
	int64_t compact_revision;
	int64_t revision;   /* from the response header */
	int responded;      /* a response message came */
	int succeeded;      /* a Txn: -1 until the response said */
	char *client;       /* a JSON object text: who asked */
};

/* One field's bytes, or NULL; the last occurrence wins, as protobuf wants. */
static int get_bytes(const uint8_t *msg, size_t len, uint32_t number, const uint8_t **data_r,
		     size_t *len_r)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int found = 0, r;

	while ((r = ep_pb_next_field(&p, end, &f)) > 0)
		if (f.number == number && f.wire == EP_PB_LEN) {
			*data_r = f.data;
			*len_r = f.len;
			found = 1;
		}
	return r < 0 ? -1 : found;
}

static int get_uint(const uint8_t *msg, size_t len, uint32_t number, uint64_t *v_r)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int found = 0, r;

	while ((r = ep_pb_next_field(&p, end, &f)) > 0)
		if (f.number == number && f.wire == EP_PB_VARINT) {
			*v_r = f.value;
			found = 1;
		}
	return r < 0 ? -1 : found;
}

static void op_put(struct sb *b, const uint8_t *msg, size_t len)
{
	const uint8_t *key = (const uint8_t *)"";
	size_t klen = 0;
	uint64_t lease = 0;

	get_bytes(msg, len, 1, &key, &klen);
	get_uint(msg, len, 3, &lease);
	sb_str(b, "{\"op\":\"put\",\"key\":");
	sb_json_bytes(b, key, klen);
	if (lease != 0) {
		sb_str(b, ",\"lease\":\"");
		sb_hex(b, lease);
		sb_str(b, "\"");
	}
	sb_str(b, "}");
}

static void op_delete(struct sb *b, const uint8_t *msg, size_t len)
{
	const uint8_t *key = (const uint8_t *)"", *end = NULL;
	size_t klen = 0, elen = 0;

	get_bytes(msg, len, 1, &key, &klen);
	sb_str(b, "{\"op\":\"delete\",\"key\":");
	sb_json_bytes(b, key, klen);
	if (get_bytes(msg, len, 2, &end, &elen) > 0) {
		sb_str(b, ",\"range_end\":");
		sb_json_bytes(b, end, elen);
	}
	sb_str(b, "}");
}

static void txn_ops(struct sb *b, const uint8_t *msg, size_t len, uint32_t branch, int depth);

/* A RequestOp of a Txn branch: its write, if it is one (reads are not audited). */
static void request_op(struct sb *b, const uint8_t *msg, size_t len, int depth, int *first)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;

	while (ep_pb_next_field(&p, end, &f) > 0) {
		if (f.wire != EP_PB_LEN || f.number < 2 || f.number > 4)
			continue; /* 1: request_range */
		if (b->len > MAX_OPS_TEXT) {
			if (!*first)
				sb_str(b, ",");
			sb_str(b, "{\"op\":\"more\"}");
			*first = 0;
			return;
		}
		if (!*first)
			sb_str(b, ",");
		*first = 0;
		if (f.number == 2) {
			op_put(b, f.data, f.len);
		} else if (f.number == 3) {
			op_delete(b, f.data, f.len);
		} else if (depth < 4) {
			/* a nested Txn: which branch ran is in its own response, not looked at */
			sb_str(b, "{\"op\":\"txn\",\"then\":");
			txn_ops(b, f.data, f.len, 2, depth + 1);
			sb_str(b, ",\"else\":");
			txn_ops(b, f.data, f.len, 3, depth + 1);
			sb_str(b, "}");
		} else {
			sb_str(b, "{\"op\":\"txn\"}");
		}
	}
}

/* The writes of a Txn's branch (2: success, 3: failure), as a JSON array. */
static void txn_ops(struct sb *b, const uint8_t *msg, size_t len, uint32_t branch, int depth)
{
	const uint8_t *p = msg, *end = msg + len;
	struct ep_pb_field f;
	int first = 1;

	sb_str(b, "[");
	while (ep_pb_next_field(&p, end, &f) > 0)
		if (f.number == branch && f.wire == EP_PB_LEN)
			request_op(b, f.data, f.len, depth, &first);
	sb_str(b, "]");
}

struct audit_call *audit_request(enum rw_kind kind, const char *method, const uint8_t *msg,
				 size_t len, const char *client)
{
	struct audit_call *ac;
	struct sb b = { 0 };
	uint64_t v = 0;

	switch (kind) {
	case RW_PUT:
	case RW_DELETE_RANGE:
	case RW_TXN:
	case RW_COMPACT:
	case RW_LEASE_GRANT:
	case RW_LEASE_REVOKE:
		break;
	default:
		return NULL;
	}
	ac = calloc(1, sizeof(*ac));
	if (ac == NULL)
		abort();
	ac->kind = kind;
	ac->method = method;
	ac->succeeded = -1;
	ac->client = strdup(client != NULL ? client : "{}");
	if (ac->client == NULL)
		abort();
	switch (kind) {
	case RW_PUT:
		sb_str(&b, "[");
		op_put(&b, msg, len);
		sb_str(&b, "]");
		ac->ops = b.s;
		if (get_uint(msg, len, 3, &v) > 0)
			ac->lease = (int64_t)v;
		break;
	case RW_DELETE_RANGE:
		sb_str(&b, "[");
		op_delete(&b, msg, len);
		sb_str(&b, "]");
		ac->ops = b.s;
		break;
	case RW_TXN:
		txn_ops(&b, msg, len, 2, 0);
		ac->then_ops = b.s;
		memset(&b, 0, sizeof(b));
		txn_ops(&b, msg, len, 3, 0);
		ac->else_ops = b.s;
		break;
	case RW_COMPACT:
		if (get_uint(msg, len, 1, &v) > 0)
			ac->compact_revision = (int64_t)v;
		break;
	case RW_LEASE_GRANT:
		if (get_uint(msg, len, 1, &v) > 0)
			ac->ttl = (int64_t)v;
		if (get_uint(msg, len, 2, &v) > 0)
			ac->lease = (int64_t)v;
		break;
	case RW_LEASE_REVOKE:
		if (get_uint(msg, len, 1, &v) > 0)
			ac->lease = (int64_t)v;
		break;
	default:
		break;
	}
	return ac;
}

void audit_response(struct audit_call *ac, const uint8_t *msg, size_t len)
{
	const uint8_t *hdr;
	size_t hlen;
	uint64_t v;

	int r;

	if (ac == NULL || ac->responded)
		return; /* the first response message is the one */
	ac->responded = 1;
	if (get_bytes(msg, len, 1, &hdr, &hlen) > 0 && get_uint(hdr, hlen, 3, &v) > 0)
		ac->revision = (int64_t)v;
	v = 0;
	if (ac->kind == RW_TXN && (r = get_uint(msg, len, 2, &v)) >= 0)
		ac->succeeded = r > 0 && v != 0; /* proto3 leaves out a false */
	if (ac->kind == RW_LEASE_GRANT && get_uint(msg, len, 2, &v) > 0)
		ac->lease = (int64_t)v;
}

void audit_call_free(struct audit_call *ac)
{
	if (ac == NULL)
		return;
	free(ac->ops);
	free(ac->client);
	free(ac->then_ops);
	free(ac->else_ops);
	free(ac);
}

/* ---- the writer ------------------------------------------------------------------------------ */

struct audit {
	struct ep_host *host;
	uv_loop_t *loop;
	char *tenant_json; /* the tenant's name as a JSON string */
	char *file;
	uint64_t max_size;
	unsigned files;

	struct sb pending;       /* lines not handed to the thread pool yet */
	size_t pending_lines;
	uv_timer_t timer;

	/* the batch the thread pool writes */
	uv_work_t work;
	int busy;
	char *batch;
	size_t batch_len, batch_lines;
	int batch_errno;
	const char *batch_what; /* "write", "open" */
	size_t batch_unwritten; /* lines of the batch that did not reach the file */
	int rotate_errno;       /* a rename of the rotation failed (the lines were written) */
	int failing;            /* the last batch failed: the next success says so */
	int fd;                 /* the thread pool's: the file open for appending */
	uint64_t size;          /* its size */

	uint64_t lines, dropped;
	uint64_t dropped_logged, last_drop_log_ms;
	time_t stamp_sec;  /* the second stamp[] is of */
	char stamp[24];    /* "2026-12-04T09:10:40" */
	int closing;
	void (*done)(void *ctx);
	void *done_ctx;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void drop_log(struct audit *a, const char *why)
{
	uint64_t now = mono_ms();

	if (a->last_drop_log_ms != 0 && now - a->last_drop_log_ms < DROP_LOG_MS)
		return;
	a->last_drop_log_ms = now;
	a->host->log(a->host, EP_LOG_WARNING, "audit log %s: %s; %" PRIu64 " lines dropped so far "
		     "(requests go on)", a->file, why, a->dropped);
}

/* The thread pool: rotate when the batch would pass max_size, then append it. */
static void rotate(struct audit *a)
{
	size_t n = strlen(a->file) + 16;
	char *from = malloc(n), *to = malloc(n);

	if (from == NULL || to == NULL)
		abort();
	close(a->fd);
	a->fd = -1;
	if (a->files == 0) {
		unlink(a->file);
	} else {
		for (unsigned i = a->files; i > 0; i--) {
			if (i == 1)
				snprintf(from, n, "%s", a->file);
			else
				snprintf(from, n, "%s.%u", a->file, i - 1);
			snprintf(to, n, "%s.%u", a->file, i);
			if (rename(from, to) < 0 && errno != ENOENT && a->rotate_errno == 0)
				a->rotate_errno = errno;
		}
	}
	free(from);
	free(to);
}

/* The file opened (created) for appending, a->size its length: 0, or -1 and batch_errno. */
static int open_file(struct audit *a)
{
	struct stat st;

	a->fd = open(a->file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
	if (a->fd < 0) {
		a->batch_errno = errno;
		a->batch_what = "open";
		return -1;
	}
	a->size = fstat(a->fd, &st) == 0 ? (uint64_t)st.st_size : 0;
	return 0;
}

/*
 * The end of the batch's lines from OFF that fit in the file under max_size;
 * OFF when none does. FORCE: at least one line whatever its size (an empty
 * file, or one that could not be rotated away).
 */
static size_t lines_that_fit(const struct audit *a, size_t off, int force)
{
	uint64_t room = a->size < a->max_size ? a->max_size - a->size : 0;
	size_t end = off;

	for (size_t i = off; i < a->batch_len; i++) {
		if (a->batch[i] != '\n')
			continue;
		if (i + 1 - off > room && !(force && end == off))
			break;
		end = i + 1;
		if (force && i + 1 - off > room)
			break;
	}
	return end == off && force ? a->batch_len : end;
}

/* The thread pool: append the batch, rotating whenever the next line would pass max_size. */
static void on_work(uv_work_t *w)
{
	struct audit *a = w->data;
	size_t off = 0, whole = 0;
	int rotated = 0;

	a->batch_errno = 0;
	a->rotate_errno = 0;
	while (off < a->batch_len) {
		size_t end;

		if (a->fd < 0 && open_file(a) < 0)
			break;
		end = lines_that_fit(a, off, a->size == 0 || rotated);
		if (end == off) {
			rotate(a); /* closes the file: the next turn opens a new one */
			rotated = 1;
			continue;
		}
		rotated = 0;
		while (off < end) {
			ssize_t r = write(a->fd, a->batch + off, end - off);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				a->batch_errno = r < 0 ? errno : EIO;
				a->batch_what = "write";
				/* a line cut in the middle: the next batch starts on a line of its own */
				if (off > 0 && a->batch[off - 1] != '\n' && write(a->fd, "\n", 1) == 1)
					a->size++;
				break;
			}
			off += (size_t)r;
			a->size += (uint64_t)r;
		}
		if (a->batch_errno != 0)
			break;
	}
	/* the lines not written whole: those after the last newline written */
	for (size_t i = 0; i < off; i++)
		whole += a->batch[i] == '\n';
	a->batch_unwritten = a->batch_lines - whole;
}

static void start_batch(struct audit *a);
static void maybe_finish_close(struct audit *a);
static void on_timer(uv_timer_t *t);

static void on_work_done(uv_work_t *w, int status)
{
	struct audit *a = w->data;

	a->busy = 0;
	if (status < 0 || a->batch_errno != 0) {
		char why[160];
		size_t lost = status < 0 ? a->batch_lines : a->batch_unwritten;

		a->dropped += lost;
		a->lines += a->batch_lines - lost;
		snprintf(why, sizeof(why), "cannot %s it: %s", a->batch_what ? a->batch_what : "write",
			 strerror(status < 0 ? EIO : a->batch_errno));
		if (!a->failing)
			a->last_drop_log_ms = 0; /* the first failure after a success is worth a line */
		a->failing = 1;
		drop_log(a, why);
	} else {
		if (a->failing)
			a->host->log(a->host, EP_LOG_NOTICE, "audit log %s: written again; %" PRIu64
				     " lines dropped so far", a->file, a->dropped);
		a->failing = 0;
		a->lines += a->batch_lines;
	}
	if (a->rotate_errno != 0)
		a->host->log(a->host, EP_LOG_WARNING, "audit log %s: cannot rotate it: %s; it grows "
			     "past max_size", a->file, strerror(a->rotate_errno));
	free(a->batch);
	a->batch = NULL;
	if (a->pending.len >= FLUSH_BYTES || (a->closing && a->pending.len > 0))
		start_batch(a);
	else if (a->pending.len > 0 && !uv_is_active((uv_handle_t *)&a->timer))
		uv_timer_start(&a->timer, on_timer, FLUSH_MS, 0);
	maybe_finish_close(a);
}

static void start_batch(struct audit *a)
{
	if (a->busy || a->pending.len == 0)
		return;
	uv_timer_stop(&a->timer);
	a->batch = a->pending.s;
	a->batch_len = a->pending.len;
	a->batch_lines = a->pending_lines;
	memset(&a->pending, 0, sizeof(a->pending));
	a->pending_lines = 0;
	a->busy = 1;
	a->work.data = a;
	if (uv_queue_work(a->loop, &a->work, on_work, on_work_done) < 0) {
		a->busy = 0;
		a->dropped += a->batch_lines;
		free(a->batch);
		a->batch = NULL;
		drop_log(a, "cannot queue a write");
	}
}

static void on_timer(uv_timer_t *t)
{
	start_batch(t->data);
}

static void append_line(struct audit *a, const char *line, size_t len)
{
	if (a->pending.len + len > MAX_PENDING) {
		a->dropped++;
		drop_log(a, "the disk does not keep up");
		return;
	}
	sb_add(&a->pending, line, len);
	a->pending_lines++;
	if (a->pending.len >= FLUSH_BYTES)
		start_batch(a);
	else if (!a->busy && !uv_is_active((uv_handle_t *)&a->timer))
		uv_timer_start(&a->timer, on_timer, FLUSH_MS, 0);
}

static const char *const code_names[17] = {
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
	"AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
	"OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
};

void audit_finish(struct audit *a, struct audit_call *ac, int grpc_status)
{
	struct sb b = { 0 };
	struct timespec ts;
	char ms[5];

	if (ac == NULL)
		return;
	if (a == NULL) {
		audit_call_free(ac);
		return;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != a->stamp_sec) {
		struct tm tm;

		gmtime_r(&ts.tv_sec, &tm);
		strftime(a->stamp, sizeof(a->stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		a->stamp_sec = ts.tv_sec;
	}
	ms[0] = '.';
	ms[1] = (char)('0' + ts.tv_nsec / 100000000);
	ms[2] = (char)('0' + ts.tv_nsec / 10000000 % 10);
	ms[3] = (char)('0' + ts.tv_nsec / 1000000 % 10);
	ms[4] = 'Z';
	b.cap = 512;
	b.s = malloc(b.cap);
	if (b.s == NULL)
		abort();
	sb_str(&b, "{\"time\":\"");
	sb_str(&b, a->stamp);
	sb_add(&b, ms, 5);
	sb_str(&b, "\",\"tenant\":");
	sb_str(&b, a->tenant_json);
	sb_str(&b, ",\"client\":");
	sb_str(&b, ac->client);
	sb_str(&b, ",\"method\":\"");
	sb_str(&b, ac->method);
	sb_str(&b, "\"");
	switch (ac->kind) {
	case RW_PUT:
	case RW_DELETE_RANGE:
		sb_str(&b, ",\"ops\":");
		sb_str(&b, ac->ops);
		break;
	case RW_TXN:
		if (ac->succeeded >= 0) {
			sb_str(&b, ac->succeeded ? ",\"succeeded\":true,\"ops\":"
						 : ",\"succeeded\":false,\"ops\":");
			sb_str(&b, ac->succeeded ? ac->then_ops : ac->else_ops);
		} else {
			/* no answer: either branch may have run, or none */
			sb_str(&b, ",\"then\":");
			sb_str(&b, ac->then_ops);
			sb_str(&b, ",\"else\":");
			sb_str(&b, ac->else_ops);
		}
		break;
	case RW_COMPACT:
		sb_str(&b, ",\"compact_revision\":");
		sb_i64(&b, ac->compact_revision);
		break;
	case RW_LEASE_GRANT:
		sb_str(&b, ",\"ttl\":");
		sb_i64(&b, ac->ttl);
		break;
	default:
		break;
	}
	if (ac->lease != 0 && ac->kind != RW_PUT) {
		sb_str(&b, ",\"lease\":\"");
		sb_hex(&b, (uint64_t)ac->lease);
		sb_str(&b, "\"");
	}
	sb_str(&b, ",\"code\":\"");
	sb_str(&b, grpc_status >= 0 && grpc_status <= 16 ? code_names[grpc_status] : "Unknown");
	sb_str(&b, "\"");
	if (ac->revision != 0) {
		sb_str(&b, ",\"revision\":");
		sb_i64(&b, ac->revision);
	}
	sb_str(&b, "}\n");
	append_line(a, b.s, b.len);
	free(b.s);
	audit_call_free(ac);
}

/* ---- life ------------------------------------------------------------------------------------- */

static int make_dirs(const char *file, char **error_r)
{
	char *dir = strdup(file), *p;

	if (dir == NULL)
		abort();
	p = strrchr(dir, '/');
	if (p != NULL && p != dir) {
		*p = '\0';
		for (char *q = dir + 1; *q != '\0'; q++) {
			if (*q != '/')
				continue;
			*q = '\0';
			if (mkdir(dir, 0750) < 0 && errno != EEXIST)
				goto fail;
			*q = '/';
		}
		if (mkdir(dir, 0750) < 0 && errno != EEXIST)
			goto fail;
	}
	free(dir);
	return 0;
fail:
	if (asprintf(error_r, "cannot make the audit directory %s: %s", dir, strerror(errno)) < 0)
		abort();
	free(dir);
	return -1;
}

struct audit *audit_open(struct ep_host *host, uv_loop_t *loop, const char *tenant,
			 const char *file, uint64_t max_size, unsigned files, char **error_r)
{
	struct audit *a;

	if (make_dirs(file, error_r) < 0)
		return NULL;
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		abort();
	a->host = host;
	a->loop = loop;
	a->tenant_json = audit_json_bytes((const uint8_t *)tenant, strlen(tenant));
	a->file = strdup(file);
	if (a->file == NULL)
		abort();
	a->max_size = max_size;
	a->files = files;
	a->fd = -1;
	uv_timer_init(loop, &a->timer);
	a->timer.data = a;
	return a;
}

void audit_counts(const struct audit *a, uint64_t *lines_r, uint64_t *dropped_r)
{
	*lines_r = a != NULL ? a->lines : 0;
	*dropped_r = a != NULL ? a->dropped : 0;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct audit *a = h->data;
	void (*done)(void *) = a->done;
	void *ctx = a->done_ctx;

	if (a->fd >= 0)
		close(a->fd);
	free(a->pending.s);
	free(a->tenant_json);
	free(a->file);
	free(a);
	if (done != NULL)
		done(ctx);
}

static void maybe_finish_close(struct audit *a)
{
	if (!a->closing || a->busy || a->pending.len > 0 ||
	    uv_is_closing((uv_handle_t *)&a->timer))
		return;
	uv_close((uv_handle_t *)&a->timer, on_timer_closed);
}

void audit_close(struct audit *a, void (*done)(void *ctx), void *ctx)
{
	if (a == NULL) {
		if (done != NULL)
			done(ctx);
		return;
	}
	a->closing = 1;
	a->done = done;
	a->done_ctx = ctx;
	uv_timer_stop(&a->timer);
	start_batch(a); /* what is left */
	maybe_finish_close(a);
}
