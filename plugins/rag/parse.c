/* SPDX-License-Identifier: Apache-2.0 */
/* rag: uploaded files into pages of UTF-8 text. Plain text and Markdown
 * are taken as they are (well-formed UTF-8 required); HTML is read with
 * libxml2's forgiving HTML parser (no network, no error output) and its
 * text kept without scripts and styles, one block per paragraph; PDF is
 * read with Poppler's GLib interface, one page of text per page; a JSON
 * list of {text, title, metadata?} gives one document per entry. Every
 * failure says why in words fit for the client. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <libxml/HTMLparser.h>
#include <libxml/tree.h>
#include <poppler.h>

#include "rag.h"

#define PDF_TAIL 1024           /* %%EOF is looked for in the last bytes */

struct buf {
	char *p;
	size_t len, cap;
	bool failed;
};

static int fail(char *why, size_t whylen, const char *fmt, ...) LG_PRINTF(3, 4);
static int fail(char *why, size_t whylen, const char *fmt, ...)
{
	va_list ap;

	if (why && whylen) {
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

static void buf_add(struct buf *b, const char *s, size_t n)
{
	char *grown;
	size_t cap;

	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		grown = realloc(b->p, cap);
		if (!grown) {
			b->failed = true;
			return;
		}
		b->p = grown;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static bool blank_only(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' && s[i] != '\f')
			return false;
	return true;
}

static const char *ext_of(const char *filename)
{
	const char *dot = filename ? strrchr(filename, '.') : NULL;

	return dot && !strchr(dot, '/') ? dot + 1 : "";
}

enum rag_format rag_format_of(const char *filename, const char *content_type)
{
	static const struct {
		const char *ext, *type;
		enum rag_format fmt;
	} kinds[] = {
		{ "txt", "text/plain", RAG_TEXT },
		{ "text", NULL, RAG_TEXT },
		{ "md", "text/markdown", RAG_MARKDOWN },
		{ "markdown", "text/x-markdown", RAG_MARKDOWN },
		{ "html", "text/html", RAG_HTML },
		{ "htm", "application/xhtml+xml", RAG_HTML },
		{ "pdf", "application/pdf", RAG_PDF },
		{ "json", "application/json", RAG_JSON },
	};
	const char *ext = ext_of(filename);
	size_t tlen;

	for (size_t i = 0; i < LG_COUNT(kinds); i++)
		if (strcasecmp(ext, kinds[i].ext) == 0)
			return kinds[i].fmt;
	if (!content_type)
		return RAG_UNKNOWN;
	tlen = strcspn(content_type, "; \t");
	for (size_t i = 0; i < LG_COUNT(kinds); i++)
		if (kinds[i].type && strlen(kinds[i].type) == tlen &&
		    strncasecmp(content_type, kinds[i].type, tlen) == 0)
			return kinds[i].fmt;
	return RAG_UNKNOWN;
}

void rag_doc_free(struct rag_doc *d)
{
	if (!d)
		return;
	for (size_t i = 0; i < d->npages; i++) {
		free(d->pages[i].text);
		free(d->pages[i].title);
		free(d->pages[i].metadata);
	}
	free(d->pages);
	d->pages = NULL;
	d->npages = 0;
}

/* Append a page that takes @text (malloc'ed, NUL-terminated). */
static int add_page(struct rag_doc *d, char *text, size_t len)
{
	struct rag_page *grown = realloc(d->pages, (d->npages + 1) * sizeof *grown);

	if (!grown) {
		free(text);
		return -ENOMEM;
	}
	d->pages = grown;
	d->pages[d->npages] = (struct rag_page){ .text = text, .len = len,
						 .number = (int)d->npages + 1 };
	d->npages++;
	return 0;
}

/* Text must be well-formed UTF-8 without NUL; a byte-order mark is dropped. */
static int check_text(const char **data, size_t *len, char *why, size_t whylen)
{
	size_t ok;
	const char *nul;

	if (*len >= 3 && memcmp(*data, "\xEF\xBB\xBF", 3) == 0) {
		*data += 3;
		*len -= 3;
	}
	ok = rag_utf8_valid(*data, *len);
	if (ok != *len)
		return fail(why, whylen, "the file is not valid UTF-8 text (byte %zu)", ok);
	nul = memchr(*data, '\0', *len);
	if (nul)
		return fail(why, whylen, "the file contains a NUL character (byte %zu)",
			    (size_t)(nul - *data));
	if (blank_only(*data, *len))
		return fail(why, whylen, "the file has no text");
	return 0;
}

static int parse_text(const char *data, size_t len, struct rag_doc *out, char *why,
		      size_t whylen)
{
	char *copy;
	int rc = check_text(&data, &len, why, whylen);

	if (rc < 0)
		return rc;
	copy = strndup(data, len);
	if (!copy)
		return -ENOMEM;
	return add_page(out, copy, len);
}

/* ---- HTML ---- */

static bool html_skipped(const xmlChar *name)
{
	static const char *const skip[] = { "script", "style", "noscript", "template", "head",
					    NULL };

	for (size_t i = 0; skip[i]; i++)
		if (xmlStrcasecmp(name, (const xmlChar *)skip[i]) == 0)
			return true;
	return false;
}

/* 2: a paragraph break around it, 1: a line break, 0: inline. */
static int html_break(const xmlChar *name)
{
	static const char *const lines[] = { "br", "li", "tr", "dt", "dd", "option", NULL };
	static const char *const paragraphs[] = {
		"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "header",
		"footer", "nav", "aside", "main", "pre", "blockquote", "ul", "ol", "dl", "table",
		"figure", "form", "hr", "title", "address", "details", "summary", NULL,
	};

	for (size_t i = 0; lines[i]; i++)
		if (xmlStrcasecmp(name, (const xmlChar *)lines[i]) == 0)
			return 1;
	for (size_t i = 0; paragraphs[i]; i++)
		if (xmlStrcasecmp(name, (const xmlChar *)paragraphs[i]) == 0)
			return 2;
	return 0;
}

/* A line or paragraph break: trailing blanks go, at most one blank line. */
static void html_newline(struct buf *b, int kind)
{
	size_t newlines = 0;

	while (b->len && b->p[b->len - 1] == ' ')
		b->p[--b->len] = '\0';
	for (size_t i = b->len; i > 0 && b->p[i - 1] == '\n'; i--)
		newlines++;
	if (!b->len)
		return;
	while (newlines < (size_t)kind) {
		buf_add(b, "\n", 1);
		newlines++;
	}
}

/* Text with every run of blanks made one space. */
static void html_text(struct buf *b, const char *s)
{
	for (; *s; s++) {
		if (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r' || *s == '\f') {
			if (b->len && b->p[b->len - 1] != ' ' && b->p[b->len - 1] != '\n')
				buf_add(b, " ", 1);
			continue;
		}
		buf_add(b, s, 1);
	}
}

static void html_walk(struct buf *b, xmlNode *node, int depth)
{
	int brk;

	for (; node; node = node->next) {
		if (node->type == XML_TEXT_NODE || node->type == XML_CDATA_SECTION_NODE) {
			if (node->content)
				html_text(b, (const char *)node->content);
			continue;
		}
		if (node->type != XML_ELEMENT_NODE || html_skipped(node->name))
			continue;
		brk = html_break(node->name);
		if (brk)
			html_newline(b, brk);
		/* libxml2 limits the depth of the tree it builds; this is a guard. */
		if (depth < 512)
			html_walk(b, node->children, depth + 1);
		if (brk)
			html_newline(b, brk);
	}
}

static void xml_init_once(void)
{
	xmlInitParser();
}

static int parse_html(const char *data, size_t len, struct rag_doc *out, char *why,
		      size_t whylen)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	struct buf b = { 0 };
	const char *enc = NULL;
	htmlDocPtr doc;
	int rc;

	if (blank_only(data, len))
		return fail(why, whylen, "the file has no text");
	if (len > (size_t)INT32_MAX)
		return fail(why, whylen, "the HTML file is too large");
	pthread_once(&once, xml_init_once);
	/* UTF-8 when it is; otherwise the document's own <meta charset>. */
	if (rag_utf8_valid(data, len) == len)
		enc = "UTF-8";
	doc = htmlReadMemory(data, (int)len, NULL, enc,
			     HTML_PARSE_NOERROR | HTML_PARSE_NOWARNING | HTML_PARSE_NONET);
	if (!doc)
		return fail(why, whylen, "the file could not be read as HTML");
	html_walk(&b, xmlDocGetRootElement(doc), 0);
	xmlFreeDoc(doc);
	if (b.failed) {
		free(b.p);
		return -ENOMEM;
	}
	if (!b.p || blank_only(b.p, b.len)) {
		free(b.p);
		return fail(why, whylen, "the HTML file has no text");
	}
	rc = add_page(out, b.p, b.len);
	return rc;
}

/* ---- PDF ---- */

static bool pdf_ends(const char *data, size_t len)
{
	size_t from = len > PDF_TAIL ? len - PDF_TAIL : 0;

	return memmem(data + from, len - from, "%%EOF", 5) != NULL;
}

/* Page text as well-formed UTF-8 without NUL (Poppler's usually is). */
static char *pdf_clean(const char *s, size_t *len)
{
	struct buf b = { 0 };
	size_t n = strlen(s), ok;

	buf_add(&b, "", 0);
	while (n) {
		ok = rag_utf8_valid(s, n);
		buf_add(&b, s, ok);
		if (ok == n)
			break;
		buf_add(&b, "\xEF\xBF\xBD", 3);
		s += ok + 1;
		n -= ok + 1;
	}
	if (b.failed) {
		free(b.p);
		return NULL;
	}
	*len = b.len;
	return b.p;
}

static int pdf_open_failed(GError *err, char *why, size_t whylen)
{
	int rc;

	if (err && err->domain == POPPLER_ERROR && err->code == POPPLER_ERROR_ENCRYPTED)
		rc = fail(why, whylen, "the PDF is encrypted (password protected)");
	else
		rc = fail(why, whylen, "the PDF is damaged and cannot be read%s%s",
			  err && err->message ? ": " : "", err && err->message ? err->message : "");
	if (err)
		g_error_free(err);
	return rc;
}

static int parse_pdf(const char *data, size_t len, struct rag_doc *out, char *why,
		     size_t whylen)
{
	PopplerDocument *pdf;
	GError *err = NULL;
	GBytes *bytes;
	bool any_text = false;
	int pages, rc = 0;

	if (len < 5 || memcmp(data, "%PDF-", 5) != 0)
		return fail(why, whylen, "the file is not a PDF (no %%PDF- header)");
	if (!pdf_ends(data, len))
		return fail(why, whylen, "the PDF is truncated (no %%%%EOF at its end)");
	bytes = g_bytes_new(data, len);
	pdf = poppler_document_new_from_bytes(bytes, NULL, &err);
	g_bytes_unref(bytes);
	if (!pdf)
		return pdf_open_failed(err, why, whylen);
	pages = poppler_document_get_n_pages(pdf);
	for (int i = 0; i < pages && rc == 0; i++) {
		PopplerPage *page = poppler_document_get_page(pdf, i);
		char *text = page ? poppler_page_get_text(page) : NULL;
		size_t n = 0;
		char *clean = pdf_clean(text ? text : "", &n);

		g_free(text);
		if (page)
			g_object_unref(page);
		if (!clean) {
			rc = -ENOMEM;
			break;
		}
		any_text = any_text || !blank_only(clean, n);
		rc = add_page(out, clean, n);
	}
	g_object_unref(pdf);
	if (rc == 0 && pages <= 0)
		rc = fail(why, whylen, "the PDF has no pages");
	else if (rc == 0 && !any_text)
		rc = fail(why, whylen, "the PDF has no text layer (a scan? OCR is not available)");
	return rc;
}

/* ---- JSON lists ---- */

static int json_entry(json_t *e, size_t i, struct rag_doc *out, char *why, size_t whylen)
{
	json_t *text = json_object_get(e, "text"), *title = json_object_get(e, "title");
	json_t *meta = json_object_get(e, "metadata");
	struct rag_page *p;
	const char *s;
	size_t len;
	char *copy;
	int rc;

	if (!json_is_object(e) || !json_is_string(text))
		return fail(why, whylen, "item %zu: an object with a \"text\" string is expected",
			    i + 1);
	if (title && !json_is_null(title) && !json_is_string(title))
		return fail(why, whylen, "item %zu: \"title\" must be a string", i + 1);
	if (meta && !json_is_null(meta) && !json_is_object(meta))
		return fail(why, whylen, "item %zu: \"metadata\" must be an object", i + 1);
	s = json_string_value(text);
	len = json_string_length(text);
	if (memchr(s, '\0', len))
		return fail(why, whylen, "item %zu: the text contains a NUL character", i + 1);
	if (blank_only(s, len))
		return fail(why, whylen, "item %zu: the text is empty", i + 1);
	copy = strndup(s, len);
	if (!copy)
		return -ENOMEM;
	rc = add_page(out, copy, len);
	if (rc < 0)
		return rc;
	p = &out->pages[out->npages - 1];
	if (json_is_string(title) && json_string_length(title) &&
	    !memchr(json_string_value(title), '\0', json_string_length(title))) {
		p->title = strdup(json_string_value(title));
		if (!p->title)
			return -ENOMEM;
	}
	if (json_is_object(meta)) {
		p->metadata = json_dumps(meta, JSON_COMPACT);
		if (!p->metadata)
			return -ENOMEM;
	}
	return 0;
}

static int parse_json(const char *data, size_t len, struct rag_doc *out, char *why,
		      size_t whylen)
{
	json_error_t jerr;
	json_t *root;
	size_t i;
	int rc = 0;

	root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(why, whylen, "the file is not valid JSON: %s (line %d)", jerr.text,
			    jerr.line);
	if (!json_is_array(root) || json_array_size(root) == 0)
		rc = fail(why, whylen, "a JSON file must be a non-empty list of "
			  "{\"text\", \"title\", \"metadata\"} objects");
	else if (json_array_size(root) > RAG_JSON_DOCS_MAX)
		rc = fail(why, whylen, "a JSON file holds at most %d documents", RAG_JSON_DOCS_MAX);
	for (i = 0; rc == 0 && i < json_array_size(root); i++)
		rc = json_entry(json_array_get(root, i), i, out, why, whylen);
	json_decref(root);
	return rc;
}

int rag_parse(enum rag_format fmt, const char *data, size_t len, struct rag_doc *out,
	      char *why, size_t whylen)
{
	int rc;

	out->pages = NULL;
	out->npages = 0;
	if (len == 0)
		return fail(why, whylen, "the file is empty");
	switch (fmt) {
	case RAG_TEXT:
	case RAG_MARKDOWN:
		rc = parse_text(data, len, out, why, whylen);
		break;
	case RAG_HTML:
		rc = parse_html(data, len, out, why, whylen);
		break;
	case RAG_PDF:
		rc = parse_pdf(data, len, out, why, whylen);
		break;
	case RAG_JSON:
		rc = parse_json(data, len, out, why, whylen);
		break;
	default:
		rc = fail(why, whylen, "unsupported file type");
		break;
	}
	if (rc < 0) {
		rag_doc_free(out);
		if (rc == -ENOMEM)
			fail(why, whylen, "out of memory");
	}
	return rc;
}
