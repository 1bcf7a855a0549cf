/*
 * etcdproxy plugin SDK: the whole contract between an etcdproxy worker and
 * the backend or certificate-source plugins it loads.
 *
 * A plugin is a shared object named "<kind>-<name>.so" in the plugin
 * directory (backend-etcd.so, certs-ca.so, ...).  It exports exactly one
 * symbol, EP_PLUGIN_SYMBOL, a const struct ep_plugin.  The worker opens the
 * file by absolute path, with immediate binding, checks abi_version, kind and
 * name, then calls init() once and the kind's operations afterwards, all from
 * the worker's single libuv loop thread.
 *
 * Build a plugin out of tree with:
 *   cc $(pkg-config --cflags etcdproxy-plugin) -o backend-foo.so foo.c \
 *      $(pkg-config --libs etcdproxy-plugin)
 *
 * ABI versioning: EP_PLUGIN_ABI_VERSION changes only when a struct in this
 * header changes incompatibly.  New callbacks go into the reserved slots, which
 * the host always zeroes, so an older plugin keeps working.
 */
#ifndef ETCDPROXY_PLUGIN_H
#define ETCDPROXY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI this header describes. A plugin stores it in ep_plugin.abi_version. */
#define EP_PLUGIN_ABI_VERSION 1u

/** The name of the one symbol a plugin exports. */
#define EP_PLUGIN_SYMBOL ep_plugin_descriptor
#define EP_PLUGIN_SYMBOL_NAME "ep_plugin_descriptor"

/** Marks the descriptor as the one exported symbol (build with -fvisibility=hidden). */
#define EP_PLUGIN_EXPORT __attribute__((visibility("default")))

/** What a plugin provides. The file name prefix follows the kind. */
enum ep_plugin_kind {
	EP_PLUGIN_BACKEND = 1, /* "backend-<name>.so": carries a tenant's traffic */
	EP_PLUGIN_CERTS = 2,   /* "certs-<name>.so": provides a tenant's TLS material */
};

/** Log levels, the syslog numbers journald understands. */
enum ep_log_level {
	EP_LOG_ERR = 3,
	EP_LOG_WARNING = 4,
	EP_LOG_NOTICE = 5,
	EP_LOG_INFO = 6,
	EP_LOG_DEBUG = 7,
};

/**
 * etcdproxy's own key prefix in the core etcd.  A plugin that keeps records
 * there (the native backend's lease owners) keeps them under this prefix,
 * which no tenant's prefix may overlap, whatever reserved_prefixes says.
 */
#define EP_OWN_PREFIX "/__etcdproxy/"

/** The core etcd a backend forwards to (from the global configuration). */
struct ep_core_etcd {
	const char *const *endpoints; /* URLs, "https://127.0.0.1:2379" */
	size_t n_endpoints;
	const char *ca_file;   /* PEM bundle that verifies the core etcd, or NULL */
	const char *cert_file; /* client certificate for the core etcd, or NULL */
	const char *key_file;  /* its private key, or NULL */
};

/**
 * The tenant a worker serves.  Owned by the host, valid from init() until
 * fini() returns; plugins copy what they keep longer.
 */
struct ep_tenant_info {
	const char *name;        /* metadata.name, "a" */
	const char *prefix;      /* key prefix, "/a/" */
	const char *listen;      /* "HOST:PORT" or "unix:PATH" */
	const char *state_dir;   /* private, persistent directory of this tenant (exists, 0700) */
	const char *runtime_dir; /* private runtime directory of this tenant (exists, 0700) */
	const char *source_file; /* the EtcdStorage file it came from, for messages */
	struct ep_core_etcd core;
	/*
	 * Options for this plugin as a JSON object text ("{}" when none): the
	 * global "backends"/"certs" section for the plugin's name.  The plugin
	 * validates it and rejects unknown keys through init()'s error_r.
	 */
	const char *options_json;
	/*
	 * The tenant's spec.policy as a JSON object text ("{}" when absent),
	 * already validated by the supervisor: {"compaction": "ignore"|"allow"|"deny"}.
	 */
	const char *policy_json;
	/*
	 * A listening socket the supervisor bound for this tenant and keeps
	 * across worker restarts (libuv: uv_tcp_open() or uv_pipe_open(), then
	 * uv_listen()), or -1: the backend binds listen itself.  Do not unlink a
	 * Unix socket you did not bind.
	 */
	int listen_fd;
	/*
	 * The tenant's spec.tls as a JSON object text, already validated by the
	 * supervisor, or NULL when TLS towards clients is off.  Fields:
	 * "source" ("ca"|"files"), "serverNames" [..], "clientCertificates"
	 * [{"name","outputDir"}], "files" {"certFile","keyFile","clientCAFile",
	 * "caFile"}, and the validities in milliseconds ("signing_validity_ms",
	 * "serving_validity_ms", "client_validity_ms").  Certificate plugins read
	 * it; backends get the resulting material through ep_host.tls_material.
	 */
	const char *tls_json;
	void *reserved[5];
};

/**
 * A tenant's current TLS material towards its clients, as files: what a
 * certificate-source plugin publishes and a backend serves with.  Every
 * path names a complete, consistent file that stays in place at least until
 * the next material has been published and the backend's tls_changed()
 * has returned.
 */
struct ep_tls_material {
	const char *cert_file;      /* serving certificate chain (leaf first), PEM */
	const char *key_file;       /* its private key, PEM */
	const char *client_ca_file; /* CAs a client certificate must chain to, PEM bundle */
	/*
	 * The bundle clients verify the serving certificate with (what is
	 * published as ca.crt), or NULL when the source does not know it.
	 */
	const char *ca_file;
	/* Bumped by the source on every publish; the host numbers nothing itself. */
	uint64_t generation;
	/* 1 when client_ca_file's content differs from the previous material's. */
	int client_ca_changed;
	void *reserved[4];
};

/**
 * The options of a plugin (its "backends" or "certs" section of the global
 * configuration) described as a table, so that the host parses and checks
 * them for the plugin and `etcdproxyd --check-config` judges them without
 * starting a tenant, with the same code.  See ep_plugin.options and
 * ep_host.options_parse.
 */
enum ep_option_type {
	EP_OPT_END = 0,  /* ends the table */
	EP_OPT_UINT,     /* a whole JSON number in [min, max]; stored as uint64_t */
	EP_OPT_NUMBER,   /* a JSON number in [min, max]; stored as double */
	EP_OPT_DURATION, /* a Go duration ("5s", "1h30m", "500us"); stored as uint64_t
			    milliseconds, in [min, max] ms */
	EP_OPT_ENUM,     /* one of values[]; stored as int, the index in values */
	EP_OPT_STRING,   /* a non-empty string; stored as char * */
	EP_OPT_PATH,     /* an absolute path; stored as char * */
	EP_OPT_STRINGS,  /* an array of strings; stored as struct ep_option_strings */
};

/** EP_OPT_PATH: the file must exist and be executable. */
#define EP_OPT_EXECUTABLE 0x1u

/** The value of an EP_OPT_STRINGS option. */
struct ep_option_strings {
	char **v; /* n strings, then NULL */
	size_t n;
};

/**
 * One option.  Where a key is left out, the value in the plugin's struct
 * stays as the plugin set it before calling options_parse (its default).
 * Strings are malloc'ed, owned by the plugin's struct: free() them, and an
 * EP_OPT_STRINGS value's v[] and v; a value already there is freed and
 * replaced.
 */
struct ep_option {
	const char *name;           /* the key, "idle_timeout" */
	uint32_t type;              /* enum ep_option_type */
	uint32_t flags;             /* EP_OPT_EXECUTABLE */
	size_t offset;              /* offsetof() the value in the plugin's options struct */
	double min, max;            /* UINT, NUMBER; DURATION in milliseconds */
	const char *const *values;  /* ENUM: the names, NULL-terminated */
	const char *help;           /* what the value is, for messages ("bytes"); may be NULL */
};

struct ep_host;

/**
 * What the host (the worker) offers a plugin.  All functions must be called
 * from the loop thread.
 */
struct ep_host {
	uint32_t abi_version;                /* the host's EP_PLUGIN_ABI_VERSION */
	uv_loop_t *loop;                     /* the worker's loop; plugins add handles to it */
	const struct ep_tenant_info *tenant; /* the tenant being served */

	/** Log one line, prefixed with the plugin and tenant by the host. */
	void (*log)(struct ep_host *host, enum ep_log_level level, const char *fmt, ...)
		__attribute__((format(printf, 3, 4)));

	/**
	 * The tenant's endpoint answers requests.  Call it every time the
	 * endpoint becomes ready again (after a restart of a child, say); the host
	 * reports READY to the supervisor on the first call and health afterwards.
	 * endpoint: the address clients use, copied by the host.
	 */
	void (*ready)(struct ep_host *host, const char *endpoint);

	/**
	 * The result of a health check.  healthy: 1 or 0; reason: why it is
	 * unhealthy (copied; may be NULL when healthy).  The host forwards changes
	 * to the supervisor.
	 */
	void (*health)(struct ep_host *host, int healthy, const char *reason);

	/**
	 * The backend cannot go on.  The worker exits, with the "fatal
	 * configuration" code when fatal_config is 1 (the supervisor will not
	 * retry until the configuration changes), else with the "unavailable"
	 * code (the supervisor retries with backoff).  reason is copied.
	 */
	void (*fail)(struct ep_host *host, int fatal_config, const char *reason);

	/** The graceful stop asked for with stop() has finished. */
	void (*stopped)(struct ep_host *host);

	/**
	 * Spawn a helper program that must not outlive the worker: like
	 * uv_spawn(), but the child gets PR_SET_PDEATHSIG(SIGKILL) before exec,
	 * so it dies even when the worker is killed with SIGKILL.  Returns 0 or a
	 * negative libuv error code.
	 */
	int (*spawn)(struct ep_host *host, uv_process_t *process,
		     const uv_process_options_t *options);

	/**
	 * For backends: the tenant's current TLS material towards clients, or
	 * NULL when the tenant is served without TLS (spec.tls.enabled false).
	 * Valid until the backend's tls_changed() is called again.
	 */
	const struct ep_tls_material *(*tls_material)(struct ep_host *host);

	/**
	 * For certificate sources: new material is in place (copied by the
	 * host).  The host calls the backend's tls_changed() before this
	 * returns, so the source may remove the previous files afterwards.
	 */
	void (*tls_publish)(struct ep_host *host, const struct ep_tls_material *material);

	/**
	 * For certificate sources: what is shown under "certificates" by
	 * `etcdproxyctl show` changed (a rotation, a reload, an error); the host
	 * calls describe() and reports it to the supervisor.
	 */
	void (*certs_changed)(struct ep_host *host);

	/**
	 * Parse tenant->options_json by the plugin's table (ep_plugin.options)
	 * into out, the plugin's options struct, which holds the defaults.
	 * Unknown keys and values of the wrong type or out of range are errors.
	 * Returns 0, or -EINVAL and *error_r: one line that names the key and
	 * the value, "backends.native.idle_timeout: expected a duration ...,
	 * got \"x\"", owned by the host and valid until init() returns, so
	 * that init() can hand it on as its own error_r.
	 */
	int (*options_parse)(struct ep_host *host, void *out, const char **error_r);

	void *reserved[4];
};

/** Operations of a backend plugin (ep_plugin.kind == EP_PLUGIN_BACKEND). */
struct ep_backend_ops {
	/**
	 * Start serving.  Called once after init().  Return 0 and call
	 * host->ready() later when the endpoint answers, or return a negative
	 * errno code with a static or plugin-owned reason in *error_r.
	 */
	int (*start)(void *state, const char **error_r);

	/**
	 * Stop serving: drain, then call host->stopped().  graceful: 0 means
	 * stop at once.  May be called more than once (a second call escalates).
	 */
	void (*stop)(void *state, int graceful);

	/*
	 * Optional (NULL: none).  The backend's counters as one JSON object
	 * (malloc'ed; the host frees it), e.g. {"calls": 12, "bytes_in": 3400}.
	 * The worker reports them to the supervisor every few seconds.
	 */
	char *(*counters)(void *state);

	/*
	 * Optional (NULL: TLS material is read once, at start).  New TLS
	 * material towards clients was published (host->tls_material()): new
	 * handshakes must use it from now on, open connections go on
	 * undisturbed.  When it cannot be used, keep the old material and log
	 * why.
	 */
	void (*tls_changed)(void *state);

	/*
	 * Optional (NULL: the policy is read once, at init, and a change
	 * restarts the worker).  A reload changed only the tenant's limits
	 * (spec.quota, spec.rateLimit): host->tenant->policy_json has the new
	 * policy.  Apply it to the running backend, open connections and calls
	 * undisturbed.  Return 0, or a negative errno code with a static reason
	 * in *error_r: the worker then restarts with the new policy.
	 */
	int (*policy_changed)(void *state, const char **error_r);

	void *reserved[5];
};

/**
 * Operations of a certificate-source plugin (EP_PLUGIN_CERTS).  The host
 * loads it before the backend when the tenant has TLS on, calls refresh()
 * once before the backend starts, and stop() when the worker stops.
 */
struct ep_certs_ops {
	/**
	 * Make sure the tenant's TLS material exists and is current, and
	 * publish it with host->tls_publish() before returning 0.  Afterwards
	 * the plugin keeps it current on its own (timers, file watches on the
	 * host's loop).  Returns 0 or a negative errno code with a reason in
	 * *error_r; -EINVAL means the configuration or the files are wrong.
	 */
	int (*refresh)(void *state, const char **error_r);

	/* Close every handle the plugin opened on the loop; fini() follows. */
	void (*stop)(void *state);

	/*
	 * The certificates in use, for `etcdproxyctl show`, as a JSON array text
	 * (malloc'ed; the host frees it) of objects {"role", "subject", "serial",
	 * "issuer", "not_before", "not_after"} with an optional "state" (what
	 * the source does with it: "signing", "expired", ...) and "file".  Roles:
	 * "serving", "intermediate", "serving-ca", "client-ca", "ca", "client",
	 * "client-record".  A failure the source keeps working around (a broken
	 * new file, a failed renewal) is an entry {"role": "error", "error": "...",
	 * "since": "..."}.  NULL: nothing to show.
	 */
	char *(*describe)(void *state);

	/*
	 * Optional.  Start a rotation now (`etcdproxyctl rotate`): new CAs and
	 * then new leaf certificates, in the same safe order as scheduled ones.
	 * Returns 0 or a negative errno code with a reason in *error_r.
	 */
	int (*rotate)(void *state, const char **error_r);

	/*
	 * Optional.  Issue one extra client certificate with common name cn
	 * into the directory out_dir (tls.crt, tls.key, ca.crt).  Returns 0 and
	 * a JSON object text describing it in *result_r (malloc'ed), or a
	 * negative errno code with a reason in *error_r (malloc'ed).
	 */
	int (*issue_client)(void *state, const char *cn, const char *out_dir, char **result_r,
			    char **error_r);

	void *reserved[4];
};

/** The one descriptor a plugin exports as EP_PLUGIN_SYMBOL. */
struct ep_plugin {
	uint32_t abi_version;    /* EP_PLUGIN_ABI_VERSION the plugin was built with */
	uint32_t kind;           /* enum ep_plugin_kind */
	const char *name;        /* "etcd": must match the file name "backend-etcd.so" */
	const char *description; /* one line for etcdproxyctl and logs */

	/**
	 * Prepare the plugin for host->tenant.  Store the plugin's state in
	 * *state_r (passed back to every operation and to fini()).  Return 0, or
	 * a negative errno code with a reason in *error_r; -EINVAL means the
	 * configuration is wrong and will not get better by retrying.
	 */
	int (*init)(struct ep_host *host, void **state_r, const char **error_r);

	/** Free the state.  Every handle the plugin opened must be closed by now. */
	void (*fini)(void *state);

	/** struct ep_backend_ops or struct ep_certs_ops, by kind. */
	const void *ops;

	/**
	 * The plugin's options, ended by an EP_OPT_END entry (only that entry:
	 * the plugin takes none).  With it the host parses them for the plugin
	 * (ep_host.options_parse) and `etcdproxyd --check-config` judges them
	 * with the same checker.  NULL: init() checks options_json itself, and
	 * --check-config cannot judge it.
	 */
	const struct ep_option *options;

	void *reserved[7];
};

#ifdef __cplusplus
}
#endif

#endif /* ETCDPROXY_PLUGIN_H */
