/* SPDX-License-Identifier: Apache-2.0 */
/* The AUTH hook: "Authorization: Bearer <key>" -> the caller.
 *
 * The path of a known key costs one keyed hash and one lookup in a cache
 * stripe; nothing is allocated but the request's own state. A key that is
 * not well formed, or whose tag is not the one the server secret gives
 * (keys.c), is refused before any lookup: made-up keys, however many and
 * however distinct, never reach the cache or PostgreSQL. A key that is
 * authentic but unknown to the database (revoked long ago, deleted) is
 * remembered for a few seconds. A stale entry (past its TTL) is checked again in
 * the database, and used as it is while the database is unavailable: the
 * keys that were in use keep working through an outage, unknown ones get
 * 503 rather than a 401 that would be a lie.
 *
 * Neither keys nor their hashes are ever logged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../common/api.h"
#include "auth.h"

#define BEARER "Bearer "
#define RETRY_AFTER "5"
#define DB_DOWN_HOLD_MS 1000    /* after a failed lookup, skip the database this long */
#define MSG_EXPIRED "Your account has expired. Please contact support to renew your account."

static const char lookup_sql[] =
	"SELECT t.id, t.user_id, u.role_id, u.organization_id, "
	"COALESCE(floor(extract(epoch FROM t.expires))::bigint, 0), "
	"COALESCE(floor(extract(epoch FROM u.expires))::bigint, 0), "
	"u.budget IS NOT NULL, u.email, t.name "
	"FROM token t JOIN \"user\" u ON u.id = t.user_id "
	"WHERE t.hash = $1::bytea AND NOT t.revoked "
	"AND (t.expires IS NULL OR t.expires > now())";

/* One database lookup, in the request's memory. */
struct lookup {
	struct auth *a;
	struct lg_req *req;
	unsigned char hash[AUTH_HASH_BYTES];
	uint64_t generation;
	bool has_stale;
	struct auth_ident stale;
};

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct auth_req *auth_req_get(struct auth *a, struct lg_req *req)
{
	struct auth_req *st = a->host->req_get_data(req, a->self);

	if (!st) {
		st = a->host->req_alloc(req, sizeof *st);
		if (st)
			a->host->req_set_data(req, a->self, st);
	}
	return st;
}

const struct auth_ident *auth_req_ident(struct auth *a, struct lg_req *req)
{
	const struct auth_req *st = a->host->req_get_data(req, a->self);

	return st && st->has_ident ? &st->ident : NULL;
}

static enum lg_hook_result answered(struct auth *a, struct lg_req *req, int status,
				    const char *msg)
{
	if (status == 503)
		(void)a->host->reply_header(req, "Retry-After", RETRY_AFTER);
	a->host->reply_error(req, status, "%s", msg);
	return LG_HOOK_DONE;
}

/* An expired account may still read its own profile (spec §3.2). */
static bool reads_own_profile(struct auth *a, struct lg_req *req)
{
	const char *path = a->host->req_path(req);

	return strcmp(a->host->req_method(req), "GET") == 0 &&
	       (strcmp(path, "/v1/me") == 0 || strcmp(path, "/v1/me/info") == 0);
}

static uint32_t role_permissions(struct auth *a, int64_t role_id)
{
	struct auth_roles *r = auth_roles_get(a);
	const struct auth_role *role = auth_roles_find(r, role_id);
	uint32_t bits = role ? role->permissions : 0;

	auth_roles_put(r);
	return bits;
}

/* The caller is the owner of @id: checks the expiries, sets the principal. */
static enum lg_hook_result admit(struct auth *a, struct lg_req *req, const struct auth_ident *id)
{
	int64_t now = auth_now();
	struct auth_req *st;
	struct lg_principal who = {
		.size = sizeof who, .user_id = id->user_id, .key_id = id->key_id,
		.role_id = id->role_id, .organization_id = id->organization_id,
		.user_name = id->email, .key_name = id->key_name,
	};

	if (id->key_expires && id->key_expires <= now)
		return LG_HOOK_DECLINE;
	if (id->user_expires && id->user_expires <= now && !reads_own_profile(a, req))
		return answered(a, req, 403, MSG_EXPIRED);
	st = auth_req_get(a, req);
	if (!st)
		return answered(a, req, 500, API_INTERNAL_ERROR);
	st->ident = *id;
	st->has_ident = true;
	who.permissions = role_permissions(a, id->role_id);
	if (a->host->req_set_principal(req, &who) != 0)
		return answered(a, req, 500, API_INTERNAL_ERROR);
	return LG_HOOK_OK;
}

static enum lg_hook_result admit_master(struct auth *a, struct lg_req *req)
{
	struct lg_principal who = {
		.size = sizeof who, .user_name = "master", .key_name = "master",
		.permissions = LG_PERM_ADMIN | LG_PERM_READ_METRIC | LG_PERM_PROVIDE_MODELS |
			       LG_PERM_CREATE_PUBLIC_COLLECTION,
	};

	if (a->host->req_set_principal(req, &who) != 0)
		return answered(a, req, 500, API_INTERNAL_ERROR);
	return LG_HOOK_OK;
}

/* Keys are compared through their hashes, in constant time, so neither the
 * length nor the content of the master key leaks through timing. */
static bool is_master(struct auth *a, const char *key, size_t len)
{
	unsigned char h[AUTH_HASH_BYTES];
	bool same;

	if (!a->has_master)
		return false;
	if (crypto_generichash(h, sizeof h, (const unsigned char *)key, len, NULL, 0) != 0)
		return false;
	same = sodium_memcmp(h, a->master_hash, sizeof h) == 0;
	sodium_memzero(h, sizeof h);
	return same;
}

/* The database cannot answer: the stale entry if there is one, else 503. */
static enum lg_hook_result database_down(struct lookup *lk)
{
	if (lk->has_stale)
		return admit(lk->a, lk->req, &lk->stale);
	return answered(lk->a, lk->req, 503, API_DB_UNAVAILABLE);
}

static int64_t col_int(const PGresult *res, int col)
{
	return strtoll(PQgetvalue(res, 0, col), NULL, 10);
}

static void ident_from_row(const PGresult *res, struct auth_ident *id)
{
	memset(id, 0, sizeof *id);
	id->key_id = col_int(res, 0);
	id->user_id = col_int(res, 1);
	id->role_id = col_int(res, 2);
	id->organization_id = col_int(res, 3);
	id->key_expires = col_int(res, 4);
	id->user_expires = col_int(res, 5);
	id->budget_limited = PQgetvalue(res, 0, 6)[0] == 't';
	snprintf(id->email, sizeof id->email, "%s", PQgetvalue(res, 0, 7));
	snprintf(id->key_name, sizeof id->key_name, "%s", PQgetvalue(res, 0, 8));
}

static enum lg_hook_result lookup_failed(struct lookup *lk, const char *error)
{
	struct auth *a = lk->a;

	atomic_store(&a->db_down_until_ms, mono_ms() + DB_DOWN_HOLD_MS);
	if (!api_db_unreachable(error)) {
		a->host->log(a->self, LG_LOG_ERROR, "key lookup failed: %s", error);
		if (!lk->has_stale)
			return answered(a, lk->req, 500, API_INTERNAL_ERROR);
	}
	return database_down(lk);
}

static void lookup_done(const PGresult *res, const char *error, void *arg)
{
	struct lookup *lk = arg;
	struct auth *a = lk->a;
	struct auth_ident id;
	enum lg_hook_result r;

	if (error) {
		r = lookup_failed(lk, error);
	} else if (PQntuples(res) != 1) {
		auth_cache_put_since(a->cache, lk->hash, NULL, lk->generation);
		r = LG_HOOK_DECLINE;
	} else {
		atomic_store(&a->db_down_until_ms, 0);
		ident_from_row(res, &id);
		auth_cache_put_since(a->cache, lk->hash, &id, lk->generation);
		r = admit(a, lk->req, &id);
	}
	sodium_memzero(lk->hash, sizeof lk->hash);
	a->host->resume(lk->req, r);
}

static enum lg_hook_result lookup_start(struct auth *a, struct lg_req *req,
					const unsigned char hash[AUTH_HASH_BYTES],
					const struct auth_ident *stale)
{
	struct lookup *lk = a->host->req_alloc(req, sizeof *lk);
	char hex[AUTH_HASH_HEX_LEN + 1];
	const char *params[1] = { hex };
	int rc;

	if (!lk)
		return answered(a, req, 500, API_INTERNAL_ERROR);
	lk->a = a;
	lk->req = req;
	memcpy(lk->hash, hash, AUTH_HASH_BYTES);
	lk->has_stale = stale != NULL;
	if (stale)
		lk->stale = *stale;
	/* While the database was just found down, a stale key is used as it
	 * is rather than waiting for one more failure. */
	if (stale && mono_ms() < atomic_load(&a->db_down_until_ms))
		return admit(a, req, stale);
	lk->generation = auth_cache_generation(a->cache);
	auth_hash_bytea(hash, hex);
	rc = a->host->db_query(a->self, lookup_sql, 1, params, lookup_done, lk);
	sodium_memzero(hex, sizeof hex);
	if (rc < 0)
		return database_down(lk);
	return LG_HOOK_PENDING;
}

enum lg_hook_result auth_authenticate(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const char *authz = a->host->req_header(req, "Authorization");
	unsigned char hash[AUTH_HASH_BYTES];
	struct auth_ident id;
	const char *key;
	size_t len;
	enum lg_hook_result r;

	if (!authz)
		return LG_HOOK_DECLINE;
	if (strncmp(authz, BEARER, sizeof BEARER - 1) != 0) {
		/* "bearer", "BEARER": the core would call it a bad key. */
		if (strncasecmp(authz, BEARER, sizeof BEARER - 1) == 0) {
			(void)a->host->reply_header(req, "WWW-Authenticate", "Bearer");
			return answered(a, req, 401, "Invalid authentication scheme.");
		}
		return LG_HOOK_DECLINE;
	}
	key = authz + sizeof BEARER - 1;
	len = strlen(key);
	if (is_master(a, key, len))
		return admit_master(a, req);
	if (!auth_key_authentic(a->secret, key, len))
		return LG_HOOK_DECLINE;
	auth_key_hash(a->secret, key, len, hash);
	switch (auth_cache_get(a->cache, hash, &id)) {
	case AUTH_CACHE_HIT:
		r = admit(a, req, &id);
		break;
	case AUTH_CACHE_UNKNOWN:
		r = LG_HOOK_DECLINE;
		break;
	case AUTH_CACHE_STALE:
		r = lookup_start(a, req, hash, &id);
		break;
	default:
		r = lookup_start(a, req, hash, NULL);
		break;
	}
	sodium_memzero(hash, sizeof hash);
	return r;
}
