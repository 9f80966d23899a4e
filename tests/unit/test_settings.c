/* SPDX-License-Identifier: Apache-2.0 */
/* Settings tables bound to YAML maps: every type's spellings, bounds,
 * unknown and required keys, defaults, getters and the reference output. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"

#define K 1024.0

/* One key of every type; "section" in messages is plugins.auth. */
static const struct lg_setting table[] = {
	{ "name", LG_SETTING_STRING, "gateway", 0, 0, 0, "A name" },
	{ "token", LG_SETTING_STRING, NULL, 8, 64, 0, "A token of 8 to 64 bytes" },
	{ "port", LG_SETTING_INT, "8080", 1, 65535, 0, "A port" },
	{ "offset", LG_SETTING_INT, NULL, 0, 0, 0, "Any integer" },
	{ "ratio", LG_SETTING_DOUBLE, "0.5", 0, 1, 0, "A ratio" },
	{ "scale", LG_SETTING_DOUBLE, NULL, 0, 0, 0, "Any number" },
	{ "enabled", LG_SETTING_BOOL, "false", 0, 0, 0, "A switch" },
	{ "hosts", LG_SETTING_STRINGS, "[a.example, b.example]", 0, 0, 0, "Hosts" },
	{ "timeout", LG_SETTING_DURATION, "30s", 1000, 3600000, 0, "A timeout" },
	{ "delay", LG_SETTING_DURATION, NULL, 0, 0, 0, "Any duration" },
	{ "limit", LG_SETTING_SIZE, "64k", 1024, 16 * K * K, 0, "A size" },
	{ "chunk", LG_SETTING_SIZE, NULL, 0, 0, 0, "Any size" },
	{ "master_key", LG_SETTING_STRING, "s3cret-default", 0, 0, LG_SETTING_SECRET, "Secret" },
};

static const struct lg_setting required_table[] = {
	{ "master_key", LG_SETTING_STRING, NULL, 0, 0,
	  LG_SETTING_REQUIRED | LG_SETTING_SECRET, "The master key" },
	{ "port", LG_SETTING_INT, "1", 0, 0, 0, "A port" },
};

static struct lg_config_doc *parse(const char *text)
{
	struct lg_config_doc *doc = NULL;
	char err[512] = "";
	int r = lg_config_parse("t.yml", text, strlen(text), &doc, err, sizeof err);

	if (r)
		fail_msg("parse failed: %s", err);
	return doc;
}

/* Binds the "auth" map of @text against @tab. */
static int bind_tab(const char *text, const struct lg_setting *tab, size_t n,
		    struct lg_settings **out, char *err, size_t errlen)
{
	struct lg_config_doc *doc = parse(text);
	int r;

	err[0] = '\0';
	r = lg_settings_bind("t.yml", "plugins.auth", lg_node_get(doc->root, "auth"), tab, n,
			     out, err, errlen);
	/* Values are copies: the document can go before the settings. */
	lg_config_doc_free(doc);
	return r;
}

static struct lg_settings *bind_ok(const char *text)
{
	struct lg_settings *s = NULL;
	char err[512];

	if (bind_tab(text, table, LG_COUNT(table), &s, err, sizeof err) != 0)
		fail_msg("bind failed: %s", err);
	return s;
}

static void expect_bind_error(const char *text, const char *expected)
{
	struct lg_settings *s = NULL;
	char err[512];
	int r = bind_tab(text, table, LG_COUNT(table), &s, err, sizeof err);

	assert_int_equal(r, -EINVAL);
	assert_null(s);
	assert_string_equal(err, expected);
}

/* "auth: {KEY: VALUE}" on line 1, as a block map so the value is on line 2. */
static char *one_key(const char *key, const char *value)
{
	char *text;

	if (asprintf(&text, "auth:\n  %s: %s\n", key, value) < 0)
		fail_msg("out of memory");
	return text;
}

static int64_t int_of(const char *value)
{
	char *text = one_key("offset", value);
	struct lg_settings *s = bind_ok(text);
	int64_t v = 0;

	assert_int_equal(lg_settings_int(s, "offset", &v), 0);
	lg_settings_free(s);
	free(text);
	return v;
}

static double double_of(const char *value)
{
	char *text = one_key("scale", value);
	struct lg_settings *s = bind_ok(text);
	double v = 0;

	assert_int_equal(lg_settings_double(s, "scale", &v), 0);
	lg_settings_free(s);
	free(text);
	return v;
}

static bool bool_of(const char *value)
{
	char *text = one_key("enabled", value);
	struct lg_settings *s = bind_ok(text);
	bool v = !0;

	assert_int_equal(lg_settings_bool(s, "enabled", &v), 0);
	lg_settings_free(s);
	free(text);
	return v;
}

static uint64_t u64_of(const char *key, const char *value)
{
	char *text = one_key(key, value);
	struct lg_settings *s = bind_ok(text);
	uint64_t v = 0;

	assert_int_equal(lg_settings_u64(s, key, &v), 0);
	lg_settings_free(s);
	free(text);
	return v;
}

/* The error for KEY: VALUE, which must say "t.yml:2: plugins.auth.KEY: MSG". */
static void refused(const char *key, const char *value, const char *msg)
{
	char *text = one_key(key, value), *expected;

	if (asprintf(&expected, "t.yml:2: plugins.auth.%s: %s", key, msg) < 0)
		fail_msg("out of memory");
	expect_bind_error(text, expected);
	free(expected);
	free(text);
}

static void test_int(void **state)
{
	static const char not_int[] = "expected an integer, got '%s'";
	static const char *const bad[] = { "4.5", "abc", "0x10", "1e3", "12abc", "--1",
					   "1_000", "+", "\" 12\"" };

	(void)state;
	assert_int_equal(int_of("42"), 42);
	assert_int_equal(int_of("+7"), 7);
	assert_int_equal(int_of("-3"), -3);
	assert_int_equal(int_of("0"), 0);
	assert_int_equal(int_of("\"12\""), 12);
	assert_int_equal(int_of("9223372036854775807"), INT64_MAX);
	assert_true(int_of("-9223372036854775808") == INT64_MIN);
	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		char msg[128];
		const char *shown = bad[i];

		if (strcmp(shown, "\" 12\"") == 0)
			shown = " 12";
		snprintf(msg, sizeof msg, not_int, shown);
		refused("offset", bad[i], msg);
	}
	refused("offset", "9223372036854775808", "9223372036854775808 is too large");
	refused("offset", "[1, 2]", "expected an integer, got a list");
	refused("offset", "{a: 1}", "expected an integer, got a map");
}

static void test_int_bounds(void **state)
{
	struct lg_settings *s;
	int64_t v;

	(void)state;
	refused("port", "70000", "70000 is out of range [1, 65535]");
	refused("port", "0", "0 is out of range [1, 65535]");
	refused("port", "-1", "-1 is out of range [1, 65535]");
	s = bind_ok("auth:\n  port: 65535\n");
	assert_int_equal(lg_settings_int(s, "port", &v), 0);
	assert_int_equal(v, 65535);
	lg_settings_free(s);
	s = bind_ok("auth: {port: 1}\n");
	assert_int_equal(lg_settings_int(s, "port", &v), 0);
	assert_int_equal(v, 1);
	lg_settings_free(s);
}

static void test_double(void **state)
{
	static const char *const bad[] = { "nan", "inf", ".inf", "-.inf", "1.5x", "0x1p3",
					   "abc", "1e999", "'1,5'" };

	(void)state;
	assert_true(double_of("0.5") == 0.5);
	assert_true(double_of("1") == 1.0);
	assert_true(double_of("-2.5e3") == -2500.0);
	assert_true(double_of(".5") == 0.5);
	assert_true(double_of("+3") == 3.0);
	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		char msg[128];
		const char *shown = strcmp(bad[i], "'1,5'") == 0 ? "1,5" : bad[i];

		snprintf(msg, sizeof msg, "expected a number, got '%s'", shown);
		refused("scale", bad[i], msg);
	}
	refused("ratio", "1.5", "1.5 is out of range [0, 1]");
	refused("ratio", "-0.1", "-0.1 is out of range [0, 1]");
}

static void test_bool(void **state)
{
	static const char expected[] = "expected true or false (or yes/no, on/off), got '%s'";
	static const char *const bad[] = { "1", "0", "maybe", "truee", "y" };

	(void)state;
	assert_true(bool_of("true"));
	assert_true(bool_of("TRUE"));
	assert_true(bool_of("Yes"));
	assert_true(bool_of("on"));
	assert_true(bool_of("\"true\""));
	assert_true(bool_of("'ON'"));
	assert_false(bool_of("false"));
	assert_false(bool_of("No"));
	assert_false(bool_of("OFF"));
	assert_false(bool_of("\"false\""));
	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		char msg[128];

		snprintf(msg, sizeof msg, expected, bad[i]);
		refused("enabled", bad[i], msg);
	}
	refused("enabled", "[true]",
		"expected true or false (or yes/no, on/off), got a list");
}

static void test_string(void **state)
{
	struct lg_settings *s;
	const char *v;

	(void)state;
	s = bind_ok("auth:\n  name: 123\n  token: \"12345678\"\n");
	assert_int_equal(lg_settings_str(s, "name", &v), 0);
	assert_string_equal(v, "123");
	assert_int_equal(lg_settings_str(s, "token", &v), 0);
	assert_string_equal(v, "12345678");
	lg_settings_free(s);
	s = bind_ok("auth:\n  name: true\n  token: 'it''s long enough'\n");
	assert_int_equal(lg_settings_str(s, "name", &v), 0);
	assert_string_equal(v, "true");
	assert_int_equal(lg_settings_str(s, "token", &v), 0);
	assert_string_equal(v, "it's long enough");
	lg_settings_free(s);
	/* A quoted empty string is a value; a plain empty one is no value. */
	s = bind_ok("auth:\n  name: ''\n");
	assert_int_equal(lg_settings_str(s, "name", &v), 0);
	assert_string_equal(v, "");
	lg_settings_free(s);
	s = bind_ok("auth:\n  name:\n");
	assert_int_equal(lg_settings_str(s, "name", &v), 0);
	assert_string_equal(v, "gateway");
	lg_settings_free(s);
	refused("token", "short", "length 5 is out of range [8, 64]");
	refused("token", "'0123456789012345678901234567890123456789012345678901234567890123456789'",
		"length 70 is out of range [8, 64]");
	refused("name", "[a, b]", "expected a single value, got a list");
	refused("name", "{a: b}", "expected a single value, got a map");
}

static void test_strings(void **state)
{
	const char *const *v;
	struct lg_settings *s;
	size_t n = 99;

	(void)state;
	s = bind_ok("auth:\n  hosts:\n    - one\n    - 2\n    - 'three'\n");
	assert_int_equal(lg_settings_strings(s, "hosts", &v, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(v[0], "one");
	assert_string_equal(v[1], "2");
	assert_string_equal(v[2], "three");
	assert_null(v[3]);
	lg_settings_free(s);
	s = bind_ok("auth:\n  hosts: single\n");
	assert_int_equal(lg_settings_strings(s, "hosts", &v, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(v[0], "single");
	assert_null(v[1]);
	lg_settings_free(s);
	s = bind_ok("auth:\n  hosts: []\n");
	assert_int_equal(lg_settings_strings(s, "hosts", &v, &n), 0);
	assert_int_equal(n, 0);
	assert_null(v[0]);
	lg_settings_free(s);
	/* The default is a YAML flow list. */
	s = bind_ok("auth: {}\n");
	assert_int_equal(lg_settings_strings(s, "hosts", &v, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0], "a.example");
	assert_string_equal(v[1], "b.example");
	assert_null(v[2]);
	lg_settings_free(s);
	expect_bind_error("auth:\n  hosts:\n    - a\n    - {x: 1}\n",
			  "t.yml:4: plugins.auth.hosts: item 2 of the list is a map; "
			  "expected a single value");
	expect_bind_error("auth:\n  hosts:\n    - a\n    -\n",
			  "t.yml:4: plugins.auth.hosts: item 2 of the list is empty");
	expect_bind_error("auth:\n  hosts: [[a]]\n",
			  "t.yml:2: plugins.auth.hosts: item 1 of the list is a list; "
			  "expected a single value");
	refused("hosts", "{a: b}", "expected a list of values, got a map");
}

static void test_duration(void **state)
{
	static const char expected[] = "expected a duration such as 250ms, 30s, 5m or 1h "
				       "(a plain number is seconds), got '%s'";
	static const char *const bad[] = { "5 m", "5x", "-1s", "1h30m", "s", "ms", "1S",
					   "+5s", "0x10", "nan", "inf", "1e", "5min" };

	(void)state;
	assert_int_equal(u64_of("delay", "250ms"), 250);
	assert_int_equal(u64_of("delay", "30s"), 30000);
	assert_int_equal(u64_of("delay", "5m"), 300000);
	assert_int_equal(u64_of("delay", "1h"), 3600000);
	assert_int_equal(u64_of("delay", "2"), 2000);
	assert_int_equal(u64_of("delay", "1.5"), 1500);
	assert_int_equal(u64_of("delay", "0.25s"), 250);
	assert_int_equal(u64_of("delay", "0"), 0);
	assert_int_equal(u64_of("delay", "'45s'"), 45000);
	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		char msg[160];

		snprintf(msg, sizeof msg, expected, bad[i]);
		refused("delay", bad[i], msg);
	}
	refused("delay", "1e300h", "1e300h is too large");
	refused("timeout", "500ms", "500ms is out of range [1s, 1h]");
	refused("timeout", "90m", "90m is out of range [1s, 1h]");
	assert_int_equal(u64_of("timeout", "1h"), 3600000);
	assert_int_equal(u64_of("timeout", "1"), 1000);
}

static void test_size(void **state)
{
	static const char expected[] =
		"expected a size such as 512, 64k, 16M or 1G (powers of 1024), got '%s'";
	static const char *const bad[] = { "1.5M", "-1", "12q", "k", "64 k", "64kb", "64KiBs",
					   "0x10", "1e3" };

	(void)state;
	assert_int_equal(u64_of("chunk", "512"), 512);
	assert_int_equal(u64_of("chunk", "512B"), 512);
	assert_int_equal(u64_of("chunk", "64k"), 65536);
	assert_int_equal(u64_of("chunk", "64K"), 65536);
	assert_int_equal(u64_of("chunk", "64KiB"), 65536);
	assert_int_equal(u64_of("chunk", "64KB"), 65536);
	assert_int_equal(u64_of("chunk", "16M"), 16u << 20);
	assert_int_equal(u64_of("chunk", "1G"), 1u << 30);
	assert_int_equal(u64_of("chunk", "2GiB"), 2ull << 30);
	assert_int_equal(u64_of("chunk", "0"), 0);
	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		char msg[160];

		snprintf(msg, sizeof msg, expected, bad[i]);
		refused("chunk", bad[i], msg);
	}
	refused("chunk", "99999999999999999999", "99999999999999999999 is too large");
	refused("chunk", "17179869184G", "17179869184G is too large");
	refused("limit", "512", "512 is out of range [1k, 16M]");
	refused("limit", "17M", "17M is out of range [1k, 16M]");
	assert_int_equal(u64_of("limit", "16M"), 16u << 20);
}

static void test_unknown_key(void **state)
{
	static const struct lg_setting abc[] = {
		{ "a", LG_SETTING_INT, "1", 0, 0, 0, "" },
		{ "b", LG_SETTING_INT, "2", 0, 0, 0, "" },
		{ "c", LG_SETTING_INT, "3", 0, 0, 0, "" },
	};
	struct lg_settings *s = NULL;
	char err[512];

	(void)state;
	assert_int_equal(bind_tab("auth:\n  a: 1\n  b: 2\n  foo: 3\n", abc, LG_COUNT(abc), &s,
				  err, sizeof err), -EINVAL);
	assert_null(s);
	assert_string_equal(err, "t.yml:4: plugins.auth.foo: unknown key (known: a, b, c)");
	/* A null value does not hide an unknown key. */
	assert_int_equal(bind_tab("auth:\n  bar:\n", abc, LG_COUNT(abc), &s, err, sizeof err),
			 -EINVAL);
	assert_string_equal(err, "t.yml:2: plugins.auth.bar: unknown key (known: a, b, c)");
	assert_int_equal(bind_tab("auth:\n  x: 1\n", abc, 0, &s, err, sizeof err), -EINVAL);
	assert_string_equal(err,
			    "t.yml:2: plugins.auth.x: unknown key (this section takes no settings)");
}

static void test_required(void **state)
{
	struct lg_settings *s = NULL;
	const char *v;
	char err[512];

	(void)state;
	/* Missing from a present section: the section's line. */
	assert_int_equal(bind_tab("other: 1\nauth: {port: 2}\n", required_table,
				  LG_COUNT(required_table), &s, err, sizeof err), -EINVAL);
	assert_string_equal(err, "t.yml:2: plugins.auth.master_key: required");
	/* The section is absent: line 0. */
	assert_int_equal(bind_tab("other: 1\n", required_table, LG_COUNT(required_table), &s,
				  err, sizeof err), -EINVAL);
	assert_string_equal(err, "t.yml:0: plugins.auth.master_key: required");
	/* "auth:" with nothing under it. */
	assert_int_equal(bind_tab("other: 1\nauth:\n", required_table, LG_COUNT(required_table),
				  &s, err, sizeof err), -EINVAL);
	assert_string_equal(err, "t.yml:2: plugins.auth.master_key: required");
	/* Present but empty, as ${MASTER_KEY:-} gives when the variable is unset. */
	assert_int_equal(bind_tab("auth:\n  port: 3\n  master_key: ${LG_TEST_SURELY_UNSET:-}\n",
				  required_table, LG_COUNT(required_table), &s, err, sizeof err),
			 -EINVAL);
	assert_string_equal(err, "t.yml:3: plugins.auth.master_key: required, but the value is "
			    "empty");
	assert_int_equal(bind_tab("auth:\n  master_key: k3y\n", required_table,
				  LG_COUNT(required_table), &s, err, sizeof err), 0);
	assert_int_equal(lg_settings_str(s, "master_key", &v), 0);
	assert_string_equal(v, "k3y");
	lg_settings_free(s);
}

static void test_defaults_and_getters(void **state)
{
	const char *const *list;
	struct lg_settings *s;
	const char *str;
	uint64_t u;
	int64_t i;
	double d;
	size_t n;
	bool b;

	(void)state;
	s = bind_ok("auth:\n");
	assert_int_equal(lg_settings_str(s, "name", &str), 0);
	assert_string_equal(str, "gateway");
	assert_int_equal(lg_settings_int(s, "port", &i), 0);
	assert_int_equal(i, 8080);
	assert_int_equal(lg_settings_double(s, "ratio", &d), 0);
	assert_true(d == 0.5);
	assert_int_equal(lg_settings_bool(s, "enabled", &b), 0);
	assert_false(b);
	assert_int_equal(lg_settings_strings(s, "hosts", &list, &n), 0);
	assert_int_equal(n, 2);
	assert_int_equal(lg_settings_u64(s, "timeout", &u), 0);
	assert_int_equal(u, 30000);
	assert_int_equal(lg_settings_u64(s, "limit", &u), 0);
	assert_int_equal(u, 65536);
	/* No value and no default. */
	assert_int_equal(lg_settings_str(s, "token", &str), -ENOENT);
	assert_int_equal(lg_settings_int(s, "offset", &i), -ENOENT);
	assert_int_equal(lg_settings_double(s, "scale", &d), -ENOENT);
	assert_int_equal(lg_settings_u64(s, "delay", &u), -ENOENT);
	assert_int_equal(lg_settings_u64(s, "chunk", &u), -ENOENT);
	/* Another type, or not in the table. */
	assert_int_equal(lg_settings_int(s, "name", &i), -EINVAL);
	assert_int_equal(lg_settings_str(s, "port", &str), -EINVAL);
	assert_int_equal(lg_settings_u64(s, "port", &u), -EINVAL);
	assert_int_equal(lg_settings_bool(s, "ratio", &b), -EINVAL);
	assert_int_equal(lg_settings_double(s, "port", &d), -EINVAL);
	assert_int_equal(lg_settings_strings(s, "name", &list, &n), -EINVAL);
	assert_int_equal(lg_settings_str(s, "nope", &str), -EINVAL);
	lg_settings_free(s);
	/* An explicit null is the same as leaving the key out. */
	s = bind_ok("auth:\n  port: ~\n  timeout: null\n");
	assert_int_equal(lg_settings_int(s, "port", &i), 0);
	assert_int_equal(i, 8080);
	assert_int_equal(lg_settings_u64(s, "timeout", &u), 0);
	assert_int_equal(u, 30000);
	lg_settings_free(s);
}

static void test_section_shape(void **state)
{
	struct lg_settings *s = NULL;
	char err[512];

	(void)state;
	expect_bind_error("auth:\n  - port: 1\n",
			  "t.yml:2: plugins.auth: expected a map of settings (key: value), got a list");
	expect_bind_error("auth: on\n", "t.yml:1: plugins.auth: expected a map of settings "
			  "(key: value), got a single value");
	/* No map at all: every default. */
	assert_int_equal(lg_settings_bind("t.yml", "plugins.auth", NULL, table, LG_COUNT(table),
					  &s, err, sizeof err), 0);
	lg_settings_free(s);
}

static void test_bad_default(void **state)
{
	static const struct lg_setting bad_int[] = {
		{ "workers", LG_SETTING_INT, "many", 0, 0, 0, "" },
	};
	static const struct lg_setting out_of_range[] = {
		{ "port", LG_SETTING_INT, "0", 1, 10, 0, "" },
	};
	static const struct lg_setting bad_list[] = {
		{ "hosts", LG_SETTING_STRINGS, "[a, [b]]", 0, 0, 0, "" },
	};
	static const struct lg_setting bad_key[] = {
		{ "Bad-Key", LG_SETTING_INT, "1", 0, 0, 0, "" },
	};
	static const struct lg_setting twice[] = {
		{ "a", LG_SETTING_INT, "1", 0, 0, 0, "" },
		{ "a", LG_SETTING_BOOL, "true", 0, 0, 0, "" },
	};
	struct lg_settings *s = NULL;
	char err[512];

	(void)state;
	assert_int_equal(bind_tab("auth: {}\n", bad_int, 1, &s, err, sizeof err), -EINVAL);
	assert_string_equal(err, "plugins.auth.workers: the built-in default 'many' is invalid "
			    "(expected an integer, got 'many'): a bug in the settings table");
	assert_int_equal(bind_tab("auth: {}\n", out_of_range, 1, &s, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "plugins.auth.port: the built-in default '0' is invalid"));
	assert_int_equal(bind_tab("auth: {}\n", bad_list, 1, &s, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "plugins.auth.hosts: the built-in default"));
	/* A value given in the file does not hide a bad default elsewhere, nor
	 * does it matter for this key when given. */
	assert_int_equal(bind_tab("auth: {workers: 3}\n", bad_int, 1, &s, err, sizeof err), 0);
	lg_settings_free(s);
	assert_int_equal(bind_tab("auth: {}\n", bad_key, 1, &s, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "invalid key 'Bad-Key'"));
	assert_int_equal(bind_tab("auth: {}\n", twice, 2, &s, err, sizeof err), -EINVAL);
	assert_string_equal(err, "plugins.auth.a: settings table: key listed twice");
}

static void test_secret_not_echoed(void **state)
{
	static const struct lg_setting secret_int[] = {
		{ "pin", LG_SETTING_INT, NULL, 1000, 9999, LG_SETTING_SECRET, "" },
	};
	struct lg_settings *s = NULL;
	char err[512];

	(void)state;
	assert_int_equal(bind_tab("auth:\n  pin: hunter2\n", secret_int, 1, &s, err, sizeof err),
			 -EINVAL);
	assert_null(strstr(err, "hunter2"));
	assert_string_equal(err, "t.yml:2: plugins.auth.pin: expected an integer, got a value "
			    "not shown here (secret)");
	assert_int_equal(bind_tab("auth:\n  pin: 31337\n", secret_int, 1, &s, err, sizeof err),
			 -EINVAL);
	assert_null(strstr(err, "31337"));
	assert_string_equal(err, "t.yml:2: plugins.auth.pin: the value is out of range "
			    "[1000, 9999]");
}

static char *reference(const struct lg_setting *tab, size_t n, bool markdown)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	lg_settings_print_reference(f, "plugins.auth", tab, n, markdown);
	assert_int_equal(fclose(f), 0);
	return buf;
}

static void test_reference(void **state)
{
	static const struct lg_setting piped[] = {
		{ "mode", LG_SETTING_STRING, "a|b", 0, 0, 0, "One of a|b" },
	};
	char *md, *txt;

	(void)state;
	md = reference(table, LG_COUNT(table), true);
	assert_non_null(strstr(md, "### plugins.auth\n\n"
				   "| key | type | default | range | description |\n"
				   "|---|---|---|---|---|\n"));
	assert_non_null(strstr(md, "| `port` | integer | `8080` | [1, 65535] | A port |\n"));
	assert_non_null(strstr(md, "| `timeout` | duration | `30s` | [1s, 1h] | A timeout |\n"));
	assert_non_null(strstr(md, "| `limit` | size | `64k` | [1k, 16M] | A size |\n"));
	assert_non_null(strstr(md, "| `token` | string |  | length [8, 64] |"));
	assert_non_null(strstr(md, "| `master_key` | string | `<redacted>` |  | Secret |\n"));
	assert_null(strstr(md, "s3cret-default"));
	free(md);
	txt = reference(table, LG_COUNT(table), false);
	assert_non_null(strstr(txt, "plugins.auth.port (integer)\n    default: 8080\n"
				    "    range: [1, 65535]\n    A port\n"));
	assert_non_null(strstr(txt, "plugins.auth.master_key (string)\n"
				    "    default: <redacted>\n"));
	assert_null(strstr(txt, "s3cret-default"));
	free(txt);
	md = reference(required_table, LG_COUNT(required_table), true);
	assert_non_null(strstr(md, "| `master_key` | string | *required* |  | The master key |"));
	free(md);
	md = reference(piped, 1, true);
	assert_non_null(strstr(md, "| `mode` | string | `a\\|b` |  | One of a\\|b |"));
	free(md);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_int),
		cmocka_unit_test(test_int_bounds),
		cmocka_unit_test(test_double),
		cmocka_unit_test(test_bool),
		cmocka_unit_test(test_string),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_duration),
		cmocka_unit_test(test_size),
		cmocka_unit_test(test_unknown_key),
		cmocka_unit_test(test_required),
		cmocka_unit_test(test_defaults_and_getters),
		cmocka_unit_test(test_section_shape),
		cmocka_unit_test(test_bad_default),
		cmocka_unit_test(test_secret_not_echoed),
		cmocka_unit_test(test_reference),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
