/* The supervisor's state, shared by supervisor.c (workers) and control.c (control socket). */
#ifndef EP_SUPERVISOR_H
#define EP_SUPERVISOR_H

#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include <cjson/cJSON.h>
#include <uv.h>

#include "backoff.h"
#include "config.h"
#include "sdnotify.h"
#include "ipc.h"
#include "tenant-set.h"

enum tenant_state {
	TENANT_STOPPED,   /* not running, nothing scheduled */
	TENANT_STARTING,  /* worker spawned, not READY yet */
	TENANT_READY,     /* endpoint answers */
	TENANT_UNHEALTHY, /* was ready, the last health check failed */
	TENANT_BACKOFF,   /* worker died, restart scheduled */
	TENANT_FAILED,    /* configuration error, or gave up restarting */
	TENANT_STOPPING,  /* asked to stop, waiting for the exit */
};

struct supervisor;
struct ctl_conn;

struct tenant {
	struct supervisor *sv;
	struct tenant *next;

	char *name;
	char *file;
	char *backend;   /* NULL for a file with an error */
	char *listen;
	char *prefix;
	char *payload;   /* CONFIGURE payload text; NULL for a file with an error */
	char *config_error; /* the file's error: the tenant never starts */
	int from_cluster;   /* an EtcdStorage of the cluster (kube-source.c) */

	enum tenant_state state;
	uv_process_t process;
	int process_alive;
	pid_t pid;
	uv_pipe_t ipc;
	int ipc_open;
	int configured;   /* this worker was sent CONFIGURE */
	struct ep_frame_reader reader;
	uv_timer_t timer; /* restart backoff and stop escalation */
	int handles;      /* open handles; the struct is freed when it drops to zero */

	struct ep_backoff backoff;
	unsigned spawns;   /* workers started for this configuration */
	unsigned restarts; /* spawns after the first, carried over to a successor */
	char *last_error;
	time_t last_error_time; /* wall clock: when last_error happened */
	char *fatal_reason; /* what the worker said in FATAL before exiting */
	int fatal_config;
	uint64_t started_ms; /* spawn time (monotonic) */
	uint64_t ready_ms;   /* first READY of this worker, 0 if not yet */
	int healthy;
	char *endpoint;
	cJSON *counters; /* the backend's counters from the last STATUS, or NULL */
	cJSON *counters_live; /* the same, while its worker runs */
	cJSON *counters_base; /* the exited workers' last counters, added up (metrics) */
	cJSON *certificates; /* the certificate source's describe() from the last STATUS, or NULL */
	int listen_fd;    /* bound here and passed to every worker (native), or -1 */

	int stop_phase;       /* 0 running, 1 STOP sent, 2 SIGTERM, 3 SIGKILL */
	int remove_on_exit;   /* removed by reload or shutdown: free after the exit */
	int restart_on_exit;  /* etcdproxyctl restart: spawn again at once */
	struct tenant *successor; /* changed by reload: replaces this one after its exit */
};

struct supervisor {
	uv_loop_t *loop;
	char *config_path;
	struct ep_global_config *global;
	struct ep_tenant_set set; /* the set the running tenants were built from */
	struct tenant *tenants;
	uint64_t generation;
	uint64_t started_ms;
	uint64_t last_reload_ms;
	char *last_reload_error;

	uv_signal_t sighup, sigterm, sigint;
	uv_timer_t watchdog;
	uv_pipe_t control;
	int control_open;
	char *control_path; /* the socket file we created, removed on exit */
	struct ctl_conn *control_conns; /* open connections (control.c), closed by control_stop() */
	struct kube_source *kube; /* the Kubernetes source, or NULL */
	struct metrics *metrics;  /* the metrics and health endpoints, or NULL */
	struct purge *purges;     /* pending purges of removed tenants (purge.c) */
	/* listening sockets systemd kept for us across a restart (FDSTORE), not yet claimed */
	struct ep_sd_fd *inherited;
	size_t n_inherited;
	uv_timer_t inherited_timer;
	int shutting_down;
	int exit_code;
};

/* supervisor.c */
const char *tenant_state_name(enum tenant_state s);
struct tenant *supervisor_find(struct supervisor *sv, const char *name);
/* Re-read the configuration.  Returns 0, or -EINVAL with *error_r (malloc'ed). summary_r: counts. */
int supervisor_reload(struct supervisor *sv, cJSON *summary, char **error_r);
/* Load the tenant set again with the current global settings (why: for the log). */
void supervisor_reload_tenants(struct supervisor *sv, const char *why);
/* Restart one tenant (also a failed one). Returns 0 or -ENOENT. */
int supervisor_restart_tenant(struct supervisor *sv, const char *name, char **error_r);
cJSON *tenant_to_json(const struct tenant *t, int detailed);
void supervisor_counts(const struct supervisor *sv, unsigned *total, unsigned *ready,
		       unsigned *failed);

/* control.c */
int control_start(struct supervisor *sv, char **error_r);
void control_stop(struct supervisor *sv);
/* A worker's CERTS_REPLY: answer the control connection that asked. */
struct ep_msg_certs_reply;
void control_certs_reply(struct supervisor *sv, const char *tenant,
			 const struct ep_msg_certs_reply *m);
/* The tenant's worker exited: answer its pending rotate / issue-client-cert with an error. */
void control_tenant_gone(struct supervisor *sv, const char *tenant);

#endif /* EP_SUPERVISOR_H */
