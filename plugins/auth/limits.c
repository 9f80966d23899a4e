/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Rate limits: requests and tokens per minute and per day, per user and
 * model, with the roles' limits (spec §7, docs/limits.md).
 *
 * Decisions:
 * - Fixed windows aligned on the UTC minute and day. One entry per (user,
 *   model) holds the four counters and the start of its two windows; an
 *   entry whose windows ended starts again from zero when it is next used.
 * - Entries live in a hash table cut into stripes, each with its own
 *   mutex: a request locks one stripe for a few dozen instructions, two
 *   requests of different users rarely share one, and there is no global
 *   lock on the request path. Check and count happen under the same lock,
 *   so one instance is exact under any concurrency.
 * - A request is counted (+1 per minute and per day) when it is admitted,
 *   and its prompt estimate ceil(body bytes / 4) (at least 1) is reserved
 *   on the token counters at the same time; when it completes, the
 *   reservation is replaced by its real prompt + completion tokens (spec
 *   §7 charges both directions). So concurrent requests cannot all pass a
 *   token check that only one of them fits.
 * - Other instances: every counter knows "local" (admitted here in its
 *   window), "pushed" (the part of local already added to rate_counter)
 *   and "others" (the table's total minus what we pushed, as of the last
 *   sync). The check uses local + others. A main-loop timer pushes, in one
 *   statement, the deltas of the entries whose counts changed here
 *   ("dirty") and learns back the totals of those and of the entries
 *   checked here within the last REFRESH_IDLE_MS; an entry idle longer is
 *   neither sent nor read. The first request of an entry, and the first
 *   one after it was idle that long, reads the totals before it is
 *   checked, so an instance that has not seen a user for a while does not
 *   decide on old totals. So a sync costs rows for the callers active now,
 *   not for every caller seen that day. The resulting bound is stated in
 *   docs/limits.md.
 * - PostgreSQL down: the sync fails and is retried at the next tick with
 *   the deltas accumulated meanwhile; checks go on with what is known, and
 *   first requests do not wait for a read that cannot succeed.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"

#define STRIPES 64u                     /* a power of two */
#define BUCKETS_MIN 64u                 /* per stripe, a power of two */
#define CLEANUP_EVERY_S 60              /* rate_counter rows of ended windows */
#define SYNC_TEXT_MIN 256u
/* An entry not checked here for this long is no longer refreshed at each
 * sync; its next check reads the totals first. */
#define REFRESH_IDLE_MS 10000u

enum window { MINUTE = 0, DAY, WINDOWS };

static const enum window window_of[AUTH_LIMIT_TYPES] = {
	[AUTH_TPM] = MINUTE, [AUTH_TPD] = DAY, [AUTH_RPM] = MINUTE, [AUTH_RPD] = DAY,
};
static const int64_t window_len[WINDOWS] = { [MINUTE] = 60, [DAY] = 86400 };
static const char *const type_names[AUTH_LIMIT_TYPES] = {
	[AUTH_TPM] = "tpm", [AUTH_TPD] = "tpd", [AUTH_RPM] = "rpm", [AUTH_RPD] = "rpd",
};
static const char *const exceeded_messages[AUTH_LIMIT_TYPES] = {
	[AUTH_TPM] = "Token limit per minute exceeded.",
	[AUTH_TPD] = "Token limit per day exceeded.",
	[AUTH_RPM] = "Request limit per minute exceeded.",
	[AUTH_RPD] = "Request limit per day exceeded.",
};

struct counter {
	int64_t local;          /* counted here in the current window */
	int64_t pushed;         /* the part of @local already in rate_counter */
	int64_t others;         /* other instances, as of the last sync */
};

struct entry {
	struct entry *next;
	int64_t user_id, model_id;
	int64_t window[WINDOWS];        /* start, Unix seconds */
	struct counter c[AUTH_LIMIT_TYPES];
	unsigned limited;               /* bit per type: the role limits it */
	bool loaded;                    /* totals read at least once */
	bool reading;                   /* a read of the totals is in flight: the
					 * sweep must keep the entry */
	bool dirty;                     /* local counts changed since the last
					 * sync took them */
	uint64_t checked_ms;            /* monotonic, the last check here */
};

struct stripe {
	pthread_mutex_t lock;
	struct entry **buckets;
	size_t nbuckets, n;
};

/* One row of a sync statement, kept to undo "pushed" if it fails. */
struct sync_row {
	int64_t user_id, model_id, window, delta;
	enum auth_limit_type type;
};

struct sync_flight {
	struct auth *a;                 /* NULL once stop() orphaned it */
	struct sync_row *rows;
	size_t n;
};

struct auth_limiter {
	struct stripe stripes[STRIPES];
	atomic_bool db_ok;              /* the last sync reached PostgreSQL */
	/* main thread only */
	struct lg_timer *timer;
	struct sync_flight *flight;
	int64_t last_cleanup;
	bool db_down_logged;
};

/* ---- clock and windows ---- */

static int64_t now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec;
}

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int64_t window_start(enum window w, int64_t now)
{
	return now - now % window_len[w];
}

/* ---- the table ---- */

static uint64_t key_hash(int64_t user_id, int64_t model_id)
{
	uint64_t h = (uint64_t)user_id * 0x9E3779B97F4A7C15ull;

	h ^= (uint64_t)model_id + 0x632BE59BD9B4E019ull + (h << 6) + (h >> 2);
	h ^= h >> 29;
	h *= 0xBF58476D1CE4E5B9ull;
	return h ^ (h >> 32);
}

static struct stripe *stripe_of(struct auth_limiter *l, uint64_t h)
{
	return &l->stripes[h & (STRIPES - 1)];
}

static struct entry **bucket_of(struct stripe *s, uint64_t h)
{
	return &s->buckets[(h / STRIPES) & (s->nbuckets - 1)];
}

static struct entry *entry_find(struct stripe *s, uint64_t h, int64_t user_id, int64_t model_id)
{
	for (struct entry *e = *bucket_of(s, h); e; e = e->next)
		if (e->user_id == user_id && e->model_id == model_id)
			return e;
	return NULL;
}

/* Doubles the buckets of @s; on failure the table stays as it was (only
 * slower). Stripe locked. */
static void stripe_grow(struct stripe *s)
{
	size_t n = s->nbuckets * 2;
	struct entry **b = calloc(n, sizeof *b);

	if (!b)
		return;
	for (size_t i = 0; i < s->nbuckets; i++) {
		struct entry *e = s->buckets[i], *next;

		for (; e; e = next) {
			struct entry **to = &b[(key_hash(e->user_id, e->model_id) / STRIPES) & (n - 1)];

			next = e->next;
			e->next = *to;
			*to = e;
		}
	}
	free(s->buckets);
	s->buckets = b;
	s->nbuckets = n;
}

static void entry_roll(struct entry *e, int64_t now);

/* The entry of (user, model), made if needed. A new entry starts in the
 * windows of @now: with windows at 0 the sweep would take it for dead and
 * free it at the next sync. Stripe locked. NULL only when out of memory. */
static struct entry *entry_get(struct stripe *s, uint64_t h, int64_t user_id, int64_t model_id,
			       int64_t now)
{
	struct entry *e = entry_find(s, h, user_id, model_id), **b;

	if (e)
		return e;
	e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	e->user_id = user_id;
	e->model_id = model_id;
	entry_roll(e, now);
	if (s->n >= s->nbuckets)
		stripe_grow(s);
	b = bucket_of(s, h);
	e->next = *b;
	*b = e;
	s->n++;
	return e;
}

/* Moves the entry's windows to @now, forgetting counts of ended ones. */
static void entry_roll(struct entry *e, int64_t now)
{
	for (enum window w = 0; w < WINDOWS; w++) {
		int64_t start = window_start(w, now);

		if (e->window[w] == start)
			continue;
		e->window[w] = start;
		for (int t = 0; t < AUTH_LIMIT_TYPES; t++)
			if (window_of[t] == w)
				e->c[t] = (struct counter){ 0 };
	}
}

static int64_t used(const struct entry *e, enum auth_limit_type t)
{
	return e->c[t].local + e->c[t].others;
}

struct auth_limiter *auth_limiter_new(void)
{
	struct auth_limiter *l = calloc(1, sizeof *l);
	size_t i;

	if (!l)
		return NULL;
	for (i = 0; i < STRIPES; i++) {
		struct stripe *s = &l->stripes[i];

		s->buckets = calloc(BUCKETS_MIN, sizeof *s->buckets);
		if (!s->buckets || pthread_mutex_init(&s->lock, NULL) != 0) {
			free(s->buckets);
			goto fail;
		}
		s->nbuckets = BUCKETS_MIN;
	}
	atomic_init(&l->db_ok, true);
	return l;
fail:
	while (i-- > 0) {
		pthread_mutex_destroy(&l->stripes[i].lock);
		free(l->stripes[i].buckets);
	}
	free(l);
	return NULL;
}

void auth_limiter_free(struct auth_limiter *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < STRIPES; i++) {
		struct stripe *s = &l->stripes[i];

		for (size_t b = 0; b < s->nbuckets; b++) {
			struct entry *e = s->buckets[b], *next;

			for (; e; e = next) {
				next = e->next;
				free(e);
			}
		}
		free(s->buckets);
		pthread_mutex_destroy(&s->lock);
	}
	free(l);
}

/* ---- the check ---- */

/* What the AUTHORIZE hook decided, and what its headers say. */
struct verdict {
	int hit;                        /* the type exceeded, or -1 */
	bool counted;                   /* admitted and counted */
	int64_t tokens;                 /* reserved on TPM and TPD */
	int64_t window[WINDOWS];        /* where they were counted */
	int64_t value[AUTH_LIMIT_TYPES];        /* the role's limits */
	int64_t used[AUTH_LIMIT_TYPES];         /* after counting this request */
	int64_t reset[WINDOWS];                 /* seconds until the window ends */
};

static bool capped(int64_t value)
{
	return value >= 0;
}

/* Check, and count the request when admitted. Stripe locked. */
static void check_and_count(struct entry *e, const struct auth_limits *lim, int64_t tokens,
			    int64_t now, struct verdict *v)
{
	static const enum auth_limit_type order[] = { AUTH_TPM, AUTH_TPD, AUTH_RPM, AUTH_RPD };

	entry_roll(e, now);
	*v = (struct verdict){ .hit = -1 };
	e->checked_ms = mono_ms();
	e->limited = 0;
	for (size_t i = 0; i < LG_COUNT(order); i++) {
		enum auth_limit_type t = order[i];
		int64_t cost = (t == AUTH_TPM || t == AUTH_TPD) ? tokens : 1;

		v->value[t] = lim->value[t];
		if (!capped(lim->value[t]))
			continue;
		e->limited |= 1u << t;
		if (v->hit < 0 && lim->value[t] - used(e, t) < cost)
			v->hit = (int)t;
	}
	if (v->hit < 0) {
		e->c[AUTH_RPM].local++;
		e->c[AUTH_RPD].local++;
		e->c[AUTH_TPM].local += tokens;
		e->c[AUTH_TPD].local += tokens;
		e->dirty = true;
		v->counted = true;
		v->tokens = tokens;
	}
	for (int t = 0; t < AUTH_LIMIT_TYPES; t++)
		v->used[t] = used(e, (enum auth_limit_type)t);
	for (enum window w = 0; w < WINDOWS; w++) {
		v->window[w] = e->window[w];
		v->reset[w] = e->window[w] + window_len[w] - now;
	}
}

/* ---- headers (spec §7) ---- */

/* "1h2m3s", "4m5s" or "6s". */
static void format_reset(int64_t s, char *out, size_t len)
{
	int64_t h = s / 3600, m = s % 3600 / 60, sec = s % 60;

	if (h > 0)
		snprintf(out, len, "%" PRId64 "h%" PRId64 "m%" PRId64 "s", h, m, sec);
	else if (m > 0)
		snprintf(out, len, "%" PRId64 "m%" PRId64 "s", m, sec);
	else
		snprintf(out, len, "%" PRId64 "s", sec);
}

static void header_triple(struct auth *a, struct lg_req *req, const struct verdict *v,
			  enum auth_limit_type t, const char *limit_name,
			  const char *remaining_name, const char *reset_name)
{
	char limit[24] = "None", remaining[24] = "None", reset[32] = "None";

	if (capped(v->value[t])) {
		int64_t left = v->value[t] - v->used[t];

		snprintf(limit, sizeof limit, "%" PRId64, v->value[t]);
		snprintf(remaining, sizeof remaining, "%" PRId64, left > 0 ? left : 0);
		format_reset(v->reset[window_of[t]], reset, sizeof reset);
	}
	/* Only CR/LF or a reserved name make these fail: neither can happen. */
	(void)a->host->reply_header(req, limit_name, limit);
	(void)a->host->reply_header(req, remaining_name, remaining);
	(void)a->host->reply_header(req, reset_name, reset);
}

/* Tokens: the day's limit, or the minute's when the role has no day limit
 * (the spec falls back to TPM when TPD is 0, which here means no access). */
static void add_headers(struct auth *a, struct lg_req *req, const struct verdict *v)
{
	enum auth_limit_type tokens = v->value[AUTH_TPD] > 0 || v->value[AUTH_TPD] == AUTH_LIMIT_NONE
				      ? AUTH_TPD : AUTH_TPM;

	header_triple(a, req, v, tokens, "x-ratelimit-limit-token", "x-ratelimit-remaining-token",
		      "x-ratelimit-reset-token");
	header_triple(a, req, v, AUTH_RPM, "x-ratelimit-limit-request",
		      "x-ratelimit-remaining-request", "x-ratelimit-reset-requests");
}

/* What COMPLETE needs to replace the reservation with the real tokens. */
struct hold {
	int64_t user_id, model_id, tokens;
	int64_t window[WINDOWS];
};

/* Remembers the reservation for COMPLETE. Without request memory it stays
 * counted: the caller is limited a bit early, never late. */
static void keep_hold(struct auth *a, struct lg_req *req, int64_t user_id, int64_t model_id,
		      const struct verdict *v)
{
	struct auth_req *st = auth_req_get(a, req);
	struct hold *h = st ? a->host->req_alloc(req, sizeof *h) : NULL;

	if (!h)
		return;
	*h = (struct hold){ .user_id = user_id, .model_id = model_id, .tokens = v->tokens };
	memcpy(h->window, v->window, sizeof h->window);
	st->limits = h;
}

static enum lg_hook_result answer(struct auth *a, struct lg_req *req, int64_t user_id,
				  int64_t model_id, const struct verdict *v)
{
	char retry[24];

	add_headers(a, req, v);
	if (v->counted)
		keep_hold(a, req, user_id, model_id, v);
	if (v->hit < 0)
		return LG_HOOK_OK;
	snprintf(retry, sizeof retry, "%" PRId64, v->reset[window_of[v->hit]]);
	(void)a->host->reply_header(req, "Retry-After", retry);
	a->host->reply_error(req, 429, "%s", exceeded_messages[v->hit]);
	return LG_HOOK_DONE;
}

/* ---- the AUTHORIZE hook ---- */

/* The first request of an entry waits for the totals of other instances. */
struct first_read {
	struct auth *a;
	struct lg_req *req;
	struct auth_limits lim;
	int64_t tokens;
};

static const char read_sql[] =
	"SELECT type, extract(epoch FROM window_start)::bigint, count FROM rate_counter "
	"WHERE user_id = $1 AND model_id = $2 AND window_start IN (to_timestamp($3), "
	"to_timestamp($4))";

static int type_index(const char *name)
{
	for (int t = 0; t < AUTH_LIMIT_TYPES; t++)
		if (strcmp(name, type_names[t]) == 0)
			return t;
	return -1;
}

/* Sets "others" from a row of (type, window, total) for a counter of @e. */
static void learn_total(struct entry *e, int type, int64_t window, int64_t total)
{
	struct counter *c;

	if (type < 0 || e->window[window_of[type]] != window)
		return;
	c = &e->c[type];
	c->others = total - c->pushed > 0 ? total - c->pushed : 0;
}

static void on_first_read(const PGresult *res, const char *error, void *arg)
{
	struct first_read *fr = arg;
	struct auth *a = fr->a;
	struct auth_limiter *l = a->limiter;
	const struct lg_principal *who = a->host->req_principal(fr->req);
	uint64_t h = key_hash(who->user_id, fr->lim.model_id);
	struct stripe *s = stripe_of(l, h);
	int64_t now = now_s();
	struct verdict v;
	struct entry *e;

	if (error)
		atomic_store(&l->db_ok, false);
	pthread_mutex_lock(&s->lock);
	/* Found again by its key: the sweep kept it while it was being read,
	 * but a pointer is never kept across an unlock. */
	e = entry_get(s, h, who->user_id, fr->lim.model_id, now);
	if (e) {
		entry_roll(e, now);
		for (int i = 0; res && !error && i < PQntuples(res); i++)
			learn_total(e, type_index(PQgetvalue(res, i, 0)),
				    strtoll(PQgetvalue(res, i, 1), NULL, 10),
				    strtoll(PQgetvalue(res, i, 2), NULL, 10));
		e->reading = false;
		e->loaded = e->loaded || !error;
		check_and_count(e, &fr->lim, fr->tokens, now, &v);
	}
	pthread_mutex_unlock(&s->lock);
	if (!e) {
		a->host->reply_error(fr->req, 500, "An unexpected error occurred");
		a->host->resume(fr->req, LG_HOOK_DONE);
		return;
	}
	a->host->resume(fr->req, answer(a, fr->req, who->user_id, fr->lim.model_id, &v));
}

/* Reads the other instances' totals for @e's windows, then decides. */
static enum lg_hook_result read_first(struct auth *a, struct lg_req *req,
				      const struct auth_limits *lim, int64_t tokens,
				      int64_t user_id, int64_t now)
{
	struct first_read *fr = a->host->req_alloc(req, sizeof *fr);
	char user[24], model[24], minute[24], day[24];
	const char *params[] = { user, model, minute, day };

	if (!fr)
		return LG_HOOK_DECLINE;
	*fr = (struct first_read){ .a = a, .req = req, .lim = *lim, .tokens = tokens };
	snprintf(user, sizeof user, "%" PRId64, user_id);
	snprintf(model, sizeof model, "%" PRId64, lim->model_id);
	snprintf(minute, sizeof minute, "%" PRId64, window_start(MINUTE, now));
	snprintf(day, sizeof day, "%" PRId64, window_start(DAY, now));
	if (a->host->db_query(a->self, read_sql, 4, params, on_first_read, fr) < 0)
		return LG_HOOK_DECLINE;
	return LG_HOOK_PENDING;
}

static int64_t prompt_estimate(struct auth *a, struct lg_req *req)
{
	struct lg_str body = a->host->req_body(req);
	int64_t tokens = (int64_t)((body.len + 3) / 4);

	return tokens > 0 ? tokens : 1;
}

enum lg_hook_result auth_limits_authorize(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	struct auth_limiter *l = a->limiter;
	const struct lg_principal *who = a->host->req_principal(req);
	const struct lg_call *call = a->host->req_call(req);
	struct auth_roles *roles;
	const struct auth_role *role;
	const struct auth_limits *found;
	struct auth_limits lim;
	int64_t now = now_s(), tokens;
	uint64_t h;
	struct stripe *s;
	struct entry *e;
	struct verdict v;
	bool read = false;

	/* Admins and the master key have no limits (spec §5.1). */
	if (!who || !call || (who->permissions & LG_PERM_ADMIN) || who->user_id == 0)
		return LG_HOOK_OK;
	roles = auth_roles_get(a);
	role = auth_roles_find(roles, who->role_id);
	found = role ? auth_role_limits(role, call->model_id) : NULL;
	if (found)
		lim = *found;
	auth_roles_put(roles);
	/* Model access already refused callers without limit rows; a role
	 * changed since then has no limits to apply. */
	if (!found)
		return LG_HOOK_OK;
	if (!capped(lim.value[AUTH_TPM]) && !capped(lim.value[AUTH_TPD]) &&
	    !capped(lim.value[AUTH_RPM]) && !capped(lim.value[AUTH_RPD])) {
		struct verdict none = { .hit = -1 };

		memcpy(none.value, lim.value, sizeof none.value);
		return answer(a, req, who->user_id, call->model_id, &none);
	}
	tokens = prompt_estimate(a, req);
	h = key_hash(who->user_id, call->model_id);
	s = stripe_of(l, h);
	pthread_mutex_lock(&s->lock);
	e = entry_get(s, h, who->user_id, call->model_id, now);
	if (e) {
		/* Requests that come while a read runs count on what is known. */
		read = !e->reading && atomic_load(&l->db_ok) &&
		       (!e->loaded || mono_ms() - e->checked_ms >= REFRESH_IDLE_MS);
		if (read)
			e->reading = true;
		else
			check_and_count(e, &lim, tokens, now, &v);
	}
	pthread_mutex_unlock(&s->lock);
	if (e && read) {
		enum lg_hook_result r = read_first(a, req, &lim, tokens, who->user_id, now);

		if (r == LG_HOOK_PENDING)
			return r;
		/* No read: decide on what is known. @e may be gone since the
		 * unlock (the sweep runs on the main thread): find it again. */
		now = now_s();
		pthread_mutex_lock(&s->lock);
		e = entry_get(s, h, who->user_id, call->model_id, now);
		if (e) {
			e->reading = false;
			check_and_count(e, &lim, tokens, now, &v);
		}
		pthread_mutex_unlock(&s->lock);
	}
	if (!e) {
		a->host->reply_error(req, 500, "An unexpected error occurred");
		return LG_HOOK_DONE;
	}
	return answer(a, req, who->user_id, call->model_id, &v);
}

/* ---- the COMPLETE hook ---- */

enum lg_hook_result auth_limits_complete(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	struct auth_limiter *l = a->limiter;
	const struct lg_call *call = a->host->req_call(req);
	struct auth_req *st = a->host->req_get_data(req, a->self);
	const struct hold *hd = st ? st->limits : NULL;
	int64_t tokens;
	uint64_t h;
	struct stripe *s;
	struct entry *e;
	int64_t now;

	/* Only calls this hook admitted and counted have anything to settle. */
	if (!hd || !call)
		return LG_HOOK_OK;
	st->limits = NULL;
	tokens = (call->prompt_tokens > 0 ? call->prompt_tokens : 0) +
		 (call->completion_tokens > 0 ? call->completion_tokens : 0);
	h = key_hash(hd->user_id, hd->model_id);
	s = stripe_of(l, h);
	now = now_s();
	pthread_mutex_lock(&s->lock);
	/* A call longer than its windows may find its entry swept. */
	e = entry_get(s, h, hd->user_id, hd->model_id, now);
	if (e) {
		entry_roll(e, now);
		e->dirty = true;
		for (int t = AUTH_TPM; t <= AUTH_TPD; t++) {
			struct counter *c = &e->c[t];

			/* In the window of the reservation, replace it; in a later
			 * one, the tokens count there and the reservation ended
			 * with its window. */
			if (e->window[window_of[t]] == hd->window[window_of[t]])
				c->local += tokens - hd->tokens;
			else
				c->local += tokens;
			if (c->local < 0)
				c->local = 0;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return LG_HOOK_OK;
}

/* ---- the sync with other instances (main loop) ---- */

static const char sync_sql[] =
	"WITH d AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], "
	"$5::bigint[]) AS d(user_id, model_id, type, w, delta)), "
	"up AS (INSERT INTO rate_counter AS r (user_id, model_id, type, window_start, count) "
	"SELECT user_id, model_id, type, to_timestamp(w), delta FROM d WHERE delta <> 0 "
	"ON CONFLICT (user_id, model_id, type, window_start) "
	"DO UPDATE SET count = r.count + excluded.count "
	"RETURNING user_id, model_id, type, window_start, count) "
	"SELECT user_id, model_id, type, extract(epoch FROM window_start)::bigint, count FROM up "
	"UNION ALL "
	"SELECT r.user_id, r.model_id, r.type, d.w, r.count FROM d JOIN rate_counter r "
	"ON r.user_id = d.user_id AND r.model_id = d.model_id AND r.type = d.type "
	"AND r.window_start = to_timestamp(d.w) WHERE d.delta = 0";

static const char cleanup_sql[] =
	"DELETE FROM rate_counter WHERE window_start < now() - interval '2 days' "
	"OR (type IN ('rpm', 'tpm') AND window_start < now() - interval '2 minutes')";

/* A growing text buffer for the array parameters. */
struct text {
	char *p;
	size_t len, cap;
	bool failed;
};

static void text_add(struct text *t, const char *fmt, ...) LG_PRINTF(2, 3);
static void text_add(struct text *t, const char *fmt, ...)
{
	va_list ap;
	size_t cap;
	char *p;
	int n;

	if (t->failed)
		return;
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? t->cap - t->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if (t->p && t->len + (size_t)n < t->cap) {
			t->len += (size_t)n;
			return;
		}
		for (cap = t->cap ? t->cap * 2 : SYNC_TEXT_MIN; cap <= t->len + (size_t)n; cap *= 2)
			;
		p = realloc(t->p, cap);
		if (!p) {
			t->failed = true;
			return;
		}
		t->p = p;
		t->cap = cap;
	}
}

struct rows {
	struct sync_row *v;
	size_t n, cap;
};

static bool rows_add(struct rows *r, const struct sync_row *row)
{
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 64;
		struct sync_row *v = realloc(r->v, cap * sizeof *v);

		if (!v)
			return false;
		r->v = v;
		r->cap = cap;
	}
	r->v[r->n++] = *row;
	return true;
}

/* An entry nobody will need again: no read of its totals in flight (its
 * request finds it again when the read ends), its minute ended, and its day
 * either ended too or is not limited. */
static bool entry_dead(const struct entry *e, int64_t now)
{
	unsigned day_types = (1u << AUTH_TPD) | (1u << AUTH_RPD);

	return !e->reading && e->window[MINUTE] != window_start(MINUTE, now) &&
	       (e->window[DAY] != window_start(DAY, now) || !(e->limited & day_types));
}

/* Whether the sync takes @e: its counts changed here, or it was checked
 * here recently (its delta is then 0, but its totals are learned). */
static bool entry_wanted(const struct entry *e, uint64_t mono)
{
	/* Not "mono - checked_ms": a check after @mono was read is recent. */
	return e->dirty || e->checked_ms + REFRESH_IDLE_MS > mono;
}

/* Takes one row per limited counter of the entries the sync wants (a
 * delta may be 0: we still learn the total), marks the deltas as pushed,
 * and drops dead entries. Stripe locked. */
static bool collect_stripe(struct stripe *s, int64_t now, uint64_t mono, struct rows *out)
{
	for (size_t b = 0; b < s->nbuckets; b++) {
		struct entry **pe = &s->buckets[b];

		while (*pe) {
			struct entry *e = *pe;

			if (entry_dead(e, now)) {
				*pe = e->next;
				s->n--;
				free(e);
				continue;
			}
			pe = &e->next;
			if (!entry_wanted(e, mono))
				continue;
			e->dirty = false;
			for (int t = 0; t < AUTH_LIMIT_TYPES; t++) {
				struct counter *c = &e->c[t];
				struct sync_row row = {
					.user_id = e->user_id, .model_id = e->model_id,
					.window = e->window[window_of[t]], .type = t,
					.delta = c->local - c->pushed,
				};

				if (!(e->limited & (1u << t)) || row.window != window_start(window_of[t], now))
					continue;
				if (!rows_add(out, &row))
					return false;
				c->pushed = c->local;
			}
		}
	}
	return true;
}

/* Undoes "pushed" for rows whose statement failed: they go next time. */
static void unpush(struct auth_limiter *l, const struct sync_row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		const struct sync_row *r = &rows[i];
		uint64_t h = key_hash(r->user_id, r->model_id);
		struct stripe *s = stripe_of(l, h);
		struct entry *e;

		pthread_mutex_lock(&s->lock);
		e = entry_find(s, h, r->user_id, r->model_id);
		if (e && e->window[window_of[r->type]] == r->window) {
			e->c[r->type].pushed -= r->delta;
			e->dirty = true;
		}
		pthread_mutex_unlock(&s->lock);
	}
}

static void learn_rows(struct auth_limiter *l, const PGresult *res)
{
	for (int i = 0; i < PQntuples(res); i++) {
		int64_t user_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		int64_t model_id = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		uint64_t h = key_hash(user_id, model_id);
		struct stripe *s = stripe_of(l, h);
		struct entry *e;

		pthread_mutex_lock(&s->lock);
		e = entry_find(s, h, user_id, model_id);
		if (e)
			learn_total(e, type_index(PQgetvalue(res, i, 2)),
				    strtoll(PQgetvalue(res, i, 3), NULL, 10),
				    strtoll(PQgetvalue(res, i, 4), NULL, 10));
		pthread_mutex_unlock(&s->lock);
	}
}

static void flight_free(struct sync_flight *f)
{
	free(f->rows);
	free(f);
}

static void on_synced(const PGresult *res, const char *error, void *arg)
{
	struct sync_flight *f = arg;
	struct auth *a = f->a;
	struct auth_limiter *l;

	/* stop() orphaned it; the plugin may be gone. */
	if (!a) {
		flight_free(f);
		return;
	}
	l = a->limiter;
	l->flight = NULL;
	if (error) {
		unpush(l, f->rows, f->n);
		atomic_store(&l->db_ok, false);
		if (!l->db_down_logged)
			a->host->log(a->self, LG_LOG_WARN, "rate limits: sync with other instances "
				     "failed, counting locally until it works: %s", error);
		l->db_down_logged = true;
	} else {
		learn_rows(l, res);
		atomic_store(&l->db_ok, true);
		if (l->db_down_logged)
			a->host->log(a->self, LG_LOG_INFO, "rate limits: sync with other "
				     "instances works again");
		l->db_down_logged = false;
	}
	flight_free(f);
}

/* The five array parameters of sync_sql. */
static bool sync_params(const struct rows *r, struct text t[5])
{
	for (size_t i = 0; i < r->n; i++) {
		const struct sync_row *row = &r->v[i];
		const char *sep = i ? "," : "{";

		text_add(&t[0], "%s%" PRId64, sep, row->user_id);
		text_add(&t[1], "%s%" PRId64, sep, row->model_id);
		text_add(&t[2], "%s%s", sep, type_names[row->type]);
		text_add(&t[3], "%s%" PRId64, sep, row->window);
		text_add(&t[4], "%s%" PRId64, sep, row->delta);
	}
	for (int k = 0; k < 5; k++) {
		text_add(&t[k], "}");
		if (t[k].failed)
			return false;
	}
	return true;
}

static void sync_send(struct auth *a, struct rows *r)
{
	struct auth_limiter *l = a->limiter;
	struct text t[5] = { { 0 } };
	const char *params[5];
	struct sync_flight *f = calloc(1, sizeof *f);
	int k;

	if (!f || !sync_params(r, t))
		goto fail;
	for (k = 0; k < 5; k++)
		params[k] = t[k].p;
	*f = (struct sync_flight){ .a = a, .rows = r->v, .n = r->n };
	if (a->host->db_query(a->self, sync_sql, 5, params, on_synced, f) < 0)
		goto fail;
	l->flight = f;
	r->v = NULL;
	goto out;
fail:
	unpush(l, r->v, r->n);
	free(f);
out:
	for (k = 0; k < 5; k++)
		free(t[k].p);
}

static void on_cleaned(const PGresult *res, const char *error, void *arg)
{
	(void)res;
	(void)error;    /* tried again at the next cleanup */
	(void)arg;
}

static void sync_tick(void *arg)
{
	struct auth *a = arg;
	struct auth_limiter *l = a->limiter;
	struct rows r = { 0 };
	int64_t now = now_s();
	uint64_t mono = mono_ms();
	bool ok = true;

	if (l->flight)
		return;         /* the previous sync is still on its way */
	for (size_t i = 0; i < STRIPES && ok; i++) {
		struct stripe *s = &l->stripes[i];

		pthread_mutex_lock(&s->lock);
		ok = collect_stripe(s, now, mono, &r);
		pthread_mutex_unlock(&s->lock);
	}
	/* Out of memory: what was collected goes next time. */
	if (!ok) {
		unpush(l, r.v, r.n);
		r.n = 0;
	}
	if (r.n > 0)
		sync_send(a, &r);
	free(r.v);
	if (now - l->last_cleanup >= CLEANUP_EVERY_S) {
		l->last_cleanup = now;
		/* Best effort: a failure is only rows kept a bit longer. */
		(void)a->host->db_query(a->self, cleanup_sql, 0, NULL, on_cleaned, NULL);
	}
}

int auth_limits_start(struct auth *a)
{
	struct auth_limiter *l = a->limiter;
	uint64_t ms = a->limits_sync_ms ? a->limits_sync_ms : 250;

	l->last_cleanup = 0;
	l->timer = a->host->timer_start(a->self, ms, true, sync_tick, a);
	if (!l->timer)
		return -ENOMEM;
	return 0;
}

void auth_limits_stop(struct auth *a)
{
	struct auth_limiter *l = a->limiter;

	if (!l)
		return;
	a->host->timer_stop(l->timer);
	l->timer = NULL;
	if (l->flight) {
		l->flight->a = NULL;
		l->flight = NULL;
	}
}
