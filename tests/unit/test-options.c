/* lib/options.c: plugin options by table, checked and stored; the table's JSON round trip. */
#include "build-config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <stdarg.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "options.h"
#include "util.h"

#define UNUSED __attribute__((unused))

struct opts {
	uint64_t count, timeout_ms;
	double fraction;
	int mode;
	char *name, *binary;
	struct ep_option_strings args;
};

static const char *const modes[] = { "ignore", "allow", "deny", NULL };

static const struct ep_option table[] = {
	{ "count", EP_OPT_UINT, 0, offsetof(struct opts, count), 1, 64, NULL, "connections" },
	{ "timeout", EP_OPT_DURATION, 0, offsetof(struct opts, timeout_ms), 100, 1e15, NULL, NULL },
	{ "fraction", EP_OPT_NUMBER, 0, offsetof(struct opts, fraction), 0.1, 0.95, NULL, NULL },
	{ "mode", EP_OPT_ENUM, 0, offsetof(struct opts, mode), 0, 0, modes, NULL },
	{ "name", EP_OPT_STRING, 0, offsetof(struct opts, name), 0, 0, NULL, NULL },
	{ "binary", EP_OPT_PATH, EP_OPT_EXECUTABLE, offsetof(struct opts, binary), 0, 0, NULL, NULL },
	{ "args", EP_OPT_STRINGS, 0, offsetof(struct opts, args), 0, 0, NULL, NULL },
	{ NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL },
};

static void opts_free(struct opts *o)
{
	free(o->name);
	free(o->binary);
	for (size_t i = 0; i < o->args.n; i++)
		free(o->args.v[i]);
	free(o->args.v);
}

static int apply(const struct ep_option *t, const char *json, struct opts *out, char **error_r,
		 char **node_r)
{
	cJSON *o = cJSON_Parse(json);
	const cJSON *node = NULL;
	int r;

	assert_non_null(o);
	r = ep_options_apply(t, "backends.x", o, out, &node, error_r);
	*node_r = node != NULL ? cJSON_PrintUnformatted(node) : NULL;
	cJSON_Delete(o);
	return r;
}

static void test_values(void **state UNUSED)
{
	struct opts o = { .count = 2, .timeout_ms = 5000, .mode = 0 };
	char *err = NULL, *node = NULL;

	o.name = ep_strdup("default");
	assert_int_equal(apply(table, "{\"count\": 64, \"timeout\": \"90000000us\", \"fraction\": 0.5, "
				      "\"mode\": \"deny\", \"name\": \"n\", \"binary\": \"/bin/sh\", "
				      "\"args\": [\"--a\", \"b\"]}",
			       &o, &err, &node),
			 0);
	assert_null(err);
	assert_int_equal(o.count, 64);
	assert_int_equal(o.timeout_ms, 90000); /* the "90000000us": 90 s */
	assert_int_equal(o.mode, 2);
	assert_string_equal(o.name, "n"); /* the default was freed and replaced */
	assert_string_equal(o.binary, "/bin/sh");
	assert_int_equal(o.args.n, 2);
	assert_string_equal(o.args.v[1], "b");
	assert_null(o.args.v[2]);
	assert_true(o.fraction == 0.5);
	opts_free(&o);
	free(node);
}

static void test_left_out_keeps_default(void **state UNUSED)
{
	struct opts o = { .count = 7, .timeout_ms = 1234 };
	char *err = NULL, *node = NULL;

	assert_int_equal(apply(table, "{}", &o, &err, &node), 0);
	assert_int_equal(o.count, 7);
	assert_int_equal(o.timeout_ms, 1234);
	/* checking only: out NULL */
	assert_int_equal(apply(table, "{\"count\": 3}", NULL, &err, &node), 0);
}

static void test_errors(void **state UNUSED)
{
	static const struct {
		const char *json, *error, *node;
	} cases[] = {
		{ "{\"colour\": 1}",
		  "backends.x: unknown key \"colour\" (expected one of: count, timeout, fraction, mode, "
		  "name, binary, args)",
		  "1" },
		{ "{\"count\": 0}",
		  "backends.x.count: expected an integer from 1 to 64 (connections), got 0", "0" },
		{ "{\"count\": 2.5}",
		  "backends.x.count: expected an integer from 1 to 64 (connections), got 2.5", "2.5" },
		{ "{\"count\": \"2\"}",
		  "backends.x.count: expected an integer from 1 to 64 (connections), got \"2\"",
		  "\"2\"" },
		{ "{\"timeout\": \"bogus\"}",
		  "backends.x.timeout: expected a duration such as \"5s\", \"500ms\" or \"1h30m\" of "
		  "at least 100ms, got \"bogus\"",
		  "\"bogus\"" },
		{ "{\"timeout\": \"500us\"}",
		  "backends.x.timeout: expected a duration such as \"5s\", \"500ms\" or \"1h30m\" of "
		  "at least 100ms, got \"500us\"",
		  "\"500us\"" },
		{ "{\"fraction\": 1}",
		  "backends.x.fraction: expected a number from 0.1 to 0.95, got 1", "1" },
		{ "{\"mode\": \"sometimes\"}",
		  "backends.x.mode: expected one of \"ignore\", \"allow\", \"deny\", got \"sometimes\"",
		  "\"sometimes\"" },
		{ "{\"name\": \"\"}", "backends.x.name: expected a non-empty string, got \"\"", "\"\"" },
		{ "{\"binary\": \"sh\"}", "backends.x.binary: expected an absolute path, got \"sh\"",
		  "\"sh\"" },
		{ "{\"binary\": \"/nonexistent/etcd\"}",
		  "backends.x.binary: /nonexistent/etcd: No such file or directory (an executable "
		  "file is expected)",
		  "\"/nonexistent/etcd\"" },
		{ "{\"args\": [\"a\", 5]}", "backends.x.args: expected an array of strings, got 5",
		  "5" },
		{ "{\"args\": \"a\"}", "backends.x.args: expected an array of strings, got \"a\"",
		  "\"a\"" },
		{ "[]", "backends.x: expected an object of options, got []", "[]" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct opts o = { 0 };
		char *err = NULL, *node = NULL;

		if (apply(table, cases[i].json, &o, &err, &node) != -EINVAL)
			fail_msg("%s: accepted", cases[i].json);
		if (err == NULL || strcmp(err, cases[i].error) != 0)
			fail_msg("%s:\n  got      \"%s\"\n  expected \"%s\"", cases[i].json,
				 err ? err : "(null)", cases[i].error);
		if (node == NULL || strcmp(node, cases[i].node) != 0)
			fail_msg("%s: the error is about %s, expected %s", cases[i].json,
				 node ? node : "(null)", cases[i].node);
		free(err);
		free(node);
		opts_free(&o);
	}
	/* a plugin that takes no options */
	static const struct ep_option none[] = { { NULL, EP_OPT_END, 0, 0, 0, 0, NULL, NULL } };
	char *err = NULL, *node = NULL;
	assert_int_equal(apply(none, "{\"a\": 1}", NULL, &err, &node), -EINVAL);
	assert_string_equal(err, "backends.x: unknown key \"a\" (it takes no options)");
	free(err);
	free(node);
}

/* What --describe-options prints, read back by --check-config, judges as the original. */
static void test_round_trip(void **state UNUSED)
{
	cJSON *desc = ep_options_describe(table);
	char *err = NULL;
	struct ep_option *back = ep_options_from_json(desc, &err);
	const cJSON *node;
	cJSON *o;

	assert_non_null(back);
	assert_null(err);
	for (size_t i = 0; table[i].type != EP_OPT_END; i++) {
		assert_string_equal(back[i].name, table[i].name);
		assert_int_equal(back[i].type, table[i].type);
		assert_int_equal(back[i].flags, table[i].flags);
		assert_true(back[i].min == table[i].min && back[i].max == table[i].max);
		assert_int_equal(back[i + 1].type == EP_OPT_END, table[i + 1].type == EP_OPT_END);
	}
	o = cJSON_Parse("{\"mode\": \"maybe\"}");
	assert_int_equal(ep_options_apply(back, "backends.x", o, NULL, &node, &err), -EINVAL);
	assert_string_equal(err, "backends.x.mode: expected one of \"ignore\", \"allow\", \"deny\", "
				 "got \"maybe\"");
	free(err);
	cJSON_Delete(o);
	ep_options_free(back);
	cJSON_Delete(desc);

	desc = cJSON_Parse("[{\"name\": \"a\", \"type\": \"colour\"}]");
	assert_null(ep_options_from_json(desc, &err));
	assert_string_equal(err, "option 0: expected a \"name\" and a known \"type\"");
	free(err);
	cJSON_Delete(desc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_left_out_keeps_default),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_round_trip),
	};

	return cmocka_run_group_tests_name("plugin options", tests, NULL, NULL);
}
