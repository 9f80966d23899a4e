/* SPDX-License-Identifier: Apache-2.0 */
/* POST /v1/auth/login: {email, password} -> {id, key}, a new playground
 * key that expires after login_session_duration (spec §3.2). The password
 * is checked off the loop; an unknown account costs the same hash, so the
 * answer does not tell whether it exists. Each account has a number of
 * attempts per minute, beyond which the answer is 429. */
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
	"SELECT id, password FROM \"user\" WHERE email = $1";

/* One login, in the request's memory. */
struct login {
	struct auth *a;
	struct lg_req *req;
	const char *email;
	const char *password;
	int64_t user_id;
};

static void wipe(struct login *l)
{
	if (l->password) {
		sodium_memzero((void *)l->password, strlen(l->password));
		l->password = NULL;
	}
}

static void login_issued(struct lg_req *req, const char *key_json, void *arg)
{
	struct login *l = arg;
	const struct lg_host *h = l->a->host;
	json_t *key = key_json ? json_loads(key_json, 0, NULL) : NULL;
	const json_t *id, *value;

	if (!key_json)
		return;         /* answered by auth_issue_key() */
	id = json_object_get(key, "id");
	value = json_object_get(key, "value");
	if (!json_is_integer(id) || !json_is_string(value)) {
		h->log(l->a->self, LG_LOG_ERROR, "login: the new key has no id or value");
		h->reply_error(req, 500, API_INTERNAL_ERROR);
	} else {
		api_reply_json(h, req, 200, json_pack("{s:O,s:O}", "id", id, "key", value));
	}
	if (key) {
		/* The key itself was in this tree: do not leave it in freed memory. */
		if (json_is_string(value))
			sodium_memzero((void *)json_string_value(value), json_string_length(value));
		json_decref(key);
	}
}

static void login_verified(void *arg, bool ok)
{
	struct login *l = arg;
	struct auth *a = l->a;
	struct auth_issue in = {
		.user_id = l->user_id, .name = PLAYGROUND_KEY_NAME,
		.expires = auth_now() + a->login_session_s,
	};

	wipe(l);
	if (!ok) {
		a->host->reply_error(l->req, 401, MSG_BAD_LOGIN);
		return;
	}
	auth_login_succeeded(a, l->email);
	(void)auth_issue_key(a, l->req, &in, login_issued, l);
}

static void login_user_read(const PGresult *res, const char *error, void *arg)
{
	struct login *l = arg;
	struct auth *a = l->a;
	const char *stored = NULL;

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
	if (auth_password_verify(a, stored, l->password, login_verified, l) < 0) {
		wipe(l);
		a->host->reply_error(l->req, 500, API_INTERNAL_ERROR);
	}
}

static void too_many(struct auth *a, struct lg_req *req, const char *email)
{
	char wait[24];

	snprintf(wait, sizeof wait, "%" PRId64, auth_login_retry_after(a, email));
	(void)a->host->reply_header(req, "Retry-After", wait);
	a->host->reply_error(req, 429, MSG_TOO_MANY);
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
	if (!ok)
		return;
	if (!auth_login_allowed(a, l->email)) {
		wipe(l);
		too_many(a, req, l->email);
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
