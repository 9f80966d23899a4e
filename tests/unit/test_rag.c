/* SPDX-License-Identifier: Apache-2.0 */
/* The rag plugin's pure parts: the recursive splitter (sizes, overlap,
 * presets, regular expressions, UTF-8 boundaries, minimum size,
 * pathological inputs) and the parsers (text, HTML, PDF written byte by
 * byte here, JSON lists, and the files they refuse). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../plugins/rag/rag.h"

static size_t chars(const char *s)
{
	size_t n = 0;

	for (; *s; s++)
		n += ((unsigned char)*s & 0xC0) != 0x80;
	return n;
}

static struct rag_chunking text_preset(size_t size, size_t overlap)
{
	return (struct rag_chunking){ .chunk_size = size, .chunk_overlap = overlap,
				      .preset = "text" };
}

static void chunk_ok(const struct rag_chunking *c, const char *text, struct rag_chunks *out)
{
	char why[256] = "";
	int rc = rag_chunk(c, text, strlen(text), out, why, sizeof why);

	if (rc != 0)
		fail_msg("rag_chunk: %d %s", rc, why);
}

/* ---- chunking ---- */

static void paragraphs_fill_chunks_up_to_the_size(void **state)
{
	struct rag_chunking c = text_preset(30, 0);
	struct rag_chunks out;

	(void)state;
	chunk_ok(&c, "one two three\n\nfour five six\n\nseven eight nine ten", &out);
	assert_int_equal(out.n, 2);
	assert_string_equal(out.text[0], "one two three\n\nfour five six");
	assert_string_equal(out.text[1], "seven eight nine ten");
	rag_chunks_free(&out);
}

static void every_chunk_respects_the_size(void **state)
{
	struct rag_chunking c = text_preset(50, 0);
	struct rag_chunks out;
	char text[4096] = "";
	size_t total = 0;

	(void)state;
	for (int i = 0; i < 150; i++)
		snprintf(text + strlen(text), sizeof text - strlen(text), "word%d%s", i,
			 i % 17 == 16 ? "\n\n" : i % 5 == 4 ? "\n" : " ");
	chunk_ok(&c, text, &out);
	assert_true(out.n > 10);
	for (size_t i = 0; i < out.n; i++) {
		assert_true(chars(out.text[i]) <= 50);
		assert_true(chars(out.text[i]) > 0);
		total += strlen(out.text[i]);
	}
	/* Nothing lost: every word is in some chunk. */
	for (int i = 0; i < 150; i += 7) {
		char w[16];
		bool found = false;

		snprintf(w, sizeof w, "word%d", i);
		for (size_t k = 0; k < out.n && !found; k++) {
			const char *at = strstr(out.text[k], w);

			found = at && !(at[strlen(w)] >= '0' && at[strlen(w)] <= '9');
		}
		assert_true(found);
	}
	assert_true(total <= strlen(text));
	rag_chunks_free(&out);
}

static void overlap_repeats_the_end_of_the_previous_chunk(void **state)
{
	struct rag_chunking c = text_preset(20, 8);
	struct rag_chunks out;

	(void)state;
	chunk_ok(&c, "aaa bbb ccc ddd eee fff ggg hhh iii jjj", &out);
	assert_true(out.n >= 3);
	for (size_t i = 0; i + 1 < out.n; i++) {
		/* The next chunk starts with the last 8 characters (two words)
		 * of this one. */
		size_t len = strlen(out.text[i]);

		assert_true(len > 7);
		assert_memory_equal(out.text[i + 1], out.text[i] + len - 7, 7);
		assert_true(chars(out.text[i]) <= 20);
	}
	rag_chunks_free(&out);
}

static void no_overlap_means_no_repeated_words(void **state)
{
	struct rag_chunking c = text_preset(20, 0);
	struct rag_chunks out;
	size_t total = 0;

	(void)state;
	chunk_ok(&c, "aaa bbb ccc ddd eee fff ggg hhh iii jjj", &out);
	for (size_t i = 0; i < out.n; i++)
		total += strlen(out.text[i]);
	/* 10 words of 3 letters, one blank between the words of a chunk. */
	assert_int_equal(total, 30 + 10 - out.n);
	rag_chunks_free(&out);
}

static void markdown_preset_cuts_before_headings(void **state)
{
	struct rag_chunking c = { .chunk_size = 60, .preset = "markdown" };
	struct rag_chunks out;

	(void)state;
	chunk_ok(&c, "# Title\nintro text here\n## Part one\nfirst part body text\n"
		 "## Part two\nsecond part body text", &out);
	assert_int_equal(out.n, 2);
	assert_string_equal(out.text[0], "# Title\nintro text here\n## Part one\nfirst part body text");
	assert_string_equal(out.text[1], "## Part two\nsecond part body text");
	rag_chunks_free(&out);
}

static void html_preset_cuts_before_tags(void **state)
{
	struct rag_chunking c = { .chunk_size = 25, .preset = "html" };
	struct rag_chunks out;

	(void)state;
	chunk_ok(&c, "<div>first block</div><div>second block</div>", &out);
	assert_int_equal(out.n, 2);
	assert_string_equal(out.text[0], "<div>first block</div>");
	assert_string_equal(out.text[1], "<div>second block</div>");
	rag_chunks_free(&out);
}

static void custom_and_regex_separators(void **state)
{
	static const char *const semi[] = { ";" };
	static const char *const digits[] = { "[0-9]+\\." };
	struct rag_chunking c = { .chunk_size = 8, .separators = semi, .nseparators = 1 };
	struct rag_chunks out;

	(void)state;
	chunk_ok(&c, "abc;defgh;ij", &out);
	assert_int_equal(out.n, 3);
	assert_string_equal(out.text[0], "abc");
	assert_string_equal(out.text[1], ";defgh");
	assert_string_equal(out.text[2], ";ij");
	rag_chunks_free(&out);

	c = (struct rag_chunking){ .chunk_size = 12, .separators = digits, .nseparators = 1,
				   .is_separator_regex = true };
	chunk_ok(&c, "1. alpha one 2. beta two 10. gamma", &out);
	assert_int_equal(out.n, 3);
	assert_string_equal(out.text[0], "1. alpha one");
	assert_string_equal(out.text[1], "2. beta two");
	assert_string_equal(out.text[2], "10. gamma");
	rag_chunks_free(&out);

	/* Without is_separator_regex the pattern is a plain string. */
	c.is_separator_regex = false;
	chunk_ok(&c, "1. alpha one 2. beta", &out);
	assert_int_equal(out.n, 1);
	rag_chunks_free(&out);
}

static void multibyte_text_is_never_cut_inside_a_character(void **state)
{
	/* No blank at all: the splitter falls back to characters. */
	static const char *const texts[] = {
		"éàüößçñéàüößçñéàüößçñéàüößçñéàüößçñ",
		"日本語のテキストを分割する日本語のテキストを分割する",
		"😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘",
		"aé日😀aé日😀aé日😀aé日😀aé日😀aé日😀",
	};
	struct rag_chunks out;

	(void)state;
	for (size_t t = 0; t < LG_COUNT(texts); t++) {
		for (size_t size = 1; size <= 7; size++) {
			struct rag_chunking c = text_preset(size, size > 2 ? 1 : 0);
			size_t sum = 0;

			chunk_ok(&c, texts[t], &out);
			for (size_t i = 0; i < out.n; i++) {
				assert_int_equal(rag_utf8_valid(out.text[i], strlen(out.text[i])),
						 strlen(out.text[i]));
				assert_true(chars(out.text[i]) <= size);
				sum += chars(out.text[i]);
			}
			assert_true(sum >= chars(texts[t]));
			rag_chunks_free(&out);
		}
	}
}

static void regex_matching_inside_a_character_is_widened(void **state)
{
	/* "." in the C locale matches a single byte: the cut is widened. */
	static const char *const dot[] = { "\xA9" };
	static const char *const any[] = { "." };
	struct rag_chunking c = { .chunk_size = 3, .separators = any, .nseparators = 1,
				  .is_separator_regex = true };
	struct rag_chunks out;

	(void)state;
	chunk_ok(&c, "ééééé", &out);
	for (size_t i = 0; i < out.n; i++)
		assert_int_equal(rag_utf8_valid(out.text[i], strlen(out.text[i])),
				 strlen(out.text[i]));
	rag_chunks_free(&out);
	/* A separator that is not UTF-8 text is refused. */
	c.separators = dot;
	c.is_separator_regex = false;
	assert_int_equal(rag_chunk(&c, "é", 2, &out, NULL, 0), -EINVAL);
}

static void min_size_drops_short_chunks(void **state)
{
	struct rag_chunking c = text_preset(20, 0);
	struct rag_chunks out;

	(void)state;
	c.chunk_min_size = 10;
	chunk_ok(&c, "a long enough chunk\n\nshort\n\nanother long chunk", &out);
	assert_int_equal(out.n, 2);
	assert_string_equal(out.text[0], "a long enough chunk");
	assert_string_equal(out.text[1], "another long chunk");
	rag_chunks_free(&out);
}

static void bad_parameters_are_refused(void **state)
{
	struct rag_chunking c = text_preset(10, 10);
	static const char *const bad[] = { "(" };
	struct rag_chunks out;
	char why[200];

	(void)state;
	assert_int_equal(rag_chunk(&c, "x", 1, &out, why, sizeof why), -EINVAL);
	assert_non_null(strstr(why, "chunk_overlap"));
	c = text_preset(0, 0);
	assert_int_equal(rag_chunk(&c, "x", 1, &out, why, sizeof why), -EINVAL);
	c = text_preset(10, 0);
	c.chunk_min_size = 11;
	assert_int_equal(rag_chunk(&c, "x", 1, &out, why, sizeof why), -EINVAL);
	c = (struct rag_chunking){ .chunk_size = 10, .preset = "klingon" };
	assert_int_equal(rag_chunk(&c, "x", 1, &out, why, sizeof why), -EINVAL);
	assert_non_null(strstr(why, "klingon"));
	c = (struct rag_chunking){ .chunk_size = 10, .separators = bad, .nseparators = 1,
				   .is_separator_regex = true };
	assert_int_equal(rag_chunk(&c, "x", 1, &out, why, sizeof why), -EINVAL);
	assert_non_null(strstr(why, "regular expression"));
	assert_null(out.text);
}

static void pathological_inputs(void **state)
{
	static const char *const empty_match[] = { "x*" };
	size_t big = 1 << 20;
	char *text = malloc(big + 1);
	struct rag_chunking c = text_preset(1000, 100);
	struct rag_chunks out;

	(void)state;
	assert_non_null(text);
	/* One megabyte without a blank. */
	memset(text, 'a', big);
	text[big] = '\0';
	chunk_ok(&c, text, &out);
	assert_true(out.n >= big / 1000);
	for (size_t i = 0; i < out.n; i++)
		assert_true(strlen(out.text[i]) <= 1000);
	rag_chunks_free(&out);
	/* Only blanks and newlines: no chunk at all. */
	memset(text, '\n', 1000);
	text[1000] = '\0';
	chunk_ok(&c, text, &out);
	assert_int_equal(out.n, 0);
	rag_chunks_free(&out);
	/* A pattern that matches the empty string separates nothing. */
	c = (struct rag_chunking){ .chunk_size = 4, .separators = empty_match, .nseparators = 1,
				   .is_separator_regex = true };
	chunk_ok(&c, "abcdefgh", &out);
	assert_int_equal(out.n, 1);
	rag_chunks_free(&out);
	/* chunk_size 1 over a megabyte would be a million chunks: refused. */
	memset(text, 'b', big);
	text[big] = '\0';
	c = text_preset(1, 0);
	assert_int_equal(rag_chunk(&c, text, big, &out, NULL, 0), -E2BIG);
	free(text);
}

/* ---- parsing ---- */

static void parse_expect_error(enum rag_format fmt, const char *data, size_t len,
			       const char *reason)
{
	struct rag_doc doc;
	char why[256] = "";

	assert_int_equal(rag_parse(fmt, data, len, &doc, why, sizeof why), -EINVAL);
	if (!strstr(why, reason))
		fail_msg("expected '%s' in '%s'", reason, why);
	assert_null(doc.pages);
}

static void formats_from_names_and_types(void **state)
{
	(void)state;
	assert_int_equal(rag_format_of("a.PDF", NULL), RAG_PDF);
	assert_int_equal(rag_format_of("notes.md", "application/octet-stream"), RAG_MARKDOWN);
	assert_int_equal(rag_format_of("page.htm", NULL), RAG_HTML);
	assert_int_equal(rag_format_of("x", "text/plain; charset=utf-8"), RAG_TEXT);
	assert_int_equal(rag_format_of("list.json", NULL), RAG_JSON);
	assert_int_equal(rag_format_of("../../etc/passwd", NULL), RAG_UNKNOWN);
	assert_int_equal(rag_format_of("a.exe", "application/x-msdownload"), RAG_UNKNOWN);
	assert_int_equal(rag_format_of(NULL, NULL), RAG_UNKNOWN);
}

static void text_must_be_utf8(void **state)
{
	struct rag_doc doc;
	char why[128];

	(void)state;
	assert_int_equal(rag_parse(RAG_TEXT, "\xEF\xBB\xBFhé", 6, &doc, why, sizeof why), 0);
	assert_int_equal(doc.npages, 1);
	assert_string_equal(doc.pages[0].text, "hé");
	rag_doc_free(&doc);
	parse_expect_error(RAG_TEXT, "ab\xC0\xAF", 4, "not valid UTF-8");
	parse_expect_error(RAG_TEXT, "\xED\xA0\x80", 3, "not valid UTF-8");
	parse_expect_error(RAG_MARKDOWN, "x\xFF", 2, "not valid UTF-8");
	parse_expect_error(RAG_TEXT, "ab\xC3", 3, "not valid UTF-8");
	parse_expect_error(RAG_TEXT, "a\0b", 3, "NUL");
	parse_expect_error(RAG_TEXT, "", 0, "empty");
	parse_expect_error(RAG_TEXT, " \n\t ", 4, "no text");
	parse_expect_error(RAG_UNKNOWN, "x", 1, "unsupported");
}

static void html_keeps_text_without_scripts(void **state)
{
	static const char html[] =
		"<html><head><title>T</title><style>p{color:red}</style></head><body>"
		"<h1>Heading</h1><p>First   paragraph\nwith <b>bold</b> text.</p>"
		"<script>var secret = 1;</script><ul><li>one</li><li>two</li></ul>"
		"<div>Caf&eacute; &amp; cr&egrave;me</div></body></html>";
	struct rag_doc doc;
	char why[128];

	(void)state;
	assert_int_equal(rag_parse(RAG_HTML, html, strlen(html), &doc, why, sizeof why), 0);
	assert_int_equal(doc.npages, 1);
	assert_string_equal(doc.pages[0].text,
			    "Heading\n\nFirst paragraph with bold text.\n\none\ntwo\n\n"
			    "Café & crème\n\n");
	assert_null(strstr(doc.pages[0].text, "secret"));
	assert_null(strstr(doc.pages[0].text, "color"));
	rag_doc_free(&doc);
	parse_expect_error(RAG_HTML, "<html><script>x</script></html>", 31, "no text");
}

/* A one-page PDF with @text in Helvetica, with a correct xref table. */
static char *make_pdf(const char *text, size_t *len)
{
	char stream[256], *pdf = malloc(4096);
	size_t off[6], n = 0;
	int slen;

	if (!pdf)
		return NULL;
	slen = snprintf(stream, sizeof stream, "BT /F1 24 Tf 72 720 Td (%s) Tj ET", text);
	n += (size_t)sprintf(pdf + n, "%%PDF-1.4\n");
	off[1] = n;
	n += (size_t)sprintf(pdf + n, "1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n");
	off[2] = n;
	n += (size_t)sprintf(pdf + n, "2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n");
	off[3] = n;
	n += (size_t)sprintf(pdf + n, "3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
			     "/Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >> endobj\n");
	off[4] = n;
	n += (size_t)sprintf(pdf + n, "4 0 obj << /Length %d >> stream\n%s\nendstream endobj\n",
			     slen, stream);
	off[5] = n;
	n += (size_t)sprintf(pdf + n, "5 0 obj << /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
			     ">> endobj\n");
	off[0] = n;
	n += (size_t)sprintf(pdf + n, "xref\n0 6\n0000000000 65535 f \n");
	for (int i = 1; i < 6; i++)
		n += (size_t)sprintf(pdf + n, "%010zu 00000 n \n", off[i]);
	n += (size_t)sprintf(pdf + n, "trailer << /Size 6 /Root 1 0 R >>\nstartxref\n%zu\n%%%%EOF\n",
			     off[0]);
	*len = n;
	return pdf;
}

static void pdf_text_by_page(void **state)
{
	size_t len = 0;
	char *pdf = make_pdf("Hello from a PDF", &len);
	struct rag_doc doc;
	char why[256] = "";

	(void)state;
	assert_non_null(pdf);
	assert_int_equal(rag_parse(RAG_PDF, pdf, len, &doc, why, sizeof why), 0);
	assert_int_equal(doc.npages, 1);
	assert_int_equal(doc.pages[0].number, 1);
	assert_non_null(strstr(doc.pages[0].text, "Hello from a PDF"));
	rag_doc_free(&doc);
	/* Cut in the middle: refused, nothing returned. */
	parse_expect_error(RAG_PDF, pdf, len / 2, "truncated");
	/* Its end without its body. */
	parse_expect_error(RAG_PDF, pdf + len / 2, len - len / 2, "not a PDF");
	parse_expect_error(RAG_PDF, "hello", 5, "not a PDF");
	/* A header, an end, and garbage between. */
	parse_expect_error(RAG_PDF, "%PDF-1.4\ngarbage\n%%EOF\n", 23, "PDF");
	free(pdf);
}

static void json_lists_make_one_document_per_entry(void **state)
{
	static const char list[] =
		"[{\"text\": \"first text\", \"title\": \"one\", \"metadata\": {\"k\": 1}},"
		" {\"text\": \"second text\", \"title\": \"two\"}]";
	struct rag_doc doc;
	char why[256];

	(void)state;
	assert_int_equal(rag_parse(RAG_JSON, list, strlen(list), &doc, why, sizeof why), 0);
	assert_int_equal(doc.npages, 2);
	assert_string_equal(doc.pages[0].text, "first text");
	assert_string_equal(doc.pages[0].title, "one");
	assert_string_equal(doc.pages[0].metadata, "{\"k\":1}");
	assert_string_equal(doc.pages[1].title, "two");
	assert_null(doc.pages[1].metadata);
	rag_doc_free(&doc);
	parse_expect_error(RAG_JSON, "{\"text\": \"x\"}", 13, "list");
	parse_expect_error(RAG_JSON, "[]", 2, "list");
	parse_expect_error(RAG_JSON, "[{\"title\": \"x\"}]", 16, "item 1");
	parse_expect_error(RAG_JSON, "[{\"text\": \"\"}]", 14, "empty");
	parse_expect_error(RAG_JSON, "[{\"text\": \"x\"", 13, "not valid JSON");
	parse_expect_error(RAG_JSON, "[{\"text\": \"a\\u0000b\"}]", 22, "NUL");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(paragraphs_fill_chunks_up_to_the_size),
		cmocka_unit_test(every_chunk_respects_the_size),
		cmocka_unit_test(overlap_repeats_the_end_of_the_previous_chunk),
		cmocka_unit_test(no_overlap_means_no_repeated_words),
		cmocka_unit_test(markdown_preset_cuts_before_headings),
		cmocka_unit_test(html_preset_cuts_before_tags),
		cmocka_unit_test(custom_and_regex_separators),
		cmocka_unit_test(multibyte_text_is_never_cut_inside_a_character),
		cmocka_unit_test(regex_matching_inside_a_character_is_widened),
		cmocka_unit_test(min_size_drops_short_chunks),
		cmocka_unit_test(bad_parameters_are_refused),
		cmocka_unit_test(pathological_inputs),
		cmocka_unit_test(formats_from_names_and_types),
		cmocka_unit_test(text_must_be_utf8),
		cmocka_unit_test(html_keeps_text_without_scripts),
		cmocka_unit_test(pdf_text_by_page),
		cmocka_unit_test(json_lists_make_one_document_per_entry),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
