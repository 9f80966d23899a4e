/* SPDX-License-Identifier: Apache-2.0 */
/* auth: users, roles, organizations and API keys stored in PostgreSQL,
 * with the master key of the configuration as an all-powerful key (as
 * OpenGateLLM 0.4 had). This file reads the settings, wires the modules
 * into the host (hooks, routes, NOTIFY) and makes sure an administrator
 * exists at start (the bootstrap admin). See docs/auth.md. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"

#define SECRET_MIN 24           /* characters of master_key, beyond loopback */
#define PASSWORD_EXPOSED_MIN 12 /* characters of bootstrap_admin_password, beyond loopback */
#define ROLES_REFRESH_MS 60000  /* catches a NOTIFY lost while the database was away */
/* The keys' hashing secret is BLAKE2b(setting) keyed by this context, so
 * that it differs from the master key it may come from. */
#define SECRET_CONTEXT "llmgate auth: API key hashing secret v1"
#define DEFAULT_PASSWORD "changeme"

extern const struct lg_migration auth_migrations[];

static const struct lg_setting auth_settings[] = {
	{ "master_key", LG_SETTING_STRING, NULL, 0, 4096, LG_SETTING_SECRET,
	  "a key with every right (admin); leave it unset to disable it" },
	{ "secret_key", LG_SETTING_STRING, NULL, 16, 4096, LG_SETTING_SECRET,
	  "the secret API keys are hashed with (default: derived from master_key); "
	  "changing it invalidates every key" },
	{ "bootstrap_admin_email", LG_SETTING_STRING, "admin", 1, 254, 0,
	  "the administrator created at start when no user has the admin permission" },
	{ "bootstrap_admin_password", LG_SETTING_STRING, DEFAULT_PASSWORD, AUTH_PASSWORD_MIN,
	  AUTH_PASSWORD_MAX, LG_SETTING_SECRET,
	  "its password; the default is refused when server.listen reaches beyond loopback" },
	{ "key_max_expiration_days", LG_SETTING_INT, "365", 1, 36500, 0,
	  "the longest lifetime of an API key, and the lifetime of one made without expiry" },
	{ "login_session_duration", LG_SETTING_DURATION, "1h", 60000, 31536000000.0, 0,
	  "the lifetime of the key that POST /v1/auth/login returns" },
	{ "cache_ttl", LG_SETTING_DURATION, "30s", 0, 300000, 0,
	  "how long a validated key is trusted without asking the database" },
	{ "cache_negative_ttl", LG_SETTING_DURATION, "5s", 0, 60000, 0,
	  "how long an unknown key is refused without asking the database" },
	{ "cache_size", LG_SETTING_INT, "100000", 256, 100000000, 0,
	  "the number of keys the cache holds" },
	{ "password_hash_concurrency", LG_SETTING_INT, "2", 1, 64, 0,
	  "password hashes computed at once (64 MiB each); the others wait" },
	{ "password_queue_max", LG_SETTING_INT, "64", 0, 100000, 0,
	  "password hashes that may wait for their turn; beyond, 503 with Retry-After" },
	{ "login_attempts_per_minute", LG_SETTING_INT, "10", 1, 100000, 0,
	  "password checks (logins, password changes) per account and minute; beyond, 429" },
	{ "limits_sync_interval", LG_SETTING_DURATION, "250ms", 10, 60000, 0,
	  "how often rate-limit counters are exchanged with the other instances" },
	{ "budget_hold_completion_tokens", LG_SETTING_INT, "4096", 0, 100000000, 0,
	  "completion tokens held on the budget for a call without max_tokens" },
};

int64_t auth_now(void)
{
	return (int64_t)time(NULL);
}

/* ---- settings ---- */

static int64_t cfg_int(struct auth *a, const char *key)
{
	int64_t v = 0;

	(void)a->host->cfg_int(a->self, key, &v);
	return v;
}

static uint64_t cfg_ms(struct auth *a, const char *key)
{
	uint64_t v = 0;

	(void)a->host->cfg_u64(a->self, key, &v);
	return v;
}

static const char *cfg_text(struct auth *a, const char *key)
{
	const char *v = NULL;

	if (a->host->cfg_str(a->self, key, &v) != 0 || !v || !*v)
		return NULL;
	return v;
}

/* A guessable secret is tolerable on loopback (the embedded default),
 * never where others can reach the server. */
static int check_exposed(struct auth *a, const char *master, const char *password)
{
	if (!a->host->server_exposed(a->self))
		return 0;
	if (master && (strcmp(master, DEFAULT_PASSWORD) == 0 || strlen(master) < SECRET_MIN)) {
		a->host->set_error(a->self, "master_key is the default or shorter than %d "
				   "characters, and server.listen reaches beyond loopback: set a "
				   "long random master_key", SECRET_MIN);
		return -EPERM;
	}
	if (strcmp(password, DEFAULT_PASSWORD) == 0 || strlen(password) < PASSWORD_EXPOSED_MIN) {
		a->host->set_error(a->self, "bootstrap_admin_password is the default or shorter "
				   "than %d characters, and server.listen reaches beyond loopback: "
				   "set a long random bootstrap_admin_password", PASSWORD_EXPOSED_MIN);
		return -EPERM;
	}
	return 0;
}

static int derive(const char *text, unsigned char *out, size_t outlen)
{
	return crypto_generichash(out, outlen, (const unsigned char *)text, strlen(text),
				  (const unsigned char *)SECRET_CONTEXT, sizeof SECRET_CONTEXT - 1);
}

static int read_secrets(struct auth *a)
{
	const char *master = cfg_text(a, "master_key");
	const char *secret = cfg_text(a, "secret_key");
	int rc;

	a->bootstrap_email = cfg_text(a, "bootstrap_admin_email");
	a->bootstrap_password = cfg_text(a, "bootstrap_admin_password");
	if (!a->bootstrap_email || !a->bootstrap_password) {
		a->host->set_error(a->self, "bootstrap_admin_email and bootstrap_admin_password "
				   "must not be empty");
		return -EINVAL;
	}
	rc = check_exposed(a, master, a->bootstrap_password);
	if (rc < 0)
		return rc;
	if (!secret && !master) {
		a->host->set_error(a->self, "set secret_key (or master_key, from which it is "
				   "derived): API keys are hashed with it");
		return -EINVAL;
	}
	if (derive(secret ? secret : master, a->secret, sizeof a->secret) != 0)
		goto fail;
	if (master) {
		if (crypto_generichash(a->master_hash, sizeof a->master_hash,
				       (const unsigned char *)master, strlen(master), NULL, 0) != 0)
			goto fail;
		a->has_master = true;
	}
	return 0;
fail:
	a->host->set_error(a->self, "libsodium cannot hash the secrets");
	return -EIO;
}

static int read_settings(struct auth *a)
{
	int rc = read_secrets(a);

	if (rc < 0)
		return rc;
	a->key_max_expiration_days = cfg_int(a, "key_max_expiration_days");
	a->login_session_s = (int64_t)(cfg_ms(a, "login_session_duration") / 1000);
	a->limits_sync_ms = cfg_ms(a, "limits_sync_interval");
	a->budget_hold_completion_tokens = cfg_int(a, "budget_hold_completion_tokens");
	a->cache = auth_cache_new((size_t)cfg_int(a, "cache_size"), cfg_ms(a, "cache_ttl"),
				  cfg_ms(a, "cache_negative_ttl"));
	a->passwords = auth_passwords_new((unsigned)cfg_int(a, "password_hash_concurrency"),
					  (unsigned)cfg_int(a, "password_queue_max"),
					  (unsigned)cfg_int(a, "login_attempts_per_minute"));
	if (!a->cache || !a->passwords) {
		a->host->set_error(a->self, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

/* ---- cache invalidation: "key:<id>", "user:<id>" or "roles" ---- */

static bool parse_id(const char *s, int64_t *out)
{
	char *end;
	long long v;

	if (*s < '0' || *s > '9')
		return false;
	v = strtoll(s, &end, 10);
	*out = v;
	return *end == '\0' && v > 0;
}

static void on_notify(const char *channel, const char *payload, void *arg)
{
	struct auth *a = arg;
	int64_t id;

	(void)channel;
	if (strncmp(payload, "key:", 4) == 0 && parse_id(payload + 4, &id)) {
		auth_cache_forget_key(a->cache, id);
	} else if (strncmp(payload, "user:", 5) == 0 && parse_id(payload + 5, &id)) {
		auth_cache_forget_user(a->cache, id);
	} else if (strcmp(payload, "roles") == 0) {
		auth_roles_reload(a);
	} else {
		/* Notifications may have been missed (the LISTEN connection was
		 * back: empty payload), or one we do not know: check every key
		 * again, serving the ones we had while the database recovers. */
		auth_cache_expire_all(a->cache);
		auth_roles_reload(a);
	}
}

/* ---- registration ---- */

static int add_hook(struct auth *a, enum lg_phase phase, lg_hook_fn fn, int priority)
{
	return a->host->hook_add(a->self, phase, fn, priority, a);
}

static int register_all(struct auth *a)
{
	static int (*const apis[])(struct auth *) = {
		auth_api_login_register, auth_api_me_register, auth_api_keys_register,
		auth_api_users_register, auth_api_roles_register,
		auth_api_organizations_register,
	};
	int rc;

	if ((rc = add_hook(a, LG_PHASE_AUTH, auth_authenticate, 100)) < 0 ||
	    (rc = add_hook(a, LG_PHASE_AUTHORIZE, auth_limits_authorize, 100)) < 0 ||
	    (rc = add_hook(a, LG_PHASE_AUTHORIZE, auth_budget_authorize, 200)) < 0 ||
	    (rc = add_hook(a, LG_PHASE_COMPLETE, auth_limits_complete, 100)) < 0 ||
	    (rc = add_hook(a, LG_PHASE_COMPLETE, auth_budget_complete, 200)) < 0) {
		a->host->set_error(a->self, "cannot add the hooks: %s", strerror(-rc));
		return rc;
	}
	rc = a->host->model_access_add(a->self, auth_model_access, a);
	if (rc < 0) {
		a->host->set_error(a->self, "cannot add the model access function: %s",
				   strerror(-rc));
		return rc;
	}
	rc = a->host->db_listen(a->self, AUTH_NOTIFY_CHANNEL, on_notify, a);
	if (rc < 0) {
		a->host->set_error(a->self, "cannot listen on %s: %s", AUTH_NOTIFY_CHANNEL,
				   strerror(-rc));
		return rc;
	}
	for (size_t i = 0; i < LG_COUNT(apis); i++) {
		rc = apis[i](a);
		if (rc < 0) {
			a->host->set_error(a->self, "cannot add the API routes: %s", strerror(-rc));
			return rc;
		}
	}
	return 0;
}

static void auth_free(struct auth *a)
{
	if (!a)
		return;
	if (a->limiter)
		auth_limiter_free(a->limiter);
	auth_passwords_free(a->passwords);
	auth_cache_free(a->cache);
	auth_roles_free_all(a);
	sodium_memzero(a->secret, sizeof a->secret);
	sodium_memzero(a->master_hash, sizeof a->master_hash);
	free(a);
}

static int auth_init(struct lg_plugin *self, const struct lg_host *host)
{
	struct auth *a;
	int rc;

	if (sodium_init() < 0) {
		host->set_error(self, "libsodium cannot initialise");
		return -EIO;
	}
	if (!LG_HOST_HAS(host, sync_workers)) {
		host->set_error(self, "this llmgate is too old for the auth plugin (ABI 1.1 needed)");
		return -ENOTSUP;
	}
	a = calloc(1, sizeof *a);
	if (!a) {
		host->set_error(self, "out of memory");
		return -ENOMEM;
	}
	a->host = host;
	a->self = self;
	atomic_init(&a->db_down_until_ms, 0);
	rc = auth_roles_init(a);
	if (rc == 0 && !(a->limiter = auth_limiter_new()))
		rc = -ENOMEM;
	if (rc < 0)
		host->set_error(self, "out of memory");
	if (rc == 0)
		rc = read_settings(a);
	if (rc == 0)
		rc = register_all(a);
	if (rc < 0) {
		auth_free(a);
		return rc;
	}
	host->set_data(self, a);
	return 0;
}

/* ---- start: roles, bootstrap admin ---- */

static const char has_admin_sql[] =
	"SELECT EXISTS (SELECT 1 FROM \"user\" u JOIN permission p ON p.role_id = u.role_id "
	"WHERE p.permission = 'admin' AND (u.expires IS NULL OR u.expires > now()))";

/* One statement, so that it is one transaction; instances starting
 * together meet on the unique constraints. */
static const char bootstrap_sql[] =
	"WITH r AS (INSERT INTO role (name) VALUES ('bootstrap_admin') "
	"ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id), "
	"p AS (INSERT INTO permission (role_id, permission) "
	"SELECT r.id, x FROM r, unnest(ARRAY['admin', 'read_metric', 'provide_models', "
	"'create_public_collection']) x ON CONFLICT (role_id, permission) DO NOTHING), "
	"o AS (INSERT INTO organization (name) VALUES ('default') "
	"ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id) "
	"INSERT INTO \"user\" (email, password, role_id, organization_id) "
	"SELECT $1, $2, r.id, o.id FROM r, o "
	"ON CONFLICT ((lower(email))) DO UPDATE SET password = EXCLUDED.password, "
	"role_id = EXCLUDED.role_id, expires = NULL "
	"RETURNING (xmax = 0) AS created";

static int query_sync(struct auth *a, const char *sql, int n, const char *const *params,
		      PGresult **res)
{
	char err[256];
	int rc = a->host->db_query_sync(a->self, sql, n, params, res, err, sizeof err);

	if (rc < 0)
		a->host->set_error(a->self, "bootstrap admin: %s", err);
	return rc;
}

static int ensure_bootstrap_admin(struct auth *a)
{
	char hash[crypto_pwhash_STRBYTES];
	const char *params[2] = { a->bootstrap_email, hash };
	PGresult *res = NULL;
	bool exists, created;
	int rc;

	rc = query_sync(a, has_admin_sql, 0, NULL, &res);
	if (rc < 0)
		return rc;
	exists = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	if (exists)
		return 0;
	if (auth_password_hash_sync(a->bootstrap_password, hash) != 0) {
		a->host->set_error(a->self, "bootstrap admin: cannot hash the password");
		return -ENOMEM;
	}
	rc = query_sync(a, bootstrap_sql, 2, params, &res);
	sodium_memzero(hash, sizeof hash);
	if (rc < 0)
		return rc;
	created = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
	PQclear(res);
	a->host->log(a->self, LG_LOG_WARN, "no user had the admin permission: %s the bootstrap "
		     "admin %s (role bootstrap_admin)", created ? "created" : "reset",
		     a->bootstrap_email);
	return 0;
}

static void roles_refresh(void *arg)
{
	auth_roles_reload(arg);
}

static int auth_start(struct lg_plugin *self, const struct lg_host *host)
{
	struct auth *a = host->get_data(self);
	char err[256];
	int rc;

	rc = ensure_bootstrap_admin(a);
	if (rc < 0)
		return rc;
	rc = auth_roles_load_sync(a, err, sizeof err);
	if (rc < 0) {
		host->set_error(self, "cannot read the roles: %s", err);
		return rc;
	}
	a->roles_timer = host->timer_start(self, ROLES_REFRESH_MS, true, roles_refresh, a);
	if (!a->roles_timer) {
		host->set_error(self, "cannot start the roles timer");
		return -ENOMEM;
	}
	rc = auth_limits_start(a);
	if (rc < 0)
		host->set_error(self, "cannot start the rate limits: %s", strerror(-rc));
	return rc;
}

static void auth_stop(struct lg_plugin *self, const struct lg_host *host)
{
	struct auth *a = host->get_data(self);

	a->stopping = true;
	host->timer_stop(a->roles_timer);
	a->roles_timer = NULL;
	auth_limits_stop(a);
}

static void auth_fini(struct lg_plugin *self, const struct lg_host *host)
{
	auth_free(host->get_data(self));
	host->set_data(self, NULL);
}

LG_PLUGIN(.name = "auth", .version = "0.2.0",
	  .description = "users, roles, organizations, API keys, login, rate limits and budgets",
	  .migrations = auth_migrations,
	  .settings = auth_settings, .n_settings = LG_COUNT(auth_settings),
	  .init = auth_init, .start = auth_start, .stop = auth_stop, .fini = auth_fini);
