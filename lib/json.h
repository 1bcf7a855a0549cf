/*
 * JSON with comments, and where every value came from.
 *
 * The configuration files are JSON that may carry // and / * * / comments.
 * cJSON neither accepts comments nor remembers positions, and every
 * configuration error must name its line and column, so this small parser
 * builds an ordinary cJSON tree and keeps, beside it, the position of every
 * node (for an object member: the position of its key).
 */
#ifndef EP_JSON_H
#define EP_JSON_H

#include <stddef.h>
#include <cjson/cJSON.h>

struct ep_json_doc;

struct ep_json_error {
	unsigned line;    /* 1-based; 0 when unknown */
	unsigned column;  /* 1-based, in bytes */
	char message[160]; /* "expected ',' or '}' after object member" */
};

/*
 * Parse text[0..len) (need not be NUL-terminated).  Accepts strict JSON
 * (RFC 8259) plus // line comments and / * block comments * / anywhere
 * whitespace may stand; rejects trailing commas, duplicate object keys,
 * invalid UTF-8 escapes, lone surrogates, nesting deeper than 64 levels and
 * anything after the top-level value.  Returns the document (the caller frees
 * it with ep_json_doc_free()) or NULL with *err filled in.
 */
struct ep_json_doc *ep_json_parse(const char *text, size_t len, struct ep_json_error *err);

/* The root value; owned by the document. */
cJSON *ep_json_root(const struct ep_json_doc *doc);

/*
 * Where a node of this document starts (for an object member, its key).
 * Returns 0, or -ENOENT for a node that is not from this document
 * (line and column are then 0).
 */
int ep_json_position(const struct ep_json_doc *doc, const cJSON *node,
		     unsigned *line_r, unsigned *column_r);

void ep_json_doc_free(struct ep_json_doc *doc);

/*
 * Read and parse a file.  On error returns NULL and *error_r is a malloc'ed
 * message "PATH:LINE:COLUMN: what was expected" (or "PATH: strerror" when the
 * file cannot be read); the caller frees it.  Files above 4 MiB are refused.
 */
struct ep_json_doc *ep_json_load_file(const char *path, char **error_r);

#endif /* EP_JSON_H */
