/* SPDX-License-Identifier: Apache-2.0 */
/* record.c: one ledger record, a tuple of COPY's binary format for
 * usage_copy_sql (a field count, then each column as its length and its
 * bytes in PostgreSQL's binary form: -1 for NULL), written in one pass on
 * the worker that completed the call. Binary because PostgreSQL reads it
 * with about a third less CPU per row than text, where it parses every
 * number and the timestamp. This runs once per forwarded request, so it
 * allocates once: the worst-case size is known before writing (every string
 * byte at most three bytes of output), the record is written into a stack
 * buffer and copied out at its exact length.
 *
 * PostgreSQL refuses a whole COPY for one byte of invalid UTF-8: a client's
 * request id or an upstream's error message must not be able to poison a
 * batch (it would stay in the journal for ever), so invalid sequences are
 * written as U+FFFD. Numbers that are not finite are written NULL where the
 * column allows it and 0 where it does not. */
#include <endian.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <llmgate/host.h>

#include "usage.h"

/* The columns and, in comments, the binary form record.c writes for each:
 * changing a column's type in a migration means changing its writer. */
const char usage_copy_sql[] =
	"COPY usage (record_id, request_id, created, endpoint, method, status, user_id, key_id, "
	"organization_id, user_name, key_name, model_id, model_name, provider_id, provider_type, "
	"provider_model, prompt_tokens, completion_tokens, total_tokens, usage_estimated, "
	"latency_ms, ttft_ms, cost, kwh, kgco2eq, client_gone, error) FROM STDIN "
	"WITH (FORMAT binary)";

#define NCOLUMNS 27
#define RECORD_ID_BYTES 16      /* a thread's 8-byte prefix, then its counter */
#define FIXED_MAX 512           /* the field count, lengths, numbers, ids, the date */
#define STACK_MAX 4096
#define PG_EPOCH_OFFSET 946684800LL     /* 2000-01-01 in Unix time: timestamptz's zero */

/* COPY's binary file header (signature, flags, no extension) and trailer. */
const char usage_copy_header[USAGE_COPY_HEADER_LEN] = "PGCOPY\n\377\r\n\0"
						      "\0\0\0\0" "\0\0\0\0";
const char usage_copy_trailer[USAGE_COPY_TRAILER_LEN] = "\377\377";

struct out {
	char *p;
	size_t n;
};

static void put(struct out *o, const void *s, size_t len)
{
	memcpy(o->p + o->n, s, len);
	o->n += len;
}

static void put_be16(struct out *o, uint16_t v)
{
	v = htobe16(v);
	put(o, &v, sizeof v);
}

static void put_be32(struct out *o, uint32_t v)
{
	v = htobe32(v);
	put(o, &v, sizeof v);
}

static void put_be64(struct out *o, uint64_t v)
{
	v = htobe64(v);
	put(o, &v, sizeof v);
}

static void put_null(struct out *o)
{
	put_be32(o, UINT32_MAX);        /* -1 */
}

/* Writes, at @at, the length of what follows it. */
static void len_at(struct out *o, size_t at)
{
	uint32_t len = htobe32((uint32_t)(o->n - at - 4));

	memcpy(o->p + at, &len, sizeof len);
}

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

/* text: the bytes, invalid sequences as U+FFFD (at most 3 bytes of output
 * per input byte); NULL for a NULL @s. Valid sequences are copied a run at
 * a time: the usual text (ids, paths, names) is one run. */
static void put_text(struct out *o, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t at, left, run, len;

	if (!s) {
		put_null(o);
		return;
	}
	at = o->n;
	put_be32(o, 0);                 /* the length, once known */
	left = strlen(s);
	while (left > 0) {
		for (run = 0; run < left; run += len) {
			len = utf8_seq(p + run, left - run);
			if (len == 0)
				break;
		}
		put(o, p, run);
		p += run;
		left -= run;
		if (left > 0) {
			put(o, "\xEF\xBF\xBD", 3);
			p++;
			left--;
		}
	}
	len_at(o, at);
}

/* int4 and int8 */
static void put_int4(struct out *o, int32_t v)
{
	put_be32(o, 4);
	put_be32(o, (uint32_t)v);
}

static void put_int8(struct out *o, int64_t v)
{
	put_be32(o, 8);
	put_be64(o, (uint64_t)v);
}

/* An id the gateway did not have (0) is NULL. */
static void put_id(struct out *o, int64_t id)
{
	if (id > 0)
		put_int8(o, id);
	else
		put_null(o);
}

static void put_bool(struct out *o, bool b)
{
	put_be32(o, 1);
	o->p[o->n++] = b ? 1 : 0;
}

/* float8; a value that is not finite is NULL, or 0 when @zero_instead. */
static void put_float8(struct out *o, double x, bool zero_instead)
{
	uint64_t bits;

	if (!isfinite(x)) {
		if (!zero_instead) {
			put_null(o);
			return;
		}
		x = 0;
	}
	memcpy(&bits, &x, sizeof bits);
	put_be32(o, 8);
	put_be64(o, bits);
}

/* timestamptz: microseconds since 2000-01-01 UTC, now. */
static void put_now(struct out *o)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	put_int8(o, ((int64_t)ts.tv_sec - PG_EPOCH_OFFSET) * 1000000 + ts.tv_nsec / 1000);
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
	put_be32(o, RECORD_ID_BYTES * 2);
	put(o, hex, RECORD_ID_BYTES * 2);
}

static size_t str_room(const char *s)
{
	return s ? 3 * strlen(s) : 0;
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

/* The columns in the order usage_copy_sql names them. */
static void put_fields(struct out *o, const struct lg_call *c, const char *method,
		       const struct lg_principal *who)
{
	put_be16(o, NCOLUMNS);
	put_record_id(o);
	put_text(o, c->request_id ? c->request_id : "");
	put_now(o);
	put_text(o, c->endpoint ? c->endpoint : "");
	put_text(o, method ? method : "");
	put_int4(o, c->status);
	put_id(o, who ? who->user_id : 0);
	put_id(o, who ? who->key_id : 0);
	put_id(o, who ? who->organization_id : 0);
	put_text(o, who ? who->user_name : NULL);
	put_text(o, who ? who->key_name : NULL);
	put_id(o, c->model_id);
	put_text(o, c->model_name);
	put_id(o, c->provider_id);
	put_text(o, c->provider_type);
	put_text(o, c->provider_model);
	put_int8(o, c->prompt_tokens);
	put_int8(o, c->completion_tokens);
	put_int8(o, c->total_tokens);
	put_bool(o, c->usage_estimated);
	put_float8(o, c->latency_ms, true);
	put_float8(o, c->ttft_ms >= 0 ? c->ttft_ms : NAN, false);
	put_float8(o, usage_call_cost(c), true);
	/* Impacts the host did not give are unknown, not zero. */
	put_float8(o, CALL_HAS(c, kwh) ? c->kwh : NAN, false);
	put_float8(o, CALL_HAS(c, kgco2eq) ? c->kgco2eq : NAN, false);
	put_bool(o, c->client_gone);
	put_text(o, c->error);
}

struct usage_record *usage_record_new(const struct lg_call *c, const char *method,
				      const struct lg_principal *who)
{
	char stack[STACK_MAX];
	struct out o = { stack, 0 };
	size_t room = FIXED_MAX + str_room(c->request_id) + str_room(c->endpoint) +
		      str_room(method) + str_room(c->model_name) + str_room(c->provider_type) +
		      str_room(c->provider_model) + str_room(c->error);
	struct usage_record *r;

	if (who)
		room += str_room(who->user_name) + str_room(who->key_name);
	if (room > sizeof stack) {
		o.p = malloc(room);
		if (!o.p)
			return NULL;
	}
	put_fields(&o, c, method, who);
	r = malloc(sizeof *r + o.n);
	if (r) {
		r->len = (uint32_t)o.n;
		memcpy(r->data, o.p, o.n);
	}
	if (o.p != stack)
		free(o.p);
	return r;
}
