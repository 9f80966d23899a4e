/* SPDX-License-Identifier: Apache-2.0 */
/* The usage ledger's record writer (plugins/usage/record.c): every field
 * read back as COPY's binary format has it, by the column names of
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

#include <time.h>

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

/* A record read back: its columns as COPY's binary format has them (a
 * copy of each value's bytes, NUL-terminated; NULL for NULL). */
struct rec {
	char *names[NCOLS];
	char *values[NCOLS];
	uint32_t lens[NCOLS];
};

/* The column list of usage_copy_sql, in order. */
static void column_names(struct rec *r)
{
	const char *p = strchr(usage_copy_sql, '(') + 1, *end = strchr(p, ')');
	size_t k = 0;

	while (p < end) {
		size_t len = strcspn(p, ",)");

		assert_true(k < NCOLS);
		r->names[k] = strndup(p, len);
		assert_non_null(r->names[k++]);
		p += len + 1;
		p += strspn(p, " ");
	}
	assert_int_equal(k, NCOLS);
}

static uint32_t be32_at(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t be64_at(const unsigned char *p)
{
	return (uint64_t)be32_at(p) << 32 | be32_at(p + 4);
}

static struct rec *parse(struct usage_record *rec)
{
	struct rec *r = calloc(1, sizeof *r);
	const unsigned char *p, *end;

	assert_non_null(rec);
	assert_non_null(r);
	column_names(r);
	p = (const unsigned char *)rec->data;
	end = p + rec->len;
	assert_true(rec->len >= 2);
	assert_int_equal(p[0] << 8 | p[1], NCOLS);
	p += 2;
	for (size_t k = 0; k < NCOLS; k++) {
		uint32_t len;

		assert_true(end - p >= 4);
		len = be32_at(p);
		p += 4;
		if (len == UINT32_MAX)
			continue;       /* NULL */
		assert_true((size_t)(end - p) >= len);
		r->values[k] = malloc(len + 1);
		assert_non_null(r->values[k]);
		memcpy(r->values[k], p, len);
		r->values[k][len] = '\0';
		r->lens[k] = len;
		p += len;
	}
	assert_true(p == end);  /* nothing after the last column */
	free(rec);
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

/* A text column (its bytes hold no NUL: compared as a string). */
static const char *str(const struct rec *r, const char *name)
{
	size_t k = col(r, name);

	if (r->values[k])
		assert_int_equal(strlen(r->values[k]), r->lens[k]);
	return r->values[k];
}

static bool is_null(const struct rec *r, const char *name)
{
	return r->values[col(r, name)] == NULL;
}

/* int4 or int8 */
static long long integer(const struct rec *r, const char *name)
{
	size_t k = col(r, name);
	const unsigned char *v = (const unsigned char *)r->values[k];

	assert_non_null(v);
	if (r->lens[k] == 4)
		return (int32_t)be32_at(v);
	assert_int_equal(r->lens[k], 8);
	return (int64_t)be64_at(v);
}

static double number(const struct rec *r, const char *name)
{
	size_t k = col(r, name);
	uint64_t bits;
	double x;

	assert_non_null(r->values[k]);
	assert_int_equal(r->lens[k], 8);
	bits = be64_at((const unsigned char *)r->values[k]);
	memcpy(&x, &bits, sizeof x);
	return x;
}

static bool boolean(const struct rec *r, const char *name)
{
	size_t k = col(r, name);

	assert_non_null(r->values[k]);
	assert_int_equal(r->lens[k], 1);
	assert_true(r->values[k][0] == 0 || r->values[k][0] == 1);
	return r->values[k][0] == 1;
}

static void test_every_field(void **state)
{
	struct lg_call c = sample_call();
	struct lg_principal who = { .user_id = 5, .key_id = 9, .organization_id = 2,
				    .user_name = "ann@example.org", .key_name = "ci" };
	struct rec *j = parse(usage_record_new(&c, "POST", &who));

	(void)state;
	assert_int_equal(strlen(str(j, "record_id")), 32);
	assert_string_equal(str(j, "request_id"), "req-1");
	/* microseconds since 2000-01-01 UTC: within a minute of now */
	assert_true(llabs(integer(j, "created") -
			  ((long long)time(NULL) - 946684800LL) * 1000000) < 60000000);
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
	assert_true(boolean(j, "usage_estimated"));
	assert_true(number(j, "latency_ms") == 12.5);
	assert_true(number(j, "ttft_ms") == 3.25);
	assert_true(number(j, "cost") == 0.000123);
	assert_true(number(j, "kwh") == 1.5e-6);
	assert_true(number(j, "kgco2eq") == 8.9e-7);
	assert_false(boolean(j, "client_gone"));
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
	j = parse(usage_record_new(&c, NULL, NULL));
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

/* Text as it is, valid multi-byte text kept, invalid bytes replaced
 * (PostgreSQL refuses a whole COPY for one invalid byte). */
static void test_strings_made_safe(void **state)
{
	struct lg_call c = sample_call();
	struct rec *j;

	(void)state;
	c.request_id = "a\"b\\c\n\t\r\x01\\N" "é€😀";
	/* a lone continuation byte, an overlong '/', a surrogate, a truncated
	 * sequence at the end */
	c.error = "x\x80y\xC0\xAFz\xED\xA0\x80w\xE2\x82";
	j = parse(usage_record_new(&c, "POST", NULL));
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

/* Past the stack buffer: a long error, half of it the worst case (invalid
 * bytes, three bytes each), with the longest numbers. */
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
	j = parse(usage_record_new(&c, "POST", &who));
	assert_int_equal(strlen(str(j, "error")), n / 2 * 3 + (n - n / 2));
	assert_memory_equal(str(j, "error"), "\xEF\xBF\xBD", 3);
	assert_memory_equal(str(j, "error") + n / 2 * 3, err + n / 2, n - n / 2);
	rec_free(j);
	free(err);
}

/* Without strings, the record is the fixed part alone: it must stay within
 * record.c's FIXED_MAX (512 bytes), which sizes the buffer. */
static void test_fixed_part_fits(void **state)
{
	struct lg_call c = sample_call();
	struct lg_principal who = { .user_name = NULL };
	struct usage_record *rec;

	(void)state;
	c.request_id = c.endpoint = c.model_name = c.provider_type = c.provider_model = NULL;
	c.error = NULL;
	worst_numbers(&c, &who);
	rec = usage_record_new(&c, NULL, &who);
	assert_non_null(rec);
	assert_true(rec->len <= 512);
	rec_free(parse(rec));
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
	j = parse(usage_record_new(&c, "POST", NULL));
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
	j = parse(usage_record_new(&c, "POST", NULL));
	assert_true(number(j, "cost") == 12 * 2 / 1e6 + 34 * 4 / 1e6);
	assert_true(is_null(j, "kwh"));
	assert_true(is_null(j, "kgco2eq"));
	rec_free(j);
}

static void record_id(char out[33])
{
	struct lg_call c = sample_call();
	struct rec *j = parse(usage_record_new(&c, "POST", NULL));

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
