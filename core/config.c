/* SPDX-License-Identifier: Apache-2.0 */
/*
 * config.yml: read the file, substitute environment variables, parse the
 * YAML into lg_node trees that remember their line numbers.
 *
 * Substitution is textual and happens before parsing, as in OpenGateLLM:
 *   ${VAR}            the value of VAR; an error when VAR is not set
 *                     (set but empty gives an empty text)
 *   ${VAR:-default}   the value of VAR when set and not empty, else default
 *                     (default runs to the first '}' and may be empty)
 *   $${               a literal "${"
 * VAR is [A-Za-z_][A-Za-z0-9_]*. Any other "${" is an error, so a typo never
 * reaches the server as literal text. A value that contains a line break is
 * refused: it would shift every line number after it and could change the
 * structure of the document. Lines whose first non-blank character is '#'
 * are comments and are copied untouched (so the example config may say
 * "${VAR}" in prose); a '#' comment after a value is substituted like the
 * rest of its line.
 *
 * The YAML subset is what a configuration needs: one document whose top
 * level is a map, no anchors or aliases, only the standard tags, no
 * duplicate keys, keys that are scalars.
 */
#include "config.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <yaml.h>

#define CONFIG_MAX_BYTES	(4u << 20)	/* the file as read */
#define CONFIG_MAX_EXPANDED	(16u << 20)	/* after substitution */
#define CONFIG_MAX_DEPTH	64		/* nested maps and lists */
#define ENV_NAME_MAX		255

#define YAML_TAG_PREFIX "tag:yaml.org,2002:"

/* ---- the tree ---- */

static void node_free(struct lg_node *node)
{
	if (!node)
		return;
	for (size_t i = 0; i < node->n; i++) {
		node_free(node->items[i]);
		if (node->keys)
			free(node->keys[i]);
	}
	free(node->items);
	free(node->keys);
	free(node->key_lines);
	free(node->scalar);
	free(node);
}

void lg_config_doc_free(struct lg_config_doc *doc)
{
	if (!doc)
		return;
	node_free(doc->root);
	free(doc->path);
	free(doc);
}

const struct lg_node *lg_node_get(const struct lg_node *map, const char *key)
{
	if (!map || map->kind != LG_NODE_MAP)
		return NULL;
	for (size_t i = 0; i < map->n; i++)
		if (strcmp(map->keys[i], key) == 0)
			return map->items[i];
	return NULL;
}

static struct lg_node *node_new(enum lg_node_kind kind, int line)
{
	struct lg_node *node = calloc(1, sizeof *node);

	if (node) {
		node->kind = kind;
		node->line = line;
	}
	return node;
}

/* Grows the arrays of a SEQ or MAP so that one more item fits. */
static int node_reserve(struct lg_node *node, size_t *cap)
{
	size_t ncap;
	void *p;

	if (node->n < *cap)
		return 0;
	ncap = *cap ? *cap * 2 : 4;
	p = realloc(node->items, ncap * sizeof *node->items);
	if (!p)
		return -1;
	node->items = p;
	if (node->kind == LG_NODE_MAP) {
		p = realloc(node->keys, ncap * sizeof *node->keys);
		if (!p)
			return -1;
		node->keys = p;
		p = realloc(node->key_lines, ncap * sizeof *node->key_lines);
		if (!p)
			return -1;
		node->key_lines = p;
	}
	*cap = ncap;
	return 0;
}

/* ---- reading the file ---- */

static int read_file(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
	size_t len = 0, cap = 64 * 1024;
	char *buf = NULL, *p;
	ssize_t r;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		lg_errf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return ret;
	}
	buf = malloc(cap);
	if (!buf)
		goto nomem;
	for (;;) {
		if (len == cap) {
			if (cap > CONFIG_MAX_BYTES) {
				lg_errf(err, errlen, "%s: larger than %u MiB, refusing to read it",
					path, CONFIG_MAX_BYTES >> 20);
				ret = -EFBIG;
				goto fail;
			}
			cap *= 2;
			p = realloc(buf, cap);
			if (!p)
				goto nomem;
			buf = p;
		}
		r = read(fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = -errno;
			lg_errf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
			goto fail;
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	if (len > CONFIG_MAX_BYTES) {
		lg_errf(err, errlen, "%s: larger than %u MiB, refusing to read it", path,
			CONFIG_MAX_BYTES >> 20);
		ret = -EFBIG;
		goto fail;
	}
	close(fd);
	*out = buf;
	*outlen = len;
	return 0;
nomem:
	lg_errf(err, errlen, "%s: out of memory", path);
	ret = -ENOMEM;
fail:
	free(buf);
	close(fd);
	return ret;
}

/* ---- ${VAR} substitution ---- */

struct text {
	char *p;
	size_t len, cap;
};

static int text_put(struct text *t, const char *s, size_t n)
{
	size_t ncap;
	char *p;

	if (t->len + n + 1 > t->cap) {
		if (t->len + n + 1 > CONFIG_MAX_EXPANDED)
			return -EFBIG;
		ncap = t->cap ? t->cap : 4096;
		while (ncap < t->len + n + 1)
			ncap *= 2;
		p = realloc(t->p, ncap);
		if (!p)
			return -ENOMEM;
		t->p = p;
		t->cap = ncap;
	}
	memcpy(t->p + t->len, s, n);
	t->len += n;
	t->p[t->len] = '\0';
	return 0;
}

static bool is_name_start(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static bool is_name_char(char c)
{
	return is_name_start(c) || (c >= '0' && c <= '9');
}

struct var_ref {
	char name[ENV_NAME_MAX + 1];
	const char *def;        /* NULL: no default */
	size_t deflen;
	size_t len;             /* of the whole "${...}" */
};

/* Parses "${NAME}" or "${NAME:-default}" at @s (which starts with "${"),
 * within one line ending at @end. */
static int parse_var_ref(const char *s, const char *end, struct var_ref *ref)
{
	const char *p = s + 2, *name = p, *close;
	size_t namelen;

	if (p >= end || !is_name_start(*p))
		return -1;
	while (p < end && is_name_char(*p))
		p++;
	namelen = (size_t)(p - name);
	if (namelen > ENV_NAME_MAX)
		return -1;
	memcpy(ref->name, name, namelen);
	ref->name[namelen] = '\0';
	ref->def = NULL;
	ref->deflen = 0;
	if (p < end && *p == '}') {
		ref->len = (size_t)(p + 1 - s);
		return 0;
	}
	if (end - p < 2 || p[0] != ':' || p[1] != '-')
		return -1;
	p += 2;
	close = memchr(p, '}', (size_t)(end - p));
	if (!close)
		return -1;
	ref->def = p;
	ref->deflen = (size_t)(close - p);
	ref->len = (size_t)(close + 1 - s);
	return 0;
}

/* The text a reference stands for, or -1 with @err set. */
static int resolve_var(const char *name, int line, const struct var_ref *ref,
		       const char **val, size_t *vallen, char *err, size_t errlen)
{
	const char *env = getenv(ref->name);

	if (ref->def && (!env || !*env)) {
		*val = ref->def;
		*vallen = ref->deflen;
		return 0;
	}
	if (!env) {
		lg_errf(err, errlen,
			"%s:%d: environment variable %s is not set (use ${%s:-default})",
			name, line, ref->name, ref->name);
		return -1;
	}
	if (strpbrk(env, "\r\n")) {
		lg_errf(err, errlen,
			"%s:%d: environment variable %s contains a line break; multi-line values "
			"are not substituted (line numbers would no longer match the file)",
			name, line, ref->name);
		return -1;
	}
	*val = env;
	*vallen = strlen(env);
	return 0;
}

static bool is_comment_line(const char *s, const char *end)
{
	while (s < end && (*s == ' ' || *s == '\t'))
		s++;
	return s < end && *s == '#';
}

/* Substitutes the references of one line [s, end) (without its '\n'). */
static int substitute_line(const char *name, int line, const char *s, const char *end,
			   struct text *out, char *err, size_t errlen)
{
	const char *line_start = s, *val;
	struct var_ref ref;
	size_t vallen;
	int r;

	while (s < end) {
		const char *dollar = memchr(s, '$', (size_t)(end - s));

		if (!dollar)
			return text_put(out, s, (size_t)(end - s));
		r = text_put(out, s, (size_t)(dollar - s));
		if (r)
			return r;
		s = dollar;
		if (end - s >= 3 && s[1] == '$' && s[2] == '{') {
			r = text_put(out, "${", 2);
			s += 3;
		} else if (end - s >= 2 && s[1] == '{') {
			if (parse_var_ref(s, end, &ref) < 0) {
				lg_errf(err, errlen,
					"%s:%d: column %d: malformed variable reference: expected "
					"${NAME} or ${NAME:-default} (write $${ for a literal ${)",
					name, line, (int)(s - line_start) + 1);
				return -EINVAL;
			}
			if (resolve_var(name, line, &ref, &val, &vallen, err, errlen) < 0)
				return -EINVAL;
			r = text_put(out, val, vallen);
			s += ref.len;
		} else {
			r = text_put(out, s, 1);
			s++;
		}
		if (r)
			return r;
	}
	return 0;
}

static int substitute(const char *name, const char *in, size_t len, struct text *out,
		      char *err, size_t errlen)
{
	const char *s = in, *end = in + len;
	int line = 1, r;

	r = text_put(out, "", 0);       /* an empty input still gives a string */
	while (r == 0 && s < end) {
		const char *nl = memchr(s, '\n', (size_t)(end - s));
		const char *eol = nl ? nl : end;

		if (is_comment_line(s, eol))
			r = text_put(out, s, (size_t)(eol - s));
		else
			r = substitute_line(name, line, s, eol, out, err, errlen);
		if (r == 0 && nl)
			r = text_put(out, "\n", 1);
		s = nl ? nl + 1 : end;
		line++;
	}
	if (r == -ENOMEM)
		lg_errf(err, errlen, "%s: out of memory", name);
	else if (r == -EFBIG)
		lg_errf(err, errlen, "%s: larger than %u MiB after substitution", name,
			CONFIG_MAX_EXPANDED >> 20);
	return r;
}

/* ---- YAML events to nodes ---- */

struct yparse {
	yaml_parser_t parser;
	const char *name;
	const char *text;       /* the substituted text, for reader error lines */
	size_t len;
	char *err;
	size_t errlen;
};

static int line_of(const yaml_mark_t *mark)
{
	return (int)mark->line + 1;
}

static int line_at_offset(const struct yparse *yp, size_t offset)
{
	int line = 1;

	for (size_t i = 0; i < offset && i < yp->len; i++)
		if (yp->text[i] == '\n')
			line++;
	return line;
}

static void report_parser_error(struct yparse *yp)
{
	const yaml_parser_t *p = &yp->parser;
	const char *problem = p->problem ? p->problem : "invalid YAML";

	switch (p->error) {
	case YAML_MEMORY_ERROR:
		lg_errf(yp->err, yp->errlen, "%s: out of memory while parsing", yp->name);
		break;
	case YAML_READER_ERROR:
		lg_errf(yp->err, yp->errlen, "%s:%d: %s", yp->name,
			line_at_offset(yp, p->problem_offset), problem);
		break;
	default:
		if (p->context)
			lg_errf(yp->err, yp->errlen, "%s:%d: %s (%s at line %d)", yp->name,
				line_of(&p->problem_mark), problem, p->context,
				line_of(&p->context_mark));
		else
			lg_errf(yp->err, yp->errlen, "%s:%d: %s", yp->name,
				line_of(&p->problem_mark), problem);
		break;
	}
}

static int next_event(struct yparse *yp, yaml_event_t *ev)
{
	if (yaml_parser_parse(&yp->parser, ev))
		return 0;
	report_parser_error(yp);
	return -1;
}

static int nomem(struct yparse *yp)
{
	lg_errf(yp->err, yp->errlen, "%s: out of memory", yp->name);
	return -ENOMEM;
}

/* A config is read by people: every value is written where it is used. */
static int refuse_anchor_or_alias(struct yparse *yp, const yaml_event_t *ev, char sigil,
				  const yaml_char_t *name)
{
	lg_errf(yp->err, yp->errlen,
		"%s:%d: anchors and aliases (%c%s) are not supported; repeat the value instead",
		yp->name, line_of(&ev->start_mark), sigil, (const char *)name);
	return -EINVAL;
}

static int refuse_anchor(struct yparse *yp, const yaml_event_t *ev, const yaml_char_t *anchor)
{
	return anchor ? refuse_anchor_or_alias(yp, ev, '&', anchor) : 0;
}

static int refuse_alias(struct yparse *yp, const yaml_event_t *ev)
{
	return refuse_anchor_or_alias(yp, ev, '*', ev->data.alias.anchor);
}

static bool tag_is(const yaml_char_t *tag, const char *what)
{
	return strncmp((const char *)tag, YAML_TAG_PREFIX, strlen(YAML_TAG_PREFIX)) == 0 &&
	       strcmp((const char *)tag + strlen(YAML_TAG_PREFIX), what) == 0;
}

/* "!" is the non-specific tag: the node keeps its natural kind. */
static bool tag_is_plain(const yaml_char_t *tag)
{
	return !tag || strcmp((const char *)tag, "!") == 0;
}

static int refuse_tag(struct yparse *yp, const yaml_event_t *ev, const yaml_char_t *tag)
{
	const char *t = (const char *)tag;
	bool std = strncmp(t, YAML_TAG_PREFIX, strlen(YAML_TAG_PREFIX)) == 0;

	lg_errf(yp->err, yp->errlen,
		"%s:%d: tag %s%s is not supported here (only !!str, !!int, !!float, !!bool and "
		"!!null on values, !!seq on lists, !!map on maps)",
		yp->name, line_of(&ev->start_mark), std ? "!!" : "",
		std ? t + strlen(YAML_TAG_PREFIX) : t);
	return -EINVAL;
}

static bool is_null_text(const char *s)
{
	return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0 ||
	       strcmp(s, "NULL") == 0;
}

static int build_scalar(struct yparse *yp, const yaml_event_t *ev, struct lg_node **out)
{
	const char *value = (const char *)ev->data.scalar.value;
	const yaml_char_t *tag = ev->data.scalar.tag;
	bool plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
	bool force_str = false, force_null = false;
	struct lg_node *node;
	int r;

	r = refuse_anchor(yp, ev, ev->data.scalar.anchor);
	if (r)
		return r;
	if (!tag_is_plain(tag)) {
		if (tag_is(tag, "str"))
			force_str = true;
		else if (tag_is(tag, "null"))
			force_null = true;
		else if (!tag_is(tag, "int") && !tag_is(tag, "float") && !tag_is(tag, "bool"))
			return refuse_tag(yp, ev, tag);
	}
	if (strlen(value) != ev->data.scalar.length) {
		lg_errf(yp->err, yp->errlen, "%s:%d: a value contains a NUL character",
			yp->name, line_of(&ev->start_mark));
		return -EINVAL;
	}
	if (force_null && !is_null_text(value)) {
		lg_errf(yp->err, yp->errlen, "%s:%d: '%s' tagged !!null is not a null value",
			yp->name, line_of(&ev->start_mark), value);
		return -EINVAL;
	}
	if (force_null || (plain && !force_str && is_null_text(value))) {
		node = node_new(LG_NODE_NULL, line_of(&ev->start_mark));
		if (!node)
			return nomem(yp);
		*out = node;
		return 0;
	}
	node = node_new(LG_NODE_SCALAR, line_of(&ev->start_mark));
	if (!node)
		return nomem(yp);
	node->scalar = strdup(value);
	if (!node->scalar) {
		free(node);
		return nomem(yp);
	}
	/* Block scalars (| and >) are strings too: only plain text is typed. */
	node->quoted = !plain || force_str;
	*out = node;
	return 0;
}

static int build_node(struct yparse *yp, const yaml_event_t *ev, int depth,
		      struct lg_node **out);

static int build_seq(struct yparse *yp, const yaml_event_t *start, int depth,
		     struct lg_node **out)
{
	struct lg_node *seq, *child;
	yaml_event_t ev;
	size_t cap = 0;
	int r;

	seq = node_new(LG_NODE_SEQ, line_of(&start->start_mark));
	if (!seq)
		return nomem(yp);
	for (;;) {
		if (next_event(yp, &ev) < 0) {
			r = -EINVAL;
			goto fail;
		}
		if (ev.type == YAML_SEQUENCE_END_EVENT) {
			yaml_event_delete(&ev);
			break;
		}
		child = NULL;
		r = build_node(yp, &ev, depth + 1, &child);
		yaml_event_delete(&ev);
		if (r)
			goto fail;
		if (node_reserve(seq, &cap) < 0) {
			node_free(child);
			r = nomem(yp);
			goto fail;
		}
		seq->items[seq->n++] = child;
	}
	*out = seq;
	return 0;
fail:
	node_free(seq);
	return r;
}

struct key_ref {
	const char *key;
	size_t index;
};

static int cmp_key_ref(const void *a, const void *b)
{
	const struct key_ref *x = a, *y = b;
	int c = strcmp(x->key, y->key);

	if (c)
		return c;
	return x->index < y->index ? -1 : x->index > y->index;
}

/* Sorting keeps big maps at O(n log n); of several duplicates the one that
 * comes first in the file is reported. */
static int check_duplicate_keys(struct yparse *yp, const struct lg_node *map)
{
	struct key_ref *refs;
	size_t dup = SIZE_MAX, first = 0;

	if (map->n < 2)
		return 0;
	refs = malloc(map->n * sizeof *refs);
	if (!refs)
		return nomem(yp);
	for (size_t i = 0; i < map->n; i++)
		refs[i] = (struct key_ref){ map->keys[i], i };
	qsort(refs, map->n, sizeof *refs, cmp_key_ref);
	for (size_t i = 1; i < map->n; i++) {
		size_t j = i - 1;

		if (strcmp(refs[j].key, refs[i].key) != 0 || refs[i].index >= dup)
			continue;
		/* refs[j] is an earlier occurrence; walk back to the first. */
		while (j > 0 && strcmp(refs[j - 1].key, refs[i].key) == 0)
			j--;
		dup = refs[i].index;
		first = refs[j].index;
	}
	free(refs);
	if (dup == SIZE_MAX)
		return 0;
	lg_errf(yp->err, yp->errlen, "%s:%d: duplicate key '%s' (first at line %d)", yp->name,
		map->key_lines[dup], map->keys[dup], map->key_lines[first]);
	return -EINVAL;
}

/* Reads one key event of a map into a new string. */
static int build_key(struct yparse *yp, const yaml_event_t *ev, char **key)
{
	const yaml_char_t *tag;
	int r;

	if (ev->type == YAML_ALIAS_EVENT)
		return refuse_alias(yp, ev);
	if (ev->type != YAML_SCALAR_EVENT) {
		lg_errf(yp->err, yp->errlen, "%s:%d: a key must be a plain name, not a %s",
			yp->name, line_of(&ev->start_mark),
			ev->type == YAML_SEQUENCE_START_EVENT ? "list" : "map");
		return -EINVAL;
	}
	r = refuse_anchor(yp, ev, ev->data.scalar.anchor);
	if (r)
		return r;
	tag = ev->data.scalar.tag;
	if (!tag_is_plain(tag) && !tag_is(tag, "str"))
		return refuse_tag(yp, ev, tag);
	if (ev->data.scalar.length == 0 || strlen((const char *)ev->data.scalar.value) !=
					   ev->data.scalar.length) {
		lg_errf(yp->err, yp->errlen, "%s:%d: empty key", yp->name,
			line_of(&ev->start_mark));
		return -EINVAL;
	}
	*key = strdup((const char *)ev->data.scalar.value);
	return *key ? 0 : nomem(yp);
}

static int build_map(struct yparse *yp, const yaml_event_t *start, int depth,
		     struct lg_node **out)
{
	struct lg_node *map, *child;
	yaml_event_t ev;
	size_t cap = 0;
	char *key;
	int key_line, r;

	map = node_new(LG_NODE_MAP, line_of(&start->start_mark));
	if (!map)
		return nomem(yp);
	for (;;) {
		if (next_event(yp, &ev) < 0) {
			r = -EINVAL;
			goto fail;
		}
		if (ev.type == YAML_MAPPING_END_EVENT) {
			yaml_event_delete(&ev);
			break;
		}
		key = NULL;
		key_line = line_of(&ev.start_mark);
		r = build_key(yp, &ev, &key);
		yaml_event_delete(&ev);
		if (r)
			goto fail;
		if (next_event(yp, &ev) < 0) {
			free(key);
			r = -EINVAL;
			goto fail;
		}
		child = NULL;
		r = build_node(yp, &ev, depth + 1, &child);
		yaml_event_delete(&ev);
		if (r) {
			free(key);
			goto fail;
		}
		if (node_reserve(map, &cap) < 0) {
			free(key);
			node_free(child);
			r = nomem(yp);
			goto fail;
		}
		map->keys[map->n] = key;
		map->key_lines[map->n] = key_line;
		map->items[map->n++] = child;
	}
	r = check_duplicate_keys(yp, map);
	if (r)
		goto fail;
	*out = map;
	return 0;
fail:
	node_free(map);
	return r;
}

/* Builds the node that starts with @ev, reading the events of its children;
 * the caller deletes @ev. */
static int build_node(struct yparse *yp, const yaml_event_t *ev, int depth,
		      struct lg_node **out)
{
	int r;

	if (depth > CONFIG_MAX_DEPTH) {
		lg_errf(yp->err, yp->errlen, "%s:%d: nested deeper than %d levels", yp->name,
			line_of(&ev->start_mark), CONFIG_MAX_DEPTH);
		return -EINVAL;
	}
	switch (ev->type) {
	case YAML_SCALAR_EVENT:
		return build_scalar(yp, ev, out);
	case YAML_SEQUENCE_START_EVENT:
		r = refuse_anchor(yp, ev, ev->data.sequence_start.anchor);
		if (r)
			return r;
		if (!tag_is_plain(ev->data.sequence_start.tag) &&
		    !tag_is(ev->data.sequence_start.tag, "seq"))
			return refuse_tag(yp, ev, ev->data.sequence_start.tag);
		return build_seq(yp, ev, depth, out);
	case YAML_MAPPING_START_EVENT:
		r = refuse_anchor(yp, ev, ev->data.mapping_start.anchor);
		if (r)
			return r;
		if (!tag_is_plain(ev->data.mapping_start.tag) &&
		    !tag_is(ev->data.mapping_start.tag, "map"))
			return refuse_tag(yp, ev, ev->data.mapping_start.tag);
		return build_map(yp, ev, depth, out);
	case YAML_ALIAS_EVENT:
		return refuse_alias(yp, ev);
	default:
		lg_errf(yp->err, yp->errlen, "%s:%d: unexpected YAML event %d", yp->name,
			line_of(&ev->start_mark), (int)ev->type);
		return -EINVAL;
	}
}

/* Expects the next event to be of @type (the parser guarantees the order,
 * so anything else is a bug in libyaml or here). */
static int expect_event(struct yparse *yp, yaml_event_type_t type, yaml_event_t *ev)
{
	if (next_event(yp, ev) < 0)
		return -EINVAL;
	if (ev->type == type)
		return 0;
	lg_errf(yp->err, yp->errlen, "%s:%d: unexpected YAML event %d (expected %d)", yp->name,
		line_of(&ev->start_mark), (int)ev->type, (int)type);
	yaml_event_delete(ev);
	return -EINVAL;
}

static const char *kind_name(enum lg_node_kind kind)
{
	switch (kind) {
	case LG_NODE_SEQ:
		return "a list";
	case LG_NODE_MAP:
		return "a map";
	case LG_NODE_NULL:
		return "nothing";
	default:
		return "a single value";
	}
}

/* The one document of the stream; an empty stream is an empty map. */
static int build_document(struct yparse *yp, struct lg_node **root)
{
	struct lg_node *node = NULL;
	yaml_event_t ev;
	int r;

	r = expect_event(yp, YAML_STREAM_START_EVENT, &ev);
	if (r)
		return r;
	yaml_event_delete(&ev);
	if (next_event(yp, &ev) < 0)
		return -EINVAL;
	if (ev.type == YAML_STREAM_END_EVENT) {
		yaml_event_delete(&ev);
		goto empty;
	}
	if (ev.type != YAML_DOCUMENT_START_EVENT) {
		yaml_event_delete(&ev);
		lg_errf(yp->err, yp->errlen, "%s: unexpected YAML event at the start", yp->name);
		return -EINVAL;
	}
	yaml_event_delete(&ev);
	if (next_event(yp, &ev) < 0)
		return -EINVAL;
	r = build_node(yp, &ev, 0, &node);
	yaml_event_delete(&ev);
	if (r)
		return r;
	r = expect_event(yp, YAML_DOCUMENT_END_EVENT, &ev);
	if (r)
		goto fail;
	yaml_event_delete(&ev);
	if (next_event(yp, &ev) < 0) {
		r = -EINVAL;
		goto fail;
	}
	if (ev.type != YAML_STREAM_END_EVENT) {
		lg_errf(yp->err, yp->errlen,
			"%s:%d: a second YAML document ('---'); a config file holds one", yp->name,
			line_of(&ev.start_mark));
		yaml_event_delete(&ev);
		r = -EINVAL;
		goto fail;
	}
	yaml_event_delete(&ev);
	if (node->kind == LG_NODE_NULL) {
		node_free(node);
		goto empty;
	}
	if (node->kind != LG_NODE_MAP) {
		lg_errf(yp->err, yp->errlen,
			"%s:%d: the top level must be a map of sections (server:, plugins:, ...), "
			"not %s", yp->name, node->line, kind_name(node->kind));
		r = -EINVAL;
		goto fail;
	}
	*root = node;
	return 0;
empty:
	*root = node_new(LG_NODE_MAP, 1);
	return *root ? 0 : nomem(yp);
fail:
	node_free(node);
	return r;
}

static int parse_yaml(const char *name, const char *text, size_t len, struct lg_node **root,
		      char *err, size_t errlen)
{
	struct yparse yp = {
		.name = name, .text = text, .len = len, .err = err, .errlen = errlen,
	};
	int r;

	if (!yaml_parser_initialize(&yp.parser)) {
		lg_errf(err, errlen, "%s: out of memory", name);
		return -ENOMEM;
	}
	yaml_parser_set_input_string(&yp.parser, (const unsigned char *)text, len);
	r = build_document(&yp, root);
	yaml_parser_delete(&yp.parser);
	return r;
}

int lg_config_parse(const char *name, const char *text, size_t len,
		    struct lg_config_doc **out, char *err, size_t errlen)
{
	struct text sub = { 0 };
	struct lg_config_doc *doc;
	int r;

	*out = NULL;
	if (len > CONFIG_MAX_BYTES) {
		lg_errf(err, errlen, "%s: larger than %u MiB", name, CONFIG_MAX_BYTES >> 20);
		return -EFBIG;
	}
	doc = calloc(1, sizeof *doc);
	if (!doc || !(doc->path = strdup(name))) {
		lg_errf(err, errlen, "%s: out of memory", name);
		r = -ENOMEM;
		goto fail;
	}
	r = substitute(name, text, len, &sub, err, errlen);
	if (r)
		goto fail;
	r = parse_yaml(name, sub.p, sub.len, &doc->root, err, errlen);
	if (r)
		goto fail;
	free(sub.p);
	*out = doc;
	return 0;
fail:
	free(sub.p);
	lg_config_doc_free(doc);
	return r;
}

int lg_config_load(const char *path, struct lg_config_doc **out, char *err, size_t errlen)
{
	size_t len = 0;
	char *text = NULL;
	int r;

	*out = NULL;
	r = read_file(path, &text, &len, err, errlen);
	if (r)
		return r;
	r = lg_config_parse(path, text, len, out, err, errlen);
	free(text);
	return r;
}
