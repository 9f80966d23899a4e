/* SPDX-License-Identifier: Apache-2.0 */
/* POST /v1/auth/login: {email, password} -> {id, key}: the user's
 * playground key, made anew at each login and valid for
 * login_session_duration (spec §3.2). A user has one playground key: its
 * row is upserted (new hash, new expiry, no longer revoked) and the key it
 * replaces stops working at once here, and on the other instances when
 * they hear the row change. Emails are compared case-insensitively. The
 * password is checked off the loop; an unknown account costs the same
 * hash, so the answer does not tell whether it exists. Each account has a
 * number of attempts per minute, beyond which the answer is 429. The new
 * key leaves this file only in the reply: every copy of it is wiped. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/api.h"
#include "auth.h"

#define PLAYGROUND_KEY_NAME "_system_playground_key"
#define MSG_BAD_LOGIN "Invalid email or password."
#define MSG_TOO_MANY "Too many login attempts, please try again later."

static const char user_sql[] =
	"SELECT id, password FROM \"user\" WHERE lower(email) = lower($1)";

/* One playground key per user (migration 0002's partial unique index). A
 * user deleted meanwhile gives no row. */
static const char playground_sql[] =
	"INSERT INTO token AS t (user_id, name, hash, masked, expires) "
	"SELECT u.id, '" PLAYGROUND_KEY_NAME "', $2::bytea, $3, to_timestamp($4::bigint) "
	"FROM \"user\" u WHERE u.id = $1::bigint "
	"ON CONFLICT (user_id) WHERE name = '" PLAYGROUND_KEY_NAME "' DO UPDATE SET "
	"hash = EXCLUDED.hash, masked = EXCLUDED.masked, expires = EXCLUDED.expires, "
	"revoked = false, revoked_at = NULL, created = now() "
	"RETURNING t.id";

/* One login, in the request's memory. */
struct login {
	struct auth *a;
	struct lg_req *req;
	const char *email;
	const char *password;
	int64_t user_id;                /* 0: no such user */
	char key[AUTH_KEY_LEN + 1];     /* the new key, until it is answered */
};

static void wipe(struct login *l)
{
	if (l->password) {
		sodium_memzero((void *)l->password, strlen(l->password));
		l->password = NULL;
	}
	sodium_memzero(l->key, sizeof l->key);
}

/* {"id": ..., "key": ...}: built here rather than with jansson, so that
 * the only copies of the key are ours to wipe (the host copies the body). */
static void reply_key(struct login *l, int64_t key_id)
{
	char body[64 + AUTH_KEY_LEN];
	int n = snprintf(body, sizeof body, "{\"id\":%" PRId64 ",\"key\":\"%s\"}", key_id,
			 l->key);

	if (n < 0 || (size_t)n >= sizeof body)
		l->a->host->reply_error(l->req, 500, API_INTERNAL_ERROR);
	else
		l->a->host->reply(l->req, 200, "application/json", body, (size_t)n);
	sodium_memzero(body, sizeof body);
}

static void playground_written(const PGresult *res, const char *error, void *arg)
{
	struct login *l = arg;
	struct auth *a = l->a;
	int64_t key_id;

	if (error) {
		api_db_failed(a->host, a->self, l->req, error, NULL, NULL);
	} else if (PQntuples(res) != 1) {
		/* The user was deleted since the password was checked. */
		a->host->reply_error(l->req, 401, MSG_BAD_LOGIN);
	} else {
		key_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		/* The key this row held stops working now on this instance;
		 * the row's NOTIFY tells the others. */
		auth_cache_forget_key(a->cache, key_id);
		reply_key(l, key_id);
	}
	wipe(l);
}

/* A new key for the user's playground row. */
static void playground_write(struct login *l)
{
	struct auth *a = l->a;
	const struct lg_host *h = a->host;
	unsigned char hash[AUTH_HASH_BYTES];
	char hash_hex[AUTH_HASH_HEX_LEN + 1], masked[AUTH_MASKED_LEN + 1];
	const char *params[4];

	if (auth_key_new(a->secret, l->key) < 0) {
		h->reply_error(l->req, 500, API_INTERNAL_ERROR);
		return;
	}
	auth_key_hash(a->secret, l->key, AUTH_KEY_LEN, hash);
	auth_hash_bytea(hash, hash_hex);
	auth_key_mask(l->key, masked);
	params[0] = api_id_text(h, l->req, l->user_id);
	params[1] = hash_hex;
	params[2] = masked;
	params[3] = api_id_text(h, l->req, auth_now() + a->login_session_s);
	/* On success the key stays until playground_written() answers. */
	if (!params[0] || !params[3] ||
	    !api_query(h, a->self, l->req, playground_sql, 4, params, playground_written, l))
		wipe(l);
	sodium_memzero(hash, sizeof hash);
	sodium_memzero(hash_hex, sizeof hash_hex);
}

static void login_verified(void *arg, bool ok)
{
	struct login *l = arg;

	wipe(l);
	if (!ok) {
		l->a->host->reply_error(l->req, 401, MSG_BAD_LOGIN);
		return;
	}
	auth_attempt_succeeded(l->a, l->user_id, l->email);
	playground_write(l);
}

static void login_user_read(const PGresult *res, const char *error, void *arg)
{
	struct login *l = arg;
	struct auth *a = l->a;
	const char *stored = NULL;
	int rc;

	if (error) {
		wipe(l);
		api_db_failed(a->host, a->self, l->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) == 1) {
		l->user_id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		if (!PQgetisnull(res, 0, 1))
			stored = PQgetvalue(res, 0, 1);
	}
	/* Counted per account (its id), so that the email's case does not
	 * give more tries; an unknown email is an account of its own. */
	if (!auth_attempt_allowed(a, l->user_id, l->email)) {
		wipe(l);
		auth_attempts_refused(a, l->req, l->user_id, l->email, MSG_TOO_MANY);
		return;
	}
	rc = auth_password_verify(a, stored, l->password, login_verified, l);
	if (rc < 0) {
		wipe(l);
		auth_password_refused(a, l->req, rc);
	}
}

static void route_login(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const struct lg_host *h = a->host;
	struct login *l = h->req_alloc(req, sizeof *l);
	json_t *body;
	bool ok;

	if (!l) {
		h->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	body = h->req_json(req);
	if (!body)
		return;
	l->a = a;
	l->req = req;
	ok = api_str(h, req, body, "email", API_REQUIRED, 1, 254, &l->email) &&
	     api_secret(h, req, body, "password", API_REQUIRED, 1, AUTH_PASSWORD_MAX, &l->password);
	json_decref(body);
	if (!ok) {
		wipe(l);
		return;
	}
	if (!api_query(h, a->self, req, user_sql, 1, &l->email, login_user_read, l))
		wipe(l);
}

int auth_api_login_register(struct auth *a)
{
	const struct lg_route route = {
		.size = sizeof route, .method = "POST", .path = "/v1/auth/login",
		.policy = LG_POLICY_PUBLIC, .max_body = 4096, .fn = route_login,
	};

	return a->host->route_add(a->self, &route, a);
}
