/* SPDX-License-Identifier: Apache-2.0 */
/* auth: GET and PATCH /v1/me (spec §3.2), and the helpers every api_*.c
 * file shares: JSON answered straight from PostgreSQL, paged lists, route
 * tables. Objects are built in SQL with json_build_object, and every value
 * from a client travels as a query parameter. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "auth.h"

#define LIST_FILTERS_MAX 6

void auth_api_sql(struct auth *a, struct lg_req *req, const struct auth_reply *how,
		  const char *sql, int n, const char *const *params)
{
	struct api_json_reply *r = a->host->req_alloc(req, sizeof *r);

	if (!r) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	*r = (struct api_json_reply){
		.host = a->host, .self = a->self, .req = req, .status = how->status,
		.not_found = how->not_found, .constraints = how->constraints,
		.conflict = how->conflict,
	};
	api_query(a->host, a->self, req, sql, n, params, api_json_reply_cb, r);
}

void auth_api_list(struct auth *a, struct lg_req *req, const struct api_list *l,
		   const char *const *filters, int nfilters)
{
	static const struct auth_reply ok = { .status = 200 };
	const char *params[2 + LIST_FILTERS_MAX];
	char *sql;

	if (nfilters > LIST_FILTERS_MAX) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	sql = api_list_sql(a->host, req, l, filters, nfilters, params);
	if (sql)
		auth_api_sql(a, req, &ok, sql, 2 + nfilters, params);
}

int auth_api_routes(struct auth *a, const struct auth_route *routes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		struct lg_route r = {
			.size = sizeof r, .method = routes[i].method, .path = routes[i].path,
			.policy = routes[i].policy, .fn = routes[i].fn,
		};
		int rc = a->host->route_add(a->self, &r, a);

		if (rc < 0) {
			a->host->set_error(a->self, "cannot add the route %s %s", r.method, r.path);
			return rc;
		}
	}
	return 0;
}

/* ---- GET /v1/me ---- */

#define USER_INFO_JSON \
	"json_build_object('object', 'userInfo', 'id', u.id, 'email', u.email, 'name', u.name, " \
	"'organization_id', u.organization_id, 'organization', u.organization_id, " \
	"'role_id', u.role_id, 'budget', u.budget::float8, 'permissions', coalesce((" \
	"SELECT json_agg(p.permission ORDER BY p.permission) FROM permission p " \
	"WHERE p.role_id = u.role_id), '[]'::json), 'limits', coalesce((" \
	"SELECT json_agg(json_build_object('router_id', l.model_id, 'model_id', l.model_id, " \
	"'type', l.type, 'value', l.value) ORDER BY l.model_id, l.type) FROM role_limit l " \
	"WHERE l.role_id = u.role_id), '[]'::json), " \
	"'expires', extract(epoch FROM u.expires)::bigint, 'priority', u.priority, " \
	"'created', extract(epoch FROM u.created)::bigint, " \
	"'updated', extract(epoch FROM u.updated)::bigint)"

static const char me_sql[] =
	"SELECT " USER_INFO_JSON "::text FROM \"user\" u WHERE u.id = $1::bigint";

/* The master key is a principal without a user row: it has every right. */
static void reply_master_info(struct auth *a, struct lg_req *req)
{
	json_t *info = json_pack("{s:s, s:i, s:n, s:s, s:n, s:n, s:n, s:n, "
				 "s:[s, s, s, s], s:[], s:n, s:i}",
				 "object", "userInfo", "id", 0, "email", "name", "master",
				 "organization_id", "organization", "role_id", "budget",
				 "permissions", "admin", "create_public_collection",
				 "provide_models", "read_metric", "limits", "expires",
				 "priority", 0);

	api_reply_json(a->host, req, 200, info);
}

static void route_me(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const struct lg_principal *who = a->host->req_principal(req);
	const char *id;
	const struct auth_reply how = { .status = 200 };
	struct auth_reply found = how;

	if (!who || who->user_id == 0) {
		reply_master_info(a, req);
		return;
	}
	id = api_id_text(a->host, req, who->user_id);
	found.not_found = id ? api_printf(a->host, req, "User %s not found.", id) : NULL;
	if (!found.not_found)
		return;
	auth_api_sql(a, req, &found, me_sql, 1, &id);
}

/* ---- PATCH /v1/me ---- */

/* Emails are unique whatever their case (migration 0002). */
static const char *const user_constraints[] = { "user_email_key", "user_email_lower_key",
						NULL };
#define MSG_TOO_MANY "Too many password attempts, please try again later."

static const char me_password_sql[] =
	"SELECT password FROM \"user\" WHERE id = $1::bigint";

/* $2: whether the name is set ($3, may be NULL), $4 the email or NULL,
 * $5 the new password hash or NULL. */
static const char me_update_sql[] =
	"UPDATE \"user\" SET name = CASE WHEN $2::bool THEN $3 ELSE name END, "
	"email = coalesce($4, email), password = coalesce($5, password) "
	"WHERE id = $1::bigint RETURNING id";

struct me_patch {
	struct auth *a;
	struct lg_req *req;
	int64_t user_id;
	const char *id_text;
	bool name_set;
	const char *name, *email;
	const char *current, *password;
	char *stored;                   /* the stored hash, request memory */
};

static void me_updated(const PGresult *res, const char *error, void *arg)
{
	struct me_patch *p = arg;
	const struct lg_host *h = p->a->host;

	if (error) {
		api_db_failed(h, p->a->self, p->req, error, user_constraints,
			      AUTH_MSG_USER_EXISTS);
		return;
	}
	if (PQntuples(res) < 1) {
		h->reply_error(p->req, 404, "User %s not found.", p->id_text);
		return;
	}
	/* The email is part of what the cache holds about the user's keys. */
	if (p->a->cache)
		auth_cache_forget_user(p->a->cache, p->user_id);
	api_reply_empty(h, p->req);
}

static void me_update(struct me_patch *p, const char *hash)
{
	const char *params[5] = {
		p->id_text, p->name_set ? "true" : "false", p->name, p->email, hash,
	};

	api_query(p->a->host, p->a->self, p->req, me_update_sql, 5, params, me_updated, p);
}

static void me_hashed(void *arg, const char *encoded)
{
	struct me_patch *p = arg;

	if (!encoded) {
		p->a->host->reply_error(p->req, 500, API_INTERNAL_ERROR);
		return;
	}
	me_update(p, encoded);
}

static void me_verified(void *arg, bool ok)
{
	struct me_patch *p = arg;
	int rc;

	if (!ok) {
		p->a->host->reply_error(p->req, 401, "Invalid current password.");
		return;
	}
	auth_attempt_succeeded(p->a, p->user_id, NULL);
	rc = auth_password_hash(p->a, p->password, me_hashed, p);
	if (rc < 0)
		auth_password_refused(p->a, p->req, rc);
}

static void me_password_read(const PGresult *res, const char *error, void *arg)
{
	struct me_patch *p = arg;
	const struct lg_host *h = p->a->host;
	const char *stored = NULL;
	int rc;

	if (error) {
		api_db_failed(h, p->a->self, p->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) < 1) {
		h->reply_error(p->req, 404, "User %s not found.", p->id_text);
		return;
	}
	/* The result is freed when this returns; the check runs later. */
	if (!PQgetisnull(res, 0, 0)) {
		p->stored = api_printf(h, p->req, "%s", PQgetvalue(res, 0, 0));
		if (!p->stored)
			return;
		stored = p->stored;
	}
	rc = auth_password_verify(p->a, stored, p->current, me_verified, p);
	if (rc < 0)
		auth_password_refused(p->a, p->req, rc);
}

static bool me_patch_read(struct me_patch *p, const json_t *body)
{
	const struct lg_host *h = p->a->host;

	if (!api_str(h, p->req, body, "name", API_OPTIONAL, 1, 254, &p->name) ||
	    !api_str(h, p->req, body, "email", API_OPTIONAL, 1, 254, &p->email) ||
	    !api_secret(h, p->req, body, "current_password", API_OPTIONAL, 0, AUTH_PASSWORD_MAX,
			&p->current) ||
	    !api_secret(h, p->req, body, "password", API_OPTIONAL, AUTH_PASSWORD_MIN,
			AUTH_PASSWORD_MAX, &p->password))
		return false;
	/* A null name clears it; a null email or password changes nothing. */
	p->name_set = p->name || api_is_null(body, "name");
	return true;
}

static void route_me_patch(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const struct lg_principal *who = a->host->req_principal(req);
	struct me_patch *p;
	json_t *body;
	bool ok;

	if (!who || who->user_id == 0) {
		a->host->reply_error(req, 400, AUTH_MSG_MASTER_NO_USER);
		return;
	}
	p = a->host->req_alloc(req, sizeof *p);
	if (!p) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	p->a = a;
	p->req = req;
	p->user_id = who->user_id;
	p->id_text = api_id_text(a->host, req, who->user_id);
	if (!p->id_text)
		return;
	body = a->host->req_json(req);
	if (!body)
		return;
	/* Fields that grant rights (role, budget, organization, expiry) are
	 * not read here: only the admin routes set them. */
	ok = me_patch_read(p, body);
	json_decref(body);
	if (!ok)
		return;
	if (!p->password) {
		me_update(p, NULL);
		return;
	}
	if (!p->current) {
		a->host->reply_error(req, 401, "Invalid current password.");
		return;
	}
	/* The same attempts per minute as the account's logins: the current
	 * password must not be guessable here either. */
	if (!auth_attempt_allowed(a, p->user_id, NULL)) {
		auth_attempts_refused(a, req, p->user_id, NULL, MSG_TOO_MANY);
		return;
	}
	api_query(a->host, a->self, req, me_password_sql, 1, &p->id_text, me_password_read, p);
}

static const struct auth_route me_routes[] = {
	{ "GET", "/v1/me", LG_POLICY_KEY, route_me },
	{ "GET", "/v1/me/info", LG_POLICY_KEY, route_me },      /* deprecated */
	{ "PATCH", "/v1/me", LG_POLICY_KEY, route_me_patch },
};

int auth_api_me_register(struct auth *a)
{
	return auth_api_routes(a, me_routes, LG_COUNT(me_routes));
}
