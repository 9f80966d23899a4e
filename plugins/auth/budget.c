/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Budgets: a user's budget (NULL: unlimited) pays for the calls of billable
 * models (spec §6, docs/limits.md).
 *
 * Decisions:
 * - Before the call, its worst-case cost is held on the budget by one
 *   conditional UPDATE, so concurrent requests are serialised by the row
 *   lock and none passes once the budget cannot cover it: the budget never
 *   goes below zero. The hold counts every byte of the body as a prompt
 *   token (a token is at least one byte) and, for each of the n choices
 *   asked (the body's "n", 1 by default, at most N_MAX), max_tokens
 *   completion tokens, or budget_hold_completion_tokens when the request
 *   sets no max_tokens: then the hold is an estimate, not a worst case.
 * - "n" is found by a light scan of the body's top level, not a parse: the
 *   core has already checked that the body is JSON.
 * - After the call, whatever its outcome, the hold is given back and the
 *   real cost taken, in one statement: the cost the core computed for the
 *   reply's usage (spec §6), so budget and usage rows agree to the
 *   millionth. A hold that cannot be settled (database down) stays taken,
 *   which errs on the side of the budget.
 * - Amounts are counted in millionths, as the column (NUMERIC(20, 6)), and
 *   sent as decimal text, so no binary rounding reaches the database.
 * - A user without a budget costs no query at all: the ident says so.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/api.h"
#include "auth.h"

#define MSG_INSUFFICIENT "Insufficient budget."
#define MICROS 1000000.0
#define MICROS_CAP 9e18           /* below INT64_MAX */
#define N_MAX 128                 /* OpenAI's own maximum of "n" */
#define SCAN_DEPTH_MAX 64         /* nesting the scan follows; deeper: n = 1 */

static const char hold_sql[] =
	"UPDATE \"user\" SET budget = budget - $2::numeric "
	"WHERE id = $1 AND budget > 0 AND budget >= $2::numeric RETURNING budget";

static const char settle_sql[] =
	"UPDATE \"user\" SET budget = greatest(0, budget + $2::numeric - $3::numeric) "
	"WHERE id = $1 AND budget IS NOT NULL";

/* What the hold took, for COMPLETE. In the request's memory. */
struct budget_hold {
	struct auth *a;
	struct lg_req *req;
	int64_t user_id;
	int64_t micros;
	bool held;
};

static void micros_text(int64_t micros, char *out, size_t len)
{
	snprintf(out, len, "%" PRId64 ".%06" PRId64, micros / 1000000, micros % 1000000);
}

/* Up to the next millionth; the tiny slack keeps 0.0012 from becoming
 * 0.001201 through binary rounding. -1 when it does not fit in int64_t
 * millionths (nine trillion): more than any budget. */
static int64_t to_micros_up(double amount)
{
	double m = amount * MICROS - 1e-6;
	int64_t i;

	if (!(m > 0))
		return 0;
	if (m >= MICROS_CAP)
		return -1;
	i = (int64_t)m;
	return (double)i < m ? i + 1 : i;
}

/* Half away from zero, as PostgreSQL's round(numeric); capped like holds
 * (a cost is never above its hold). */
static int64_t to_micros_rounded(double amount)
{
	double m = amount * MICROS;

	if (!(m > 0))
		return 0;
	return m >= MICROS_CAP ? (int64_t)MICROS_CAP : (int64_t)(m + 0.5);
}

/* ---- a light scan of the body for its top-level "n" ---- */

struct scan {
	const char *p, *end;
};

static void skip_space(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

/* Past a string whose opening quote is at s->p; its raw text (escapes
 * left as they are) in [*from, *to). */
static bool skip_string(struct scan *s, const char **from, const char **to)
{
	if (s->p >= s->end || *s->p != '"')
		return false;
	*from = ++s->p;
	while (s->p < s->end && *s->p != '"')
		s->p += *s->p == '\\' ? 2 : 1;
	if (s->p >= s->end)
		return false;
	*to = s->p++;
	return true;
}

/* Past one value of any kind, nested ones included. */
static bool skip_value(struct scan *s)
{
	const char *from, *to;
	int depth = 0;

	do {
		skip_space(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == '"') {
			if (!skip_string(s, &from, &to))
				return false;
		} else if (*s->p == '{' || *s->p == '[') {
			if (++depth > SCAN_DEPTH_MAX)
				return false;
			s->p++;
		} else if (*s->p == '}' || *s->p == ']') {
			if (--depth < 0)
				return false;
			s->p++;
		} else {
			s->p++;         /* a number, a literal, ':' or ',' */
		}
	} while (depth > 0);
	return true;
}

/* The number of choices the call asks for: the body's top-level "n" when
 * it is an integer, else 1; at most N_MAX. */
static int64_t choices_of(struct lg_str body)
{
	struct scan s = { body.ptr, body.ptr + body.len };
	const char *from, *to;
	char num[24];
	long long n;
	char *endp;
	size_t len;

	skip_space(&s);
	if (s.p >= s.end || *s.p++ != '{')
		return 1;
	for (;;) {
		skip_space(&s);
		if (!skip_string(&s, &from, &to))
			return 1;
		skip_space(&s);
		if (s.p >= s.end || *s.p++ != ':')
			return 1;
		skip_space(&s);
		if (to - from == 1 && *from == 'n')
			break;
		if (!skip_value(&s))
			return 1;
		skip_space(&s);
		if (s.p >= s.end || *s.p++ != ',')
			return 1;
	}
	for (len = 0; s.p + len < s.end && len < sizeof num - 1 &&
	     s.p[len] && strchr("-+0123456789", s.p[len]); len++)
		num[len] = s.p[len];
	num[len] = '\0';
	n = strtoll(num, &endp, 10);
	if (len == 0 || *endp != '\0' || n < 1)
		return 1;
	return n > N_MAX ? N_MAX : n;
}

static int64_t hold_micros(struct auth *a, struct lg_req *req, const struct lg_call *call)
{
	struct lg_str body = a->host->req_body(req);
	int64_t completion = call->max_tokens >= 0 ? call->max_tokens
						    : a->budget_hold_completion_tokens;

	return to_micros_up((double)body.len * call->cost_prompt_tokens / MICROS +
			    (double)completion * (double)choices_of(body) *
			    call->cost_completion_tokens / MICROS);
}

static void on_held(const PGresult *res, const char *error, void *arg)
{
	struct budget_hold *bh = arg;
	struct auth *a = bh->a;

	if (error) {
		api_db_failed(a->host, a->self, bh->req, error, NULL, NULL);
		a->host->resume(bh->req, LG_HOOK_DONE);
		return;
	}
	if (!res || PQntuples(res) == 0) {
		a->host->reply_error(bh->req, 400, MSG_INSUFFICIENT);
		a->host->resume(bh->req, LG_HOOK_DONE);
		return;
	}
	bh->held = true;
	a->host->resume(bh->req, LG_HOOK_OK);
}

enum lg_hook_result auth_budget_authorize(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const struct auth_ident *id = auth_req_ident(a, req);
	const struct lg_call *call = a->host->req_call(req);
	struct auth_req *st;
	struct budget_hold *bh;
	char user[24], amount[32];
	const char *params[] = { user, amount };

	if (!id || !id->budget_limited || !call ||
	    (call->cost_prompt_tokens == 0 && call->cost_completion_tokens == 0))
		return LG_HOOK_OK;
	st = auth_req_get(a, req);
	bh = st ? a->host->req_alloc(req, sizeof *bh) : NULL;
	if (!bh) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return LG_HOOK_DONE;
	}
	*bh = (struct budget_hold){ .a = a, .req = req, .user_id = id->user_id,
				    .micros = hold_micros(a, req, call) };
	if (bh->micros < 0) {
		a->host->reply_error(req, 400, MSG_INSUFFICIENT);
		return LG_HOOK_DONE;
	}
	st->budget = bh;
	snprintf(user, sizeof user, "%" PRId64, bh->user_id);
	micros_text(bh->micros, amount, sizeof amount);
	if (!api_query(a->host, a->self, req, hold_sql, 2, params, on_held, bh))
		return LG_HOOK_DONE;
	return LG_HOOK_PENDING;
}

static void on_settled(const PGresult *res, const char *error, void *arg)
{
	struct auth *a = arg;

	(void)res;
	if (error)
		a->host->log(a->self, LG_LOG_WARN, "budget: a hold could not be settled, it "
			     "stays charged: %s", error);
}

/* The call's cost as the core computed it for the reply's usage (ABI 1.1),
 * or the same formula (spec §6) from an older core. */
static double call_cost(const struct lg_call *call)
{
	int64_t pt = call->prompt_tokens > 0 ? call->prompt_tokens : 0;
	int64_t ct = call->completion_tokens > 0 ? call->completion_tokens : 0;

	if (call->size >= offsetof(struct lg_call, cost) + sizeof call->cost)
		return call->cost;
	return (double)pt / MICROS * call->cost_prompt_tokens +
	       (double)ct / MICROS * call->cost_completion_tokens;
}

enum lg_hook_result auth_budget_complete(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	struct auth_req *st = a->host->req_get_data(req, a->self);
	const struct lg_call *call = a->host->req_call(req);
	struct budget_hold *bh = st ? st->budget : NULL;
	char user[24], hold[32], cost[32];
	const char *params[] = { user, hold, cost };

	if (!bh || !bh->held || !call)
		return LG_HOOK_OK;
	bh->held = false;
	snprintf(user, sizeof user, "%" PRId64, bh->user_id);
	micros_text(bh->micros, hold, sizeof hold);
	micros_text(to_micros_rounded(call_cost(call)), cost, sizeof cost);
	/* Not waited for: the answer does not depend on it. */
	if (a->host->db_query(a->self, settle_sql, 3, params, on_settled, a) < 0)
		a->host->log(a->self, LG_LOG_WARN, "budget: a hold could not be settled, it "
			     "stays charged");
	return LG_HOOK_OK;
}
