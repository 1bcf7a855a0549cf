#include "build-config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "json.h"
#include "util.h"

#define MAX_DEPTH 64
#define MAX_FILE_SIZE (4u * 1024 * 1024)

struct node_pos {
	uintptr_t node;
	unsigned line, column;
};

struct ep_json_doc {
	cJSON *root;
	/* sorted by node address once parsing is done, so lookups can bisect */
	struct node_pos *pos;
	size_t pos_count, pos_alloc;
};

struct text_pos {
	unsigned line, column;
};

struct parser {
	const char *text;
	size_t len, off;
	unsigned line;
	size_t line_start; /* offset of the first byte of the current line */
	struct ep_json_doc *doc;
	struct ep_json_error *err;
	/* scratch for decoding strings; reused, freed with the parser */
	char *buf;
	size_t buf_len, buf_alloc;
};

static struct text_pos here(const struct parser *p)
{
	return (struct text_pos){ p->line, (unsigned)(p->off - p->line_start + 1) };
}

/* Only the first error is kept: it is the one that caused the others. */
static int __attribute__((format(printf, 3, 4)))
fail(struct parser *p, struct text_pos at, const char *fmt, ...)
{
	va_list ap;

	p->err->line = at.line;
	p->err->column = at.column;
	va_start(ap, fmt);
	vsnprintf(p->err->message, sizeof(p->err->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* Every other allocation aborts on out-of-memory; cJSON's must too. */
static cJSON *alloc_check(cJSON *node)
{
	if (node == NULL) {
		fputs("etcdproxy: out of memory in cJSON\n", stderr);
		abort();
	}
	return node;
}

static void record_pos(struct parser *p, const cJSON *node, struct text_pos at)
{
	struct ep_json_doc *doc = p->doc;

	if (doc->pos_count == doc->pos_alloc) {
		doc->pos_alloc = doc->pos_alloc == 0 ? 64 : doc->pos_alloc * 2;
		doc->pos = ep_realloc(doc->pos, doc->pos_alloc * sizeof(*doc->pos));
	}
	doc->pos[doc->pos_count++] = (struct node_pos){ (uintptr_t)node, at.line, at.column };
}

static int peek(const struct parser *p)
{
	return p->off < p->len ? (unsigned char)p->text[p->off] : -1;
}

static void newline(struct parser *p)
{
	/* p->off is just past the '\n' */
	p->line++;
	p->line_start = p->off;
}

/* Whitespace and comments; the only places a newline can occur. */
static int skip_space(struct parser *p)
{
	for (;;) {
		int c = peek(p);

		if (c == ' ' || c == '\t' || c == '\r') {
			p->off++;
		} else if (c == '\n') {
			p->off++;
			newline(p);
		} else if (c == '/') {
			struct text_pos start = here(p);
			int next = p->off + 1 < p->len ? (unsigned char)p->text[p->off + 1] : -1;

			if (next == '/') {
				while (p->off < p->len && p->text[p->off] != '\n')
					p->off++;
			} else if (next == '*') {
				p->off += 2;
				for (;;) {
					if (p->off + 1 >= p->len) {
						p->off = p->len;
						return fail(p, start, "unterminated comment");
					}
					if (p->text[p->off] == '*' && p->text[p->off + 1] == '/') {
						p->off += 2;
						break;
					}
					if (p->text[p->off++] == '\n')
						newline(p);
				}
			} else {
				return fail(p, start, "expected '//' or '/*' to start a comment");
			}
		} else {
			return 0;
		}
	}
}

static void buf_add(struct parser *p, const char *s, size_t n)
{
	if (p->buf_len + n + 1 > p->buf_alloc) {
		while (p->buf_len + n + 1 > p->buf_alloc)
			p->buf_alloc = p->buf_alloc == 0 ? 64 : p->buf_alloc * 2;
		p->buf = ep_realloc(p->buf, p->buf_alloc);
	}
	memcpy(p->buf + p->buf_len, s, n);
	p->buf_len += n;
	p->buf[p->buf_len] = '\0';
}

static void buf_add_codepoint(struct parser *p, uint32_t cp)
{
	char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (char)(0xf0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	buf_add(p, u, n);
}

/*
 * Length of the well-formed UTF-8 sequence at s[0..avail), or 0.  Overlong
 * forms, encoded surrogates and code points above U+10FFFF are not
 * well-formed (RFC 3629 section 4).
 */
static size_t utf8_sequence_len(const unsigned char *s, size_t avail)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t n, i;

	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		n = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		n = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		n = 4;
	else
		return 0;
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	if (avail < n || s[1] < lo || s[1] > hi)
		return 0;
	for (i = 2; i < n; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	}
	return n;
}

static int hex_value(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The four hex digits after "\u" at p->off; -1 when they are not there. */
static int32_t read_hex4(struct parser *p)
{
	int32_t v = 0;
	int i;

	if (p->len - p->off < 4)
		return -1;
	for (i = 0; i < 4; i++) {
		int h = hex_value((unsigned char)p->text[p->off + i]);

		if (h < 0)
			return -1;
		v = v << 4 | h;
	}
	p->off += 4;
	return v;
}

/* A \uXXXX escape, possibly the first half of a surrogate pair; p->off is at the '\'. */
static int parse_unicode_escape(struct parser *p)
{
	struct text_pos start = here(p), second;
	int32_t cp, low;

	p->off += 2;
	cp = read_hex4(p);
	if (cp < 0)
		return fail(p, start, "expected four hex digits after \\u");
	if (cp == 0)
		return fail(p, start, "\\u0000 is not allowed in strings");
	if (cp >= 0xdc00 && cp <= 0xdfff)
		return fail(p, start, "unpaired surrogate \\u%04X", (unsigned)cp);
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (p->len - p->off < 2 || p->text[p->off] != '\\' || p->text[p->off + 1] != 'u')
			return fail(p, start, "unpaired surrogate \\u%04X", (unsigned)cp);
		second = here(p);
		p->off += 2;
		low = read_hex4(p);
		if (low < 0)
			return fail(p, second, "expected four hex digits after \\u");
		if (low < 0xdc00 || low > 0xdfff)
			return fail(p, start, "unpaired surrogate \\u%04X", (unsigned)cp);
		cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
	}
	buf_add_codepoint(p, (uint32_t)cp);
	return 0;
}

/* A string at p->off (the opening quote), decoded into p->buf. */
static int parse_string(struct parser *p)
{
	struct text_pos start = here(p);

	p->buf_len = 0;
	buf_add(p, "", 0);
	p->off++;
	for (;;) {
		size_t run = p->off;
		unsigned char c;

		/* copy plain ASCII in one go */
		while (p->off < p->len) {
			c = (unsigned char)p->text[p->off];
			if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80)
				break;
			p->off++;
		}
		buf_add(p, p->text + run, p->off - run);
		if (p->off >= p->len)
			return fail(p, start, "unterminated string");
		c = (unsigned char)p->text[p->off];
		if (c == '"') {
			p->off++;
			return 0;
		} else if (c < 0x20) {
			return fail(p, here(p), "control character 0x%02X in string must be escaped",
				    c);
		} else if (c >= 0x80) {
			size_t n = utf8_sequence_len((const unsigned char *)p->text + p->off,
						     p->len - p->off);

			if (n == 0)
				return fail(p, here(p), "invalid UTF-8 in string");
			buf_add(p, p->text + p->off, n);
			p->off += n;
		} else { /* backslash */
			int e = p->off + 1 < p->len ? (unsigned char)p->text[p->off + 1] : -1;
			const char *out;

			switch (e) {
			case '"': out = "\""; break;
			case '\\': out = "\\"; break;
			case '/': out = "/"; break;
			case 'b': out = "\b"; break;
			case 'f': out = "\f"; break;
			case 'n': out = "\n"; break;
			case 'r': out = "\r"; break;
			case 't': out = "\t"; break;
			case 'u': out = NULL; break;
			case -1:
				return fail(p, start, "unterminated string");
			default:
				if (e >= 0x20 && e < 0x7f)
					return fail(p, here(p), "invalid escape '\\%c' in string", e);
				return fail(p, here(p), "invalid escape in string");
			}
			if (out == NULL) {
				if (parse_unicode_escape(p) < 0)
					return -EINVAL;
			} else {
				buf_add(p, out, 1);
				p->off += 2;
			}
		}
	}
}

static int is_digit(int c)
{
	return c >= '0' && c <= '9';
}

static int is_word_char(int c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_';
}

static void skip_digits(struct parser *p)
{
	while (is_digit(peek(p)))
		p->off++;
}

/* strtod alone would take hex, "inf", leading '+' and more: check the RFC 8259 grammar first. */
static cJSON *parse_number(struct parser *p)
{
	struct text_pos start = here(p);
	size_t begin = p->off;
	char small[64], *copy;
	double v;

	if (peek(p) == '-') {
		p->off++;
		if (!is_digit(peek(p))) {
			if (peek(p) == 'I')
				fail(p, start, "NaN and Infinity are not allowed in JSON");
			else
				fail(p, here(p), "expected a digit after '-'");
			return NULL;
		}
	}
	if (peek(p) == '0') {
		p->off++;
		if (is_digit(peek(p))) {
			p->off--;
			fail(p, here(p), "leading zeros are not allowed in numbers");
			return NULL;
		}
	} else {
		skip_digits(p);
	}
	if (peek(p) == '.') {
		p->off++;
		if (!is_digit(peek(p))) {
			fail(p, here(p), "expected a digit after '.'");
			return NULL;
		}
		skip_digits(p);
	}
	if (peek(p) == 'e' || peek(p) == 'E') {
		p->off++;
		if (peek(p) == '+' || peek(p) == '-')
			p->off++;
		if (!is_digit(peek(p))) {
			fail(p, here(p), "expected a digit in the exponent");
			return NULL;
		}
		skip_digits(p);
	}

	/* the text need not be NUL-terminated */
	if (p->off - begin < sizeof(small)) {
		copy = small;
	} else {
		copy = ep_realloc(NULL, p->off - begin + 1);
	}
	memcpy(copy, p->text + begin, p->off - begin);
	copy[p->off - begin] = '\0';
	v = strtod(copy, NULL);
	if (copy != small)
		free(copy);
	/* underflow to zero or a denormal is harmless, overflow is not */
	if (isinf(v)) {
		fail(p, start, "number is out of range");
		return NULL;
	}
	return alloc_check(cJSON_CreateNumber(v));
}

/* true, false, null; any other word is an error. */
static cJSON *parse_word(struct parser *p)
{
	struct text_pos start = here(p);
	size_t begin = p->off, n;
	const char *w = p->text + begin;

	while (is_word_char(peek(p)))
		p->off++;
	n = p->off - begin;
	if (n == 4 && memcmp(w, "true", 4) == 0)
		return alloc_check(cJSON_CreateTrue());
	if (n == 5 && memcmp(w, "false", 5) == 0)
		return alloc_check(cJSON_CreateFalse());
	if (n == 4 && memcmp(w, "null", 4) == 0)
		return alloc_check(cJSON_CreateNull());
	if ((n == 3 && memcmp(w, "NaN", 3) == 0) || (n == 8 && memcmp(w, "Infinity", 8) == 0))
		fail(p, start, "NaN and Infinity are not allowed in JSON");
	else
		fail(p, start, "expected a value");
	return NULL;
}

static cJSON *parse_value(struct parser *p, unsigned depth, const struct text_pos *key_pos);

/* p->off is at the '['. */
static cJSON *parse_array(struct parser *p, unsigned depth)
{
	cJSON *array = alloc_check(cJSON_CreateArray());
	struct text_pos comma;

	p->off++;
	if (skip_space(p) < 0)
		goto fail;
	if (peek(p) == ']') {
		p->off++;
		return array;
	}
	for (;;) {
		cJSON *item = parse_value(p, depth, NULL);

		if (item == NULL)
			goto fail;
		cJSON_AddItemToArray(array, item);
		if (skip_space(p) < 0)
			goto fail;
		if (peek(p) == ']') {
			p->off++;
			return array;
		}
		if (peek(p) != ',') {
			fail(p, here(p), "expected ',' or ']' after array element");
			goto fail;
		}
		comma = here(p);
		p->off++;
		if (skip_space(p) < 0)
			goto fail;
		if (peek(p) == ']') {
			fail(p, comma, "trailing comma before ']'");
			goto fail;
		}
	}
fail:
	cJSON_Delete(array);
	return NULL;
}

/* p->off is at the '{'. */
static cJSON *parse_object(struct parser *p, unsigned depth)
{
	cJSON *object = alloc_check(cJSON_CreateObject());
	char *key = NULL;

	p->off++;
	if (skip_space(p) < 0)
		goto fail;
	if (peek(p) == '}') {
		p->off++;
		return object;
	}
	if (peek(p) != '"') {
		fail(p, here(p), "expected a string key or '}'");
		goto fail;
	}
	for (;;) {
		struct text_pos key_pos = here(p), comma;
		cJSON *item;

		if (parse_string(p) < 0)
			goto fail;
		/* one lookup per key: quadratic for huge objects, but configs are small */
		if (cJSON_GetObjectItemCaseSensitive(object, p->buf) != NULL) {
			fail(p, key_pos, "duplicate key \"%.100s\"", p->buf);
			goto fail;
		}
		/* the value's strings reuse p->buf */
		key = ep_strdup(p->buf);
		if (skip_space(p) < 0)
			goto fail;
		if (peek(p) != ':') {
			fail(p, here(p), "expected ':' after object key");
			goto fail;
		}
		p->off++;
		item = parse_value(p, depth, &key_pos);
		if (item == NULL)
			goto fail;
		if (!cJSON_AddItemToObject(object, key, item)) {
			cJSON_Delete(item);
			alloc_check(NULL);
		}
		free(key);
		key = NULL;
		if (skip_space(p) < 0)
			goto fail;
		if (peek(p) == '}') {
			p->off++;
			return object;
		}
		if (peek(p) != ',') {
			fail(p, here(p), "expected ',' or '}' after object member");
			goto fail;
		}
		comma = here(p);
		p->off++;
		if (skip_space(p) < 0)
			goto fail;
		if (peek(p) == '}') {
			fail(p, comma, "trailing comma before '}'");
			goto fail;
		}
		if (peek(p) != '"') {
			fail(p, here(p), "expected a string key");
			goto fail;
		}
	}
fail:
	free(key);
	cJSON_Delete(object);
	return NULL;
}

/*
 * A value after optional space.  depth counts the containers around it;
 * key_pos, when set, is the position to record instead of the value's own.
 */
static cJSON *parse_value(struct parser *p, unsigned depth, const struct text_pos *key_pos)
{
	struct text_pos start;
	cJSON *v;
	int c;

	if (skip_space(p) < 0)
		return NULL;
	start = here(p);
	c = peek(p);
	if (c == '{' || c == '[') {
		if (depth >= MAX_DEPTH) {
			fail(p, start, "nesting deeper than %d levels", MAX_DEPTH);
			return NULL;
		}
		v = c == '{' ? parse_object(p, depth + 1) : parse_array(p, depth + 1);
	} else if (c == '"') {
		if (parse_string(p) < 0)
			return NULL;
		v = alloc_check(cJSON_CreateString(p->buf));
	} else if (c == '-' || is_digit(c)) {
		v = parse_number(p);
	} else if (is_word_char(c)) {
		v = parse_word(p);
	} else {
		fail(p, start, "expected a value");
		return NULL;
	}
	if (v != NULL)
		record_pos(p, v, key_pos != NULL ? *key_pos : start);
	return v;
}

static int compare_node_pos(const void *a, const void *b)
{
	uintptr_t x = ((const struct node_pos *)a)->node;
	uintptr_t y = ((const struct node_pos *)b)->node;

	return x < y ? -1 : x > y;
}

struct ep_json_doc *ep_json_parse(const char *text, size_t len, struct ep_json_error *err)
{
	struct parser p = {
		.text = text, .len = len, .line = 1, .err = err,
	};
	struct ep_json_doc *doc = ep_malloc0(sizeof(*doc));
	cJSON *root = NULL;

	memset(err, 0, sizeof(*err));
	p.doc = doc;
	/* RFC 8259 lets a parser ignore a byte order mark; editors on some systems write one */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		p.off = 3;
	if (skip_space(&p) < 0)
		goto fail;
	if (p.off == p.len) {
		fail(&p, here(&p), "the document is empty");
		goto fail;
	}
	root = parse_value(&p, 0, NULL);
	if (root == NULL)
		goto fail;
	if (skip_space(&p) < 0)
		goto fail;
	if (p.off != p.len) {
		fail(&p, here(&p), "expected end of input after the top-level value");
		goto fail;
	}
	free(p.buf);
	doc->root = root;
	qsort(doc->pos, doc->pos_count, sizeof(*doc->pos), compare_node_pos);
	return doc;
fail:
	cJSON_Delete(root);
	free(p.buf);
	ep_json_doc_free(doc);
	return NULL;
}

cJSON *ep_json_root(const struct ep_json_doc *doc)
{
	return doc->root;
}

int ep_json_position(const struct ep_json_doc *doc, const cJSON *node, unsigned *line_r,
		     unsigned *column_r)
{
	struct node_pos key = { .node = (uintptr_t)node };
	const struct node_pos *found = NULL;

	if (doc != NULL && node != NULL && doc->pos_count > 0)
		found = bsearch(&key, doc->pos, doc->pos_count, sizeof(*doc->pos),
				compare_node_pos);
	if (found == NULL) {
		*line_r = 0;
		*column_r = 0;
		return -ENOENT;
	}
	*line_r = found->line;
	*column_r = found->column;
	return 0;
}

void ep_json_doc_free(struct ep_json_doc *doc)
{
	if (doc == NULL)
		return;
	cJSON_Delete(doc->root);
	free(doc->pos);
	free(doc);
}

/* Reads a regular file of at most MAX_FILE_SIZE bytes. Returns 0 or -errno; -EFBIG when too big. */
static int read_small_file(int fd, char **data_r, size_t *len_r)
{
	struct stat st;
	char *data = NULL;
	size_t len = 0, alloc;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return -EBADFD;
	if (st.st_size > (off_t)MAX_FILE_SIZE)
		return -EFBIG;
	/* one byte more than expected, to see EOF without growing */
	alloc = (size_t)st.st_size + 1;
	data = ep_realloc(NULL, alloc);
	for (;;) {
		ssize_t n;

		if (len == alloc) {
			/* the file grew while we read it */
			if (alloc > MAX_FILE_SIZE) {
				free(data);
				return -EFBIG;
			}
			alloc = alloc * 2 > MAX_FILE_SIZE + 1 ? MAX_FILE_SIZE + 1 : alloc * 2;
			data = ep_realloc(data, alloc);
		}
		n = read(fd, data + len, alloc - len);
		if (n < 0) {
			int r = -errno;

			if (r == -EINTR)
				continue;
			free(data);
			return r;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	if (len > MAX_FILE_SIZE) {
		free(data);
		return -EFBIG;
	}
	*data_r = data;
	*len_r = len;
	return 0;
}

struct ep_json_doc *ep_json_load_file(const char *path, char **error_r)
{
	struct ep_json_error err;
	struct ep_json_doc *doc;
	char *data = NULL;
	size_t len = 0;
	int fd, r;

	*error_r = NULL;
	/* O_NONBLOCK: opening a FIFO for reading must not hang until a writer comes */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		*error_r = ep_strdup_printf("%s: %s", path, strerror(errno));
		return NULL;
	}
	r = read_small_file(fd, &data, &len);
	close(fd);
	if (r == -EBADFD) {
		*error_r = ep_strdup_printf("%s: not a regular file", path);
		return NULL;
	}
	if (r == -EFBIG) {
		*error_r = ep_strdup_printf("%s: file is larger than %u MiB", path,
					    MAX_FILE_SIZE / (1024 * 1024));
		return NULL;
	}
	if (r < 0) {
		*error_r = ep_strdup_printf("%s: %s", path, strerror(-r));
		return NULL;
	}
	doc = ep_json_parse(data, len, &err);
	free(data);
	if (doc == NULL)
		*error_r = ep_strdup_printf("%s:%u:%u: %s", path, err.line, err.column,
					    err.message);
	return doc;
}
