/*
 * kubeconfig files as kubectl and kubeadm write them (supervisor/kubeconfig.c),
 * the in-cluster service account, and the base64 both rely on.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "files.h"
#include "kubeconfig.h"
#include "util.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/ep-test-kubeconfig-XXXXXX");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int teardown(void **state)
{
	char *error = NULL;

	(void)state;
	assert_int_equal(ep_dir_remove_tree(dir, &error), 0);
	return 0;
}

static char *write_conf(const char *name, const char *text)
{
	char *path = ep_strdup_printf("%s/%s", dir, name);
	char *error = NULL;

	assert_int_equal(ep_file_write_atomic(path, text, strlen(text), 0600, &error), 0);
	return path;
}

static void test_base64(void **state)
{
	static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const coded[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=",
					     "Zm9vYmFy" };
	char *out;
	size_t len;

	(void)state;
	for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		char *e = ep_base64_encode(plain[i], strlen(plain[i]));

		assert_string_equal(e, coded[i]);
		free(e);
		assert_int_equal(ep_base64_decode(coded[i], &out, &len), 0);
		assert_int_equal(len, strlen(plain[i]));
		assert_string_equal(out, plain[i]);
		free(out);
	}
	/* line breaks, as in PEM-like text, are skipped */
	assert_int_equal(ep_base64_decode("Zm9v\nYmFy\n", &out, &len), 0);
	assert_string_equal(out, "foobar");
	free(out);
	assert_int_equal(ep_base64_decode("Zm9v!", &out, &len), -EINVAL);
	assert_int_equal(ep_base64_decode("Zm=9", &out, &len), -EINVAL);
}

#define HEAD                                                                                 \
	"apiVersion: v1\n"                                                                   \
	"kind: Config\n"

/* kubeadm's admin.conf shape: everything inline */
static void test_inline_data(void **state)
{
	char *ca = ep_base64_encode("CA PEM", 6), *crt = ep_base64_encode("CRT PEM", 7);
	char *key = ep_base64_encode("KEY PEM", 7);
	char *text = ep_strdup_printf(
		HEAD "clusters:\n"
		"- cluster:\n"
		"    certificate-authority-data: %s\n"
		"    server: https://10.0.0.1:6443/\n"
		"  name: kubernetes\n"
		"contexts:\n"
		"- context:\n"
		"    cluster: kubernetes\n"
		"    user: etcdproxy-node\n"
		"    namespace: etcdproxy\n"
		"  name: etcdproxy@kubernetes\n"
		"current-context: etcdproxy@kubernetes\n"
		"users:\n"
		"- name: etcdproxy-node\n"
		"  user:\n"
		"    client-certificate-data: %s\n"
		"    client-key-data: %s\n",
		ca, crt, key);
	char *path = write_conf("inline.conf", text), *error = NULL;
	struct ep_kube_conn c;

	(void)state;
	assert_int_equal(ep_kubeconfig_load(path, &c, &error), 0);
	assert_null(error);
	assert_string_equal(c.server, "https://10.0.0.1:6443");
	assert_string_equal(c.ca.data, "CA PEM");
	assert_int_equal(c.ca.len, 6);
	assert_string_equal(c.cert.data, "CRT PEM");
	assert_string_equal(c.key.data, "KEY PEM");
	assert_null(c.ca_file);
	assert_null(c.cert_file);
	assert_string_equal(c.namespace, "etcdproxy");
	assert_int_equal(c.insecure, 0);
	ep_kube_conn_free(&c);
	free(path);
	free(text);
	free(ca);
	free(crt);
	free(key);
}

/* file paths, relative to the kubeconfig's directory, and a token file */
static void test_paths_and_token(void **state)
{
	char *path = write_conf("paths.conf",
				HEAD "current-context: c\n"
				"clusters:\n"
				"- name: k\n"
				"  cluster:\n"
				"    server: https://k.example:6443\n"
				"    certificate-authority: pki/ca.crt\n"
				"    insecure-skip-tls-verify: true\n"
				"contexts:\n"
				"- name: c\n"
				"  context: {cluster: k, user: u}\n"
				"users:\n"
				"- name: u\n"
				"  user:\n"
				"    tokenFile: /var/run/token\n"
				"    token: abc\n");
	char *error = NULL, *want;
	struct ep_kube_conn c;

	(void)state;
	assert_int_equal(ep_kubeconfig_load(path, &c, &error), 0);
	want = ep_strdup_printf("%s/pki/ca.crt", dir);
	assert_string_equal(c.ca_file, want);
	free(want);
	assert_string_equal(c.token, "abc");
	assert_string_equal(c.token_file, "/var/run/token");
	assert_int_equal(c.insecure, 1);
	assert_null(c.namespace);
	assert_non_null(strstr(c.origin, "context c"));
	ep_kube_conn_free(&c);
	free(path);
}

/* every refusal says where and why */
static void test_refused(void **state)
{
	static const struct {
		const char *text, *message;
	} cases[] = {
		{ HEAD "clusters: []\n", "inline.conf:1: current-context is not set" },
		{ HEAD "current-context: x\ncontexts: []\n",
		  "inline.conf:4: contexts: no entry named \"x\"" },
		{ HEAD "current-context: c\n"
		       "contexts:\n- name: c\n  context: {cluster: k, user: u}\n"
		       "clusters:\n- name: k\n  cluster: {server: https://k}\n"
		       "users:\n- name: u\n  user:\n    exec:\n      command: aws\n",
		  "inline.conf:13: users[u].user.exec: exec credential plugins are not supported" },
		{ HEAD "current-context: c\n"
		       "contexts:\n- name: c\n  context: {cluster: k, user: u}\n"
		       "clusters:\n- name: k\n  cluster: {server: https://k}\n"
		       "users:\n- name: u\n  user:\n    auth-provider: {name: gcp}\n",
		  "inline.conf:13: users[u].user.auth-provider: auth-provider plugins are not" },
		{ HEAD "current-context: c\n"
		       "contexts:\n- name: c\n  context: {cluster: k}\n"
		       "clusters:\n- name: k\n  cluster: {server: ftp://k}\n",
		  "inline.conf:9: clusters[k].cluster.server: expected an https:// (or http://) URL" },
		{ HEAD "current-context: c\n"
		       "contexts:\n- name: c\n  context: {cluster: k, user: u}\n"
		       "clusters:\n- name: k\n  cluster:\n    server: https://k\n"
		       "    certificate-authority-data: '%%%'\n",
		  "inline.conf:11: clusters[k].cluster.certificate-authority-data: expected base64" },
		{ HEAD "current-context: c\n"
		       "contexts:\n- name: c\n  context: {cluster: k, user: u}\n"
		       "clusters:\n- name: k\n  cluster: {server: https://k}\n"
		       "users:\n- name: u\n  user: {client-certificate: a.crt}\n",
		  "users[u].user: a client certificate needs its key" },
		{ "a: [b\n", "inline.conf:2: " },
	};

	int bad = 0;

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *path = write_conf("inline.conf", cases[i].text), *error = NULL;
		struct ep_kube_conn c;

		assert_int_equal(ep_kubeconfig_load(path, &c, &error), -EINVAL);
		if (error == NULL || strstr(error, cases[i].message) == NULL) {
			print_error("case %zu: got \"%s\", expected it to contain \"%s\"\n", i,
				    error, cases[i].message);
			bad++;
		}
		free(error);
		free(path);
	}
	assert_int_equal(bad, 0);
}

static void test_in_cluster(void **state)
{
	char *error = NULL, *p;
	struct ep_kube_conn c;

	(void)state;
	unsetenv("KUBERNETES_SERVICE_HOST");
	assert_int_equal(ep_kube_in_cluster(dir, &c, &error), -EINVAL);
	assert_non_null(strstr(error, "KUBERNETES_SERVICE_HOST"));
	free(error);
	setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
	setenv("KUBERNETES_SERVICE_PORT", "443", 1);
	p = write_conf("namespace", "etcdproxy\n");
	free(p);
	assert_int_equal(ep_kube_in_cluster(dir, &c, &error), 0);
	assert_string_equal(c.server, "https://[fd00::1]:443");
	assert_string_equal(c.namespace, "etcdproxy");
	p = ep_strdup_printf("%s/token", dir);
	assert_string_equal(c.token_file, p);
	free(p);
	ep_kube_conn_free(&c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_base64),
		cmocka_unit_test_setup_teardown(test_inline_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_paths_and_token, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_in_cluster, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
