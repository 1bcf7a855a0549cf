/*
 * The global configuration (etcdproxyd.json) and the tenants (EtcdStorage
 * objects under storages_dir), parsed and validated.  Every error message is
 * "FILE:LINE:COLUMN: what was wrong, what was expected".
 */
#ifndef EP_CONFIG_H
#define EP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

#include "log.h"

#define EP_API_VERSION "etcd.xmudrii.com/v1alpha1"
#define EP_KIND "EtcdStorage"
#define EP_TENANT_NAME_MAX 59

#ifndef SYSCONFDIR
#define SYSCONFDIR "/etc"
#endif
#define EP_DEFAULT_CONFIG SYSCONFDIR "/etcdproxy/etcdproxyd.json"

/* A key prefix of the core etcd that no tenant's prefix may overlap. */
struct ep_reserved_prefix {
	char *prefix;
	/* what reserves it, for error messages: "reserved_prefixes (FILE:LINE:COL)", ... */
	char *origin;
};

struct ep_core_etcd_config {
	char **endpoints; /* URLs: "https://127.0.0.1:2379" */
	size_t n_endpoints;
	char *ca_file;   /* NULL: none (plain http endpoints) */
	char *cert_file;
	char *key_file;
};

struct ep_global_config {
	char *path; /* the file it came from */
	char *storages_dir;
	char *state_dir;
	char *runtime_dir;
	char *plugin_dir;
	char *worker_path;
	char *ctl_path;     /* etcdproxyctl, which runs the purges of deletionPolicy Purge */
	char *control_socket;
	enum ep_log_level log_level;
	struct ep_core_etcd_config core;

	/* EP_OWN_PREFIX (etcdproxy/plugin.h) first, then reserved_prefixes or its default */
	struct ep_reserved_prefix *reserved;
	size_t n_reserved;

	/* defaults for tenants */
	char *default_backend;
	uint64_t default_signing_validity_ms;
	uint64_t default_serving_validity_ms;
	uint64_t default_client_validity_ms;

	/* supervision */
	uint64_t stop_timeout_ms;     /* from STOP to SIGKILL */
	uint64_t backoff_initial_ms;  /* first restart delay */
	uint64_t backoff_max_ms;      /* cap of the doubling delay */
	uint64_t stable_after_ms;     /* a worker up this long has its failures forgotten */
	unsigned max_failures;        /* consecutive failures before a tenant is marked failed */
	uint64_t purge_delay_ms;      /* from a Purge tenant's removal to its purge */
	uint64_t start_timeout_ms;    /* from spawn to the worker's HELLO */

	/* the Kubernetes source (etcdproxyd.json(5), "kubernetes"): off when kubeconfig is NULL */
	struct ep_kube_settings {
		char *kubeconfig;          /* a path, or "in-cluster"; NULL: no cluster tenants */
		char *namespace;           /* etcdproxyd's own: its Lease and CA Secret */
		char *node_name;           /* this node in status.nodes and the Lease (hostname) */
		char *node_address;        /* where ":PORT" listen addresses bind here; NULL: all */
		char *service_account_dir; /* in-cluster credentials */
		uint64_t lease_duration_ms, renew_deadline_ms, retry_period_ms;
		uint64_t resync_ms;        /* status re-check of every cluster tenant */
	} kube;

	/* the audit log of the tenants (etcdproxyd.json(5), "audit"; spec.audit) */
	struct ep_audit_settings {
		char *directory;  /* DIRECTORY/NAME.log, rotated to NAME.log.1 ... */
		unsigned max_size; /* bytes of one file before it is rotated */
		unsigned files;    /* rotated files kept besides the current one */
		int on;            /* "default": for native tenants without spec.audit */
	} audit;

	/* metrics and health endpoints (etcdproxyd.json(5), "metrics"): off when listen is NULL */
	struct ep_metrics_settings {
		char *listen; /* "HOST:PORT" or "unix:PATH" */
	} metrics;

	/* per-plugin options: {"etcd": {...}}; owned */
	cJSON *backends;
	/* per certificate source options: {"ca": {...}}; owned */
	cJSON *certs;
};

/* spec.tls of a tenant: TLS towards its clients. */
struct ep_client_cert_config {
	char *name;       /* common name of the client certificate, and its state file name */
	char *output_dir; /* tls.crt, tls.key and ca.crt are kept there */
};

struct ep_tls_config {
	int enabled;  /* default 1; 0 only on loopback or a Unix socket */
	char *source; /* certificate source plugin: "ca" (default) or "files" */
	char **server_names; /* extra names (DNS or IP) for the serving certificate */
	size_t n_server_names;
	struct ep_client_cert_config *client_certs; /* source "ca" only */
	size_t n_client_certs;
	/* source "files": PEM paths (ca_file optional) */
	char *cert_file, *key_file, *client_ca_file, *ca_file;
};

struct ep_k8s_ref {
	char *name;
	char *namespace;
};

struct ep_tenant_config {
	char *file;   /* the EtcdStorage file */
	char *name;   /* metadata.name */
	char *prefix; /* "/<name>/" */
	char *backend;
	char *listen; /* "HOST:PORT" or "unix:/path" */
	uint64_t signing_validity_ms;
	uint64_t serving_validity_ms;
	uint64_t client_validity_ms;
	struct ep_k8s_ref *ca_cert_config_maps;
	size_t n_ca_cert_config_maps;
	struct ep_k8s_ref *client_cert_secrets;
	size_t n_client_cert_secrets;
	char *compaction; /* spec.policy.compaction: "ignore", "allow", "deny"; NULL: the backend's default */
	int audit;        /* spec.audit: 1, 0, or -1 when absent (audit.default decides) */
	/* spec.rateLimit (the native backend's token bucket); set: the field is there */
	struct ep_rate_limit {
		int set;
		unsigned requests_per_second, burst, max_queue, max_watches;
		uint64_t max_wait_ms;
		uint64_t bytes_per_second; /* 0: none */
	} rate_limit;
	/* spec.quota (the native backend's usage limits; 0: no limit); set: the field is there */
	struct ep_quota {
		int set;
		unsigned max_keys, max_leases;
		uint64_t max_bytes;
	} quota;
	struct ep_tls_config tls;
	int deletion_purge; /* spec.deletionPolicy: 1 Purge, 0 Retain (the default) */
	/* spec.external (the external backend: a proxy someone else runs); set: the field is there */
	struct ep_external {
		int set;
		char *check;       /* "grpc" (default) or "http" */
		char *health_url;  /* check "http": the URL */
		uint64_t interval_ms, timeout_ms;
		char *client_dir;  /* check "grpc" over TLS: tls.crt, tls.key, ca.crt */
		char *certs_dir;   /* where the proxy's certificates are published */
	} external;
};

/* A size: an integer or a Kubernetes quantity ("512Mi", "2G").  0, or -1 when it is not one. */
int ep_parse_quantity(const char *s, uint64_t *out);

/*
 * Load and validate the global configuration.  Returns 0 and *cfg_r, or a
 * negative errno code and *error_r (malloc'ed, caller frees).
 */
int ep_global_config_load(const char *path, struct ep_global_config **cfg_r, char **error_r);
void ep_global_config_free(struct ep_global_config *cfg);

/*
 * Load and validate one EtcdStorage file against the global configuration.
 * Returns 0 and *tenant_r, or a negative errno code and *error_r
 * (malloc'ed).  When the name could be read before the error, *name_r
 * (malloc'ed, may be NULL) gets it so that the error can be shown under it.
 */
int ep_tenant_config_load(const char *path, const struct ep_global_config *global,
			  struct ep_tenant_config **tenant_r, char **name_r, char **error_r);
void ep_tenant_config_free(struct ep_tenant_config *tenant);

/*
 * 1 for backends that serve on a listening socket the supervisor binds and
 * passes (EP_LISTEN_FD): "native".  The others bind their own ("etcd": the
 * stock grpc-proxy takes only an address).
 */
int ep_backend_takes_socket(const char *backend);

/*
 * 1 when one of the byte strings a and b is a prefix of the other (so a key
 * range under one can hold keys under the other), else 0.  An empty string
 * overlaps everything.
 */
int ep_prefix_overlaps(const char *a, const char *b);

/*
 * The one check every tenant source makes before a tenant may run: 0 when
 * prefix overlaps no reserved prefix of g, else -EPERM and *why_r (malloc'ed):
 * the tenant, its prefix, the reserved prefix it hits and what reserves it.
 */
int ep_tenant_prefix_check(const struct ep_global_config *g, const char *name,
			   const char *prefix, char **why_r);

/* 1 when name is a valid tenant name (lower-case DNS-1123 subdomain, <= 59). */
int ep_tenant_name_valid(const char *name);

/*
 * Check a listen address: "HOST:PORT" ("[::1]:PORT" for IPv6) or
 * "unix:/absolute/path".  tls: 0 for plaintext, which is allowed only on
 * loopback and Unix sockets.  Returns 0 or -EINVAL with a static
 * explanation in *why_r.
 */
int ep_listen_validate(const char *listen, int tls, const char **why_r);

/*
 * The whole effective configuration of one worker: the CONFIGURE payload.
 * Deterministic, so its text is also the fingerprint that reload compares.
 */
/*
 * Where the ca source keeps what the Kubernetes source publishes for a
 * tenant: the client certificate of a spec.clientCertSecret entry, or, with
 * secret NULL, the CA bundle for spec.caCertConfigMap when no Secret is asked
 * for (malloc'ed).
 */
/* Whether the tenant's worker writes an audit log: spec.audit, else audit.default (native only). */
int ep_tenant_audits(const struct ep_global_config *g, const struct ep_tenant_config *t);
char *ep_kube_output_dir(const struct ep_global_config *g, const char *tenant,
			 const struct ep_k8s_ref *secret);

cJSON *ep_worker_config_build(const struct ep_global_config *global,
			      const struct ep_tenant_config *tenant);

#endif /* EP_CONFIG_H */
