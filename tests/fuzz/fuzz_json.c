/* SPDX-License-Identifier: Apache-2.0 */
/* lg_json_scan (core/json.h) on arbitrary bytes, then the readers of
 * validated text (lg_json_iter_*, lg_json_get, lg_json_unescape,
 * lg_json_string_chars, lg_json_escape, lg_json_int) over every value of
 * what it accepted.
 *
 * Properties checked on every input:
 *  - it never crashes, reads out of bounds or leaks;
 *  - a refusal has a message "invalid JSON at byte N: ..." with N within
 *    the input;
 *  - raising the limits never turns an acceptance into a refusal, nor
 *    changes the members found;
 *  - the members found are well-formed spans into the input, their keys
 *    have no escapes (so no two spellings of one key get through), and
 *    lg_json_find / lg_json_is_true agree with them;
 *  - whatever it accepts, jansson (json_loadb with JSON_REJECT_DUPLICATES)
 *    accepts too, with the same top-level type, the same number of
 *    top-level members and, member by member, the same value;
 *  - walking the accepted text with the readers gives jansson's tree:
 *    the same elements and members in the same number, strings unescaped
 *    to the same bytes (and counted in the same number of characters),
 *    integers of the same value; lg_json_escape output reads back as the
 *    same string; the iterator finds the members the scan found.
 *
 * Where jansson is stricter and lg_json_scan accepts on purpose (these are
 * not failures; the forwarding path meets them as jansson errors):
 *  - numbers out of jansson's range: integers beyond int64 ("too big
 *    integer") and reals that overflow a double ("real number overflow"),
 *    e.g. 1e999 or 30-digit integers. lg_json_scan checks syntax only.
 *  - duplicate keys inside nested objects: lg_json_scan refuses duplicates
 *    among the top-level members only.
 * Where lg_json_scan is stricter than jansson with these flags (refusals
 * jansson would not make, so they need no exception here): the depth,
 * member and string-length limits, and more top-level members than the
 * caller's array holds. */
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "json.h"

#define SMALL_MEMBERS 8
#define LARGE_MEMBERS 256

/* Small limits reach every limit check with short inputs. */
static const struct lg_json_limits small_lim = {
	.max_depth = 6, .max_items = 12, .max_string = 48,
};
static const struct lg_json_limits large_lim = {
	.max_depth = 64, .max_items = 100000, .max_string = 1 << 20,
};

struct scan {
	int rc;
	size_t n;
	enum lg_json_type type;
	char err[160];
};

static void run_scan(const uint8_t *data, size_t size, const struct lg_json_limits *lim,
		     struct lg_json_member *m, size_t max, struct scan *s)
{
	memset(s->err, 0, sizeof s->err);
	s->rc = lg_json_scan((const char *)data, size, lim, m, max, &s->n, &s->type, s->err,
			     sizeof s->err);
	FUZZ_CHECK(s->rc == 0 || s->rc == -1);
}

static void check_refusal(const struct scan *s, size_t size)
{
	static const char prefix[] = "invalid JSON at byte ";
	char *end;
	unsigned long long at;

	FUZZ_CHECK(s->n == 0 || s->n <= LARGE_MEMBERS);
	FUZZ_CHECK(strncmp(s->err, prefix, sizeof prefix - 1) == 0);
	at = strtoull(s->err + sizeof prefix - 1, &end, 10);
	FUZZ_CHECK(end != s->err + sizeof prefix - 1 && *end == ':');
	FUZZ_CHECK(at <= size);
}

static enum lg_json_type type_of_text(char c)
{
	switch (c) {
	case '{': return LG_JSON_OBJECT;
	case '[': return LG_JSON_ARRAY;
	case '"': return LG_JSON_STRING;
	case 't':
	case 'f': return LG_JSON_BOOL;
	case 'n': return LG_JSON_NULL;
	default: return LG_JSON_NUMBER;
	}
}

static bool within(const char *p, size_t len, const uint8_t *data, size_t size)
{
	const char *lo = (const char *)data;

	return p >= lo && p + len <= lo + size;
}

/* Each member is a span of the input: "key" ws : ws value. */
static void check_members(const struct lg_json_member *m, size_t n, const uint8_t *data,
			  size_t size)
{
	for (size_t i = 0; i < n; i++) {
		FUZZ_CHECK(within(m[i].start, (size_t)(m[i].end - m[i].start), data, size));
		FUZZ_CHECK(m[i].start[0] == '"' && m[i].key == m[i].start + 1);
		FUZZ_CHECK(m[i].key[m[i].key_len] == '"');
		/* Another spelling of a key ("mod\u0065l") is refused. */
		FUZZ_CHECK(!memchr(m[i].key, '\\', m[i].key_len));
		FUZZ_CHECK(m[i].value > m[i].key + m[i].key_len && m[i].value_len > 0);
		FUZZ_CHECK(m[i].value + m[i].value_len == m[i].end);
		FUZZ_CHECK(type_of_text(m[i].value[0]) == m[i].type);
		FUZZ_CHECK(i == 0 || m[i].start >= m[i - 1].end);
	}
}

static void check_find(const struct lg_json_member *m, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char key[64];

		if (m[i].key_len >= sizeof key)
			continue;
		memcpy(key, m[i].key, m[i].key_len);
		key[m[i].key_len] = '\0';
		FUZZ_CHECK(lg_json_find(m, n, key) == &m[i]);
		FUZZ_CHECK(lg_json_is_true(&m[i]) ==
			   (m[i].type == LG_JSON_BOOL && m[i].value[0] == 't'));
	}
}

static bool same_members(const struct lg_json_member *a, const struct lg_json_member *b,
			 size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (a[i].start != b[i].start || a[i].end != b[i].end || a[i].key != b[i].key ||
		    a[i].key_len != b[i].key_len || a[i].value != b[i].value ||
		    a[i].value_len != b[i].value_len || a[i].type != b[i].type)
			return false;
	return true;
}

static bool type_matches(const json_t *j, enum lg_json_type t)
{
	switch (t) {
	case LG_JSON_NULL: return json_is_null(j);
	case LG_JSON_BOOL: return json_is_boolean(j);
	case LG_JSON_NUMBER: return json_is_number(j);
	case LG_JSON_STRING: return json_is_string(j);
	case LG_JSON_ARRAY: return json_is_array(j);
	case LG_JSON_OBJECT: return json_is_object(j);
	}
	return false;
}

/* jansson refuses a number lg_json_scan does not range-check. */
static bool range_error(const json_error_t *e)
{
	return strstr(e->text, "too big") || strstr(e->text, "real number overflow");
}

/* ---- the readers of validated text, against jansson's tree ---- */

/* Unicode characters of a UTF-8 string: bytes that do not continue one. */
static size_t utf8_chars(const char *s, size_t n)
{
	size_t chars = 0;

	for (size_t i = 0; i < n; i++)
		chars += ((unsigned char)s[i] & 0xC0) != 0x80;
	return chars;
}

/* Unescapes a STRING token into a buffer of exactly the promised size (so
 * AddressSanitizer sees a write past it). Returns it; *n gets the length. */
static char *unescape(const char *tok, size_t len, size_t *n)
{
	char *out = malloc(len);

	FUZZ_CHECK(out != NULL && len >= 2);
	*n = lg_json_unescape(tok, len, out);
	FUZZ_CHECK(*n <= len - 1 && out[*n] == '\0');
	return out;
}

static void check_string(const char *tok, size_t len, const json_t *j)
{
	size_t n, elen;
	char *s = unescape(tok, len, &n);
	char *esc = malloc(lg_json_escaped_max(n));
	json_t *back;

	FUZZ_CHECK(esc != NULL);
	/* A string never holds NUL here: \u0000 is refused by the scan. */
	FUZZ_CHECK(strlen(s) == n);
	FUZZ_CHECK(lg_json_string_chars(tok, len) == utf8_chars(s, n));
	if (j)
		FUZZ_CHECK(json_string_length(j) == n && memcmp(json_string_value(j), s, n) == 0);
	/* Escaping gives a token that reads back as the same string. */
	elen = lg_json_escape(s, n, esc);
	FUZZ_CHECK(elen <= lg_json_escaped_max(n));
	back = json_loadb(esc, elen, JSON_DECODE_ANY, NULL);
	FUZZ_CHECK(back && json_is_string(back) && json_string_length(back) == n &&
		   memcmp(json_string_value(back), s, n) == 0);
	json_decref(back);
	free(esc);
	free(s);
}

static void check_number(const char *tok, size_t len, const json_t *j)
{
	long long v = 0;
	bool is_int = lg_json_int(tok, len, &v);

	if (!j)
		return;
	if (json_is_integer(j))
		FUZZ_CHECK(is_int && v == json_integer_value(j));
	else if (is_int)
		FUZZ_CHECK((double)v == json_real_value(j));
}

static void walk_value(const char *text, size_t len, enum lg_json_type type, const json_t *j,
		       int depth);

/* Iterates an array or object, value by value, against jansson's node. */
static void walk_container(const char *text, size_t len, bool object, const json_t *j,
			   int depth)
{
	struct lg_json_iter it;
	struct lg_json_member m;
	size_t count = 0;

	FUZZ_CHECK(lg_json_iter_init(&it, text, len) && it.object == object);
	while (lg_json_iter_next(&it, &m)) {
		const json_t *child = NULL;

		FUZZ_CHECK(m.value >= text && m.value + m.value_len <= text + len);
		FUZZ_CHECK(m.value_len > 0 && type_of_text(m.value[0]) == m.type);
		if (object) {
			size_t kn;
			char *key = unescape(m.key - 1, m.key_len + 2, &kn);
			struct lg_json_member got;

			check_string(m.key - 1, m.key_len + 2, NULL);
			if (j) {
				child = json_object_getn(j, key, kn);
				FUZZ_CHECK(child != NULL);
			}
			/* Unique keys: lg_json_get finds this very member. */
			if (j && !memchr(m.key, '\\', m.key_len) && kn == strlen(key))
				FUZZ_CHECK(lg_json_get(text, len, key, &got) &&
					   got.value == m.value && got.value_len == m.value_len);
			free(key);
		} else {
			FUZZ_CHECK(m.key == NULL && m.key_len == 0);
			if (j) {
				child = json_array_get(j, count);
				FUZZ_CHECK(child != NULL);
			}
		}
		walk_value(m.value, m.value_len, m.type, child, depth + 1);
		count++;
	}
	if (j)
		FUZZ_CHECK(count == (object ? json_object_size(j) : json_array_size(j)));
}

/* @j is jansson's node for the value, or NULL when jansson could not give
 * one (range errors, nested duplicates): then the readers only run. */
static void walk_value(const char *text, size_t len, enum lg_json_type type, const json_t *j,
		       int depth)
{
	struct lg_json_iter it;

	FUZZ_CHECK(depth <= large_lim.max_depth + 1);
	if (j)
		FUZZ_CHECK(type_matches(j, type));
	switch (type) {
	case LG_JSON_OBJECT:
	case LG_JSON_ARRAY:
		walk_container(text, len, type == LG_JSON_OBJECT, j, depth);
		break;
	case LG_JSON_STRING:
		FUZZ_CHECK(!lg_json_iter_init(&it, text, len));
		check_string(text, len, j);
		break;
	case LG_JSON_NUMBER:
		check_number(text, len, j);
		break;
	case LG_JSON_BOOL:
		if (j)
			FUZZ_CHECK(json_is_true(j) == (text[0] == 't'));
		break;
	case LG_JSON_NULL:
		break;
	}
}

/* The document without the blanks around its value. */
static bool is_blank(uint8_t c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void value_span(const uint8_t *data, size_t size, const char **text, size_t *len)
{
	size_t b = 0, e = size;

	while (b < e && is_blank(data[b]))
		b++;
	while (e > b && is_blank(data[e - 1]))
		e--;
	*text = (const char *)data + b;
	*len = e - b;
}

/* The top-level members found by the scan are those the iterator finds. */
static void same_as_iter(const uint8_t *data, size_t size, const struct lg_json_member *m,
			 size_t n)
{
	struct lg_json_iter it;
	struct lg_json_member im;
	size_t i = 0;

	FUZZ_CHECK(lg_json_iter_init(&it, (const char *)data, size) && it.object);
	while (lg_json_iter_next(&it, &im)) {
		FUZZ_CHECK(i < n && same_members(&m[i], &im, 1));
		i++;
	}
	FUZZ_CHECK(i == n);
}

/* Member by member, jansson's tree holds the same values. */
static void compare_members(const json_t *root, const struct lg_json_member *m, size_t n)
{
	FUZZ_CHECK(json_object_size(root) == n);
	for (size_t i = 0; i < n; i++) {
		size_t kn;
		char *key = unescape(m[i].key - 1, m[i].key_len + 2, &kn);
		json_t *v = json_loadb(m[i].value, m[i].value_len, JSON_DECODE_ANY, NULL);
		json_t *in_tree = json_object_getn(root, key, kn);

		FUZZ_CHECK(in_tree && type_matches(in_tree, m[i].type));
		/* A value alone parses as it did inside the whole document. */
		FUZZ_CHECK(v && json_equal(v, in_tree));
		json_decref(v);
		free(key);
	}
}

/* Returns jansson's tree when it agrees to have one, else NULL. */
static json_t *cross_check(const uint8_t *data, size_t size, const struct lg_json_member *m,
			   const struct scan *s)
{
	json_error_t e;
	json_t *root = json_loadb((const char *)data, size,
				  JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &e);

	if (!root && strstr(e.text, "duplicate object key")) {
		/* Allowed only below the top level: with duplicates allowed
		 * the document parses, and its top-level object has as many
		 * distinct keys as lg_json_scan found members. */
		root = json_loadb((const char *)data, size, JSON_DECODE_ANY, &e);
		if (!root && range_error(&e))
			return NULL;
		FUZZ_CHECK(root != NULL);
		FUZZ_CHECK(s->type != LG_JSON_OBJECT || json_object_size(root) == s->n);
		json_decref(root);
		return NULL;
	}
	if (!root) {
		if (range_error(&e))
			return NULL;
		fprintf(stderr, "jansson refuses what lg_json_scan accepted: %s (at %d)\n",
			e.text, e.position);
		abort();
	}
	FUZZ_CHECK(type_matches(root, s->type));
	if (s->type == LG_JSON_OBJECT)
		compare_members(root, m, s->n);
	return root;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lg_json_member small_m[SMALL_MEMBERS], large_m[LARGE_MEMBERS];
	struct scan small, large;
	const char *text;
	json_t *root;
	size_t len;

	run_scan(data, size, &small_lim, small_m, SMALL_MEMBERS, &small);
	run_scan(data, size, &large_lim, large_m, LARGE_MEMBERS, &large);
	if (small.rc < 0)
		check_refusal(&small, size);
	if (large.rc < 0) {
		check_refusal(&large, size);
		FUZZ_CHECK(small.rc < 0);
		return 0;
	}
	if (small.rc == 0) {
		FUZZ_CHECK(small.type == large.type && small.n == large.n);
		FUZZ_CHECK(same_members(small_m, large_m, small.n));
	}
	FUZZ_CHECK(large.type == LG_JSON_OBJECT || large.n == 0);
	check_members(large_m, large.n, data, size);
	check_find(large_m, large.n);
	if (large.type == LG_JSON_OBJECT)
		same_as_iter(data, size, large_m, large.n);
	root = cross_check(data, size, large_m, &large);
	value_span(data, size, &text, &len);
	walk_value(text, len, large.type, root, 0);
	json_decref(root);
	return 0;
}
