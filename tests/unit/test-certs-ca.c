/*
 * The ca certificate source, driven through simulated time: certificate
 * contents (checked with OpenSSL's own verification), the rotation order,
 * bundle merge and pruning, reuse of the state after a restart, and the
 * shared duration parser.  The plugin is compiled into the test, so that its
 * clock can be turned.
 */
#include "build-config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../plugins/certs-ca/certs-ca.c"
#include "options.h"

#define UNUSED __attribute__((unused))
#define GRACE_MS 2000

static int64_t fake_now;
static int64_t fake_clock(void)
{
	return fake_now;
}

struct fixture {
	char dir[64];
	char state_dir[128], out_dir[128];
	char *tls_json;
	struct ep_tenant_info info;
	struct ep_host host;
	struct ca_state *st;
	int publishes;
	struct ep_tls_material last;
	char cert_file[256], client_ca_file[256];
};

static struct fixture *F;

static void fake_log(struct ep_host *h, enum ep_log_level level, const char *fmt, ...)
{
	if (getenv("TEST_VERBOSE") != NULL) {
		va_list ap;

		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
}

static void fake_publish(struct ep_host *h, const struct ep_tls_material *m)
{
	F->publishes++;
	F->last = *m;
	snprintf(F->cert_file, sizeof(F->cert_file), "%s", m->cert_file);
	snprintf(F->client_ca_file, sizeof(F->client_ca_file), "%s", m->client_ca_file);
}

static void fake_changed(struct ep_host *h)
{
}

static void start_plugin(struct fixture *f)
{
	const char *err = NULL;

	assert_int_equal(ca_init(&f->host, (void **)&f->st, &err), 0);
	assert_int_equal(ca_refresh(f->st, &err), 0);
}

static void stop_plugin(struct fixture *f)
{
	ca_stop(f->st);
	uv_run(f->host.loop, UV_RUN_NOWAIT);
	ca_fini(f->st);
	f->st = NULL;
}

/* The worker's options_parse: the plugin's table through the one checker (lib/options.c). */
static int fake_options_parse(struct ep_host *host, void *out, const char **error_r)
{
	static char *error; /* the host's: kept until the next call */
	cJSON *o = cJSON_Parse(host->tenant->options_json);
	const cJSON *node;
	int r;

	free(error);
	error = NULL;
	r = ep_options_apply(ca_options, "certs.ca", o, out, &node, &error);
	cJSON_Delete(o);
	*error_r = error;
	return r;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	F = f;
	strcpy(f->dir, "/tmp/ep-test-ca-XXXXXX");
	if (mkdtemp(f->dir) == NULL)
		return -1;
	snprintf(f->state_dir, sizeof(f->state_dir), "%s/state", f->dir);
	snprintf(f->out_dir, sizeof(f->out_dir), "%s/out/api", f->dir);
	mkdir(f->state_dir, 0700);
	f->tls_json = ep_strdup_printf("{\"source\":\"ca\",\"serverNames\":[\"etcd.example.com\",\"10.1.2.3\"],"
			      "\"clientCertificates\":[{\"name\":\"apiserver\",\"outputDir\":\"%s\"}],"
			      "\"signing_validity_ms\":30000,\"serving_validity_ms\":9000,"
			      "\"client_validity_ms\":9000}", f->out_dir);
	f->info.name = "t";
	f->info.listen = "127.0.0.1:23790";
	f->info.state_dir = f->state_dir;
	f->info.options_json = "{\"grace\": \"2s\"}";
	f->info.tls_json = f->tls_json;
	f->info.listen_fd = -1;
	f->host.abi_version = EP_PLUGIN_ABI_VERSION;
	f->host.loop = uv_default_loop();
	f->host.tenant = &f->info;
	f->host.log = fake_log;
	f->host.tls_publish = fake_publish;
	f->host.certs_changed = fake_changed;
	f->host.options_parse = fake_options_parse;
	fake_now = (int64_t)time(NULL) * 1000;
	clock_ms = fake_clock;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char *err = NULL;

	if (f->st != NULL)
		stop_plugin(f);
	ep_dir_remove_tree(f->dir, &err);
	free(err);
	free(f->tls_json);
	free(f);
	return 0;
}

/* Verify leaf (first of file) against bundle at time t (ms) for purpose. */
static int verify_at(const char *leaf_file, const char *bundle_file, const char *purpose,
		     int64_t t, char **why)
{
	STACK_OF(X509) *leaf = NULL, *bundle = NULL;
	X509_STORE *store = X509_STORE_new();
	X509_STORE_CTX *ctx = X509_STORE_CTX_new();
	char *err = NULL;
	int ok;

	assert_int_equal(ep_pem_load_certs(leaf_file, &leaf, &err), 0);
	assert_int_equal(ep_pem_load_certs(bundle_file, &bundle, &err), 0);
	for (int i = 0; i < sk_X509_num(bundle); i++)
		X509_STORE_add_cert(store, sk_X509_value(bundle, i));
	X509_STORE_CTX_init(ctx, store, sk_X509_value(leaf, 0), NULL);
	X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), (time_t)(t / 1000));
	X509_STORE_CTX_set_purpose(ctx, strcmp(purpose, "server") == 0 ? X509_PURPOSE_SSL_SERVER
								   : X509_PURPOSE_SSL_CLIENT);
	ok = X509_verify_cert(ctx) == 1;
	if (!ok && why != NULL)
		*why = ep_strdup(X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
	X509_STORE_CTX_free(ctx);
	X509_STORE_free(store);
	sk_X509_pop_free(leaf, X509_free);
	sk_X509_pop_free(bundle, X509_free);
	return ok;
}

static X509 *load_one(const char *path)
{
	STACK_OF(X509) *s = NULL;
	char *err = NULL;
	X509 *x;

	if (ep_pem_load_certs(path, &s, &err) < 0)
		fail_msg("%s", err);
	x = sk_X509_shift(s);
	sk_X509_pop_free(s, X509_free);
	return x;
}

static char *file_text(const char *path)
{
	char *data = NULL, *err = NULL;

	if (ep_file_read(path, 1 << 20, &data, NULL, &err) < 0)
		fail_msg("%s", err);
	return data;
}

/* ---- tests ------------------------------------------------------------------------------ */

static void test_contents(void **state)
{
	struct fixture *f = *state;
	char p[300], *why = NULL;
	struct stat stt;
	X509 *x;

	start_plugin(f);
	assert_int_equal(f->publishes, 1);
	assert_true(f->last.client_ca_changed);

	/* the serving certificate: for a server, from the serving CA, with every name */
	snprintf(p, sizeof(p), "%s/ca/current/serving-ca-bundle.crt", f->state_dir);
	if (!verify_at(f->cert_file, p, "server", fake_now, &why))
		fail_msg("the serving certificate does not verify: %s", why);
	assert_false(verify_at(f->cert_file, f->client_ca_file, "server", fake_now, NULL));
	assert_false(verify_at(f->cert_file, p, "client", fake_now, NULL));
	x = load_one(f->cert_file);
	assert_int_equal(X509_check_ca(x), 0);
	assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
	assert_int_equal(X509_check_ip_asc(x, "10.1.2.3", 0), 1);
	assert_int_equal(X509_check_host(x, "etcd.example.com", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
	assert_int_equal(X509_check_host(x, "other.example.com", 0, 0, NULL), 0);
	assert_true(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);
	assert_false(X509_get_extended_key_usage(x) & XKU_SSL_CLIENT);
	assert_non_null(X509_get0_subject_key_id(x));
	assert_non_null(X509_get0_authority_key_id(x));
	/* a random positive serial of at least 121 bits */
	{
		BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);

		assert_false(BN_is_negative(bn));
		assert_true(BN_num_bits(bn) > 120);
		BN_free(bn);
	}
	/* 9 s, from a tenth of that before now: a peer's clock may be behind */
	assert_in_range(ep_x509_not_after(x) - ep_x509_not_before(x), 9, 10);
	assert_in_range(fake_now / 1000 - ep_x509_not_before(x), 1, 2);
	assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
	X509_free(x);

	/* the client certificate, published the kubelet's way, trusted by the client bundle */
	snprintf(p, sizeof(p), "%s/tls.crt", f->out_dir);
	if (!verify_at(p, f->client_ca_file, "client", fake_now, &why))
		fail_msg("the client certificate does not verify: %s", why);
	x = load_one(p);
	assert_true(X509_get_extended_key_usage(x) & XKU_SSL_CLIENT);
	assert_int_equal(X509_check_host(x, "apiserver", 0, 0, NULL), 1); /* by its CN */
	X509_free(x);
	{
		char key[300], link[300], target[64];
		EVP_PKEY *k = NULL;
		char *err = NULL;
		ssize_t n;

		snprintf(key, sizeof(key), "%s/tls.key", f->out_dir);
		assert_int_equal(ep_pem_load_key(key, &k, &err), 0);
		x = load_one(p);
		assert_int_equal(ep_tls_check_pair(x, k, "crt", "key", &err), 0);
		X509_free(x);
		EVP_PKEY_free(k);
		assert_int_equal(stat(key, &stt), 0);
		assert_int_equal(stt.st_mode & 0777, 0600);
		snprintf(link, sizeof(link), "%s/tls.crt", f->out_dir);
		n = readlink(link, target, sizeof(target) - 1);
		assert_true(n > 0);
		target[n] = '\0';
		assert_string_equal(target, "..data/tls.crt");
	}
	/* ca.crt is the serving CA bundle: what verifies the proxy */
	{
		char ca[300], *a, *b;

		snprintf(ca, sizeof(ca), "%s/ca.crt", f->out_dir);
		snprintf(p, sizeof(p), "%s/ca/current/serving-ca-bundle.crt", f->state_dir);
		a = file_text(ca);
		b = file_text(p);
		assert_string_equal(a, b);
		free(a);
		free(b);
	}
	/* private keys are 0600 in the state too */
	snprintf(p, sizeof(p), "%s/ca/current/serving.key", f->state_dir);
	assert_int_equal(stat(p, &stt), 0);
	assert_int_equal(stt.st_mode & 0777, 0600);
	/* the CAs */
	x = load_one(f->client_ca_file);
	assert_int_equal(X509_check_ca(x), 1);
	assert_in_range(ep_x509_not_after(x) - ep_x509_not_before(x), 30, 34);
	X509_free(x);
	free(why);
}

/*
 * A hundred simulated seconds in 500 ms steps, with every invariant
 * checked at every step: a serving certificate verifies against the bundle
 * clients hold, it only ever comes from a CA published at least the grace
 * period before; a client certificate handed out within the grace period
 * still verifies against the proxy's client bundle; no expired CA stays in a
 * bundle; old CAs are pruned.
 */
static void test_rotation_order(void **state)
{
	struct fixture *f = *state;
	char ca_path[300], crt_path[300], *why = NULL;
	int64_t start = fake_now;
	/* serving CA serial -> when clients first saw it in ca.crt */
	char seen_serial[64][40];
	int64_t seen_at[64];
	int n_seen = 0, serving_cas = 0, leaf_changes = 0;
	char last_leaf[64] = "";
	/* client certificates handed out, with when they were replaced */
	char client_files[64][1024];
	int64_t replaced_at[64];
	int n_clients = 0;

	start_plugin(f);
	snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", f->out_dir);
	snprintf(crt_path, sizeof(crt_path), "%s/tls.crt", f->out_dir);
	for (; fake_now < start + 100000; fake_now += 500) {
		char *err = NULL;
		STACK_OF(X509) *bundle = NULL;
		X509 *leaf;
		char *serial;

		assert_int_equal(run(f->st, 0, &err), 0);
		/* what clients trust now */
		assert_int_equal(ep_pem_load_certs(ca_path, &bundle, &err), 0);
		assert_true(sk_X509_num(bundle) <= 3);
		for (int i = 0; i < sk_X509_num(bundle); i++) {
			X509 *ca = sk_X509_value(bundle, i);
			char *s = ep_x509_serial_hex(ca);
			int known = 0;

			assert_true(ep_x509_not_after(ca) * 1000 >= fake_now - 1000);
			for (int j = 0; j < n_seen; j++)
				known |= strcmp(seen_serial[j], s) == 0;
			if (!known && n_seen < 64) {
				snprintf(seen_serial[n_seen], sizeof(seen_serial[0]), "%s", s);
				seen_at[n_seen++] = fake_now;
				serving_cas++;
			}
			free(s);
		}
		sk_X509_pop_free(bundle, X509_free);

		/* the serving certificate verifies against what clients hold */
		if (!verify_at(f->cert_file, ca_path, "server", fake_now, &why))
			fail_msg("t+%lld ms: serving certificate does not verify against ca.crt: %s",
				 (long long)(fake_now - start), why);
		leaf = load_one(f->cert_file);
		serial = ep_x509_serial_hex(leaf);
		if (strcmp(serial, last_leaf) != 0) {
			char *issuer_serial = NULL;

			for (int j = 0; j < n_seen && fake_now > start; j++) {
				char p[512];
				X509 *ca;

				snprintf(p, sizeof(p), "%s/ca/current/serving-ca.%.39s.crt", f->state_dir,
					 seen_serial[j]);
				if (access(p, F_OK) != 0)
					continue;
				ca = load_one(p);
				if (X509_check_issued(ca, leaf) == X509_V_OK &&
				    seen_at[j] > start && fake_now - seen_at[j] < GRACE_MS)
					fail_msg("t+%lld ms: a serving certificate from a CA clients "
						 "have known for %lld ms only",
						 (long long)(fake_now - start),
						 (long long)(fake_now - seen_at[j]));
				X509_free(ca);
			}
			free(issuer_serial);
			snprintf(last_leaf, sizeof(last_leaf), "%s", serial);
			leaf_changes++;
		}
		free(serial);
		X509_free(leaf);

		/* client certificates: the current and every one replaced within the grace */
		{
			char *cur = file_text(crt_path);
			char *prev = n_clients > 0 ? file_text(client_files[n_clients - 1]) : NULL;
			int new_one = prev == NULL || strcmp(cur, prev) != 0;

			free(prev);

			if (new_one && n_clients < 64) {
				if (n_clients > 0)
					replaced_at[n_clients - 1] = fake_now;
				snprintf(client_files[n_clients], sizeof(client_files[0]),
					 "%s/client-%d.crt", f->dir, n_clients);
				ep_file_write_atomic(client_files[n_clients], cur, strlen(cur), 0644,
						     &err);
				replaced_at[n_clients++] = INT64_MAX;
			}
			free(cur);
		}
		for (int j = 0; j < n_clients; j++) {
			if (replaced_at[j] != INT64_MAX && fake_now >= replaced_at[j] + GRACE_MS)
				continue;
			X509 *c = load_one(client_files[j]);
			int expired = ep_x509_not_after(c) * 1000 < fake_now;

			X509_free(c);
			if (expired)
				continue;
			if (!verify_at(client_files[j], f->client_ca_file, "client", fake_now, &why))
				fail_msg("t+%lld ms: client certificate %d (replaced %lld ms ago) "
					 "no longer trusted: %s", (long long)(fake_now - start), j,
					 replaced_at[j] == INT64_MAX ? 0LL
								     : (long long)(fake_now - replaced_at[j]),
					 why);
		}
	}
	/* 100 s with CAs of 30 s renewed at 20 s: at least four serving CAs seen */
	assert_true(serving_cas >= 5);
	assert_true(leaf_changes >= 10);
	assert_true(n_clients >= 10);
	/* pruned: at most the signer and one more */
	assert_true(f->st->n_cas[SERVING] <= 2);
	assert_true(f->st->n_cas[CLIENT] <= 2);
	free(why);
}

/* A restart reuses the state; a half-written generation is thrown away. */
static void test_restart_reuses(void **state)
{
	struct fixture *f = *state;
	char p[300], *before, *after, *err = NULL;
	uint64_t gen;

	start_plugin(f);
	gen = f->st->generation;
	snprintf(p, sizeof(p), "%s/ca/current/serving.crt", f->state_dir);
	before = file_text(p);
	stop_plugin(f);

	/* what a crash between writing a generation and switching to it leaves */
	snprintf(p, sizeof(p), "%s/ca/gen-%06llu", f->state_dir, (unsigned long long)gen + 1);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/ca/gen-%06llu/serving.crt", f->state_dir,
		 (unsigned long long)gen + 1);
	ep_file_write_atomic(p, "garbage", 7, 0644, &err);

	fake_now += 1000;
	start_plugin(f);
	assert_int_equal(f->st->generation, gen); /* nothing was due: nothing new */
	snprintf(p, sizeof(p), "%s/ca/current/serving.crt", f->state_dir);
	after = file_text(p);
	assert_string_equal(before, after);
	snprintf(p, sizeof(p), "%s/ca/gen-%06llu", f->state_dir, (unsigned long long)gen + 1);
	assert_int_equal(access(p, F_OK), -1);
	free(before);
	free(after);

	/* a damaged state is an error that says where, not a silent new CA */
	stop_plugin(f);
	snprintf(p, sizeof(p), "%s/ca/current/serving.key", f->state_dir);
	ep_file_write_atomic(p, "not a key\n", 10, 0600, &err);
	{
		const char *e = NULL;

		assert_int_equal(ca_init(&f->host, (void **)&f->st, &e), 0);
		assert_int_equal(ca_refresh(f->st, &e), -EINVAL);
		assert_non_null(strstr(e, "serving.key"));
		assert_non_null(strstr(e, "damaged"));
	}
}

/* etcdproxyctl rotate and issue-client-cert */
static void test_rotate_and_issue(void **state)
{
	struct fixture *f = *state;
	const char *e = NULL;
	char *result = NULL, *err = NULL, out[300], p[400];
	char *old_ca;

	start_plugin(f);
	old_ca = ep_strdup(f->st->cas[SERVING][0].c.serial);
	fake_now += 3000;
	assert_int_equal(ca_rotate(f->st, &e), 0);
	assert_int_equal(f->st->n_cas[SERVING], 2);
	assert_int_equal(f->st->n_cas[CLIENT], 2);
	/* a second rotation while the first waits for its grace is refused */
	assert_int_equal(ca_rotate(f->st, &e), -EBUSY);
	assert_non_null(strstr(e, "already under way"));
	/* still signed by the old CA until the grace period is over */
	assert_true(issued_by(&f->st->serving, &f->st->cas[SERVING][0]));
	fake_now += GRACE_MS;
	assert_int_equal(run(f->st, 0, &err), 0);
	assert_true(issued_by(&f->st->serving, &f->st->cas[SERVING][1]));
	/* the old serving CA signs nothing live any more: gone */
	assert_int_equal(f->st->n_cas[SERVING], 1);
	assert_string_not_equal(f->st->cas[SERVING][0].c.serial, old_ca);
	free(old_ca);

	/* an extra client certificate, trusted by the proxy's bundle */
	snprintf(out, sizeof(out), "%s/extra", f->dir);
	assert_int_equal(ca_issue_client(f->st, "operator", out, &result, &err), 0);
	assert_non_null(strstr(result, "CN=operator"));
	snprintf(p, sizeof(p), "%s/tls.crt", out);
	assert_true(verify_at(p, f->client_ca_file, "client", fake_now, NULL));
	free(result);
	/* it keeps its CA in the bundle after a client CA rotation, until it expires */
	fake_now += 1000;
	assert_int_equal(ca_rotate(f->st, &e), 0);
	fake_now += GRACE_MS * 2;
	assert_int_equal(run(f->st, 0, &err), 0);
	assert_true(verify_at(p, f->client_ca_file, "client", fake_now, NULL));
	assert_int_equal(f->st->n_cas[CLIENT], 2);
	fake_now += 9000;
	assert_int_equal(run(f->st, 0, &err), 0);
	assert_int_equal(f->st->n_cas[CLIENT], 1);
}

static void test_options(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *options, *error;
	} bad[] = {
		{ "{\"grace\": \"1h\"}", "certs.ca.grace (3600000 ms) is too long" },
		{ "{\"grace\": \"soon\"}", "certs.ca.grace: expected a duration" },
		{ "{\"key_type\": \"dsa\"}", "certs.ca.key_type: expected" },
		{ "{\"renew_fraction\": 1.5}", "certs.ca.renew_fraction: expected a number" },
		{ "{\"colour\": 1}", "certs.ca: unknown key \"colour\"" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *e = NULL;
		void *st = NULL;

		f->info.options_json = bad[i].options;
		assert_int_equal(ca_init(&f->host, &st, &e), -EINVAL);
		if (e == NULL || strstr(e, bad[i].error) == NULL)
			fail_msg("%s: got \"%s\", expected \"%s\"", bad[i].options, e ? e : "",
				 bad[i].error);
	}
	/* RSA on request: its key generation takes a minute under valgrind, so only without */
	if (getenv("EP_UNDER_VALGRIND") != NULL) {
		printf("# the RSA key type is checked in the runs without valgrind\n");
		return;
	}
	f->info.options_json = "{\"grace\": \"2s\", \"key_type\": \"rsa-2048\"}";
	start_plugin(f);
	X509 *x = load_one(f->cert_file);
	assert_int_equal(EVP_PKEY_get_base_id(X509_get0_pubkey(x)), EVP_PKEY_RSA);
	assert_int_equal(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
	X509_free(x);
}

/*
 * An event that fell due while a run was writing (fsync takes its time) is
 * the next event still, not skipped until whatever comes after it.
 */
static void test_schedule_late(void **state)
{
	struct fixture *f = *state;
	int64_t due;

	start_plugin(f);
	due = renew_at(&f->st->serving, f->st->renew_fraction);
	assert_true(due > f->st->last_run_ms);
	assert_int_equal(next_event(f->st, f->st->last_run_ms), due);
	/* the run at last_run_ms ended after due: still due, and first */
	fake_now = due + 30;
	assert_int_equal(next_event(f->st, f->st->last_run_ms), due);
	/* and once a run has seen it, the renewal is done and the next event is later */
	char *err = NULL;
	assert_int_equal(run(f->st, 0, &err), 0);
	assert_true(next_event(f->st, f->st->last_run_ms) > fake_now);
	assert_true(renew_at(&f->st->serving, f->st->renew_fraction) > due);
}

/* ---- two nodes of a cluster sharing the CAs (cluster.json) ------------------------------- */

struct node2 {
	char state_dir[128], out_dir[128], cert_file[256], client_ca_file[256];
	char *tls_json;
	struct ep_tenant_info info;
	struct ep_host host;
	struct ca_state *st;
};

static struct node2 *N2;

static void node2_publish(struct ep_host *h, const struct ep_tls_material *m)
{
	snprintf(N2->cert_file, sizeof(N2->cert_file), "%s", m->cert_file);
	snprintf(N2->client_ca_file, sizeof(N2->client_ca_file), "%s", m->client_ca_file);
}

static void write_cluster_json(const char *state_dir, int lead, const char *shared)
{
	char p[300], *text, *err = NULL;

	snprintf(p, sizeof(p), "%s/ca", state_dir);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/ca/cluster.json", state_dir);
	text = shared ? ep_strdup_printf("{\"version\":1,\"lead\":%s,\"ca\":%s}",
					 lead ? "true" : "false", shared)
		      : ep_strdup_printf("{\"version\":1,\"lead\":%s}", lead ? "true" : "false");
	if (ep_file_write_atomic(p, text, strlen(text), 0600, &err) < 0)
		fail_msg("%s", err);
	free(text);
}

/* What the supervisor does: the leader's shared.json to the follower, when it changed. */
static int sync_follower(struct fixture *f, struct node2 *n, char **last)
{
	char p[300];
	char *doc;

	snprintf(p, sizeof(p), "%s/ca/current/shared.json", f->state_dir);
	doc = file_text(p);
	if (*last != NULL && strcmp(*last, doc) == 0) {
		free(doc);
		return 0;
	}
	write_cluster_json(n->state_dir, 0, doc);
	free(*last);
	*last = doc;
	return 1;
}

/*
 * The leader rotates, the follower takes its CAs: through 100 s of
 * rotations, the follower's serving certificate verifies against the ca.crt
 * the leader hands to clients, the leader's client certificates (current, and
 * replaced within the grace) are trusted by the follower, and the follower
 * never makes a CA of its own, nor rotates or issues.
 */
static void test_shared_follower(void **state)
{
	struct fixture *f = *state;
	struct node2 n = { 0 };
	char ca_path[300], crt_path[300], prev_client[300], *why = NULL, *last = NULL;
	char *err = NULL, *result = NULL;
	const char *e = NULL;
	int64_t start = fake_now, replaced = INT64_MAX;
	int syncs = 0, follower_leaves = 0;
	char last_leaf[64] = "";

	N2 = &n;
	snprintf(n.state_dir, sizeof(n.state_dir), "%s/state2", f->dir);
	snprintf(n.out_dir, sizeof(n.out_dir), "%s/out2/api", f->dir);
	mkdir(n.state_dir, 0700);
	n.tls_json = ep_strdup_printf("{\"source\":\"ca\",\"clientCertificates\":[{\"name\":"
				      "\"apiserver\",\"outputDir\":\"%s\"}],"
				      "\"signing_validity_ms\":30000,\"serving_validity_ms\":9000,"
				      "\"client_validity_ms\":9000}", n.out_dir);
	n.info = f->info;
	n.info.listen = "127.0.0.2:23790";
	n.info.state_dir = n.state_dir;
	n.info.tls_json = n.tls_json;
	/* the follower's own grace differs: the leader's counts */
	n.info.options_json = "{\"grace\": \"5s\"}";
	n.host = f->host;
	n.host.tenant = &n.info;
	n.host.tls_publish = node2_publish;

	write_cluster_json(f->state_dir, 1, NULL);
	start_plugin(f);
	assert_true(f->st->shared);
	assert_false(f->st->follow);
	snprintf(ca_path, sizeof(ca_path), "%s/ca.crt", f->out_dir);
	snprintf(crt_path, sizeof(crt_path), "%s/tls.crt", f->out_dir);
	snprintf(prev_client, sizeof(prev_client), "%s/prev-client.crt", f->dir);

	sync_follower(f, &n, &last);
	assert_int_equal(ca_init(&n.host, (void **)&n.st, &e), 0);
	assert_int_equal(ca_refresh(n.st, &e), 0);
	assert_true(n.st->follow);
	assert_int_equal(n.st->grace_ms, GRACE_MS);

	for (; fake_now < start + 100000; fake_now += 500) {
		char *cur, *prev;
		X509 *leaf;
		char *serial;

		prev = file_text(crt_path);
		assert_int_equal(run(f->st, 0, &err), 0);
		cur = file_text(crt_path);
		if (strcmp(prev, cur) != 0) {
			/* the leader replaced its client certificate: the old one stays in use a while */
			ep_file_write_atomic(prev_client, prev, strlen(prev), 0644, &err);
			replaced = fake_now;
		}
		free(prev);
		free(cur);
		if (sync_follower(f, &n, &last)) {
			syncs++;
			on_cluster_timer(&n.st->cluster_timer);
		}
		assert_int_equal(run(n.st, 0, &err), 0);

		/* the follower serves with what clients of the cluster trust */
		if (!verify_at(n.cert_file, ca_path, "server", fake_now, &why))
			fail_msg("t+%lld ms: the follower's serving certificate does not verify "
				 "against the leader's ca.crt: %s", (long long)(fake_now - start), why);
		/* and trusts the client certificates the leader hands out */
		if (!verify_at(crt_path, n.client_ca_file, "client", fake_now, &why))
			fail_msg("t+%lld ms: the leader's client certificate is not trusted by the "
				 "follower: %s", (long long)(fake_now - start), why);
		if (replaced != INT64_MAX && fake_now < replaced + GRACE_MS) {
			X509 *c = load_one(prev_client);
			int live = ep_x509_not_after(c) * 1000 >= fake_now;

			X509_free(c);
			if (live && !verify_at(prev_client, n.client_ca_file, "client", fake_now, &why))
				fail_msg("t+%lld ms: a client certificate replaced %lld ms ago is no "
					 "longer trusted by the follower: %s",
					 (long long)(fake_now - start), (long long)(fake_now - replaced),
					 why);
		}
		/* the same CAs on both nodes, none of the follower's own */
		assert_int_equal(n.st->n_cas[SERVING], f->st->n_cas[SERVING]);
		assert_int_equal(n.st->n_cas[CLIENT], f->st->n_cas[CLIENT]);
		for (int k = 0; k < 2; k++)
			for (size_t i = 0; i < n.st->n_cas[k]; i++)
				assert_string_equal(n.st->cas[k][i].c.serial, f->st->cas[k][i].c.serial);
		leaf = load_one(n.cert_file);
		serial = ep_x509_serial_hex(leaf);
		if (strcmp(serial, last_leaf) != 0) {
			snprintf(last_leaf, sizeof(last_leaf), "%s", serial);
			follower_leaves++;
		}
		/* its own address, not the leader's */
		assert_int_equal(X509_check_ip_asc(leaf, "127.0.0.2", 0), 1);
		assert_int_not_equal(X509_check_ip_asc(leaf, "127.0.0.1", 0), 1);
		free(serial);
		X509_free(leaf);
	}
	assert_true(syncs >= 8);
	assert_true(follower_leaves >= 10);

	/* a follower neither rotates nor issues: the leader must know every certificate */
	assert_int_equal(ca_rotate(n.st, &e), -EBUSY);
	assert_non_null(strstr(e, "another node leads"));
	assert_int_equal(ca_issue_client(n.st, "x", f->dir, &result, &err), -EBUSY);
	free(err);
	err = NULL;

	/* a cluster.json that is not one is refused, and the CAs stay */
	{
		char p[300];
		char *before = fingerprint(n.st->cas, n.st->n_cas), *after;

		snprintf(p, sizeof(p), "%s/ca/cluster.json", n.state_dir);
		ep_file_write_atomic(p, "{\"version\":1,\"lead\":false}", 26, 0600, &err);
		on_cluster_timer(&n.st->cluster_timer);
		assert_non_null(n.st->cluster_error);
		assert_non_null(strstr(n.st->cluster_error, "needs the leader's CAs"));
		after = fingerprint(n.st->cas, n.st->n_cas);
		assert_string_equal(before, after);
		free(after);
		write_cluster_json(n.state_dir, 0, "{\"version\":1,\"tenant\":\"other\","
				   "\"grace_ms\":1,\"serving\":[],\"client\":[]}");
		on_cluster_timer(&n.st->cluster_timer);
		assert_non_null(strstr(n.st->cluster_error, "the CAs of tenant \"other\""));
		after = fingerprint(n.st->cas, n.st->n_cas);
		assert_string_equal(before, after);
		free(after);
		free(before);
	}

	/* the follower becomes the leader: it keeps the CAs and rotates them itself */
	write_cluster_json(n.state_dir, 1, last);
	on_cluster_timer(&n.st->cluster_timer);
	assert_null(n.st->cluster_error);
	assert_false(n.st->follow);
	assert_int_equal(n.st->grace_ms, 5000); /* its own again */
	{
		char *mine = fingerprint(n.st->cas, n.st->n_cas);
		char *theirs = fingerprint(f->st->cas, f->st->n_cas);
		size_t before;

		assert_string_equal(mine, theirs); /* the CAs it took */
		free(mine);
		free(theirs);
		/* the former leader's client certificate stays trusted for the grace period */
		{
			int found = 0;

			for (size_t i = 0; i < n.st->n_records; i++)
				if (strcmp(n.st->records[i].serial, f->st->clients[0].c.serial) == 0) {
					found = 1;
					assert_true(n.st->records[i].until_ms <= fake_now + 5000);
					assert_true(n.st->records[i].until_ms > fake_now);
				}
			assert_true(found);
		}
		fake_now += 6000;
		assert_int_equal(run(n.st, 0, &err), 0);
		/* its shared.json says whose CAs it took, however its first runs change them */
		{
			char p[300], *doc, *fp = fingerprint(f->st->cas, f->st->n_cas);
			cJSON *o;

			snprintf(p, sizeof(p), "%s/ca/current/shared.json", n.state_dir);
			doc = file_text(p);
			o = cJSON_Parse(doc);
			assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItem(o, "took")), fp);
			cJSON_Delete(o);
			free(doc);
			free(fp);
		}
		before = n.st->n_cas[SERVING];
		assert_int_equal(ca_rotate(n.st, &e), 0);
		assert_int_equal(n.st->n_cas[SERVING], before + 1);
		for (size_t i = 0; i < f->st->n_cas[SERVING]; i++)
			assert_string_not_equal(n.st->cas[SERVING][before].c.serial,
						f->st->cas[SERVING][i].c.serial);
	}

	ca_stop(n.st);
	uv_run(n.host.loop, UV_RUN_NOWAIT);
	ca_fini(n.st);
	free(n.tls_json);
	free(last);
	free(why);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
				cmocka_unit_test_setup_teardown(test_contents, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotation_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_reuses, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rotate_and_issue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_options, setup, teardown),
		cmocka_unit_test_setup_teardown(test_schedule_late, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shared_follower, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
