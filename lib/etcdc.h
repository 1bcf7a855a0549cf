/*
 * A small blocking etcd v3 client: unary gRPC calls over HTTP/2 with libcurl
 * (h2c for http://, ALPN h2 for https://), messages written and read with
 * lib/pb.h.  etcdproxyctl's data commands (export, import, purge) use it, and
 * the external backend's health check, on the thread pool.  Not part of
 * libep: only what needs libcurl compiles it in.
 */
#ifndef EP_ETCDC_H
#define EP_ETCDC_H

#include <stddef.h>
#include <stdint.h>

struct etcdc;

/* TLS material: all NULL for a plaintext endpoint. */
struct etcdc_tls {
	const char *ca_file, *cert_file, *key_file;
};

/*
 * A client of the first of urls ("http://HOST:PORT", "https://...") that
 * answers; it moves on to the next when one cannot be reached.  NULL with a
 * malloc'ed reason in *error_r.
 */
struct etcdc *etcdc_open(char *const *urls, size_t n_urls, const struct etcdc_tls *tls,
			 char **error_r);
void etcdc_close(struct etcdc *e);
/* Each call's limit, connecting included (default: 5 s to connect, 120 s in all). */
void etcdc_set_timeout(struct etcdc *e, uint64_t ms);
/*
 * The largest answer taken, in bytes (0, the default: any); a call whose
 * answer grows past it stops there and returns -2.
 */
void etcdc_set_max_answer(struct etcdc *e, size_t bytes);
/* The endpoint in use, for messages. */
const char *etcdc_endpoint(const struct etcdc *e);

/*
 * One unary call, such as "/etcdserverpb.KV/Range": 0 and the answer's
 * message in *resp (valid until the next call), or -1 and *error_r (valid
 * until the next call): "rpc error: code = N desc = ..." as etcd's own
 * clients say it, or what kept the call from being made; -2 (and *error_r)
 * for an answer larger than etcdc_set_max_answer() allows.
 */
int etcdc_call(struct etcdc *e, const char *path, const uint8_t *req, size_t len,
	       const uint8_t **resp, size_t *resp_len, const char **error_r);

/* One key-value pair of a RangeResponse (pointers into the message). */
struct etcdc_kv {
	const uint8_t *key, *value;
	size_t klen, vlen;
	int64_t lease;
};

/*
 * A page of keys in [key, end) at revision rev (0: the current one, which
 * *rev_r then tells), at most limit of them, through cb.  *more_r says
 * whether there are more, *last_r (malloc'ed, *last_len_r) is the last key
 * read.  0, or -1 (-2) with *error_r as for etcdc_call.
 */
int etcdc_range_page(struct etcdc *e, const uint8_t *key, size_t klen, const uint8_t *end,
		     size_t elen, int64_t rev, int64_t limit,
		     int (*cb)(void *ctx, const struct etcdc_kv *kv), void *ctx, int64_t *rev_r,
		     int *more_r, uint8_t **last_r, size_t *last_len_r, const char **error_r);

/* How many keys [key, end) holds now, and the revision that is (rev_r may be NULL).  0 or -1. */
int etcdc_count(struct etcdc *e, const uint8_t *key, size_t klen, const uint8_t *end,
		size_t elen, int64_t *count_r, int64_t *rev_r, const char **error_r);

/* The end of the range of every key that starts with prefix (etcd's prefix end). */
size_t etcdc_prefix_end(const uint8_t *prefix, size_t len, uint8_t *out);

#endif /* EP_ETCDC_H */
