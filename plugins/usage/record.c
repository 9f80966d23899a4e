/* SPDX-License-Identifier: Apache-2.0 */
/* record.c: one ledger record, the JSON object usage_insert_batch() reads
 * (sql/usage/0002), written in one pass on the worker that completed the
 * call. This runs once per forwarded request, so it builds no tree and
 * allocates once: the worst-case size is known before writing (every string
 * byte at most six bytes of output), the record is written into a stack
 * buffer and copied out at its exact length.
 *
 * PostgreSQL refuses a whole statement for one byte of invalid UTF-8 and a
 * json text for "\u0000" turned into text: a client's request id or an
 * upstream's error message must not be able to poison a batch (it would
 * stay in the journal for ever), so invalid sequences and NUL are written
 * as U+FFFD. Numbers that are not finite are written null where the column
 * allows it and 0 where it does not. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <llmgate/host.h>

#include "usage.h"

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

/* At most 6 bytes of output per input byte, plus the quotes. */
static void put_str(struct out *o, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = (const unsigned char *)s;
	size_t left;

	if (!s) {
		PUT_LIT(o, "null");
		return;
	}
	left = strlen(s);
	o->p[o->n++] = '"';
	while (left > 0) {
		unsigned char c = *p;
		size_t len = utf8_seq(p, left);

		if (len == 0 || c == 0) {
			PUT_LIT(o, "\xEF\xBF\xBD");
			len = 1;
		} else if (c == '"' || c == '\\') {
			o->p[o->n++] = '\\';
			o->p[o->n++] = (char)c;
		} else if (c < 0x20) {
			PUT_LIT(o, "\\u00");
			o->p[o->n++] = hex[c >> 4];
			o->p[o->n++] = hex[c & 15];
		} else {
			put(o, (const char *)p, len);
		}
		p += len;
		left -= len;
	}
	o->p[o->n++] = '"';
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

/* An id the gateway did not have (0) is null. */
static void put_id(struct out *o, int64_t id)
{
	if (id > 0)
		put_int(o, id);
	else
		PUT_LIT(o, "null");
}

static void put_bool(struct out *o, bool b)
{
	if (b)
		PUT_LIT(o, "true");
	else
		PUT_LIT(o, "false");
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

/* "YYYY-MM-DDTHH:MM:SS.uuuuuuZ", UTC, now. */
static void put_now(struct out *o)
{
	struct timespec ts;
	struct tm tm;
	long usec;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	usec = ts.tv_nsec / 1000;
	o->p[o->n++] = '"';
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
	PUT_LIT(o, "Z\"");
}

/* Record ids must be unique, not secret: each thread draws a random 64-bit
 * prefix once and counts after it (big-endian, so that one thread's ids
 * grow and land side by side in the unique index). Drawing 16 random bytes
 * per record was a getrandom() system call per request. */
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
	o->p[o->n++] = '"';
	put(o, hex, RECORD_ID_BYTES * 2);
	o->p[o->n++] = '"';
}

static size_t str_room(const char *s)
{
	return s ? 6 * strlen(s) + 2 : 4;
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

static void put_fields(struct out *o, const struct lg_call *c, const char *method,
		       const struct lg_principal *who)
{
	PUT_LIT(o, "{\"record_id\":");
	put_record_id(o);
	PUT_LIT(o, ",\"request_id\":");
	put_str(o, c->request_id ? c->request_id : "");
	PUT_LIT(o, ",\"created\":");
	put_now(o);
	PUT_LIT(o, ",\"endpoint\":");
	put_str(o, c->endpoint ? c->endpoint : "");
	PUT_LIT(o, ",\"method\":");
	put_str(o, method ? method : "");
	PUT_LIT(o, ",\"status\":");
	put_int(o, c->status);
	PUT_LIT(o, ",\"user_id\":");
	put_id(o, who ? who->user_id : 0);
	PUT_LIT(o, ",\"key_id\":");
	put_id(o, who ? who->key_id : 0);
	PUT_LIT(o, ",\"organization_id\":");
	put_id(o, who ? who->organization_id : 0);
	PUT_LIT(o, ",\"user_name\":");
	put_str(o, who ? who->user_name : NULL);
	PUT_LIT(o, ",\"key_name\":");
	put_str(o, who ? who->key_name : NULL);
	PUT_LIT(o, ",\"model_id\":");
	put_id(o, c->model_id);
	PUT_LIT(o, ",\"model_name\":");
	put_str(o, c->model_name);
	PUT_LIT(o, ",\"provider_id\":");
	put_id(o, c->provider_id);
	PUT_LIT(o, ",\"provider_type\":");
	put_str(o, c->provider_type);
	PUT_LIT(o, ",\"provider_model\":");
	put_str(o, c->provider_model);
	PUT_LIT(o, ",\"prompt_tokens\":");
	put_int(o, c->prompt_tokens);
	PUT_LIT(o, ",\"completion_tokens\":");
	put_int(o, c->completion_tokens);
	PUT_LIT(o, ",\"total_tokens\":");
	put_int(o, c->total_tokens);
	PUT_LIT(o, ",\"usage_estimated\":");
	put_bool(o, c->usage_estimated);
	PUT_LIT(o, ",\"latency_ms\":");
	put_double(o, c->latency_ms, "0");
	PUT_LIT(o, ",\"ttft_ms\":");
	put_double(o, c->ttft_ms >= 0 ? c->ttft_ms : NAN, "null");
	PUT_LIT(o, ",\"cost\":");
	put_double(o, usage_call_cost(c), "0");
	/* Impacts the host did not give are unknown, not zero. */
	PUT_LIT(o, ",\"kwh\":");
	put_double(o, CALL_HAS(c, kwh) ? c->kwh : NAN, "null");
	PUT_LIT(o, ",\"kgco2eq\":");
	put_double(o, CALL_HAS(c, kgco2eq) ? c->kgco2eq : NAN, "null");
	PUT_LIT(o, ",\"client_gone\":");
	put_bool(o, c->client_gone);
	PUT_LIT(o, ",\"error\":");
	put_str(o, c->error);
	PUT_LIT(o, "}");
}

char *usage_record_json(const struct lg_call *c, const char *method,
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
