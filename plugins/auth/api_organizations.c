/* SPDX-License-Identifier: Apache-2.0 */
/* auth: organizations (spec §3.3): the admin routes, and the caller's own
 * organization at GET /v1/organizations/me. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "auth.h"

#define ORG_NAME_MAX 254

#define ORG_JSON \
	"json_build_object('object', 'organization', 'id', o.id, 'name', o.name, " \
	"'users', (SELECT count(*) FROM \"user\" u WHERE u.organization_id = o.id), " \
	"'created', extract(epoch FROM o.created)::bigint, " \
	"'updated', extract(epoch FROM o.updated)::bigint)"

static const char *const org_constraints[] = { "organization_name_key", NULL };
static const char *const org_sort_by[] = { "id", "name", "created", NULL };
static const char *const org_sort_columns[] = { "o.id", "o.name", "o.created", NULL };

#define ORG_EXISTS "Organization already exists."

static const char org_get_sql[] =
	"SELECT " ORG_JSON "::text FROM organization o WHERE o.id = $1::bigint";

static const char org_insert_sql[] =
	"INSERT INTO organization AS o (name) VALUES ($1) RETURNING " ORG_JSON "::text";

static const char org_rename_sql[] =
	"UPDATE organization o SET name = coalesce($2, o.name) WHERE o.id = $1::bigint "
	"RETURNING " ORG_JSON "::text";

/* Whether it exists, how many users it has, whether it was deleted. */
static const char org_delete_sql[] =
	"WITH cur AS (SELECT id FROM organization WHERE id = $1::bigint FOR UPDATE), "
	"n AS (SELECT count(*) AS users FROM \"user\" WHERE organization_id = $1::bigint), "
	"d AS (DELETE FROM organization WHERE id = (SELECT id FROM cur) "
	"AND (SELECT users FROM n) = 0 RETURNING id) "
	"SELECT (SELECT count(*) FROM cur), (SELECT users FROM n), (SELECT count(*) FROM d)";

static void route_org_me(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const struct lg_principal *who = a->host->req_principal(req);
	struct auth_reply how = { .status = 200 };
	const char *id = api_id_text(a->host, req, who ? who->organization_id : 0);

	if (!id)
		return;
	how.not_found = api_printf(a->host, req, "Organization %s not found.", id);
	if (how.not_found)
		auth_api_sql(a, req, &how, org_get_sql, 1, &id);
}

static void route_org_create(struct lg_req *req, void *ud)
{
	static const struct auth_reply how = {
		.status = 201, .constraints = org_constraints, .conflict = ORG_EXISTS,
	};
	struct auth *a = ud;
	const char *name;
	json_t *body = a->host->req_json(req);
	bool ok;

	if (!body)
		return;
	ok = api_str(a->host, req, body, "name", API_REQUIRED, 1, ORG_NAME_MAX, &name);
	json_decref(body);
	if (ok)
		auth_api_sql(a, req, &how, org_insert_sql, 1, &name);
}

static void route_org_list(struct lg_req *req, void *ud)
{
	static const struct api_list list = {
		.from = "organization o", .alias = "o", .where = "true", .object = ORG_JSON,
		.sort_by = org_sort_by, .sort_columns = org_sort_columns,
	};

	auth_api_list(ud, req, &list, NULL, 0);
}

/* The path's organization id as text, and its 404 message. */
static bool org_path(struct auth *a, struct lg_req *req, int64_t *id, const char **text,
		     const char **not_found)
{
	if (!api_path_id(a->host, req, "organization_id", id))
		return false;
	*text = api_id_text(a->host, req, *id);
	*not_found = *text ? api_printf(a->host, req, "Organization %s not found.", *text) : NULL;
	return *not_found != NULL;
}

static void route_org_get(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	struct auth_reply how = { .status = 200 };
	const char *id;
	int64_t n;

	if (org_path(a, req, &n, &id, &how.not_found))
		auth_api_sql(a, req, &how, org_get_sql, 1, &id);
}

static void route_org_patch(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	struct auth_reply how = {
		.status = 200, .constraints = org_constraints, .conflict = ORG_EXISTS,
	};
	const char *params[2];
	json_t *body;
	int64_t n;
	bool ok;

	if (!org_path(a, req, &n, &params[0], &how.not_found))
		return;
	body = a->host->req_json(req);
	if (!body)
		return;
	ok = api_str(a->host, req, body, "name", API_OPTIONAL, 1, ORG_NAME_MAX, &params[1]);
	json_decref(body);
	if (ok)
		auth_api_sql(a, req, &how, org_rename_sql, 2, params);
}

struct org_delete {
	struct auth *a;
	struct lg_req *req;
	const char *not_found;
};

static void org_deleted(const PGresult *res, const char *error, void *arg)
{
	struct org_delete *d = arg;
	const struct lg_host *h = d->a->host;

	/* A user added meanwhile makes the foreign key refuse the delete. */
	if (error && strstr(error, "foreign key")) {
		h->reply_error(d->req, 409, "Organization still has users and cannot be removed.");
		return;
	}
	if (error) {
		api_db_failed(h, d->a->self, d->req, error, NULL, NULL);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "0") == 0)
		h->reply_error(d->req, 404, "%s", d->not_found);
	else if (strcmp(PQgetvalue(res, 0, 2), "0") == 0)
		h->reply_error(d->req, 409, "Organization still has users and cannot be removed.");
	else
		api_reply_empty(h, d->req);
}

static void route_org_delete(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	struct org_delete *d = a->host->req_alloc(req, sizeof *d);
	const char *id;
	int64_t n;

	if (!d) {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	d->a = a;
	d->req = req;
	if (org_path(a, req, &n, &id, &d->not_found))
		api_query(a->host, a->self, req, org_delete_sql, 1, &id, org_deleted, d);
}

static const struct auth_route org_routes[] = {
	{ "GET", "/v1/organizations/me", LG_POLICY_KEY, route_org_me },
	{ "POST", "/v1/admin/organizations", LG_POLICY_ADMIN, route_org_create },
	{ "GET", "/v1/admin/organizations", LG_POLICY_ADMIN, route_org_list },
	{ "GET", "/v1/admin/organizations/{organization_id}", LG_POLICY_ADMIN, route_org_get },
	{ "PATCH", "/v1/admin/organizations/{organization_id}", LG_POLICY_ADMIN,
	  route_org_patch },
	{ "DELETE", "/v1/admin/organizations/{organization_id}", LG_POLICY_ADMIN,
	  route_org_delete },
};

int auth_api_organizations_register(struct auth *a)
{
	return auth_api_routes(a, org_routes, LG_COUNT(org_routes));
}
