/* SPDX-License-Identifier: Apache-2.0 */
/* A single-pass JSON validator that also reports where each top-level
 * member of an object is, so the forwarding path can read the few fields it
 * needs and splice values without building a tree. It enforces the input
 * bounds (depth, members per container, string length) before anything is
 * parsed further. */
#ifndef LG_JSON_H
#define LG_JSON_H

#include <stdbool.h>
#include <stddef.h>

struct lg_json_limits {
	int max_depth;          /* nesting of arrays and objects */
	size_t max_items;       /* members of one object or elements of one array */
	size_t max_string;      /* bytes of one string (escaped form) */
};

enum lg_json_type {
	LG_JSON_NULL,
	LG_JSON_BOOL,
	LG_JSON_NUMBER,
	LG_JSON_STRING,
	LG_JSON_ARRAY,
	LG_JSON_OBJECT,
};

/* One member of the top-level object: spans into the input. */
struct lg_json_member {
	const char *key;        /* the key's characters, without quotes, still escaped */
	size_t key_len;
	const char *value;      /* the value's text, quotes included for strings */
	size_t value_len;
	const char *start;      /* the member from its key's opening quote ... */
	const char *end;        /* ... to just after its value */
	enum lg_json_type type;
};

/* Validates @text as one JSON value (RFC 8259: UTF-8, no NaN, no trailing
 * garbage, no lone surrogates, no \u0000 in strings) within @lim. When the
 * value is an object, its top-level members are stored in @members (up to
 * @max; more is an error) and counted in *@n; duplicate top-level keys and
 * top-level keys with escapes (another spelling of the same key) are
 * refused. @type_out (may be NULL) gets the top-level type. On error returns
 * -1 with a message naming the byte offset. */
int lg_json_scan(const char *text, size_t len, const struct lg_json_limits *lim,
		 struct lg_json_member *members, size_t max, size_t *n,
		 enum lg_json_type *type_out, char *err, size_t errlen);

/* The member named @key (compared to the escaped form, which is what plain
 * ASCII keys are), or NULL. */
const struct lg_json_member *lg_json_find(const struct lg_json_member *members, size_t n,
					  const char *key);

/* Whether a BOOL member is true. */
bool lg_json_is_true(const struct lg_json_member *m);

/* ---- reading values that lg_json_scan() accepted ----
 * These walk text that was validated already (a whole document, or the
 * span of one of its values) and do not validate again. */

/* Members of an object or elements of an array, in order. */
struct lg_json_iter {
	const char *p, *end;
	bool object;
};

/* Starts on the text of an OBJECT or ARRAY value; false for other values. */
bool lg_json_iter_init(struct lg_json_iter *it, const char *text, size_t len);
/* The next member (key set) or element (key NULL, key_len 0); false at the
 * end. */
bool lg_json_iter_next(struct lg_json_iter *it, struct lg_json_member *m);
/* The member @key of the OBJECT value @obj (escaped form, as lg_json_find()),
 * or false. */
bool lg_json_get(const char *obj, size_t len, const char *key, struct lg_json_member *out);

/* The characters of a STRING token (quotes included) unescaped into @out,
 * which has room for @len bytes (the decoded text is never longer than the
 * token), NUL-terminated. Returns the decoded length. */
size_t lg_json_unescape(const char *token, size_t len, char *out);
/* Unicode characters in the value of a STRING token (an escape counts one). */
size_t lg_json_string_chars(const char *token, size_t len);
/* Writes @s as a JSON string token (quotes included) to @out, which has room
 * for lg_json_escaped_max(@len) bytes. Returns the token's length. */
size_t lg_json_escape(const char *s, size_t len, char *out);
#define lg_json_escaped_max(len) ((len) * 6 + 2)
/* An integral NUMBER value (e.g. 12, 12.0, 1e3) that fits int64; false for
 * anything else. */
bool lg_json_int(const char *token, size_t len, long long *out);

#endif
