/*
 * How etcdproxyd reaches the Kubernetes API server: a kubeconfig file (its
 * current context) or the pod's service account ("in-cluster").
 *
 * Supported: server, certificate-authority(-data), client-certificate(-data),
 * client-key(-data), token, tokenFile, insecure-skip-tls-verify, the context's
 * namespace.  exec and auth-provider plugins, and basic authentication, are
 * refused: the daemon runs unattended on a control-plane node and has a
 * node identity of its own (README, "Running on a cluster").
 */
#ifndef EP_KUBECONFIG_H
#define EP_KUBECONFIG_H

#include <stddef.h>

struct ep_kube_blob {
	char *data; /* PEM bytes, NUL-terminated; NULL when absent */
	size_t len;
};

struct ep_kube_conn {
	char *server;    /* "https://10.0.0.1:6443", without a trailing slash */
	char *ca_file;   /* a path, or the PEM in ca */
	struct ep_kube_blob ca;
	char *cert_file; /* the client certificate: a path, or the PEM in cert */
	struct ep_kube_blob cert;
	char *key_file;
	struct ep_kube_blob key;
	char *token;      /* a bearer token given inline */
	char *token_file; /* a bearer token read from this file (re-read: it rotates) */
	int insecure;     /* insecure-skip-tls-verify: true */
	char *namespace;  /* the context's namespace, or the service account's; NULL when unset */
	char *origin;     /* for messages: "kubeconfig FILE, context C" or "in-cluster" */
};

/*
 * Read a kubeconfig.  Relative paths in it are relative to its directory, as
 * kubectl has them.  Returns 0, or -EINVAL with *error_r (malloc'ed):
 * "FILE:LINE: users[admin].user: exec plugins are not supported ...".
 */
int ep_kubeconfig_load(const char *path, struct ep_kube_conn *c, char **error_r);

/*
 * The pod's service account: token, ca.crt and namespace in sa_dir, the
 * server from KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT.
 */
int ep_kube_in_cluster(const char *sa_dir, struct ep_kube_conn *c, char **error_r);

void ep_kube_conn_free(struct ep_kube_conn *c);

#endif /* EP_KUBECONFIG_H */
