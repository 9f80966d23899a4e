/* SPDX-License-Identifier: Apache-2.0 */
/* The usage ledger's record writer (plugins/usage/record.c): every field
 * read back as COPY's text format reads it, by the column names of
 * usage_copy_sql; strings that PostgreSQL would refuse made safe; numbers
 * that read back as the same double. (The integration tests load records
 * into a real PostgreSQL.) */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sodium.h>

#include "../../plugins/usage/usage.h"

#define NCOLS 27

static struct lg_call sample_call(void)
{
	struct lg_call c = {
		.size = sizeof c, .request_id = "req-1", .endpoint = "/v1/chat/completions",
		.model_id = 7, .model_name = "mock-chat", .provider_id = 3,
		.provider_type = "mock", .provider_model = "m", .status = 200,
		.prompt_tokens = 12, .completion_tokens = 34, .total_tokens = 46,
		.usage_estimated = true, .ttft_ms = 3.25, .latency_ms = 12.5,
		.error = NULL, .cost = 0.000123, .kwh = 1.5e-6, .kgco2eq = 8.9e-7,
	};
	return c;
}

/* A record read back: its columns, unescaped, NULL for \N. */
struct rec {
	char *names[NCOLS];
	char *values[NCOLS];
};

/* The column list of usage_copy_sql, in order. */
static void column_names(struct rec *r)
{
	const char *p = strchr(usage_copy_sql, '(') + 1, *end = strchr(p, ')');
	size_t k = 0;

	while (p < end) {
		size_t len = strcspn(p, ",)");

		assert_true(k < NCOLS);
		r->names[k++] = strndup(p, len);
		p += len + 1;
		p += strspn(p, " ");
	}
	assert_int_equal(k, NCOLS);
}

/* One column of COPY text (@len bytes at @s), as COPY reads it. */
static char *unescape(const char *s, size_t len)
{
	char *out = malloc(len + 1), *o = out;

	assert_non_null(out);
	if (len == 2 && s[0] == '\\' && s[1] == 'N') {
		free(out);
		return NULL;
	}
	for (size_t i = 0; i < len; i++) {
		if (s[i] != '\\') {
			*o++ = s[i];
			continue;
		}
		assert_true(++i < len);
		switch (s[i]) {
		case 't': *o++ = '\t'; break;
		case 'n': *o++ = '\n'; break;
		case 'r': *o++ = '\r'; break;
		case '\\': *o++ = '\\'; break;
		default: fail_msg("unexpected escape \\%c", s[i]);
		}
	}
	*o = '\0';
	return out;
}

static struct rec *parse(char *line)
{
	struct rec *r = calloc(1, sizeof *r);
	const char *p = line;
	size_t k = 0;

	assert_non_null(line);
	assert_non_null(r);
	assert_null(strchr(line, '\n'));
	column_names(r);
	for (;;) {
		size_t len = strcspn(p, "\t");

		assert_true(k < NCOLS);
		r->values[k++] = unescape(p, len);
		if (!p[len])
			break;
		p += len + 1;
	}
	assert_int_equal(k, NCOLS);
	free(line);
	return r;
}

static void rec_free(struct rec *r)
{
	for (size_t i = 0; i < NCOLS; i++) {
		free(r->names[i]);
		free(r->values[i]);
	}
	free(r);
}

static size_t col(const struct rec *r, const char *name)
{
	for (size_t i = 0; i < NCOLS; i++)
		if (strcmp(r->names[i], name) == 0)
			return i;
	fail_msg("no column %s", name);
	return 0;
}

static const char *str(const struct rec *r, const char *name)
{
	return r->values[col(r, name)];
}

static bool is_null(const struct rec *r, const char *name)
{
	return str(r, name) == NULL;
}

static long long integer(const struct rec *r, const char *name)
{
	char *end;
	long long v;

	assert_non_null(str(r, name));
	v = strtoll(str(r, name), &end, 10);
	assert_true(*end == '\0');
	return v;
}

static double number(const struct rec *r, const char *name)
{
	char *end;
	double v;

	assert_non_null(str(r, name));
	v = strtod(str(r, name), &end);
	assert_true(*end == '\0');
	return v;
}

static void test_every_field(void **state)
{
	struct lg_call c = sample_call();
	struct lg_principal who = { .user_id = 5, .key_id = 9, .organization_id = 2,
				    .user_name = "ann@example.org", .key_name = "ci" };
	struct rec *j = parse(usage_record_line(&c, "POST", &who));

	(void)state;
	assert_int_equal(strlen(str(j, "record_id")), 32);
	assert_string_equal(str(j, "request_id"), "req-1");
	assert_int_equal(strlen(str(j, "created")), strlen("2026-11-29T12:00:00.000000Z"));
	assert_true(str(j, "created")[26] == 'Z');
	assert_string_equal(str(j, "endpoint"), "/v1/chat/completions");
	assert_string_equal(str(j, "method"), "POST");
	assert_int_equal(integer(j, "status"), 200);
	assert_int_equal(integer(j, "user_id"), 5);
	assert_int_equal(integer(j, "key_id"), 9);
	assert_int_equal(integer(j, "organization_id"), 2);
	assert_string_equal(str(j, "user_name"), "ann@example.org");
	assert_string_equal(str(j, "key_name"), "ci");
	assert_int_equal(integer(j, "model_id"), 7);
	assert_string_equal(str(j, "model_name"), "mock-chat");
	assert_int_equal(integer(j, "provider_id"), 3);
	assert_string_equal(str(j, "provider_type"), "mock");
	assert_string_equal(str(j, "provider_model"), "m");
	assert_int_equal(integer(j, "prompt_tokens"), 12);
	assert_int_equal(integer(j, "completion_tokens"), 34);
	assert_int_equal(integer(j, "total_tokens"), 46);
	assert_string_equal(str(j, "usage_estimated"), "t");
	assert_true(number(j, "latency_ms") == 12.5);
	assert_true(number(j, "ttft_ms") == 3.25);
	assert_true(number(j, "cost") == 0.000123);
	assert_true(number(j, "kwh") == 1.5e-6);
	assert_true(number(j, "kgco2eq") == 8.9e-7);
	assert_string_equal(str(j, "client_gone"), "f");
	assert_true(is_null(j, "error"));
	rec_free(j);
}

static void test_no_principal_no_ids(void **state)
{
	struct lg_call c = sample_call();
	struct rec *j;

	(void)state;
	c.model_id = 0;
	c.provider_id = 0;
	c.provider_type = NULL;
	c.ttft_ms = -1;
	c.request_id = NULL;
	j = parse(usage_record_line(&c, NULL, NULL));
	assert_true(is_null(j, "user_id"));
	assert_true(is_null(j, "key_name"));
	assert_true(is_null(j, "model_id"));
	assert_true(is_null(j, "provider_id"));
	assert_true(is_null(j, "provider_type"));
	assert_true(is_null(j, "ttft_ms"));
	assert_string_equal(str(j, "request_id"), "");
	assert_string_equal(str(j, "method"), "");
	rec_free(j);
}

/* Escapes, valid multi-byte text kept, invalid bytes replaced (PostgreSQL
 * refuses a whole COPY for one invalid byte). */
static void test_strings_made_safe(void **state)
{
	struct lg_call c = sample_call();
	struct rec *j;

	(void)state;
	c.request_id = "a\"b\\c\n\t\r\x01\\N" "é€😀";
	/* a lone continuation byte, an overlong '/', a surrogate, a truncated
	 * sequence at the end */
	c.error = "x\x80y\xC0\xAFz\xED\xA0\x80w\xE2\x82";
	j = parse(usage_record_line(&c, "POST", NULL));
	assert_string_equal(str(j, "request_id"), "a\"b\\c\n\t\r\x01\\N" "é€😀");
	assert_string_equal(str(j, "error"),
			    "x\xEF\xBF\xBDy\xEF\xBF\xBD\xEF\xBF\xBDz"
			    "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDw\xEF\xBF\xBD\xEF\xBF\xBD");
	rec_free(j);
}

/* The longest numbers there are: record.c's room for the fixed part
 * (FIXED_MAX) must hold them; ASan sees any byte written past it. */
static void worst_numbers(struct lg_call *c, struct lg_principal *who)
{
	c->status = INT32_MIN;
	c->model_id = c->provider_id = INT64_MAX;
	c->prompt_tokens = c->completion_tokens = c->total_tokens = INT64_MIN;
	c->latency_ms = c->ttft_ms = -DBL_MAX;
	c->ttft_ms = 1.2345678901234567e-300;
	c->cost = c->kwh = c->kgco2eq = -2.2250738585072014e-308;
	who->user_id = who->key_id = who->organization_id = INT64_MAX;
}

/* Past the stack buffer: a long error made of the worst case (invalid
 * bytes, three bytes each), then escapes (two), with the longest numbers. */
static void test_long_strings(void **state)
{
	struct lg_call c = sample_call();
	struct lg_principal who = { .user_name = "", .key_name = "" };
	size_t n = 20000;
	char *err = malloc(n + 1);
	struct rec *j;

	(void)state;
	assert_non_null(err);
	memset(err, '\xff', n);
	memset(err + n / 2, '\t', n - n / 2);
	err[n] = '\0';
	c.error = err;
	worst_numbers(&c, &who);
	j = parse(usage_record_line(&c, "POST", &who));
	assert_int_equal(strlen(str(j, "error")), n / 2 * 3 + (n - n / 2));
	assert_memory_equal(str(j, "error"), "\xEF\xBF\xBD", 3);
	assert_memory_equal(str(j, "error") + n / 2 * 3, err + n / 2, n - n / 2);
	rec_free(j);
	free(err);
}

/* Without strings, the record is the fixed part alone: it must stay within
 * record.c's FIXED_MAX (1024 bytes), which sizes the buffer. */
static void test_fixed_part_fits(void **state)
{
	struct lg_call c = sample_call();
	struct lg_principal who = { .user_name = NULL };
	char *text;

	(void)state;
	c.request_id = c.endpoint = c.model_name = c.provider_type = c.provider_model = NULL;
	c.error = NULL;
	worst_numbers(&c, &who);
	text = usage_record_line(&c, NULL, &who);
	assert_non_null(text);
	assert_true(strlen(text) + 1 <= 1024);
	rec_free(parse(text));
}

static void test_numbers(void **state)
{
	struct lg_call c = sample_call();
	struct rec *j;

	(void)state;
	c.latency_ms = NAN;
	c.kwh = INFINITY;
	c.cost = 0.1 + 0.2;            /* needs 17 digits */
	c.prompt_tokens = INT64_MAX;
	c.completion_tokens = INT64_MIN;
	c.status = 0;
	j = parse(usage_record_line(&c, "POST", NULL));
	assert_true(number(j, "latency_ms") == 0);
	assert_true(is_null(j, "kwh"));
	assert_true(number(j, "cost") == 0.1 + 0.2);
	assert_true(integer(j, "prompt_tokens") == INT64_MAX);
	assert_true(integer(j, "completion_tokens") == INT64_MIN);
	assert_int_equal(integer(j, "status"), 0);
	rec_free(j);
}

/* A 1.0 host's struct lg_call ends before cost: the cost comes from the
 * prices, the impacts are unknown. */
static void test_older_host(void **state)
{
	struct lg_call c = sample_call();
	struct rec *j;

	(void)state;
	c.size = offsetof(struct lg_call, cost);
	c.cost_prompt_tokens = 2;
	c.cost_completion_tokens = 4;
	j = parse(usage_record_line(&c, "POST", NULL));
	assert_true(number(j, "cost") == 12 * 2 / 1e6 + 34 * 4 / 1e6);
	assert_true(is_null(j, "kwh"));
	assert_true(is_null(j, "kgco2eq"));
	rec_free(j);
}

static void record_id(char out[33])
{
	struct lg_call c = sample_call();
	struct rec *j = parse(usage_record_line(&c, "POST", NULL));

	assert_int_equal(strlen(str(j, "record_id")), 32);
	memcpy(out, str(j, "record_id"), 33);
	rec_free(j);
}

static void *other_thread(void *arg)
{
	record_id(arg);
	return NULL;
}

static int by_text(const void *a, const void *b)
{
	return strcmp(a, b);
}

/* Unique within a thread (its counter), and between threads (their random
 * prefixes): ids are what make inserts idempotent. */
static void test_record_ids_unique(void **state)
{
	enum { N = 5000 };
	char (*ids)[33] = calloc(N, sizeof *ids);
	char theirs[33];
	pthread_t t;

	(void)state;
	assert_non_null(ids);
	for (size_t i = 0; i < N; i++)
		record_id(ids[i]);
	assert_int_equal(pthread_create(&t, NULL, other_thread, theirs), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	/* One thread's ids share its prefix and grow. */
	assert_memory_equal(ids[0], ids[N - 1], 16);
	assert_true(strcmp(ids[0], ids[N - 1]) < 0);
	assert_memory_not_equal(ids[0], theirs, 16);
	qsort(ids, N, sizeof *ids, by_text);
	for (size_t i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	free(ids);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_field),
		cmocka_unit_test(test_no_principal_no_ids),
		cmocka_unit_test(test_strings_made_safe),
		cmocka_unit_test(test_long_strings),
		cmocka_unit_test(test_fixed_part_fits),
		cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_older_host),
		cmocka_unit_test(test_record_ids_unique),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
