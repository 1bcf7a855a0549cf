/*
 * Connection I/O that both sides of the proxy share (downstream.c for the
 * clients, upstream.c for the core etcd): byte queues, the write path from
 * nghttp2 to the socket (plain or through the TLS module), the scheduling of
 * those writes (one per connection per loop iteration), and PING
 * acknowledgements held for the next write.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "native.h"

/* ---- byte queues -------------------------------------------------------------------------- */

void bq_append(struct bq *q, const void *p, size_t n)
{
	if (q->off > 0 && q->off == q->len) {
		q->off = q->len = 0;
	}
	if (q->len + n > q->cap) {
		if (q->off > 0) {
			memmove(q->data, q->data + q->off, q->len - q->off);
			q->len -= q->off;
			q->off = 0;
		}
		if (q->len + n > q->cap) {
			/*
			 * Sizes that fill pool.c's blocks (a power of two, less its
			 * 16-byte header): most messages are a few hundred bytes, and
			 * a call's small queues keep the cache's classes dense.
			 */
			size_t cap = q->cap ? q->cap : 48;

			while (cap < q->len + n)
				cap = 2 * cap + 16;
			q->data = pool_realloc(q->data, cap);
			q->cap = cap;
		}
	}
	memcpy(q->data + q->len, p, n);
	q->len += n;
}

void bq_reserve(struct bq *q, size_t want)
{
	size_t pending = q->len - q->off;

	if (want <= q->cap - q->off)
		return;
	if (q->off > 0) {
		memmove(q->data, q->data + q->off, pending);
		q->len = pending;
		q->off = 0;
	}
	if (want > q->cap) {
		q->data = pool_realloc(q->data, want);
		q->cap = want;
	}
}

size_t bq_pending(const struct bq *q)
{
	return q->len - q->off;
}

void bq_consume(struct bq *q, size_t n)
{
	q->off += n;
	if (q->off == q->len) {
		q->off = q->len = 0;
		/* a large burst must not pin its memory */
		if (q->cap > 65536) {
			pool_free(q->data);
			q->data = NULL;
			q->cap = 0;
		}
	}
}

void bq_free(struct bq *q)
{
	pool_free(q->data);
	memset(q, 0, sizeof(*q));
}

/* ---- sending ---------------------------------------------------------------------------------------- */

static void gather_append(struct native *n, const uint8_t *data, size_t len)
{
	if (n->gather_len + len > n->gather_cap) {
		size_t cap = n->gather_cap ? n->gather_cap * 2 : NATIVE_GATHER;

		while (cap < n->gather_len + len)
			cap *= 2;
		n->gather = realloc(n->gather, cap);
		if (n->gather == NULL)
			abort();
		n->gather_cap = cap;
	}
	memcpy(n->gather + n->gather_len, data, len);
	n->gather_len += len;
}

const uint8_t *native_gather(struct native *n, nghttp2_session *s, size_t *len_r, int *error_r)
{
	*error_r = 0;
	n->gather_len = 0;
	for (;;) {
		const uint8_t *data;
		/* DATA frames are appended by native_gather_frame() from within */
		ssize_t got = nghttp2_session_mem_send(s, &data);

		if (got < 0) {
			*error_r = (int)got;
			*len_r = 0;
			return NULL;
		}
		if (got == 0)
			break;
		gather_append(n, data, (size_t)got);
		if (n->gather_len >= NATIVE_GATHER)
			break; /* a frame is at most 16 KiB: the buffer stays under 2 * NATIVE_GATHER */
	}
	*len_r = n->gather_len;
	return n->gather_len > 0 ? n->gather : NULL;
}

int native_gather_frame(struct native *n, const nghttp2_frame *frame, const uint8_t *framehd,
			struct bq *q, size_t len)
{
	static const uint8_t zeros[256];
	size_t padlen = frame->data.padlen;
	uint8_t pad_length;

	if (len > bq_pending(q))
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* never: the stream is reset */
	if (n->gather_len >= NATIVE_GATHER)
		return NGHTTP2_ERR_WOULDBLOCK; /* this write is full: asked again for the next */
	gather_append(n, framehd, 9);
	if (padlen > 0) { /* never asked for, but a frame is what nghttp2 says it is */
		pad_length = (uint8_t)(padlen - 1);
		gather_append(n, &pad_length, 1);
	}
	if (len > 0)
		gather_append(n, q->data + q->off, len);
	bq_consume(q, len);
	for (size_t left = padlen > 1 ? padlen - 1 : 0; left > 0;) {
		size_t k = left < sizeof(zeros) ? left : sizeof(zeros);

		gather_append(n, zeros, k);
		left -= k;
	}
	return 0;
}

int native_write(uv_stream_t *stream, const uint8_t *data, size_t len, size_t *pending,
		 uv_write_cb done)
{
	struct native_write *w;
	uv_buf_t b;
	int r;

	if (*pending == 0) {
		/* the usual case: the socket takes it all at once, and nothing is copied */
		b = uv_buf_init((char *)data, (unsigned)len);
		r = uv_try_write(stream, &b, 1);
		if (r == (int)len)
			return 0;
		if (r > 0) {
			data += r;
			len -= (size_t)r;
		} else if (r != UV_EAGAIN) {
			return r;
		}
	}
	w = malloc(NATIVE_WRITE_HEAD + len);
	if (w == NULL)
		abort();
	memcpy(w->data, data, len);
	w->pending = pending;
	w->len = len;
	*pending += len;
	b = uv_buf_init((char *)w->data, (unsigned)len);
	r = uv_write(&w->req, stream, &b, 1, done);
	if (r < 0) {
		*pending -= len;
		free(w);
	}
	return r;
}

void native_write_done(uv_write_t *req)
{
	struct native_write *w = (struct native_write *)req;

	*w->pending -= w->len;
	free(w);
}

int native_send(uv_stream_t *stream, struct native_tls *t, const uint8_t *data, size_t len,
		size_t *pending, uv_write_cb done, const char **why_r)
{
	int r;

	if (t->ssl == NULL) {
		r = native_write(stream, data, len, pending, done);
		if (r < 0)
			*why_r = uv_strerror(r);
		return r;
	}
	if (len > 0 && native_tls->encrypt(t, data, len, why_r) < 0)
		return -EPROTO;
	return native_tls_flush(t, stream, pending, done, why_r);
}

/* ---- connections of either side ------------------------------------------------------------- */

void conn_io_open(struct native *n, struct conn_io *io, void (*flush)(struct conn_io *io))
{
	io->n = n;
	io->flush = flush;
	io->next = n->io;
	io->pprev = &n->io;
	if (n->io != NULL)
		n->io->pprev = &io->next;
	n->io = io;
}

void conn_io_close(struct conn_io *io)
{
	if (io->pprev == NULL)
		return;
	*io->pprev = io->next;
	if (io->next != NULL)
		io->next->pprev = io->pprev;
	io->next = NULL;
	io->pprev = NULL;
	if (io->marked) {
		for (struct conn_io **pp = &io->n->marked; *pp != NULL; pp = &(*pp)->next_marked) {
			if (*pp == io) {
				*pp = io->next_marked;
				break;
			}
		}
		io->marked = 0;
	}
	io->ping.pending = 0;
}

/* ---- PING acknowledgements ---------------------------------------------------------------------- */

static void ping_ack_release(nghttp2_session *s, struct ping_ack *p)
{
	if (p->pending && s != NULL) {
		nghttp2_submit_ping(s, NGHTTP2_FLAG_ACK, p->opaque);
		p->pending = 0;
	}
}

/*
 * An acknowledgement held for NATIVE_PING_ACK_DELAY_MS is sent on its own;
 * *wait_r is lowered to the time until the next one is due.
 */
static int ping_ack_due(const struct ping_ack *p, uint64_t now, uint64_t *wait_r)
{
	uint64_t due = p->since + NATIVE_PING_ACK_DELAY_MS;

	if (!p->pending)
		return 0;
	if (now >= due)
		return 1;
	if (due - now < *wait_r)
		*wait_r = due - now;
	return 0;
}

void conn_io_ack_take(struct conn_io *io, nghttp2_session *s)
{
	uint64_t wait = UINT64_MAX;

	if (!io->ping.pending || s == NULL)
		return;
	/* along with what goes out anyway, or on its own once due (on_ack_timer marked io) */
	if (nghttp2_session_want_write(s) || ping_ack_due(&io->ping, uv_now(io->n->loop), &wait))
		ping_ack_release(s, &io->ping);
}

/* Acknowledgements younger than the delay stay held: a write will likely take them along. */
static void on_ack_timer(uv_timer_t *t)
{
	struct native *n = t->data;
	uint64_t now = uv_now(n->loop), wait = UINT64_MAX;

	for (struct conn_io *io = n->io; io != NULL; io = io->next)
		if (ping_ack_due(&io->ping, now, &wait))
			conn_io_mark(io);
	native_flush_marked(n);
	if (wait != UINT64_MAX && !n->upstreams_closed)
		uv_timer_start(&n->ack_timer, on_ack_timer, wait, 0);
}

void conn_io_ack_hold(struct conn_io *io, nghttp2_session *s, const uint8_t opaque[8])
{
	struct native *n = io->n;

	ping_ack_release(s, &io->ping); /* an older one goes with the next write */
	memcpy(io->ping.opaque, opaque, 8);
	io->ping.pending = 1;
	io->ping.since = uv_now(n->loop);
	if (!uv_is_active((uv_handle_t *)&n->ack_timer) && !n->upstreams_closed)
		uv_timer_start(&n->ack_timer, on_ack_timer, NATIVE_PING_ACK_DELAY_MS, 0);
}

/* ---- flush scheduling ------------------------------------------------------------------ */

static void schedule_flush(struct native *n);

void conn_io_mark(struct conn_io *io)
{
	if (io->pprev == NULL)
		return; /* closed: a write finishing late, say */
	if (!io->marked) {
		io->marked = 1;
		io->next_marked = io->n->marked;
		io->n->marked = io;
	}
	schedule_flush(io->n);
}

/*
 * Send what every marked connection has queued.  Called at the end of each
 * read (outside nghttp2's callbacks), and from the idle or check handle for
 * everything else, so that a request and its answer cost no extra loop
 * iteration.  A connection that one flush marks (a call's other side) waits
 * for the next pass, which is already scheduled.
 */
void native_flush_marked(struct native *n)
{
	struct conn_io *io = n->marked;

	n->marked = NULL;
	while (io != NULL) {
		struct conn_io *next = io->next_marked;

		io->marked = 0;
		io->next_marked = NULL;
		io->flush(io);
		io = next;
	}
}

static void flush_scheduled(struct native *n)
{
	n->flush_scheduled = 0;
	uv_idle_stop(&n->flush_idle);
	uv_check_stop(&n->flush_check);
	native_flush_marked(n);
}

static void on_flush_idle(uv_idle_t *h)
{
	flush_scheduled(h->data);
}

static void on_flush_check(uv_check_t *h)
{
	flush_scheduled(h->data);
}

/*
 * Both handles, and whichever runs first sends: from an I/O callback the check
 * handle, right after this iteration's I/O, so that every read of the
 * iteration shares one write per connection; from a timer, the idle handle,
 * before the loop would block in poll.
 */
static void schedule_flush(struct native *n)
{
	/* called a dozen times per call: once scheduled, nothing more to do */
	if (n->flush_scheduled || uv_is_closing((uv_handle_t *)&n->flush_idle))
		return;
	n->flush_scheduled = 1;
	uv_idle_start(&n->flush_idle, on_flush_idle);
	uv_check_start(&n->flush_check, on_flush_check);
}
