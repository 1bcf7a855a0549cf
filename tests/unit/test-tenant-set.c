#include "build-config.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "tenant-set.h"
#include "util.h"

#define UNUSED __attribute__((unused))

/* ---- fixture and helpers ------------------------------------------------------- */

struct fixture {
	char *dir;
	char *storages; /* dir/storages.d */
	char *plugins;  /* dir/plugins, with an empty backend-etcd.so and certs-ca.so */
	struct ep_global_config *global;
};

static int rm_entry(const char *path, const struct stat *st UNUSED, int flag UNUSED,
		    struct FTW *ftw UNUSED)
{
	return remove(path);
}

static void write_file(const char *path, const char *text)
{
	FILE *fp = fopen(path, "w");

	if (fp == NULL)
		fail_msg("%s: %s", path, strerror(errno));
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

/* A global configuration for this fixture; core_etcd is the given endpoint. */
static struct ep_global_config *load_global(const struct fixture *f, const char *endpoint)
{
	char *path = ep_strdup_printf("%s/etcdproxyd-%s.json", f->dir,
				      strrchr(endpoint, ':') + 1);
	char *text = ep_strdup_printf("{\n"
				      "  \"storages_dir\": \"%s\",\n"
				      "  \"plugin_dir\": \"%s\",\n"
				      "  \"state_dir\": \"%s/state\",\n"
				      "  \"runtime_dir\": \"%s/run\",\n"
				      "  \"core_etcd\": {\"endpoints\": [\"%s\"], \"ca_file\": null,\n"
				      "    \"cert_file\": null, \"key_file\": null}\n"
				      "}\n",
				      f->storages, f->plugins, f->dir, f->dir, endpoint);
	struct ep_global_config *g = NULL;
	char *error = NULL;

	write_file(path, text);
	if (ep_global_config_load(path, &g, &error) != 0)
		fail_msg("global config: %s", error);
	free(text);
	free(path);
	return g;
}

static int setup(void **state)
{
	struct fixture *f = ep_malloc0(sizeof(*f));
	char tmpl[] = "/tmp/ep-test-tenant-set-XXXXXX";
	char *p;

	*state = f;
	if (mkdtemp(tmpl) == NULL)
		return -1;
	f->dir = ep_strdup(tmpl);
	f->storages = ep_strdup_printf("%s/storages.d", f->dir);
	f->plugins = ep_strdup_printf("%s/plugins", f->dir);
	if (mkdir(f->storages, 0700) != 0 || mkdir(f->plugins, 0700) != 0)
		return -1;
	p = ep_strdup_printf("%s/backend-etcd.so", f->plugins);
	write_file(p, "");
	free(p);
	p = ep_strdup_printf("%s/certs-ca.so", f->plugins); /* spec.tls is on by default */
	write_file(p, "");
	free(p);
	f->global = load_global(f, "https://127.0.0.1:2379");
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	int r = 0;

	ep_global_config_free(f->global);
	if (f->dir != NULL)
		r = nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	free(f->dir);
	free(f->storages);
	free(f->plugins);
	free(f);
	return r;
}

static char *file_path(const struct fixture *f, const char *file)
{
	return ep_strdup_printf("%s/%s", f->storages, file);
}

static void put_raw(const struct fixture *f, const char *file, const char *text)
{
	char *path = file_path(f, file);

	write_file(path, text);
	free(path);
}

/* A tenant file with this name and listen address (line 5, col 12: the listen key). */
static void put(const struct fixture *f, const char *file, const char *name, const char *listen)
{
	char *text = ep_strdup_printf("{\n"
				      "  \"apiVersion\": \"" EP_API_VERSION "\",\n"
				      "  \"kind\": \"" EP_KIND "\",\n"
				      "  \"metadata\": {\"name\": \"%s\"},\n"
				      "  \"spec\": {\"listen\": \"%s\"}\n"
				      "}\n",
				      name, listen);

	put_raw(f, file, text);
	free(text);
}

static void rm(const struct fixture *f, const char *file)
{
	char *path = file_path(f, file);

	assert_int_equal(unlink(path), 0);
	free(path);
}

static void load(const struct fixture *f, const struct ep_global_config *g,
		 struct ep_tenant_set *set)
{
	char *error = NULL;

	memset(set, 0x5a, sizeof(*set));
	if (ep_tenant_set_load(g, set, &error) != 0)
		fail_msg("tenant set: %s", error);
	assert_null(error);
}

static void assert_good(const struct fixture *f, const struct ep_tenant_set *set, size_t i,
			const char *file, const char *name, const char *listen)
{
	const struct ep_tenant_entry *e = &set->entries[i];
	char *path = file_path(f, file);
	cJSON *payload;
	char *fp;

	assert_true(i < set->n);
	if (e->error != NULL)
		fail_msg("entry %zu (%s) has an error: %s", i, file, e->error);
	assert_string_equal(e->file, path);
	assert_string_equal(e->name, name);
	assert_non_null(e->config);
	assert_string_equal(e->config->name, name);
	assert_string_equal(e->config->listen, listen);
	/* the fingerprint is the worker's CONFIGURE payload */
	payload = ep_worker_config_build(f->global, e->config);
	fp = cJSON_PrintUnformatted(payload);
	assert_string_equal(e->fingerprint, fp);
	free(fp);
	cJSON_Delete(payload);
	free(path);
}

/* An entry with an error: "FILE:..." (position when given), fingerprint "!error". */
static void assert_broken(const struct fixture *f, const struct ep_tenant_set *set, size_t i,
			  const char *file, const char *name, const char *error_tail)
{
	const struct ep_tenant_entry *e = &set->entries[i];
	char *path = file_path(f, file);
	char *expected = ep_strdup_printf("%s%s", path, error_tail);
	char *fp;

	assert_true(i < set->n);
	assert_string_equal(e->file, path);
	assert_string_equal(e->name, name);
	assert_null(e->config);
	assert_non_null(e->error);
	if (strcmp(e->error, expected) != 0)
		fail_msg("entry %zu error\n  \"%s\"\nexpected\n  \"%s\"", i, e->error, expected);
	fp = ep_strdup_printf("!%s", e->error);
	assert_string_equal(e->fingerprint, fp);
	free(fp);
	free(expected);
	free(path);
}

/* ---- loading ------------------------------------------------------------------------ */

static void test_load_good(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;

	/* written out of order: entries come sorted by file name */
	put(f, "b.json", "tenant-b", "127.0.0.1:2002");
	put(f, "a.json", "tenant-a", "127.0.0.1:2001");
	put(f, "c.json", "a.b.c", "[::1]:2003");
	load(f, f->global, &set);
	assert_int_equal(set.n, 3);
	assert_good(f, &set, 0, "a.json", "tenant-a", "127.0.0.1:2001");
	assert_good(f, &set, 1, "b.json", "tenant-b", "127.0.0.1:2002");
	assert_good(f, &set, 2, "c.json", "a.b.c", "[::1]:2003");

	assert_ptr_equal(ep_tenant_set_find(&set, "tenant-b"), &set.entries[1]);
	assert_ptr_equal(ep_tenant_set_find(&set, "a.b.c"), &set.entries[2]);
	assert_null(ep_tenant_set_find(&set, "tenant"));
	assert_null(ep_tenant_set_find(&set, "a"));
	/* the file name is not the tenant name */
	assert_null(ep_tenant_set_find(&set, "b"));

	ep_tenant_set_free(&set);
	assert_int_equal(set.n, 0);
	assert_null(set.entries);
	/* freeing twice is harmless */
	ep_tenant_set_free(&set);
}

static void test_load_empty_and_missing(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;
	char *error = NULL;
	char *expected;

	load(f, f->global, &set);
	assert_int_equal(set.n, 0);
	assert_null(ep_tenant_set_find(&set, "a"));
	ep_tenant_set_free(&set);

	assert_int_equal(rmdir(f->storages), 0);
	memset(&set, 0x5a, sizeof(set));
	assert_int_equal(ep_tenant_set_load(f->global, &set, &error), -ENOENT);
	expected = ep_strdup_printf("storages_dir %s: No such file or directory", f->storages);
	assert_non_null(error);
	assert_string_equal(error, expected);
	assert_int_equal(set.n, 0);
	assert_null(set.entries);
	free(expected);
	free(error);
	ep_tenant_set_free(&set);

	/* a file where the directory should be */
	write_file(f->storages, "");
	error = NULL;
	assert_int_equal(ep_tenant_set_load(f->global, &set, &error), -ENOTDIR);
	expected = ep_strdup_printf("storages_dir %s: Not a directory", f->storages);
	assert_string_equal(error, expected);
	free(expected);
	free(error);
	ep_tenant_set_free(&set);
}

static void test_load_ignored_files(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;

	put(f, "a.json", "a", "127.0.0.1:2001");
	/* hidden files, editor leftovers and other suffixes are not tenants */
	put(f, ".hidden.json", "hidden", "127.0.0.1:2002");
	put(f, ".a.json.swp", "swp", "127.0.0.1:2003");
	put(f, "b.json.sample", "sample", "127.0.0.1:2004");
	put(f, "c.json~", "backup", "127.0.0.1:2005");
	put(f, "d.JSON", "upper", "127.0.0.1:2006");
	put(f, "notes.txt", "notes", "127.0.0.1:2007");
	put(f, "json", "bare", "127.0.0.1:2008");
	put_raw(f, ".json", "not even JSON");
	load(f, f->global, &set);
	assert_int_equal(set.n, 1);
	assert_good(f, &set, 0, "a.json", "a", "127.0.0.1:2001");
	ep_tenant_set_free(&set);
}

static void test_load_broken(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;

	put(f, "a.json", "a", "127.0.0.1:2001");
	/* the name is readable: the entry is shown under it */
	put(f, "b.json", "tenant-b", "db.example:2002");
	/* not even JSON: the name comes from the file */
	put_raw(f, "c-syntax.json", "{\n  \"apiVersion\": ,\n}\n");
	/* an invalid name is not used either */
	put(f, "d.json", "Bad_Name", "127.0.0.1:2004");
	put(f, "e.json", "e", "127.0.0.1:2005");
	load(f, f->global, &set);

	assert_int_equal(set.n, 5);
	assert_good(f, &set, 0, "a.json", "a", "127.0.0.1:2001");
	assert_broken(f, &set, 1, "b.json", "tenant-b",
		      ":5:12: spec.listen: \"db.example:2002\": the host must be an IP address "
		      "or \"localhost\"");
	assert_broken(f, &set, 2, "c-syntax.json", "c-syntax",
		      ":2:17: expected a value");
	assert_broken(f, &set, 3, "d.json", "d",
		      ":4:16: metadata.name: expected a lower-case DNS-1123 name of at most 59 "
		      "characters (a-z, 0-9, '-' and '.', starting and ending with a letter or "
		      "digit)");
	/* a bad file does not spoil the ones after it */
	assert_good(f, &set, 4, "e.json", "e", "127.0.0.1:2005");
	assert_ptr_equal(ep_tenant_set_find(&set, "tenant-b"), &set.entries[1]);
	assert_ptr_equal(ep_tenant_set_find(&set, "c-syntax"), &set.entries[2]);
	ep_tenant_set_free(&set);
}

static void test_load_duplicate_name(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;
	char *a, *tail;

	put(f, "a.json", "x", "127.0.0.1:2001");
	put(f, "b.json", "x", "127.0.0.1:2002");
	put(f, "c.json", "x", "127.0.0.1:2003");
	load(f, f->global, &set);
	a = file_path(f, "a.json");

	assert_int_equal(set.n, 3);
	assert_good(f, &set, 0, "a.json", "x", "127.0.0.1:2001");
	/* the later files get the error, and names that stay unique */
	tail = ep_strdup_printf(": metadata.name \"x\" is already used by %s", a);
	assert_broken(f, &set, 1, "b.json", "x~", tail);
	assert_broken(f, &set, 2, "c.json", "x~~", tail);
	free(tail);
	assert_ptr_equal(ep_tenant_set_find(&set, "x"), &set.entries[0]);
	assert_ptr_equal(ep_tenant_set_find(&set, "x~"), &set.entries[1]);
	assert_ptr_equal(ep_tenant_set_find(&set, "x~~"), &set.entries[2]);
	ep_tenant_set_free(&set);
	free(a);
}

/* A broken file that claims the name of a good tenant does not take it over. */
static void test_load_broken_claims_good_name(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;

	/* a.json sorts first and is broken; b.json is the good "web" */
	put(f, "a.json", "web", "web.example:2001");
	put(f, "b.json", "web", "127.0.0.1:2002");
	/* two broken files without a readable name, both named after "c" */
	put_raw(f, "c.json", "[]");
	put(f, "d.json", "c", "c.example:2004");
	load(f, f->global, &set);

	assert_int_equal(set.n, 4);
	assert_good(f, &set, 1, "b.json", "web", "127.0.0.1:2002");
	assert_null(set.entries[1].error);
	assert_string_equal(set.entries[0].name, "web~");
	assert_non_null(set.entries[0].error);
	assert_ptr_equal(ep_tenant_set_find(&set, "web"), &set.entries[1]);
	assert_string_equal(set.entries[2].name, "c");
	assert_string_equal(set.entries[3].name, "c~");
	ep_tenant_set_free(&set);
}

static void test_load_duplicate_listen(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;
	char *a, *tail;

	put(f, "a.json", "a", "127.0.0.1:2001");
	put(f, "b.json", "b", "127.0.0.1:2001");
	put(f, "c.json", "c", "127.0.0.1:2003");
	load(f, f->global, &set);
	a = file_path(f, "a.json");

	assert_int_equal(set.n, 3);
	assert_good(f, &set, 0, "a.json", "a", "127.0.0.1:2001");
	tail = ep_strdup_printf(": spec.listen \"127.0.0.1:2001\" is already used by tenant "
				"\"a\" (%s)",
				a);
	assert_broken(f, &set, 1, "b.json", "b", tail);
	assert_good(f, &set, 2, "c.json", "c", "127.0.0.1:2003");
	free(tail);
	free(a);
	ep_tenant_set_free(&set);
}

/* A tenant with one client certificate written into dir. */
static void put_client_dir(const struct fixture *f, const char *file, const char *name,
			   const char *listen, const char *dir)
{
	char *text = ep_strdup_printf("{\n"
				      "  \"apiVersion\": \"" EP_API_VERSION "\",\n"
				      "  \"kind\": \"" EP_KIND "\",\n"
				      "  \"metadata\": {\"name\": \"%s\"},\n"
				      "  \"spec\": {\"listen\": \"%s\", \"tls\": {\"clientCertificates\": "
				      "[{\"name\": \"c\", \"outputDir\": \"%s\"}]}}\n"
				      "}\n",
				      name, listen, dir);

	put_raw(f, file, text);
	free(text);
}

/* Two tenants may not write certificates into one directory, however it is spelt. */
static void test_load_shared_output_dir(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set set;
	char *out = ep_strdup_printf("%s/out", f->dir), *link = ep_strdup_printf("%s/link", f->dir);
	char *b_dir = ep_strdup_printf("%s/./x/../out", f->dir);
	char *c_dir = ep_strdup_printf("%s/out/", link); /* link -> dir: link/out is dir/out */
	char *d_dir = ep_strdup_printf("%s/out2", f->dir);

	assert_int_equal(symlink(f->dir, link), 0);
	put_client_dir(f, "a.json", "a", "127.0.0.1:2001", out);
	put_client_dir(f, "b.json", "b", "127.0.0.1:2002", b_dir);
	put_client_dir(f, "c.json", "c", "127.0.0.1:2003", c_dir);
	put_client_dir(f, "d.json", "d", "127.0.0.1:2004", d_dir);
	load(f, f->global, &set);
	assert_int_equal(set.n, 4);
	assert_non_null(set.entries[0].config);
	for (size_t i = 1; i < 3; i++) {
		assert_null(set.entries[i].config);
		assert_non_null(strstr(set.entries[i].error, "is also tenant \"a\"'s"));
		assert_non_null(strstr(set.entries[i].error, "two tenants may not share one"));
	}
	assert_non_null(set.entries[3].config);
	ep_tenant_set_free(&set);
	free(out);
	free(link);
	free(b_dir);
	free(c_dir);
	free(d_dir);
}

/* ep_path_resolve: symbolic links of what exists, "." and ".." of what does not yet. */
static void test_path_resolve(void **state)
{
	struct fixture *f = *state;
	char *link = ep_strdup_printf("%s/l", f->dir), *p, *got, *want, *real_dir;

	assert_int_equal(symlink(f->storages, link), 0);
	p = ep_strdup_printf("%s/new/../a/./b", link);
	got = ep_path_resolve(p);
	real_dir = realpath(f->storages, NULL);
	want = ep_strdup_printf("%s/a/b", real_dir);
	assert_string_equal(got, want);
	free(got);
	free(want);
	free(real_dir);
	free(p);
	p = ep_path_resolve("/nonexistent-ep/../nonexistent-ep2/x");
	assert_string_equal(p, "/nonexistent-ep2/x");
	free(p);
	p = ep_path_resolve("/../..");
	assert_string_equal(p, "/");
	free(p);
	free(link);
}

/* ---- diff -------------------------------------------------------------------------- */

struct diff_log {
	char text[1024];
};

static void record(void *ctx, enum ep_diff_action action, const struct ep_tenant_entry *o,
		   const struct ep_tenant_entry *n)
{
	struct diff_log *log = ctx;
	size_t len = strlen(log->text);

	switch (action) {
	case EP_DIFF_ADD:
		assert_null(o);
		assert_non_null(n);
		break;
	case EP_DIFF_REMOVE:
		assert_non_null(o);
		assert_null(n);
		break;
	case EP_DIFF_KEEP:
		assert_non_null(o);
		assert_non_null(n);
		assert_string_equal(o->name, n->name);
		assert_string_equal(o->fingerprint, n->fingerprint);
		break;
	case EP_DIFF_CHANGE:
		assert_non_null(o);
		assert_non_null(n);
		assert_string_equal(o->name, n->name);
		assert_string_not_equal(o->fingerprint, n->fingerprint);
		break;
	}
	snprintf(log->text + len, sizeof(log->text) - len, "%s%s %s", len ? ", " : "",
		 ep_diff_action_name(action), n != NULL ? n->name : o->name);
}

static void diff(const struct ep_tenant_set *o, const struct ep_tenant_set *n, const char *expected)
{
	struct diff_log log = { "" };

	ep_tenant_set_diff(o, n, record, &log);
	assert_string_equal(log.text, expected);
}

static void test_diff_action_names(void **state UNUSED)
{
	assert_string_equal(ep_diff_action_name(EP_DIFF_KEEP), "keep");
	assert_string_equal(ep_diff_action_name(EP_DIFF_ADD), "add");
	assert_string_equal(ep_diff_action_name(EP_DIFF_REMOVE), "remove");
	assert_string_equal(ep_diff_action_name(EP_DIFF_CHANGE), "change");
	assert_string_equal(ep_diff_action_name((enum ep_diff_action)42), "?");
}

static void test_diff(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set s0, s1, s2, s3, empty;

	put(f, "a.json", "a", "127.0.0.1:2001");
	put(f, "b.json", "b", "127.0.0.1:2002");
	put(f, "c.json", "c", "127.0.0.1:2003");
	load(f, f->global, &s0);

	/* the same files again: everything is kept */
	load(f, f->global, &s1);
	diff(&s0, &s1, "keep a, keep b, keep c");
	ep_tenant_set_free(&s1);

	/* b removed, c changed (listen), d added, a untouched */
	rm(f, "b.json");
	put(f, "c.json", "c", "127.0.0.1:3003");
	put(f, "d.json", "d", "127.0.0.1:2004");
	load(f, f->global, &s1);
	diff(&s0, &s1, "remove b, keep a, change c, add d");

	/* rewriting a file with the same content changes nothing */
	put(f, "a.json", "a", "127.0.0.1:2001");
	load(f, f->global, &s2);
	diff(&s1, &s2, "keep a, keep c, keep d");
	ep_tenant_set_free(&s2);

	/* a tenant renamed is one removed and one added */
	rm(f, "d.json");
	put(f, "d.json", "dd", "127.0.0.1:2004");
	load(f, f->global, &s2);
	diff(&s1, &s2, "remove d, keep a, keep c, add dd");

	/* moved to another file with the same content: the fingerprint names the file */
	rm(f, "a.json");
	put(f, "a2.json", "a", "127.0.0.1:2001");
	load(f, f->global, &s3);
	diff(&s2, &s3, "change a, keep c, keep dd");
	ep_tenant_set_free(&s3);

	/* from and to nothing */
	memset(&empty, 0, sizeof(empty));
	diff(&empty, &s2, "add a, add c, add dd");
	diff(&s2, &empty, "remove a, remove c, remove dd");
	diff(&empty, &empty, "");

	ep_tenant_set_free(&s0);
	ep_tenant_set_free(&s1);
	ep_tenant_set_free(&s2);
}

static void test_diff_errors(void **state)
{
	struct fixture *f = *state;
	struct ep_tenant_set s0, s1, s2, s3;

	put(f, "a.json", "a", "127.0.0.1:2001");
	put(f, "b.json", "b", "b.example:2002"); /* broken */
	load(f, f->global, &s0);
	assert_null(s0.entries[0].error);
	assert_non_null(s0.entries[1].error);

	/* an error that stays the same is kept (no log spam, no restart) */
	load(f, f->global, &s1);
	diff(&s0, &s1, "keep a, keep b");

	/* a good tenant that becomes broken changes; a broken one that is fixed changes */
	put(f, "a.json", "a", "a.example:2001");
	put(f, "b.json", "b", "127.0.0.1:2002");
	load(f, f->global, &s2);
	assert_non_null(s2.entries[0].error);
	assert_null(s2.entries[1].error);
	diff(&s1, &s2, "change a, change b");

	/* a different error is a change too */
	put(f, "a.json", "a", "a2.example:2001");
	load(f, f->global, &s3);
	diff(&s2, &s3, "change a, keep b");

	ep_tenant_set_free(&s0);
	ep_tenant_set_free(&s1);
	ep_tenant_set_free(&s2);
	ep_tenant_set_free(&s3);
}

static void test_diff_global_change(void **state)
{
	struct fixture *f = *state;
	struct ep_global_config *g2 = load_global(f, "https://127.0.0.1:12379");
	struct ep_tenant_set s0, s1;

	put(f, "a.json", "a", "127.0.0.1:2001");
	put(f, "b.json", "b", "127.0.0.1:2002");
	put(f, "c.json", "c", "c.example:2003"); /* broken: its error does not depend on core_etcd */
	load(f, f->global, &s0);
	load(f, g2, &s1);

	/* a new core etcd changes every worker's configuration */
	for (size_t i = 0; i < 2; i++) {
		assert_string_not_equal(s0.entries[i].fingerprint, s1.entries[i].fingerprint);
		assert_non_null(strstr(s1.entries[i].fingerprint, "https://127.0.0.1:12379"));
	}
	diff(&s0, &s1, "change a, change b, keep c");
	ep_tenant_set_free(&s0);
	ep_tenant_set_free(&s1);
	ep_global_config_free(g2);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_load_good),
		T(test_load_empty_and_missing),
		T(test_load_ignored_files),
		T(test_load_broken),
		T(test_load_duplicate_name),
		T(test_load_broken_claims_good_name),
		T(test_load_duplicate_listen),
		T(test_load_shared_output_dir),
		T(test_path_resolve),
		cmocka_unit_test(test_diff_action_names),
		T(test_diff),
		T(test_diff_errors),
		T(test_diff_global_change),
	};
#undef T

	return cmocka_run_group_tests_name("tenant-set", tests, NULL, NULL);
}
