/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A settings table (struct lg_setting) bound to one MAP of config.yml.
 *
 * Spellings accepted, by type:
 *   STRING    any scalar, numbers included (as written); length within
 *             [min, max] unless both are 0
 *   INT       decimal with an optional sign; no floats, hex or overflow
 *   DOUBLE    a finite decimal number (strtod, fully consumed, no hex)
 *   BOOL      true/false, yes/no, on/off in any case, quoted or not
 *   STRINGS   a list of scalars, or one scalar (a list of one)
 *   DURATION  250ms, 30s, 5m, 1h, or a plain number of seconds (1.5 is
 *             1500ms); stored in milliseconds, rounded to the nearest
 *   SIZE      512, 512B, 64k, 64K, 64KiB, 64KB, 16M, 1G, 1T (powers of 1024)
 *
 * An explicit null ("key:", "key: ~") is the same as leaving the key out:
 * the default applies, and a required key is reported missing.
 *
 * A table's default is the text of a plain YAML scalar, parsed by the same
 * code as a value; a STRINGS default that starts with '[' is a YAML flow
 * list ("[a, b]"). A default that does not parse is a bug in the table and
 * makes the bind fail with a message naming the key.
 */
#include "config.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct lg_value {
	char *key;
	enum lg_setting_type type;
	bool set;
	char *str;              /* STRING */
	char **strs;            /* STRINGS, NULL-terminated */
	size_t n_strs;
	int64_t i;              /* INT */
	double d;               /* DOUBLE */
	bool b;                 /* BOOL */
	uint64_t u;             /* DURATION (ms), SIZE (bytes) */
};

struct lg_settings {
	size_t n;
	struct lg_value v[];
};

/* A value error: the line it is on and what is wrong, without the
 * "FILE:LINE: SECTION.KEY: " prefix. */
struct verr {
	int line;
	char msg[384];
};

static void verr_set(struct verr *e, int line, const char *fmt, ...) LG_PRINTF(3, 4);

static void verr_set(struct verr *e, int line, const char *fmt, ...)
{
	va_list ap;

	e->line = line;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof e->msg, fmt, ap);
	va_end(ap);
}

/* ---- describing values and bounds in messages ---- */

static bool is_secret(const struct lg_setting *st)
{
	return st->flags & LG_SETTING_SECRET;
}

static bool is_bounded(const struct lg_setting *st)
{
	return st->min != 0 || st->max != 0;
}

/* "got 'abc'" for a scalar, "got a list" for a list; secrets are never
 * echoed. */
static void describe_got(const struct lg_setting *st, const struct lg_node *node, char *buf,
			 size_t len)
{
	if (node->kind == LG_NODE_SEQ) {
		snprintf(buf, len, "got a list");
	} else if (node->kind == LG_NODE_MAP) {
		snprintf(buf, len, "got a map");
	} else if (is_secret(st)) {
		snprintf(buf, len, "got a value not shown here (secret)");
	} else {
		size_t n = strlen(node->scalar);

		if (n > 60)
			snprintf(buf, len, "got '%.57s...'", node->scalar);
		else
			snprintf(buf, len, "got '%s'", node->scalar);
	}
}

static void fmt_duration(char *buf, size_t len, uint64_t ms)
{
	if (ms == 0)
		snprintf(buf, len, "0");
	else if (ms % 3600000 == 0)
		snprintf(buf, len, "%" PRIu64 "h", ms / 3600000);
	else if (ms % 60000 == 0)
		snprintf(buf, len, "%" PRIu64 "m", ms / 60000);
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%" PRIu64 "s", ms / 1000);
	else
		snprintf(buf, len, "%" PRIu64 "ms", ms);
}

static void fmt_size(char *buf, size_t len, uint64_t bytes)
{
	if (bytes != 0 && bytes % (1u << 30) == 0)
		snprintf(buf, len, "%" PRIu64 "G", bytes >> 30);
	else if (bytes != 0 && bytes % (1u << 20) == 0)
		snprintf(buf, len, "%" PRIu64 "M", bytes >> 20);
	else if (bytes != 0 && bytes % 1024 == 0)
		snprintf(buf, len, "%" PRIu64 "k", bytes >> 10);
	else
		snprintf(buf, len, "%" PRIu64, bytes);
}

static void fmt_bound(char *buf, size_t len, enum lg_setting_type type, double v)
{
	switch (type) {
	case LG_SETTING_DURATION:
		fmt_duration(buf, len, (uint64_t)v);
		break;
	case LG_SETTING_SIZE:
		fmt_size(buf, len, (uint64_t)v);
		break;
	case LG_SETTING_DOUBLE:
		snprintf(buf, len, "%g", v);
		break;
	default:
		snprintf(buf, len, "%.0f", v);
		break;
	}
}

/* "[1, 65535]" in the type's own units. */
static void fmt_range(char *buf, size_t len, const struct lg_setting *st)
{
	char lo[32], hi[32];

	fmt_bound(lo, sizeof lo, st->type, st->min);
	fmt_bound(hi, sizeof hi, st->type, st->max);
	snprintf(buf, len, "[%s, %s]", lo, hi);
}

static int check_range(const struct lg_setting *st, const struct lg_node *node, double v,
		       struct verr *e)
{
	char range[80];

	if (!is_bounded(st) || (v >= st->min && v <= st->max))
		return 0;
	fmt_range(range, sizeof range, st);
	if (is_secret(st))
		verr_set(e, node->line, "the value is out of range %s", range);
	else
		verr_set(e, node->line, "%s is out of range %s", node->scalar, range);
	return -1;
}

/* ---- parsing the spellings ---- */

static bool all_digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

/* 0, or -1 (not an integer) or -2 (too large). */
static int parse_int_text(const char *s, int64_t *out)
{
	const char *digits = s + (*s == '+' || *s == '-');
	long long v;

	if (!all_digits(digits))
		return -1;
	errno = 0;
	v = strtoll(s, NULL, 10);
	if (errno == ERANGE)
		return -2;
	*out = v;
	return 0;
}

/* A decimal number at the start of @s: strtod, without its leading blanks,
 * hex, inf and nan. @end gets what follows. */
static int parse_decimal_prefix(const char *s, double *out, const char **end)
{
	const char *p = s + (*s == '+' || *s == '-');
	char *e;

	if (!isdigit((unsigned char)*p) && !(*p == '.' && isdigit((unsigned char)p[1])))
		return -1;
	if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))
		return -1;
	errno = 0;
	*out = strtod(s, &e);
	if (e == s || !isfinite(*out) || errno == ERANGE)
		return -1;
	*end = e;
	return 0;
}

static int parse_bool_text(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on" };
	static const char *const no[] = { "false", "no", "off" };

	for (size_t i = 0; i < LG_COUNT(yes); i++) {
		if (strcasecmp(s, yes[i]) == 0) {
			*out = true;
			return 0;
		}
		if (strcasecmp(s, no[i]) == 0) {
			*out = false;
			return 0;
		}
	}
	return -1;
}

/* Milliseconds; -1: not a duration, -2: too large. */
static int parse_duration_text(const char *s, uint64_t *out)
{
	static const struct { const char *unit; double ms; } units[] = {
		{ "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
	};
	const char *unit;
	double v;

	if (*s == '+' || *s == '-' || parse_decimal_prefix(s, &v, &unit) < 0)
		return -1;
	for (size_t i = 0; i < LG_COUNT(units); i++) {
		if (strcmp(unit, units[i].unit) != 0)
			continue;
		v *= units[i].ms;
		/* 2^53 ms is 285 000 years: anything above is a typo. */
		if (!isfinite(v) || v > 9007199254740992.0)
			return -2;
		*out = (uint64_t)(v + 0.5);     /* v >= 0: the nearest ms */
		return 0;
	}
	return -1;
}

/* Bytes; -1: not a size, -2: too large. */
static int parse_size_text(const char *s, uint64_t *out)
{
	const char *p = s;
	uint64_t v = 0, mult = 1;

	if (!isdigit((unsigned char)*p))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		if (v > (UINT64_MAX - 9) / 10)
			return -2;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	switch (*p) {
	case 'k': case 'K':
		mult = 1ull << 10;
		break;
	case 'm': case 'M':
		mult = 1ull << 20;
		break;
	case 'g': case 'G':
		mult = 1ull << 30;
		break;
	case 't': case 'T':
		mult = 1ull << 40;
		break;
	case 'B': case '\0':
		break;
	default:
		return -1;
	}
	if (mult > 1) {
		p++;
		if (strcmp(p, "iB") == 0)
			p += 2;
		else if (*p == 'B')
			p++;
	} else if (*p == 'B') {
		p++;
	}
	if (*p)
		return -1;
	if (v > UINT64_MAX / mult)
		return -2;
	*out = v * mult;
	return 0;
}

/* ---- one value against one table entry ---- */

static int need_scalar(const struct lg_setting *st, const struct lg_node *node,
		       const char *expected, struct verr *e)
{
	char got[96];

	if (node->kind == LG_NODE_SCALAR)
		return 0;
	describe_got(st, node, got, sizeof got);
	verr_set(e, node->line, "expected %s, %s", expected, got);
	return -1;
}

static int bad_spelling(const struct lg_setting *st, const struct lg_node *node,
			const char *expected, struct verr *e)
{
	char got[96];

	describe_got(st, node, got, sizeof got);
	verr_set(e, node->line, "expected %s, %s", expected, got);
	return -1;
}

static int too_large(const struct lg_setting *st, const struct lg_node *node, struct verr *e)
{
	if (is_secret(st))
		verr_set(e, node->line, "the value is too large");
	else
		verr_set(e, node->line, "%s is too large", node->scalar);
	return -1;
}

static int bind_string(const struct lg_setting *st, const struct lg_node *node,
		       struct lg_value *v, struct verr *e)
{
	size_t len;
	char range[80];

	if (need_scalar(st, node, "a single value", e) < 0)
		return -1;
	len = strlen(node->scalar);
	if (is_bounded(st) && ((double)len < st->min || (double)len > st->max)) {
		fmt_range(range, sizeof range, st);
		verr_set(e, node->line, "length %zu is out of range %s", len, range);
		return -1;
	}
	v->str = strdup(node->scalar);
	if (!v->str)
		return -ENOMEM;
	return 0;
}

static int bind_int(const struct lg_setting *st, const struct lg_node *node,
		    struct lg_value *v, struct verr *e)
{
	int r;

	if (need_scalar(st, node, "an integer", e) < 0)
		return -1;
	r = parse_int_text(node->scalar, &v->i);
	if (r == -2)
		return too_large(st, node, e);
	if (r < 0)
		return bad_spelling(st, node, "an integer", e);
	return check_range(st, node, (double)v->i, e);
}

static int bind_double(const struct lg_setting *st, const struct lg_node *node,
		       struct lg_value *v, struct verr *e)
{
	const char *end;

	if (need_scalar(st, node, "a number", e) < 0)
		return -1;
	if (parse_decimal_prefix(node->scalar, &v->d, &end) < 0 || *end)
		return bad_spelling(st, node, "a number", e);
	return check_range(st, node, v->d, e);
}

static int bind_bool(const struct lg_setting *st, const struct lg_node *node,
		     struct lg_value *v, struct verr *e)
{
	static const char expected[] = "true or false (or yes/no, on/off)";

	if (need_scalar(st, node, expected, e) < 0)
		return -1;
	if (parse_bool_text(node->scalar, &v->b) < 0)
		return bad_spelling(st, node, expected, e);
	return 0;
}

static int bind_duration(const struct lg_setting *st, const struct lg_node *node,
			 struct lg_value *v, struct verr *e)
{
	static const char expected[] =
		"a duration such as 250ms, 30s, 5m or 1h (a plain number is seconds)";
	int r;

	if (need_scalar(st, node, expected, e) < 0)
		return -1;
	r = parse_duration_text(node->scalar, &v->u);
	if (r == -2)
		return too_large(st, node, e);
	if (r < 0)
		return bad_spelling(st, node, expected, e);
	return check_range(st, node, (double)v->u, e);
}

static int bind_size(const struct lg_setting *st, const struct lg_node *node,
		     struct lg_value *v, struct verr *e)
{
	static const char expected[] = "a size such as 512, 64k, 16M or 1G (powers of 1024)";
	int r;

	if (need_scalar(st, node, expected, e) < 0)
		return -1;
	r = parse_size_text(node->scalar, &v->u);
	if (r == -2)
		return too_large(st, node, e);
	if (r < 0)
		return bad_spelling(st, node, expected, e);
	return check_range(st, node, (double)v->u, e);
}

static int bind_strings(const struct lg_setting *st, const struct lg_node *node,
			struct lg_value *v, struct verr *e)
{
	const struct lg_node *const *items = &node;
	size_t n = 1;

	if (node->kind == LG_NODE_MAP)
		return bad_spelling(st, node, "a list of values", e);
	if (node->kind == LG_NODE_SEQ) {
		items = (const struct lg_node *const *)node->items;
		n = node->n;
	}
	for (size_t i = 0; i < n; i++) {
		const char *what = items[i]->kind == LG_NODE_SEQ ? "a list" : "a map";

		if (items[i]->kind == LG_NODE_SCALAR)
			continue;
		if (items[i]->kind == LG_NODE_NULL)
			verr_set(e, items[i]->line, "item %zu of the list is empty", i + 1);
		else
			verr_set(e, items[i]->line,
				 "item %zu of the list is %s; expected a single value", i + 1, what);
		return -1;
	}
	v->strs = calloc(n + 1, sizeof *v->strs);
	if (!v->strs)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		v->strs[i] = strdup(items[i]->scalar);
		if (!v->strs[i])
			return -ENOMEM;         /* the caller frees the partial list */
		v->n_strs = i + 1;
	}
	return 0;
}

/* 0; -1 with @e set; or -ENOMEM. */
static int bind_value(const struct lg_setting *st, const struct lg_node *node,
		      struct lg_value *v, struct verr *e)
{
	int r = -1;

	switch (st->type) {
	case LG_SETTING_STRING:
		r = bind_string(st, node, v, e);
		break;
	case LG_SETTING_INT:
		r = bind_int(st, node, v, e);
		break;
	case LG_SETTING_DOUBLE:
		r = bind_double(st, node, v, e);
		break;
	case LG_SETTING_BOOL:
		r = bind_bool(st, node, v, e);
		break;
	case LG_SETTING_STRINGS:
		r = bind_strings(st, node, v, e);
		break;
	case LG_SETTING_DURATION:
		r = bind_duration(st, node, v, e);
		break;
	case LG_SETTING_SIZE:
		r = bind_size(st, node, v, e);
		break;
	}
	if (r == 0)
		v->set = true;
	return r;
}

static void value_clear(struct lg_value *v)
{
	free(v->str);
	v->str = NULL;
	for (size_t i = 0; v->strs && i < v->n_strs; i++)
		free(v->strs[i]);
	free(v->strs);
	v->strs = NULL;
	v->n_strs = 0;
	v->set = false;
}

/* ---- defaults ---- */

static int bind_default(const struct lg_setting *st, struct lg_value *v, struct verr *e)
{
	struct lg_node scalar = {
		.kind = LG_NODE_SCALAR, .scalar = (char *)st->def,
	};
	struct lg_config_doc *doc = NULL;
	const struct lg_node *node = &scalar;
	char *text = NULL;
	char perr[256];
	int r;

	if (st->type == LG_SETTING_STRINGS && st->def[0] == '[') {
		if (asprintf(&text, "d: %s\n", st->def) < 0)
			return -ENOMEM;
		r = lg_config_parse("default", text, strlen(text), &doc, perr, sizeof perr);
		free(text);
		if (r == -ENOMEM)
			return r;
		if (r) {
			verr_set(e, 0, "%s", perr);
			return -1;
		}
		node = lg_node_get(doc->root, "d");
	}
	r = bind_value(st, node, v, e);
	lg_config_doc_free(doc);
	return r;
}

/* ---- the table itself ---- */

static bool valid_key(const char *key)
{
	if (!key || !(*key >= 'a' && *key <= 'z'))
		return false;
	for (key++; *key; key++)
		if (!((*key >= 'a' && *key <= 'z') || (*key >= '0' && *key <= '9') || *key == '_'))
			return false;
	return true;
}

/* A broken table is a bug in the code that declares it. */
static int check_table(const char *section, const struct lg_setting *table, size_t n,
		       char *err, size_t errlen)
{
	for (size_t i = 0; i < n; i++) {
		const struct lg_setting *st = &table[i];

		if (!valid_key(st->key)) {
			lg_errf(err, errlen, "%s: settings table entry %zu: invalid key '%s'",
				section, i, st->key ? st->key : "(null)");
			return -EINVAL;
		}
		if (st->type < LG_SETTING_STRING || st->type > LG_SETTING_SIZE) {
			lg_errf(err, errlen, "%s.%s: settings table: unknown type %d", section,
				st->key, (int)st->type);
			return -EINVAL;
		}
		if (is_bounded(st) && !(st->min <= st->max)) {
			lg_errf(err, errlen, "%s.%s: settings table: min is above max", section,
				st->key);
			return -EINVAL;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(table[j].key, st->key) == 0) {
				lg_errf(err, errlen, "%s.%s: settings table: key listed twice",
					section, st->key);
				return -EINVAL;
			}
		}
	}
	return 0;
}

static const struct lg_setting *find_setting(const struct lg_setting *table, size_t n,
					     const char *key, size_t *index)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(table[i].key, key) == 0) {
			*index = i;
			return &table[i];
		}
	}
	return NULL;
}

static void unknown_key(const char *file, const char *section, const struct lg_node *map,
			size_t k, const struct lg_setting *table, size_t n, char *err,
			size_t errlen)
{
	char known[1024];
	size_t used = 0;

	known[0] = '\0';
	for (size_t i = 0; i < n && used < sizeof known; i++) {
		int w = snprintf(known + used, sizeof known - used, "%s%s", i ? ", " : "",
				 table[i].key);

		if (w < 0)
			break;
		used += (size_t)w;
	}
	if (n == 0)
		lg_errf(err, errlen, "%s:%d: %s.%s: unknown key (this section takes no settings)",
			file, map->key_lines[k], section, map->keys[k]);
	else
		lg_errf(err, errlen, "%s:%d: %s.%s: unknown key (known: %s)", file,
			map->key_lines[k], section, map->keys[k], known);
}

static struct lg_settings *settings_new(const struct lg_setting *table, size_t n)
{
	struct lg_settings *s = calloc(1, sizeof *s + n * sizeof s->v[0]);

	if (!s)
		return NULL;
	s->n = n;
	for (size_t i = 0; i < n; i++) {
		s->v[i].type = table[i].type;
		s->v[i].key = strdup(table[i].key);
		if (!s->v[i].key) {
			lg_settings_free(s);
			return NULL;
		}
	}
	return s;
}

/* The values present in @map, in file order. */
static int bind_present(const char *file, const char *section, const struct lg_node *map,
			const struct lg_setting *table, size_t n, struct lg_settings *s,
			char *err, size_t errlen)
{
	struct verr e;
	size_t idx;
	int r;

	for (size_t k = 0; k < map->n; k++) {
		const struct lg_setting *st = find_setting(table, n, map->keys[k], &idx);

		if (!st) {
			unknown_key(file, section, map, k, table, n, err, errlen);
			return -EINVAL;
		}
		if (map->items[k]->kind == LG_NODE_NULL)
			continue;
		r = bind_value(st, map->items[k], &s->v[idx], &e);
		if (r == -ENOMEM)
			goto nomem;
		if (r) {
			lg_errf(err, errlen, "%s:%d: %s.%s: %s", file, e.line, section, st->key,
				e.msg);
			return -EINVAL;
		}
	}
	return 0;
nomem:
	lg_errf(err, errlen, "%s: out of memory", file);
	return -ENOMEM;
}

/* Defaults for what is absent; REQUIRED keys without a value are errors. */
static int bind_absent(const char *file, const char *section, const struct lg_node *map,
		       const struct lg_setting *table, size_t n, struct lg_settings *s,
		       char *err, size_t errlen)
{
	struct verr e;
	int r;

	for (size_t i = 0; i < n; i++) {
		const struct lg_setting *st = &table[i];
		const struct lg_node *given = lg_node_get(map, st->key);

		if (s->v[i].set)
			continue;
		if (st->def && st->def[0]) {
			r = bind_default(st, &s->v[i], &e);
			if (r == -ENOMEM) {
				lg_errf(err, errlen, "%s: out of memory", file);
				return r;
			}
			if (r) {
				lg_errf(err, errlen, "%s.%s: the built-in default '%s' is invalid "
					"(%s): a bug in the settings table", section, st->key,
					is_secret(st) ? "<redacted>" : st->def, e.msg);
				return -EINVAL;
			}
			continue;
		}
		if (!(st->flags & LG_SETTING_REQUIRED))
			continue;
		if (given)
			lg_errf(err, errlen, "%s:%d: %s.%s: required, but the value is empty",
				file, given->line, section, st->key);
		else
			lg_errf(err, errlen, "%s:%d: %s.%s: required", file, map ? map->line : 0,
				section, st->key);
		return -EINVAL;
	}
	return 0;
}

int lg_settings_bind(const char *file, const char *section, const struct lg_node *map,
		     const struct lg_setting *table, size_t n, struct lg_settings **out,
		     char *err, size_t errlen)
{
	struct lg_settings *s;
	int r;

	*out = NULL;
	r = check_table(section, table, n, err, errlen);
	if (r)
		return r;
	if (map && map->kind != LG_NODE_MAP && map->kind != LG_NODE_NULL) {
		lg_errf(err, errlen, "%s:%d: %s: expected a map of settings (key: value), got %s",
			file, map->line, section, map->kind == LG_NODE_SEQ ? "a list" :
			"a single value");
		return -EINVAL;
	}
	s = settings_new(table, n);
	if (!s) {
		lg_errf(err, errlen, "%s: out of memory", file);
		return -ENOMEM;
	}
	if (map && map->kind == LG_NODE_MAP) {
		r = bind_present(file, section, map, table, n, s, err, errlen);
		if (r)
			goto fail;
	}
	r = bind_absent(file, section, map, table, n, s, err, errlen);
	if (r)
		goto fail;
	*out = s;
	return 0;
fail:
	lg_settings_free(s);
	return r;
}

void lg_settings_free(struct lg_settings *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n; i++) {
		value_clear(&s->v[i]);
		free(s->v[i].key);
	}
	free(s);
}

/* ---- getters ---- */

static int lookup(const struct lg_settings *s, const char *key, enum lg_setting_type t1,
		  enum lg_setting_type t2, const struct lg_value **out)
{
	if (!s || !key)
		return -EINVAL;
	for (size_t i = 0; i < s->n; i++) {
		const struct lg_value *v = &s->v[i];

		if (strcmp(v->key, key) != 0)
			continue;
		if (v->type != t1 && v->type != t2)
			return -EINVAL;
		if (!v->set)
			return -ENOENT;
		*out = v;
		return 0;
	}
	return -EINVAL;
}

int lg_settings_str(const struct lg_settings *s, const char *key, const char **out)
{
	const struct lg_value *v;
	int r = lookup(s, key, LG_SETTING_STRING, LG_SETTING_STRING, &v);

	if (r == 0)
		*out = v->str;
	return r;
}

int lg_settings_int(const struct lg_settings *s, const char *key, int64_t *out)
{
	const struct lg_value *v;
	int r = lookup(s, key, LG_SETTING_INT, LG_SETTING_INT, &v);

	if (r == 0)
		*out = v->i;
	return r;
}

int lg_settings_double(const struct lg_settings *s, const char *key, double *out)
{
	const struct lg_value *v;
	int r = lookup(s, key, LG_SETTING_DOUBLE, LG_SETTING_DOUBLE, &v);

	if (r == 0)
		*out = v->d;
	return r;
}

int lg_settings_bool(const struct lg_settings *s, const char *key, bool *out)
{
	const struct lg_value *v;
	int r = lookup(s, key, LG_SETTING_BOOL, LG_SETTING_BOOL, &v);

	if (r == 0)
		*out = v->b;
	return r;
}

int lg_settings_strings(const struct lg_settings *s, const char *key,
			const char *const **out, size_t *n)
{
	const struct lg_value *v;
	int r = lookup(s, key, LG_SETTING_STRINGS, LG_SETTING_STRINGS, &v);

	if (r == 0) {
		*out = (const char *const *)v->strs;
		if (n)
			*n = v->n_strs;
	}
	return r;
}

int lg_settings_u64(const struct lg_settings *s, const char *key, uint64_t *out)
{
	const struct lg_value *v;
	int r = lookup(s, key, LG_SETTING_DURATION, LG_SETTING_SIZE, &v);

	if (r == 0)
		*out = v->u;
	return r;
}

/* ---- reference documentation ---- */

static const char *type_name(enum lg_setting_type type)
{
	switch (type) {
	case LG_SETTING_STRING:
		return "string";
	case LG_SETTING_INT:
		return "integer";
	case LG_SETTING_DOUBLE:
		return "number";
	case LG_SETTING_BOOL:
		return "boolean";
	case LG_SETTING_STRINGS:
		return "list of strings";
	case LG_SETTING_DURATION:
		return "duration";
	case LG_SETTING_SIZE:
		return "size";
	}
	return "?";
}

static const char *default_text(const struct lg_setting *st)
{
	if (st->def && st->def[0])
		return is_secret(st) ? "<redacted>" : st->def;
	return (st->flags & LG_SETTING_REQUIRED) ? "required" : "";
}

static void range_text(const struct lg_setting *st, char *buf, size_t len)
{
	char range[80];

	buf[0] = '\0';
	if (!is_bounded(st) || st->type == LG_SETTING_BOOL || st->type == LG_SETTING_STRINGS)
		return;
	fmt_range(range, sizeof range, st);
	snprintf(buf, len, "%s%s", st->type == LG_SETTING_STRING ? "length " : "", range);
}

/* Table cells: '|' would end the cell and a line break the row. */
static void put_cell(FILE *out, const char *s)
{
	for (; s && *s; s++) {
		if (*s == '|')
			fputs("\\|", out);
		else if (*s == '\n' || *s == '\r')
			fputc(' ', out);
		else
			fputc(*s, out);
	}
}

static void print_markdown(FILE *out, const char *section, const struct lg_setting *table,
			   size_t n)
{
	char range[96];

	fprintf(out, "### %s\n\n", section);
	fputs("| key | type | default | range | description |\n", out);
	fputs("|---|---|---|---|---|\n", out);
	for (size_t i = 0; i < n; i++) {
		const struct lg_setting *st = &table[i];
		const char *def = default_text(st);

		range_text(st, range, sizeof range);
		fprintf(out, "| `%s` | %s | ", st->key, type_name(st->type));
		if (st->def && st->def[0]) {
			fputc('`', out);
			put_cell(out, def);
			fputc('`', out);
		} else if (*def) {
			fprintf(out, "*%s*", def);
		}
		fprintf(out, " | %s | ", range);
		put_cell(out, st->help);
		fputs(" |\n", out);
	}
	fputc('\n', out);
}

static void print_text(FILE *out, const char *section, const struct lg_setting *table,
		       size_t n)
{
	char range[96];

	for (size_t i = 0; i < n; i++) {
		const struct lg_setting *st = &table[i];
		const char *def = default_text(st);

		range_text(st, range, sizeof range);
		fprintf(out, "%s.%s (%s)\n", section, st->key, type_name(st->type));
		if (*def)
			fprintf(out, "    default: %s\n", def);
		if (*range)
			fprintf(out, "    range: %s\n", range);
		if (st->help && *st->help)
			fprintf(out, "    %s\n", st->help);
		fputc('\n', out);
	}
}

void lg_settings_print_reference(FILE *out, const char *section,
				 const struct lg_setting *table, size_t n, bool markdown)
{
	if (markdown)
		print_markdown(out, section, table, n);
	else
		print_text(out, section, table, n);
}
