/* SPDX-License-Identifier: Apache-2.0 */
#include "json.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
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
			/* "mod\u0065l" is "model" to every other parser: two spellings
			 * of one key could send the upstream another model than the one
			 * authorised here. Top-level keys are plain field names. */
			if (memchr(m.key, '\\', m.key_len))
				return fail(s, "escaped characters in a top-level key");
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

/* ---- reading values that lg_json_scan() accepted ---- */

static const char *skip_blank(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* At the opening quote of a validated string; returns just after it. */
static const char *skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return end;
}

/* At the first character of a validated value; returns just after it. */
static const char *skip_value(const char *p, const char *end)
{
	int depth = 0;

	if (p >= end)
		return end;
	if (*p == '"')
		return skip_string(p, end);
	if (*p != '{' && *p != '[') {
		while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' &&
		       *p != '\t' && *p != '\n' && *p != '\r')
			p++;
		return p;
	}
	for (; p < end; p++) {
		if (*p == '"') {
			p = skip_string(p, end) - 1;
		} else if (*p == '{' || *p == '[') {
			depth++;
		} else if (*p == '}' || *p == ']') {
			if (--depth == 0)
				return p + 1;
		}
	}
	return end;
}

static enum lg_json_type type_of(char c)
{
	switch (c) {
	case '{':
		return LG_JSON_OBJECT;
	case '[':
		return LG_JSON_ARRAY;
	case '"':
		return LG_JSON_STRING;
	case 't':
	case 'f':
		return LG_JSON_BOOL;
	case 'n':
		return LG_JSON_NULL;
	default:
		return LG_JSON_NUMBER;
	}
}

bool lg_json_iter_init(struct lg_json_iter *it, const char *text, size_t len)
{
	const char *end = text + len;
	const char *p = skip_blank(text, end);

	if (p >= end || (*p != '{' && *p != '['))
		return false;
	it->object = *p == '{';
	it->p = p + 1;
	it->end = end;
	return true;
}

bool lg_json_iter_next(struct lg_json_iter *it, struct lg_json_member *m)
{
	const char *p = skip_blank(it->p, it->end);

	if (p < it->end && *p == ',')
		p = skip_blank(p + 1, it->end);
	if (p >= it->end || *p == '}' || *p == ']') {
		it->p = p;
		return false;
	}
	*m = (struct lg_json_member){ .start = p };
	if (it->object) {
		const char *key_end = skip_string(p, it->end);

		m->key = p + 1;
		m->key_len = (size_t)(key_end - p) - 2;
		p = skip_blank(key_end, it->end);
		if (p < it->end && *p == ':')
			p++;
		p = skip_blank(p, it->end);
	}
	if (p >= it->end) {
		it->p = p;
		return false;
	}
	m->value = p;
	m->type = type_of(*p);
	p = skip_value(p, it->end);
	m->value_len = (size_t)(p - m->value);
	m->end = p;
	it->p = p;
	return true;
}

bool lg_json_get(const char *obj, size_t len, const char *key, struct lg_json_member *out)
{
	struct lg_json_iter it;
	size_t klen = strlen(key);

	if (!lg_json_iter_init(&it, obj, len) || !it.object)
		return false;
	while (lg_json_iter_next(&it, out))
		if (out->key_len == klen && memcmp(out->key, key, klen) == 0)
			return true;
	return false;
}

static unsigned hex_at(const char *p)
{
	unsigned v = 0;

	for (int i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
	}
	return v;
}

static size_t put_utf8(char *out, uint32_t cp)
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

size_t lg_json_unescape(const char *token, size_t len, char *out)
{
	const char *p = token + 1, *end = token + len - 1;
	size_t n = 0;

	if (len < 2) {
		out[0] = '\0';
		return 0;
	}
	while (p < end) {
		uint32_t cp;

		if (*p != '\\') {
			out[n++] = *p++;
			continue;
		}
		p++;
		switch (*p) {
		case 'b': out[n++] = '\b'; break;
		case 'f': out[n++] = '\f'; break;
		case 'n': out[n++] = '\n'; break;
		case 'r': out[n++] = '\r'; break;
		case 't': out[n++] = '\t'; break;
		case 'u':
			cp = hex_at(p + 1);
			p += 4;
			/* Validated: a high surrogate is followed by its low half. */
			if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 7) {
				cp = 0x10000 + ((cp - 0xD800) << 10) + (hex_at(p + 3) - 0xDC00);
				p += 6;
			}
			n += put_utf8(out + n, cp);
			break;
		default:
			out[n++] = *p;  /* " \ / */
			break;
		}
		p++;
	}
	out[n] = '\0';
	return n;
}

size_t lg_json_string_chars(const char *token, size_t len)
{
	const char *p = token + 1, *end = token + len - 1;
	size_t n = 0;

	while (p < end) {
		if (*p == '\\') {
			if (p[1] == 'u') {
				unsigned cp = hex_at(p + 2);

				p += cp >= 0xD800 && cp <= 0xDBFF ? 12 : 6;
			} else {
				p += 2;
			}
			n++;
			continue;
		}
		if (((unsigned char)*p & 0xC0) != 0x80)
			n++;
		p++;
	}
	return n;
}

size_t lg_json_escape(const char *s, size_t len, char *out)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	out[n++] = '"';
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		switch (c) {
		case '"': out[n++] = '\\'; out[n++] = '"'; break;
		case '\\': out[n++] = '\\'; out[n++] = '\\'; break;
		case '\n': out[n++] = '\\'; out[n++] = 'n'; break;
		case '\r': out[n++] = '\\'; out[n++] = 'r'; break;
		case '\t': out[n++] = '\\'; out[n++] = 't'; break;
		case '\b': out[n++] = '\\'; out[n++] = 'b'; break;
		case '\f': out[n++] = '\\'; out[n++] = 'f'; break;
		default:
			if (c < 0x20) {
				memcpy(out + n, "\\u00", 4);
				out[n + 4] = hex[c >> 4];
				out[n + 5] = hex[c & 15];
				n += 6;
			} else {
				out[n++] = (char)c;
			}
		}
	}
	out[n++] = '"';
	return n;
}

bool lg_json_int(const char *token, size_t len, long long *out)
{
	char buf[64], *end;
	double d;

	if (len == 0 || len >= sizeof buf)
		return false;
	memcpy(buf, token, len);
	buf[len] = '\0';
	if (!strpbrk(buf, ".eE")) {
		errno = 0;
		*out = strtoll(buf, &end, 10);
		return errno == 0 && *end == '\0';
	}
	d = strtod(buf, &end);
	if (*end != '\0' || d < -9.2e18 || d > 9.2e18 || d != (double)(long long)d)
		return false;
	*out = (long long)d;
	return true;
}
