/* SPDX-License-Identifier: Apache-2.0 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json.h"

static const struct lg_json_limits lim = { .max_depth = 8, .max_items = 16, .max_string = 64 };

static int scan(const char *text, size_t len)
{
	struct lg_json_member m[8];
	size_t n;
	char err[128];

	return lg_json_scan(text, len, &lim, m, 8, &n, NULL, err, sizeof err);
}

static int scan_str(const char *text)
{
	return scan(text, strlen(text));
}

static void valid_documents(void **state)
{
	static const char *const ok[] = {
		"{}", "[]", "0", "-0.5e+3", "\"x\"", "true", "null", " {\"a\" : [1, 2, {\"b\": null}]} ",
		"{\"s\":\"\\u00e9\\ud83d\\ude00\\n\\\"\"}", "{\"u\":\"\xc3\xa9\xf0\x9f\x98\x80\"}",
		"[1e5, 1E-2, 0.0, -1]",
	};

	(void)state;
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
		assert_int_equal(scan_str(ok[i]), 0);
}

/* The bad-input corpus: every one is refused, none crashes. */
static void invalid_documents(void **state)
{
	static const char *const bad[] = {
		"", "{", "{\"a\":}", "{\"a\":1,}", "[1,]", "{} x", "{\"a\":1}{", "01", "1.", "-",
		".5", "1e", "NaN", "Infinity", "tru", "nul", "'a'", "{a:1}", "{\"a\" 1}",
		"\"\\ud800\"", "\"\\udc00\"", "\"\\ud800\\u0041\"", "\"\\u0000\"", "\"\\x\"",
		"\"a\tb\"", "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xff\"", "\"\xe2\x82\"",
		"\"\xf4\x90\x80\x80\"", "{\"a\":1,\"a\":2}", "\"unterminated",
		/* another spelling of "model" next to it */
		"{\"model\":\"a\",\"mod\\u0065l\":\"b\"}", "{\"mod\\u0065l\":\"b\"}",
		"[[[[[[[[[1]]]]]]]]]",                       /* depth 9 > 8 */
		"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]", /* 17 items > 16 */
		"\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"", /* 65 */
	};

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (scan_str(bad[i]) != -1)
			fail_msg("accepted: %s", bad[i]);
	}
	/* An embedded NUL byte is not JSON. */
	assert_int_equal(scan("{\"a\":\"x\0y\"}", 11), -1);
}

static void deep_nesting_is_cheap_to_refuse(void **state)
{
	size_t n = 100000;
	char *deep = malloc(n + 1);

	(void)state;
	memset(deep, '[', n);
	deep[n] = '\0';
	assert_int_equal(scan(deep, n), -1);
	free(deep);
}

static void top_level_members(void **state)
{
	const char *body = "{\"model\": \"gpt\", \"stream\":true,\"messages\":[{\"role\":\"user\"}],"
			   " \"max_tokens\": 12 }";
	struct lg_json_member m[8];
	const struct lg_json_member *f;
	enum lg_json_type type;
	size_t n;
	char err[128];

	(void)state;
	assert_int_equal(lg_json_scan(body, strlen(body), &lim, m, 8, &n, &type, err, sizeof err), 0);
	assert_int_equal(type, LG_JSON_OBJECT);
	assert_int_equal(n, 4);
	f = lg_json_find(m, n, "model");
	assert_non_null(f);
	assert_int_equal(f->type, LG_JSON_STRING);
	assert_int_equal(f->value_len, 5);
	assert_memory_equal(f->value, "\"gpt\"", 5);
	assert_ptr_equal(f->start, body + 1);
	assert_true(lg_json_is_true(lg_json_find(m, n, "stream")));
	f = lg_json_find(m, n, "messages");
	assert_int_equal(f->type, LG_JSON_ARRAY);
	f = lg_json_find(m, n, "max_tokens");
	assert_int_equal(f->type, LG_JSON_NUMBER);
	assert_memory_equal(f->value, "12", 2);
	assert_ptr_equal(f->end, f->value + 2);
	assert_null(lg_json_find(m, n, "stream_options"));
	/* Nested keys are not top-level members. */
	assert_null(lg_json_find(m, n, "role"));
}

static void too_many_top_level_members(void **state)
{
	struct lg_json_member m[2];
	size_t n;
	char err[128];

	(void)state;
	assert_int_equal(lg_json_scan("{\"a\":1,\"b\":2,\"c\":3}", 19, &lim, m, 2, &n, NULL, err,
				      sizeof err), -1);
	assert_non_null(strstr(err, "byte"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(valid_documents),
		cmocka_unit_test(invalid_documents),
		cmocka_unit_test(deep_nesting_is_cheap_to_refuse),
		cmocka_unit_test(top_level_members),
		cmocka_unit_test(too_many_top_level_members),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
