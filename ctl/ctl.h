/*
 * etcdproxyctl's parts: the control-socket commands (etcdproxyctl.c) and the
 * data commands, which talk to the core etcd itself (data.c).
 */
#ifndef EP_CTL_H
#define EP_CTL_H

#include <stdint.h>
#include <cjson/cJSON.h>

enum { EXIT_DONE = 0, EXIT_REFUSED = 1, EXIT_USAGE = 2, EXIT_NO_DAEMON = 3, EXIT_NOT_READY = 4 };

/*
 * One request on the control socket: 0 and the reply (the caller frees it),
 * or -1 with *why_r (static or errno text) when the daemon is not reachable.
 */
int ctl_request(const char *sock, cJSON *req, cJSON **reply_r, const char **why_r);

/* The data commands' options (NULL / 0: not given). */
struct data_opts {
	const char *config;  /* the global configuration: core_etcd, reserved prefixes */
	const char *sock;    /* the control socket (NULL: the configuration's) */
	const char *out;     /* export: the file (NULL or "-": standard output) */
	const char *from_file, *from_etcd, *prefix;
	const char *cacert, *cert, *key; /* --from-etcd's TLS */
	uint64_t max_request;            /* the core's request limit (bytes) */
	int force, yes;
};

/* export NAME, import NAME, purge NAME: an exit code. */
int ctl_data(const char *cmd, const char *name, const struct data_opts *o);

#endif /* EP_CTL_H */
