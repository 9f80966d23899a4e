/* SPDX-License-Identifier: Apache-2.0 */
/* The REST toolkit of llmgate's own plugins: see api.h. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

static bool answered_oom(const struct lg_host *h, struct lg_req *req)
{
	h->reply_error(req, 500, API_INTERNAL_ERROR);
	return false;
}

static const json_t *member(const struct lg_host *h, struct lg_req *req, const json_t *body,
			    const char *key, enum api_field f, bool *ok)
{
	const json_t *v = body ? json_object_get(body, key) : NULL;

	*ok = true;
	if (v && !json_is_null(v))
		return v;
	if (f == API_REQUIRED) {
		h->reply_error(req, 422, "%s: field required", key);
		*ok = false;
	}
	return NULL;
}

static size_t utf8_chars(const char *s, size_t len)
{
	size_t n = 0;

	for (size_t i = 0; i < len; i++)
		n += ((unsigned char)s[i] & 0xC0) != 0x80;
	return n;
}

static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A string member of @min..@max characters, trimmed of blanks when @trim. */
static bool read_string(const struct lg_host *h, struct lg_req *req, const json_t *body,
			const char *key, enum api_field f, size_t min, size_t max, bool trim,
			const char **out)
{
	bool ok;
	const json_t *v = member(h, req, body, key, f, &ok);
	const char *s;
	size_t len, n;
	char *copy;

	*out = NULL;
	if (!v)
		return ok;
	if (!json_is_string(v)) {
		h->reply_error(req, 422, "%s: expected a string", key);
		return false;
	}
	s = json_string_value(v);
	len = json_string_length(v);
	if (memchr(s, '\0', len)) {
		h->reply_error(req, 422, "%s: NUL characters are not allowed", key);
		return false;
	}
	while (trim && len && blank(*s)) {
		s++;
		len--;
	}
	while (trim && len && blank(s[len - 1]))
		len--;
	n = utf8_chars(s, len);
	if (n < min || n > max) {
		h->reply_error(req, 422, "%s: expected %zu to %zu characters", key, min, max);
		return false;
	}
	copy = h->req_alloc(req, len + 1);
	if (!copy)
		return answered_oom(h, req);
	memcpy(copy, s, len);
	*out = copy;
	return true;
}

bool api_str(const struct lg_host *h, struct lg_req *req, const json_t *body, const char *key,
	     enum api_field f, size_t min, size_t max, const char **out)
{
	return read_string(h, req, body, key, f, min, max, true, out);
}

bool api_secret(const struct lg_host *h, struct lg_req *req, const json_t *body,
		const char *key, enum api_field f, size_t min, size_t max, const char **out)
{
	return read_string(h, req, body, key, f, min, max, false, out);
}

bool api_int(const struct lg_host *h, struct lg_req *req, const json_t *body, const char *key,
	     enum api_field f, int64_t min, int64_t max, bool *present, int64_t *out)
{
	bool ok;
	const json_t *v = member(h, req, body, key, f, &ok);
	double d;

	if (present)
		*present = v != NULL;
	if (!v)
		return ok;
	if (json_is_integer(v)) {
		*out = (int64_t)json_integer_value(v);
	} else if (json_is_real(v) && (d = json_real_value(v)) > -9e15 && d < 9e15 &&
		   (double)(int64_t)d == d) {
		*out = (int64_t)d;      /* 300.0 is an integer, as pydantic reads it */
	} else {
		goto bad;
	}
	if (*out >= min && *out <= max)
		return true;
bad:
	h->reply_error(req, 422, "%s: expected an integer from %" PRId64 " to %" PRId64, key, min,
		       max);
	return false;
}

bool api_num(const struct lg_host *h, struct lg_req *req, const json_t *body, const char *key,
	     enum api_field f, double min, double max, bool *present, double *out)
{
	bool ok;
	const json_t *v = member(h, req, body, key, f, &ok);

	if (present)
		*present = v != NULL;
	if (!v)
		return ok;
	*out = json_is_number(v) ? json_number_value(v) : NAN;
	if (isfinite(*out) && *out >= min && *out <= max)
		return true;
	h->reply_error(req, 422, "%s: expected a number from %g to %g", key, min, max);
	return false;
}

bool api_bool(const struct lg_host *h, struct lg_req *req, const json_t *body, const char *key,
	      enum api_field f, bool *present, bool *out)
{
	bool ok;
	const json_t *v = member(h, req, body, key, f, &ok);

	if (present)
		*present = v != NULL;
	if (!v)
		return ok;
	if (!json_is_boolean(v)) {
		h->reply_error(req, 422, "%s: expected true or false", key);
		return false;
	}
	*out = json_is_true(v);
	return true;
}

bool api_is_null(const json_t *body, const char *key)
{
	const json_t *v = body ? json_object_get(body, key) : NULL;

	return v && json_is_null(v);
}

/* A decimal integer of at most 18 digits, optionally negative. */
static bool parse_int(const char *s, int64_t *out)
{
	const char *digits = *s == '-' ? s + 1 : s;
	size_t len = strlen(digits);

	if (len == 0 || len > 18 || strspn(digits, "0123456789") != len)
		return false;
	*out = strtoll(s, NULL, 10);
	return true;
}

bool api_path_id(const struct lg_host *h, struct lg_req *req, const char *name, int64_t *out)
{
	const char *s = h->req_param(req, name);

	if (s && *s != '-' && parse_int(s, out) && *out > 0)
		return true;
	h->reply_error(req, 422, "%s: expected a positive integer", name);
	return false;
}

bool api_query_int(const struct lg_host *h, struct lg_req *req, const char *name, int64_t def,
		   int64_t min, int64_t max, int64_t *out)
{
	const char *s = h->req_query(req, name);

	if (!s) {
		*out = def;
		return true;
	}
	if (parse_int(s, out) && *out >= min && *out <= max)
		return true;
	h->reply_error(req, 422, "%s: expected an integer from %" PRId64 " to %" PRId64, name, min,
		       max);
	return false;
}

bool api_query_choice(const struct lg_host *h, struct lg_req *req, const char *name,
		      const char *const *choices, size_t def, size_t *out)
{
	const char *s = h->req_query(req, name);
	char list[256];
	size_t used = 0;

	*out = def;
	if (!s)
		return true;
	for (size_t i = 0; choices[i]; i++) {
		if (strcmp(choices[i], s) == 0) {
			*out = i;
			return true;
		}
	}
	list[0] = '\0';
	for (size_t i = 0; choices[i] && used < sizeof list; i++) {
		int n = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", choices[i]);

		if (n < 0)
			break;
		used += (size_t)n;
	}
	h->reply_error(req, 422, "%s: expected one of %s", name, list);
	return false;
}

bool api_page(const struct lg_host *h, struct lg_req *req, const char *const *sort_by,
	      struct api_page *out)
{
	static const char *const orders[] = { "asc", "desc", NULL };
	size_t order;

	if (!api_query_int(h, req, "offset", 0, 0, API_OFFSET_MAX, &out->offset) ||
	    !api_query_int(h, req, "limit", 10, 1, 100, &out->limit) ||
	    !api_query_choice(h, req, "sort_by", sort_by, 0, &out->sort) ||
	    !api_query_choice(h, req, "sort_order", orders, 0, &order))
		return false;
	out->order_sql = order ? "DESC" : "ASC";
	out->offset_text = api_id_text(h, req, out->offset);
	out->limit_text = out->offset_text ? api_id_text(h, req, out->limit) : NULL;
	return out->limit_text != NULL;
}

char *api_list_sql(const struct lg_host *h, struct lg_req *req, const struct api_list *l,
		   const char *const *filters, int nfilters, const char **params)
{
	struct api_page page;
	const char *col, *dir;
	char *sql;

	if (!api_page(h, req, l->sort_by, &page))
		return NULL;
	col = l->sort_columns[page.sort];
	dir = page.order_sql;
	/* The column and direction come from the caller's fixed tables. */
	sql = api_printf(h, req,
			 "SELECT json_build_object('object', 'list', 'total', "
			 "(SELECT count(*) FROM %s WHERE %s), 'offset', $1::bigint, "
			 "'limit', $2::bigint, 'data', coalesce((SELECT json_agg(s.j ORDER BY s.n) "
			 "FROM (SELECT %s AS j, row_number() OVER (ORDER BY %s %s, %s.id %s) AS n "
			 "FROM %s WHERE %s ORDER BY %s %s, %s.id %s "
			 "LIMIT $2::bigint OFFSET $1::bigint) AS s), '[]'::json))::text",
			 l->from, l->where, l->object, col, dir, l->alias, dir, l->from, l->where,
			 col, dir, l->alias, dir);
	if (!sql)
		return NULL;
	params[0] = page.offset_text;
	params[1] = page.limit_text;
	for (int i = 0; i < nfilters; i++)
		params[2 + i] = filters[i];
	return sql;
}

char *api_printf(const struct lg_host *h, struct lg_req *req, const char *fmt, ...)
{
	va_list ap;
	int n;
	char *buf;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	buf = n >= 0 ? h->req_alloc(req, (size_t)n + 1) : NULL;
	if (!buf) {
		answered_oom(h, req);
		return NULL;
	}
	va_start(ap, fmt);
	vsnprintf(buf, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return buf;
}

const char *api_id_text(const struct lg_host *h, struct lg_req *req, int64_t id)
{
	return api_printf(h, req, "%" PRId64, id);
}

void api_reply_json(const struct lg_host *h, struct lg_req *req, int status, json_t *root)
{
	char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;

	json_decref(root);
	if (!text) {
		answered_oom(h, req);
		return;
	}
	h->reply(req, status, "application/json", text, strlen(text));
	free(text);
}

void api_reply_raw(const struct lg_host *h, struct lg_req *req, int status, const char *json)
{
	h->reply(req, status, "application/json", json, strlen(json));
}

void api_reply_empty(const struct lg_host *h, struct lg_req *req)
{
	h->reply(req, 204, NULL, "", 0);
}

void api_reply_unavailable(const struct lg_host *h, struct lg_req *req)
{
	(void)h->reply_header(req, "Retry-After", API_RETRY_AFTER);
	h->reply_error(req, 503, API_DB_UNAVAILABLE);
}

bool api_query(const struct lg_host *h, struct lg_plugin *self, struct lg_req *req,
	       const char *sql, int n, const char *const *params, lg_db_fn cb, void *arg)
{
	if (h->db_query(self, sql, n, params, cb, arg) == 0)
		return true;
	api_reply_unavailable(h, req);
	return false;
}

bool api_db_unreachable(const char *error)
{
	static const char *const signs[] = {
		"database unavailable", "database connection lost", "pool is stopping",
		"statement timeout", "lock timeout", "could not connect", "terminating connection",
		"server closed the connection",
	};

	for (size_t i = 0; i < sizeof signs / sizeof *signs; i++)
		if (strstr(error, signs[i]))
			return true;
	return false;
}

void api_db_failed(const struct lg_host *h, struct lg_plugin *self, struct lg_req *req,
		   const char *error, const char *const *constraints, const char *conflict)
{
	for (size_t i = 0; constraints && constraints[i]; i++) {
		if (strstr(error, "duplicate key") && strstr(error, constraints[i])) {
			h->reply_error(req, 409, "%s", conflict);
			return;
		}
	}
	if (api_db_unreachable(error)) {
		api_reply_unavailable(h, req);
		return;
	}
	h->log(self, LG_LOG_ERROR, "query failed: %s", error);
	h->reply_error(req, 500, API_INTERNAL_ERROR);
}

void api_json_reply_cb(const PGresult *res, const char *error, void *arg)
{
	struct api_json_reply *r = arg;

	if (error) {
		api_db_failed(r->host, r->self, r->req, error, r->constraints, r->conflict);
		return;
	}
	if (PQntuples(res) < 1 || PQgetisnull(res, 0, 0)) {
		if (r->not_found)
			r->host->reply_error(r->req, 404, "%s", r->not_found);
		else
			api_reply_raw(r->host, r->req, r->status, "{}");
		return;
	}
	api_reply_raw(r->host, r->req, r->status, PQgetvalue(res, 0, 0));
}
