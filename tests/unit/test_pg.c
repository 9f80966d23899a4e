/* SPDX-License-Identifier: Apache-2.0 */
/* The PostgreSQL pool against a real throwaway cluster (run under
 * tests/lib/with_pg.py). Each test works in its own fresh database. The
 * restart test stops and starts the server, so it runs last. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../lib/pg_test_util.h"
#include "log.h"
#include "loop.h"
#include "pg.h"

#define WAIT_S 20.0   /* generous: a loaded 2-core machine */

/* ---- a loop on its own thread, as a worker's ---- */

struct test_loop {
	struct lg_loop *loop;
	pthread_t thread;
};

static void *loop_thread(void *arg)
{
	lg_loop_run(arg);
	return NULL;
}

static void loop_start(struct test_loop *tl, const char *name)
{
	tl->loop = lg_loop_new(name);
	assert_non_null(tl->loop);
	assert_int_equal(pthread_create(&tl->thread, NULL, loop_thread, tl->loop), 0);
}

static void quit_loop(void *arg) { lg_loop_stop(arg); }

/* Stops the loop from its own thread, so the stop cannot be lost. */
static void loop_join(struct test_loop *tl)
{
	assert_int_equal(lg_loop_post(tl->loop, quit_loop, tl->loop), 0);
	assert_int_equal(pthread_join(tl->thread, NULL), 0);
}

/* ---- query outcomes, recorded on the loop and checked on the test thread ---- */

struct outcome {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t loop_thread;     /* where callbacks must run */
	int done, ok, failed, refused;
	bool wrong_thread;
	bool bad_args;             /* res and error both set, or neither */
	char value[256];           /* first value of the last success */
	ExecStatusType status;     /* of the last success */
	int ntuples;               /* of the last success */
	char cmd[64];              /* PQcmdStatus() of the last success */
	char tuples[32];           /* PQcmdTuples() of the last success */
	char error[512];           /* the last error */
	char seen[16][32];         /* distinct last values of successes */
	int nseen;
};

static void outcome_init(struct outcome *o, const struct test_loop *tl)
{
	memset(o, 0, sizeof *o);
	pthread_mutex_init(&o->lock, NULL);
	pthread_cond_init(&o->cond, NULL);
	o->loop_thread = tl->thread;
}

static void outcome_reset(struct outcome *o)
{
	pthread_mutex_lock(&o->lock);
	o->done = o->ok = o->failed = o->refused = o->nseen = 0;
	o->value[0] = o->error[0] = o->cmd[0] = o->tuples[0] = '\0';
	o->status = PGRES_EMPTY_QUERY;
	o->ntuples = -1;
	pthread_mutex_unlock(&o->lock);
}

static void outcome_destroy(struct outcome *o)
{
	pthread_mutex_destroy(&o->lock);
	pthread_cond_destroy(&o->cond);
}

static void note_value(struct outcome *o, const char *v)
{
	for (int i = 0; i < o->nseen; i++)
		if (strcmp(o->seen[i], v) == 0)
			return;
	if (o->nseen < (int)LG_COUNT(o->seen))
		snprintf(o->seen[o->nseen++], sizeof o->seen[0], "%s", v);
}

static void on_result(const PGresult *res, const char *error, void *arg)
{
	struct outcome *o = arg;

	pthread_mutex_lock(&o->lock);
	if (!pthread_equal(pthread_self(), o->loop_thread))
		o->wrong_thread = true;
	if (!res == !error)
		o->bad_args = true;
	if (error) {
		o->failed++;
		snprintf(o->error, sizeof o->error, "%s", error);
	} else {
		o->ok++;
		snprintf(o->value, sizeof o->value, "%s",
			 PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
		note_value(o, PQntuples(res) > 0 ? PQgetvalue(res, 0, PQnfields(res) - 1) : "");
		o->status = PQresultStatus(res);
		o->ntuples = PQntuples(res);
		/* libpq's accessors take a non-const result but do not change it. */
		snprintf(o->cmd, sizeof o->cmd, "%s", PQcmdStatus((PGresult *)res));
		snprintf(o->tuples, sizeof o->tuples, "%s", PQcmdTuples((PGresult *)res));
	}
	o->done++;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->lock);
}

static bool wait_done(struct outcome *o, int n, double seconds)
{
	double deadline = pgt_now() + seconds;
	bool ok;

	pthread_mutex_lock(&o->lock);
	while (o->done < n && pgt_now() < deadline) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&o->cond, &o->lock, &ts);
	}
	ok = o->done >= n;
	pthread_mutex_unlock(&o->lock);
	return ok;
}

/* A query submitted from the loop's own thread, as a worker would. */
struct submit {
	struct lg_pg *pg;
	const char *sql;
	int nparams;
	const char *const *params;
	struct outcome *o;
};

static void submit_on_loop(void *arg)
{
	struct submit *s = arg;
	int r = lg_pg_query(s->pg, lg_loop_current(), s->sql, s->nparams, s->params, on_result,
			    s->o);

	if (r != 0) {
		pthread_mutex_lock(&s->o->lock);
		s->o->refused++;
		s->o->done++;
		pthread_cond_broadcast(&s->o->cond);
		pthread_mutex_unlock(&s->o->lock);
	}
	free(s);
}

static void query_from_loop(struct test_loop *tl, struct lg_pg *pg, const char *sql,
			    int nparams, const char *const *params, struct outcome *o)
{
	struct submit *s = calloc(1, sizeof *s);

	assert_non_null(s);
	*s = (struct submit){ .pg = pg, .sql = sql, .nparams = nparams, .params = params, .o = o };
	assert_int_equal(lg_loop_post(tl->loop, submit_on_loop, s), 0);
}

/* Runs one query from the loop and waits for its callback. */
static void loop_query(struct test_loop *tl, struct lg_pg *pg, const char *sql, int nparams,
		       const char *const *params, struct outcome *o)
{
	outcome_reset(o);
	query_from_loop(tl, pg, sql, nparams, params, o);
	assert_true(wait_done(o, 1, WAIT_S));
	assert_int_equal(o->refused, 0);
	assert_false(o->wrong_thread);
	assert_false(o->bad_args);
}

static struct lg_pg_config base_config(const char *url)
{
	return (struct lg_pg_config){
		.url = url,
		.pool_size = 2,
		.connect_retry_ms = 5000,
		.application_name = "llmgate-test",
	};
}

static char *sync_value(struct lg_pg *pg, const char *sql)
{
	char err[512] = "";
	PGresult *res = lg_pg_query_sync(pg, sql, 0, NULL, err, sizeof err);
	char *v;

	if (!res)
		fail_msg("%s: %s", sql, err);
	v = strdup(PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
	PQclear(res);
	return v;
}

static void assert_query_value(const char *url, const char *sql, const char *want)
{
	char *v = pgt_query(url, sql);

	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

/* ---- bulk loads submitted from the loop ---- */

/* A load whose every string is the submitter's own heap copy, wiped and
 * freed as soon as lg_pg_copy() returns: the pool must have copied them. */
struct copy_submit {
	struct lg_pg *pg;
	struct lg_db_copy copy;
	char *claim_sql, *copy_sql, *data;
	char *params[4];
	struct outcome *o;
};

static char *dup_bytes(const char *s, size_t n)
{
	char *d = malloc(n + 1);

	assert_non_null(d);
	if (n)
		memcpy(d, s, n);
	d[n] = '\0';
	return d;
}

static void wipe(char *s, size_t n)
{
	if (!s)
		return;
	memset(s, 'X', n);
	free(s);
}

static struct copy_submit *copy_submit_new(struct lg_pg *pg, const struct lg_db_copy *c,
					   struct outcome *o)
{
	struct copy_submit *s = calloc(1, sizeof *s);

	assert_non_null(s);
	assert_true(c->nparams >= 0 && c->nparams <= (int)LG_COUNT(s->params));
	s->pg = pg;
	s->o = o;
	s->copy = *c;
	if (c->claim_sql)
		s->copy.claim_sql = s->claim_sql = dup_bytes(c->claim_sql, strlen(c->claim_sql));
	for (int i = 0; i < c->nparams; i++)
		if (c->params[i])
			s->params[i] = dup_bytes(c->params[i], strlen(c->params[i]));
	s->copy.params = (const char *const *)s->params;
	s->copy.copy_sql = s->copy_sql = dup_bytes(c->copy_sql, strlen(c->copy_sql));
	if (c->data)
		s->copy.data = s->data = dup_bytes(c->data, c->len);
	return s;
}

static void copy_submit_free(struct copy_submit *s)
{
	wipe(s->claim_sql, s->claim_sql ? strlen(s->claim_sql) : 0);
	for (size_t i = 0; i < LG_COUNT(s->params); i++)
		wipe(s->params[i], s->params[i] ? strlen(s->params[i]) : 0);
	wipe(s->copy_sql, strlen(s->copy_sql));
	wipe(s->data, s->copy.len);
	free(s);
}

static void copy_on_loop(void *arg)
{
	struct copy_submit *s = arg;
	int r = lg_pg_copy(s->pg, lg_loop_current(), &s->copy, on_result, s->o);

	if (r != 0) {
		pthread_mutex_lock(&s->o->lock);
		s->o->refused++;
		s->o->done++;
		pthread_cond_broadcast(&s->o->cond);
		pthread_mutex_unlock(&s->o->lock);
	}
	copy_submit_free(s);
}

/* Runs one load from the loop and waits for its callback. */
static void loop_copy(struct test_loop *tl, struct lg_pg *pg, const struct lg_db_copy *c,
		      struct outcome *o)
{
	outcome_reset(o);
	assert_int_equal(lg_loop_post(tl->loop, copy_on_loop, copy_submit_new(pg, c, o)), 0);
	assert_true(wait_done(o, 1, WAIT_S));
	assert_int_equal(o->refused, 0);
	assert_false(o->wrong_thread);
	assert_false(o->bad_args);
}

static struct lg_db_stats pool_stats(struct lg_pg *pg)
{
	struct lg_db_stats st;

	lg_pg_stats(pg, &st);
	return st;
}

/* The claim of the examples: a batch id recorded once, in the load's own
 * transaction. */
#define CLAIM_SQL "INSERT INTO batches (id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id"
#define LOAD_TABLES "CREATE TABLE batches (id text PRIMARY KEY); " \
	"CREATE TABLE t (id int, name text)"

static struct lg_db_copy claimed_load(const char *const *batch_id, const char *rows)
{
	return (struct lg_db_copy){
		.size = sizeof(struct lg_db_copy),
		.claim_sql = CLAIM_SQL,
		.nparams = 1,
		.params = batch_id,
		.copy_sql = "COPY t (id, name) FROM STDIN",
		.data = rows,
		.len = strlen(rows),
	};
}

/* Captures what the process logs (lg_log writes to stderr) into a file. */
struct log_capture {
	int saved;
	FILE *file;
};

static void capture_start(struct log_capture *c)
{
	c->file = tmpfile();
	assert_non_null(c->file);
	c->saved = dup(STDERR_FILENO);
	assert_true(c->saved >= 0);
	assert_true(dup2(fileno(c->file), STDERR_FILENO) >= 0);
}

/* Stops capturing; what was logged, malloc'ed. */
static char *capture_stop(struct log_capture *c)
{
	char *text = calloc(1, 65536);

	assert_non_null(text);
	assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
	close(c->saved);
	rewind(c->file);
	text[fread(text, 1, 65535, c->file)] = '\0';
	fclose(c->file);
	fputs(text, stderr);
	return text;
}

/* ---- URL handling ---- */

static const char *conninfo_option(PQconninfoOption *opts, const char *key)
{
	for (; opts->keyword; opts++)
		if (strcmp(opts->keyword, key) == 0)
			return opts->val;
	return NULL;
}

static void test_conninfo_spellings(void **state)
{
	const char *const settings[] = { "search_path", "a b\\c", "work_mem", "8MB", NULL };
	struct lg_pg_config cfg = base_config("postgresql+asyncpg://app:Secr3tPw@db.example:6543/gate");
	PQconninfoOption *opts;
	char err[512], *ci = NULL, desc[256];

	cfg.server_settings = settings;
	cfg.command_timeout_ms = 1234;
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), 0);
	assert_non_null(ci);
	assert_true(strncmp(ci, "postgresql://app:Secr3tPw@db.example:6543/gate?", 47) == 0);
	assert_null(strstr(ci, "asyncpg"));
	opts = PQconninfoParse(ci, NULL);
	assert_non_null(opts);
	assert_string_equal(conninfo_option(opts, "host"), "db.example");
	assert_string_equal(conninfo_option(opts, "port"), "6543");
	assert_string_equal(conninfo_option(opts, "dbname"), "gate");
	assert_string_equal(conninfo_option(opts, "application_name"), "llmgate-test");
	assert_string_equal(conninfo_option(opts, "connect_timeout"), "5");
	assert_string_equal(conninfo_option(opts, "keepalives"), "1");
	assert_string_equal(conninfo_option(opts, "options"),
			    "-c search_path=a\\ b\\\\c -c work_mem=8MB -c statement_timeout=1234");
	PQconninfoFree(opts);
	free(ci);
	lg_pg_describe(&cfg, desc, sizeof desc);
	assert_string_equal(desc, "db.example:6543/gate");

	/* The plain spellings; what the URL sets itself is kept (options are
	 * extended), and a statement_timeout setting beats command_timeout. */
	const char *const timeout_setting[] = { "statement_timeout", "99", NULL };
	cfg = base_config("postgres://app:Secr3tPw@h/db?application_name=mine&connect_timeout=9"
			  "&options=-c%20geqo%3Doff");
	cfg.server_settings = timeout_setting;
	cfg.command_timeout_ms = 1234;
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), 0);
	opts = PQconninfoParse(ci, NULL);
	assert_non_null(opts);
	assert_string_equal(conninfo_option(opts, "application_name"), "mine");
	assert_string_equal(conninfo_option(opts, "connect_timeout"), "9");
	assert_string_equal(conninfo_option(opts, "options"), "-c geqo=off -c statement_timeout=99");
	PQconninfoFree(opts);
	free(ci);
	lg_pg_describe(&cfg, desc, sizeof desc);
	assert_string_equal(desc, "h:5432/db");

	cfg = base_config("postgresql://127.0.0.1/");
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), 0);
	free(ci);
}

static void test_conninfo_refuses_garbage(void **state)
{
	static const char *const bad[] = {
		"mysql://app:Secr3tPw@h/db",
		"not a url Secr3tPw",
		"postgresql://app:Secr3tPw@h/db?nosuchparam=1",
		"postgresql://app:Secr3t%ZZPw@h/db",
		"postgresql://app:Secr3tPw@[::1/db",
		"postgresql+asyncpg://app:Secr3tPw@h/db?sslmode=sometimes&x=%zz",
		"",
	};
	const char *const bad_setting[] = { "statement timeout", "1", NULL };
	struct lg_pg_config cfg;
	char err[512], desc[256], *ci;

	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		cfg = base_config(bad[i]);
		ci = (char *)1;
		err[0] = '\0';
		assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), -1);
		assert_null(ci);
		assert_true(strlen(err) > 10);
		assert_null(strstr(err, "Secr3t"));
		lg_pg_describe(&cfg, desc, sizeof desc);
		assert_null(strstr(desc, "Secr3t"));
		assert_null(lg_pg_start(&cfg, err, sizeof err));
		assert_null(strstr(err, "Secr3t"));
	}
	cfg = base_config("postgresql://app:Secr3tPw@h/db?nosuchparam=1");
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), -1);
	assert_non_null(strstr(err, "nosuchparam"));
	cfg = base_config("mysql://h/db");
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), -1);
	assert_non_null(strstr(err, "postgresql://"));
	cfg = base_config(NULL);
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), -1);
	cfg = base_config("postgresql://h/db");
	cfg.server_settings = bad_setting;
	assert_int_equal(lg_pg_conninfo(&cfg, &ci, err, sizeof err), -1);
	assert_non_null(strstr(err, "statement timeout"));
}

/* ---- against the server ---- */

static void test_server_settings_honoured(void **state)
{
	const char *const settings[] = {
		"statement_timeout", "4321", "search_path", "public, pg_catalog", NULL,
	};
	char *url = pgt_fresh_db("lgt_pg_settings");
	struct lg_pg_config cfg = base_config(url);
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	char err[512];

	assert_non_null(url);
	cfg.server_settings = settings;
	cfg.command_timeout_ms = 100;   /* overridden by the setting */
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	loop_start(&tl, "settings");
	outcome_init(&o, &tl);

	loop_query(&tl, pg, "SHOW statement_timeout", 0, NULL, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.value, "4321ms");
	loop_query(&tl, pg, "SHOW search_path", 0, NULL, &o);
	assert_string_equal(o.value, "public, pg_catalog");
	loop_query(&tl, pg, "SELECT current_setting('application_name')", 0, NULL, &o);
	assert_string_equal(o.value, "llmgate-test");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static void test_command_timeout(void **state)
{
	char *url = pgt_fresh_db("lgt_pg_timeout");
	struct lg_pg_config cfg = base_config(url);
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	char err[512];

	assert_non_null(url);
	cfg.command_timeout_ms = 300;
	cfg.pool_size = 1;
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	loop_start(&tl, "timeout");
	outcome_init(&o, &tl);

	loop_query(&tl, pg, "SHOW statement_timeout", 0, NULL, &o);
	assert_string_equal(o.value, "300ms");
	loop_query(&tl, pg, "SELECT pg_sleep(10)", 0, NULL, &o);
	assert_int_equal(o.failed, 1);
	assert_non_null(strstr(o.error, "statement timeout"));
	/* A statement error is no outage: same connection, still healthy. */
	assert_true(lg_pg_healthy(pg));
	loop_query(&tl, pg, "SELECT 41 + 1", 0, NULL, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.value, "42");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static void test_stray_transaction_rolled_back(void **state)
{
	char *url = pgt_fresh_db("lgt_pg_stray");
	struct lg_pg_config cfg = base_config(url);
	struct lg_pg *pg;
	char err[512], *a, *b, *v;

	assert_non_null(url);
	cfg.pool_size = 1;
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	v = sync_value(pg, "CREATE TABLE t (a int)");
	free(v);
	v = sync_value(pg, "BEGIN");
	free(v);
	v = sync_value(pg, "INSERT INTO t VALUES (1)");
	free(v);
	/* Not one transaction: the lone BEGIN was rolled back at once. */
	a = sync_value(pg, "SELECT txid_current()");
	b = sync_value(pg, "SELECT txid_current()");
	assert_string_not_equal(a, b);
	free(a);
	free(b);
	lg_pg_stop(pg);
	/* The INSERT ran in its own (committed) transaction. */
	assert_query_value(url, "SELECT count(*) FROM t", "1");
	free(url);
}

static void test_async_query_on_loop_thread(void **state)
{
	const char *const params[] = { "20", "22" };
	char *url = pgt_fresh_db("lgt_pg_async");
	struct lg_pg_config cfg = base_config(url);
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	char err[512];

	assert_non_null(url);
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	assert_true(lg_pg_healthy(pg));
	loop_start(&tl, "async");
	outcome_init(&o, &tl);

	loop_query(&tl, pg, "SELECT $1::int + $2::int", 2, params, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.value, "42");
	assert_false(o.wrong_thread);

	/* A statement error reaches the callback with the database's message. */
	loop_query(&tl, pg, "SELECT * FROM no_such_table", 0, NULL, &o);
	assert_int_equal(o.failed, 1);
	assert_non_null(strstr(o.error, "no_such_table"));
	assert_true(lg_pg_healthy(pg));

	assert_int_equal(lg_pg_query(pg, NULL, "SELECT 1", 0, NULL, on_result, &o), -EINVAL);
	assert_int_equal(lg_pg_query(pg, tl.loop, "SELECT $1", 1, NULL, on_result, &o), -EINVAL);

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static void test_sync_query(void **state)
{
	const char *const params[] = { "abc", NULL };
	char *url = pgt_fresh_db("lgt_pg_sync");
	struct lg_pg_config cfg = base_config(url);
	struct lg_pg *pg;
	PGresult *res;
	PGconn *conn;
	char err[512];

	assert_non_null(url);
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);

	res = lg_pg_query_sync(pg, "SELECT upper($1), $2::text IS NULL", 2, params, err,
			       sizeof err);
	assert_non_null(res);
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	assert_string_equal(PQgetvalue(res, 0, 0), "ABC");
	assert_string_equal(PQgetvalue(res, 0, 1), "t");
	PQclear(res);

	res = lg_pg_query_sync(pg, "CREATE TABLE t (a int)", 0, NULL, err, sizeof err);
	assert_non_null(res);
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);

	err[0] = '\0';
	assert_null(lg_pg_query_sync(pg, "SELEC 1", 0, NULL, err, sizeof err));
	assert_non_null(strstr(err, "syntax error"));

	/* A connection of its own, outside the pool. */
	conn = lg_pg_connect_one(&cfg, err, sizeof err);
	assert_non_null(conn);
	res = PQexec(conn, "SELECT current_database()");
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	assert_string_equal(PQgetvalue(res, 0, 0), "lgt_pg_sync");
	PQclear(res);
	PQfinish(conn);

	lg_pg_stop(pg);
	free(url);
}

/* ---- many queries at once ---- */

#define MANY 1200
#define SUBMITTERS 3

struct many {
	struct lg_pg *pg;
	struct lg_loop *loop;
	pthread_t loop_thread;
	pthread_mutex_t lock;
	int done, wrong, refused;
	bool wrong_thread;
	int first;                  /* this submitter's first number */
	char numbers[MANY][12];
};

struct many_item {
	struct many *m;
	int n;
};

static void on_many(const PGresult *res, const char *error, void *arg)
{
	struct many_item *it = arg;
	struct many *m = it->m;
	bool right = !error && atoi(PQgetvalue(res, 0, 0)) == it->n * 2;

	pthread_mutex_lock(&m->lock);
	if (!right)
		m->wrong++;
	if (!pthread_equal(pthread_self(), m->loop_thread))
		m->wrong_thread = true;
	m->done++;
	pthread_mutex_unlock(&m->lock);
	free(it);
}

static void submit_many(struct many *m, int from, int to)
{
	for (int n = from; n < to; n++) {
		struct many_item *it = malloc(sizeof *it);
		const char *params[] = { m->numbers[n] };
		int r;

		if (!it)
			abort();   /* not on the test thread: no cmocka assert */
		it->m = m;
		it->n = n;
		r = lg_pg_query(m->pg, m->loop, "SELECT $1::int * 2", 1, params, on_many, it);
		if (r != 0) {
			pthread_mutex_lock(&m->lock);
			m->refused++;
			pthread_mutex_unlock(&m->lock);
			free(it);
		}
	}
}

struct submitter {
	struct many *m;
	int from, to;
};

static void *submitter_main(void *arg)
{
	struct submitter *s = arg;

	submit_many(s->m, s->from, s->to);
	return NULL;
}

static void submit_many_on_loop(void *arg)
{
	struct submitter *s = arg;

	submit_many(s->m, s->from, s->to);
}

static int many_done(struct many *m)
{
	int n;

	pthread_mutex_lock(&m->lock);
	n = m->done + m->refused;
	pthread_mutex_unlock(&m->lock);
	return n;
}

static void test_many_concurrent_queries(void **state)
{
	char *url = pgt_fresh_db("lgt_pg_many");
	struct lg_pg_config cfg = base_config(url);
	struct submitter subs[SUBMITTERS + 1];
	pthread_t threads[SUBMITTERS];
	struct many *m = calloc(1, sizeof *m);
	int per = MANY / (SUBMITTERS + 1);
	struct test_loop tl;
	struct outcome o;
	char err[512];
	double deadline;

	assert_non_null(url);
	assert_non_null(m);
	cfg.pool_size = 4;
	m->pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(m->pg);
	loop_start(&tl, "many");
	m->loop = tl.loop;
	m->loop_thread = tl.thread;
	pthread_mutex_init(&m->lock, NULL);
	for (int n = 0; n < MANY; n++)
		snprintf(m->numbers[n], sizeof m->numbers[n], "%d", n);

	/* A quarter from the loop itself, the rest from other threads at once. */
	for (int i = 0; i <= SUBMITTERS; i++)
		subs[i] = (struct submitter){ .m = m, .from = i * per,
					      .to = i == SUBMITTERS ? MANY : (i + 1) * per };
	assert_int_equal(lg_loop_post(tl.loop, submit_many_on_loop, &subs[SUBMITTERS]), 0);
	for (int i = 0; i < SUBMITTERS; i++)
		assert_int_equal(pthread_create(&threads[i], NULL, submitter_main, &subs[i]), 0);
	for (int i = 0; i < SUBMITTERS; i++)
		pthread_join(threads[i], NULL);
	deadline = pgt_now() + 60;
	while (many_done(m) < MANY && pgt_now() < deadline)
		usleep(10000);
	assert_int_equal(many_done(m), MANY);
	assert_int_equal(m->refused, 0);
	assert_int_equal(m->wrong, 0);
	assert_false(m->wrong_thread);

	/* The pool's connections really work side by side: eight sleeping
	 * queries are served by more than one backend (pid), and the pool holds
	 * pool_size connections. */
	outcome_init(&o, &tl);
	for (int i = 0; i < 8; i++)
		query_from_loop(&tl, m->pg, "SELECT pg_sleep(0.3), pg_backend_pid()", 0, NULL, &o);
	assert_true(wait_done(&o, 8, WAIT_S));
	assert_int_equal(o.ok, 8);
	assert_true(o.nseen >= 2);
	{
		char *n = sync_value(m->pg, "SELECT count(*) FROM pg_stat_activity "
				     "WHERE application_name = 'llmgate-test' "
				     "AND datname = current_database()");

		assert_string_equal(n, "4");
		free(n);
	}

	loop_join(&tl);
	lg_pg_stop(m->pg);
	lg_loop_free(tl.loop);
	pthread_mutex_destroy(&m->lock);
	outcome_destroy(&o);
	free(m);
	free(url);
}

static void test_parameters_stay_data(void **state)
{
	static const char *const nasty[] = {
		"'); DROP TABLE notes; --",
		"$1",
		"\\",
		"O'Reilly \"quoted\"",
		"; SELECT pg_sleep(5);",
		"ünïcødé ✓",
		"",
	};
	char *url = pgt_fresh_db("lgt_pg_params");
	struct lg_pg_config cfg = base_config(url);
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	char err[512], *v;

	assert_non_null(url);
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	loop_start(&tl, "params");
	outcome_init(&o, &tl);
	v = sync_value(pg, "CREATE TABLE notes (id serial, body text)");
	free(v);

	for (size_t i = 0; i < LG_COUNT(nasty); i++) {
		const char *params[] = { nasty[i] };

		loop_query(&tl, pg, "INSERT INTO notes (body) VALUES ($1) RETURNING body", 1,
			   params, &o);
		assert_int_equal(o.ok, 1);
		assert_string_equal(o.value, nasty[i]);
		loop_query(&tl, pg, "SELECT count(*) FROM notes WHERE body = $1", 1, params, &o);
		assert_string_equal(o.value, "1");
	}
	{
		const char *params[] = { NULL };

		loop_query(&tl, pg, "INSERT INTO notes (body) VALUES ($1) RETURNING body IS NULL",
			   1, params, &o);
		assert_string_equal(o.value, "t");
	}
	v = sync_value(pg, "SELECT count(*) FROM notes");
	assert_string_equal(v, "8");
	free(v);

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static int closed_port(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t len = sizeof sa;
	int fd = socket(AF_INET, SOCK_STREAM, 0), port;

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
	close(fd);
	return port;
}

static void test_start_fails_on_closed_port(void **state)
{
	struct lg_pg_config cfg;
	char url[256], where[64], err[512];
	double t0, elapsed;

	snprintf(url, sizeof url, "postgresql://app:Secr3tPw-closed@127.0.0.1:%d/gate",
		 closed_port());
	snprintf(where, sizeof where, "127.0.0.1:%s", strrchr(url, ':') + 1);
	*strchr(where, '/') = '\0';
	cfg = base_config(url);
	cfg.connect_retry_ms = 1500;
	err[0] = '\0';
	t0 = pgt_now();
	assert_null(lg_pg_start(&cfg, err, sizeof err));
	elapsed = pgt_now() - t0;
	assert_true(elapsed >= 1.4);
	assert_true(elapsed < 10.0);
	assert_non_null(strstr(err, "cannot connect to PostgreSQL at "));
	assert_non_null(strstr(err, where));
	assert_non_null(strstr(err, "/gate: "));
	assert_null(strstr(err, "Secr3tPw"));

	/* No retry budget: one attempt. */
	cfg.connect_retry_ms = 0;
	t0 = pgt_now();
	assert_null(lg_pg_connect_one(&cfg, err, sizeof err));
	assert_true(pgt_now() - t0 < 5.0);
	assert_non_null(strstr(err, where));
}

static void test_wrong_password_not_shown(void **state)
{
	struct lg_pg_config cfg;
	char url[256], err[512];

	snprintf(url, sizeof url, "postgresql://postgres:Wr0ngSecr3t@127.0.0.1:%s/postgres",
		 pgt_env("LG_TEST_PG_PORT"));
	cfg = base_config(url);
	cfg.connect_retry_ms = 0;
	assert_null(lg_pg_start(&cfg, err, sizeof err));
	assert_non_null(strstr(err, "password authentication failed"));
	assert_null(strstr(err, "Wr0ngSecr3t"));
}

/* ---- LISTEN/NOTIFY ---- */

struct notes {
	pthread_mutex_t lock;
	pthread_t loop_thread;
	int count;
	bool wrong_thread;
	char channel[64];
	char payload[128];
};

struct listen_req {
	struct lg_pg *pg;
	const char *channel;
	struct notes *n;
	int rc;
	bool done;
};

static void on_notify(const char *channel, const char *payload, void *arg)
{
	struct notes *n = arg;

	pthread_mutex_lock(&n->lock);
	if (!pthread_equal(pthread_self(), n->loop_thread))
		n->wrong_thread = true;
	n->count++;
	snprintf(n->channel, sizeof n->channel, "%s", channel);
	snprintf(n->payload, sizeof n->payload, "%s", payload);
	pthread_mutex_unlock(&n->lock);
}

static void listen_on_loop(void *arg)
{
	struct listen_req *r = arg;

	pthread_mutex_lock(&r->n->lock);
	r->rc = lg_pg_listen(r->pg, lg_loop_current(), r->channel, on_notify, r->n);
	r->done = true;
	pthread_mutex_unlock(&r->n->lock);
}

static void listen_from_loop(struct test_loop *tl, struct listen_req *r)
{
	double deadline = pgt_now() + WAIT_S;
	bool done = false;

	assert_int_equal(lg_loop_post(tl->loop, listen_on_loop, r), 0);
	while (!done && pgt_now() < deadline) {
		usleep(10000);
		pthread_mutex_lock(&r->n->lock);
		done = r->done;
		pthread_mutex_unlock(&r->n->lock);
	}
	assert_true(done);
	assert_int_equal(r->rc, 0);
}

/* LISTEN takes effect a little after lg_pg_listen() returns (the
 * connection is made without blocking the loop), so NOTIFY until heard. */
static bool notify_until_heard(struct lg_pg *pg, struct notes *n, const char *channel,
			       const char *payload, double seconds)
{
	const char *params[] = { channel, payload };
	double deadline = pgt_now() + seconds;
	char err[512];

	while (pgt_now() < deadline) {
		PGresult *res = lg_pg_query_sync(pg, "SELECT pg_notify($1, $2)", 2, params, err,
						 sizeof err);
		bool heard = false;

		PQclear(res);
		for (int i = 0; i < 20 && !heard; i++) {
			usleep(10000);
			pthread_mutex_lock(&n->lock);
			heard = n->count > 0 && strcmp(n->channel, channel) == 0 &&
				strcmp(n->payload, payload) == 0;
			pthread_mutex_unlock(&n->lock);
		}
		if (heard)
			return true;
	}
	return false;
}

static void notes_reset(struct notes *n)
{
	pthread_mutex_lock(&n->lock);
	n->count = 0;
	n->channel[0] = n->payload[0] = '\0';
	pthread_mutex_unlock(&n->lock);
}

static void test_listen_notify(void **state)
{
	char *url = pgt_fresh_db("lgt_pg_listen");
	struct lg_pg_config cfg = base_config(url);
	struct notes plain = { 0 }, odd = { 0 };
	struct listen_req r1, r2;
	struct test_loop tl;
	struct lg_pg *pg;
	char err[512];

	assert_non_null(url);
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	loop_start(&tl, "listen");
	pthread_mutex_init(&plain.lock, NULL);
	pthread_mutex_init(&odd.lock, NULL);
	plain.loop_thread = odd.loop_thread = tl.thread;

	r1 = (struct listen_req){ .pg = pg, .channel = "llmgate_events", .n = &plain };
	r2 = (struct listen_req){ .pg = pg, .channel = "Odd \"Chan\"; DROP", .n = &odd };
	listen_from_loop(&tl, &r1);
	listen_from_loop(&tl, &r2);
	assert_true(notify_until_heard(pg, &plain, "llmgate_events", "key revoked", WAIT_S));
	assert_true(notify_until_heard(pg, &odd, "Odd \"Chan\"; DROP", "payload 'x'", WAIT_S));
	assert_false(plain.wrong_thread);
	assert_false(odd.wrong_thread);
	/* Each channel heard only its own notifications. */
	assert_string_equal(plain.channel, "llmgate_events");

	notes_reset(&plain);
	assert_true(notify_until_heard(pg, &plain, "llmgate_events", "second", WAIT_S));

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	pthread_mutex_destroy(&plain.lock);
	pthread_mutex_destroy(&odd.lock);
	free(url);
}

/* ---- bulk loads ---- */

static struct lg_pg *start_pool(const char *url, int size)
{
	struct lg_pg_config cfg = base_config(url);
	struct lg_pg *pg;
	char err[512];

	cfg.pool_size = size;
	pg = lg_pg_start(&cfg, err, sizeof err);
	if (!pg)
		fail_msg("%s", err);
	return pg;
}

static void test_copy_loads_rows(void **state)
{
	/* Text format: a tab inside a value is escaped, \N is NULL. */
	static const char rows[] = "1\talpha\n2\tO'Reilly \\t tabbed\n3\t\\N\n4\tünïcødé ✓\n";
	static const char csv[] = "5,\"comma, quoted\"\n6,plain\n";
	struct lg_db_copy c = {
		.size = sizeof c, .copy_sql = "COPY t (id, name) FROM STDIN",
		.data = rows, .len = strlen(rows),
	};
	char *url = pgt_fresh_db("lgt_pg_copy");
	struct lg_db_stats before;
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 2);
	loop_start(&tl, "copy");
	outcome_init(&o, &tl);

	before = pool_stats(pg);
	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.ok, 1);
	assert_int_equal(o.status, PGRES_COMMAND_OK);
	assert_string_equal(o.cmd, "COPY 4");
	assert_string_equal(o.tuples, "4");
	/* One success per load, whatever its statements. */
	assert_int_equal(pool_stats(pg).succeeded, before.succeeded + 1);
	assert_int_equal(pool_stats(pg).errors, before.errors);
	assert_query_value(url, "SELECT count(*) FROM t", "4");
	assert_query_value(url, "SELECT string_agg(coalesce(name, '<null>'), '|' ORDER BY id) "
			   "FROM t", "alpha|O'Reilly \t tabbed|<null>|ünïcødé ✓");

	/* Any format COPY reads. */
	c.copy_sql = "COPY t (id, name) FROM STDIN (FORMAT csv)";
	c.data = csv;
	c.len = strlen(csv);
	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.tuples, "2");
	assert_query_value(url, "SELECT name FROM t WHERE id = 5", "comma, quoted");
	assert_query_value(url, "SELECT count(*) FROM t", "6");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

/* Several MiB: sent in pieces that cut rows anywhere. */
static void test_copy_large_load_in_chunks(void **state)
{
	const int nrows = 120000;
	struct lg_db_copy c = { .size = sizeof c, .copy_sql = "COPY t (id, name) FROM STDIN" };
	char *url = pgt_fresh_db("lgt_pg_copy_large");
	size_t cap = (size_t)nrows * 64, len = 0;
	char *rows = malloc(cap), err[512];
	struct lg_pg *pg;
	PGresult *res;

	assert_non_null(url);
	assert_non_null(rows);
	for (int i = 1; i <= nrows; i++)
		len += (size_t)snprintf(rows + len, cap - len, "%d\tname-%08d-padding-padding\n", i,
					i);
	assert_true(len > 3u << 20);
	c.data = rows;
	c.len = len;
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 1);

	res = lg_pg_copy_sync(pg, &c, err, sizeof err);
	if (!res)
		fail_msg("%s", err);
	assert_string_equal(PQcmdTuples(res), "120000");
	PQclear(res);
	assert_query_value(url, "SELECT count(*) FROM t", "120000");
	assert_query_value(url, "SELECT sum(id) FROM t", "7200060000");
	assert_query_value(url, "SELECT count(*) FROM t WHERE name <> "
			   "'name-' || lpad(id::text, 8, '0') || '-padding-padding'", "0");

	lg_pg_stop(pg);
	free(rows);
	free(url);
}

static void test_copy_claim_loads_once(void **state)
{
	const char *const b1[] = { "batch-1" }, *const b2[] = { "batch-2" };
	struct lg_db_copy c1 = claimed_load(b1, "1\ta\n2\tb\n3\tc\n");
	struct lg_db_copy c2 = claimed_load(b2, "4\td\n");
	char *url = pgt_fresh_db("lgt_pg_copy_claim");
	struct lg_db_stats before;
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 2);
	loop_start(&tl, "claim");
	outcome_init(&o, &tl);

	loop_copy(&tl, pg, &c1, &o);
	assert_int_equal(o.ok, 1);
	assert_int_equal(o.status, PGRES_COMMAND_OK);
	assert_string_equal(o.tuples, "3");

	/* Sent again: the claim returns no row, the COPY is skipped, and the
	 * callback has the claim's empty result. */
	before = pool_stats(pg);
	loop_copy(&tl, pg, &c1, &o);
	assert_int_equal(o.ok, 1);
	assert_int_equal(o.status, PGRES_TUPLES_OK);
	assert_int_equal(o.ntuples, 0);
	assert_string_equal(o.cmd, "INSERT 0 0");
	assert_int_equal(pool_stats(pg).succeeded, before.succeeded + 1);
	assert_query_value(url, "SELECT count(*) FROM t", "3");

	loop_copy(&tl, pg, &c2, &o);
	assert_string_equal(o.tuples, "1");
	assert_query_value(url, "SELECT count(*) FROM t", "4");
	assert_query_value(url, "SELECT string_agg(id, ',' ORDER BY id) FROM batches",
			   "batch-1,batch-2");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static PGconn *lock_table(const char *url, const char *table)
{
	PGconn *conn = PQconnectdb(url);
	char sql[128];
	PGresult *res;

	assert_int_equal(PQstatus(conn), CONNECTION_OK);
	snprintf(sql, sizeof sql, "BEGIN; LOCK TABLE %s IN ACCESS EXCLUSIVE MODE", table);
	res = PQexec(conn, sql);
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);
	return conn;
}

/* The claim's transaction-local settings hold for the COPY: a lock_timeout
 * makes a load fail rather than wait for a table someone holds, and the
 * claim goes with it, so the batch loads once the table is free. */
static void test_copy_claim_lock_timeout(void **state)
{
	const char *const batch[] = { "batch-locked" };
	struct lg_db_copy c = claimed_load(batch, "1\ta\n2\tb\n");
	char *url = pgt_fresh_db("lgt_pg_copy_lock");
	struct lg_pg_config cfg = base_config(url);
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	PGconn *locker;
	PGresult *res;
	char err[512];
	double t0;

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	c.claim_sql = "WITH claim AS (" CLAIM_SQL ") "
		      "SELECT id, set_config('lock_timeout', '100', true) FROM claim";
	/* Without the claim's lock_timeout the COPY would wait for this one,
	 * and fail with another message. */
	cfg.command_timeout_ms = 10000;
	cfg.pool_size = 1;
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	loop_start(&tl, "lock");
	outcome_init(&o, &tl);

	locker = lock_table(url, "t");
	t0 = pgt_now();
	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.failed, 1);
	assert_non_null(strstr(o.error, "lock timeout"));
	assert_true(pgt_now() - t0 < 9.0);
	assert_query_value(url, "SELECT count(*) FROM batches", "0");
	/* Transaction-local: gone with the load's transaction. */
	loop_query(&tl, pg, "SHOW lock_timeout", 0, NULL, &o);
	assert_string_equal(o.value, "0");

	res = PQexec(locker, "ROLLBACK");
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);
	PQfinish(locker);
	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.tuples, "2");
	assert_query_value(url, "SELECT count(*) FROM t", "2");
	assert_query_value(url, "SELECT id FROM batches", "batch-locked");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

/* A load that fails: an error, nothing loaded, the claim undone, and the
 * connection (the pool has one) back to no transaction without the
 * warning of a stray one. */
static void assert_load_refused(struct test_loop *tl, struct lg_pg *pg, const char *url,
				const struct lg_db_copy *c, const char *want)
{
	struct log_capture cap;
	struct lg_db_stats before = pool_stats(pg);
	struct outcome o;
	char *logged, *a, *b;

	outcome_init(&o, tl);
	capture_start(&cap);
	loop_copy(tl, pg, c, &o);
	a = sync_value(pg, "SELECT txid_current()");
	b = sync_value(pg, "SELECT txid_current()");
	logged = capture_stop(&cap);
	assert_int_equal(o.failed, 1);
	if (!strstr(o.error, want))
		fail_msg("\"%s\" does not say \"%s\"", o.error, want);
	/* Only the primary message: CONTEXT quotes the row. */
	assert_null(strstr(o.error, "COPY t, line"));
	assert_int_equal(pool_stats(pg).errors, before.errors + 1);
	assert_int_equal(pool_stats(pg).unavailable, before.unavailable);
	assert_null(strstr(logged, "transaction open"));
	assert_string_not_equal(a, b);
	assert_query_value(url, "SELECT count(*) FROM t", "0");
	assert_query_value(url, "SELECT count(*) FROM batches", "0");
	free(logged);
	free(a);
	free(b);
	outcome_destroy(&o);
}

static void test_copy_bad_data_rolled_back(void **state)
{
	const char *const batch[] = { "batch-bad" };
	struct lg_db_copy c = claimed_load(batch, "1\tok\n2\n3\tok\n");
	char *url = pgt_fresh_db("lgt_pg_copy_bad");
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 1);
	loop_start(&tl, "bad");
	outcome_init(&o, &tl);

	/* Only the primary message: the CONTEXT line quotes the row. */
	assert_load_refused(&tl, pg, url, &c, "missing data for column \"name\"");
	c.data = "1\tok\textra\n";
	c.len = strlen(c.data);
	assert_load_refused(&tl, pg, url, &c, "extra data after last expected column");
	c.data = "x\tnot a number\n";
	c.len = strlen(c.data);
	assert_load_refused(&tl, pg, url, &c, "invalid input syntax for type integer");
	/* Statements that are no COPY FROM STDIN, and a broken claim. */
	c.copy_sql = "SELECT 1";
	assert_load_refused(&tl, pg, url, &c, "not a COPY ... FROM STDIN statement");
	c.copy_sql = "COPY t TO STDOUT";
	assert_load_refused(&tl, pg, url, &c, "not a COPY ... FROM STDIN statement");
	c.copy_sql = "COPY no_such_table FROM STDIN";
	assert_load_refused(&tl, pg, url, &c, "no_such_table");
	c.copy_sql = "COPY t (id, name) FROM STDIN";
	c.claim_sql = "INSERT INTO batches (id) VALUES ($1)";
	assert_load_refused(&tl, pg, url, &c, "the claim returns no rows");
	c.claim_sql = "SELEC $1";
	assert_load_refused(&tl, pg, url, &c, "syntax error");

	/* The same connection loads a good batch at once. */
	c = claimed_load(batch, "1\tok\n");
	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.tuples, "1");
	assert_query_value(url, "SELECT count(*) FROM t", "1");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static void test_copy_empty_load(void **state)
{
	const char *const batch[] = { "batch-empty" };
	struct lg_db_copy c = {
		.size = sizeof c, .copy_sql = "COPY t (id, name) FROM STDIN",
		.data = NULL, .len = 0,
	};
	char *url = pgt_fresh_db("lgt_pg_copy_empty");
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 1);
	loop_start(&tl, "empty");
	outcome_init(&o, &tl);

	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.ok, 1);
	assert_int_equal(o.status, PGRES_COMMAND_OK);
	assert_string_equal(o.cmd, "COPY 0");
	assert_string_equal(o.tuples, "0");
	/* With a claim: the batch counts as loaded. */
	c = claimed_load(batch, "");
	loop_copy(&tl, pg, &c, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.cmd, "COPY 0");
	assert_query_value(url, "SELECT count(*) FROM t", "0");
	assert_query_value(url, "SELECT id FROM batches", "batch-empty");

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

static void test_copy_sync(void **state)
{
	const char *const batch[] = { "batch-sync" };
	struct lg_db_copy c = claimed_load(batch, "7\tseven\n8\teight\n");
	char *url = pgt_fresh_db("lgt_pg_copy_sync");
	struct lg_pg *pg;
	PGresult *res;
	char err[512];

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 2);

	res = lg_pg_copy_sync(pg, &c, err, sizeof err);
	if (!res)
		fail_msg("%s", err);
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	assert_string_equal(PQcmdTuples(res), "2");
	PQclear(res);
	res = lg_pg_copy_sync(pg, &c, err, sizeof err);
	assert_non_null(res);
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	assert_int_equal(PQntuples(res), 0);
	PQclear(res);
	assert_query_value(url, "SELECT string_agg(name, ',' ORDER BY id) FROM t", "seven,eight");

	c.data = "9\n";
	c.len = 2;
	c.params = (const char *const[]){ "batch-sync-bad" };
	err[0] = '\0';
	assert_null(lg_pg_copy_sync(pg, &c, err, sizeof err));
	assert_non_null(strstr(err, "missing data"));
	assert_query_value(url, "SELECT count(*) FROM batches", "1");

	lg_pg_stop(pg);
	free(url);
}

static void test_copy_refuses_bad_arguments(void **state)
{
	const char *const batch[] = { "b" };
	const struct lg_db_copy good = claimed_load(batch, "1\ta\n");
	char *url = pgt_fresh_db("lgt_pg_copy_args");
	struct lg_db_copy c;
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	char err[512];

	assert_non_null(url);
	pg = start_pool(url, 1);
	loop_start(&tl, "args");
	outcome_init(&o, &tl);

	assert_int_equal(lg_pg_copy(pg, tl.loop, NULL, on_result, &o), -EINVAL);
	assert_int_equal(lg_pg_copy(pg, NULL, &good, on_result, &o), -EINVAL);
	assert_int_equal(lg_pg_copy(pg, tl.loop, &good, NULL, &o), -EINVAL);
	c = good;
	c.size = sizeof c - 1;
	assert_int_equal(lg_pg_copy(pg, tl.loop, &c, on_result, &o), -EINVAL);
	c = good;
	c.copy_sql = NULL;
	assert_int_equal(lg_pg_copy(pg, tl.loop, &c, on_result, &o), -EINVAL);
	c = good;
	c.params = NULL;
	assert_int_equal(lg_pg_copy(pg, tl.loop, &c, on_result, &o), -EINVAL);
	c = good;
	c.nparams = -1;
	assert_int_equal(lg_pg_copy(pg, tl.loop, &c, on_result, &o), -EINVAL);
	c = good;
	c.claim_sql = NULL;      /* parameters without a claim */
	assert_int_equal(lg_pg_copy(pg, tl.loop, &c, on_result, &o), -EINVAL);
	c = good;
	c.data = NULL;
	assert_int_equal(lg_pg_copy(pg, tl.loop, &c, on_result, &o), -EINVAL);
	c.size = 0;
	err[0] = '\0';
	assert_null(lg_pg_copy_sync(pg, &c, err, sizeof err));
	assert_non_null(strstr(err, "invalid"));
	assert_null(lg_pg_copy_sync(pg, NULL, err, sizeof err));
	/* A longer struct of a later ABI is fine. */
	{
		struct { struct lg_db_copy c; uint64_t later; } longer = { good, 0 };
		PGresult *res;

		assert_true(pgt_exec(url, LOAD_TABLES));
		longer.c.size = sizeof longer;
		res = lg_pg_copy_sync(pg, &longer.c, err, sizeof err);
		if (!res)
			fail_msg("%s", err);
		assert_string_equal(PQcmdTuples(res), "1");
		PQclear(res);
	}
	assert_int_equal(o.done, 0);

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

/* Kills the pool's backend that runs a statement containing @marker;
 * whether one was found. */
static bool terminate_backend(const char *url, const char *marker)
{
	char sql[512];
	double deadline = pgt_now() + WAIT_S;

	snprintf(sql, sizeof sql, "SELECT bool_or(pg_terminate_backend(pid)) FROM pg_stat_activity "
		 "WHERE application_name = 'llmgate-test' AND state = 'active' "
		 "AND strpos(query, '%s') > 0", marker);
	while (pgt_now() < deadline) {
		char *v = pgt_query(url, sql);
		bool done = v && strcmp(v, "t") == 0;

		free(v);
		if (done)
			return true;
		usleep(20000);
	}
	return false;
}

/* The connection dies in the middle of a load: an outage, not a statement
 * error, nothing committed, and the next statement gets a new connection. */
static void test_copy_connection_lost(void **state)
{
	const char *const batch[] = { "batch-lost" };
	struct lg_db_copy c = claimed_load(batch, "1\ta\n");
	char *url = pgt_fresh_db("lgt_pg_copy_lost");
	struct lg_db_stats before;
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;

	assert_non_null(url);
	assert_true(pgt_exec(url, LOAD_TABLES));
	pg = start_pool(url, 1);
	loop_start(&tl, "lost");
	outcome_init(&o, &tl);
	c.claim_sql = "WITH claim AS (" CLAIM_SQL ") "
		      "SELECT id FROM claim, pg_sleep(30) AS lost_marker";

	before = pool_stats(pg);
	outcome_reset(&o);
	assert_int_equal(lg_loop_post(tl.loop, copy_on_loop, copy_submit_new(pg, &c, &o)), 0);
	assert_true(terminate_backend(url, "lost_marker"));
	assert_true(wait_done(&o, 1, WAIT_S));
	assert_int_equal(o.failed, 1);
	if (strncmp(o.error, "database connection lost: ", 26) != 0)
		fail_msg("%s", o.error);
	assert_null(strstr(o.error, pgt_env("LG_TEST_PG_PASSWORD")));
	assert_int_equal(pool_stats(pg).unavailable, before.unavailable + 1);
	assert_int_equal(pool_stats(pg).errors, before.errors);
	assert_query_value(url, "SELECT count(*) FROM batches", "0");

	loop_query(&tl, pg, "SELECT 'again'", 0, NULL, &o);
	assert_int_equal(o.ok, 1);
	assert_string_equal(o.value, "again");
	assert_int_equal(pool_stats(pg).reconnects, before.reconnects + 1);

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	outcome_destroy(&o);
	free(url);
}

/* ---- an outage: runs last, it restarts the server ---- */

static void test_database_restart(void **state)
{
	const char *const batch[] = { "batch-restart" };
	const struct lg_db_copy load = claimed_load(batch, "1\ta\n2\tb\n");
	char *url = pgt_fresh_db("lgt_pg_restart");
	struct lg_pg_config cfg = base_config(url);
	struct lg_db_stats before;
	PGresult *res;
	struct notes heard = { 0 };
	struct listen_req r;
	struct test_loop tl;
	struct outcome o;
	struct lg_pg *pg;
	char err[512];
	double t0, deadline;
	bool back = false;

	assert_non_null(url);
	pg = lg_pg_start(&cfg, err, sizeof err);
	assert_non_null(pg);
	loop_start(&tl, "restart");
	outcome_init(&o, &tl);
	pthread_mutex_init(&heard.lock, NULL);
	heard.loop_thread = tl.thread;
	r = (struct listen_req){ .pg = pg, .channel = "restart_chan", .n = &heard };
	listen_from_loop(&tl, &r);
	assert_true(notify_until_heard(pg, &heard, "restart_chan", "before", WAIT_S));

	assert_true(pgt_pg_ctl("stop", "immediate"));

	/* Queries fail to their callbacks, none hangs. */
	loop_query(&tl, pg, "SELECT 1", 0, NULL, &o);
	assert_int_equal(o.failed, 1);
	assert_null(strstr(o.error, pgt_env("LG_TEST_PG_PASSWORD")));
	assert_false(lg_pg_healthy(pg));
	outcome_reset(&o);
	t0 = pgt_now();
	for (int i = 0; i < 20; i++)
		query_from_loop(&tl, pg, "INSERT INTO nowhere VALUES (1)", 0, NULL, &o);
	assert_true(wait_done(&o, 20, WAIT_S));
	assert_int_equal(o.failed, 20);
	assert_true(pgt_now() - t0 < WAIT_S);
	assert_null(lg_pg_query_sync(pg, "SELECT 1", 0, NULL, err, sizeof err));
	assert_true(strlen(err) > 0);
	assert_null(strstr(err, pgt_env("LG_TEST_PG_PASSWORD")));
	assert_false(lg_pg_healthy(pg));

	/* Bulk loads fail the same way, as an outage. */
	before = pool_stats(pg);
	loop_copy(&tl, pg, &load, &o);
	assert_int_equal(o.failed, 1);
	assert_non_null(strstr(o.error, "database"));
	assert_null(strstr(o.error, pgt_env("LG_TEST_PG_PASSWORD")));
	err[0] = '\0';
	assert_null(lg_pg_copy_sync(pg, &load, err, sizeof err));
	assert_non_null(strstr(err, "database"));
	assert_int_equal(pool_stats(pg).unavailable, before.unavailable + 2);
	assert_int_equal(pool_stats(pg).errors, before.errors);

	assert_true(pgt_pg_ctl("start", NULL));

	/* Back within the backoff (2 s at most) plus a reconnect. */
	deadline = pgt_now() + 40;
	while (!back && pgt_now() < deadline) {
		loop_query(&tl, pg, "SELECT 'up'", 0, NULL, &o);
		back = o.ok == 1 && strcmp(o.value, "up") == 0;
		if (!back)
			usleep(200000);
	}
	assert_true(back);
	assert_true(lg_pg_healthy(pg));
	/* Made only now: the test cluster does not flush commits to disk, so
	 * an immediate stop may lose recent ones. */
	assert_true(pgt_exec(url, LOAD_TABLES));
	res = lg_pg_copy_sync(pg, &load, err, sizeof err);
	if (!res)
		fail_msg("%s", err);
	assert_string_equal(PQcmdTuples(res), "2");
	PQclear(res);
	assert_query_value(url, "SELECT count(*) FROM t", "2");

	/* The LISTEN connection came back and listens again. */
	notes_reset(&heard);
	assert_true(notify_until_heard(pg, &heard, "restart_chan", "after", 40));
	assert_false(heard.wrong_thread);

	loop_join(&tl);
	lg_pg_stop(pg);
	lg_loop_free(tl.loop);
	pthread_mutex_destroy(&heard.lock);
	outcome_destroy(&o);
	free(url);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_conninfo_spellings),
		cmocka_unit_test(test_conninfo_refuses_garbage),
		cmocka_unit_test(test_server_settings_honoured),
		cmocka_unit_test(test_command_timeout),
		cmocka_unit_test(test_stray_transaction_rolled_back),
		cmocka_unit_test(test_async_query_on_loop_thread),
		cmocka_unit_test(test_sync_query),
		cmocka_unit_test(test_many_concurrent_queries),
		cmocka_unit_test(test_parameters_stay_data),
		cmocka_unit_test(test_start_fails_on_closed_port),
		cmocka_unit_test(test_wrong_password_not_shown),
		cmocka_unit_test(test_listen_notify),
		cmocka_unit_test(test_copy_loads_rows),
		cmocka_unit_test(test_copy_large_load_in_chunks),
		cmocka_unit_test(test_copy_claim_loads_once),
		cmocka_unit_test(test_copy_claim_lock_timeout),
		cmocka_unit_test(test_copy_bad_data_rolled_back),
		cmocka_unit_test(test_copy_empty_load),
		cmocka_unit_test(test_copy_sync),
		cmocka_unit_test(test_copy_refuses_bad_arguments),
		cmocka_unit_test(test_copy_connection_lost),
		cmocka_unit_test(test_database_restart),  /* last: restarts the server */
	};

	if (lg_loop_global_init() != 0)
		return 1;
	pgt_env("LG_TEST_PG_URL");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
