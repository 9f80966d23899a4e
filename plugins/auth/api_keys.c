/* SPDX-License-Identifier: Apache-2.0 */
/* auth: API keys (spec §3.2, §5.3). /v1/keys serves the caller's own keys
 * (another user's key is the same 404 as a key that does not exist);
 * /v1/admin/keys serves any user's. A key is shown in full once, in the
 * reply that creates it; PostgreSQL only ever sees its keyed hash and its
 * masked form. DELETE revokes: the row stays, marked revoked. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <sodium.h>

#include "api.h"
#include "auth.h"

#define PLAYGROUND_KEY_NAME "_system_playground_key"
#define KEY_NAME_MAX 128
#define DAY_S 86400
/* A client that asks for exactly the longest expiry computes "now" a
 * little before the server does. */
#define EXPIRY_SLACK_S 60

#define KEY_STATUS_SQL \
	"CASE WHEN t.revoked THEN 'revoked' WHEN t.expires IS NOT NULL AND t.expires <= now() " \
	"THEN 'expired' ELSE 'active' END"

#define KEY_JSON \
	"json_build_object('object', 'key', 'id', t.id, 'name', t.name, 'value', t.masked, " \
	"'user', t.user_id, 'user_id', t.user_id, " \
	"'expires', extract(epoch FROM t.expires)::bigint, " \
	"'created', extract(epoch FROM t.created)::bigint, " \
	"'revoked_at', extract(epoch FROM t.revoked_at)::bigint, 'status', " KEY_STATUS_SQL ")"

static const char *const key_sort_by[] = { "id", "name", "created", NULL };
static const char *const key_sort_columns[] = { "t.id", "t.name", "t.created", NULL };
static const char *const key_statuses[] = { "any", "active", "expired", "revoked", NULL };

/* ---- auth_issue_key() ---- */

static const char issue_sql[] =
	"INSERT INTO token AS t (user_id, name, hash, masked, expires) "
	"SELECT u.id, $2, $3::bytea, $4, to_timestamp($5::bigint) FROM \"user\" u "
	"WHERE u.id = $1::bigint RETURNING " KEY_JSON "::text";

struct issue {
	struct auth *a;
	struct lg_req *req;
	int64_t user_id;
	char key[AUTH_KEY_LEN + 1];
	void (*done)(struct lg_req *req, const char *key_json, void *arg);
	void *arg;
};

/* The stored row's JSON with the key itself in "value", or NULL. */
static char *issued_json(const struct issue *is, const char *row_json)
{
	json_t *root = json_loads(row_json, 0, NULL);
	char *text = NULL;

	if (root && json_object_set_new(root, "value", json_string(is->key)) == 0)
		text = json_dumps(root, JSON_COMPACT);
	json_decref(root);
	return text;
}

static void issue_finish(struct issue *is, const char *key_json)
{
	sodium_memzero(is->key, sizeof is->key);
	is->done(is->req, key_json, is->arg);
}

static void issue_inserted(const PGresult *res, const char *error, void *arg)
{
	struct issue *is = arg;
	const struct lg_host *h = is->a->host;
	char *text;

	if (error) {
		api_db_failed(h, is->a->self, is->req, error, NULL, NULL);
		issue_finish(is, NULL);
		return;
	}
	if (PQntuples(res) < 1) {
		h->reply_error(is->req, 404, "User %" PRId64 " not found.", is->user_id);
		issue_finish(is, NULL);
		return;
	}
	text = issued_json(is, PQgetvalue(res, 0, 0));
	if (!text) {
		h->reply_error(is->req, 500, API_INTERNAL_ERROR);
		issue_finish(is, NULL);
		return;
	}
	issue_finish(is, text);
	sodium_memzero(text, strlen(text));
	free(text);
}

int auth_issue_key(struct auth *a, struct lg_req *req, const struct auth_issue *in,
		   void (*done)(struct lg_req *req, const char *key_json, void *arg), void *arg)
{
	const struct lg_host *h = a->host;
	struct issue *is = h->req_alloc(req, sizeof *is);
	unsigned char hash[AUTH_HASH_BYTES];
	char hash_hex[AUTH_HASH_HEX_LEN + 1], masked[AUTH_MASKED_LEN + 1];
	const char *params[5];

	if (!is) {
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return -ENOMEM;
	}
	*is = (struct issue){ .a = a, .req = req, .user_id = in->user_id, .done = done,
			      .arg = arg, .key = { 0 } };
	if (auth_key_new(a->secret, is->key) < 0) {
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return -EIO;
	}
	auth_key_hash(a->secret, is->key, strlen(is->key), hash);
	auth_hash_bytea(hash, hash_hex);
	auth_key_mask(is->key, masked);
	params[0] = api_id_text(h, req, in->user_id);
	params[1] = in->name;
	params[2] = hash_hex;
	params[3] = masked;
	params[4] = in->expires ? api_id_text(h, req, in->expires) : NULL;
	if (!params[0] || (in->expires && !params[4])) {
		sodium_memzero(is->key, sizeof is->key);
		return -ENOMEM;
	}
	if (!api_query(h, a->self, req, issue_sql, 5, params, issue_inserted, is)) {
		sodium_memzero(is->key, sizeof is->key);
		return -EAGAIN;
	}
	return 0;
}

/* ---- creating ---- */

static void key_created(struct lg_req *req, const char *key_json, void *arg)
{
	struct auth *a = arg;

	if (key_json)
		api_reply_raw(a->host, req, 201, key_json);
}

/* The name and expiry of a new key, as spec §3.2 bounds them. */
static bool key_request(struct auth *a, struct lg_req *req, const json_t *body,
			struct auth_issue *out)
{
	const struct lg_host *h = a->host;
	int64_t now = auth_now(), days = a->key_max_expiration_days;
	int64_t longest = days > 0 ? now + days * DAY_S : INT64_MAX;
	bool present;

	if (!api_str(h, req, body, "name", API_REQUIRED, 1, KEY_NAME_MAX, &out->name) ||
	    !api_int(h, req, body, "expires", API_OPTIONAL, 0, INT64_MAX / 2, &present,
		     &out->expires))
		return false;
	if (strcmp(out->name, PLAYGROUND_KEY_NAME) == 0) {
		h->reply_error(req, 400, "The key name %s is reserved.", PLAYGROUND_KEY_NAME);
		return false;
	}
	if (!present) {
		out->expires = days > 0 ? longest : 0;
		return true;
	}
	if (out->expires <= now) {
		h->reply_error(req, 422, "expires: expected a time in the future");
		return false;
	}
	if (days > 0 && out->expires > longest + EXPIRY_SLACK_S) {
		h->reply_error(req, 400, "Key expiration timestamp cannot be greater than %" PRId64
			       " days from now.", days);
		return false;
	}
	return true;
}

static void key_create(struct auth *a, struct lg_req *req, bool admin)
{
	const struct lg_principal *who = a->host->req_principal(req);
	struct auth_issue in = { 0 };
	json_t *body;
	bool ok;

	if (!admin && (!who || who->user_id == 0)) {
		a->host->reply_error(req, 400, AUTH_MSG_MASTER_NO_USER);
		return;
	}
	body = a->host->req_json(req);
	if (!body)
		return;
	ok = key_request(a, req, body, &in);
	if (ok && admin)
		ok = api_int(a->host, req, body, "user", API_REQUIRED, 1, INT64_MAX, NULL,
			     &in.user_id);
	else if (ok)
		in.user_id = who->user_id;
	/* in.name lives in the request's memory, not in the body. */
	json_decref(body);
	if (ok)
		auth_issue_key(a, req, &in, key_created, a);
}

static void route_key_create(struct lg_req *req, void *ud)
{
	key_create(ud, req, false);
}

static void route_admin_key_create(struct lg_req *req, void *ud)
{
	key_create(ud, req, true);
}

/* ---- listing and reading ---- */

static void key_list(struct auth *a, struct lg_req *req, const char *owner)
{
	static const struct api_list list = {
		.from = "token t", .alias = "t",
		.where = "($3::bigint IS NULL OR t.user_id = $3::bigint) AND "
			 "($4::text IS NULL OR " KEY_STATUS_SQL " = $4::text)",
		.object = KEY_JSON, .sort_by = key_sort_by, .sort_columns = key_sort_columns,
	};
	const char *filters[2] = { owner, NULL };
	size_t status;

	if (!api_query_choice(a->host, req, "status", key_statuses, 0, &status))
		return;
	if (status)
		filters[1] = key_statuses[status];
	auth_api_list(a, req, &list, filters, 2);
}

static void route_key_list(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const struct lg_principal *who = a->host->req_principal(req);
	/* The master key owns no key: user 0 has none. */
	const char *owner = api_id_text(a->host, req, who ? who->user_id : 0);

	if (owner)
		key_list(a, req, owner);
}

static void route_admin_key_list(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	int64_t user;
	const char *owner = NULL;

	if (!api_query_int(a->host, req, "user", 0, 1, INT64_MAX / 2, &user))
		return;
	if (a->host->req_query(req, "user")) {
		owner = api_id_text(a->host, req, user);
		if (!owner)
			return;
	}
	key_list(a, req, owner);
}

/* One key by id: the caller's own, or any for an admin route ($2 NULL). */
struct key_one {
	struct auth *a;
	struct lg_req *req;
	int64_t id;
	const char *params[3];          /* id, owner or NULL, new name */
	const char *not_found;
};

static struct key_one *key_one_new(struct auth *a, struct lg_req *req, bool admin)
{
	const struct lg_host *h = a->host;
	const struct lg_principal *who = h->req_principal(req);
	struct key_one *k = h->req_alloc(req, sizeof *k);

	if (!k) {
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return NULL;
	}
	k->a = a;
	k->req = req;
	if (!api_path_id(h, req, "key_id", &k->id))
		return NULL;
	k->params[0] = api_id_text(h, req, k->id);
	if (!k->params[0])
		return NULL;
	if (!admin) {
		k->params[1] = api_id_text(h, req, who ? who->user_id : 0);
		if (!k->params[1])
			return NULL;
	}
	k->not_found = api_printf(h, req, "Key %s not found.", k->params[0]);
	return k->not_found ? k : NULL;
}

static const char key_get_sql[] =
	"SELECT " KEY_JSON "::text FROM token t WHERE t.id = $1::bigint "
	"AND ($2::bigint IS NULL OR t.user_id = $2::bigint)";

static const char key_rename_sql[] =
	"UPDATE token t SET name = $3 WHERE t.id = $1::bigint "
	"AND ($2::bigint IS NULL OR t.user_id = $2::bigint) RETURNING " KEY_JSON "::text";

static const char key_revoke_sql[] =
	"UPDATE token t SET revoked = true, revoked_at = coalesce(t.revoked_at, now()) "
	"WHERE t.id = $1::bigint AND ($2::bigint IS NULL OR t.user_id = $2::bigint) "
	"RETURNING " KEY_JSON "::text";

static void key_get(struct lg_req *req, void *ud, bool admin)
{
	struct key_one *k = key_one_new(ud, req, admin);
	struct auth_reply how = { .status = 200 };

	if (!k)
		return;
	how.not_found = k->not_found;
	auth_api_sql(k->a, req, &how, key_get_sql, 2, k->params);
}

static void route_key_get(struct lg_req *req, void *ud)
{
	key_get(req, ud, false);
}

static void route_admin_key_get(struct lg_req *req, void *ud)
{
	key_get(req, ud, true);
}

static void route_key_rename(struct lg_req *req, void *ud)
{
	struct key_one *k = key_one_new(ud, req, false);
	struct auth_reply how = { .status = 200 };
	json_t *body;
	bool ok;

	if (!k)
		return;
	body = k->a->host->req_json(req);
	if (!body)
		return;
	ok = api_str(k->a->host, req, body, "name", API_REQUIRED, 1, KEY_NAME_MAX,
		     &k->params[2]);
	json_decref(body);
	if (!ok)
		return;
	if (strcmp(k->params[2], PLAYGROUND_KEY_NAME) == 0) {
		k->a->host->reply_error(req, 400, "The key name %s is reserved.",
					PLAYGROUND_KEY_NAME);
		return;
	}
	how.not_found = k->not_found;
	auth_api_sql(k->a, req, &how, key_rename_sql, 3, k->params);
}

static void key_revoked(const PGresult *res, const char *error, void *arg)
{
	struct key_one *k = arg;
	const struct lg_host *h = k->a->host;

	if (error) {
		api_db_failed(h, k->a->self, k->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) < 1) {
		h->reply_error(k->req, 404, "%s", k->not_found);
		return;
	}
	/* Refused on this instance before the caller hears it is done; the
	 * NOTIFY of the row's trigger tells the other instances. */
	if (k->a->cache)
		auth_cache_forget_key(k->a->cache, k->id);
	api_reply_raw(h, k->req, 200, PQgetvalue(res, 0, 0));
}

static void key_revoke(struct lg_req *req, void *ud, bool admin)
{
	struct key_one *k = key_one_new(ud, req, admin);

	if (k)
		api_query(k->a->host, k->a->self, req, key_revoke_sql, 2, k->params, key_revoked,
			  k);
}

static void route_key_revoke(struct lg_req *req, void *ud)
{
	key_revoke(req, ud, false);
}

static void route_admin_key_revoke(struct lg_req *req, void *ud)
{
	key_revoke(req, ud, true);
}

static const struct auth_route key_routes[] = {
	{ "POST", "/v1/keys", LG_POLICY_KEY, route_key_create },
	{ "GET", "/v1/keys", LG_POLICY_KEY, route_key_list },
	{ "GET", "/v1/keys/{key_id}", LG_POLICY_KEY, route_key_get },
	{ "PATCH", "/v1/keys/{key_id}", LG_POLICY_KEY, route_key_rename },
	{ "DELETE", "/v1/keys/{key_id}", LG_POLICY_KEY, route_key_revoke },
	/* deprecated spellings */
	{ "POST", "/v1/me/keys", LG_POLICY_KEY, route_key_create },
	{ "GET", "/v1/me/keys", LG_POLICY_KEY, route_key_list },
	{ "GET", "/v1/me/keys/{key_id}", LG_POLICY_KEY, route_key_get },
	{ "PATCH", "/v1/me/keys/{key_id}", LG_POLICY_KEY, route_key_rename },
	{ "DELETE", "/v1/me/keys/{key_id}", LG_POLICY_KEY, route_key_revoke },
	/* any user's keys */
	{ "POST", "/v1/admin/keys", LG_POLICY_ADMIN, route_admin_key_create },
	{ "GET", "/v1/admin/keys", LG_POLICY_ADMIN, route_admin_key_list },
	{ "GET", "/v1/admin/keys/{key_id}", LG_POLICY_ADMIN, route_admin_key_get },
	{ "DELETE", "/v1/admin/keys/{key_id}", LG_POLICY_ADMIN, route_admin_key_revoke },
};

int auth_api_keys_register(struct auth *a)
{
	return auth_api_routes(a, key_routes, LG_COUNT(key_routes));
}
