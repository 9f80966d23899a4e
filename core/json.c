/* SPDX-License-Identifier: Apache-2.0 */
#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct scanner {
	const unsigned char *p, *start, *end;
	const struct lg_json_limits *lim;
	char *err;
	size_t errlen;
};

static int fail(struct scanner *s, const char *what)
{
	snprintf(s->err, s->errlen, "invalid JSON at byte %zu: %s", (size_t)(s->p - s->start), what);
	return -1;
}

static void skip_ws(struct scanner *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int hex4(struct scanner *s, unsigned *out)
{
	unsigned v = 0;

	if (s->end - s->p < 4)
		return fail(s, "truncated \\u escape");
	for (int i = 0; i < 4; i++) {
		unsigned char c = s->p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return fail(s, "bad \\u escape");
	}
	s->p += 4;
	*out = v;
	return 0;
}

/* A \u escape, with surrogate pairs; \u0000 is refused (C strings). */
static int unicode_escape(struct scanner *s)
{
	unsigned cp, lo;

	if (hex4(s, &cp) < 0)
		return -1;
	if (cp == 0)
		return fail(s, "\\u0000 is not allowed");
	if (cp >= 0xDC00 && cp <= 0xDFFF)
		return fail(s, "lone low surrogate");
	if (cp >= 0xD800 && cp <= 0xDBFF) {
		if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u')
			return fail(s, "lone high surrogate");
		s->p += 2;
		if (hex4(s, &lo) < 0)
			return -1;
		if (lo < 0xDC00 || lo > 0xDFFF)
			return fail(s, "lone high surrogate");
	}
	return 0;
}

/* One UTF-8 sequence starting at a byte >= 0x80: shortest form, no
 * surrogates, at most U+10FFFF. */
static int utf8_sequence(struct scanner *s)
{
	const unsigned char *p = s->p;
	unsigned char c = *p;
	size_t n;
	uint32_t cp;

	if (c >= 0xC2 && c <= 0xDF) {
		n = 2;
		cp = c & 0x1F;
	} else if (c >= 0xE0 && c <= 0xEF) {
		n = 3;
		cp = c & 0x0F;
	} else if (c >= 0xF0 && c <= 0xF4) {
		n = 4;
		cp = c & 0x07;
	} else {
		return fail(s, "invalid UTF-8");
	}
	if ((size_t)(s->end - p) < n)
		return fail(s, "truncated UTF-8");
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return fail(s, "invalid UTF-8");
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return fail(s, "invalid UTF-8");
	s->p += n;
	return 0;
}

/* At the opening quote; leaves p after the closing one. */
static int string(struct scanner *s)
{
	const unsigned char *open = s->p++;

	while (s->p < s->end) {
		unsigned char c = *s->p;

		if (c == '"') {
			s->p++;
			if ((size_t)(s->p - open - 2) > s->lim->max_string)
				return fail(s, "string too long");
			return 0;
		}
		if (c < 0x20)
			return fail(s, "control character in string");
		if (c == '\\') {
			s->p++;
			if (s->p >= s->end)
				break;
			c = *s->p++;
			if (c == 'u') {
				if (unicode_escape(s) < 0)
					return -1;
			} else if (!strchr("\"\\/bfnrt", c) || c == '\0') {
				s->p--;
				return fail(s, "bad escape");
			}
		} else if (c >= 0x80) {
			if (utf8_sequence(s) < 0)
				return -1;
		} else {
			s->p++;
		}
	}
	return fail(s, "unterminated string");
}

static int number(struct scanner *s)
{
	const unsigned char *p = s->p;

	if (p < s->end && *p == '-')
		p++;
	if (p >= s->end || !(*p >= '0' && *p <= '9')) {
		s->p = p;
		return fail(s, "bad number");
	}
	if (*p == '0')
		p++;
	else
		while (p < s->end && *p >= '0' && *p <= '9')
			p++;
	if (p < s->end && *p == '.') {
		p++;
		if (p >= s->end || !(*p >= '0' && *p <= '9')) {
			s->p = p;
			return fail(s, "bad number");
		}
		while (p < s->end && *p >= '0' && *p <= '9')
			p++;
	}
	if (p < s->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < s->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= s->end || !(*p >= '0' && *p <= '9')) {
			s->p = p;
			return fail(s, "bad number");
		}
		while (p < s->end && *p >= '0' && *p <= '9')
			p++;
	}
	s->p = p;
	return 0;
}

static int literal(struct scanner *s, const char *word)
{
	size_t n = strlen(word);

	if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
		return fail(s, "unexpected character");
	s->p += n;
	return 0;
}

static int value(struct scanner *s, int depth, enum lg_json_type *type);

static int array(struct scanner *s, int depth)
{
	size_t items = 0;
	enum lg_json_type t;

	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == ']') {
		s->p++;
		return 0;
	}
	for (;;) {
		if (++items > s->lim->max_items)
			return fail(s, "too many array elements");
		if (value(s, depth, &t) < 0)
			return -1;
		skip_ws(s);
		if (s->p >= s->end)
			return fail(s, "unterminated array");
		if (*s->p == ']') {
			s->p++;
			return 0;
		}
		if (*s->p != ',')
			return fail(s, "expected ',' or ']'");
		s->p++;
	}
}

/* Parses an object; for the top level (@members not NULL) records members. */
static int object(struct scanner *s, int depth, struct lg_json_member *members, size_t max,
		  size_t *n)
{
	size_t items = 0;

	s->p++;
	skip_ws(s);
	if (s->p < s->end && *s->p == '}') {
		s->p++;
		return 0;
	}
	for (;;) {
		struct lg_json_member m = { 0 };
		const unsigned char *key;

		if (++items > s->lim->max_items)
			return fail(s, "too many object members");
		skip_ws(s);
		if (s->p >= s->end || *s->p != '"')
			return fail(s, "expected a string key");
		key = s->p;
		if (string(s) < 0)
			return -1;
		m.start = (const char *)key;
		m.key = (const char *)key + 1;
		m.key_len = (size_t)(s->p - key) - 2;
		skip_ws(s);
		if (s->p >= s->end || *s->p != ':')
			return fail(s, "expected ':'");
		s->p++;
		skip_ws(s);
		m.value = (const char *)s->p;
		if (value(s, depth, &m.type) < 0)
			return -1;
		m.value_len = (size_t)((const char *)s->p - m.value);
		m.end = (const char *)s->p;
		if (members) {
			for (size_t i = 0; i < *n; i++)
				if (members[i].key_len == m.key_len &&
				    memcmp(members[i].key, m.key, m.key_len) == 0)
					return fail(s, "duplicate key");
			if (*n >= max)
				return fail(s, "too many top-level members");
			members[(*n)++] = m;
		}
		skip_ws(s);
		if (s->p >= s->end)
			return fail(s, "unterminated object");
		if (*s->p == '}') {
			s->p++;
			return 0;
		}
		if (*s->p != ',')
			return fail(s, "expected ',' or '}'");
		s->p++;
	}
}

static int value(struct scanner *s, int depth, enum lg_json_type *type)
{
	skip_ws(s);
	if (s->p >= s->end)
		return fail(s, "unexpected end");
	switch (*s->p) {
	case '{':
	case '[':
		if (depth + 1 > s->lim->max_depth)
			return fail(s, "nested too deeply");
		*type = *s->p == '{' ? LG_JSON_OBJECT : LG_JSON_ARRAY;
		return *s->p == '{' ? object(s, depth + 1, NULL, 0, NULL) : array(s, depth + 1);
	case '"':
		*type = LG_JSON_STRING;
		return string(s);
	case 't':
		*type = LG_JSON_BOOL;
		return literal(s, "true");
	case 'f':
		*type = LG_JSON_BOOL;
		return literal(s, "false");
	case 'n':
		*type = LG_JSON_NULL;
		return literal(s, "null");
	default:
		*type = LG_JSON_NUMBER;
		return number(s);
	}
}

int lg_json_scan(const char *text, size_t len, const struct lg_json_limits *lim,
		 struct lg_json_member *members, size_t max, size_t *n,
		 enum lg_json_type *type_out, char *err, size_t errlen)
{
	struct scanner s = {
		.p = (const unsigned char *)text, .start = (const unsigned char *)text,
		.end = (const unsigned char *)text + len, .lim = lim, .err = err, .errlen = errlen,
	};
	enum lg_json_type type;
	int rc;

	*n = 0;
	skip_ws(&s);
	if (s.p < s.end && *s.p == '{') {
		if (lim->max_depth < 1)
			return fail(&s, "nested too deeply");
		type = LG_JSON_OBJECT;
		rc = object(&s, 1, members, max, n);
	} else {
		rc = value(&s, 0, &type);
	}
	if (rc < 0)
		return -1;
	skip_ws(&s);
	if (s.p != s.end)
		return fail(&s, "trailing characters");
	if (type_out)
		*type_out = type;
	return 0;
}

const struct lg_json_member *lg_json_find(const struct lg_json_member *members, size_t n,
					  const char *key)
{
	size_t len = strlen(key);

	for (size_t i = 0; i < n; i++)
		if (members[i].key_len == len && memcmp(members[i].key, key, len) == 0)
			return &members[i];
	return NULL;
}

bool lg_json_is_true(const struct lg_json_member *m)
{
	return m && m->type == LG_JSON_BOOL && m->value_len == 4;
}
