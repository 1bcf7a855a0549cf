/*
 * etcdctl-like unary gRPC calls with libcurl: see etcdc.h.
 *
 * A gRPC call is an HTTP/2 POST of one length-prefixed message with
 * content-type application/grpc and "te: trailers"; the answer is one such
 * message and the trailers grpc-status and grpc-message, which libcurl hands
 * to the header callback like any header (a Trailers-Only answer has them in
 * its only HEADERS).
 */
#include "build-config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <curl/curl.h>

#include "etcdc.h"
#include "pb.h"
#include "util.h"

struct etcdc {
	CURL *curl;
	struct curl_slist *headers;
	char *const *urls;
	size_t n_urls, cur;
	struct etcdc_tls tls;
	char *url; /* endpoint + path of the call */
	uint8_t *body;
	size_t body_cap;
	uint8_t *buf; /* the answer's bytes */
	size_t len, cap;
	size_t max_answer; /* 0: any */
	int too_large;
	int status; /* grpc-status, -1: none seen */
	char message[512];
	char error[CURL_ERROR_SIZE + 600];
	char curl_error[CURL_ERROR_SIZE];
};

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
	struct etcdc *e = ud;
	size_t len = size * n;

	if (e->max_answer > 0 && e->len + len > e->max_answer + 5) {
		e->too_large = 1;
		return 0; /* libcurl stops the transfer */
	}
	if (e->len + len > e->cap) {
		e->cap = (e->len + len) * 2;
		if (e->max_answer > 0 && e->cap > e->max_answer + 5)
			e->cap = e->max_answer + 5;
		e->buf = ep_realloc(e->buf, e->cap);
	}
	memcpy(e->buf + e->len, data, len);
	e->len += len;
	return len;
}

/* grpc-message is percent-encoded. */
static void percent_decode(const char *s, size_t len, char *out, size_t size)
{
	size_t o = 0;

	for (size_t i = 0; i < len && o + 1 < size; i++) {
		unsigned v;

		if (s[i] == '%' && i + 2 < len && sscanf(s + i + 1, "%2x", &v) == 1) {
			out[o++] = (char)v;
			i += 2;
		} else {
			out[o++] = s[i];
		}
	}
	out[o] = '\0';
}

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
	struct etcdc *e = ud;
	size_t len = size * n, vlen;
	const char *v;

	while (len > 0 && (data[len - 1] == '\r' || data[len - 1] == '\n'))
		len--;
	if (len > 12 && strncasecmp(data, "grpc-status:", 12) == 0) {
		e->status = atoi(data + 12);
	} else if (len > 13 && strncasecmp(data, "grpc-message:", 13) == 0) {
		v = data + 13;
		vlen = len - 13;
		while (vlen > 0 && *v == ' ') {
			v++;
			vlen--;
		}
		percent_decode(v, vlen, e->message, sizeof(e->message));
	}
	return size * n;
}

static void setup_handle(struct etcdc *e)
{
	const char *u = e->urls[e->cur];
	int tls = strncmp(u, "https://", 8) == 0;

	curl_easy_reset(e->curl);
	curl_easy_setopt(e->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e->curl, CURLOPT_HTTP_VERSION,
			 tls ? (long)CURL_HTTP_VERSION_2TLS : (long)CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE);
	curl_easy_setopt(e->curl, CURLOPT_HTTPHEADER, e->headers);
	curl_easy_setopt(e->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(e->curl, CURLOPT_WRITEDATA, e);
	curl_easy_setopt(e->curl, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(e->curl, CURLOPT_HEADERDATA, e);
	curl_easy_setopt(e->curl, CURLOPT_ERRORBUFFER, e->curl_error);
	curl_easy_setopt(e->curl, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	curl_easy_setopt(e->curl, CURLOPT_TIMEOUT_MS, 120000L);
	curl_easy_setopt(e->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	/*
	 * A new connection per call: Debian bookworm's libcurl (7.88) fails the
	 * second request on a reused HTTP/2 connection ("Error in the HTTP2
	 * framing layer").  Calls are few and large (pages, batches), so the
	 * handshake is a small part of each.
	 */
	curl_easy_setopt(e->curl, CURLOPT_FORBID_REUSE, 1L);
	if (getenv("EP_CURL_VERBOSE") != NULL)
		curl_easy_setopt(e->curl, CURLOPT_VERBOSE, 1L);
	if (e->tls.ca_file != NULL)
		curl_easy_setopt(e->curl, CURLOPT_CAINFO, e->tls.ca_file);
	if (e->tls.cert_file != NULL)
		curl_easy_setopt(e->curl, CURLOPT_SSLCERT, e->tls.cert_file);
	if (e->tls.key_file != NULL)
		curl_easy_setopt(e->curl, CURLOPT_SSLKEY, e->tls.key_file);
}

struct etcdc *etcdc_open(char *const *urls, size_t n_urls, const struct etcdc_tls *tls,
			 char **error_r)
{
	struct etcdc *e;

	if (n_urls == 0) {
		*error_r = ep_strdup("no etcd endpoint");
		return NULL;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	e = ep_malloc0(sizeof(*e));
	e->curl = curl_easy_init();
	if (e->curl == NULL) {
		free(e);
		*error_r = ep_strdup("cannot make a libcurl handle");
		return NULL;
	}
	e->urls = urls;
	e->n_urls = n_urls;
	if (tls != NULL)
		e->tls = *tls;
	e->headers = curl_slist_append(e->headers, "Content-Type: application/grpc");
	e->headers = curl_slist_append(e->headers, "TE: trailers");
	e->headers = curl_slist_append(e->headers, "Expect:");
	e->headers = curl_slist_append(e->headers, "User-Agent: etcdproxyctl/" PACKAGE_VERSION);
	setup_handle(e);
	return e;
}

void etcdc_close(struct etcdc *e)
{
	if (e == NULL)
		return;
	curl_easy_cleanup(e->curl);
	curl_slist_free_all(e->headers);
	free(e->url);
	free(e->body);
	free(e->buf);
	free(e);
}

void etcdc_set_timeout(struct etcdc *e, uint64_t ms)
{
	curl_easy_setopt(e->curl, CURLOPT_CONNECTTIMEOUT_MS, (long)ms);
	curl_easy_setopt(e->curl, CURLOPT_TIMEOUT_MS, (long)ms);
}

void etcdc_set_max_answer(struct etcdc *e, size_t bytes)
{
	e->max_answer = bytes;
}

const char *etcdc_endpoint(const struct etcdc *e)
{
	return e->urls[e->cur];
}

/* A failure before any answer: another endpoint may do better. */
static int unreachable(CURLcode rc)
{
	return rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
	       rc == CURLE_OPERATION_TIMEDOUT || rc == CURLE_SSL_CONNECT_ERROR ||
	       rc == CURLE_RECV_ERROR || rc == CURLE_SEND_ERROR || rc == CURLE_GOT_NOTHING;
}

int etcdc_call(struct etcdc *e, const char *path, const uint8_t *req, size_t len,
	       const uint8_t **resp, size_t *resp_len, const char **error_r)
{
	size_t tried = 0, mlen;
	CURLcode rc;
	long http = 0;

	if (len + 5 > e->body_cap) {
		e->body_cap = len + 5;
		e->body = ep_realloc(e->body, e->body_cap);
	}
	e->body[0] = 0;
	e->body[1] = (uint8_t)(len >> 24);
	e->body[2] = (uint8_t)(len >> 16);
	e->body[3] = (uint8_t)(len >> 8);
	e->body[4] = (uint8_t)len;
	if (len > 0)
		memcpy(e->body + 5, req, len);
	for (;;) {
		free(e->url);
		e->url = ep_strdup_printf("%s%s", e->urls[e->cur], path);
		curl_easy_setopt(e->curl, CURLOPT_URL, e->url);
		curl_easy_setopt(e->curl, CURLOPT_POSTFIELDS, e->body);
		curl_easy_setopt(e->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(len + 5));
		e->len = 0;
		e->status = -1;
		e->message[0] = '\0';
		e->curl_error[0] = '\0';
		e->too_large = 0;
		rc = curl_easy_perform(e->curl);
		if (rc == CURLE_OK || !unreachable(rc) || ++tried >= e->n_urls)
			break;
		e->cur = (e->cur + 1) % e->n_urls;
		setup_handle(e);
	}
	if (rc != CURLE_OK && e->too_large) {
		snprintf(e->error, sizeof(e->error), "%s: an answer larger than %zu bytes",
			 e->urls[e->cur], e->max_answer);
		*error_r = e->error;
		return -2;
	}
	if (rc != CURLE_OK) {
		snprintf(e->error, sizeof(e->error), "%s: %s", e->urls[e->cur],
			 e->curl_error[0] ? e->curl_error : curl_easy_strerror(rc));
		*error_r = e->error;
		return -1;
	}
	curl_easy_getinfo(e->curl, CURLINFO_RESPONSE_CODE, &http);
	if (http != 200) {
		snprintf(e->error, sizeof(e->error), "%s: HTTP %ld (not a gRPC server?)",
			 e->urls[e->cur], http);
		*error_r = e->error;
		return -1;
	}
	if (e->status != 0) {
		snprintf(e->error, sizeof(e->error), "rpc error: code = %d desc = %s", e->status,
			 e->status < 0 ? "the answer has no grpc-status" : e->message);
		*error_r = e->error;
		return -1;
	}
	if (e->len < 5 || e->buf[0] != 0) {
		snprintf(e->error, sizeof(e->error), "%s: %s", e->urls[e->cur],
			 e->len < 5 ? "an answer without a message" : "a compressed answer");
		*error_r = e->error;
		return -1;
	}
	mlen = ((size_t)e->buf[1] << 24) | ((size_t)e->buf[2] << 16) | ((size_t)e->buf[3] << 8) |
	       e->buf[4];
	if (mlen > e->len - 5) {
		snprintf(e->error, sizeof(e->error), "%s: a truncated answer", e->urls[e->cur]);
		*error_r = e->error;
		return -1;
	}
	*resp = e->buf + 5;
	*resp_len = mlen;
	return 0;
}

size_t etcdc_prefix_end(const uint8_t *prefix, size_t len, uint8_t *out)
{
	while (len > 0 && prefix[len - 1] == 0xff)
		len--;
	if (len == 0) {
		out[0] = 0; /* every key */
		return 1;
	}
	memcpy(out, prefix, len);
	out[len - 1]++;
	return len;
}

/* ResponseHeader.revision (3). */
static int64_t header_revision(const uint8_t *msg, size_t len)
{
	return (int64_t)ep_pb_find_varint(msg, len, 3);
}

int etcdc_range_page(struct etcdc *e, const uint8_t *key, size_t klen, const uint8_t *endk,
		     size_t elen, int64_t rev, int64_t limit,
		     int (*cb)(void *ctx, const struct etcdc_kv *kv), void *ctx, int64_t *rev_r,
		     int *more_r, uint8_t **last_r, size_t *last_len_r, const char **error_r)
{
	uint8_t *req = ep_malloc0(klen + elen + 48), *p = req;
	const uint8_t *resp, *q, *qend, *last = NULL;
	size_t rlen, last_len = 0;
	struct ep_pb_field f, k;
	int r;

	p = ep_pb_put_bytes(p, 1, key, klen);
	p = ep_pb_put_bytes(p, 2, endk, elen);
	if (limit > 0)
		p = ep_pb_put_uint(p, 3, (uint64_t)limit);
	if (rev > 0)
		p = ep_pb_put_uint(p, 4, (uint64_t)rev);
	r = etcdc_call(e, "/etcdserverpb.KV/Range", req, (size_t)(p - req), &resp, &rlen, error_r);
	free(req);
	if (r < 0)
		return r;
	*more_r = 0;
	*rev_r = rev;
	q = resp;
	qend = resp + rlen;
	/* RangeResponse: header 1, kvs 2, more 3 */
	while ((r = ep_pb_next_field(&q, qend, &f)) > 0) {
		if (f.number == 1 && f.wire == EP_PB_LEN && rev == 0) {
			*rev_r = header_revision(f.data, f.len);
		} else if (f.number == 3 && f.wire == EP_PB_VARINT) {
			*more_r = f.value != 0;
		} else if (f.number == 2 && f.wire == EP_PB_LEN) {
			/* KeyValue: key 1, value 5, lease 6 */
			struct etcdc_kv kv = { (const uint8_t *)"", (const uint8_t *)"", 0, 0, 0 };
			const uint8_t *s = f.data, *send = f.data + f.len;

			while (ep_pb_next_field(&s, send, &k) > 0) {
				if (k.number == 1 && k.wire == EP_PB_LEN) {
					kv.key = k.data;
					kv.klen = k.len;
				} else if (k.number == 5 && k.wire == EP_PB_LEN) {
					kv.value = k.data;
					kv.vlen = k.len;
				} else if (k.number == 6 && k.wire == EP_PB_VARINT) {
					kv.lease = (int64_t)k.value;
				}
			}
			last = kv.key;
			last_len = kv.klen;
			if (cb(ctx, &kv) < 0) {
				snprintf(e->error, sizeof(e->error), "stopped");
				*error_r = e->error;
				return -1;
			}
		}
	}
	if (r < 0) {
		snprintf(e->error, sizeof(e->error), "%s: a RangeResponse that cannot be read",
			 e->urls[e->cur]);
		*error_r = e->error;
		return -1;
	}
	*last_len_r = last_len;
	*last_r = NULL;
	if (last != NULL) {
		*last_r = ep_malloc0(last_len + 1);
		memcpy(*last_r, last, last_len);
	}
	return 0;
}

int etcdc_count(struct etcdc *e, const uint8_t *key, size_t klen, const uint8_t *endk,
		size_t elen, int64_t *count_r, int64_t *rev_r, const char **error_r)
{
	uint8_t *req = ep_malloc0(klen + elen + 32), *p = req;
	const uint8_t *resp, *q, *qend;
	size_t rlen;
	struct ep_pb_field f;
	int r;

	p = ep_pb_put_bytes(p, 1, key, klen);
	p = ep_pb_put_bytes(p, 2, endk, elen);
	p = ep_pb_put_uint(p, 9, 1); /* count_only */
	r = etcdc_call(e, "/etcdserverpb.KV/Range", req, (size_t)(p - req), &resp, &rlen, error_r);
	free(req);
	if (r < 0)
		return -1;
	*count_r = 0;
	q = resp;
	qend = resp + rlen;
	while (ep_pb_next_field(&q, qend, &f) > 0) {
		if (f.number == 4 && f.wire == EP_PB_VARINT)
			*count_r = (int64_t)f.value;
		else if (f.number == 1 && f.wire == EP_PB_LEN && rev_r != NULL)
			*rev_r = header_revision(f.data, f.len);
	}
	return 0;
}
