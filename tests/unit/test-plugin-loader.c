#include "build-config.h"

#include <errno.h>
#include <fcntl.h>
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

#include "plugin-loader.h"
#include "util.h"

#define UNUSED __attribute__((unused))
#define TEST_PLUGINS TEST_BUILDDIR "/tests/unit/.libs"

/* ---- helpers ----------------------------------------------------------------- */

static void assert_contains(const char *text, const char *needle)
{
	if (text == NULL)
		fail_msg("got no message, expected one containing \"%s\"", needle);
	if (strstr(text, needle) == NULL)
		fail_msg("\"%s\" does not contain \"%s\"", text, needle);
}

static int rm_entry(const char *path, const struct stat *st UNUSED, int flag UNUSED,
		    struct FTW *ftw UNUSED)
{
	return remove(path);
}

static int setup_tmpdir(void **state)
{
	char tmpl[] = "/tmp/ep-test-plugin-XXXXXX";

	if (mkdtemp(tmpl) == NULL)
		return -1;
	*state = ep_strdup(tmpl);
	return 0;
}

static int teardown_tmpdir(void **state)
{
	char *dir = *state;
	int r = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);

	free(dir);
	return r;
}

/* Put the built test plugin plugin-<built>.so into dir as <file>. */
static void install_plugin(const char *dir, const char *built, const char *file)
{
	char *src = ep_strdup_printf("%s/plugin-%s.so", TEST_PLUGINS, built);
	char *dst = ep_strdup_printf("%s/%s", dir, file);

	if (access(src, R_OK) != 0)
		fail_msg("%s: %s (were the check_LTLIBRARIES built?)", src, strerror(errno));
	if (symlink(src, dst) != 0)
		fail_msg("symlink %s -> %s: %s", dst, src, strerror(errno));
	free(src);
	free(dst);
}

/* Load and expect a failure with code err and a message naming the file. */
static char *load_fails(const char *dir, enum ep_plugin_kind kind, const char *name, int err,
			const char *file)
{
	struct ep_loaded_plugin lp;
	char *error = (char *)"not set";
	int r;

	memset(&lp, 0x5a, sizeof(lp));
	r = ep_plugin_load(dir, kind, name, &lp, &error);
	if (r != err)
		fail_msg("loading %s %s from %s returned %d (%s), expected %d",
			 ep_plugin_kind_prefix(kind), name, dir, r, r == 0 ? "ok" : error, err);
	assert_null(lp.handle);
	assert_null(lp.plugin);
	assert_null(lp.path);
	assert_non_null(error);
	if (file != NULL) {
		char *path = ep_strdup_printf("plugin %s/%s:", dir, file);

		assert_contains(error, path);
		free(path);
	}
	return error;
}

/* ---- tests ----------------------------------------------------------------- */

static void test_kind_prefix(void **state UNUSED)
{
	assert_string_equal(ep_plugin_kind_prefix(EP_PLUGIN_BACKEND), "backend");
	assert_string_equal(ep_plugin_kind_prefix(EP_PLUGIN_CERTS), "certs");
	assert_string_equal(ep_plugin_kind_prefix((enum ep_plugin_kind)7), "unknown");
}

static void test_good(void **state)
{
	const char *dir = *state;
	struct ep_loaded_plugin lp;
	const struct ep_backend_ops *ops;
	char *error = NULL;
	char *path;
	void *pstate = (void *)"unset";
	const char *why = NULL;

	install_plugin(dir, "good", "backend-good.so");
	assert_int_equal(ep_plugin_load(dir, EP_PLUGIN_BACKEND, "good", &lp, &error), 0);
	assert_null(error);
	assert_non_null(lp.handle);
	assert_non_null(lp.plugin);
	path = ep_strdup_printf("%s/backend-good.so", dir);
	assert_string_equal(lp.path, path);
	free(path);

	assert_int_equal(lp.plugin->abi_version, EP_PLUGIN_ABI_VERSION);
	assert_int_equal(lp.plugin->kind, EP_PLUGIN_BACKEND);
	assert_string_equal(lp.plugin->name, "good");
	assert_string_equal(lp.plugin->description, "test plugin that does nothing");
	assert_non_null(lp.plugin->init);
	assert_non_null(lp.plugin->fini);
	assert_non_null(lp.plugin->ops);
	assert_null(lp.plugin->options); /* describes no options: init() checks them */
	for (size_t i = 0; i < sizeof(lp.plugin->reserved) / sizeof(lp.plugin->reserved[0]); i++)
		assert_null(lp.plugin->reserved[i]);

	/* the callbacks are the plugin's and they run */
	ops = lp.plugin->ops;
	assert_non_null(ops->start);
	assert_non_null(ops->stop);
	assert_int_equal(lp.plugin->init(NULL, &pstate, &why), 0);
	assert_null(pstate);
	assert_int_equal(ops->start(pstate, &why), 0);
	ops->stop(pstate, 1);
	lp.plugin->fini(pstate);

	ep_plugin_unload(&lp);
	assert_null(lp.handle);
	assert_null(lp.plugin);
	assert_null(lp.path);
	/* unloading twice is harmless */
	ep_plugin_unload(&lp);

	/* and it loads again after an unload */
	assert_int_equal(ep_plugin_load(dir, EP_PLUGIN_BACKEND, "good", &lp, &error), 0);
	assert_string_equal(lp.plugin->name, "good");
	ep_plugin_unload(&lp);
}

static void test_missing_file(void **state)
{
	const char *dir = *state;
	char *error = load_fails(dir, EP_PLUGIN_BACKEND, "missing", -ENOENT, "backend-missing.so");

	assert_contains(error, "No such file or directory");
	assert_contains(error, "is the backend \"missing\" installed in plugin_dir?");
	free(error);

	error = load_fails(dir, EP_PLUGIN_CERTS, "missing", -ENOENT, "certs-missing.so");
	assert_contains(error, "is the certs \"missing\" installed in plugin_dir?");
	free(error);
}

static void test_relative_dir(void **state UNUSED)
{
	char *error = load_fails("plugins", EP_PLUGIN_BACKEND, "good", -EINVAL, NULL);

	assert_string_equal(error, "plugin_dir plugins is not an absolute path");
	free(error);

	error = load_fails("", EP_PLUGIN_BACKEND, "good", -EINVAL, NULL);
	assert_string_equal(error, "plugin_dir  is not an absolute path");
	free(error);
}

static void test_directory(void **state)
{
	const char *dir = *state;
	char *sub = ep_strdup_printf("%s/backend-dir.so", dir);
	char *error;

	assert_int_equal(mkdir(sub, 0700), 0);
	error = load_fails(dir, EP_PLUGIN_BACKEND, "dir", -EINVAL, "backend-dir.so");
	assert_contains(error, "not a regular file");
	free(error);
	free(sub);
}

static void test_bad_abi(void **state)
{
	const char *dir = *state;
	char *error;

	install_plugin(dir, "badabi", "backend-badabi.so");
	error = load_fails(dir, EP_PLUGIN_BACKEND, "badabi", -EPROTO, "backend-badabi.so");
	assert_contains(error, "built for plugin ABI 999");
	assert_contains(error, "this etcdproxy has ABI 1");
	assert_contains(error, "rebuild it");
	free(error);
}

static void test_no_symbol(void **state)
{
	const char *dir = *state;
	char *error;

	install_plugin(dir, "nosym", "backend-nosym.so");
	error = load_fails(dir, EP_PLUGIN_BACKEND, "nosym", -ENOENT, "backend-nosym.so");
	assert_contains(error, "no symbol " EP_PLUGIN_SYMBOL_NAME);
	assert_contains(error, "EP_PLUGIN_EXPORT");
	free(error);
}

static void test_name_mismatch(void **state)
{
	const char *dir = *state;
	char *error;

	install_plugin(dir, "good", "backend-other.so");
	error = load_fails(dir, EP_PLUGIN_BACKEND, "other", -EPROTO, "backend-other.so");
	assert_contains(error, "its descriptor is named \"good\", expected \"other\"");
	free(error);
}

static void test_kind_mismatch(void **state)
{
	const char *dir = *state;
	char *error;

	install_plugin(dir, "good", "certs-good.so");
	error = load_fails(dir, EP_PLUGIN_CERTS, "good", -EPROTO, "certs-good.so");
	assert_contains(error, "its descriptor says kind 1, expected 2 (certs)");
	free(error);
}

static void test_not_a_shared_object(void **state)
{
	const char *dir = *state;
	char *path = ep_strdup_printf("%s/backend-junk.so", dir);
	static const char junk[] = "this is not an ELF file\n\x01\x02\x03";
	char *error;
	int fd;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	assert_int_equal(close(fd), 0);

	error = load_fails(dir, EP_PLUGIN_BACKEND, "junk", -ENOEXEC, "backend-junk.so");
	assert_contains(error, "cannot load");
	free(error);

	/* an empty file is no better */
	assert_int_equal(truncate(path, 0), 0);
	error = load_fails(dir, EP_PLUGIN_BACKEND, "junk", -ENOEXEC, "backend-junk.so");
	assert_contains(error, "cannot load");
	free(error);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kind_prefix),
		cmocka_unit_test_setup_teardown(test_good, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_missing_file, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test(test_relative_dir),
		cmocka_unit_test_setup_teardown(test_directory, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_bad_abi, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_no_symbol, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_name_mismatch, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_kind_mismatch, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_not_a_shared_object, setup_tmpdir,
						teardown_tmpdir),
	};

	return cmocka_run_group_tests_name("plugin-loader", tests, NULL, NULL);
}
