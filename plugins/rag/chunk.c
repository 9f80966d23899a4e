/* SPDX-License-Identifier: Apache-2.0 */
/* rag: the recursive character splitter, as LangChain's
 * RecursiveCharacterTextSplitter does it (the chunker of OpenGateLLM 0.4):
 * split on the first separator found in the text, keep each separator at
 * the start of the piece that follows it, merge consecutive pieces up to
 * chunk_size characters with chunk_overlap characters carried over, and
 * split again with the next separators any piece still too long. Lengths
 * are in code points; a match is always widened to whole characters, so
 * a chunk never starts or ends inside a UTF-8 sequence. */
#include <errno.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rag.h"

/* LangChain's presets (langchain_text_splitters.Language), as POSIX EREs. */
static const char *const preset_markdown[] = {
	"\n#{1,6} ", "```\n", "\n\\*\\*\\*+\n", "\n---+\n", "\n___+\n", "\n\n", "\n", " ", "",
	NULL,
};
static const char *const preset_html[] = {
	"<body", "<div", "<p", "<br", "<li", "<h1", "<h2", "<h3", "<h4", "<h5", "<h6", "<span",
	"<table", "<tr", "<td", "<th", "<ul", "<ol", "<header", "<footer", "<nav", "<head",
	"<style", "<script", "<meta", "<title", "\n\n", "\n", " ", "", NULL,
};
static const char *const preset_text[] = { "\n\n", "\n", " ", "", NULL };
static const char *const preset_python[] = {
	"\nclass ", "\ndef ", "\n\tdef ", "\n\n", "\n", " ", "", NULL,
};
static const char *const preset_latex[] = {
	"\n\\\\chapter\\{", "\n\\\\section\\{", "\n\\\\subsection\\{", "\n\\\\subsubsection\\{",
	"\n\\\\begin\\{enumerate\\}", "\n\\\\begin\\{itemize\\}", "\n\\\\begin\\{description\\}",
	"\n\\\\begin\\{list\\}", "\n\\\\begin\\{quote\\}", "\n\\\\begin\\{quotation\\}",
	"\n\\\\begin\\{verse\\}", "\n\\\\begin\\{verbatim\\}", "\n\\\\begin\\{align\\}",
	"\\$\\$", "\\$", " ", "", NULL,
};

static const struct {
	const char *name;
	const char *const *separators;
} presets[] = {
	{ "markdown", preset_markdown },
	{ "html", preset_html },
	{ "text", preset_text },
	{ "python", preset_python },
	{ "latex", preset_latex },
};

/* A text of a few bytes a chunk does not go beyond this many chunks. */
#define RAG_CHUNKS_MAX 100000

struct piece {
	const char *p;
	size_t len;             /* bytes */
	size_t n;               /* characters */
};

struct splitter {
	const struct rag_chunking *c;
	const char *const *seps;
	size_t nseps;
	regex_t *re;            /* nseps compiled patterns when regex, else NULL */
	struct rag_chunks *out;
	size_t cap;
	char *why;
	size_t whylen;
};

static int fail(char *why, size_t whylen, int err, const char *fmt, ...) LG_PRINTF(4, 5);
static int fail(char *why, size_t whylen, int err, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return err;
}

static size_t chars_of(const char *s, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xC0) != 0x80;
	return n;
}

size_t rag_utf8_chars(const char *s, size_t len)
{
	return chars_of(s, len);
}

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

const char *const *rag_chunk_preset(const char *name)
{
	for (size_t i = 0; i < LG_COUNT(presets); i++)
		if (strcmp(presets[i].name, name) == 0)
			return presets[i].separators;
	return NULL;
}

/* Add one chunk: trimmed of blanks, dropped when empty or shorter than
 * chunk_min_size characters. */
static int emit(struct splitter *sp, const char *p, size_t len)
{
	char **grown;

	while (len && is_space(*p)) {
		p++;
		len--;
	}
	while (len && is_space(p[len - 1]))
		len--;
	if (!len || chars_of(p, len) < sp->c->chunk_min_size)
		return 0;
	if (sp->out->n >= RAG_CHUNKS_MAX)
		return fail(sp->why, sp->whylen, -E2BIG,
			    "the text makes more than %d chunks: raise chunk_size",
			    RAG_CHUNKS_MAX);
	if (sp->out->n == sp->cap) {
		sp->cap = sp->cap ? 2 * sp->cap : 16;
		grown = realloc(sp->out->text, sp->cap * sizeof *grown);
		if (!grown)
			return -ENOMEM;
		sp->out->text = grown;
	}
	sp->out->text[sp->out->n] = strndup(p, len);
	if (!sp->out->text[sp->out->n])
		return -ENOMEM;
	sp->out->n++;
	return 0;
}

/* The next match of separator @i in [@p, @p + @len) at or after @from: its
 * offsets, widened to whole characters. False when there is none. */
static bool find_sep(struct splitter *sp, size_t i, const char *p, size_t len, size_t from,
		     size_t *so, size_t *eo)
{
	regmatch_t m[1];
	const char *hit;

	while (from < len) {
		if (!sp->re) {
			hit = memmem(p + from, len - from, sp->seps[i], strlen(sp->seps[i]));
			if (!hit)
				return false;
			*so = (size_t)(hit - p);
			*eo = *so + strlen(sp->seps[i]);
			return true;
		}
		m[0].rm_so = (regoff_t)from;
		m[0].rm_eo = (regoff_t)len;
		if (regexec(&sp->re[i], p, 1, m, REG_STARTEND) != 0)
			return false;
		*so = (size_t)m[0].rm_so;
		*eo = (size_t)m[0].rm_eo;
		while (*so > 0 && ((unsigned char)p[*so] & 0xC0) == 0x80)
			(*so)--;
		while (*eo < len && ((unsigned char)p[*eo] & 0xC0) == 0x80)
			(*eo)++;
		if (*eo > *so)
			return true;
		/* An empty match separates nothing: look further. */
		from = *so + 1;
		while (from < len && ((unsigned char)p[from] & 0xC0) == 0x80)
			from++;
	}
	return false;
}

static int push_piece(struct piece **v, size_t *n, size_t *cap, const char *p, size_t len)
{
	struct piece *grown;

	if (!len)
		return 0;
	if (*n == *cap) {
		*cap = *cap ? 2 * *cap : 16;
		grown = realloc(*v, *cap * sizeof *grown);
		if (!grown)
			return -ENOMEM;
		*v = grown;
	}
	(*v)[(*n)++] = (struct piece){ .p = p, .len = len, .n = chars_of(p, len) };
	return 0;
}

/* Cut [@p, @p + @len) before every match of separator @i (the separator
 * starts the next piece), or into characters for the empty separator. */
static int cut(struct splitter *sp, size_t i, const char *p, size_t len, struct piece **v,
	       size_t *n)
{
	size_t cap = 0, start = 0, so, eo, from = 0;
	int rc;

	*v = NULL;
	*n = 0;
	if (i >= sp->nseps || !sp->seps[i][0]) {
		bool by_char = i < sp->nseps;

		for (size_t at = 0; at < len; at = start) {
			start = at + 1;
			while (by_char && start < len && ((unsigned char)p[start] & 0xC0) == 0x80)
				start++;
			if (!by_char)
				start = len;
			rc = push_piece(v, n, &cap, p + at, start - at);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	while (find_sep(sp, i, p, len, from, &so, &eo)) {
		if (so > start) {
			rc = push_piece(v, n, &cap, p + start, so - start);
			if (rc < 0)
				return rc;
			start = so;
		}
		from = eo;
	}
	return push_piece(v, n, &cap, p + start, len - start);
}

/* Merge pieces [@a, @b) (contiguous in the text) into chunks of at most
 * chunk_size characters, each new chunk starting with up to chunk_overlap
 * characters of the previous one. */
static int merge(struct splitter *sp, const struct piece *v, size_t a, size_t b)
{
	size_t first = a, total = 0;
	int rc;

	for (size_t i = a; i < b; i++) {
		if (total + v[i].n > sp->c->chunk_size && i > first) {
			rc = emit(sp, v[first].p, (size_t)(v[i - 1].p + v[i - 1].len - v[first].p));
			if (rc < 0)
				return rc;
			while (total > sp->c->chunk_overlap ||
			       (total + v[i].n > sp->c->chunk_size && total > 0)) {
				total -= v[first].n;
				first++;
			}
		}
		total += v[i].n;
	}
	if (first < b)
		return emit(sp, v[first].p, (size_t)(v[b - 1].p + v[b - 1].len - v[first].p));
	return 0;
}

/* The separator to split with: the first of @from.. found in the text (the
 * empty one always is), or the last one. */
static size_t pick_sep(struct splitter *sp, size_t from, const char *p, size_t len)
{
	size_t so, eo;

	for (size_t i = from; i < sp->nseps; i++)
		if (!sp->seps[i][0] || find_sep(sp, i, p, len, 0, &so, &eo))
			return i;
	return sp->nseps ? sp->nseps - 1 : 0;
}

static int split(struct splitter *sp, size_t from, const char *p, size_t len)
{
	size_t i = pick_sep(sp, from, p, len), n, good = 0;
	bool more = i + 1 < sp->nseps && sp->seps[i][0];
	struct piece *v;
	int rc = cut(sp, i, p, len, &v, &n);

	for (size_t k = 0; rc == 0 && k < n; k++) {
		if (v[k].n < sp->c->chunk_size)
			continue;
		rc = merge(sp, v, good, k);
		if (rc == 0)
			rc = more ? split(sp, i + 1, v[k].p, v[k].len) : emit(sp, v[k].p, v[k].len);
		good = k + 1;
	}
	if (rc == 0)
		rc = merge(sp, v, good, n);
	free(v);
	return rc;
}

static bool valid_utf8(const char *s, size_t len);

static int compile(struct splitter *sp)
{
	char err[128];
	int rc;

	sp->re = calloc(sp->nseps ? sp->nseps : 1, sizeof *sp->re);
	if (!sp->re)
		return -ENOMEM;
	for (size_t i = 0; i < sp->nseps; i++) {
		rc = regcomp(&sp->re[i], sp->seps[i][0] ? sp->seps[i] : "x", REG_EXTENDED);
		if (rc != 0) {
			regerror(rc, &sp->re[i], err, sizeof err);
			for (size_t k = 0; k < i; k++)
				regfree(&sp->re[k]);
			free(sp->re);
			sp->re = NULL;
			return fail(sp->why, sp->whylen, -EINVAL,
				    "separators: invalid regular expression %zu: %s", i + 1, err);
		}
	}
	return 0;
}

static int check(const struct rag_chunking *c, char *why, size_t whylen)
{
	if (c->chunk_size < 1)
		return fail(why, whylen, -EINVAL, "chunk_size: must be at least 1");
	if (c->chunk_overlap >= c->chunk_size)
		return fail(why, whylen, -EINVAL,
			    "chunk_overlap: must be less than chunk_size (%zu)", c->chunk_size);
	if (c->chunk_min_size > c->chunk_size)
		return fail(why, whylen, -EINVAL,
			    "chunk_min_size: must not exceed chunk_size (%zu)", c->chunk_size);
	for (size_t i = 0; c->separators && i < c->nseparators; i++)
		if (!c->separators[i] || !valid_utf8(c->separators[i], strlen(c->separators[i])))
			return fail(why, whylen, -EINVAL, "separators: item %zu is not UTF-8 text",
				    i + 1);
	return 0;
}

int rag_chunk(const struct rag_chunking *c, const char *text, size_t len,
	      struct rag_chunks *out, char *why, size_t whylen)
{
	struct splitter sp = { .c = c, .out = out, .why = why, .whylen = whylen };
	bool regex = c->is_separator_regex;
	int rc;

	out->text = NULL;
	out->n = 0;
	rc = check(c, why, whylen);
	if (rc < 0)
		return rc;
	if (c->separators && c->nseparators) {
		sp.seps = c->separators;
		sp.nseps = c->nseparators;
	} else {
		sp.seps = rag_chunk_preset(c->preset ? c->preset : "text");
		if (!sp.seps)
			return fail(why, whylen, -EINVAL,
				    "preset_separators: unknown preset '%s' (known: markdown, html, "
				    "text, python, latex)", c->preset);
		regex = true;
		while (sp.seps[sp.nseps])
			sp.nseps++;
	}
	if (regex) {
		rc = compile(&sp);
		if (rc < 0)
			return rc;
	}
	rc = split(&sp, 0, text, len);
	if (sp.re) {
		for (size_t i = 0; i < sp.nseps; i++)
			regfree(&sp.re[i]);
		free(sp.re);
	}
	if (rc < 0) {
		rag_chunks_free(out);
		if (rc == -ENOMEM)
			fail(why, whylen, rc, "out of memory");
	}
	return rc;
}

void rag_chunks_free(struct rag_chunks *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++)
		free(c->text[i]);
	free(c->text);
	c->text = NULL;
	c->n = 0;
}

/* Well-formed UTF-8 (no overlong forms, surrogates or values past U+10FFFF). */
static bool valid_utf8(const char *s, size_t len)
{
	return rag_utf8_valid(s, len) == len;
}

size_t rag_utf8_valid(const char *str, size_t len)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0, need;
	unsigned lo, hi;

	while (i < len) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		lo = 0x80;
		hi = 0xBF;
		if (s[i] >= 0xC2 && s[i] <= 0xDF)
			need = 1;
		else if (s[i] >= 0xE0 && s[i] <= 0xEF)
			need = 2;
		else if (s[i] >= 0xF0 && s[i] <= 0xF4)
			need = 3;
		else
			return i;
		if (s[i] == 0xE0)
			lo = 0xA0;
		else if (s[i] == 0xED)
			hi = 0x9F;
		else if (s[i] == 0xF0)
			lo = 0x90;
		else if (s[i] == 0xF4)
			hi = 0x8F;
		if (i + need >= len)
			return i;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return i;
		for (size_t k = 2; k <= need; k++)
			if (s[i + k] < 0x80 || s[i + k] > 0xBF)
				return i;
		i += need + 1;
	}
	return len;
}
