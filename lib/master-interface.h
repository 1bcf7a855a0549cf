/*
 * The supervisor <-> worker contract, and the control socket's, in one place.
 *
 * Process layout: etcdproxyd spawns one etcdproxy-worker per tenant with
 * uv_spawn().  The worker inherits one end of a socketpair on fd EP_IPC_FD;
 * when that end reads EOF the supervisor is gone and the worker stops.
 *
 * Framing (IPC socketpair and control socket alike), all integers big-endian:
 *
 *   offset 0  2 bytes  magic "EP"
 *   offset 2  1 byte   EP_IPC_VERSION
 *   offset 3  1 byte   message type (enum ep_msg_type)
 *   offset 4  4 bytes  payload length, at most EP_IPC_MAX_PAYLOAD
 *   offset 8  payload  one JSON object (UTF-8), fields below
 *
 * A frame with a bad magic, version or length, or a payload that is not a
 * JSON object, is a protocol error: the reader drops the connection.
 *
 * The messages of a fixed shape are C structs in messages.h, with one encoder
 * and one parser each that both ends use; change them by adding fields,
 * never by repurposing one.
 *
 * Messages, worker -> supervisor:
 *   HELLO    {"pid":N, "version":"0.1.0", "abi":N}          first frame, unasked
 *   READY    {"endpoint":"127.0.0.1:2379"}                   endpoint answers
 *   HEALTH   {"healthy":true|false, "reason":"..."}         on every change
 *   STATUS   {"state":"starting|ready", "healthy":true|false, "counters":{...},
 *             "certificates":[{"role","subject","serial","not_after",...}]}
 *            answer to STATUS_REQ, every EP_REPORT_INTERVAL_MS unasked when
 *            the backend keeps counters (ep_backend_ops.counters), and at once
 *            when the certificate source says its certificates changed
 *   CERTS_REPLY {"id":N, "ok":true|false, "error":"...", "result":{...}}
 *            the answer to CERTS_REQ N
 *   FATAL    {"reason":"...", "config":true|false}          just before exiting
 *
 * Messages, supervisor -> worker:
 *   CONFIGURE   {"generation":N, "tenant":{...}, "core_etcd":{...},
 *                "plugin_dir":"...", "state_dir":"...", "runtime_dir":"...",
 *                "backend":"etcd", "backend_options":{...}, "log_level":"info"}
 *               the whole effective configuration; sent once after HELLO.
 *               "listen_fd":4 when the supervisor passes the listening socket.
 *               Everything but generation, log_level and listen_fd is the tenant's
 *               fingerprint: reload restarts a worker when it changes.
 *   STOP        {"graceful":true|false}  drain and exit 0
 *   STATUS_REQ  {}  (a point-in-time query; the supervisor relies on READY
 *               and HEALTH, which the worker sends unasked)
 *   CERTS_REQ   {"id":N, "op":"rotate"}  or
 *               {"id":N, "op":"issue", "cn":"...", "out":"/abs/dir"}
 *               for etcdproxyctl rotate / issue-client-cert: the worker's
 *               certificate source does it (the supervisor never touches a
 *               private key) and answers with CERTS_REPLY
 *   POLICY      {"policy":{...}}  a reload changed only the tenant's limits
 *               (tenant.policy.quota, tenant.policy.rate_limit): the new
 *               tenant.policy, applied by a running backend without a restart
 *               (ep_backend_ops.policy_changed).  A backend that cannot makes
 *               the worker exit EP_EXIT_UNAVAILABLE, and it starts again with
 *               the new configuration.
 *
 * Control socket (etcdproxyctl -> etcdproxyd), one request per connection:
 *   CTL_REQUEST {"command":"status|list|show|reload|restart|rotate|issue-client-cert",
 *                "name":"...", "cn":"...", "out":"/abs/dir"}
 *   CTL_REPLY   {"ok":true|false, "error":"...", ...command-specific fields}
 */
#ifndef EP_MASTER_INTERFACE_H
#define EP_MASTER_INTERFACE_H

#include <stdint.h>

/* The worker's end of the IPC socketpair. */
#define EP_IPC_FD 3
/*
 * The tenant's listening socket, bound by the supervisor for backends that
 * take one (ep_backend_takes_socket()); CONFIGURE says "listen_fd": 4.  The
 * supervisor keeps it across worker restarts, so clients queue in its
 * backlog instead of being refused while a new worker starts.
 */
#define EP_LISTEN_FD 4

/* How often a worker reports its backend's counters. */
#define EP_REPORT_INTERVAL_MS 5000

/* How long etcdproxyctl rotate / issue-client-cert wait for the worker's answer. */
#define EP_CERTS_REQ_TIMEOUT_MS 30000

/* Environment the supervisor gives a worker. */
#define EP_ENV_TENANT "ETCDPROXY_TENANT"         /* tenant name, for early log lines */
#define EP_ENV_SUPERVISOR_PID "ETCDPROXY_SUPERVISOR_PID"
#define EP_ENV_LOG "ETCDPROXY_LOG"               /* "stderr", "journal" or "syslog" */

#define EP_IPC_MAGIC0 'E'
#define EP_IPC_MAGIC1 'P'
#define EP_IPC_VERSION 1
#define EP_IPC_HEADER_SIZE 8
#define EP_IPC_MAX_PAYLOAD (1024u * 1024u)

enum ep_msg_type {
	/* worker -> supervisor */
	EP_MSG_HELLO = 1,
	EP_MSG_READY = 2,
	EP_MSG_HEALTH = 3,
	EP_MSG_STATUS = 4,
	EP_MSG_FATAL = 5,
	EP_MSG_CERTS_REPLY = 6,
	/* supervisor -> worker */
	EP_MSG_CONFIGURE = 16,
	EP_MSG_STOP = 17,
	EP_MSG_STATUS_REQ = 18,
	EP_MSG_CERTS_REQ = 19,
	EP_MSG_POLICY = 20,
	/* control socket */
	EP_MSG_CTL_REQUEST = 32,
	EP_MSG_CTL_REPLY = 33,
};

/*
 * Worker exit codes (sysexits.h numbers, so that systemd and people read them
 * the same way).  ep_exit_describe() turns any wait status into log text.
 */
enum ep_exit_code {
	EP_EXIT_OK = 0,            /* stopped on request */
	EP_EXIT_USAGE = 64,        /* started by hand with wrong arguments */
	EP_EXIT_UNAVAILABLE = 69,  /* backend failed at run time: retry with backoff */
	EP_EXIT_SOFTWARE = 70,     /* internal error: retry with backoff */
	EP_EXIT_PROTOCOL = 76,     /* the supervisor spoke garbage on the IPC socket */
	EP_EXIT_CONFIG = 78,       /* fatal configuration error: not retried until it changes */
};

#endif /* EP_MASTER_INTERFACE_H */
