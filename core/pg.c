/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The PostgreSQL pool.
 *
 * pool_size threads, each owning one libpq connection, take queries from one
 * queue (mutex + condition variable) and post each outcome back to the loop
 * that asked. A thread whose connection broke resets it with backoff (100 ms
 * doubling up to 2 s); a query that meets a broken connection fails to its
 * callback instead of being retried, since it may not be idempotent, and
 * while a reset is backing off queries fail at once, so nothing waits for
 * the database to come back.
 *
 * lg_pg_copy() is a bulk load: BEGIN, an optional claim, COPY FROM STDIN
 * with the rows, COMMIT, all on one connection; a load that fails at any
 * step is rolled back there and then, and fails as a query would.
 *
 * lg_pg_query_sync() goes through the same queue and waits for its answer:
 * it shares the pool's connections, its reconnects and its bounded failure
 * time, and needs no connection of its own.
 *
 * lg_pg_listen() keeps one connection per loop for all the channels that
 * loop listens to. It connects without blocking (PQconnectStart/Poll driven
 * by events on that loop) and reconnects from a timer on that loop.
 * lg_pg_stop() frees the listeners, so call it once the listening loops no
 * longer run (or from the one listening loop's own thread), before freeing
 * those loops.
 */
#include "pg.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "log.h"

#define LOG_COMP "db"
#define BACKOFF_MIN_MS 100u
#define BACKOFF_MAX_MS 2000u
#define CONNECT_TIMEOUT_S 5
#define MAX_POOL_SIZE 256
#define MAX_PARAMS 65535   /* the protocol's limit */
#define CHANNEL_MAX 63     /* NAMEDATALEN - 1 */

/* ---- small tools ---- */

struct sbuf {
	char *s;
	size_t len, cap;
	bool failed;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
	size_t cap;
	char *p;

	if (b->failed)
		return;
	if (b->len + n + 1 > b->cap) {
		cap = b->cap ? b->cap : 128;
		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->s, cap);
		if (!p) {
			b->failed = true;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

static void sb_str(struct sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* Percent-encodes all but RFC 3986's unreserved characters, for a URI
 * query value. */
static void sb_uri_value(struct sbuf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	char enc[3] = { '%', 0, 0 };

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
			sb_add(b, s, 1);
			continue;
		}
		enc[1] = hex[c >> 4];
		enc[2] = hex[c & 15];
		sb_add(b, enc, 3);
	}
}

/* One word of libpq's "options": the server splits them at unescaped white
 * space, and a backslash escapes the next character. */
static void sb_option_word(struct sbuf *b, const char *s)
{
	for (; *s; s++) {
		if (isspace((unsigned char)*s) || *s == '\\')
			sb_add(b, "\\", 1);
		sb_add(b, s, 1);
	}
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct timespec ms_to_timespec(uint64_t ms)
{
	struct timespec ts;

	ts.tv_sec = (time_t)(ms / 1000);
	ts.tv_nsec = (long)(ms % 1000) * 1000000L;
	return ts;
}

static void sleep_ms(uint64_t ms)
{
	struct timespec ts = ms_to_timespec(ms);

	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

static uint32_t next_backoff(uint32_t backoff)
{
	if (!backoff)
		return BACKOFF_MIN_MS;
	return backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
}

/* ---- the target: connection string, description, secrets ---- */

/* What every connection of a pool is made from. The password is kept in
 * both spellings (as written in the URL and percent-decoded) only to scrub
 * it from any message before the message is shown. */
struct pg_target {
	char *conninfo;
	char where[256];     /* host:port/dbname */
	char *secret[2];
};

static void target_free(struct pg_target *t)
{
	free(t->conninfo);
	free(t->secret[0]);
	free(t->secret[1]);
	memset(t, 0, sizeof *t);
}

/* Masks every occurrence of @secret in @msg (same length, so in place). */
static void scrub_one(char *msg, const char *secret)
{
	size_t slen = secret ? strlen(secret) : 0;
	char *p = msg, *hit;

	if (!slen)
		return;
	while ((hit = strstr(p, secret))) {
		memset(hit, '*', slen);
		p = hit + slen;
	}
}

/* Copies a libpq message onto one line (libpq's messages span several)
 * without the password. */
static void clean_message(char *dst, size_t size, const char *msg, const struct pg_target *t)
{
	size_t n = 0;
	bool space = false;

	if (!msg || !*msg)
		msg = "unknown error";
	for (; *msg && n + 1 < size; msg++) {
		if (isspace((unsigned char)*msg)) {
			space = n > 0;
			continue;
		}
		if (space && n + 2 < size)
			dst[n++] = ' ';
		space = false;
		dst[n++] = *msg;
	}
	dst[n] = '\0';
	if (t) {
		scrub_one(dst, t->secret[0]);
		scrub_one(dst, t->secret[1]);
	}
}

static const char *const url_schemes[] = {
	"postgresql://", "postgres://", "postgresql+asyncpg://",
};

/* The URL with OpenGateLLM's "+asyncpg" removed, malloc'ed; NULL if the
 * scheme is not one of ours. */
static char *normalise_url(const char *url)
{
	const char *rest;
	char *out;

	if (!url)
		return NULL;
	for (size_t i = 0; i < LG_COUNT(url_schemes); i++) {
		size_t len = strlen(url_schemes[i]);

		if (strncasecmp(url, url_schemes[i], len) != 0)
			continue;
		rest = url + len;
		if (asprintf(&out, "postgresql://%s", rest) < 0)
			return NULL;
		return out;
	}
	return NULL;
}

/* Where the host part of a URL starts: after "scheme://" and the
 * credentials, which libpq ends at the first '@' before any '/'. */
static const char *url_host_part(const char *url)
{
	const char *start = strstr(url, "://");
	const char *p;

	if (!start)
		return url;
	start += 3;
	for (p = start; *p && *p != '@' && *p != '/'; p++)
		;
	return *p == '@' ? p + 1 : start;
}

/* The password as written in the URL (user:password@). */
static char *raw_url_password(const char *url)
{
	const char *start = strstr(url, "://");
	const char *host = url_host_part(url);
	const char *colon;

	if (!start || host == start + 3)
		return NULL;
	start += 3;
	colon = memchr(start, ':', (size_t)(host - 1 - start));
	if (!colon || colon + 1 == host - 1)
		return NULL;
	return strndup(colon + 1, (size_t)(host - 1 - colon - 1));
}

static const char *opt_value(const PQconninfoOption *opts, const char *keyword)
{
	for (; opts && opts->keyword; opts++)
		if (strcmp(opts->keyword, keyword) == 0)
			return opts->val && *opts->val ? opts->val : NULL;
	return NULL;
}

static void describe_opts(const PQconninfoOption *opts, char *buf, size_t len)
{
	const char *host = opt_value(opts, "host");
	const char *port = opt_value(opts, "port");
	const char *db = opt_value(opts, "dbname");

	if (!host)
		host = opt_value(opts, "hostaddr");
	if (!db)
		db = opt_value(opts, "user");
	snprintf(buf, len, "%s:%s/%s", host ? host : "localhost", port ? port : "5432",
		 db ? db : "postgres");
}

/* Parses @url (already normalised); on error @err names the problem. */
static PQconninfoOption *parse_url(const char *url, const struct pg_target *t, char *err,
				   size_t errlen)
{
	PQconninfoOption *opts;
	char *errmsg = NULL;
	char msg[256];

	opts = PQconninfoParse(url, &errmsg);
	if (opts)
		return opts;
	clean_message(msg, sizeof msg, errmsg ? errmsg : "out of memory", t);
	if (errmsg)
		PQfreemem(errmsg);
	lg_errf(err, errlen, "invalid PostgreSQL URL: %s", msg);
	return NULL;
}

static bool valid_setting_name(const char *name)
{
	if (!name || !*name)
		return false;
	for (; *name; name++)
		if (!isalnum((unsigned char)*name) && *name != '_' && *name != '.')
			return false;
	return true;
}

/* "options": what the URL already had, then -c name=value for each server
 * setting and for the command timeout. */
static int build_options(const struct lg_pg_config *cfg, const char *existing, struct sbuf *opt,
			 char *err, size_t errlen)
{
	const char *const *s = cfg->server_settings;
	bool has_timeout = false;
	char num[32];

	if (existing)
		sb_str(opt, existing);
	for (; s && s[0]; s += 2) {
		if (!valid_setting_name(s[0]) || !s[1]) {
			lg_errf(err, errlen, "invalid PostgreSQL server setting \"%s\"",
				s[0] ? s[0] : "");
			return -1;
		}
		if (strcasecmp(s[0], "statement_timeout") == 0)
			has_timeout = true;
		sb_str(opt, opt->len ? " -c " : "-c ");
		sb_option_word(opt, s[0]);
		sb_str(opt, "=");
		sb_option_word(opt, s[1]);
	}
	if (cfg->command_timeout_ms && !has_timeout) {
		snprintf(num, sizeof num, "%u", cfg->command_timeout_ms);
		sb_str(opt, opt->len ? " -c statement_timeout=" : "-c statement_timeout=");
		sb_str(opt, num);
	}
	return 0;
}

static void sb_param(struct sbuf *b, const char *key, const char *value)
{
	if (b->failed)
		return;
	sb_str(b, strchr(url_host_part(b->s), '?') ? "&" : "?");
	sb_str(b, key);
	sb_str(b, "=");
	sb_uri_value(b, value);
}

/* The URL plus our parameters; libpq lets a later parameter override an
 * earlier one, and we only add what the URL does not set (but "options",
 * which we extend). */
static int build_conninfo(const struct lg_pg_config *cfg, const char *url,
			  const PQconninfoOption *opts, struct pg_target *t, char *err,
			  size_t errlen)
{
	struct sbuf b = { 0 }, opt = { 0 };
	char num[16];
	int ret = -1;

	sb_str(&b, url);
	if (cfg->application_name && *cfg->application_name &&
	    !opt_value(opts, "application_name"))
		sb_param(&b, "application_name", cfg->application_name);
	if (build_options(cfg, opt_value(opts, "options"), &opt, err, errlen) != 0)
		goto cleanup;
	if (opt.len)
		sb_param(&b, "options", opt.s);
	if (!opt_value(opts, "connect_timeout")) {
		snprintf(num, sizeof num, "%d", CONNECT_TIMEOUT_S);
		sb_param(&b, "connect_timeout", num);
	}
	/* Dead peers are noticed by the kernel, also on idle connections such
	 * as the LISTEN one, and data left unacknowledged for a minute drops
	 * the connection instead of hanging a pool thread. */
	if (!opt_value(opts, "keepalives")) {
		sb_param(&b, "keepalives", "1");
		sb_param(&b, "keepalives_idle", "30");
		sb_param(&b, "keepalives_interval", "10");
		sb_param(&b, "keepalives_count", "3");
	}
	if (!opt_value(opts, "tcp_user_timeout"))
		sb_param(&b, "tcp_user_timeout", "60000");
	if (b.failed || opt.failed) {
		lg_errf(err, errlen, "out of memory");
		goto cleanup;
	}
	t->conninfo = b.s;
	b.s = NULL;
	ret = 0;
cleanup:
	free(b.s);
	free(opt.s);
	return ret;
}

static int target_init(const struct lg_pg_config *cfg, struct pg_target *t, char *err,
		       size_t errlen)
{
	PQconninfoOption *opts = NULL, *check = NULL;
	const char *password;
	char *url = NULL;
	int ret = -1;

	memset(t, 0, sizeof *t);
	if (!cfg || !cfg->url || !*cfg->url) {
		lg_errf(err, errlen, "no PostgreSQL URL configured");
		return -1;
	}
	url = normalise_url(cfg->url);
	if (!url) {
		lg_errf(err, errlen, "unsupported PostgreSQL URL: expected postgresql://, "
			"postgres:// or postgresql+asyncpg://");
		return -1;
	}
	t->secret[0] = raw_url_password(url);
	opts = parse_url(url, t, err, errlen);
	if (!opts)
		goto cleanup;
	password = opt_value(opts, "password");
	if (password && !(t->secret[1] = strdup(password)))
		goto oom;
	describe_opts(opts, t->where, sizeof t->where);
	if (build_conninfo(cfg, url, opts, t, err, errlen) != 0)
		goto cleanup;
	/* Ours must parse too (a bad server setting value, say). */
	check = parse_url(t->conninfo, t, err, errlen);
	if (!check)
		goto cleanup;
	ret = 0;
	goto cleanup;
oom:
	lg_errf(err, errlen, "out of memory");
cleanup:
	if (opts)
		PQconninfoFree(opts);
	if (check)
		PQconninfoFree(check);
	free(url);
	if (ret != 0)
		target_free(t);
	return ret;
}

int lg_pg_conninfo(const struct lg_pg_config *cfg, char **out, char *err, size_t errlen)
{
	struct pg_target t;

	*out = NULL;
	if (target_init(cfg, &t, err, errlen) != 0)
		return -1;
	*out = t.conninfo;
	t.conninfo = NULL;
	target_free(&t);
	return 0;
}

void lg_pg_describe(const struct lg_pg_config *cfg, char *buf, size_t len)
{
	PQconninfoOption *opts;
	char *url = normalise_url(cfg ? cfg->url : NULL);

	snprintf(buf, len, "(invalid PostgreSQL URL)");
	if (!url)
		return;
	opts = PQconninfoParse(url, NULL);
	if (opts) {
		describe_opts(opts, buf, len);
		PQconninfoFree(opts);
	}
	free(url);
}

/* Server notices go to our log, not to libpq's default of stderr: warnings
 * as warnings, the rest (NOTICE: ... skipping) as debug. */
static void on_notice(void *arg, const PGresult *res)
{
	const char *severity = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	char msg[512];

	clean_message(msg, sizeof msg, PQresultErrorMessage(res), NULL);
	if (severity && strcmp(severity, "WARNING") == 0)
		lg_warn(LOG_COMP, "PostgreSQL: %s", msg);
	else
		lg_debug(LOG_COMP, "PostgreSQL: %s", msg);
}

static void route_notices(PGconn *conn)
{
	PQsetNoticeReceiver(conn, on_notice, NULL);
}

/* Connects, retrying with backoff until @retry_ms has passed. */
static PGconn *connect_with_retry(const struct pg_target *t, uint32_t retry_ms, char *err,
				  size_t errlen)
{
	uint64_t deadline = now_ms() + retry_ms;
	uint32_t backoff = BACKOFF_MIN_MS;
	char msg[512];
	PGconn *conn;

	for (int attempt = 1;; attempt++) {
		uint64_t now, wait;

		conn = PQconnectdb(t->conninfo);
		if (!conn) {
			lg_errf(err, errlen, "cannot connect to PostgreSQL at %s: out of memory",
				t->where);
			return NULL;
		}
		if (PQstatus(conn) == CONNECTION_OK) {
			route_notices(conn);
			if (attempt > 1)
				lg_info(LOG_COMP, "connected to PostgreSQL at %s (attempt %d)",
					t->where, attempt);
			return conn;
		}
		clean_message(msg, sizeof msg, PQerrorMessage(conn), t);
		PQfinish(conn);
		now = now_ms();
		if (now >= deadline) {
			lg_warn(LOG_COMP, "cannot connect to PostgreSQL at %s (attempt %d, giving up): %s",
				t->where, attempt, msg);
			lg_errf(err, errlen, "cannot connect to PostgreSQL at %s: %s", t->where, msg);
			return NULL;
		}
		wait = deadline - now < backoff ? deadline - now : backoff;
		lg_warn(LOG_COMP, "cannot connect to PostgreSQL at %s (attempt %d, retrying in %llu ms): %s",
			t->where, attempt, (unsigned long long)wait, msg);
		sleep_ms(wait);
		backoff = next_backoff(backoff);
	}
}

PGconn *lg_pg_connect_one(const struct lg_pg_config *cfg, char *err, size_t errlen)
{
	struct pg_target t;
	PGconn *conn;

	if (target_init(cfg, &t, err, errlen) != 0)
		return NULL;
	conn = connect_with_retry(&t, cfg->connect_retry_ms, err, errlen);
	target_free(&t);
	return conn;
}

/* ---- queries ---- */

/* A query sync waiter: the caller's stack, signalled under the pool lock. */
struct pg_sync_wait {
	pthread_cond_t cond;
	bool done;
};

/* One query from submission to callback. One allocation: the struct, then
 * the strings of @sql and the parameters, then for a bulk load the COPY
 * statement and its rows. */
struct pg_query {
	struct pg_query *next;
	const char *sql;              /* the statement, or a load's claim (NULL: none) */
	const char *copy_sql;         /* a load's COPY ... FROM STDIN; NULL: not a load */
	const char *data;             /* a load's rows */
	size_t len;
	struct lg_loop *reply_to;     /* async: where @cb runs */
	lg_pg_fn cb;
	void *arg;
	struct pg_sync_wait *wait;    /* sync: who waits */
	PGresult *res;                /* on success */
	const char *error;            /* on failure: error_buf or a constant */
	char *error_buf;
	int nparams;
	const char *params[];
};

/* The bytes query_new() allocates; 0 when they do not fit a size_t. */
static size_t query_size(const char *sql, int nparams, const char *const *params,
			 const struct lg_db_copy *load)
{
	size_t size = sizeof(struct pg_query) + (size_t)nparams * sizeof(char *);

	if (sql)
		size += strlen(sql) + 1;
	for (int i = 0; i < nparams; i++)
		if (params[i])
			size += strlen(params[i]) + 1;
	if (!load)
		return size;
	size += strlen(load->copy_sql) + 1;
	return load->len > SIZE_MAX - size ? 0 : size + load->len;
}

/* Copies @n bytes to *@p and moves *@p past them; where they went. */
static const char *put_bytes(char **p, const void *src, size_t n)
{
	const char *at = *p;

	if (n)
		memcpy(*p, src, n);
	*p += n;
	return at;
}

static const char *put_str(char **p, const char *s)
{
	return put_bytes(p, s, strlen(s) + 1);
}

/* A query owning copies of @sql (NULL for a load without a claim), its
 * parameters and, for a bulk load (@load not NULL), the COPY statement and
 * the rows. */
static struct pg_query *query_new(const char *sql, int nparams, const char *const *params,
				  const struct lg_db_copy *load)
{
	size_t size = query_size(sql, nparams, params, load);
	struct pg_query *q;
	char *p;

	q = size ? calloc(1, size) : NULL;
	if (!q)
		return NULL;
	p = (char *)&q->params[nparams];
	q->sql = sql ? put_str(&p, sql) : NULL;
	for (int i = 0; i < nparams; i++)
		if (params[i])      /* else SQL NULL */
			q->params[i] = put_str(&p, params[i]);
	q->nparams = nparams;
	if (load) {
		q->copy_sql = put_str(&p, load->copy_sql);
		q->data = put_bytes(&p, load->data, load->len);
		q->len = load->len;
	}
	return q;
}

static void query_free(struct pg_query *q)
{
	PQclear(q->res);
	free(q->error_buf);
	free(q);
}

static void query_fail(struct pg_query *q, const char *fmt, ...) LG_PRINTF(2, 3);
static void query_fail(struct pg_query *q, const char *fmt, ...)
{
	va_list ap;
	int r;

	PQclear(q->res);
	q->res = NULL;
	va_start(ap, fmt);
	r = vasprintf(&q->error_buf, fmt, ap);
	va_end(ap);
	if (r < 0) {
		q->error_buf = NULL;
		q->error = "out of memory";
		return;
	}
	q->error = q->error_buf;
}

struct pg_worker {
	struct lg_pg *pg;
	PGconn *conn;
	pthread_t thread;
	bool started;
	uint32_t backoff_ms;        /* 0: the last reset worked */
	uint64_t next_reset_ms;     /* no reset attempt before this */
	char last_error[256];
	int index;
	atomic_bool connected;      /* for lg_pg_stats(): written by this thread */
	atomic_bool busy;
};

struct pg_listener;

struct lg_pg {
	struct pg_target target;
	int nworkers;
	struct pg_worker *workers;
	pthread_mutex_t lock;         /* the queue, stopping, the listener list */
	pthread_cond_t more;          /* a query was queued, or stopping */
	struct pg_query *head, *tail;
	bool stopping;
	size_t queued;                /* the queue's length, under @lock */
	atomic_bool healthy;
	struct pg_listener *listeners;
	/* lg_pg_stats() */
	atomic_uint_fast64_t succeeded, errors, unavailable, reconnects;
};

bool lg_pg_healthy(const struct lg_pg *pg)
{
	return atomic_load(&pg->healthy);
}

void lg_pg_stats(struct lg_pg *pg, struct lg_db_stats *out)
{
	*out = (struct lg_db_stats){
		.size = sizeof *out,
		.connections = (uint32_t)pg->nworkers,
		.succeeded = atomic_load(&pg->succeeded),
		.errors = atomic_load(&pg->errors),
		.unavailable = atomic_load(&pg->unavailable),
		.reconnects = atomic_load(&pg->reconnects),
		.healthy = atomic_load(&pg->healthy) ? 1 : 0,
	};
	for (int i = 0; i < pg->nworkers; i++) {
		out->connected += atomic_load(&pg->workers[i].connected);
		out->busy += atomic_load(&pg->workers[i].busy);
	}
	pthread_mutex_lock(&pg->lock);
	out->queued = pg->queued;
	pthread_mutex_unlock(&pg->lock);
}

/* Reconnects a worker's broken connection; on failure, backs off. */
static bool worker_reset(struct pg_worker *w)
{
	struct lg_pg *pg = w->pg;

	PQreset(w->conn);
	if (PQstatus(w->conn) == CONNECTION_OK) {
		lg_info(LOG_COMP, "pool connection %d to %s restored", w->index, pg->target.where);
		w->backoff_ms = 0;
		w->last_error[0] = '\0';
		atomic_store(&w->connected, true);
		atomic_fetch_add(&pg->reconnects, 1);
		atomic_store(&pg->healthy, true);
		return true;
	}
	clean_message(w->last_error, sizeof w->last_error, PQerrorMessage(w->conn), &pg->target);
	/* One warning when the outage starts, not one per attempt. */
	if (!w->backoff_ms)
		lg_warn(LOG_COMP, "pool connection %d to %s: reconnect failed, retrying with backoff: %s",
			w->index, pg->target.where, w->last_error);
	else
		lg_debug(LOG_COMP, "pool connection %d to %s: reconnect failed: %s", w->index,
			 pg->target.where, w->last_error);
	w->backoff_ms = next_backoff(w->backoff_ms);
	w->next_reset_ms = now_ms() + w->backoff_ms;
	atomic_store(&w->connected, false);
	atomic_store(&pg->healthy, false);
	return false;
}

static bool worker_connection_ready(struct pg_worker *w)
{
	/* A server that restarted closed this idle connection: read what it
	 * said now (one non-blocking read), so that the query goes to a new
	 * connection instead of failing on the dead one. */
	if (PQstatus(w->conn) == CONNECTION_OK && PQconsumeInput(w->conn) &&
	    PQstatus(w->conn) == CONNECTION_OK)
		return true;
	/* Backing off, unless another connection of the pool just got
	 * through: then the server is back and waiting only fails queries. */
	if (now_ms() < w->next_reset_ms && !atomic_load(&w->pg->healthy))
		return false;
	return worker_reset(w);
}

static void statement_succeeded(struct lg_pg *pg)
{
	atomic_store(&pg->healthy, true);
	atomic_fetch_add(&pg->succeeded, 1);
}

/* The connection broke under a statement. Not retried: the statement may
 * have run. The next query (or the idle thread) resets the connection at
 * once. */
static void connection_lost(struct pg_worker *w, struct pg_query *q)
{
	struct lg_pg *pg = w->pg;

	clean_message(w->last_error, sizeof w->last_error, PQerrorMessage(w->conn), &pg->target);
	w->next_reset_ms = 0;
	atomic_store(&w->connected, false);
	atomic_store(&pg->healthy, false);
	atomic_fetch_add(&pg->unavailable, 1);
	lg_warn(LOG_COMP, "pool connection %d to %s lost: %s", w->index, pg->target.where,
		w->last_error);
	query_fail(q, "database connection lost: %s", w->last_error);
}

/* What a refused statement's result says. Only the primary message:
 * DETAIL and CONTEXT may quote parameter values or rows. @why stands in for
 * a result that has the wrong status but no error. */
static const char *refusal_message(PGconn *conn, const PGresult *res, const char *why)
{
	const char *primary;

	if (!res)
		return PQerrorMessage(conn);
	if (PQresultStatus(res) == PGRES_EMPTY_QUERY)
		return "empty query";
	primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
	if (primary)
		return primary;
	if (*PQresultErrorMessage(res))
		return PQresultErrorMessage(res);
	return why ? why : PQresStatus(PQresultStatus(res));
}

/* A statement failed with @res (NULL: libpq made none; may be @q->res,
 * which this frees): an outage if the connection is gone, else the server
 * refused it, which is a statement error and not an outage. */
static void statement_failed(struct pg_worker *w, struct pg_query *q, const PGresult *res,
			     const char *why)
{
	struct lg_pg *pg = w->pg;
	char msg[512];

	if (PQstatus(w->conn) != CONNECTION_OK) {
		connection_lost(w, q);
		return;
	}
	atomic_store(&pg->healthy, true);
	atomic_fetch_add(&pg->errors, 1);
	clean_message(msg, sizeof msg, refusal_message(w->conn, res, why), &pg->target);
	query_fail(q, "%s", msg);
}

static void run_statement(struct pg_worker *w, struct pg_query *q)
{
	ExecStatusType st;

	q->res = PQexecParams(w->conn, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
	st = q->res ? PQresultStatus(q->res) : PGRES_FATAL_ERROR;
	if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
		statement_succeeded(w->pg);
		return;
	}
	statement_failed(w, q, q->res, NULL);
}

/* ---- bulk loads: BEGIN, the claim, COPY FROM STDIN, COMMIT ---- */

/* Bytes per CopyData message. The server reads each message whole into a
 * buffer of the message's size: one message per batch made it allocate,
 * fault in and copy a fresh buffer for every load (a sixth of its CPU in
 * the load, by perf), where small messages reuse one buffer. psql sends
 * 8 KiB too. */
#define COPY_CHUNK (8 << 10)

/* Ends a failed load's transaction without the warning of
 * end_stray_transaction(), which is for a query's own mistakes. ROLLBACK
 * also ends a COPY still in progress (libpq sends CopyFail first). */
static void rollback_quietly(struct pg_worker *w)
{
	PGTransactionStatusType ts = PQtransactionStatus(w->conn);
	PGresult *res;

	if (PQstatus(w->conn) != CONNECTION_OK || ts == PQTRANS_IDLE || ts == PQTRANS_UNKNOWN)
		return;
	res = PQexec(w->conn, "ROLLBACK");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		lg_debug(LOG_COMP, "ROLLBACK of a failed load on pool connection %d failed: %s",
			 w->index, PQresultErrorMessage(res));
	PQclear(res);
}

/* A step of a load failed with @res (freed here): the load fails and its
 * transaction is rolled back. The message is taken first: ROLLBACK
 * replaces the connection's. */
static void load_failed(struct pg_worker *w, struct pg_query *q, PGresult *res, const char *why)
{
	statement_failed(w, q, res, why);
	PQclear(res);
	rollback_quietly(w);
}

/* Whether a step's @res has status @want; if not, the load has failed and
 * @res is freed. */
static bool load_step(struct pg_worker *w, struct pg_query *q, PGresult *res,
		      ExecStatusType want, const char *why)
{
	if (res && PQresultStatus(res) == want)
		return true;
	load_failed(w, q, res, why);
	return false;
}

static bool load_begin(struct pg_worker *w, struct pg_query *q)
{
	PGresult *res = PQexec(w->conn, "BEGIN");

	if (!load_step(w, q, res, PGRES_COMMAND_OK, NULL))
		return false;
	PQclear(res);
	return true;
}

/* Runs the claim, if any. *@skip: its result when it returned no row (the
 * batch was loaded before: no COPY), else NULL. A claim must return rows
 * (RETURNING): one that cannot would skip every load. */
static bool load_claim(struct pg_worker *w, struct pg_query *q, PGresult **skip)
{
	PGresult *res;

	*skip = NULL;
	if (!q->sql)
		return true;
	res = PQexecParams(w->conn, q->sql, q->nparams, NULL, q->params, NULL, NULL, 0);
	if (!load_step(w, q, res, PGRES_TUPLES_OK, "the claim returns no rows (no RETURNING?)"))
		return false;
	if (PQntuples(res) == 0)
		*skip = res;
	else
		PQclear(res);
	return true;
}

/* Sends the rows and ends the COPY. On a blocking connection these only
 * fail when the connection does; an error of the server (a bad row) comes
 * with the COPY's result. */
static bool send_rows(PGconn *conn, const char *data, size_t len)
{
	while (len > 0) {
		int n = len < COPY_CHUNK ? (int)len : COPY_CHUNK;

		if (PQputCopyData(conn, data, n) != 1)
			return false;
		data += n;
		len -= (size_t)n;
	}
	return PQputCopyEnd(conn, NULL) == 1;
}

/* The COPY's result, the rest drained so that the connection can take the
 * next statement. */
static PGresult *copy_result(PGconn *conn)
{
	PGresult *res = PQgetResult(conn), *more;

	while ((more = PQgetResult(conn)))
		PQclear(more);
	return res;
}

/* COPY FROM STDIN with the load's rows: its result, or NULL when the load
 * failed. */
static PGresult *load_copy(struct pg_worker *w, struct pg_query *q)
{
	PGresult *res = PQexecParams(w->conn, q->copy_sql, 0, NULL, NULL, NULL, NULL, 0);

	if (!load_step(w, q, res, PGRES_COPY_IN, "not a COPY ... FROM STDIN statement"))
		return NULL;
	PQclear(res);
	if (!send_rows(w->conn, q->data, q->len)) {
		load_failed(w, q, NULL, NULL);
		return NULL;
	}
	res = copy_result(w->conn);
	if (!load_step(w, q, res, PGRES_COMMAND_OK, NULL))
		return NULL;
	return res;
}

/* COMMIT answers "ROLLBACK", without an error, for a transaction that had
 * failed: that is a failure too. */
static bool load_commit(struct pg_worker *w, struct pg_query *q)
{
	PGresult *res = PQexec(w->conn, "COMMIT");

	if (!load_step(w, q, res, PGRES_COMMAND_OK, NULL))
		return false;
	if (strcmp(PQcmdStatus(res), "COMMIT") != 0) {
		load_failed(w, q, res, "the transaction was rolled back");
		return false;
	}
	PQclear(res);
	return true;
}

/* One transaction: the claim, then the COPY unless the claim returned no
 * row. Delivers the COPY's result (or the claim's); one success counted. */
static void run_load(struct pg_worker *w, struct pg_query *q)
{
	PGresult *res;

	if (!load_begin(w, q) || !load_claim(w, q, &res))
		return;
	if (!res && !(res = load_copy(w, q)))
		return;
	if (!load_commit(w, q)) {
		PQclear(res);
		return;
	}
	statement_succeeded(w->pg);
	q->res = res;
}

static void run_query(struct pg_worker *w, struct pg_query *q)
{
	struct lg_pg *pg = w->pg;

	if (!worker_connection_ready(w)) {
		atomic_fetch_add(&pg->unavailable, 1);
		query_fail(q, "database unavailable (%s): %s", pg->target.where, w->last_error);
		return;
	}
	if (q->copy_sql)
		run_load(w, q);
	else
		run_statement(w, q);
}

/* Pool connections are shared by unrelated queries: a transaction left
 * open by one (a lone BEGIN) must not capture the next ones. */
static void end_stray_transaction(struct pg_worker *w)
{
	PGTransactionStatusType ts = PQtransactionStatus(w->conn);
	PGresult *res;

	if (ts != PQTRANS_INTRANS && ts != PQTRANS_INERROR)
		return;
	lg_warn(LOG_COMP, "a query left a transaction open on pool connection %d: rolled back",
		w->index);
	res = PQexec(w->conn, "ROLLBACK");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		lg_warn(LOG_COMP, "ROLLBACK on pool connection %d failed: %s", w->index,
			PQresultErrorMessage(res));
	PQclear(res);
}

static void deliver_on_loop(void *arg)
{
	struct pg_query *q = arg;

	q->cb(q->error ? NULL : q->res, q->error, q->arg);
	query_free(q);
}

static void finish_query(struct lg_pg *pg, struct pg_query *q)
{
	if (q->wait) {
		/* The waiter frees @q once it holds the lock again. */
		pthread_mutex_lock(&pg->lock);
		q->wait->done = true;
		pthread_cond_signal(&q->wait->cond);
		pthread_mutex_unlock(&pg->lock);
		return;
	}
	if (lg_loop_post(q->reply_to, deliver_on_loop, q) != 0) {
		lg_error(LOG_COMP, "out of memory: a query result to %s is lost",
			 lg_loop_name(q->reply_to));
		query_free(q);
	}
}

/* The next query, or NULL when stopping with an empty queue. While idle
 * with a broken connection, resets it in the background so that
 * lg_pg_healthy() recovers without traffic. */
static struct pg_query *next_query(struct pg_worker *w)
{
	struct lg_pg *pg = w->pg;
	struct pg_query *q = NULL;

	pthread_mutex_lock(&pg->lock);
	while (!pg->head && !pg->stopping) {
		if (PQstatus(w->conn) == CONNECTION_OK) {
			pthread_cond_wait(&pg->more, &pg->lock);
		} else if (now_ms() < w->next_reset_ms) {
			struct timespec ts = ms_to_timespec(w->next_reset_ms);

			pthread_cond_timedwait(&pg->more, &pg->lock, &ts);
		} else {
			pthread_mutex_unlock(&pg->lock);
			worker_reset(w);
			pthread_mutex_lock(&pg->lock);
		}
	}
	if (pg->head) {
		q = pg->head;
		pg->head = q->next;
		if (!pg->head)
			pg->tail = NULL;
		q->next = NULL;
		pg->queued--;
	}
	pthread_mutex_unlock(&pg->lock);
	return q;
}

static void *worker_main(void *arg)
{
	struct pg_worker *w = arg;
	struct pg_query *q;

	while ((q = next_query(w))) {
		atomic_store(&w->busy, true);
		run_query(w, q);
		finish_query(w->pg, q);
		end_stray_transaction(w);
		atomic_store(&w->busy, false);
	}
	return NULL;
}

static int enqueue(struct lg_pg *pg, struct pg_query *q)
{
	pthread_mutex_lock(&pg->lock);
	if (pg->stopping) {
		pthread_mutex_unlock(&pg->lock);
		return -ESHUTDOWN;
	}
	if (pg->tail)
		pg->tail->next = q;
	else
		pg->head = q;
	pg->tail = q;
	pg->queued++;
	pthread_cond_signal(&pg->more);
	pthread_mutex_unlock(&pg->lock);
	return 0;
}

static bool valid_query(const char *sql, int nparams, const char *const *params)
{
	return sql && nparams >= 0 && nparams <= MAX_PARAMS && (nparams == 0 || params);
}

bool lg_pg_copy_valid(const struct lg_db_copy *copy)
{
	if (!copy || copy->size < sizeof *copy || !copy->copy_sql || (copy->len && !copy->data))
		return false;
	if (!copy->claim_sql)
		return copy->nparams == 0;
	return valid_query(copy->claim_sql, copy->nparams, copy->params);
}

/* Queues @q (taken: freed here on error) to be answered on @reply_to. */
static int submit(struct lg_pg *pg, struct pg_query *q, struct lg_loop *reply_to, lg_pg_fn cb,
		  void *arg)
{
	int r;

	q->reply_to = reply_to;
	q->cb = cb;
	q->arg = arg;
	r = enqueue(pg, q);
	if (r != 0)
		query_free(q);
	return r;
}

int lg_pg_query(struct lg_pg *pg, struct lg_loop *reply_to, const char *sql, int nparams,
		const char *const *params, lg_pg_fn cb, void *arg)
{
	struct pg_query *q;

	if (!pg || !reply_to || !cb || !valid_query(sql, nparams, params))
		return -EINVAL;
	q = query_new(sql, nparams, params, NULL);
	if (!q)
		return -ENOMEM;
	return submit(pg, q, reply_to, cb, arg);
}

int lg_pg_copy(struct lg_pg *pg, struct lg_loop *reply_to, const struct lg_db_copy *copy,
	       lg_pg_fn cb, void *arg)
{
	struct pg_query *q;

	if (!pg || !reply_to || !cb || !lg_pg_copy_valid(copy))
		return -EINVAL;
	q = query_new(copy->claim_sql, copy->nparams, copy->params, copy);
	if (!q)
		return -ENOMEM;
	return submit(pg, q, reply_to, cb, arg);
}

/* Queues @q (taken: always freed here) and waits for its outcome: the
 * result, or NULL with @err set. */
static PGresult *submit_and_wait(struct lg_pg *pg, struct pg_query *q, char *err,
				 size_t errlen)
{
	struct pg_sync_wait wait = { .done = false };
	PGresult *res = NULL;

	if (pthread_cond_init(&wait.cond, NULL) != 0) {
		lg_errf(err, errlen, "cannot create a condition variable");
		query_free(q);
		return NULL;
	}
	q->wait = &wait;
	if (enqueue(pg, q) != 0) {
		lg_errf(err, errlen, "the database pool is stopping");
		goto cleanup;
	}
	pthread_mutex_lock(&pg->lock);
	while (!wait.done)
		pthread_cond_wait(&wait.cond, &pg->lock);
	pthread_mutex_unlock(&pg->lock);
	if (q->error) {
		lg_errf(err, errlen, "%s", q->error);
	} else {
		res = q->res;
		q->res = NULL;
	}
cleanup:
	query_free(q);
	pthread_cond_destroy(&wait.cond);
	return res;
}

PGresult *lg_pg_query_sync(struct lg_pg *pg, const char *sql, int nparams,
			   const char *const *params, char *err, size_t errlen)
{
	struct pg_query *q;

	if (!pg || !valid_query(sql, nparams, params)) {
		lg_errf(err, errlen, "invalid query");
		return NULL;
	}
	q = query_new(sql, nparams, params, NULL);
	if (!q) {
		lg_errf(err, errlen, "out of memory");
		return NULL;
	}
	return submit_and_wait(pg, q, err, errlen);
}

PGresult *lg_pg_copy_sync(struct lg_pg *pg, const struct lg_db_copy *copy, char *err,
			  size_t errlen)
{
	struct pg_query *q;

	if (!pg || !lg_pg_copy_valid(copy)) {
		lg_errf(err, errlen, "invalid bulk load");
		return NULL;
	}
	q = query_new(copy->claim_sql, copy->nparams, copy->params, copy);
	if (!q) {
		lg_errf(err, errlen, "out of memory");
		return NULL;
	}
	return submit_and_wait(pg, q, err, errlen);
}

/* ---- LISTEN ---- */

struct pg_channel {
	struct pg_channel *next;
	lg_pg_notify_fn fn;
	void *arg;
	bool sent;                  /* LISTEN sent on the current connection */
	char name[];
};

enum listener_state {
	LISTENER_WAITING,           /* for the retry timer */
	LISTENER_CONNECTING,
	LISTENER_READY,
};

/* One LISTEN connection per loop; touched only on that loop's thread, but
 * for the list link (under the pool lock) and lg_pg_stop(). */
struct pg_listener {
	struct pg_listener *next;
	struct lg_pg *pg;
	struct lg_loop *loop;
	PGconn *conn;
	struct event *io;           /* the connection's socket */
	struct event *retry;        /* reconnect timer */
	enum listener_state state;
	uint32_t backoff_ms;
	bool busy;                  /* a LISTEN command awaits its results */
	bool outage;                /* lost, not yet restored: log once */
	bool listened;              /* a LISTEN took effect on some connection */
	bool missed;                /* lost since: say so once LISTEN is back */
	struct pg_channel *channels;
};

static void listener_connect(struct pg_listener *l);

static void listener_drop_conn(struct pg_listener *l)
{
	if (l->io) {
		event_free(l->io);
		l->io = NULL;
	}
	if (l->conn) {
		PQfinish(l->conn);
		l->conn = NULL;
	}
	l->busy = false;
}

static void listener_schedule_retry(struct pg_listener *l)
{
	struct timeval tv;

	l->state = LISTENER_WAITING;
	l->backoff_ms = next_backoff(l->backoff_ms);
	tv.tv_sec = l->backoff_ms / 1000;
	tv.tv_usec = (suseconds_t)(l->backoff_ms % 1000) * 1000;
	if (evtimer_add(l->retry, &tv) != 0)
		lg_error(LOG_COMP, "LISTEN connection to %s: cannot arm the reconnect timer",
			 l->pg->target.where);
}

static void listener_lost(struct pg_listener *l, const char *why)
{
	char msg[512];

	clean_message(msg, sizeof msg, why, &l->pg->target);
	if (!l->outage)
		lg_warn(LOG_COMP, "LISTEN connection to %s lost, reconnecting: %s",
			l->pg->target.where, msg);
	else
		lg_debug(LOG_COMP, "LISTEN connection to %s: %s", l->pg->target.where, msg);
	l->outage = true;
	l->missed = l->listened;
	listener_drop_conn(l);
	listener_schedule_retry(l);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	listener_connect(arg);
}

/* (Re)creates the socket event: libpq may change sockets while connecting. */
static int listener_watch(struct pg_listener *l, short what, const struct timeval *timeout,
			  event_callback_fn cb)
{
	if (l->io)
		event_free(l->io);
	l->io = event_new(lg_loop_base(l->loop), PQsocket(l->conn), what, cb, l);
	if (!l->io || event_add(l->io, timeout) != 0)
		return -1;
	return 0;
}

/* Sends one LISTEN command for every channel not yet listened to on this
 * connection; one command in flight at a time. */
static void listener_send_pending(struct pg_listener *l)
{
	struct sbuf sql = { 0 };

	if (l->state != LISTENER_READY || l->busy)
		return;
	for (struct pg_channel *c = l->channels; c; c = c->next) {
		char *ident;

		if (c->sent)
			continue;
		c->sent = true;
		ident = PQescapeIdentifier(l->conn, c->name, strlen(c->name));
		if (!ident) {
			lg_error(LOG_COMP, "cannot LISTEN on channel %s: %s", c->name,
				 PQerrorMessage(l->conn));
			continue;
		}
		sb_str(&sql, "LISTEN ");
		sb_str(&sql, ident);
		sb_str(&sql, ";");
		PQfreemem(ident);
	}
	if (sql.failed) {
		lg_error(LOG_COMP, "out of memory: LISTEN not sent");
	} else if (sql.len) {
		if (!PQsendQuery(l->conn, sql.s)) {
			free(sql.s);
			listener_lost(l, PQerrorMessage(l->conn));
			return;
		}
		l->busy = true;
	}
	free(sql.s);
}

static void listener_dispatch(struct pg_listener *l, const char *channel, const char *payload)
{
	for (struct pg_channel *c = l->channels; c; c = c->next)
		if (strcmp(c->name, channel) == 0)
			c->fn(channel, payload, c->arg);
}

/* LISTEN works (again): whatever was notified before, since the start or
 * while the connection was lost, is gone, so every listener hears an empty
 * payload and refreshes what it caches (keys, models...). */
static void listener_announce_gap(struct pg_listener *l)
{
	l->missed = false;
	for (struct pg_channel *c = l->channels; c; c = c->next)
		c->fn(c->name, "", c->arg);
}

/* Reads the results of our LISTEN commands (errors are logged). */
static void listener_read_results(struct pg_listener *l)
{
	PGresult *res;

	while (l->busy && !PQisBusy(l->conn)) {
		res = PQgetResult(l->conn);
		if (!res) {
			l->busy = false;
			break;
		}
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			lg_error(LOG_COMP, "LISTEN on %s failed: %s", l->pg->target.where,
				 PQresultErrorMessage(res));
		PQclear(res);
	}
}

static void on_listen_io(evutil_socket_t fd, short what, void *arg)
{
	struct pg_listener *l = arg;
	PGnotify *n;

	if (!PQconsumeInput(l->conn) || PQstatus(l->conn) != CONNECTION_OK) {
		listener_lost(l, PQerrorMessage(l->conn));
		return;
	}
	listener_read_results(l);
	while ((n = PQnotifies(l->conn))) {
		listener_dispatch(l, n->relname, n->extra);
		PQfreemem(n);
	}
	/* Also the first time: what a plugin read in start() may have changed
	 * before LISTEN took effect. */
	if (!l->busy && l->state == LISTENER_READY && (!l->listened || l->missed)) {
		l->listened = true;
		listener_announce_gap(l);
	}
	listener_send_pending(l);
}

static void listener_ready(struct pg_listener *l)
{
	if (listener_watch(l, EV_READ | EV_PERSIST, NULL, on_listen_io) != 0) {
		listener_lost(l, "cannot watch the connection's socket");
		return;
	}
	if (l->outage)
		lg_info(LOG_COMP, "LISTEN connection to %s restored", l->pg->target.where);
	l->outage = false;
	l->state = LISTENER_READY;
	l->backoff_ms = 0;
	for (struct pg_channel *c = l->channels; c; c = c->next)
		c->sent = false;
	listener_send_pending(l);
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg);

static void listener_poll(struct pg_listener *l, PostgresPollingStatusType poll)
{
	/* libpq ignores connect_timeout in this mode: each step gets it. */
	const struct timeval timeout = { .tv_sec = CONNECT_TIMEOUT_S };

	switch (poll) {
	case PGRES_POLLING_OK:
		listener_ready(l);
		return;
	case PGRES_POLLING_READING:
	case PGRES_POLLING_WRITING:
		if (listener_watch(l, poll == PGRES_POLLING_READING ? EV_READ : EV_WRITE, &timeout,
				   on_connect_io) != 0)
			listener_lost(l, "cannot watch the connection's socket");
		return;
	default:
		listener_lost(l, PQerrorMessage(l->conn));
		return;
	}
}

static void on_connect_io(evutil_socket_t fd, short what, void *arg)
{
	struct pg_listener *l = arg;

	if (what & EV_TIMEOUT) {
		listener_lost(l, "timeout while connecting");
		return;
	}
	listener_poll(l, PQconnectPoll(l->conn));
}

static void listener_connect(struct pg_listener *l)
{
	l->conn = PQconnectStart(l->pg->target.conninfo);
	if (!l->conn) {
		listener_lost(l, "out of memory");
		return;
	}
	if (PQstatus(l->conn) == CONNECTION_BAD) {
		listener_lost(l, PQerrorMessage(l->conn));
		return;
	}
	route_notices(l->conn);
	l->state = LISTENER_CONNECTING;
	listener_poll(l, PGRES_POLLING_WRITING);
}

static void listener_free(struct pg_listener *l)
{
	struct pg_channel *c, *next;

	listener_drop_conn(l);
	if (l->retry)
		event_free(l->retry);
	for (c = l->channels; c; c = next) {
		next = c->next;
		free(c);
	}
	free(l);
}

/* The loop's listener, created (not yet connected) if it has none. */
static struct pg_listener *listener_for(struct lg_pg *pg, struct lg_loop *loop, bool *created)
{
	struct pg_listener *l;

	*created = false;
	pthread_mutex_lock(&pg->lock);
	for (l = pg->listeners; l; l = l->next)
		if (l->loop == loop)
			break;
	pthread_mutex_unlock(&pg->lock);
	if (l)
		return l;
	l = calloc(1, sizeof *l);
	if (!l)
		return NULL;
	l->pg = pg;
	l->loop = loop;
	l->retry = evtimer_new(lg_loop_base(loop), on_retry, l);
	if (!l->retry) {
		free(l);
		return NULL;
	}
	pthread_mutex_lock(&pg->lock);
	l->next = pg->listeners;
	pg->listeners = l;
	pthread_mutex_unlock(&pg->lock);
	*created = true;
	return l;
}

int lg_pg_listen(struct lg_pg *pg, struct lg_loop *loop, const char *channel,
		 lg_pg_notify_fn fn, void *arg)
{
	struct pg_listener *l;
	struct pg_channel *c;
	size_t len;
	bool created;

	if (!pg || !loop || !channel || !fn)
		return -EINVAL;
	len = strlen(channel);
	if (!len || len > CHANNEL_MAX)
		return -EINVAL;
	c = calloc(1, sizeof *c + len + 1);
	if (!c)
		return -ENOMEM;
	memcpy(c->name, channel, len + 1);
	c->fn = fn;
	c->arg = arg;
	l = listener_for(pg, loop, &created);
	if (!l) {
		free(c);
		return -ENOMEM;
	}
	c->next = l->channels;
	l->channels = c;
	if (created)
		listener_connect(l);
	else
		listener_send_pending(l);
	return 0;
}

/* ---- start and stop ---- */

static void pool_free(struct lg_pg *pg)
{
	struct pg_listener *l, *next;

	for (l = pg->listeners; l; l = next) {
		next = l->next;
		listener_free(l);
	}
	for (int i = 0; pg->workers && i < pg->nworkers; i++)
		if (pg->workers[i].conn)
			PQfinish(pg->workers[i].conn);
	free(pg->workers);
	pthread_cond_destroy(&pg->more);
	pthread_mutex_destroy(&pg->lock);
	target_free(&pg->target);
	free(pg);
}

static void pool_join(struct lg_pg *pg)
{
	pthread_mutex_lock(&pg->lock);
	pg->stopping = true;
	pthread_cond_broadcast(&pg->more);
	pthread_mutex_unlock(&pg->lock);
	for (int i = 0; i < pg->nworkers; i++) {
		if (!pg->workers[i].started)
			continue;
		pthread_join(pg->workers[i].thread, NULL);
		pg->workers[i].started = false;
	}
}

/* The lock and a condition variable on the monotonic clock (timed waits
 * must not jump with the wall clock). */
static int pool_init_sync(struct lg_pg *pg)
{
	pthread_condattr_t attr;
	int r;

	if (pthread_mutex_init(&pg->lock, NULL) != 0)
		return -1;
	if (pthread_condattr_init(&attr) != 0)
		goto fail_mutex;
	r = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	if (r == 0)
		r = pthread_cond_init(&pg->more, &attr);
	pthread_condattr_destroy(&attr);
	if (r != 0)
		goto fail_mutex;
	return 0;
fail_mutex:
	pthread_mutex_destroy(&pg->lock);
	return -1;
}

static int pool_connect(struct lg_pg *pg, uint32_t retry_ms, char *err, size_t errlen)
{
	uint64_t deadline = now_ms() + retry_ms;

	for (int i = 0; i < pg->nworkers; i++) {
		uint64_t now = now_ms();
		/* One budget for the whole pool, not one per connection. */
		uint32_t left = now < deadline ? (uint32_t)(deadline - now) : 0;

		pg->workers[i].conn = connect_with_retry(&pg->target, left, err, errlen);
		if (!pg->workers[i].conn)
			return -1;
	}
	return 0;
}

struct lg_pg *lg_pg_start(const struct lg_pg_config *cfg, char *err, size_t errlen)
{
	struct lg_pg *pg;

	if (!cfg || cfg->pool_size < 1 || cfg->pool_size > MAX_POOL_SIZE) {
		lg_errf(err, errlen, "PostgreSQL pool_size must be between 1 and %d", MAX_POOL_SIZE);
		return NULL;
	}
	pg = calloc(1, sizeof *pg);
	if (!pg) {
		lg_errf(err, errlen, "out of memory");
		return NULL;
	}
	if (target_init(cfg, &pg->target, err, errlen) != 0)
		goto fail_free;
	if (pool_init_sync(pg) != 0) {
		lg_errf(err, errlen, "cannot create the pool's lock");
		goto fail_target;
	}
	pg->nworkers = cfg->pool_size;
	pg->workers = calloc((size_t)pg->nworkers, sizeof *pg->workers);
	if (!pg->workers) {
		lg_errf(err, errlen, "out of memory");
		goto fail_pool;
	}
	if (pool_connect(pg, cfg->connect_retry_ms, err, errlen) != 0)
		goto fail_pool;
	atomic_store(&pg->healthy, true);
	for (int i = 0; i < pg->nworkers; i++) {
		struct pg_worker *w = &pg->workers[i];

		w->pg = pg;
		w->index = i;
		atomic_store(&w->connected, true);      /* pool_connect() opened it */
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
			lg_errf(err, errlen, "cannot start a database thread");
			pool_join(pg);
			goto fail_pool;
		}
		w->started = true;
	}
	lg_info(LOG_COMP, "connected to PostgreSQL at %s with %d connection(s)", pg->target.where,
		pg->nworkers);
	return pg;
fail_target:
	target_free(&pg->target);
fail_free:
	free(pg);
	return NULL;
fail_pool:
	pool_free(pg);
	return NULL;
}

void lg_pg_stop(struct lg_pg *pg)
{
	if (!pg)
		return;
	pool_join(pg);
	pool_free(pg);
}
