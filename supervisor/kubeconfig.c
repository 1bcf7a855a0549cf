/*
 * kubeconfig files (libyaml) and the in-cluster service account: see kubeconfig.h.
 */
#include "build-config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "files.h"
#include "kubeconfig.h"
#include "util.h"

#define KUBECONFIG_MAX (1 << 20)

struct kctx {
	const char *path;
	char *dir; /* relative paths are relative to the file's directory */
	yaml_document_t doc;
	char *error;
};

static int kfail(struct kctx *k, const yaml_node_t *n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int kfail(struct kctx *k, const yaml_node_t *n, const char *fmt, ...)
{
	va_list ap;
	char *msg;

	va_start(ap, fmt);
	msg = ep_strdup_vprintf(fmt, ap);
	va_end(ap);
	free(k->error);
	if (n != NULL)
		k->error = ep_strdup_printf("%s:%zu: %s", k->path, n->start_mark.line + 1, msg);
	else
		k->error = ep_strdup_printf("%s: %s", k->path, msg);
	free(msg);
	return -EINVAL;
}

static const char *scalar(const yaml_node_t *n)
{
	return n != NULL && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* The value of key in a mapping (and, in *key_r, the key's node: where errors point), or NULL. */
static yaml_node_t *get_at(yaml_document_t *d, const yaml_node_t *map, const char *key,
			   yaml_node_t **key_r)
{
	if (map == NULL || map->type != YAML_MAPPING_NODE)
		return NULL;
	for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
	     p++) {
		yaml_node_t *kn = yaml_document_get_node(d, p->key);
		const char *k = scalar(kn);

		if (k != NULL && strcmp(k, key) == 0) {
			if (key_r != NULL)
				*key_r = kn;
			return yaml_document_get_node(d, p->value);
		}
	}
	return NULL;
}

static yaml_node_t *get(yaml_document_t *d, const yaml_node_t *map, const char *key)
{
	return get_at(d, map, key, NULL);
}

/*
 * The entry named name of a list such as clusters: [{name, cluster: {...}}]:
 * its `field` mapping.  NULL with an error when it is not there.
 */
static yaml_node_t *named(struct kctx *k, const yaml_node_t *root, const char *list,
			  const char *field, const char *name)
{
	yaml_node_t *seq = get(&k->doc, root, list);

	if (seq != NULL && seq->type == YAML_SEQUENCE_NODE) {
		for (yaml_node_item_t *i = seq->data.sequence.items.start;
		     i < seq->data.sequence.items.top; i++) {
			yaml_node_t *e = yaml_document_get_node(&k->doc, *i);
			const char *n = scalar(get(&k->doc, e, "name"));

			if (n != NULL && strcmp(n, name) == 0) {
				yaml_node_t *v = get(&k->doc, e, field);

				if (v == NULL || v->type != YAML_MAPPING_NODE) {
					kfail(k, e, "%s[%s]: expected a mapping \"%s\"", list, name,
					      field);
					return NULL;
				}
				return v;
			}
		}
	}
	kfail(k, seq, "%s: no entry named \"%s\"", list, name);
	return NULL;
}

static char *resolve(const struct kctx *k, const char *p)
{
	return p[0] == '/' ? ep_strdup(p) : ep_strdup_printf("%s/%s", k->dir, p);
}

/* A file key (certificate-authority) or its -data twin, base64 inline. */
static int file_or_data(struct kctx *k, const yaml_node_t *m, const char *where, const char *key,
			char **file_r, struct ep_kube_blob *blob_r)
{
	char data_key[64];
	const yaml_node_t *f = get(&k->doc, m, key), *d;

	snprintf(data_key, sizeof(data_key), "%s-data", key);
	d = get(&k->doc, m, data_key);
	if (d != NULL) {
		if (scalar(d) == NULL || ep_base64_decode(scalar(d), &blob_r->data, &blob_r->len) < 0)
			return kfail(k, d, "%s.%s: expected base64 (as kubectl writes it)", where,
				     data_key);
		return 0;
	}
	if (f != NULL) {
		if (scalar(f) == NULL || scalar(f)[0] == '\0')
			return kfail(k, f, "%s.%s: expected a file name", where, key);
		*file_r = resolve(k, scalar(f));
	}
	return 0;
}

static int is_true(const yaml_node_t *n)
{
	const char *s = scalar(n);

	return s != NULL && (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 ||
			     strcmp(s, "yes") == 0);
}

static int load(struct kctx *k, struct ep_kube_conn *c)
{
	yaml_node_t *root = yaml_document_get_root_node(&k->doc), *ctx, *cluster, *user;
	const char *current, *cname, *uname, *server, *ns;
	char where[300];
	int r;

	if (root == NULL || root->type != YAML_MAPPING_NODE)
		return kfail(k, root, "expected a kubeconfig (a YAML mapping with clusters, "
			     "contexts, users and current-context)");
	current = scalar(get(&k->doc, root, "current-context"));
	if (current == NULL || current[0] == '\0')
		return kfail(k, root, "current-context is not set (kubectl config use-context "
			     "NAME --kubeconfig %s)", k->path);
	if ((ctx = named(k, root, "contexts", "context", current)) == NULL)
		return -EINVAL;
	cname = scalar(get(&k->doc, ctx, "cluster"));
	uname = scalar(get(&k->doc, ctx, "user"));
	if (cname == NULL)
		return kfail(k, ctx, "contexts[%s].context: no cluster", current);
	if ((cluster = named(k, root, "clusters", "cluster", cname)) == NULL)
		return -EINVAL;
	server = scalar(get(&k->doc, cluster, "server"));
	if (server == NULL || (strncmp(server, "https://", 8) != 0 &&
			       strncmp(server, "http://", 7) != 0))
		return kfail(k, cluster, "clusters[%s].cluster.server: expected an https:// (or "
			     "http://) URL", cname);
	c->server = ep_strdup(server);
	while (strlen(c->server) > 8 && c->server[strlen(c->server) - 1] == '/')
		c->server[strlen(c->server) - 1] = '\0';
	snprintf(where, sizeof(where), "clusters[%s].cluster", cname);
	if ((r = file_or_data(k, cluster, where, "certificate-authority", &c->ca_file, &c->ca)) < 0)
		return r;
	c->insecure = is_true(get(&k->doc, cluster, "insecure-skip-tls-verify"));
	ns = scalar(get(&k->doc, ctx, "namespace"));
	c->namespace = ep_strdup(ns);
	if (uname != NULL) {
		static const char *const refused[][2] = {
			{ "exec", "exec credential plugins are not supported: etcdproxyd runs "
				  "unattended; give it a certificate or a token of its own" },
			{ "auth-provider", "auth-provider plugins are not supported: give etcdproxyd "
					   "a certificate or a token of its own" },
			{ "username", "basic authentication is not supported: use a client "
				      "certificate or a token" },
		};
		yaml_node_t *t, *key = NULL;

		if ((user = named(k, root, "users", "user", uname)) == NULL)
			return -EINVAL;
		for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++)
			if (get_at(&k->doc, user, refused[i][0], &key) != NULL)
				return kfail(k, key, "users[%s].user.%s: %s", uname, refused[i][0],
					     refused[i][1]);
		snprintf(where, sizeof(where), "users[%s].user", uname);
		if ((r = file_or_data(k, user, where, "client-certificate", &c->cert_file,
				      &c->cert)) < 0 ||
		    (r = file_or_data(k, user, where, "client-key", &c->key_file, &c->key)) < 0)
			return r;
		if ((c->cert_file || c->cert.data) != (c->key_file || c->key.data))
			return kfail(k, user, "%s: a client certificate needs its key, and a key "
				     "its certificate", where);
		if ((t = get(&k->doc, user, "token")) != NULL && scalar(t) != NULL)
			c->token = ep_strdup(scalar(t));
		if ((t = get(&k->doc, user, "tokenFile")) != NULL && scalar(t) != NULL)
			c->token_file = resolve(k, scalar(t));
	}
	c->origin = ep_strdup_printf("kubeconfig %s, context %s", k->path, current);
	return 0;
}

int ep_kubeconfig_load(const char *path, struct ep_kube_conn *c, char **error_r)
{
	struct kctx k = { .path = path };
	yaml_parser_t parser;
	char *text = NULL, *slash;
	size_t len;
	int r;

	memset(c, 0, sizeof(*c));
	*error_r = NULL;
	if (ep_file_read(path, KUBECONFIG_MAX, &text, &len, error_r) < 0)
		return -EINVAL;
	k.dir = ep_strdup(path);
	slash = strrchr(k.dir, '/');
	if (slash != NULL)
		*(slash == k.dir ? slash + 1 : slash) = '\0';
	else
		strcpy(k.dir, ".");
	yaml_parser_initialize(&parser);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &k.doc)) {
		*error_r = ep_strdup_printf("%s:%zu: %s", path, parser.problem_mark.line + 1,
					    parser.problem ? parser.problem : "not YAML");
		yaml_parser_delete(&parser);
		free(text);
		free(k.dir);
		return -EINVAL;
	}
	r = load(&k, c);
	yaml_document_delete(&k.doc);
	yaml_parser_delete(&parser);
	free(text);
	free(k.dir);
	if (r < 0) {
		*error_r = k.error;
		ep_kube_conn_free(c);
		return r;
	}
	return 0;
}

int ep_kube_in_cluster(const char *sa_dir, struct ep_kube_conn *c, char **error_r)
{
	const char *host = getenv("KUBERNETES_SERVICE_HOST");
	const char *port = getenv("KUBERNETES_SERVICE_PORT");
	char *path, *ns = NULL, *err = NULL;
	size_t len;

	memset(c, 0, sizeof(*c));
	if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0') {
		*error_r = ep_strdup("kubeconfig \"in-cluster\": KUBERNETES_SERVICE_HOST and "
				     "KUBERNETES_SERVICE_PORT are not set (not running in a pod?)");
		return -EINVAL;
	}
	c->server = ep_strdup_printf(strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s",
				     host, port);
	c->ca_file = ep_strdup_printf("%s/ca.crt", sa_dir);
	c->token_file = ep_strdup_printf("%s/token", sa_dir);
	path = ep_strdup_printf("%s/namespace", sa_dir);
	if (ep_file_read(path, 4096, &ns, &len, &err) == 0) {
		while (len > 0 && (ns[len - 1] == '\n' || ns[len - 1] == ' '))
			ns[--len] = '\0';
		c->namespace = ns;
	}
	free(err); /* no namespace file: the configured namespace is used */
	free(path);
	c->origin = ep_strdup_printf("in-cluster (%s)", sa_dir);
	*error_r = NULL;
	return 0;
}

void ep_kube_conn_free(struct ep_kube_conn *c)
{
	free(c->server);
	free(c->ca_file);
	free(c->ca.data);
	free(c->cert_file);
	free(c->cert.data);
	free(c->key_file);
	free(c->key.data);
	free(c->token);
	free(c->token_file);
	free(c->namespace);
	free(c->origin);
	memset(c, 0, sizeof(*c));
}
