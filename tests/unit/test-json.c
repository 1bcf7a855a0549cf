#include "build-config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "json.h"
#include "util.h"

#define UNUSED __attribute__((unused))

/* ---- helpers ----------------------------------------------------------------- */

static struct ep_json_doc *parse_ok(const char *text)
{
	struct ep_json_error err;
	struct ep_json_doc *doc = ep_json_parse(text, strlen(text), &err);

	if (doc == NULL)
		fail_msg("parsing %s failed at %u:%u: %s", text, err.line, err.column, err.message);
	return doc;
}

static void assert_pos(const struct ep_json_doc *doc, const cJSON *node, unsigned line,
		       unsigned column)
{
	unsigned l = 99, c = 99;

	assert_non_null(node);
	assert_int_equal(ep_json_position(doc, node, &l, &c), 0);
	if (l != line || c != column)
		fail_msg("node at %u:%u, expected %u:%u", l, c, line, column);
}

struct err_case {
	const char *text;
	size_t len; /* 0: strlen(text) */
	unsigned line, column;
	const char *message;
};

static void check_errors(const struct err_case *cases, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		const struct err_case *t = &cases[i];
		struct ep_json_error err;
		struct ep_json_doc *doc;

		memset(&err, 0x55, sizeof(err));
		doc = ep_json_parse(t->text, t->len != 0 ? t->len : strlen(t->text), &err);
		if (doc != NULL) {
			ep_json_doc_free(doc);
			fail_msg("case %zu (%s) parsed, expected an error", i, t->text);
		}
		if (err.line != t->line || err.column != t->column ||
		    strcmp(err.message, t->message) != 0)
			fail_msg("case %zu (%s): got %u:%u \"%s\", expected %u:%u \"%s\"", i, t->text,
				 err.line, err.column, err.message, t->line, t->column, t->message);
	}
}

#define CHECK_ERRORS(cases) check_errors(cases, sizeof(cases) / sizeof(cases[0]))

/* ---- valid documents ---------------------------------------------------------------- */

static void test_valid_with_comments(void **state UNUSED)
{
	static const char text[] =
		"// leading line comment\n"
		"/* a block\n   comment */ {\n"
		"  \"name\" /* before colon */ : /* after colon */ \"etcd\", // trailing\n"
		"  \"port\": 2379 /**/,\n"
		"  \"ratio\": -1.25e2,\n"
		"  \"on\": true, \"off\": false, \"none\": null,\n"
		"  \"empty_obj\": {}, \"empty_arr\": [ ],\n"
		"  \"list\": [1, /* two */ \"two\", [3]]\n"
		"} // done\n"
		"/* and done */";
	struct ep_json_doc *doc = parse_ok(text);
	cJSON *root = ep_json_root(doc), *v;

	assert_true(cJSON_IsObject(root));
	assert_int_equal(cJSON_GetArraySize(root), 9);
	/* member order is the document's */
	assert_string_equal(root->child->string, "name");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(root, "name")->valuestring, "etcd");
	assert_true(cJSON_GetObjectItemCaseSensitive(root, "port")->valuedouble == 2379);
	assert_true(cJSON_GetObjectItemCaseSensitive(root, "ratio")->valuedouble == -125);
	assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "on")));
	assert_true(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(root, "off")));
	assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "none")));
	v = cJSON_GetObjectItemCaseSensitive(root, "empty_obj");
	assert_true(cJSON_IsObject(v) && v->child == NULL);
	v = cJSON_GetObjectItemCaseSensitive(root, "empty_arr");
	assert_true(cJSON_IsArray(v) && v->child == NULL);
	v = cJSON_GetObjectItemCaseSensitive(root, "list");
	assert_int_equal(cJSON_GetArraySize(v), 3);
	assert_string_equal(cJSON_GetArrayItem(v, 1)->valuestring, "two");
	assert_true(cJSON_GetArrayItem(cJSON_GetArrayItem(v, 2), 0)->valuedouble == 3);
	ep_json_doc_free(doc);
}

static void test_scalars(void **state UNUSED)
{
	static const struct {
		const char *text;
		double value;
	} numbers[] = {
		{ "0", 0 },	  { "-0", 0 },	   { "42", 42 },      { "-7", -7 },
		{ "1.5", 1.5 },	  { "1E3", 1000 }, { "2e+2", 200 },   { "25e-1", 2.5 },
		{ "0.125", 0.125 }, { "1e-400", 0 }, { " \n 9 \n ", 9 },
		{ "12345678901234567890", 12345678901234567890.0 },
	};
	struct ep_json_doc *doc;
	size_t i;

	for (i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
		doc = parse_ok(numbers[i].text);
		assert_true(cJSON_IsNumber(ep_json_root(doc)));
		if (ep_json_root(doc)->valuedouble != numbers[i].value)
			fail_msg("%s parsed as %g", numbers[i].text, ep_json_root(doc)->valuedouble);
		ep_json_doc_free(doc);
	}
	doc = parse_ok("\"top\"");
	assert_string_equal(ep_json_root(doc)->valuestring, "top");
	ep_json_doc_free(doc);
	doc = parse_ok("null");
	assert_true(cJSON_IsNull(ep_json_root(doc)));
	assert_pos(doc, ep_json_root(doc), 1, 1);
	ep_json_doc_free(doc);
}

static void test_not_nul_terminated(void **state UNUSED)
{
	struct ep_json_error err;
	struct ep_json_doc *doc;

	/* only text[0..len) counts */
	doc = ep_json_parse("[1,2]garbage", 5, &err);
	assert_non_null(doc);
	assert_int_equal(cJSON_GetArraySize(ep_json_root(doc)), 2);
	ep_json_doc_free(doc);
	doc = ep_json_parse("1234", 2, &err);
	assert_non_null(doc);
	assert_true(ep_json_root(doc)->valuedouble == 12);
	ep_json_doc_free(doc);
	doc = ep_json_parse("\"abc\"", 4, &err);
	assert_null(doc);
	assert_string_equal(err.message, "unterminated string");
}

static void test_byte_order_mark(void **state UNUSED)
{
	struct ep_json_doc *doc = parse_ok("\xef\xbb\xbf{\"a\": 1}");

	/* columns count bytes, the mark included */
	assert_pos(doc, ep_json_root(doc), 1, 4);
	assert_pos(doc, ep_json_root(doc)->child, 1, 5);
	ep_json_doc_free(doc);
}

static void test_string_escapes(void **state UNUSED)
{
	struct ep_json_doc *doc;

	doc = parse_ok("\"q\\\" b\\\\ s\\/ \\b\\f\\n\\r\\t\"");
	assert_string_equal(ep_json_root(doc)->valuestring, "q\" b\\ s/ \b\f\n\r\t");
	ep_json_doc_free(doc);

	/* one, two and three byte encodings, upper and lower case hex */
	doc = parse_ok("\"\\u0041\\u00e9\\u20AC\\u07ff\\uFFFF\"");
	assert_string_equal(ep_json_root(doc)->valuestring,
			    "A\xc3\xa9\xe2\x82\xac\xdf\xbf\xef\xbf\xbf");
	ep_json_doc_free(doc);

	/* raw UTF-8 passes through untouched */
	doc = parse_ok("\"gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf\"");
	assert_string_equal(ep_json_root(doc)->valuestring,
			    "gr\xc3\xbc\xc3\x9f \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf");
	ep_json_doc_free(doc);

	/* keys are decoded the same way */
	doc = parse_ok("{\"k\\u00e9y\\n\": 1}");
	assert_string_equal(ep_json_root(doc)->child->string, "k\xc3\xa9y\n");
	ep_json_doc_free(doc);
}

static void test_surrogate_pairs(void **state UNUSED)
{
	struct ep_json_doc *doc;

	/* U+1F600 */
	doc = parse_ok("\"\\uD83D\\uDE00\"");
	assert_string_equal(ep_json_root(doc)->valuestring, "\xf0\x9f\x98\x80");
	ep_json_doc_free(doc);
	/* the lowest and the highest code points that need a pair */
	doc = parse_ok("[\"\\ud800\\udc00\", \"\\uDBFF\\uDFFF\", \"a\\uD834\\uDD1Eb\"]");
	assert_string_equal(cJSON_GetArrayItem(ep_json_root(doc), 0)->valuestring,
			    "\xf0\x90\x80\x80");
	assert_string_equal(cJSON_GetArrayItem(ep_json_root(doc), 1)->valuestring,
			    "\xf4\x8f\xbf\xbf");
	assert_string_equal(cJSON_GetArrayItem(ep_json_root(doc), 2)->valuestring,
			    "a\xf0\x9d\x84\x9e" "b");
	ep_json_doc_free(doc);
}

/* ---- positions -------------------------------------------------------------------- */

static void test_positions(void **state UNUSED)
{
	static const char text[] =
		"// leading comment\n"              /* 1 */
		"{\n"                               /* 2 */
		"\t\"name\": \"x\",   /* c */\n"    /* 3 */
		"\t\"list\": [1,\n"                 /* 4 */
		"\t  {\"k\": true},\n"              /* 5 */
		"\t  \"\xc3\xa9\", 3],\n"           /* 6: é is two bytes */
		"\t\"nested\": {\n"                 /* 7 */
		"\t\t\"deep\": {\"v\": null}\n"     /* 8 */
		"\t}\n"                             /* 9 */
		"}\n";                              /* 10 */
	struct ep_json_doc *doc = parse_ok(text);
	cJSON *root = ep_json_root(doc), *list, *nested, *deep;

	assert_pos(doc, root, 2, 1);
	/* members are where their keys are */
	assert_pos(doc, cJSON_GetObjectItemCaseSensitive(root, "name"), 3, 2);
	list = cJSON_GetObjectItemCaseSensitive(root, "list");
	assert_pos(doc, list, 4, 2);
	/* array elements where their values start */
	assert_pos(doc, cJSON_GetArrayItem(list, 0), 4, 11);
	assert_pos(doc, cJSON_GetArrayItem(list, 1), 5, 4);
	assert_pos(doc, cJSON_GetArrayItem(list, 1)->child, 5, 5);
	assert_pos(doc, cJSON_GetArrayItem(list, 2), 6, 4);
	assert_pos(doc, cJSON_GetArrayItem(list, 3), 6, 10);
	nested = cJSON_GetObjectItemCaseSensitive(root, "nested");
	assert_pos(doc, nested, 7, 2);
	deep = cJSON_GetObjectItemCaseSensitive(nested, "deep");
	assert_pos(doc, deep, 8, 3);
	assert_pos(doc, cJSON_GetObjectItemCaseSensitive(deep, "v"), 8, 12);
	ep_json_doc_free(doc);
}

static void test_positions_crlf_and_comments(void **state UNUSED)
{
	struct ep_json_doc *doc =
		parse_ok("[\r\n  1,\r\n/* x\r\n y */  2, // z\r\n\t3]");
	cJSON *root = ep_json_root(doc);

	assert_pos(doc, root, 1, 1);
	assert_pos(doc, cJSON_GetArrayItem(root, 0), 2, 3);
	assert_pos(doc, cJSON_GetArrayItem(root, 1), 4, 8);
	assert_pos(doc, cJSON_GetArrayItem(root, 2), 5, 2);
	ep_json_doc_free(doc);
}

static void test_position_unknown_node(void **state UNUSED)
{
	struct ep_json_doc *doc = parse_ok("{\"a\": [1]}");
	struct ep_json_doc *other = parse_ok("{\"a\": [1]}");
	cJSON *stray = cJSON_CreateNull();
	unsigned line = 7, column = 7;

	assert_int_equal(ep_json_position(doc, stray, &line, &column), -ENOENT);
	assert_int_equal(line, 0);
	assert_int_equal(column, 0);
	line = column = 7;
	assert_int_equal(ep_json_position(doc, ep_json_root(other), &line, &column), -ENOENT);
	assert_int_equal(line, 0);
	assert_int_equal(column, 0);
	assert_int_equal(ep_json_position(doc, NULL, &line, &column), -ENOENT);
	cJSON_Delete(stray);
	ep_json_doc_free(other);
	ep_json_doc_free(doc);
	/* freeing nothing is fine */
	ep_json_doc_free(NULL);
}

/* ---- errors -------------------------------------------------------------------------- */

static void test_errors_structure(void **state UNUSED)
{
	static const struct err_case cases[] = {
		{ "", 0, 1, 1, "the document is empty" },
		{ "  // only a comment\n", 0, 2, 1, "the document is empty" },
		{ "/* nothing */", 0, 1, 14, "the document is empty" },
		{ "[1,]", 0, 1, 3, "trailing comma before ']'" },
		{ "[1,\n  ]", 0, 1, 3, "trailing comma before ']'" },
		{ "{\"a\":1,}", 0, 1, 7, "trailing comma before '}'" },
		{ "{\"a\":1, /* c */ }", 0, 1, 7, "trailing comma before '}'" },
		{ "[,1]", 0, 1, 2, "expected a value" },
		{ "[1,,2]", 0, 1, 4, "expected a value" },
		{ "{\"a\":1 \"b\":2}", 0, 1, 8, "expected ',' or '}' after object member" },
		{ "{\"a\":1", 0, 1, 7, "expected ',' or '}' after object member" },
		{ "{\"a\":1]", 0, 1, 7, "expected ',' or '}' after object member" },
		{ "[1 2]", 0, 1, 4, "expected ',' or ']' after array element" },
		{ "[1", 0, 1, 3, "expected ',' or ']' after array element" },
		{ "[1}", 0, 1, 3, "expected ',' or ']' after array element" },
		{ "{\"a\" 1}", 0, 1, 6, "expected ':' after object key" },
		{ "{\"a\"", 0, 1, 5, "expected ':' after object key" },
		{ "{a:1}", 0, 1, 2, "expected a string key or '}'" },
		{ "{", 0, 1, 2, "expected a string key or '}'" },
		{ "{'a':1}", 0, 1, 2, "expected a string key or '}'" },
		{ "{\"a\":1, b:2}", 0, 1, 9, "expected a string key" },
		{ "{\"a\":}", 0, 1, 6, "expected a value" },
		{ "{\"a\":", 0, 1, 6, "expected a value" },
		{ "[", 0, 1, 2, "expected a value" },
		{ "]", 0, 1, 1, "expected a value" },
		{ "tru", 0, 1, 1, "expected a value" },
		{ "True", 0, 1, 1, "expected a value" },
		{ "[nulls]", 0, 1, 2, "expected a value" },
		{ "'a'", 0, 1, 1, "expected a value" },
		{ "NaN", 0, 1, 1, "NaN and Infinity are not allowed in JSON" },
		{ "[Infinity]", 0, 1, 2, "NaN and Infinity are not allowed in JSON" },
		{ "-Infinity", 0, 1, 1, "NaN and Infinity are not allowed in JSON" },
		{ "{\"a\":1}x", 0, 1, 8, "expected end of input after the top-level value" },
		{ "1 2", 0, 1, 3, "expected end of input after the top-level value" },
		{ "[1]\n]", 0, 2, 1, "expected end of input after the top-level value" },
		{ "[1] // ok\n /* ok */ ,", 0, 2, 11,
		  "expected end of input after the top-level value" },
		{ "[\0]", 3, 1, 2, "expected a value" },
		{ "1\0", 2, 1, 2, "expected end of input after the top-level value" },
	};

	CHECK_ERRORS(cases);
}

static void test_errors_duplicate_keys(void **state UNUSED)
{
	static const struct err_case cases[] = {
		{ "{\"a\":1,\n  \"a\":2}", 0, 2, 3, "duplicate key \"a\"" },
		{ "{\"a\":1, \"b\":2, \"c\": {\"x\":1, \"x\":[]}}", 0, 1, 29, "duplicate key \"x\"" },
		/* the same key after decoding escapes */
		{ "{\"ab\":1, \"a\\u0062\":2}", 0, 1, 10, "duplicate key \"ab\"" },
	};
	struct ep_json_doc *doc;

	CHECK_ERRORS(cases);
	/* the same key in different objects, and keys differing only in case, are fine */
	doc = parse_ok("{\"a\": {\"a\": 1}, \"b\": [{\"a\": 1}, {\"a\": 2}], \"A\": 0}");
	ep_json_doc_free(doc);
}

static void test_errors_strings(void **state UNUSED)
{
	static const struct err_case cases[] = {
		{ "\"abc", 0, 1, 1, "unterminated string" },
		{ "[1,\n \"abc\\", 0, 2, 2, "unterminated string" },
		{ "{\"abc", 0, 1, 2, "unterminated string" },
		{ "\"a\nb\"", 0, 1, 3, "control character 0x0A in string must be escaped" },
		{ "\"a\tb\"", 0, 1, 3, "control character 0x09 in string must be escaped" },
		{ "\"a\0\"", 4, 1, 3, "control character 0x00 in string must be escaped" },
		{ "\"\x1f\"", 0, 1, 2, "control character 0x1F in string must be escaped" },
		{ "\"\\x\"", 0, 1, 2, "invalid escape '\\x' in string" },
		{ "\"ab\\'\"", 0, 1, 4, "invalid escape '\\'' in string" },
		{ "\"\\U0041\"", 0, 1, 2, "invalid escape '\\U' in string" },
		{ "\"\\\x01\"", 0, 1, 2, "invalid escape in string" },
		{ "\"\\u12G4\"", 0, 1, 2, "expected four hex digits after \\u" },
		{ "\"\\u12\"", 0, 1, 2, "expected four hex digits after \\u" },
		{ "\"\\u", 0, 1, 2, "expected four hex digits after \\u" },
		{ "\"\\u0000\"", 0, 1, 2, "\\u0000 is not allowed in strings" },
		{ "{\"a\\u0000b\": 1}", 0, 1, 4, "\\u0000 is not allowed in strings" },
		{ "\"ab\\uD800\"", 0, 1, 4, "unpaired surrogate \\uD800" },
		{ "\"\\uDBFF\"", 0, 1, 2, "unpaired surrogate \\uDBFF" },
		{ "\"\\udc00\\ud800\"", 0, 1, 2, "unpaired surrogate \\uDC00" },
		{ "\"\\uD800\\u0041\"", 0, 1, 2, "unpaired surrogate \\uD800" },
		{ "\"\\uD800\\uD800\"", 0, 1, 2, "unpaired surrogate \\uD800" },
		{ "\"\\uD800x\"", 0, 1, 2, "unpaired surrogate \\uD800" },
		{ "\"\\uD800\\n\"", 0, 1, 2, "unpaired surrogate \\uD800" },
		{ "\"\\uD800\\uZZZZ\"", 0, 1, 8, "expected four hex digits after \\u" },
		/* raw bytes that are not UTF-8 */
		{ "\"a\xff\"", 0, 1, 3, "invalid UTF-8 in string" },
		{ "\"\x80\"", 0, 1, 2, "invalid UTF-8 in string" },             /* lone continuation */
		{ "\"\xc0\xaf\"", 0, 1, 2, "invalid UTF-8 in string" },         /* overlong '/' */
		{ "\"\xc1\xbf\"", 0, 1, 2, "invalid UTF-8 in string" },         /* overlong */
		{ "\"\xe0\x80\xaf\"", 0, 1, 2, "invalid UTF-8 in string" },     /* overlong */
		{ "\"\xf0\x80\x80\xaf\"", 0, 1, 2, "invalid UTF-8 in string" }, /* overlong */
		{ "\"\xed\xa0\x80\"", 0, 1, 2, "invalid UTF-8 in string" },     /* U+D800 */
		{ "\"\xf4\x90\x80\x80\"", 0, 1, 2, "invalid UTF-8 in string" }, /* U+110000 */
		{ "\"\xf5\x80\x80\x80\"", 0, 1, 2, "invalid UTF-8 in string" },
		{ "\"ab\xe2\x82\"", 0, 1, 4, "invalid UTF-8 in string" },       /* truncated */
		{ "\"\xc3(\"", 0, 1, 2, "invalid UTF-8 in string" },
		{ "[\"\xe2\x82", 0, 1, 3, "invalid UTF-8 in string" },          /* cut by EOF */
	};

	CHECK_ERRORS(cases);
}

static void test_errors_numbers(void **state UNUSED)
{
	static const struct err_case cases[] = {
		{ "01", 0, 1, 1, "leading zeros are not allowed in numbers" },
		{ "-01", 0, 1, 2, "leading zeros are not allowed in numbers" },
		{ "[1, 00]", 0, 1, 5, "leading zeros are not allowed in numbers" },
		{ "1.", 0, 1, 3, "expected a digit after '.'" },
		{ "1.e5", 0, 1, 3, "expected a digit after '.'" },
		{ "[-1.]", 0, 1, 5, "expected a digit after '.'" },
		{ ".5", 0, 1, 1, "expected a value" },
		{ "+1", 0, 1, 1, "expected a value" },
		{ "1e", 0, 1, 3, "expected a digit in the exponent" },
		{ "1e+", 0, 1, 4, "expected a digit in the exponent" },
		{ "1E-x", 0, 1, 4, "expected a digit in the exponent" },
		{ "-", 0, 1, 2, "expected a digit after '-'" },
		{ "- 1", 0, 1, 2, "expected a digit after '-'" },
		{ "1e999", 0, 1, 1, "number is out of range" },
		{ "[1, -1e400]", 0, 1, 5, "number is out of range" },
		{ "0x10", 0, 1, 2, "expected end of input after the top-level value" },
		{ "1.5.2", 0, 1, 4, "expected end of input after the top-level value" },
		{ "12abc", 0, 1, 3, "expected end of input after the top-level value" },
	};

	CHECK_ERRORS(cases);
}

static void test_errors_comments(void **state UNUSED)
{
	static const struct err_case cases[] = {
		{ "/* abc", 0, 1, 1, "unterminated comment" },
		{ "/*/", 0, 1, 1, "unterminated comment" },
		{ "/*", 0, 1, 1, "unterminated comment" },
		{ "[1, /* x\n\n */ 2, /* never", 0, 3, 8, "unterminated comment" },
		{ "1 /* *", 0, 1, 3, "unterminated comment" },
		{ "/", 0, 1, 1, "expected '//' or '/*' to start a comment" },
		{ "[1 / 2]", 0, 1, 4, "expected '//' or '/*' to start a comment" },
		{ "# hash\n1", 0, 1, 1, "expected a value" },
	};
	struct ep_json_doc *doc;

	CHECK_ERRORS(cases);
	/* comments at the very ends, without a final newline, and nested-looking ones */
	doc = parse_ok("/**/1//c");
	ep_json_doc_free(doc);
	doc = parse_ok("1/***/");
	ep_json_doc_free(doc);
	doc = parse_ok("[/* // */ 1 /* /* */]");
	ep_json_doc_free(doc);
}

static char *nested(const char *open, const char *inner, const char *close, int levels)
{
	size_t lo = strlen(open), li = strlen(inner), lc = strlen(close);
	char *s = ep_malloc0(levels * (lo + lc) + li + 1), *p = s;
	int i;

	for (i = 0; i < levels; i++, p += lo)
		memcpy(p, open, lo);
	memcpy(p, inner, li);
	p += li;
	for (i = 0; i < levels; i++, p += lc)
		memcpy(p, close, lc);
	return s;
}

static void test_depth(void **state UNUSED)
{
	struct ep_json_error err;
	struct ep_json_doc *doc;
	char *text;

	text = nested("[", "1", "]", 64);
	doc = parse_ok(text);
	ep_json_doc_free(doc);
	free(text);

	text = nested("[", "1", "]", 65);
	assert_null(ep_json_parse(text, strlen(text), &err));
	assert_int_equal(err.line, 1);
	assert_int_equal(err.column, 65);
	assert_string_equal(err.message, "nesting deeper than 64 levels");
	free(text);

	/* objects count the same; "{\"a\":" is five bytes */
	text = nested("{\"a\":", "{}", "}", 63);
	doc = parse_ok(text);
	ep_json_doc_free(doc);
	free(text);
	text = nested("{\"a\":", "{}", "}", 64);
	assert_null(ep_json_parse(text, strlen(text), &err));
	assert_int_equal(err.line, 1);
	assert_int_equal(err.column, 64 * 5 + 1);
	assert_string_equal(err.message, "nesting deeper than 64 levels");
	free(text);

	/* a deep document far beyond the limit fails cleanly, without deep recursion */
	text = nested("[", "", "]", 100000);
	assert_null(ep_json_parse(text, strlen(text), &err));
	assert_int_equal(err.column, 65);
	free(text);
}

/* ---- files ------------------------------------------------------------------------------- */

struct tmpdir {
	char path[64];
};

static int setup_tmpdir(void **state)
{
	struct tmpdir *t = ep_malloc0(sizeof(*t));

	snprintf(t->path, sizeof(t->path), "/tmp/test-json.XXXXXX");
	if (mkdtemp(t->path) == NULL) {
		free(t);
		return -1;
	}
	*state = t;
	return 0;
}

static int teardown_tmpdir(void **state)
{
	struct tmpdir *t = *state;
	char cmd[128];
	int r;

	/* tests make a few files and directories; all disposable */
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->path);
	r = system(cmd);
	free(t);
	return r == 0 ? 0 : -1;
}

static char *write_file(const struct tmpdir *t, const char *name, const char *data, size_t len)
{
	char *path = ep_strdup_printf("%s/%s", t->path, name);
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	return path;
}

static void expect_load_error(const char *path, const char *suffix)
{
	char *error = (char *)"untouched", *want;
	struct ep_json_doc *doc = ep_json_load_file(path, &error);

	assert_null(doc);
	assert_non_null(error);
	want = ep_strdup_printf("%s%s", path, suffix);
	assert_string_equal(error, want);
	free(want);
	free(error);
}

static void test_load_file_good(void **state UNUSED)
{
	static const char text[] = "// config\n{\n  \"listen\": \"127.0.0.1:2379\",\n"
				   "  \"limits\": {\"max\": 10}\n}\n";
	struct tmpdir *t = *state;
	char *path = write_file(t, "good.json", text, strlen(text));
	char *error = (char *)"untouched";
	struct ep_json_doc *doc = ep_json_load_file(path, &error);
	cJSON *limits;

	assert_non_null(doc);
	assert_null(error);
	assert_string_equal(
		cJSON_GetObjectItemCaseSensitive(ep_json_root(doc), "listen")->valuestring,
		"127.0.0.1:2379");
	limits = cJSON_GetObjectItemCaseSensitive(ep_json_root(doc), "limits");
	assert_pos(doc, limits, 4, 3);
	assert_pos(doc, limits->child, 4, 14);
	ep_json_doc_free(doc);
	free(path);
}

static void test_load_file_syntax_error(void **state UNUSED)
{
	static const char text[] = "{\n  \"a\": 1,\n  \"b\": 2,\n}\n";
	struct tmpdir *t = *state;
	char *path = write_file(t, "bad.json", text, strlen(text));

	expect_load_error(path, ":3:9: trailing comma before '}'");
	free(path);
	path = write_file(t, "empty.json", "", 0);
	expect_load_error(path, ":1:1: the document is empty");
	free(path);
}

static void test_load_file_unreadable(void **state UNUSED)
{
	struct tmpdir *t = *state;
	char *path;

	path = ep_strdup_printf("%s/missing.json", t->path);
	expect_load_error(path, ": No such file or directory");
	free(path);
	expect_load_error(t->path, ": not a regular file");
	/* a FIFO without a writer must be refused, not waited on */
	path = ep_strdup_printf("%s/fifo", t->path);
	assert_int_equal(mkfifo(path, 0600), 0);
	expect_load_error(path, ": not a regular file");
	free(path);
	expect_load_error("/dev/null", ": not a regular file");
	/* through a file that is not a directory */
	path = write_file(t, "plain", "1", 1);
	free(path);
	path = ep_strdup_printf("%s/plain/x.json", t->path);
	expect_load_error(path, ": Not a directory");
	free(path);
}

static void test_load_file_size_limit(void **state UNUSED)
{
	const size_t limit = 4 * 1024 * 1024;
	struct tmpdir *t = *state;
	char *data = ep_realloc(NULL, limit + 1), *path, *error = NULL;
	struct ep_json_doc *doc;

	/* exactly 4 MiB: one long string */
	memset(data, 'a', limit + 1);
	data[0] = '"';
	data[limit - 1] = '"';
	path = write_file(t, "limit.json", data, limit);
	doc = ep_json_load_file(path, &error);
	assert_non_null(doc);
	assert_null(error);
	assert_int_equal(strlen(ep_json_root(doc)->valuestring), limit - 2);
	ep_json_doc_free(doc);
	free(path);

	/* one byte more: a trailing newline */
	data[limit] = '\n';
	path = write_file(t, "big.json", data, limit + 1);
	expect_load_error(path, ": file is larger than 4 MiB");
	free(path);
	free(data);
}

/* ---- durations (lib/util.c) ------------------------------------------------------------- */

static void test_duration_parse(void **state UNUSED)
{
	static const struct {
		const char *text;
		uint64_t ms;
	} good[] = {
		{ "0", 0 },
		{ "0s", 0 },
		{ "730h", 2628000000ull },
		{ "1h30m", 5400000 },
		{ "250ms", 250 },
		{ "1.5h", 5400000 },
		{ "10s", 10000 },
		{ "2m", 120000 },
		{ "1h2m3s4ms", 3723004 },
		{ "1.5s", 1500 },
		{ ".5s", 500 },
		{ "1.s", 1000 },
		{ "0.0015s", 1 },
		{ "1500us", 1 },
		{ "1999\xc2\xb5s", 1 }, /* micro sign */
		{ "1000\xce\xbcs", 1 }, /* Greek mu */
		{ "999999ns", 1 },      /* above zero: at least 1 ms, never 0 ("off" for some keys) */
		{ "500us", 1 },
		{ "0ns", 0 },
		{ "1999999ns", 1 },     /* rounds down above 1 ms */
		{ "1000000ns", 1 },
		{ "1.0000000000000000000000001s", 1000 },
		{ "9223372036854775807ns", 9223372036854ull },
		{ "2562047h", 9223369200000ull },
	};
	static const char *const bad[] = {
		"", "-1h", "+1h", "10x", "h", "10", "1h ", " 1h", ".s", "1..5s", "1hh",
		"1.5", "ms", "1sm", "1H", "9223372036854775808ns", "2562048h",
		"99999999999999999999h", "2562047h1h",
	};
	uint64_t ms;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		ms = 12345;
		if (ep_parse_duration_ms(good[i].text, &ms) != 0)
			fail_msg("\"%s\" refused", good[i].text);
		if (ms != good[i].ms)
			fail_msg("\"%s\" = %llu ms, expected %llu", good[i].text,
				 (unsigned long long)ms, (unsigned long long)good[i].ms);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (ep_parse_duration_ms(bad[i], &ms) != -EINVAL)
			fail_msg("\"%s\" accepted", bad[i]);
	}
	assert_int_equal(ep_parse_duration_ms(NULL, &ms), -EINVAL);
}

static void test_duration_format(void **state UNUSED)
{
	static const struct {
		uint64_t ms;
		const char *text;
	} cases[] = {
		{ 0, "0s" },
		{ 1, "1ms" },
		{ 250, "250ms" },
		{ 1000, "1s" },
		{ 1500, "1.5s" },
		{ 1050, "1.05s" },
		{ 60000, "1m0s" },
		{ 3600000, "1h0m0s" },
		{ 3723500, "1h2m3.5s" },
		{ 2628000000ull, "730h0m0s" },
	};
	char buf[32];
	uint64_t back;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		ep_format_duration_ms(cases[i].ms, buf, sizeof(buf));
		assert_string_equal(buf, cases[i].text);
		/* what we print we can read back */
		assert_int_equal(ep_parse_duration_ms(buf, &back), 0);
		assert_int_equal(back, cases[i].ms);
	}
	/* a short buffer truncates and stays terminated */
	memset(buf, 'x', sizeof(buf));
	ep_format_duration_ms(3723500, buf, 5);
	assert_string_equal(buf, "1h2m");
	assert_int_equal(buf[5], 'x');
}

static void test_mkdir_p(void **state UNUSED)
{
	struct tmpdir *t = *state;
	char *path = ep_strdup_printf("%s/a//b/c/", t->path), *file;
	mode_t mask = umask(0);
	struct stat st;

	umask(mask);

	assert_int_equal(ep_mkdir_p(path, 0750), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISDIR(st.st_mode));
	assert_int_equal(st.st_mode & 0777, 0750 & ~mask);
	/* again: everything exists */
	assert_int_equal(ep_mkdir_p(path, 0750), 0);
	free(path);
	file = write_file(t, "f", "", 0);
	path = ep_strdup_printf("%s/sub", file);
	assert_int_equal(ep_mkdir_p(path, 0750), -ENOTDIR);
	assert_int_equal(ep_mkdir_p(file, 0750), -ENOTDIR);
	assert_int_equal(ep_mkdir_p("", 0750), -EINVAL);
	free(path);
	free(file);
}

static void test_now_ms(void **state UNUSED)
{
	uint64_t a = ep_now_ms(), b;
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	nanosleep(&ts, NULL);
	b = ep_now_ms();
	assert_true(b >= a + 19);
	assert_true(b < a + 5000);
}

int main(void)
{
	const struct CMUnitTest json_tests[] = {
		cmocka_unit_test(test_valid_with_comments),
		cmocka_unit_test(test_scalars),
		cmocka_unit_test(test_not_nul_terminated),
		cmocka_unit_test(test_byte_order_mark),
		cmocka_unit_test(test_string_escapes),
		cmocka_unit_test(test_surrogate_pairs),
		cmocka_unit_test(test_positions),
		cmocka_unit_test(test_positions_crlf_and_comments),
		cmocka_unit_test(test_position_unknown_node),
		cmocka_unit_test(test_errors_structure),
		cmocka_unit_test(test_errors_duplicate_keys),
		cmocka_unit_test(test_errors_strings),
		cmocka_unit_test(test_errors_numbers),
		cmocka_unit_test(test_errors_comments),
		cmocka_unit_test(test_depth),
		cmocka_unit_test_setup_teardown(test_load_file_good, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_load_file_syntax_error, setup_tmpdir,
						teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_load_file_unreadable, setup_tmpdir,
						teardown_tmpdir),
		cmocka_unit_test_setup_teardown(test_load_file_size_limit, setup_tmpdir,
						teardown_tmpdir),
	};
	const struct CMUnitTest util_tests[] = {
		cmocka_unit_test(test_duration_parse),
		cmocka_unit_test(test_duration_format),
		cmocka_unit_test_setup_teardown(test_mkdir_p, setup_tmpdir, teardown_tmpdir),
		cmocka_unit_test(test_now_ms),
	};
	int failed;

	failed = cmocka_run_group_tests_name("json", json_tests, NULL, NULL);
	failed += cmocka_run_group_tests_name("util", util_tests, NULL, NULL);
	return failed == 0 ? 0 : 1;
}
