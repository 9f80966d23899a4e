/* SPDX-License-Identifier: Apache-2.0 */
/* rag: /v1/collections (spec §10.1). Anybody reads their own collections
 * and the public ones; only the owner changes or deletes one, and a
 * collection the caller may not see is the same 404 as one that does not
 * exist, administrators included (OWASP API1). Making a collection public
 * needs LG_PERM_CREATE_PUBLIC_COLLECTION. */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "rag.h"

#define NAME_MAX_CHARS 255
#define DESCRIPTION_MAX_CHARS 4096
#define NO_PUBLIC "You do not have the permission to create public collections."

#define COLLECTION_JSON \
	"json_build_object('object', 'collection', 'id', c.id, 'name', c.name, " \
	"'owner', c.owner, 'description', c.description, 'visibility', c.visibility, " \
	"'created', extract(epoch FROM c.created)::bigint, " \
	"'updated', extract(epoch FROM c.updated)::bigint, " \
	"'documents', (SELECT count(*) FROM document d WHERE d.collection_id = c.id))"

static const char insert_sql[] =
	"INSERT INTO collection AS c (user_id, owner, name, description, visibility) "
	"VALUES ($1::bigint, $2, $3, $4, $5) RETURNING " COLLECTION_JSON "::text";

static const char get_sql[] =
	"SELECT " COLLECTION_JSON "::text FROM collection c "
	"WHERE c.id = $2::bigint AND " RAG_READABLE_SQL;

/* $4 says whether the description is set (to $5, maybe NULL). */
static const char patch_sql[] =
	"UPDATE collection c SET name = coalesce($3, c.name), "
	"description = CASE WHEN $4::boolean THEN $5 ELSE c.description END, "
	"visibility = coalesce($6, c.visibility) "
	"WHERE c.id = $2::bigint AND c.user_id = $1::bigint RETURNING c.id";

static const char delete_sql[] =
	"DELETE FROM collection c WHERE c.id = $2::bigint AND c.user_id = $1::bigint "
	"RETURNING c.id";

static const char *const sort_by[] = { "id", "name", "created", "updated", NULL };
static const char *const sort_columns[] = { "c.id", "c.name", "c.created", "c.updated", NULL };
static const char *const visibilities[] = { "private", "public", NULL };

/* "visibility": absent (*out NULL), or private|public; public needs the
 * permission. */
static bool read_visibility(struct rag *r, struct lg_req *req, const json_t *body,
			    const char **out)
{
	const struct lg_principal *who = r->host->req_principal(req);

	if (!api_str(r->host, req, body, "visibility", API_OPTIONAL, 1, 16, out))
		return false;
	if (!*out)
		return true;
	if (strcmp(*out, "private") != 0 && strcmp(*out, "public") != 0) {
		r->host->reply_error(req, 422, "visibility: must be 'private' or 'public'");
		return false;
	}
	if (strcmp(*out, "public") == 0 &&
	    !(who && (who->permissions & LG_PERM_CREATE_PUBLIC_COLLECTION))) {
		r->host->reply_error(req, 403, NO_PUBLIC);
		return false;
	}
	return true;
}

static void route_create(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	const struct lg_principal *who = r->host->req_principal(req);
	const char *params[5] = { rag_user_text(r, req) };
	json_t *body;
	bool ok;

	if (!params[0])
		return;
	body = r->host->req_json(req);
	if (!body)
		return;
	params[1] = who->user_name ? who->user_name : "";
	ok = api_str(r->host, req, body, "name", API_REQUIRED, 1, NAME_MAX_CHARS, &params[2]) &&
	     api_str(r->host, req, body, "description", API_OPTIONAL, 0, DESCRIPTION_MAX_CHARS,
		     &params[3]) &&
	     read_visibility(r, req, body, &params[4]);
	json_decref(body);
	if (!ok)
		return;
	if (!params[4])
		params[4] = "private";
	rag_sql_reply(r, req, 201, NULL, insert_sql, 5, params);
}

static void route_list(struct lg_req *req, void *ud)
{
	static const struct api_list list = {
		.from = "collection c", .alias = "c",
		.where = "(c.user_id = $3::bigint OR c.visibility = 'public') "
			 "AND ($4::text IS NULL OR c.name = $4) "
			 "AND ($5::text IS NULL OR c.visibility = $5)",
		.object = COLLECTION_JSON, .sort_by = sort_by, .sort_columns = sort_columns,
	};
	struct rag *r = ud;
	const char *filters[3] = { rag_user_text(r, req) };
	size_t vis;

	if (!filters[0])
		return;
	filters[1] = r->host->req_query(req, "name");
	if (r->host->req_query(req, "visibility")) {
		if (!api_query_choice(r->host, req, "visibility", visibilities, 0, &vis))
			return;
		filters[2] = visibilities[vis];
	}
	rag_list_reply(r, req, &list, filters, 3);
}

/* The caller's id ($1) and the path's collection id ($2), and the 404. */
static bool path_params(struct rag *r, struct lg_req *req, const char **params,
			int64_t *id, const char **not_found)
{
	params[0] = rag_user_text(r, req);
	if (!params[0] || !api_path_id(r->host, req, "collection_id", id))
		return false;
	params[1] = api_id_text(r->host, req, *id);
	*not_found = params[1] ? api_printf(r->host, req, "Collection %s not found.", params[1])
			       : NULL;
	return *not_found != NULL;
}

static void route_get(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	const char *params[2], *not_found;
	int64_t id;

	if (path_params(r, req, params, &id, &not_found))
		rag_sql_reply(r, req, 200, not_found, get_sql, 2, params);
}

static void route_patch(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	const char *params[6], *not_found;
	json_t *body;
	int64_t id;
	bool ok;

	if (!path_params(r, req, params, &id, &not_found))
		return;
	body = r->host->req_json(req);
	if (!body)
		return;
	params[3] = json_object_get(body, "description") ? "true" : "false";
	ok = api_str(r->host, req, body, "name", API_OPTIONAL, 1, NAME_MAX_CHARS, &params[2]) &&
	     api_str(r->host, req, body, "description", API_OPTIONAL, 0, DESCRIPTION_MAX_CHARS,
		     &params[4]) &&
	     read_visibility(r, req, body, &params[5]);
	json_decref(body);
	if (ok)
		rag_sql_empty(r, req, not_found, 0, patch_sql, 6, params);
}

static void route_delete(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	const char *params[2], *not_found;
	int64_t id;

	if (path_params(r, req, params, &id, &not_found))
		rag_sql_empty(r, req, not_found, id, delete_sql, 2, params);
}

static const struct rag_route routes[] = {
	{ "POST", "/v1/collections", route_create, 0 },
	{ "GET", "/v1/collections", route_list, 0 },
	{ "GET", "/v1/collections/{collection_id}", route_get, 0 },
	{ "PATCH", "/v1/collections/{collection_id}", route_patch, 0 },
	{ "DELETE", "/v1/collections/{collection_id}", route_delete, 0 },
};

int rag_collections_register(struct rag *r)
{
	return rag_routes_add(r, routes, LG_COUNT(routes));
}
