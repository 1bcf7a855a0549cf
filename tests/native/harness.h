/*
 * A test bench for the native backend's call state machine: the backend's own
 * code (linked in, not loaded), a host played by the test, clients and a
 * scripted upstream that speak HTTP/2 through nghttp2 on real sockets of one
 * libuv loop.
 *
 *   h_call (nghttp2 client) --unix socket--> the native --127.0.0.1--> h_peer
 *
 * The upstream is not etcd and does not pretend to be: it answers each call as
 * the test's script says (a message, trailers, a reset, a dropped connection,
 * or nothing), so that every path of a call (both sides ending in every
 * order) can be driven on purpose.  The integration tests run the same
 * backend against a real etcd.
 *
 * Debugging: H_VERBOSE=1 shows the backend's log, H_TRACE=1 every HTTP/2
 * frame and write of the clients and the peer.
 */
#ifndef EP_TEST_HARNESS_H
#define EP_TEST_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>
#include <uv.h>

#include "etcdproxy/plugin.h"

struct harness;
struct h_conn;

/* A growing byte buffer. */
struct h_buf {
	uint8_t *data;
	size_t off, len, cap;
};

/* One HTTP/2 stream at either end: a client's call, or a call the peer received. */
struct h_stream {
	struct h_stream *next; /* in the harness: every stream, freed at teardown */
	struct h_conn *conn;   /* NULL once the connection is gone */
	int32_t id;
	char path[128];
	struct h_buf in;  /* DATA received, gRPC-framed; whole messages are taken off */
	struct h_buf out; /* DATA to send */
	int out_end;      /* end the stream once out is sent (client: END_STREAM; peer: trailers) */
	int deferred;     /* the data provider waits for out */
	int submitted;    /* peer: response HEADERS sent */
	int end_received; /* the other side ended its half */
	int end_seen;     /* peer: the script saw the end */
	int closed;
	uint32_t rst_code; /* the close's HTTP/2 error code */
	int http_status;   /* client: the response's :status */
	int grpc_status;   /* client: from the trailers (or Trailers-Only); -1 until then */
	char grpc_message[512];
	int finish_status; /* peer: the trailers to send */
	char finish_message[256];
	int messages_in; /* whole messages received */
};

/* The peer's script: one call per whole request message, and once (msg NULL) at its end. */
typedef void h_script(struct harness *h, struct h_stream *st, const uint8_t *msg, size_t len);

struct harness {
	uv_loop_t loop;
	char dir[64];
	char listen[128];
	char endpoint[64];
	const char *endpoints[1];
	struct ep_tenant_info tenant;
	struct ep_host host;
	const struct ep_plugin *plugin;
	void *native; /* struct native * */
	char *options_error;

	int ready_calls, health_bad, stopped;
	int failed;
	char fail_reason[256];
	int quiet; /* no log on stderr */

	/* the scripted upstream */
	uv_tcp_t peer_listener;
	struct h_conn *conns; /* both ends' connections */
	h_script *script;
	void *script_ctx;
	int peer_connections; /* accepted so far */
	int peer_streams;     /* calls the peer received */

	struct h_stream *streams;
};

/* Start the native backend for tenant "t" (prefix "/t/") with these options ("{}"). */
void h_init(struct harness *h, const char *options_json);
/* The backend's operations. */
#define H_OPS(h) ((const struct ep_backend_ops *)(h)->plugin->ops)
/* Stop it (graceful or not), free everything; fails the test on a leaked handle. */
void h_fini(struct harness *h, int graceful);
/* Run the loop until *flag is non-zero (or the timeout: returns -1). */
int h_run_until(struct harness *h, const int *flag, unsigned timeout_ms);
/* Run the loop until done(arg) (or the timeout: returns -1). */
int h_run_until_fn(struct harness *h, int (*done)(struct harness *h, void *arg), void *arg,
		   unsigned timeout_ms);
/* Run the loop for a while (lets what can happen happen). */
void h_run_for(struct harness *h, unsigned ms);

/* ---- clients ---- */
/* A client connection to the tenant (HTTP/2 preface and SETTINGS sent). */
struct h_conn *h_connect(struct harness *h);
void h_conn_close(struct h_conn *c);
/* Start a call: one gRPC message (len may be 0; msg NULL: none), ending the request when end. */
struct h_stream *h_call(struct h_conn *c, const char *path, const uint8_t *msg, size_t len,
			int end);
void h_send(struct h_stream *st, const uint8_t *msg, size_t len, int end);
/* Bytes as they are, not framed as a gRPC message. */
void h_send_raw(struct h_stream *st, const uint8_t *data, size_t len, int end);
void h_cancel(struct h_stream *st); /* RST_STREAM(CANCEL) */
/* The next whole message received on st: 1, or 0 when none (yet). */
int h_next_message(struct h_stream *st, const uint8_t **msg, size_t *len);
void h_drop_message(struct h_stream *st, size_t len);

/* ---- the peer's answers (from its script, or later) ---- */
void h_reply(struct h_stream *st, const uint8_t *msg, size_t len);
void h_finish(struct h_stream *st, int grpc_status, const char *message);
void h_reset(struct h_stream *st, uint32_t code);
/* Close the peer connection that carries st, at once. */
void h_drop_connection(struct h_stream *st);

/* ---- the native's state, for the test's invariants ---- */
size_t h_active_streams(struct harness *h); /* calls with a client stream */
size_t h_upstream_calls(struct harness *h); /* calls on upstream connections */
size_t h_client_conns(struct harness *h);   /* client connections the native holds */

/* ---- protobuf, for building test messages ---- */
size_t h_pb_bytes(uint8_t *d, unsigned field, const void *data, size_t len);
size_t h_pb_uint(uint8_t *d, unsigned field, uint64_t v);
/* The bytes of a length-delimited field (its first occurrence) in msg: 1, or 0. */
int h_pb_find(const uint8_t *msg, size_t len, unsigned field, const uint8_t **data_r,
	      size_t *len_r);

#endif /* EP_TEST_HARNESS_H */
