/*
 * Framed messages over the IPC socketpair and the control socket; the frame
 * layout and message types are in master-interface.h.
 */
#ifndef EP_IPC_H
#define EP_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include <uv.h>

#include "master-interface.h"

/*
 * Called for each complete frame.  payload is owned by the reader and freed
 * when the callback returns.  Return 0 to go on; anything else stops
 * ep_frame_reader_feed() at once and is returned by it, so a callback may
 * free the reader (and the connection it belongs to) if it returns non-zero.
 * A reader that lives on after a non-zero return still holds the frames from
 * that one on (that one included): it must not be fed again.
 */
typedef int ep_frame_cb(void *ctx, uint8_t type, cJSON *payload);

/* Reassembles frames from a byte stream that arrives in arbitrary pieces. */
struct ep_frame_reader {
	uint8_t *buf;
	size_t len;
	size_t cap;
};

void ep_frame_reader_init(struct ep_frame_reader *r);
void ep_frame_reader_free(struct ep_frame_reader *r);

/*
 * Append data and deliver every complete frame to cb.  Returns 0; the
 * callback's non-zero value; or -EPROTO with a static reason in *error_r for
 * a bad magic, version, oversize length or a payload that is not a JSON
 * object (the stream cannot be trusted after that: drop it).
 */
int ep_frame_reader_feed(struct ep_frame_reader *r, const void *data, size_t len,
			 ep_frame_cb *cb, void *ctx, const char **error_r);

/*
 * Encode one frame into a malloc'ed buffer.  payload may be NULL ("{}").
 * Returns 0, or -EMSGSIZE when the payload is above EP_IPC_MAX_PAYLOAD.
 */
int ep_frame_encode(uint8_t type, const cJSON *payload, uint8_t **buf_r, size_t *len_r);

/* Queue one frame on a libuv stream; the buffer is freed when written. Returns 0 or a uv error. */
int ep_ipc_send(uv_stream_t *stream, uint8_t type, const cJSON *payload);

/* Blocking variants for etcdproxyctl: write a whole frame, read one frame (timeout in ms). */
int ep_ipc_write_frame_fd(int fd, uint8_t type, const cJSON *payload);
int ep_ipc_read_frame_fd(int fd, int timeout_ms, uint8_t *type_r, cJSON **payload_r,
			 const char **error_r);

/* The name of a message type, for logs: "HELLO"; "unknown" otherwise. */
const char *ep_msg_type_name(uint8_t type);

/*
 * Turn a worker's exit into log text: "exited with code 78 (fatal
 * configuration error)", "killed by signal 9 (Killed)".
 */
void ep_exit_describe(int64_t exit_status, int term_signal, char *buf, size_t size);

#endif /* EP_IPC_H */
