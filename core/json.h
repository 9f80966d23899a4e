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
 * @max; more is an error) and counted in *@n; duplicate top-level keys are
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

#endif
