/*
 * etcdproxyctl's data commands: a tenant's keys from birth to death.
 *
 *   export NAME [--out FILE]      the keys under /NAME/ at one revision, as JSON lines
 *   import NAME --from-file FILE  such a file into the tenant
 *   import NAME --from-etcd URL [--prefix P]
 *                                 the keys under P of a standalone etcd, at one revision
 *   purge NAME [--yes]            delete the tenant's keys and revoke its leases
 *
 * They talk to the core etcd of the configuration (core_etcd) themselves, so
 * they need no daemon, and they refuse a name whose prefix would reach a
 * reserved one.  The export format is in etcdproxyctl(8), "EXPORT FORMAT":
 *
 *   {"format":"etcdproxy-export","version":1,"tenant":"a","prefix":"/a/","revision":R,...}
 *   {"key":"<base64>","value":"<base64>"}                 one line per key,
 *   {"key":"...","value":"...","lease":"<ID>","ttl":S}    a key attached to a lease
 *   {"end":true,"keys":N,"bytes":B}                       the last line
 */
#include "build-config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "ctl.h"
#include "etcdc.h"
#include "lease-records.h"
#include "pb.h"
#include "util.h"

#define PAGE_FIRST 8           /* keys in the first page of a range: 12 MiB of etcd's largest */
#define PAGE_MAX 1000          /* and at most */
#define PAGE_BYTES (8u << 20)  /* pages aim at this, from the sizes of the page before */
#define PAGE_ANSWER_MAX (12u << 20) /* a larger one is asked again, in fewer keys */
#define MAX_TXN_OPS 128        /* etcd's default --max-txn-ops */
#define REQUEST_OVERHEAD 1024  /* room in a request beyond its puts */

static void err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void err(const char *fmt, ...)
{
	va_list ap;

	fputs("etcdproxyctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* ---- the tenant and the core etcd ---------------------------------------------------------- */

struct tenant {
	const char *name;
	char *prefix;
	size_t plen;
	uint8_t end[300];
	size_t elen;
	char records[300]; /* the lease records' prefix, "/__etcdproxy/leases/NAME/" */
	uint8_t records_end[300];
	size_t rlen, rend_len;
	struct ep_global_config *g;
	struct etcdc *core;
};

static int tenant_open(struct tenant *t, const char *name, const struct data_opts *o)
{
	struct etcdc_tls tls;
	char *why = NULL;

	memset(t, 0, sizeof(*t));
	t->name = name;
	if (!ep_tenant_name_valid(name)) {
		err("\"%s\" is not a tenant name (a lower-case DNS-1123 subdomain of at most 59 "
		    "characters)", name);
		return EXIT_USAGE;
	}
	if (ep_global_config_load(o->config, &t->g, &why) < 0) {
		err("%s", why);
		free(why);
		return EXIT_REFUSED;
	}
	t->prefix = ep_strdup_printf("/%s/", name);
	t->plen = strlen(t->prefix);
	if (ep_tenant_prefix_check(t->g, name, t->prefix, &why) < 0) {
		err("refused: %s", why);
		free(why);
		return EXIT_REFUSED;
	}
	t->elen = etcdc_prefix_end((const uint8_t *)t->prefix, t->plen, t->end);
	t->rlen = (size_t)snprintf(t->records, sizeof(t->records), EP_LEASE_RECORDS "%s/", name);
	t->rend_len = etcdc_prefix_end((const uint8_t *)t->records, t->rlen, t->records_end);
	tls = (struct etcdc_tls){ t->g->core.ca_file, t->g->core.cert_file, t->g->core.key_file };
	t->core = etcdc_open(t->g->core.endpoints, t->g->core.n_endpoints, &tls, &why);
	if (t->core == NULL) {
		err("the core etcd: %s", why);
		free(why);
		return EXIT_REFUSED;
	}
	return 0;
}

static void tenant_close(struct tenant *t)
{
	etcdc_close(t->core);
	ep_global_config_free(t->g);
	free(t->prefix);
}

/*
 * The next page's size from the last one, LIMIT keys of PAGE_BYTES in all: as
 * many keys of their average size as fit in PAGE_BYTES, growing at most twice
 * over from one page to the next (a run of small keys may end in large ones).
 */
static int64_t next_limit(int64_t limit, uint64_t page_bytes)
{
	uint64_t fit = PAGE_BYTES / (page_bytes / (uint64_t)limit + 1);
	int64_t next = fit < 1 ? 1 : fit > (uint64_t)limit * 2 ? limit * 2 : (int64_t)fit;

	return next < PAGE_MAX ? next : PAGE_MAX;
}

/*
 * A page of at most *limit keys, as etcdc_range_page(). An answer that grows
 * past PAGE_ANSWER_MAX (the keys that follow small ones are large) is dropped
 * before anything of it is used and asked again with a quarter of the keys,
 * down to one key, which is taken whatever its size: the memory a page needs
 * stays bounded by the largest value, not by the page's number of keys.
 */
static int range_page(struct etcdc *e, const uint8_t *key, size_t klen, const uint8_t *end,
		      size_t elen, int64_t rev, int64_t *limit,
		      int (*cb)(void *ctx, const struct etcdc_kv *kv), void *ctx, int64_t *rev_r,
		      int *more_r, uint8_t **last_r, size_t *last_len_r, const char **error_r)
{
	for (;;) {
		int r;

		etcdc_set_max_answer(e, *limit > 1 ? PAGE_ANSWER_MAX : 0);
		r = etcdc_range_page(e, key, klen, end, elen, rev, *limit, cb, ctx, rev_r, more_r,
				     last_r, last_len_r, error_r);
		etcdc_set_max_answer(e, 0);
		if (r != -2)
			return r;
		*limit = *limit / 4 > 1 ? *limit / 4 : 1;
	}
}

/* ---- progress on a terminal ---------------------------------------------------------------- */

struct progress {
	int tty;
	uint64_t last_ms;
	const char *verb;
};

static void progress(struct progress *p, uint64_t keys, uint64_t bytes, int done)
{
	uint64_t now = ep_now_ms();

	if (!p->tty || (!done && now - p->last_ms < 200))
		return;
	p->last_ms = now;
	fprintf(stderr, "\r%s %" PRIu64 " keys, %.1f MiB%s", p->verb, keys,
		(double)bytes / (1024.0 * 1024.0), done ? "\n" : "");
}

/* ---- export --------------------------------------------------------------------------------- */

struct lease_ttl {
	int64_t id, ttl;
};

struct export {
	struct tenant *t;
	struct etcdc *leases; /* a second client: TTLs are asked while a page is being read */
	FILE *out;
	uint64_t keys, bytes, page_bytes;
	struct lease_ttl *ttls;
	size_t n_ttls;
	struct progress prog;
	const char *error;
};

/* The lease's remaining TTL, asked once per lease: -1 when it is gone. */
static int lease_ttl(struct etcdc *e, struct lease_ttl **cache, size_t *n, int64_t id,
		     int64_t *ttl_r, const char **error_r)
{
	uint8_t req[16];
	const uint8_t *resp, *p, *end;
	size_t len;
	struct ep_pb_field f;

	for (size_t i = 0; i < *n; i++)
		if ((*cache)[i].id == id) {
			*ttl_r = (*cache)[i].ttl;
			return 0;
		}
	len = (size_t)(ep_pb_put_uint(req, 1, (uint64_t)id) - req);
	if (etcdc_call(e, "/etcdserverpb.Lease/LeaseTimeToLive", req, len, &resp, &len, error_r) < 0)
		return -1;
	*ttl_r = -1;
	p = resp;
	end = resp + len;
	while (ep_pb_next_field(&p, end, &f) > 0)
		if (f.number == 3 && f.wire == EP_PB_VARINT)
			*ttl_r = (int64_t)f.value; /* TTL, -1 (as a varint) when expired */
	*cache = ep_realloc(*cache, (*n + 1) * sizeof(**cache));
	(*cache)[(*n)++] = (struct lease_ttl){ id, *ttl_r };
	return 0;
}

static int export_kv(void *ctx, const struct etcdc_kv *kv)
{
	struct export *x = ctx;
	char *k = ep_base64_encode(kv->key + x->t->plen, kv->klen - x->t->plen);
	char *v = ep_base64_encode(kv->value, kv->vlen);
	int64_t ttl = -1;

	if (kv->lease != 0 &&
	    lease_ttl(x->leases, &x->ttls, &x->n_ttls, kv->lease, &ttl, &x->error) < 0) {
		free(k);
		free(v);
		return -1;
	}
	if (kv->lease != 0 && ttl > 0)
		fprintf(x->out, "{\"key\":\"%s\",\"value\":\"%s\",\"lease\":\"%" PRId64 "\",\"ttl\":%" PRId64
			"}\n", k, v, kv->lease, ttl);
	else
		fprintf(x->out, "{\"key\":\"%s\",\"value\":\"%s\"}\n", k, v);
	free(k);
	free(v);
	x->keys++;
	x->bytes += kv->klen - x->t->plen + kv->vlen;
	x->page_bytes += kv->klen + kv->vlen;
	progress(&x->prog, x->keys, x->bytes, 0);
	return 0;
}

static int do_export(struct tenant *t, const struct data_opts *o)
{
	struct export x = { .t = t };
	uint8_t *key = ep_malloc0(t->plen + 1), *last = NULL;
	size_t klen = t->plen, last_len;
	int64_t rev = 0, count = 0, limit = PAGE_FIRST;
	int more = 1, code = EXIT_DONE;
	char *tmp = NULL, *why = NULL, when[32];
	const char *error;
	time_t now = time(NULL);
	struct etcdc_tls tls = { t->g->core.ca_file, t->g->core.cert_file, t->g->core.key_file };

	memcpy(key, t->prefix, t->plen);
	/* the revision every page is read at, and the header that names it, come first */
	if (etcdc_count(t->core, key, klen, t->end, t->elen, &count, &rev, &error) < 0) {
		err("export of %s: %s", t->name, error);
		free(key);
		return EXIT_REFUSED;
	}
	x.leases = etcdc_open(t->g->core.endpoints, t->g->core.n_endpoints, &tls, &why);
	if (x.leases == NULL) {
		err("the core etcd: %s", why);
		free(why);
		free(key);
		return EXIT_REFUSED;
	}
	if (o->out == NULL || strcmp(o->out, "-") == 0) {
		x.out = stdout;
	} else {
		/* a failed export leaves no file that looks complete */
		tmp = ep_strdup_printf("%s.tmp", o->out);
		x.out = fopen(tmp, "w");
		if (x.out == NULL) {
			err("cannot write %s: %s", tmp, strerror(errno));
			free(tmp);
			free(key);
			etcdc_close(x.leases);
			return EXIT_REFUSED;
		}
	}
	x.prog = (struct progress){ .tty = isatty(STDERR_FILENO), .verb = "exported" };
	strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
	fprintf(x.out, "{\"format\":\"etcdproxy-export\",\"version\":1,\"tenant\":\"%s\","
		"\"prefix\":\"%s\",\"revision\":%" PRId64 ",\"exported_at\":\"%s\","
		"\"etcdproxy\":\"%s\"}\n", t->name, t->prefix, rev, when, PACKAGE_VERSION);
	while (more) {
		x.page_bytes = 0;
		if (range_page(t->core, key, klen, t->end, t->elen, rev, &limit, export_kv, &x, &rev,
			       &more, &last, &last_len, &error) < 0) {
			err("export of %s: %s", t->name, x.error != NULL ? x.error : error);
			code = EXIT_REFUSED;
			break;
		}
		if (more && last != NULL) {
			free(key);
			key = ep_malloc0(last_len + 1);
			memcpy(key, last, last_len); /* the next key after last: last + "\0" */
			klen = last_len + 1;
		} else {
			more = 0;
		}
		free(last);
		last = NULL;
		limit = next_limit(limit, x.page_bytes);
	}
	free(key);
	etcdc_close(x.leases);
	free(x.ttls);
	if (code == EXIT_DONE) {
		fprintf(x.out, "{\"end\":true,\"keys\":%" PRIu64 ",\"bytes\":%" PRIu64 "}\n", x.keys,
			x.bytes);
		progress(&x.prog, x.keys, x.bytes, 1);
	}
	if (x.out != stdout) {
		if (fclose(x.out) != 0 && code == EXIT_DONE) {
			err("cannot write %s: %s", tmp, strerror(errno));
			code = EXIT_REFUSED;
		}
		if (code == EXIT_DONE && rename(tmp, o->out) < 0) {
			err("cannot rename %s to %s: %s", tmp, o->out, strerror(errno));
			code = EXIT_REFUSED;
		}
		if (code != EXIT_DONE)
			unlink(tmp);
		free(tmp);
	} else if (fflush(stdout) != 0) {
		err("cannot write the export: %s", strerror(errno));
		code = EXIT_REFUSED;
	}
	if (code == EXIT_DONE)
		fprintf(stderr, "etcdproxyctl: exported %" PRIu64 " keys (%" PRIu64 " bytes of keys "
			"and values) of tenant %s at revision %" PRId64 "%s%s\n", x.keys, x.bytes,
			t->name, rev, x.out == stdout ? "" : " into ", x.out == stdout ? "" : o->out);
	return code;
}

/* ---- import ---------------------------------------------------------------------------------- */

struct lease_map {
	int64_t old, now;
};

struct import {
	struct tenant *t;
	uint64_t max_request;
	uint8_t *batch; /* a TxnRequest of puts (success, field 2) */
	size_t blen, bcap;
	int ops;
	uint64_t keys, bytes, leases;
	struct lease_map *map;
	size_t n_map;
	struct etcdc *src_leases; /* --from-etcd: the source's lease TTLs */
	struct lease_ttl *src_ttls;
	size_t n_src_ttls;
	const char *src_prefix;
	size_t src_plen;
	struct progress prog;
	int failed;
};

static int flush_batch(struct import *im)
{
	const uint8_t *resp;
	size_t rlen;
	const char *error;

	if (im->ops == 0)
		return 0;
	if (etcdc_call(im->t->core, "/etcdserverpb.KV/Txn", im->batch, im->blen, &resp, &rlen,
		       &error) < 0) {
		/* etcd resets the stream of a request above its --max-request-bytes */
		err("import into %s: writing %d keys (%zu bytes): %s%s", im->t->name, im->ops,
		    im->blen, error,
		    strstr(error, "HTTP/2") != NULL || strstr(error, "too large") != NULL
			    ? " (if the core etcd runs with a --max-request-bytes below "
			      "this command's, give it with --max-request-bytes)"
			    : "");
		return -1;
	}
	im->blen = 0;
	im->ops = 0;
	return 0;
}

/* A put of the tenant's key (without the prefix) into the batch; a full batch goes first. */
static int import_put(struct import *im, const uint8_t *key, size_t klen, const uint8_t *value,
		      size_t vlen, int64_t lease)
{
	size_t full = im->t->plen + klen, put_len, op_len, need;
	uint8_t *k = ep_malloc0(full + 1), *put, *op, *p;

	memcpy(k, im->t->prefix, im->t->plen);
	memcpy(k + im->t->plen, key, klen);
	/* PutRequest {key 1, value 2, lease 3} in RequestOp {request_put 2} in success (2) */
	put_len = 1 + ep_pb_varint_size(full) + full + 1 + ep_pb_varint_size(vlen) + vlen +
		  (lease ? 1 + ep_pb_varint_size((uint64_t)lease) : 0);
	op_len = 1 + ep_pb_varint_size(put_len) + put_len;
	need = 1 + ep_pb_varint_size(op_len) + op_len;
	if (need + REQUEST_OVERHEAD > im->max_request) {
		err("import into %s: key \"%.*s\" with its value is %zu bytes, above the core "
		    "etcd's request limit of %" PRIu64 " bytes (--max-request-bytes)",
		    im->t->name, (int)(klen > 200 ? 200 : klen), (const char *)key, need,
		    im->max_request);
		free(k);
		return -1;
	}
	if ((im->ops == MAX_TXN_OPS || im->blen + need + REQUEST_OVERHEAD > im->max_request) &&
	    flush_batch(im) < 0) {
		free(k);
		return -1;
	}
	if (im->blen + need > im->bcap) {
		im->bcap = (im->blen + need) * 2;
		im->batch = ep_realloc(im->batch, im->bcap);
	}
	put = ep_malloc0(put_len);
	p = ep_pb_put_bytes(put, 1, k, full);
	p = ep_pb_put_bytes(p, 2, value, vlen);
	if (lease)
		p = ep_pb_put_uint(p, 3, (uint64_t)lease);
	op = ep_malloc0(op_len);
	ep_pb_put_bytes(op, 2, put, put_len);
	p = ep_pb_put_bytes(im->batch + im->blen, 2, op, op_len);
	im->blen = (size_t)(p - im->batch);
	im->ops++;
	im->keys++;
	im->bytes += klen + vlen;
	free(put);
	free(op);
	free(k);
	progress(&im->prog, im->keys, im->bytes, 0);
	return 0;
}

/* The tenant's lease for a source lease with ttl seconds left: granted once, recorded as its. */
static int map_lease(struct import *im, int64_t old, int64_t ttl, int64_t *now_r)
{
	uint8_t req[300], *p;
	const uint8_t *resp, *q, *qend;
	size_t rlen;
	struct ep_pb_field f;
	const char *error;
	char record[300];
	int64_t id = 0;

	for (size_t i = 0; i < im->n_map; i++)
		if (im->map[i].old == old) {
			*now_r = im->map[i].now;
			return 0;
		}
	p = ep_pb_put_uint(req, 1, (uint64_t)(ttl > 0 ? ttl : 1)); /* LeaseGrantRequest.TTL */
	if (etcdc_call(im->t->core, "/etcdserverpb.Lease/LeaseGrant", req, (size_t)(p - req), &resp,
		       &rlen, &error) < 0) {
		err("import into %s: a lease for %" PRId64 " seconds: %s", im->t->name, ttl, error);
		return -1;
	}
	q = resp;
	qend = resp + rlen;
	while (ep_pb_next_field(&q, qend, &f) > 0)
		if (f.number == 2 && f.wire == EP_PB_VARINT)
			id = (int64_t)f.value;
	/* the native backend's record: the lease is the tenant's, and goes with it */
	snprintf(record, sizeof(record), EP_LEASE_RECORD_FMT, im->t->name, (uint64_t)id);
	p = ep_pb_put_bytes(req, 1, record, strlen(record));
	p = ep_pb_put_uint(p, 3, (uint64_t)id);
	if (etcdc_call(im->t->core, "/etcdserverpb.KV/Put", req, (size_t)(p - req), &resp, &rlen,
		       &error) < 0) {
		err("import into %s: recording lease %" PRId64 ": %s", im->t->name, id, error);
		return -1;
	}
	im->map = ep_realloc(im->map, (im->n_map + 1) * sizeof(*im->map));
	im->map[im->n_map++] = (struct lease_map){ old, id };
	im->leases++;
	*now_r = id;
	return 0;
}

/* One record of an export file, already parsed. */
static int import_record(struct import *im, const cJSON *o, size_t line)
{
	const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "key");
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "value");
	const cJSON *lease = cJSON_GetObjectItemCaseSensitive(o, "lease");
	const cJSON *ttl = cJSON_GetObjectItemCaseSensitive(o, "ttl");
	char *key = NULL, *value = NULL;
	size_t klen, vlen;
	int64_t id = 0;
	int r;

	if (!cJSON_IsString(k) || !cJSON_IsString(v) || (lease != NULL && !cJSON_IsString(lease)) ||
	    (ttl != NULL && !cJSON_IsNumber(ttl)) ||
	    ep_base64_decode(k->valuestring, &key, &klen) < 0 ||
	    ep_base64_decode(v->valuestring, &value, &vlen) < 0) {
		err("line %zu: expected {\"key\": base64, \"value\": base64} with an optional "
		    "\"lease\" (a string) and \"ttl\" (seconds)", line);
		free(key);
		free(value);
		return -1;
	}
	r = 0;
	if (lease != NULL)
		r = map_lease(im, strtoll(lease->valuestring, NULL, 10),
			      ttl != NULL ? (int64_t)ttl->valuedouble : 1, &id);
	if (r == 0)
		r = import_put(im, (const uint8_t *)key, klen, (const uint8_t *)value, vlen, id);
	free(key);
	free(value);
	return r;
}

static int import_file(struct import *im, const char *path)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	char *buf = NULL;
	size_t cap = 0, line = 0;
	ssize_t n;
	int seen_end = 0, r = 0;

	if (f == NULL) {
		err("cannot read %s: %s", path, strerror(errno));
		return -1;
	}
	while (r == 0 && (n = getline(&buf, &cap, f)) > 0) {
		cJSON *o = cJSON_Parse(buf);
		const cJSON *fmt, *ver;

		line++;
		if (!cJSON_IsObject(o)) {
			err("%s:%zu: not a JSON object (is this an etcdproxyctl export?)", path, line);
			r = -1;
		} else if (line == 1) {
			fmt = cJSON_GetObjectItemCaseSensitive(o, "format");
			ver = cJSON_GetObjectItemCaseSensitive(o, "version");
			if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "etcdproxy-export") != 0) {
				err("%s:1: expected the header {\"format\": \"etcdproxy-export\", ...}",
				    path);
				r = -1;
			} else if (!cJSON_IsNumber(ver) || ver->valuedouble != 1) {
				err("%s:1: export format version %g; this etcdproxyctl reads version 1",
				    path, cJSON_IsNumber(ver) ? ver->valuedouble : 0);
				r = -1;
			}
		} else if (seen_end) {
			err("%s:%zu: a line after the end record", path, line);
			r = -1;
		} else if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "end"))) {
			const cJSON *keys = cJSON_GetObjectItemCaseSensitive(o, "keys");

			seen_end = 1;
			if (!cJSON_IsNumber(keys) || (uint64_t)keys->valuedouble != im->keys) {
				err("%s:%zu: the end record counts %g keys, the file holds %" PRIu64,
				    path, line, cJSON_IsNumber(keys) ? keys->valuedouble : -1.0,
				    im->keys);
				r = -1;
			}
		} else {
			r = import_record(im, o, line);
			if (r < 0)
				err("%s:%zu: stopped here", path, line);
		}
		cJSON_Delete(o);
	}
	free(buf);
	if (r == 0 && ferror(f)) {
		err("cannot read %s: %s", path, strerror(errno));
		r = -1;
	}
	if (r == 0 && line == 0) {
		err("%s is empty", path);
		r = -1;
	}
	if (r == 0 && !seen_end) {
		err("%s ends before its end record: the export was cut short", path);
		r = -1;
	}
	if (f != stdin)
		fclose(f);
	return r;
}

static int import_source_kv(void *ctx, const struct etcdc_kv *kv)
{
	struct import *im = ctx;
	int64_t ttl = -1, id = 0;
	const char *error;

	if (kv->lease != 0) {
		if (lease_ttl(im->src_leases, &im->src_ttls, &im->n_src_ttls, kv->lease, &ttl,
			      &error) < 0) {
			err("the source etcd: the TTL of lease %" PRId64 ": %s", kv->lease, error);
			return -1;
		}
		if (ttl <= 0)
			return 0; /* expired meanwhile: its key is gone too */
		if (map_lease(im, kv->lease, ttl, &id) < 0)
			return -1;
	}
	return import_put(im, kv->key + im->src_plen, kv->klen - im->src_plen, kv->value, kv->vlen,
			  id);
}

static int import_etcd(struct import *im, const struct data_opts *o)
{
	struct etcdc_tls tls = { o->cacert, o->cert, o->key };
	char *urls[1] = { (char *)o->from_etcd }, *why = NULL;
	const char *p = o->prefix != NULL ? o->prefix : "", *error;
	size_t plen = strlen(p), klen, elen, last_len;
	uint8_t *key, end[1024], *last = NULL;
	struct etcdc *src;
	int64_t rev = 0, limit = PAGE_FIRST;
	int more = 1, r = 0;

	if (plen + 1 > sizeof(end)) {
		err("--prefix: too long");
		return -1;
	}
	src = etcdc_open(urls, 1, &tls, &why);
	im->src_leases = src != NULL ? etcdc_open(urls, 1, &tls, &why) : NULL;
	if (src == NULL || im->src_leases == NULL) {
		err("the source etcd %s: %s", o->from_etcd, why);
		free(why);
		etcdc_close(src);
		return -1;
	}
	im->src_prefix = p;
	im->src_plen = plen;
	/* the whole keyspace is [\0, \0): key and range_end both "\0" */
	key = ep_malloc0(plen + 2);
	memcpy(key, p, plen);
	klen = plen > 0 ? plen : 1;
	elen = etcdc_prefix_end((const uint8_t *)p, plen, end);
	while (more && r == 0) {
		uint64_t before = im->bytes;

		if (range_page(src, key, klen, end, elen, rev, &limit, import_source_kv, im, &rev,
			       &more, &last, &last_len, &error) < 0) {
			if (strcmp(error, "stopped") != 0)
				err("the source etcd %s: %s", o->from_etcd, error);
			r = -1;
			break;
		}
		if (more && last != NULL) {
			free(key);
			key = ep_malloc0(last_len + 1);
			memcpy(key, last, last_len);
			klen = last_len + 1;
		} else {
			more = 0;
		}
		free(last);
		last = NULL;
		limit = next_limit(limit, im->bytes - before);
	}
	free(key);
	etcdc_close(src);
	etcdc_close(im->src_leases);
	free(im->src_ttls);
	if (r == 0)
		fprintf(stderr, "etcdproxyctl: read the source %s at its revision %" PRId64 "\n",
			o->from_etcd, rev);
	return r;
}

static int do_import(struct tenant *t, const struct data_opts *o)
{
	struct import im = { .t = t, .max_request = o->max_request ? o->max_request : 1572864 };
	int64_t count = 0;
	const char *error;
	int r;

	if ((o->from_file == NULL) == (o->from_etcd == NULL)) {
		err("import needs --from-file FILE or --from-etcd URL (one of them)");
		return EXIT_USAGE;
	}
	if (o->prefix != NULL && o->from_etcd == NULL) {
		err("--prefix belongs to --from-etcd");
		return EXIT_USAGE;
	}
	if (etcdc_count(t->core, (const uint8_t *)t->prefix, t->plen, t->end, t->elen, &count, NULL,
			&error) < 0) {
		err("the core etcd: %s", error);
		return EXIT_REFUSED;
	}
	if (count > 0 && !o->force) {
		err("refused: tenant %s already holds %" PRId64 " keys under %s; import fills an empty "
		    "tenant (--force writes over keys of the same name and keeps the others)",
		    t->name, count, t->prefix);
		return EXIT_REFUSED;
	}
	im.prog = (struct progress){ .tty = isatty(STDERR_FILENO), .verb = "imported" };
	r = o->from_file != NULL ? import_file(&im, o->from_file) : import_etcd(&im, o);
	if (r == 0)
		r = flush_batch(&im);
	progress(&im.prog, im.keys, im.bytes, 1);
	free(im.batch);
	free(im.map);
	if (r < 0) {
		err("import into %s stopped: the keys written before stay (%" PRIu64 " of them)",
		    t->name, im.keys - (uint64_t)im.ops);
		return EXIT_REFUSED;
	}
	printf("imported %" PRIu64 " keys (%" PRIu64 " bytes of keys and values) and %" PRIu64
	       " leases into tenant %s (%s in the core etcd)\n", im.keys, im.bytes, im.leases, t->name,
	       t->prefix);
	printf("note: the keys have new revisions, the core etcd's, not the source's: start the API "
	       "server afresh against its tenant, so that it lists everything again instead of "
	       "watching from an old revision\n");
	return EXIT_DONE;
}

/* ---- purge ----------------------------------------------------------------------------------- */

static int collect_record(void *ctx, const struct etcdc_kv *kv)
{
	struct { int64_t *ids; size_t n; } *c = ctx;
	char hex[17];

	if (kv->klen < 16)
		return 0;
	memcpy(hex, kv->key + kv->klen - 16, 16);
	hex[16] = '\0';
	c->ids = ep_realloc(c->ids, (c->n + 1) * sizeof(int64_t));
	c->ids[c->n++] = (int64_t)strtoull(hex, NULL, 16);
	return 0;
}

static int delete_range(struct etcdc *e, const uint8_t *key, size_t klen, const uint8_t *end,
			size_t elen, int64_t *deleted_r, const char **error_r)
{
	uint8_t *req = ep_malloc0(klen + elen + 16), *p;
	const uint8_t *resp, *q, *qend;
	size_t rlen;
	struct ep_pb_field f;
	int r;

	p = ep_pb_put_bytes(req, 1, key, klen);
	p = ep_pb_put_bytes(p, 2, end, elen);
	r = etcdc_call(e, "/etcdserverpb.KV/DeleteRange", req, (size_t)(p - req), &resp, &rlen,
		       error_r);
	free(req);
	if (r < 0)
		return -1;
	*deleted_r = 0;
	q = resp;
	qend = resp + rlen;
	while (ep_pb_next_field(&q, qend, &f) > 0)
		if (f.number == 2 && f.wire == EP_PB_VARINT)
			*deleted_r = (int64_t)f.value;
	return 0;
}

/*
 * The tenant's state as the daemon knows it, whatever it is ("failed" too: a
 * tenant file with an error is still the operator's tenant, and its data is
 * not left for deletion by a typo): NULL when the daemon does not know it (or
 * does not answer).
 */
static char *running_state(const struct tenant *t, const struct data_opts *o, int *reachable_r)
{
	cJSON *req = cJSON_CreateObject(), *reply = NULL;
	const cJSON *tn, *st;
	const char *why;
	char *state = NULL;

	cJSON_AddStringToObject(req, "command", "show");
	cJSON_AddStringToObject(req, "name", t->name);
	*reachable_r = ctl_request(o->sock != NULL ? o->sock : t->g->control_socket, req, &reply,
				   &why) == 0;
	cJSON_Delete(req);
	tn = cJSON_GetObjectItemCaseSensitive(reply, "tenant");
	st = cJSON_GetObjectItemCaseSensitive(tn, "state");
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok")) && cJSON_IsString(st))
		state = ep_strdup(st->valuestring);
	cJSON_Delete(reply);
	return state;
}

static int do_purge(struct tenant *t, const struct data_opts *o)
{
	struct { int64_t *ids; size_t n; } recs = { NULL, 0 };
	int64_t keys = 0, deleted = 0, rev = 0, records = 0;
	size_t revoked = 0, gone = 0, last_len;
	uint8_t *last = NULL;
	const char *error;
	char *state;
	int reachable, more;

	state = running_state(t, o, &reachable);
	if (state != NULL) {
		err("refused: tenant %s is configured here (state %s); remove it (its file in "
		    "storages_dir, or its EtcdStorage) and reload, then purge", t->name, state);
		free(state);
		return EXIT_REFUSED;
	}
	if (!reachable)
		fprintf(stderr, "etcdproxyctl: note: etcdproxyd does not answer on this node; make "
				"sure no node serves tenant %s any more\n", t->name);
	if (etcdc_count(t->core, (const uint8_t *)t->prefix, t->plen, t->end, t->elen, &keys, NULL,
			&error) < 0 ||
	    etcdc_range_page(t->core, (const uint8_t *)t->records, t->rlen, t->records_end,
			     t->rend_len, 0, 0, collect_record, &recs, &rev, &more, &last, &last_len,
			     &error) < 0) {
		err("the core etcd: %s", error);
		free(recs.ids);
		return EXIT_REFUSED;
	}
	free(last);
	if (!o->yes) {
		char answer[128];

		if (!isatty(STDIN_FILENO)) {
			err("refused: purge deletes %" PRId64 " keys and revokes %zu leases of tenant "
			    "%s; confirm on a terminal, or pass --yes", keys, recs.n, t->name);
			free(recs.ids);
			return EXIT_REFUSED;
		}
		fprintf(stderr, "Delete the %" PRId64 " keys under %s in the core etcd and revoke "
			"the %zu leases of tenant %s?\nType the tenant's name to confirm: ", keys,
			t->prefix, recs.n, t->name);
		if (fgets(answer, sizeof(answer), stdin) == NULL ||
		    strcmp(strtok(answer, "\r\n") ? answer : "", t->name) != 0) {
			err("not confirmed: nothing deleted");
			free(recs.ids);
			return EXIT_REFUSED;
		}
	}
	/* the leases first: their keys (and their records) go with them */
	for (size_t i = 0; i < recs.n; i++) {
		uint8_t req[16];
		const uint8_t *resp;
		size_t len = (size_t)(ep_pb_put_uint(req, 1, (uint64_t)recs.ids[i]) - req);

		if (etcdc_call(t->core, "/etcdserverpb.Lease/LeaseRevoke", req, len, &resp, &len,
			       &error) == 0) {
			revoked++;
		} else if (strstr(error, "code = 5 ") != NULL) {
			gone++; /* NOT_FOUND: expired meanwhile */
		} else {
			err("purge %s: revoking lease %" PRId64 ": %s", t->name, recs.ids[i], error);
			free(recs.ids);
			return EXIT_REFUSED;
		}
	}
	free(recs.ids);
	printf("purge %s: revoked %zu leases (and their keys; %zu had expired already)\n", t->name,
	       revoked, gone);
	if (delete_range(t->core, (const uint8_t *)t->prefix, t->plen, t->end, t->elen, &deleted,
			 &error) < 0) {
		err("purge %s: deleting %s: %s", t->name, t->prefix, error);
		return EXIT_REFUSED;
	}
	printf("purge %s: deleted %" PRId64 " keys under %s\n", t->name, deleted, t->prefix);
	if (delete_range(t->core, (const uint8_t *)t->records, t->rlen, t->records_end, t->rend_len,
			 &records, &error) < 0) {
		err("purge %s: deleting the lease records: %s", t->name, error);
		return EXIT_REFUSED;
	}
	printf("purge %s: deleted %" PRId64 " lease records left under %s\n", t->name, records,
	       t->records);
	return EXIT_DONE;
}

int ctl_data(const char *cmd, const char *name, const struct data_opts *o)
{
	struct tenant t;
	int code = tenant_open(&t, name, o);

	if (code == 0) {
		if (strcmp(cmd, "export") == 0)
			code = do_export(&t, o);
		else if (strcmp(cmd, "import") == 0)
			code = do_import(&t, o);
		else
			code = do_purge(&t, o);
	}
	tenant_close(&t);
	return code;
}
