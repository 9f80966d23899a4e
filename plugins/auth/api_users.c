/* SPDX-License-Identifier: Apache-2.0 */
/* auth: /v1/admin/users (spec §3.3). A create or an update is validated
 * here, then handed to PostgreSQL as one JSON object holding only the
 * fields the client sent (null clears a field), so one statement serves
 * every combination. Passwords are hashed (Argon2id, off the loop) before
 * the statement runs. The last user with the admin permission (expired
 * users do not count) can be neither deleted, nor moved to a role without
 * it, nor given an expiry date (409). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "auth.h"

#define EMAIL_MAX 254
#define NAME_MAX_CHARS 254
#define BUDGET_MAX 1e13                 /* NUMERIC(20, 6) */
#define EXPIRES_MAX INT64_C(253402300799) /* 9999-12-31 */
#define PRIORITY_MAX INT32_MAX

#define LAST_ADMIN "The last user with the admin permission cannot lose it or be removed."
#define LAST_ADMIN_EXPIRES "The last user with the admin permission cannot be given an " \
	"expiry date."

#define USER_JSON \
	"json_build_object('object', 'user', 'id', u.id, 'email', u.email, 'name', u.name, " \
	"'sub', u.sub, 'iss', u.iss, 'role_id', u.role_id, 'role', u.role_id, " \
	"'organization_id', u.organization_id, 'organization', u.organization_id, " \
	"'budget', u.budget::float8, 'expires', extract(epoch FROM u.expires)::bigint, " \
	"'priority', u.priority, 'created', extract(epoch FROM u.created)::bigint, " \
	"'updated', extract(epoch FROM u.updated)::bigint)"

/* Every statement that can take admin away from the last user who has it
 * (user PATCH and DELETE here, role PATCH and DELETE in api_roles.c)
 * first takes this transaction-level lock, so such statements run one
 * after the other. The lock is taken inside the statement, after its
 * snapshot: what the one before it changed is seen through the row locks
 * of ADMINS_CTE, since PostgreSQL checks the newest version of every row it
 * locks (a user moved, expired or deleted, or a permission deleted
 * meanwhile, drops out). Rows added meanwhile stay unseen, which can only
 * refuse a change, never allow one. Key space 'lga' (0x6c6761), 1; the
 * same in api_roles.c. */
#define ADMIN_LOCK_CTE \
	"lk AS MATERIALIZED (SELECT pg_advisory_xact_lock(7104353, 1)::text AS held)"
#define AFTER_LOCK "EXISTS (SELECT 1 FROM lk)"

/* The users who hold admin now: their role has the permission and they
 * have not expired. Locked, see ADMIN_LOCK_CTE. */
#define ADMINS_CTE \
	"admins AS (SELECT a.id, a.role_id FROM \"user\" a JOIN permission p " \
	"ON p.role_id = a.role_id WHERE p.permission = 'admin' " \
	"AND (a.expires IS NULL OR a.expires > now()) AND " AFTER_LOCK " FOR SHARE OF a, p)"

static const char *const user_constraints[] = { "user_email_key", "user_email_lower_key",
						 NULL };
static const char *const user_sort_by[] = { "id", "name", "created", "email", NULL };
static const char *const user_sort_columns[] = { "u.id", "u.name", "u.created", "u.email",
						 NULL };

/* $1: the fields (jsonb), $2: the password hash or NULL. Returns whether
 * the role and the organization exist, and the new user. */
static const char user_insert_sql[] =
	"WITH f AS (SELECT $1::jsonb AS v), "
	"r AS (SELECT id FROM role WHERE id = (SELECT (v->>'role_id')::bigint FROM f)), "
	"o AS (SELECT id FROM organization WHERE id = coalesce((SELECT "
	"(v->>'organization_id')::bigint FROM f), (SELECT min(id) FROM organization "
	"WHERE name = 'default'))), "
	"ins AS (INSERT INTO \"user\" AS u (email, password, name, role_id, organization_id, "
	"budget, expires, priority) SELECT f.v->>'email', $2, f.v->>'name', r.id, o.id, "
	"(f.v->>'budget')::numeric, to_timestamp((f.v->>'expires')::bigint), "
	"coalesce((f.v->>'priority')::int, 0) FROM f, r, o RETURNING " USER_JSON " AS obj) "
	"SELECT (SELECT count(*) FROM r), (SELECT count(*) FROM o), "
	"(SELECT obj::text FROM ins)";

/* $1: the user, $2: the fields, $3: the password hash or NULL. "last" is
 * 1 when the last admin would lose the permission, 2 when it would be
 * given an expiry date (any date: it would end admin later, with no
 * statement left to refuse it). */
static const char user_update_sql[] =
	"WITH f AS (SELECT $2::jsonb AS v), " ADMIN_LOCK_CTE ", "
	"cur AS (SELECT id, role_id, organization_id FROM \"user\" WHERE id = $1::bigint "
	"AND " AFTER_LOCK " FOR UPDATE), "
	"r AS (SELECT id FROM role WHERE id = coalesce((SELECT (v->>'role_id')::bigint FROM f), "
	"(SELECT role_id FROM cur))), "
	"o AS (SELECT id FROM organization WHERE id = coalesce((SELECT "
	"(v->>'organization_id')::bigint FROM f), (SELECT organization_id FROM cur))), "
	ADMINS_CTE ", "
	"loses AS (SELECT NOT EXISTS (SELECT 1 FROM permission p, r "
	"WHERE p.role_id = r.id AND p.permission = 'admin') AS role, "
	"(SELECT v ? 'expires' AND v->>'expires' IS NOT NULL FROM f) AS expiry), "
	"last AS (SELECT CASE WHEN role THEN 1 ELSE 2 END AS why FROM loses "
	"WHERE (role OR expiry) AND (SELECT id FROM cur) IN (SELECT id FROM admins) "
	"AND (SELECT count(*) FROM admins) <= 1), "
	"up AS (UPDATE \"user\" AS u SET email = coalesce(f.v->>'email', u.email), "
	"password = coalesce($3, u.password), "
	"name = CASE WHEN f.v ? 'name' THEN f.v->>'name' ELSE u.name END, "
	"role_id = r.id, organization_id = o.id, "
	"budget = CASE WHEN f.v ? 'budget' THEN (f.v->>'budget')::numeric ELSE u.budget END, "
	"expires = CASE WHEN f.v ? 'expires' THEN to_timestamp((f.v->>'expires')::bigint) "
	"ELSE u.expires END, priority = coalesce((f.v->>'priority')::int, u.priority) "
	"FROM f, r, o WHERE u.id = (SELECT id FROM cur) AND NOT EXISTS (SELECT 1 FROM last) "
	"RETURNING " USER_JSON " AS obj) "
	"SELECT (SELECT count(*) FROM cur), (SELECT count(*) FROM r), (SELECT count(*) FROM o), "
	"coalesce((SELECT why FROM last), 0), (SELECT obj::text FROM up)";

static const char user_delete_sql[] =
	"WITH " ADMIN_LOCK_CTE ", "
	"cur AS (SELECT id FROM \"user\" WHERE id = $1::bigint AND " AFTER_LOCK " FOR UPDATE), "
	ADMINS_CTE ", "
	"last AS (SELECT 1 WHERE (SELECT id FROM cur) IN (SELECT id FROM admins) "
	"AND (SELECT count(*) FROM admins) <= 1), "
	"d AS (DELETE FROM \"user\" WHERE id = (SELECT id FROM cur) "
	"AND NOT EXISTS (SELECT 1 FROM last) RETURNING id) "
	"SELECT (SELECT count(*) FROM cur), (SELECT count(*) FROM last), (SELECT count(*) FROM d)";

static const char user_get_sql[] =
	"SELECT " USER_JSON "::text FROM \"user\" u WHERE u.id = $1::bigint";

/* One create, update or delete on its way. */
struct user_op {
	struct auth *a;
	struct lg_req *req;
	bool create;
	int64_t id;                     /* update, delete */
	const char *id_text;
	const char *fields;             /* the validated body as JSON */
	const char *password;           /* to hash, or NULL */
	int64_t role_id, organization_id;       /* as sent, 0 when not */
};

/* ---- reading a body ---- */

/* @v into @out; 500 when memory runs out. */
static bool put(struct user_op *op, json_t *out, const char *key, json_t *v)
{
	if (json_object_set_new(out, key, v) == 0)
		return true;
	op->a->host->reply_error(op->req, 500, API_INTERNAL_ERROR);
	return false;
}

/* An id under its name or its older one ("role" for "role_id"), copied to
 * @out under its name. */
static bool read_id(struct user_op *op, const json_t *body, json_t *out, const char *key,
		    const char *old_key, enum api_field f, int64_t *id)
{
	const char *src = !json_object_get(body, key) && json_object_get(body, old_key) ?
			  old_key : key;
	bool present;

	*id = 0;
	if (!api_int(op->a->host, op->req, body, src, f, 1, INT64_MAX / 2, &present, id))
		return false;
	return !present || put(op, out, key, json_integer(*id));
}

/* A string member copied to @out, or a null one for nullable fields. */
static bool read_str(struct user_op *op, const json_t *body, json_t *out, const char *key,
		     enum api_field f, size_t min, size_t max, bool nullable)
{
	const char *s;

	if (!api_str(op->a->host, op->req, body, key, f, min, max, &s))
		return false;
	if (s)
		return put(op, out, key, json_string(s));
	if (nullable && api_is_null(body, key))
		return put(op, out, key, json_null());
	return true;
}

static bool read_nullable_number(struct user_op *op, const json_t *body, json_t *out,
				 const char *key, bool integer, double max)
{
	const struct lg_host *h = op->a->host;
	bool present;
	int64_t i;
	double d;

	if (api_is_null(body, key))
		return put(op, out, key, json_null());
	if (integer) {
		if (!api_int(h, op->req, body, key, API_OPTIONAL, 0, (int64_t)max, &present, &i))
			return false;
		return !present || put(op, out, key, json_integer(i));
	}
	if (!api_num(h, op->req, body, key, API_OPTIONAL, 0, max, &present, &d))
		return false;
	return !present || put(op, out, key, json_real(d));
}

/* The body's fields, validated, as one JSON object in the request's
 * memory (op->fields); false once the request is answered. */
static bool user_fields(struct user_op *op, const json_t *body)
{
	const struct lg_host *h = op->a->host;
	enum api_field must = op->create ? API_REQUIRED : API_OPTIONAL;
	json_t *out = json_object();
	bool present = false, ok;
	int64_t priority;
	char *text;

	if (!out) {
		h->reply_error(op->req, 500, API_INTERNAL_ERROR);
		return false;
	}
	ok = read_str(op, body, out, "email", must, 1, EMAIL_MAX, false) &&
	     api_secret(h, op->req, body, "password", API_OPTIONAL, AUTH_PASSWORD_MIN,
			AUTH_PASSWORD_MAX, &op->password) &&
	     read_str(op, body, out, "name", API_OPTIONAL, 1, NAME_MAX_CHARS, true) &&
	     read_id(op, body, out, "role_id", "role", must, &op->role_id) &&
	     read_id(op, body, out, "organization_id", "organization", API_OPTIONAL,
		     &op->organization_id) &&
	     read_nullable_number(op, body, out, "budget", false, BUDGET_MAX) &&
	     read_nullable_number(op, body, out, "expires", true, (double)EXPIRES_MAX) &&
	     api_int(h, op->req, body, "priority", API_OPTIONAL, 0, PRIORITY_MAX, &present,
		     &priority);
	if (ok && present)
		ok = put(op, out, "priority", json_integer(priority));
	if (!ok) {
		json_decref(out);
		return false;
	}
	text = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	op->fields = text ? api_printf(h, op->req, "%s", text) : NULL;
	free(text);
	if (!op->fields && !text)
		h->reply_error(op->req, 500, API_INTERNAL_ERROR);
	return op->fields != NULL;
}

/* ---- create and update ---- */

static void reply_missing_org(struct user_op *op)
{
	if (op->organization_id)
		op->a->host->reply_error(op->req, 404, "Organization %" PRId64 " not found.",
					 op->organization_id);
	else
		op->a->host->reply_error(op->req, 404, "Organization default not found.");
}

static void user_written(const PGresult *res, const char *error, void *arg)
{
	struct user_op *op = arg;
	const struct lg_host *h = op->a->host;
	int col = 0;

	if (error) {
		api_db_failed(h, op->a->self, op->req, error, user_constraints,
			      AUTH_MSG_USER_EXISTS);
		return;
	}
	if (!op->create && strcmp(PQgetvalue(res, 0, col++), "0") == 0) {
		h->reply_error(op->req, 404, "User %s not found.", op->id_text);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, col++), "0") == 0) {
		h->reply_error(op->req, 404, "Role %" PRId64 " not found.", op->role_id);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, col++), "0") == 0) {
		reply_missing_org(op);
		return;
	}
	if (!op->create && strcmp(PQgetvalue(res, 0, col++), "0") != 0) {
		h->reply_error(op->req, 409, "%s", strcmp(PQgetvalue(res, 0, col - 1), "1") == 0 ?
			       LAST_ADMIN : LAST_ADMIN_EXPIRES);
		return;
	}
	if (PQgetisnull(res, 0, col)) {
		h->reply_error(op->req, 500, API_INTERNAL_ERROR);
		return;
	}
	if (!op->create && op->a->cache)
		auth_cache_forget_user(op->a->cache, op->id);
	api_reply_raw(h, op->req, op->create ? 201 : 200, PQgetvalue(res, 0, col));
}

static void user_write(struct user_op *op, const char *hash)
{
	const char *params[3];

	if (op->create) {
		params[0] = op->fields;
		params[1] = hash;
		api_query(op->a->host, op->a->self, op->req, user_insert_sql, 2, params,
			  user_written, op);
		return;
	}
	params[0] = op->id_text;
	params[1] = op->fields;
	params[2] = hash;
	api_query(op->a->host, op->a->self, op->req, user_update_sql, 3, params, user_written,
		  op);
}

static void user_hashed(void *arg, const char *encoded)
{
	struct user_op *op = arg;

	if (!encoded) {
		op->a->host->reply_error(op->req, 500, API_INTERNAL_ERROR);
		return;
	}
	user_write(op, encoded);
}

static struct user_op *user_op_new(struct auth *a, struct lg_req *req, bool create)
{
	struct user_op *op = a->host->req_alloc(req, sizeof *op);

	if (!op) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return NULL;
	}
	op->a = a;
	op->req = req;
	op->create = create;
	if (create)
		return op;
	if (!api_path_id(a->host, req, "user_id", &op->id))
		return NULL;
	op->id_text = api_id_text(a->host, req, op->id);
	return op->id_text ? op : NULL;
}

static void user_save(struct lg_req *req, void *ud, bool create)
{
	struct user_op *op = user_op_new(ud, req, create);
	json_t *body;
	bool ok;
	int rc;

	if (!op)
		return;
	body = op->a->host->req_json(req);
	if (!body)
		return;
	ok = user_fields(op, body);
	json_decref(body);
	if (!ok)
		return;
	if (!op->password) {
		user_write(op, NULL);
		return;
	}
	rc = auth_password_hash(op->a, op->password, user_hashed, op);
	if (rc < 0)
		auth_password_refused(op->a, req, rc);
}

static void route_user_create(struct lg_req *req, void *ud)
{
	user_save(req, ud, true);
}

static void route_user_patch(struct lg_req *req, void *ud)
{
	user_save(req, ud, false);
}

/* ---- reading and deleting ---- */

static void route_user_get(struct lg_req *req, void *ud)
{
	struct user_op *op = user_op_new(ud, req, false);
	struct auth_reply how = { .status = 200 };

	if (!op)
		return;
	how.not_found = api_printf(op->a->host, req, "User %s not found.", op->id_text);
	if (how.not_found)
		auth_api_sql(op->a, req, &how, user_get_sql, 1, &op->id_text);
}

static void route_user_list(struct lg_req *req, void *ud)
{
	static const struct api_list list = {
		.from = "\"user\" u", .alias = "u",
		.where = "($3::bigint IS NULL OR u.role_id = $3::bigint) AND "
			 "($4::bigint IS NULL OR u.organization_id = $4::bigint) AND "
			 "($5::text IS NULL OR strpos(lower(u.email), lower($5::text)) > 0)",
		.object = USER_JSON, .sort_by = user_sort_by, .sort_columns = user_sort_columns,
	};
	struct auth *a = ud;
	const struct lg_host *h = a->host;
	const char *filters[3] = { NULL, NULL, h->req_query(req, "email") };
	static const char *const names[2] = { "role", "organization" };
	int64_t id;

	for (int i = 0; i < 2; i++) {
		if (!api_query_int(h, req, names[i], 0, 1, INT64_MAX / 2, &id))
			return;
		if (h->req_query(req, names[i]) && !(filters[i] = api_id_text(h, req, id)))
			return;
	}
	if (filters[2] && strlen(filters[2]) > EMAIL_MAX) {
		h->reply_error(req, 422, "email: expected at most %d characters", EMAIL_MAX);
		return;
	}
	auth_api_list(a, req, &list, filters, 3);
}

static void user_deleted(const PGresult *res, const char *error, void *arg)
{
	struct user_op *op = arg;
	const struct lg_host *h = op->a->host;

	if (error) {
		api_db_failed(h, op->a->self, op->req, error, NULL, NULL);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
		h->reply_error(op->req, 404, "User %s not found.", op->id_text);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "0") != 0) {
		h->reply_error(op->req, 409, LAST_ADMIN);
		return;
	}
	/* The user's keys went with it (ON DELETE CASCADE). */
	if (op->a->cache)
		auth_cache_forget_user(op->a->cache, op->id);
	api_reply_empty(h, op->req);
}

static void route_user_delete(struct lg_req *req, void *ud)
{
	struct user_op *op = user_op_new(ud, req, false);

	if (op)
		api_query(op->a->host, op->a->self, req, user_delete_sql, 1, &op->id_text,
			  user_deleted, op);
}

static const struct auth_route user_routes[] = {
	{ "POST", "/v1/admin/users", LG_POLICY_ADMIN, route_user_create },
	{ "GET", "/v1/admin/users", LG_POLICY_ADMIN, route_user_list },
	{ "GET", "/v1/admin/users/{user_id}", LG_POLICY_ADMIN, route_user_get },
	{ "PATCH", "/v1/admin/users/{user_id}", LG_POLICY_ADMIN, route_user_patch },
	{ "DELETE", "/v1/admin/users/{user_id}", LG_POLICY_ADMIN, route_user_delete },
};

int auth_api_users_register(struct auth *a)
{
	return auth_api_routes(a, user_routes, LG_COUNT(user_routes));
}
