/* SPDX-License-Identifier: Apache-2.0 */
/* auth: /v1/admin/roles (spec §3.3, §5.2). A role's permissions and limits
 * are written as whole sets: given, they replace what was there, in the
 * same statement as the rest of the change, so no instance ever loads a
 * half-written role. Duplicates in a body collapse, the last one winning.
 * A limit names its model as "model_id" or, in the spec's words,
 * "router_id". The admin permission cannot be taken from the last role
 * whose users (those not expired) hold it (409). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "auth.h"

#define ROLE_NAME_MAX 128
#define LIMITS_MAX 1024

#define ROLE_JSON \
	"json_build_object('object', 'role', 'id', r.id, 'name', r.name, " \
	"'permissions', coalesce((SELECT json_agg(p.permission ORDER BY p.permission) " \
	"FROM permission p WHERE p.role_id = r.id), '[]'::json), " \
	"'limits', coalesce((SELECT json_agg(json_build_object('router_id', l.model_id, " \
	"'model_id', l.model_id, 'type', l.type, 'value', l.value) ORDER BY l.model_id, l.type) " \
	"FROM role_limit l WHERE l.role_id = r.id), '[]'::json), " \
	"'users', (SELECT count(*) FROM \"user\" u WHERE u.role_id = r.id), " \
	"'created', extract(epoch FROM r.created)::bigint, " \
	"'updated', extract(epoch FROM r.updated)::bigint)"

#define ROLE_EXISTS "Role already exists."
#define LAST_ADMIN_ROLE "The admin permission cannot be removed from the last role whose " \
	"users have it."

/* The statements that can take admin away run one after the other: see
 * ADMIN_LOCK_CTE in api_users.c, which takes the same lock (key space
 * 'lga', 1). The users who hold admin now are read under row locks, so
 * that a change committed while this statement waited for the lock is
 * seen. */
#define ADMIN_LOCK_CTE \
	"lk AS MATERIALIZED (SELECT pg_advisory_xact_lock(7104353, 1)::text AS held)"
#define AFTER_LOCK "EXISTS (SELECT 1 FROM lk)"
#define ADMINS_CTE \
	"admins AS (SELECT a.id, a.role_id FROM \"user\" a JOIN permission p " \
	"ON p.role_id = a.role_id WHERE p.permission = 'admin' " \
	"AND (a.expires IS NULL OR a.expires > now()) AND " AFTER_LOCK " FOR SHARE OF a, p)"

/* The limits of a body ($n, jsonb) and the first model among them that
 * does not exist. */
#define LIMITS_CTE(n) \
	"lim AS (SELECT (e->>'model_id')::bigint AS model_id, e->>'type' AS type, " \
	"(e->>'value')::bigint AS value FROM jsonb_array_elements(" n "::jsonb) AS e), " \
	"missing AS (SELECT min(model_id) AS id FROM lim WHERE NOT EXISTS " \
	"(SELECT 1 FROM model m WHERE m.id = lim.model_id))"

static const char *const role_constraints[] = { "role_name_key", NULL };
static const char *const role_sort_by[] = { "id", "name", "created", NULL };
static const char *const role_sort_columns[] = { "r.id", "r.name", "r.created", NULL };
static const char *const permissions[] = {
	"admin", "read_metric", "provide_models", "create_public_collection", NULL,
};
static const char *const limit_types[] = { "tpm", "tpd", "rpm", "rpd", NULL };

/* $1 name, $2 permissions, $3 limits: the new id, or the missing model. */
static const char role_insert_sql[] =
	"WITH " LIMITS_CTE("$3") ", "
	"r AS (INSERT INTO role (name) SELECT $1 WHERE (SELECT id FROM missing) IS NULL "
	"RETURNING id), "
	"p AS (INSERT INTO permission (role_id, permission) SELECT r.id, v "
	"FROM r, jsonb_array_elements_text($2::jsonb) AS v), "
	"l AS (INSERT INTO role_limit (role_id, model_id, type, value) "
	"SELECT r.id, lim.model_id, lim.type, lim.value FROM r, lim) "
	"SELECT (SELECT id FROM r), (SELECT id FROM missing)";

/* $1 id, $2 name or NULL, $3 permissions or NULL, $4 limits or NULL. The
 * deletes and the inserts of a set touch different rows (a row kept is
 * upserted, never deleted and inserted again), as one statement requires. */
static const char role_update_sql[] =
	"WITH " LIMITS_CTE("$4") ", " ADMIN_LOCK_CTE ", "
	"cur AS (SELECT id FROM role WHERE id = $1::bigint AND " AFTER_LOCK " FOR UPDATE), "
	ADMINS_CTE ", "
	"last AS (SELECT 1 WHERE $3::jsonb IS NOT NULL AND NOT ($3::jsonb ? 'admin') "
	"AND EXISTS (SELECT 1 FROM admins WHERE role_id = $1::bigint) "
	"AND NOT EXISTS (SELECT 1 FROM admins WHERE role_id <> $1::bigint)), "
	"r AS (UPDATE role SET name = coalesce($2, name) WHERE id = (SELECT id FROM cur) "
	"AND (SELECT id FROM missing) IS NULL AND NOT EXISTS (SELECT 1 FROM last) "
	"RETURNING id), "
	"dp AS (DELETE FROM permission p USING r WHERE $3::jsonb IS NOT NULL "
	"AND p.role_id = r.id AND NOT ($3::jsonb ? p.permission)), "
	"ip AS (INSERT INTO permission (role_id, permission) SELECT r.id, v "
	"FROM r, jsonb_array_elements_text($3::jsonb) AS v "
	"ON CONFLICT (role_id, permission) DO NOTHING), "
	"dl AS (DELETE FROM role_limit x USING r WHERE $4::jsonb IS NOT NULL "
	"AND x.role_id = r.id AND NOT EXISTS (SELECT 1 FROM lim "
	"WHERE lim.model_id = x.model_id AND lim.type = x.type)), "
	"il AS (INSERT INTO role_limit (role_id, model_id, type, value) "
	"SELECT r.id, lim.model_id, lim.type, lim.value FROM r, lim "
	"ON CONFLICT (role_id, model_id, type) DO UPDATE SET value = EXCLUDED.value) "
	"SELECT (SELECT count(*) FROM cur), (SELECT id FROM missing), "
	"(SELECT count(*) FROM last), (SELECT count(*) FROM r)";

static const char role_get_sql[] =
	"SELECT " ROLE_JSON "::text FROM role r WHERE r.id = $1::bigint";

static const char role_delete_sql[] =
	"WITH " ADMIN_LOCK_CTE ", "
	"cur AS (SELECT id FROM role WHERE id = $1::bigint AND " AFTER_LOCK " FOR UPDATE), "
	"n AS (SELECT count(*) AS users FROM \"user\" WHERE role_id = $1::bigint), "
	"d AS (DELETE FROM role WHERE id = (SELECT id FROM cur) "
	"AND (SELECT users FROM n) = 0 RETURNING id) "
	"SELECT (SELECT count(*) FROM cur), (SELECT users FROM n), (SELECT count(*) FROM d)";

struct role_op {
	struct auth *a;
	struct lg_req *req;
	bool create;
	const char *id_text;
	const char *name, *permissions, *limits;        /* NULL: unchanged */
	const char *not_found;
};

/* ---- reading a body ---- */

static size_t choice(const char *const *list, const char *s)
{
	size_t i = 0;

	while (list[i] && strcmp(list[i], s) != 0)
		i++;
	return i;
}

/* The permissions as a JSON array without duplicates, in @op. */
static bool read_permissions(struct role_op *op, const json_t *body)
{
	const struct lg_host *h = op->a->host;
	const json_t *list = json_object_get(body, "permissions"), *v;
	bool seen[LG_COUNT(permissions)] = { false };
	json_t *out;
	char *text;
	size_t i;

	if (!list || json_is_null(list)) {
		op->permissions = op->create ? "[]" : NULL;
		return true;
	}
	if (!json_is_array(list))
		goto bad;
	json_array_foreach(list, i, v) {
		size_t k = json_is_string(v) ? choice(permissions, json_string_value(v)) :
			   LG_COUNT(permissions) - 1;

		if (!permissions[k])
			goto bad;
		seen[k] = true;
	}
	out = json_array();
	for (i = 0; out && permissions[i]; i++)
		if (seen[i] && json_array_append_new(out, json_string(permissions[i])) < 0)
			break;
	text = out && !permissions[i] ? json_dumps(out, JSON_COMPACT) : NULL;
	json_decref(out);
	op->permissions = text ? api_printf(h, op->req, "%s", text) : NULL;
	free(text);
	if (!text)
		h->reply_error(op->req, 500, API_INTERNAL_ERROR);
	return op->permissions != NULL;
bad:
	h->reply_error(op->req, 422, "permissions: expected a list of admin, read_metric, "
		       "provide_models, create_public_collection");
	return false;
}

/* One limit: its model, type and value (-1 for null: unlimited). */
static bool read_limit(struct role_op *op, const json_t *e, size_t i, int64_t *model,
		       size_t *type, int64_t *value)
{
	const struct lg_host *h = op->a->host;
	const char *key = json_object_get(e, "model_id") ? "model_id" : "router_id";
	const json_t *t = json_object_get(e, "type");

	if (!json_is_object(e)) {
		h->reply_error(op->req, 422, "limits[%zu]: expected an object", i);
		return false;
	}
	if (!api_int(h, op->req, e, key, API_REQUIRED, 1, INT64_MAX / 2, NULL, model))
		return false;
	*type = json_is_string(t) ? choice(limit_types, json_string_value(t)) : 4;
	if (!limit_types[*type]) {
		h->reply_error(op->req, 422, "limits[%zu].type: expected one of tpm, tpd, rpm, rpd",
			       i);
		return false;
	}
	*value = -1;
	return api_is_null(e, "value") ||
	       api_int(h, op->req, e, "value", API_REQUIRED, 0, INT64_MAX / 2, NULL, value);
}

/* @limit into @out, replacing one for the same model and type. */
static bool put_limit(json_t *out, int64_t model, size_t type, int64_t value)
{
	json_t *e, *old;
	size_t i;

	e = json_pack("{s:I, s:s, s:o}", "model_id", (json_int_t)model, "type",
		      limit_types[type], "value", value < 0 ? json_null() : json_integer(value));
	if (!e)
		return false;
	json_array_foreach(out, i, old) {
		if (json_integer_value(json_object_get(old, "model_id")) == model &&
		    strcmp(json_string_value(json_object_get(old, "type")), limit_types[type]) == 0)
			return json_array_set_new(out, i, e) == 0;
	}
	return json_array_append_new(out, e) == 0;
}

static bool read_limits(struct role_op *op, const json_t *body)
{
	const struct lg_host *h = op->a->host;
	const json_t *list = json_object_get(body, "limits"), *e;
	json_t *out;
	char *text = NULL;
	size_t i, type;
	int64_t model, value;
	bool ok = true;

	if (!list || json_is_null(list)) {
		op->limits = op->create ? "[]" : NULL;
		return true;
	}
	if (!json_is_array(list) || json_array_size(list) > LIMITS_MAX) {
		h->reply_error(op->req, 422, "limits: expected a list of at most %d limits",
			       LIMITS_MAX);
		return false;
	}
	out = json_array();
	json_array_foreach(list, i, e) {
		ok = read_limit(op, e, i, &model, &type, &value);
		if (!ok)
			break;
		if (!out || !put_limit(out, model, type, value)) {
			json_decref(out);
			out = NULL;
			break;
		}
	}
	if (ok && out)
		text = json_dumps(out, JSON_COMPACT);
	json_decref(out);
	if (!ok)
		return false;
	op->limits = text ? api_printf(h, op->req, "%s", text) : NULL;
	free(text);
	if (!text)
		h->reply_error(op->req, 500, API_INTERNAL_ERROR);
	return op->limits != NULL;
}

static bool role_fields(struct role_op *op, const json_t *body)
{
	return api_str(op->a->host, op->req, body, "name",
		       op->create ? API_REQUIRED : API_OPTIONAL, 1, ROLE_NAME_MAX, &op->name) &&
	       read_permissions(op, body) && read_limits(op, body);
}

/* ---- writing ---- */

static void role_reply(struct role_op *op, int status)
{
	struct auth_reply how = { .status = status, .not_found = op->not_found };

	auth_api_sql(op->a, op->req, &how, role_get_sql, 1, &op->id_text);
}

static void role_written(const PGresult *res, const char *error, void *arg)
{
	struct role_op *op = arg;
	const struct lg_host *h = op->a->host;

	if (error) {
		api_db_failed(h, op->a->self, op->req, error, role_constraints, ROLE_EXISTS);
		return;
	}
	if (!op->create && strcmp(PQgetvalue(res, 0, 0), "0") == 0) {
		h->reply_error(op->req, 404, "%s", op->not_found);
		return;
	}
	if (!PQgetisnull(res, 0, 1)) {
		h->reply_error(op->req, 404, "Model router %s not found.", PQgetvalue(res, 0, 1));
		return;
	}
	if (!op->create && strcmp(PQgetvalue(res, 0, 2), "0") != 0) {
		h->reply_error(op->req, 409, LAST_ADMIN_ROLE);
		return;
	}
	if (op->create) {
		op->id_text = api_printf(h, op->req, "%s", PQgetvalue(res, 0, 0));
		op->not_found = op->id_text ? api_printf(h, op->req, "Role %s not found.",
							  op->id_text) : NULL;
		if (!op->not_found)
			return;
	}
	role_reply(op, op->create ? 201 : 200);
}

static struct role_op *role_op_new(struct auth *a, struct lg_req *req, bool create)
{
	struct role_op *op = a->host->req_alloc(req, sizeof *op);
	int64_t id;

	if (!op) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return NULL;
	}
	op->a = a;
	op->req = req;
	op->create = create;
	if (create)
		return op;
	if (!api_path_id(a->host, req, "role_id", &id))
		return NULL;
	op->id_text = api_id_text(a->host, req, id);
	op->not_found = op->id_text ? api_printf(a->host, req, "Role %s not found.",
						  op->id_text) : NULL;
	return op->not_found ? op : NULL;
}

static void role_save(struct lg_req *req, void *ud, bool create)
{
	struct role_op *op = role_op_new(ud, req, create);
	const char *params[4];
	json_t *body;
	bool ok;

	if (!op)
		return;
	body = op->a->host->req_json(req);
	if (!body)
		return;
	ok = role_fields(op, body);
	json_decref(body);
	if (!ok)
		return;
	if (create) {
		params[0] = op->name;
		params[1] = op->permissions;
		params[2] = op->limits;
		api_query(op->a->host, op->a->self, req, role_insert_sql, 3, params, role_written,
			  op);
		return;
	}
	params[0] = op->id_text;
	params[1] = op->name;
	params[2] = op->permissions;
	params[3] = op->limits;
	api_query(op->a->host, op->a->self, req, role_update_sql, 4, params, role_written, op);
}

static void route_role_create(struct lg_req *req, void *ud)
{
	role_save(req, ud, true);
}

static void route_role_patch(struct lg_req *req, void *ud)
{
	role_save(req, ud, false);
}

/* ---- reading and deleting ---- */

static void route_role_get(struct lg_req *req, void *ud)
{
	struct role_op *op = role_op_new(ud, req, false);

	if (op)
		role_reply(op, 200);
}

static void route_role_list(struct lg_req *req, void *ud)
{
	static const struct api_list list = {
		.from = "role r", .alias = "r", .where = "true", .object = ROLE_JSON,
		.sort_by = role_sort_by, .sort_columns = role_sort_columns,
	};

	auth_api_list(ud, req, &list, NULL, 0);
}

static void role_deleted(const PGresult *res, const char *error, void *arg)
{
	struct role_op *op = arg;
	const struct lg_host *h = op->a->host;

	/* A user given this role meanwhile makes the foreign key refuse. */
	if (error && strstr(error, "foreign key")) {
		h->reply_error(op->req, 409, "Role still has users and cannot be removed.");
		return;
	}
	if (error) {
		api_db_failed(h, op->a->self, op->req, error, NULL, NULL);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "0") == 0)
		h->reply_error(op->req, 404, "%s", op->not_found);
	else if (strcmp(PQgetvalue(res, 0, 2), "0") == 0)
		h->reply_error(op->req, 409, "Role still has users and cannot be removed.");
	else
		api_reply_empty(h, op->req);
}

static void route_role_delete(struct lg_req *req, void *ud)
{
	struct role_op *op = role_op_new(ud, req, false);

	if (op)
		api_query(op->a->host, op->a->self, req, role_delete_sql, 1, &op->id_text,
			  role_deleted, op);
}

static const struct auth_route role_routes[] = {
	{ "POST", "/v1/admin/roles", LG_POLICY_ADMIN, route_role_create },
	{ "GET", "/v1/admin/roles", LG_POLICY_ADMIN, route_role_list },
	{ "GET", "/v1/admin/roles/{role_id}", LG_POLICY_ADMIN, route_role_get },
	{ "PATCH", "/v1/admin/roles/{role_id}", LG_POLICY_ADMIN, route_role_patch },
	{ "DELETE", "/v1/admin/roles/{role_id}", LG_POLICY_ADMIN, route_role_delete },
};

int auth_api_roles_register(struct auth *a)
{
	return auth_api_routes(a, role_routes, LG_COUNT(role_routes));
}
