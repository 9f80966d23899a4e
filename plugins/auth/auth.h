/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: the auth plugin's inner interfaces
 *
 * One struct auth per loaded plugin, made in init() and freed in fini();
 * every module takes it as its first argument, so the plugin has no global
 * state. The modules and their rooms:
 *
 *   auth.c       settings, init/start/stop/fini, bootstrap admin, NOTIFY
 *   keys.c       key format, keyed hash, masking (pure functions)
 *   cache.c      validated and unknown keys, shared by the workers
 *   roles.c      roles, permissions and limits: an immutable snapshot
 *   authn.c      the AUTH hook: bearer -> cache -> database -> principal
 *   passwords.c  Argon2id off the loop, bounded; login attempt limiter
 *   limits.c     rate limits (AUTHORIZE and COMPLETE hooks, instance sync)
 *   budget.c     budget hold before the call and settlement after
 *   api_*.c      the REST endpoints, one file per resource
 *
 * Time values are Unix seconds (int64_t); 0 means "never" for expiries.
 */
#ifndef LLMGATE_AUTH_H
#define LLMGATE_AUTH_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>

#include <llmgate/host.h>

#define AUTH_NOTIFY_CHANNEL "llmgate_auth"

struct auth;

/* ---- keys.c ---- */

#define AUTH_KEY_PREFIX "sk-"
#define AUTH_KEY_RANDOM_BYTES 32        /* 256 bits */
/* A key carries a tag that only the server can compute, so that made-up
 * keys are refused without a cache or database lookup. */
#define AUTH_KEY_TAG_BYTES 4
/* "sk-" and 48 characters of unpadded URL-safe base64: the random bytes,
 * then the tag */
#define AUTH_KEY_LEN (3 + 4 * (AUTH_KEY_RANDOM_BYTES + AUTH_KEY_TAG_BYTES) / 3)
#define AUTH_HASH_BYTES 32
#define AUTH_SECRET_BYTES crypto_generichash_KEYBYTES
/* first 8 characters, "...", last 8 characters (spec §3.2) */
#define AUTH_MASKED_LEN (8 + 3 + 8)
/* "\x" and 64 hex digits: a bytea parameter */
#define AUTH_HASH_HEX_LEN (2 + 2 * AUTH_HASH_BYTES)

/** auth_key_new() - a fresh random key tagged with @secret, NUL-terminated.
 * 0 or -EIO. */
int auth_key_new(const unsigned char secret[AUTH_SECRET_BYTES], char out[AUTH_KEY_LEN + 1]);
/** auth_key_well_formed() - prefix, length and alphabet of a key. */
bool auth_key_well_formed(const char *key, size_t len);
/** auth_key_authentic() - well formed, and its tag is the one @secret
 * gives its random bytes (compared in constant time): checked before any
 * cache or database lookup. */
bool auth_key_authentic(const unsigned char secret[AUTH_SECRET_BYTES], const char *key,
			size_t len);
/** auth_key_hash() - keyed BLAKE2b of @key with the server secret. */
void auth_key_hash(const unsigned char secret[AUTH_SECRET_BYTES], const char *key, size_t len,
		   unsigned char out[AUTH_HASH_BYTES]);
/** auth_key_mask() - the form shown in listings. */
void auth_key_mask(const char *key, char out[AUTH_MASKED_LEN + 1]);
/** auth_hash_bytea() - @hash as a bytea text parameter ("\x..."). */
void auth_hash_bytea(const unsigned char hash[AUTH_HASH_BYTES], char out[AUTH_HASH_HEX_LEN + 1]);

/* ---- cache.c ---- */

#define AUTH_NAME_MAX 128

/** struct auth_ident - what a valid key says about its caller. */
struct auth_ident {
	int64_t key_id, user_id, role_id, organization_id;
	int64_t key_expires, user_expires;      /* Unix seconds, 0: never */
	bool budget_limited;                    /* user.budget is not NULL */
	char email[AUTH_NAME_MAX];              /* truncated for logs only */
	char key_name[AUTH_NAME_MAX];
};

enum auth_cache_result {
	AUTH_CACHE_MISS = 0,
	AUTH_CACHE_HIT,         /* a valid key, fresh */
	AUTH_CACHE_STALE,       /* a valid key past its TTL: ask the database,
				 * use it if the database is down */
	AUTH_CACHE_UNKNOWN,     /* recently not found: refuse without asking */
};

struct auth_cache;

/** auth_cache_new() - at most @capacity entries; valid keys are trusted
 * for @ttl_ms, unknown ones remembered for @negative_ttl_ms. */
struct auth_cache *auth_cache_new(size_t capacity, uint64_t ttl_ms, uint64_t negative_ttl_ms);
void auth_cache_free(struct auth_cache *c);
/** auth_cache_get() - Thread: any. @out is filled on HIT and STALE. */
enum auth_cache_result auth_cache_get(struct auth_cache *c,
				      const unsigned char hash[AUTH_HASH_BYTES],
				      struct auth_ident *out);
/** auth_cache_put() - remember a valid key (@ident) or an unknown one (NULL). */
void auth_cache_put(struct auth_cache *c, const unsigned char hash[AUTH_HASH_BYTES],
		    const struct auth_ident *ident);
/** auth_cache_forget_key()/_user()/_all() - after a revocation or a change
 * of the user; takes effect for every later auth_cache_get(). */
void auth_cache_forget_key(struct auth_cache *c, int64_t key_id);
void auth_cache_forget_user(struct auth_cache *c, int64_t user_id);
void auth_cache_forget_all(struct auth_cache *c);
/** auth_cache_expire_all() - every valid key turns stale (checked again in
 * the database at its next use, still served while the database is down)
 * and unknown keys are forgotten: after notifications may have been
 * missed, without refusing callers the database cannot yet confirm. */
void auth_cache_expire_all(struct auth_cache *c);
/** auth_cache_generation() - a counter that every forget moves; read it
 * before a database lookup and hand it to auth_cache_put_since(), which
 * then stores nothing if something was forgotten meanwhile (a revocation
 * racing the lookup). Thread: any. */
uint64_t auth_cache_generation(struct auth_cache *c);
void auth_cache_put_since(struct auth_cache *c, const unsigned char hash[AUTH_HASH_BYTES],
			  const struct auth_ident *ident, uint64_t generation);

/* ---- roles.c ---- */

enum auth_limit_type { AUTH_TPM = 0, AUTH_TPD, AUTH_RPM, AUTH_RPD, AUTH_LIMIT_TYPES };
#define AUTH_LIMIT_NONE (-1)            /* NULL in the database: unlimited */
#define AUTH_LIMIT_UNSET (-2)           /* no row of this type */

/** struct auth_limits - one role's limits on one model. */
struct auth_limits {
	int64_t model_id;
	int64_t value[AUTH_LIMIT_TYPES];        /* >= 0, NONE or UNSET */
};

struct auth_role {
	int64_t id;
	uint32_t permissions;                   /* LG_PERM_* */
	struct auth_limits *limits;             /* sorted by model_id */
	size_t nlimits;
};

/** struct auth_roles - every role, sorted by id; immutable once published. */
struct auth_roles {
	atomic_int refs;
	struct auth_role *roles;
	size_t nroles;
};

/** auth_roles_get()/_put() - hold the current snapshot while reading it.
 * Thread: any. Never NULL after start() (an empty snapshot before). */
struct auth_roles *auth_roles_get(struct auth *a);
void auth_roles_put(struct auth_roles *r);
const struct auth_role *auth_roles_find(const struct auth_roles *r, int64_t role_id);
/** auth_role_limits() - the role's limits on a model, or NULL (no rows). */
const struct auth_limits *auth_role_limits(const struct auth_role *role, int64_t model_id);
/** auth_roles_load_sync() - read the roles and publish them. Thread: main
 * (in start()) or work pool. */
/** auth_roles_init() - publish an empty snapshot (in init()). 0 or -ENOMEM. */
int auth_roles_init(struct auth *a);
int auth_roles_load_sync(struct auth *a, char *err, size_t errlen);
/** auth_roles_reload() - read them again asynchronously (after NOTIFY
 * "roles"), publish when read. Thread: main. */
void auth_roles_reload(struct auth *a);
/** auth_model_access() - the lg_model_access_fn: limit rows on the model,
 * none of value 0 (spec §5.2). */
bool auth_model_access(const struct lg_principal *who, int64_t model_id, void *ud);
void auth_roles_free_all(struct auth *a);

/* ---- passwords.c ---- */

#define AUTH_PASSWORD_MIN 6
#define AUTH_PASSWORD_MAX 72

struct auth_passwords;

/** auth_password_hash() - Argon2id on the work pool, at most
 * password_hash_concurrency at once (others wait in order, at most
 * password_queue_max of them). @done runs on the calling loop with the
 * encoded hash (borrowed), or NULL on failure. 0 when @done will run
 * exactly once; -EBUSY when the queue is full, -ENOMEM: @done will not run
 * (answer with auth_password_refused()). */
int auth_password_hash(struct auth *a, const char *password,
		       void (*done)(void *arg, const char *encoded), void *arg);
/** auth_password_verify() - the same for a check; a NULL @encoded (a user
 * without a password, or unknown) still costs one hash, so timing does not
 * tell whether an account exists. */
int auth_password_verify(struct auth *a, const char *encoded, const char *password,
			 void (*done)(void *arg, bool ok), void *arg);
/** auth_password_refused() - answer a request whose hash or check was not
 * taken (@rc from the two above): 503 with Retry-After for -EBUSY, else
 * 500. Returns @rc. */
int auth_password_refused(struct auth *a, struct lg_req *req, int rc);
/** auth_password_hash_sync() - for start() (bootstrap admin). 0 or -errno. */
int auth_password_hash_sync(const char *password, char out[crypto_pwhash_STRBYTES]);
/** auth_attempt_allowed() - whether this account may check a password now
 * (login or change of one's own password; login_attempts_per_minute per
 * account), and counts the attempt if so; auth_attempt_succeeded() clears
 * the count. The account is @user_id when > 0, else @email (an email that
 * names no user), compared case-insensitively. Thread: any. */
bool auth_attempt_allowed(struct auth *a, int64_t user_id, const char *email);
void auth_attempt_succeeded(struct auth *a, int64_t user_id, const char *email);
/** auth_attempt_retry_after() - seconds until this account may try again. */
int64_t auth_attempt_retry_after(struct auth *a, int64_t user_id, const char *email);
/** auth_attempts_refused() - answer 429 @message with Retry-After. */
void auth_attempts_refused(struct auth *a, struct lg_req *req, int64_t user_id,
			   const char *email, const char *message);
struct auth_passwords *auth_passwords_new(unsigned concurrency, unsigned queue_max,
					  unsigned attempts_per_minute);
void auth_passwords_free(struct auth_passwords *p);

/* ---- authn.c ---- */

/** auth_authenticate() - the AUTH hook (lg_hook_fn, @ud is struct auth). */
enum lg_hook_result auth_authenticate(struct lg_req *req, void *ud);
/** auth_ident() - the ident of the request's caller as the AUTH hook found
 * it, or NULL (the master key, or no auth yet). Ownership: the request's. */
const struct auth_ident *auth_req_ident(struct auth *a, struct lg_req *req);
/** struct auth_req - the plugin's state for one request, in the request's
 * memory. It is the plugin's only req_set_data() slot: modules that keep
 * state from one phase to the next (AUTHORIZE to COMPLETE) use their
 * member here rather than req_set_data(). */
struct auth_req {
	bool has_ident;
	struct auth_ident ident;
	void *limits;                           /* limits.c */
	void *budget;                           /* budget.c */
};
/** auth_req_get() - the request's struct auth_req, made on first use;
 * NULL if the request's memory is exhausted. Thread: the request's worker. */
struct auth_req *auth_req_get(struct auth *a, struct lg_req *req);

/* ---- limits.c ---- */

struct auth_limiter;
struct auth_limiter *auth_limiter_new(void);
void auth_limiter_free(struct auth_limiter *l);
/** auth_limits_authorize() - AUTHORIZE hook: refuses with 429 and the
 * spec's headers, or adds the x-ratelimit-* headers and lets the call go. */
enum lg_hook_result auth_limits_authorize(struct lg_req *req, void *ud);
/** auth_limits_complete() - COMPLETE hook: charges the tokens used. */
enum lg_hook_result auth_limits_complete(struct lg_req *req, void *ud);
/** auth_limits_start()/_stop() - the cross-instance sync timer. Thread: main. */
int auth_limits_start(struct auth *a);
void auth_limits_stop(struct auth *a);

/* ---- budget.c ---- */

/** auth_budget_authorize() - AUTHORIZE hook: holds the worst-case cost of
 * the call on the user's budget (400 "Insufficient budget." if it does not
 * fit); auth_budget_complete() settles it with the real cost. */
enum lg_hook_result auth_budget_authorize(struct lg_req *req, void *ud);
enum lg_hook_result auth_budget_complete(struct lg_req *req, void *ud);

/* ---- api_*.c: each registers its routes during init ---- */

int auth_api_login_register(struct auth *a);
int auth_api_me_register(struct auth *a);
int auth_api_keys_register(struct auth *a);
int auth_api_users_register(struct auth *a);
int auth_api_roles_register(struct auth *a);
int auth_api_organizations_register(struct auth *a);

/** auth_issue_key() - make a key for @user_id: insert its row, then @done
 * runs on this loop with the KeyResponse JSON (value shown in full) or an
 * error already answered. Shared by POST /v1/keys, /v1/admin/keys and login.
 * Returns 0 when @done will run exactly once: with @key_json (borrowed,
 * wiped after @done returns), or with NULL when the request was already
 * answered (404 "User {id} not found.", 409, 503, 500). Returns a negative
 * errno when the request was already answered and @done will not run.
 * @in is copied; no validation of the name or expiry is done here. */
struct auth_issue {
	int64_t user_id;
	const char *name;
	int64_t expires;                /* Unix seconds, 0: none */
};
int auth_issue_key(struct auth *a, struct lg_req *req, const struct auth_issue *in,
		   void (*done)(struct lg_req *req, const char *key_json, void *arg), void *arg);

/* api_me.c: what the api_*.c files share. */

/** struct auth_reply - how auth_api_sql() answers a JSON-returning query:
 * @status with its first column, 404 @not_found when no row, 409
 * @conflict when the error names one of @constraints. */
struct auth_reply {
	int status;
	const char *not_found;
	const char *const *constraints;
	const char *conflict;
};
/** auth_api_sql() - run @sql (its first column is the reply) and answer
 * as @how says. Thread: the request's worker. */
void auth_api_sql(struct auth *a, struct lg_req *req, const struct auth_reply *how,
		  const char *sql, int n, const char *const *params);

struct api_list;         /* plugins/common/api.h */
/** auth_api_list() - answer a list (struct api_list: every fragment is
 * constant SQL of the caller; @where uses $3, $4... for @filters). */
void auth_api_list(struct auth *a, struct lg_req *req, const struct api_list *l,
		   const char *const *filters, int nfilters);

/** struct auth_route, auth_api_routes() - register a table of routes. */
struct auth_route {
	const char *method, *path;
	enum lg_policy policy;
	lg_route_fn fn;
};
int auth_api_routes(struct auth *a, const struct auth_route *routes, size_t n);

/* Messages that several api_*.c files answer. */
#define AUTH_MSG_USER_EXISTS "User already exists."
#define AUTH_MSG_MASTER_NO_USER "The master key has no user; use the admin routes."

/* ---- auth.c: the plugin ---- */

struct auth {
	const struct lg_host *host;
	struct lg_plugin *self;

	/* settings, read in init() */
	bool has_master;
	unsigned char master_hash[AUTH_HASH_BYTES];
	unsigned char secret[AUTH_SECRET_BYTES];        /* keys' hashing key */
	const char *bootstrap_email, *bootstrap_password;
	int64_t key_max_expiration_days;
	int64_t login_session_s;
	uint64_t limits_sync_ms;
	int64_t budget_hold_completion_tokens;

	struct auth_cache *cache;
	struct auth_passwords *passwords;
	struct auth_limiter *limiter;

	/* roles.c: the current snapshot, read without a lock; replaced on
	 * the main thread after host->sync_workers() */
	_Atomic(struct auth_roles *) roles;
	/* main thread only: a reload in flight, another one asked meanwhile */
	bool roles_reloading, roles_reload_again;
	struct lg_timer *roles_timer;           /* the periodic reload */
	bool stopping;                          /* stop() ran */

	/* authn.c: until when (monotonic ms) stale keys skip the database */
	atomic_uint_fast64_t db_down_until_ms;
};

/** auth_now() - the wall clock in Unix seconds. */
int64_t auth_now(void);

#endif /* LLMGATE_AUTH_H */
