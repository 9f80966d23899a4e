/* SPDX-License-Identifier: Apache-2.0 */
/* record.c: one ledger record, a line of COPY's text format for
 * usage_copy_sql (tab-separated columns, \N for NULL, no newline), written
 * in one pass on the worker that completed the call. This runs once per
 * forwarded request, so it allocates once: the worst-case size is known
 * before writing (every string byte at most three bytes of output), the
 * record is written into a stack buffer and copied out at its exact length.
 *
 * PostgreSQL refuses a whole COPY for one byte of invalid UTF-8: a client's
 * request id or an upstream's error message must not be able to poison a
 * batch (it would stay in the journal for ever), so invalid sequences are
 * written as U+FFFD. Numbers that are not finite are written NULL where the
 * column allows it and 0 where it does not. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <llmgate/host.h>

#include "usage.h"

const char usage_copy_sql[] =
	"COPY usage (record_id, request_id, created, endpoint, method, status, user_id, key_id, "
	"organization_id, user_name, key_name, model_id, model_name, provider_id, provider_type, "
	"provider_model, prompt_tokens, completion_tokens, total_tokens, usage_estimated, "
	"latency_ms, ttft_ms, cost, kwh, kgco2eq, client_gone, error) FROM STDIN";

#define RECORD_ID_BYTES 16      /* a thread's 8-byte prefix, then its counter */
#define FIXED_MAX 1024          /* keys, punctuation, numbers, ids, the date */
#define STACK_MAX 4096

struct out {
	char *p;
	size_t n;
};

static void put(struct out *o, const char *s, size_t len)
{
	memcpy(o->p + o->n, s, len);
	o->n += len;
}

#define PUT_LIT(o, s) put((o), (s), sizeof(s) - 1)
#define TAB(o) ((o)->p[(o)->n++] = '\t')

/* The length of the valid UTF-8 sequence at @s (@n bytes left), 0 when it
 * is not one (overlong forms, surrogates and code points past U+10FFFF are
 * invalid too). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t len = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;

	if (len <= 1)
		return len;
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++)
		if ((s[i] & 0xC0) != 0x80)
			return 0;
	if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0) ||
	    (c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90))
		return 0;
	return len;
}

/* A text column of COPY's text format: backslash, tab, newline and
 * carriage return escaped. At most 3 bytes of output per input byte (an
 * invalid byte becomes U+FFFD). */
static void put_str(struct out *o, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t left;

	if (!s) {
		PUT_LIT(o, "\\N");
		return;
	}
	left = strlen(s);
	while (left > 0) {
		unsigned char c = *p;
		size_t len = utf8_seq(p, left);

		if (len == 0) {
			PUT_LIT(o, "\xEF\xBF\xBD");
			len = 1;
		} else if (c == '\\' || c == '\t' || c == '\n' || c == '\r') {
			o->p[o->n++] = '\\';
			o->p[o->n++] = c == '\\' ? '\\' : c == '\t' ? 't' : c == '\n' ? 'n' : 'r';
		} else {
			put(o, (const char *)p, len);
		}
		p += len;
		left -= len;
	}
}

static void put_int(struct out *o, long long v)
{
	char digits[24];
	size_t k = sizeof digits;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;

	do {
		digits[--k] = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		digits[--k] = '-';
	put(o, digits + k, sizeof digits - k);
}

#define NULL_FIELD "\\N"

/* An id the gateway did not have (0) is NULL. */
static void put_id(struct out *o, int64_t id)
{
	if (id > 0)
		put_int(o, id);
	else
		PUT_LIT(o, NULL_FIELD);
}

static void put_bool(struct out *o, bool b)
{
	o->p[o->n++] = b ? 't' : 'f';
}

/* The shortest text that reads back as the same double, as in replies. */
static void put_double(struct out *o, double x, const char *if_not_finite)
{
	char s[32];
	int len = 0;

	if (!isfinite(x)) {
		put(o, if_not_finite, strlen(if_not_finite));
		return;
	}
	if (x == 0) {
		PUT_LIT(o, "0");
		return;
	}
	for (int digits = 15; digits <= 17; digits++) {
		len = snprintf(s, sizeof s, "%.*g", digits, x);
		if (strtod(s, NULL) == x)
			break;
	}
	put(o, s, (size_t)len);
}

static void put_2digits(struct out *o, int v)
{
	o->p[o->n++] = (char)('0' + v / 10 % 10);
	o->p[o->n++] = (char)('0' + v % 10);
}

/* YYYY-MM-DDTHH:MM:SS.uuuuuuZ, UTC, now. */
static void put_now(struct out *o)
{
	struct timespec ts;
	struct tm tm;
	long usec;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	usec = ts.tv_nsec / 1000;
	put_int(o, tm.tm_year + 1900);
	o->p[o->n++] = '-';
	put_2digits(o, tm.tm_mon + 1);
	o->p[o->n++] = '-';
	put_2digits(o, tm.tm_mday);
	o->p[o->n++] = 'T';
	put_2digits(o, tm.tm_hour);
	o->p[o->n++] = ':';
	put_2digits(o, tm.tm_min);
	o->p[o->n++] = ':';
	put_2digits(o, tm.tm_sec);
	o->p[o->n++] = '.';
	put_2digits(o, (int)(usec / 10000));
	put_2digits(o, (int)(usec / 100 % 100));
	put_2digits(o, (int)(usec % 100));
	o->p[o->n++] = 'Z';
}

/* Record ids must be unique, not secret: each thread draws a random 64-bit
 * prefix once and counts after it (big-endian, so that one thread's ids
 * sort in the order it made them). No index checks them: batches are
 * loaded once (usage.c), and two threads share a prefix with odds of one
 * in 2^64. Drawing 16 random bytes per record was a getrandom() system
 * call per request. */
static _Thread_local struct {
	unsigned char prefix[8];
	uint64_t next;
	bool seeded;
} record_ids;

static void put_record_id(struct out *o)
{
	unsigned char rid[RECORD_ID_BYTES];
	char hex[RECORD_ID_BYTES * 2 + 1];
	uint64_t n;

	if (!record_ids.seeded) {
		randombytes_buf(record_ids.prefix, sizeof record_ids.prefix);
		record_ids.next = 0;
		record_ids.seeded = true;
	}
	n = record_ids.next++;
	memcpy(rid, record_ids.prefix, sizeof record_ids.prefix);
	for (int i = 7; i >= 0; i--, n >>= 8)
		rid[8 + i] = (unsigned char)(n & 0xFF);
	sodium_bin2hex(hex, sizeof hex, rid, sizeof rid);
	put(o, hex, RECORD_ID_BYTES * 2);
}

static size_t str_room(const char *s)
{
	return s ? 3 * strlen(s) : sizeof NULL_FIELD;
}

double usage_call_cost(const struct lg_call *c)
{
	double cost;

	if (CALL_HAS(c, cost))
		cost = c->cost;
	else
		cost = (double)c->prompt_tokens * c->cost_prompt_tokens / 1e6 +
		       (double)c->completion_tokens * c->cost_completion_tokens / 1e6;
	return isfinite(cost) ? cost : 0;
}

/* The columns in the order usage_copy_sql names them, each followed by a
 * tab but the last. */
static void put_fields(struct out *o, const struct lg_call *c, const char *method,
		       const struct lg_principal *who)
{
	put_record_id(o);
	TAB(o);
	put_str(o, c->request_id ? c->request_id : "");
	TAB(o);
	put_now(o);
	TAB(o);
	put_str(o, c->endpoint ? c->endpoint : "");
	TAB(o);
	put_str(o, method ? method : "");
	TAB(o);
	put_int(o, c->status);
	TAB(o);
	put_id(o, who ? who->user_id : 0);
	TAB(o);
	put_id(o, who ? who->key_id : 0);
	TAB(o);
	put_id(o, who ? who->organization_id : 0);
	TAB(o);
	put_str(o, who ? who->user_name : NULL);
	TAB(o);
	put_str(o, who ? who->key_name : NULL);
	TAB(o);
	put_id(o, c->model_id);
	TAB(o);
	put_str(o, c->model_name);
	TAB(o);
	put_id(o, c->provider_id);
	TAB(o);
	put_str(o, c->provider_type);
	TAB(o);
	put_str(o, c->provider_model);
	TAB(o);
	put_int(o, c->prompt_tokens);
	TAB(o);
	put_int(o, c->completion_tokens);
	TAB(o);
	put_int(o, c->total_tokens);
	TAB(o);
	put_bool(o, c->usage_estimated);
	TAB(o);
	put_double(o, c->latency_ms, "0");
	TAB(o);
	put_double(o, c->ttft_ms >= 0 ? c->ttft_ms : NAN, NULL_FIELD);
	TAB(o);
	put_double(o, usage_call_cost(c), "0");
	TAB(o);
	/* Impacts the host did not give are unknown, not zero. */
	put_double(o, CALL_HAS(c, kwh) ? c->kwh : NAN, NULL_FIELD);
	TAB(o);
	put_double(o, CALL_HAS(c, kgco2eq) ? c->kgco2eq : NAN, NULL_FIELD);
	TAB(o);
	put_bool(o, c->client_gone);
	TAB(o);
	put_str(o, c->error);
}

char *usage_record_line(const struct lg_call *c, const char *method,
			const struct lg_principal *who)
{
	char stack[STACK_MAX];
	struct out o = { stack, 0 };
	size_t room = FIXED_MAX + str_room(c->request_id) + str_room(c->endpoint) +
		      str_room(method) + str_room(c->model_name) + str_room(c->provider_type) +
		      str_room(c->provider_model) + str_room(c->error);
	char *text;

	if (who)
		room += str_room(who->user_name) + str_room(who->key_name);
	if (room > sizeof stack) {
		o.p = malloc(room);
		if (!o.p)
			return NULL;
	}
	put_fields(&o, c, method, who);
	o.p[o.n++] = '\0';
	if (o.p != stack)
		return realloc(o.p, o.n) ?: o.p;
	text = malloc(o.n);
	if (text)
		memcpy(text, stack, o.n);
	return text;
}
