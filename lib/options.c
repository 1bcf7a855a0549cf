#include "build-config.h"

#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static const char *const type_names[] = {
	[EP_OPT_UINT] = "uint",     [EP_OPT_NUMBER] = "number", [EP_OPT_DURATION] = "duration",
	[EP_OPT_ENUM] = "enum",     [EP_OPT_STRING] = "string", [EP_OPT_PATH] = "path",
	[EP_OPT_STRINGS] = "strings",
};

/* What a JSON value is, for "got ...": the value itself, shortened. */
static char *got(const cJSON *v)
{
	char *text = cJSON_PrintUnformatted(v);
	char *r;

	if (text == NULL)
		return ep_strdup("an invalid value");
	if (strlen(text) > 80)
		strcpy(text + 74, "...");
	r = ep_strdup(text);
	cJSON_free(text);
	return r;
}

static int fail(const cJSON *node, const cJSON **node_r, char **error_r, const char *section,
		const struct ep_option *o, const char *expected, const cJSON *v)
{
	char *g = got(v);

	*node_r = node;
	*error_r = ep_strdup_printf("%s.%s: expected %s%s%s%s, got %s", section, o->name, expected,
				    o->help ? " (" : "", o->help ? o->help : "", o->help ? ")" : "",
				    g);
	free(g);
	return -EINVAL;
}

/* " from X to Y" for a range, "" when it is the whole range of the type. */
static void range_text(const struct ep_option *o, char *buf, size_t size)
{
	char lo[40], hi[40];

	buf[0] = '\0';
	if (o->type == EP_OPT_DURATION) {
		/* 1e15 ms (31,000 years) and above: no upper bound worth saying */
		if (o->min <= 0 && o->max >= 1e15)
			return;
		ep_format_duration_ms((uint64_t)o->min, lo, sizeof(lo));
		ep_format_duration_ms((uint64_t)o->max, hi, sizeof(hi));
		if (o->max >= 1e15)
			snprintf(buf, size, " of at least %s", lo);
		else
			snprintf(buf, size, " from %s to %s", lo, hi);
		return;
	}
	snprintf(buf, size, " from %.15g to %.15g", o->min, o->max);
}

static void free_strings(struct ep_option_strings *s)
{
	for (size_t i = 0; i < s->n; i++)
		free(s->v[i]);
	free(s->v);
	s->v = NULL;
	s->n = 0;
}

static int apply_one(const struct ep_option *o, const char *section, const cJSON *v, void *out,
		     const cJSON **node_r, char **error_r)
{
	char *slot = out != NULL ? (char *)out + o->offset : NULL;
	char expected[200], range[100];
	uint64_t ms;

	range_text(o, range, sizeof(range));
	switch (o->type) {
	case EP_OPT_UINT:
		if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) ||
		    v->valuedouble < o->min || v->valuedouble > o->max) {
			snprintf(expected, sizeof(expected), "an integer%s", range);
			return fail(v, node_r, error_r, section, o, expected, v);
		}
		if (slot != NULL)
			*(uint64_t *)(void *)slot = (uint64_t)v->valuedouble;
		return 0;
	case EP_OPT_NUMBER:
		if (!cJSON_IsNumber(v) || v->valuedouble < o->min || v->valuedouble > o->max) {
			snprintf(expected, sizeof(expected), "a number%s", range);
			return fail(v, node_r, error_r, section, o, expected, v);
		}
		if (slot != NULL)
			*(double *)(void *)slot = v->valuedouble;
		return 0;
	case EP_OPT_DURATION:
		if (!cJSON_IsString(v) || ep_parse_duration_ms(v->valuestring, &ms) < 0 ||
		    (double)ms < o->min || (double)ms > o->max) {
			snprintf(expected, sizeof(expected),
				 "a duration such as \"5s\", \"500ms\" or \"1h30m\"%s", range);
			return fail(v, node_r, error_r, section, o, expected, v);
		}
		if (slot != NULL)
			*(uint64_t *)(void *)slot = ms;
		return 0;
	case EP_OPT_ENUM: {
		size_t n = 0;

		if (cJSON_IsString(v))
			for (; o->values[n] != NULL; n++)
				if (strcmp(o->values[n], v->valuestring) == 0)
					break;
		if (!cJSON_IsString(v) || o->values[n] == NULL) {
			size_t len = 0;

			len += (size_t)snprintf(expected, sizeof(expected), "one of");
			for (size_t i = 0; o->values[i] != NULL && len < sizeof(expected); i++)
				len += (size_t)snprintf(expected + len, sizeof(expected) - len,
							"%s \"%s\"", i ? "," : "", o->values[i]);
			return fail(v, node_r, error_r, section, o, expected, v);
		}
		if (slot != NULL)
			*(int *)(void *)slot = (int)n;
		return 0;
	}
	case EP_OPT_STRING:
	case EP_OPT_PATH:
		if (!cJSON_IsString(v) || v->valuestring[0] == '\0' ||
		    (o->type == EP_OPT_PATH && v->valuestring[0] != '/'))
			return fail(v, node_r, error_r, section, o,
				    o->type == EP_OPT_PATH ? "an absolute path" : "a non-empty string",
				    v);
		if ((o->flags & EP_OPT_EXECUTABLE) && access(v->valuestring, X_OK) < 0) {
			*node_r = v;
			*error_r = ep_strdup_printf("%s.%s: %s: %s (an executable file is expected)",
						    section, o->name, v->valuestring, strerror(errno));
			return -EINVAL;
		}
		if (slot != NULL) {
			free(*(char **)(void *)slot);
			*(char **)(void *)slot = ep_strdup(v->valuestring);
		}
		return 0;
	case EP_OPT_STRINGS: {
		const cJSON *e;
		struct ep_option_strings *s = (struct ep_option_strings *)(void *)slot;

		if (!cJSON_IsArray(v))
			return fail(v, node_r, error_r, section, o, "an array of strings", v);
		cJSON_ArrayForEach(e, v)
		{
			if (!cJSON_IsString(e))
				return fail(e, node_r, error_r, section, o,
					    "an array of strings", e);
		}
		if (s != NULL) {
			size_t n = 0;

			free_strings(s);
			s->v = ep_malloc0(((size_t)cJSON_GetArraySize(v) + 1) * sizeof(char *));
			cJSON_ArrayForEach(e, v)
				s->v[n++] = ep_strdup(e->valuestring);
			s->n = n;
		}
		return 0;
	}
	}
	*node_r = v;
	*error_r = ep_strdup_printf("%s.%s: the plugin describes it with an unknown type %u",
				    section, o->name, (unsigned)o->type);
	return -EINVAL;
}

int ep_options_apply(const struct ep_option *table, const char *section, const cJSON *obj,
		     void *out, const cJSON **node_r, char **error_r)
{
	const cJSON *m;

	*node_r = NULL;
	*error_r = NULL;
	if (!cJSON_IsObject(obj)) {
		char *g = got(obj);

		*node_r = obj;
		*error_r = ep_strdup_printf("%s: expected an object of options, got %s", section, g);
		free(g);
		return -EINVAL;
	}
	cJSON_ArrayForEach(m, obj)
	{
		const struct ep_option *o = table;

		while (o->type != EP_OPT_END && strcmp(o->name, m->string) != 0)
			o++;
		if (o->type == EP_OPT_END) {
			size_t cap = 64, len;
			char *known = ep_malloc0(cap);

			len = 0;
			for (const struct ep_option *k = table; k->type != EP_OPT_END; k++) {
				size_t need = len + strlen(k->name) + 3;

				if (need > cap) {
					cap = need * 2;
					known = ep_realloc(known, cap);
				}
				len += (size_t)snprintf(known + len, cap - len, "%s%s",
							len ? ", " : "", k->name);
			}
			*node_r = m;
			*error_r = ep_strdup_printf("%s: unknown key \"%s\" (%s%s)", section, m->string,
						    len ? "expected one of: " : "it takes no options",
						    known);
			free(known);
			return -EINVAL;
		}
		if (apply_one(o, section, m, out, node_r, error_r) < 0)
			return -EINVAL;
	}
	return 0;
}

cJSON *ep_options_describe(const struct ep_option *table)
{
	cJSON *a = cJSON_CreateArray();

	for (const struct ep_option *o = table; o->type != EP_OPT_END; o++) {
		cJSON *e = cJSON_CreateObject();

		cJSON_AddStringToObject(e, "name", o->name);
		cJSON_AddStringToObject(e, "type", o->type < sizeof(type_names) / sizeof(type_names[0]) &&
							   type_names[o->type] ? type_names[o->type] : "?");
		if (o->flags & EP_OPT_EXECUTABLE)
			cJSON_AddTrueToObject(e, "executable");
		cJSON_AddNumberToObject(e, "min", o->min);
		cJSON_AddNumberToObject(e, "max", o->max);
		if (o->values != NULL) {
			cJSON *vals = cJSON_AddArrayToObject(e, "values");

			for (size_t i = 0; o->values[i] != NULL; i++)
				cJSON_AddItemToArray(vals, cJSON_CreateString(o->values[i]));
		}
		if (o->help != NULL)
			cJSON_AddStringToObject(e, "help", o->help);
		cJSON_AddItemToArray(a, e);
	}
	return a;
}

void ep_options_free(struct ep_option *table)
{
	if (table == NULL)
		return;
	for (struct ep_option *o = table; o->type != EP_OPT_END; o++) {
		free((char *)o->name);
		free((char *)o->help);
		if (o->values != NULL) {
			for (size_t i = 0; o->values[i] != NULL; i++)
				free((char *)o->values[i]);
			free((void *)o->values);
		}
	}
	free(table);
}

struct ep_option *ep_options_from_json(const cJSON *desc, char **error_r)
{
	struct ep_option *table;
	const cJSON *e;
	size_t n = 0;

	*error_r = NULL;
	if (!cJSON_IsArray(desc)) {
		*error_r = ep_strdup("expected a JSON array of options");
		return NULL;
	}
	table = ep_malloc0(((size_t)cJSON_GetArraySize(desc) + 1) * sizeof(*table));
	cJSON_ArrayForEach(e, desc)
	{
		const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
		const cJSON *values = cJSON_GetObjectItemCaseSensitive(e, "values");
		const cJSON *help = cJSON_GetObjectItemCaseSensitive(e, "help");
		struct ep_option *o = &table[n];
		uint32_t t = 0;

		for (uint32_t i = 1; i < sizeof(type_names) / sizeof(type_names[0]); i++)
			if (cJSON_IsString(type) && strcmp(type->valuestring, type_names[i]) == 0)
				t = i;
		if (!cJSON_IsString(name) || t == 0) {
			*error_r = ep_strdup_printf("option %zu: expected a \"name\" and a known "
						    "\"type\"", n);
			ep_options_free(table);
			return NULL;
		}
		o->name = ep_strdup(name->valuestring);
		o->type = t;
		o->flags = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "executable"))
				   ? EP_OPT_EXECUTABLE
				   : 0;
		o->min = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "min"));
		o->max = cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(e, "max"));
		if (cJSON_IsString(help))
			o->help = ep_strdup(help->valuestring);
		if (cJSON_IsArray(values)) {
			const cJSON *v;
			size_t k = 0;
			const char **vals = ep_malloc0(((size_t)cJSON_GetArraySize(values) + 1) *
						       sizeof(char *));

			cJSON_ArrayForEach(v, values)
				vals[k++] = ep_strdup(cJSON_IsString(v) ? v->valuestring : "");
			o->values = vals;
		} else if (t == EP_OPT_ENUM) {
			o->values = ep_malloc0(sizeof(char *));
		}
		n++;
	}
	table[n].type = EP_OPT_END;
	return table;
}
