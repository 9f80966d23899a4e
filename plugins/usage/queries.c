/* SPDX-License-Identifier: Apache-2.0 */
/* The usage API (OpenGateLLM spec §8.4):
 *   GET /v1/usage     daily buckets (UTC days) of the successful calls
 *                     between start_time and end_time, newest first;
 *   GET /v1/me/usage  the caller's successful calls one by one, newest
 *                     first, paginated.
 * The caller sees its own rows; a caller with LG_PERM_ADMIN may name any
 * user_id or organization_id on /v1/usage. PostgreSQL builds the JSON;
 * every value is a parameter and only fixed fragments of this file are
 * pasted into the statement. The indexes on (user_id, created), (key_id,
 * created) and (organization_id, created) serve both queries. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "usage.h"

#define DAY_S 86400
#define SPAN_DAYS_MAX 366       /* the longest /v1/usage range */
#define TIME_MAX 253402300799LL /* 9999-12-31T23:59:59Z */
#define ME_DEFAULT_SPAN_S (30LL * DAY_S)
#define SQL_LEN 4096
#define PARAMS_MAX 16

/* OpenGateLLM's list, and /v1/completions which llmgate forwards too. */
static const char *const endpoints[] = {
	"/v1/audio/transcriptions", "/v1/chat/completions", "/v1/completions",
	"/v1/embeddings", "/v1/ocr", "/v1/rerank", "/v1/search", NULL,
};
#define NO_ENDPOINT (sizeof endpoints / sizeof *endpoints - 1)

/* One statement being put together: fixed text, numbered parameters. */
struct sql {
	char text[SQL_LEN];
	size_t len;
	const char *params[PARAMS_MAX];
	int n;
	bool overflow;
};

static void sql_add(struct sql *q, const char *fmt, ...) LG_PRINTF(2, 3);
static void sql_add(struct sql *q, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (q->overflow)
		return;
	va_start(ap, fmt);
	n = vsnprintf(q->text + q->len, sizeof q->text - q->len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof q->text - q->len) {
		q->overflow = true;
		return;
	}
	q->len += (size_t)n;
}

/* Adds @value as the next parameter; returns its number ($n). */
static int sql_param(struct sql *q, const char *value)
{
	if (q->n == PARAMS_MAX) {
		q->overflow = true;
		return PARAMS_MAX;
	}
	q->params[q->n++] = value;
	return q->n;
}

static bool is_admin(const struct lg_principal *who)
{
	return who->permissions & LG_PERM_ADMIN;
}

/* A query parameter that must be there, as an integer in [min, max]. */
static bool required_int(const struct lg_host *h, struct lg_req *req, const char *name,
			 int64_t min, int64_t max, int64_t *out)
{
	if (!h->req_query(req, name)) {
		h->reply_error(req, 422, "%s: field required", name);
		return false;
	}
	return api_query_int(h, req, name, 0, min, max, out);
}

/* Whose rows: @user_id or @org_id when an admin names them, else the
 * caller's own. The master key has no user id: its calls are stored with
 * a NULL user_id, and those are its own rows. */
static bool add_owner(struct usage *u, struct lg_req *req, const struct lg_principal *who,
		      int64_t user_id, int64_t org_id, struct sql *q)
{
	const struct lg_host *h = u->host;
	const char *text;

	if (org_id > 0) {
		text = api_id_text(h, req, org_id);
		if (!text)
			return false;
		sql_add(q, " AND organization_id = $%d::bigint", sql_param(q, text));
	}
	if (user_id == 0 && org_id > 0)
		return true;
	if (user_id == 0)
		user_id = who->user_id;
	if (user_id == 0) {
		sql_add(q, " AND user_id IS NULL");
		return true;
	}
	text = api_id_text(h, req, user_id);
	if (!text)
		return false;
	sql_add(q, " AND user_id = $%d::bigint", sql_param(q, text));
	return true;
}

/* The caller, and whether it may name @user_id / @org_id. */
static const struct lg_principal *caller(struct usage *u, struct lg_req *req,
					 int64_t user_id, int64_t org_id)
{
	const struct lg_host *h = u->host;
	const struct lg_principal *who = h->req_principal(req);

	if (!who) {
		h->reply_error(req, 401, "Invalid API key.");
		return NULL;
	}
	if (is_admin(who))
		return who;
	if (org_id > 0 || (user_id > 0 && user_id != who->user_id)) {
		h->reply_error(req, 403, "User has no admin rights.");
		return NULL;
	}
	/* Without a user, "own rows" would be every id-less caller's. */
	if (who->user_id <= 0) {
		h->reply_error(req, 403, "Usage is kept per user and this key has no user.");
		return NULL;
	}
	return who;
}

static bool add_endpoint(struct usage *u, struct lg_req *req, struct sql *q)
{
	size_t ep;

	if (!api_query_choice(u->host, req, "endpoint", endpoints, NO_ENDPOINT, &ep))
		return false;
	if (ep != NO_ENDPOINT)
		sql_add(q, " AND endpoint = $%d::text", sql_param(q, endpoints[ep]));
	return true;
}

/* models=a,b (one parameter: the host hands out only the first value of a
 * repeated one, so a list is written with commas). */
static void add_models(struct usage *u, struct lg_req *req, struct sql *q)
{
	const char *models = u->host->req_query(req, "models");

	if (models && *models)
		sql_add(q, " AND model_name = ANY (regexp_split_to_array(btrim($%d::text), "
			"'\\s*,\\s*'))", sql_param(q, models));
}

static bool add_key(struct usage *u, struct lg_req *req, struct sql *q)
{
	int64_t key_id;
	const char *text;

	if (!api_query_int(u->host, req, "key_id", 0, 1, INT64_MAX / 2, &key_id))
		return false;
	if (key_id == 0)
		return true;
	text = api_id_text(u->host, req, key_id);
	if (!text)
		return false;
	sql_add(q, " AND key_id = $%d::bigint", sql_param(q, text));
	return true;
}

static void run(struct usage *u, struct lg_req *req, struct sql *q)
{
	const struct lg_host *h = u->host;
	struct api_json_reply *r;

	if (q->overflow) {
		h->log(u->self, LG_LOG_ERROR, "usage: a usage query does not fit its buffer");
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	r = h->req_alloc(req, sizeof *r);
	if (!r) {
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	*r = (struct api_json_reply){ .host = h, .self = u->self, .req = req, .status = 200 };
	api_query(h, u->self, req, q->text, q->n, q->params, api_json_reply_cb, r);
}

/* ---- GET /v1/usage ---- */

/* The page of days to answer, newest first: day numbers (Unix time / 86400)
 * @lo..@hi, and the part of [start, end) they cover. */
struct day_page {
	int64_t lo, hi;
	int64_t from, to;
};

static bool day_page(const struct lg_host *h, struct lg_req *req, int64_t start, int64_t end,
		     struct day_page *p)
{
	int64_t offset, limit, first = start / DAY_S, last = (end - 1) / DAY_S;

	if (!api_query_int(h, req, "offset", 0, 0, SPAN_DAYS_MAX, &offset) ||
	    !api_query_int(h, req, "limit", SPAN_DAYS_MAX + 1, 1, SPAN_DAYS_MAX + 1, &limit))
		return false;
	if (end <= start) {
		*p = (struct day_page){ .lo = 1, .hi = 0, .from = start, .to = start };
		return true;
	}
	p->hi = last - offset;
	p->lo = p->hi - limit + 1 > first ? p->hi - limit + 1 : first;
	p->from = p->lo * DAY_S > start ? p->lo * DAY_S : start;
	p->to = (p->hi + 1) * DAY_S < end ? (p->hi + 1) * DAY_S : end;
	return true;
}

static bool usage_range(const struct lg_host *h, struct lg_req *req, int64_t *start,
			int64_t *end)
{
	if (!required_int(h, req, "start_time", 0, TIME_MAX, start) ||
	    !required_int(h, req, "end_time", 0, TIME_MAX, end))
		return false;
	if (*end < *start) {
		h->reply_error(req, 422, "end_time: must not be before start_time");
		return false;
	}
	if (*end - *start > (int64_t)SPAN_DAYS_MAX * DAY_S) {
		h->reply_error(req, 422, "end_time: at most %d days after start_time",
			       SPAN_DAYS_MAX);
		return false;
	}
	return true;
}

static void route_usage(struct lg_req *req, void *ud)
{
	struct usage *u = ud;
	const struct lg_host *h = u->host;
	const struct lg_principal *who;
	int64_t start, end, user_id, org_id;
	struct day_page page;
	const char *from, *to, *lo, *hi;
	struct sql q = { .len = 0 };

	if (!usage_range(h, req, &start, &end) || !day_page(h, req, start, end, &page) ||
	    !api_query_int(h, req, "user_id", 0, 1, INT64_MAX / 2, &user_id) ||
	    !api_query_int(h, req, "organization_id", 0, 1, INT64_MAX / 2, &org_id) ||
	    !(who = caller(u, req, user_id, org_id)))
		return;
	if (!(from = api_id_text(h, req, page.from)) || !(to = api_id_text(h, req, page.to)) ||
	    !(lo = api_id_text(h, req, page.lo)) || !(hi = api_id_text(h, req, page.hi)))
		return;
	sql_add(&q, "WITH agg AS (SELECT floor(extract(epoch FROM created) / 86400)::bigint "
		"AS day, count(*) AS requests, sum(prompt_tokens) AS prompt_tokens, "
		"sum(completion_tokens) AS completion_tokens, sum(total_tokens) AS total_tokens, "
		"sum(cost) AS cost, sum(kwh) AS kwh, sum(kgco2eq) AS kgco2eq FROM usage "
		"WHERE created >= to_timestamp($%d::bigint) AND created < to_timestamp($%d::bigint) "
		"AND status BETWEEN 200 AND 299", sql_param(&q, from), sql_param(&q, to));
	if (!add_owner(u, req, who, user_id, org_id, &q) || !add_endpoint(u, req, &q))
		return;
	add_models(u, req, &q);
	if (!add_key(u, req, &q))
		return;
	sql_add(&q, " GROUP BY 1) "
		"SELECT json_build_object('object', 'list', 'data', coalesce(json_agg("
		"json_build_object('object', 'usage.bucket', 'start_time', d.day * 86400, "
		"'end_time', (d.day + 1) * 86400, 'requests', coalesce(a.requests, 0), "
		"'prompt_tokens', coalesce(a.prompt_tokens, 0), "
		"'completion_tokens', coalesce(a.completion_tokens, 0), "
		"'total_tokens', coalesce(a.total_tokens, 0), "
		"'cost', round(coalesce(a.cost, 0)::numeric, 6)::float8, "
		"'impacts', json_build_object('kWh', coalesce(a.kwh, 0), "
		"'kgCO2eq', coalesce(a.kgco2eq, 0))) ORDER BY d.day DESC), '[]'::json)) "
		"FROM generate_series($%d::bigint, $%d::bigint) AS d(day) "
		"LEFT JOIN agg a ON a.day = d.day", sql_param(&q, lo), sql_param(&q, hi));
	run(u, req, &q);
}

/* ---- GET /v1/me/usage ---- */

static bool me_range(const struct lg_host *h, struct lg_req *req, int64_t *start, int64_t *end)
{
	int64_t now = (int64_t)time(NULL);

	/* end_time is exclusive: by default this second's calls are in. */
	if (!api_query_int(h, req, "end_time", now + 1, 0, TIME_MAX, end) ||
	    !api_query_int(h, req, "start_time", *end - ME_DEFAULT_SPAN_S > 0 ?
			   *end - ME_DEFAULT_SPAN_S : 0, 0, TIME_MAX, start))
		return false;
	if (*end < *start) {
		h->reply_error(req, 422, "end_time: must not be before start_time");
		return false;
	}
	return true;
}

static void route_me_usage(struct lg_req *req, void *ud)
{
	static const char *const sort_by[] = { "created", NULL };
	struct usage *u = ud;
	const struct lg_host *h = u->host;
	const struct lg_principal *who;
	struct api_page page;
	int64_t start, end;
	const char *from, *to, *order;
	struct sql q = { .len = 0 };

	if (!me_range(h, req, &start, &end) || !api_page(h, req, sort_by, &page) ||
	    !(who = caller(u, req, 0, 0)))
		return;
	if (!(from = api_id_text(h, req, start)) || !(to = api_id_text(h, req, end)))
		return;
	/* Newest first unless the caller asks otherwise. */
	order = h->req_query(req, "sort_order") ? page.order_sql : "DESC";
	sql_add(&q, "SELECT json_build_object('object', 'list', 'data', coalesce(json_agg("
		"json_build_object('object', 'me.usage', 'request_id', p.request_id, "
		"'model', p.model_name, 'key', p.key_name, 'endpoint', p.endpoint, "
		"'method', p.method, 'status', p.status, 'usage', json_build_object("
		"'prompt_tokens', p.prompt_tokens, 'completion_tokens', p.completion_tokens, "
		"'total_tokens', p.total_tokens, 'cost', p.cost, 'impacts', json_build_object("
		"'kWh', p.kwh, 'kgCO2eq', p.kgco2eq), 'metrics', json_build_object("
		"'latency', round(p.latency_ms)::bigint, 'ttft', round(p.ttft_ms)::bigint)), "
		"'created', floor(extract(epoch FROM p.created))::bigint) "
		"ORDER BY p.created %s, p.record_id %s), '[]'::json)) FROM ("
		"SELECT record_id, created, request_id, model_name, key_name, endpoint, method, "
		"status, prompt_tokens, completion_tokens, total_tokens, cost, kwh, kgco2eq, "
		"latency_ms, ttft_ms FROM usage WHERE created >= to_timestamp($%d::bigint) "
		"AND created < to_timestamp($%d::bigint) AND status BETWEEN 200 AND 299",
		order, order, sql_param(&q, from), sql_param(&q, to));
	if (!add_owner(u, req, who, 0, 0, &q) || !add_endpoint(u, req, &q))
		return;
	sql_add(&q, " ORDER BY created %s, record_id %s OFFSET $%d::bigint LIMIT $%d::bigint) p",
		order, order, sql_param(&q, page.offset_text), sql_param(&q, page.limit_text));
	run(u, req, &q);
}

int usage_queries_init(struct usage *u)
{
	const struct lg_route routes[] = {
		{ sizeof(struct lg_route), "GET", "/v1/usage", LG_POLICY_KEY, 0, route_usage },
		{ sizeof(struct lg_route), "GET", "/v1/me/usage", LG_POLICY_KEY, 0,
		  route_me_usage },
	};
	int rc;

	for (size_t i = 0; i < LG_COUNT(routes); i++) {
		rc = u->host->route_add(u->self, &routes[i], u);
		if (rc < 0) {
			u->host->set_error(u->self, "cannot serve %s: %s", routes[i].path,
					   strerror(-rc));
			return rc;
		}
	}
	return 0;
}
