/* SPDX-License-Identifier: Apache-2.0 */
/* The migration runner against a real throwaway cluster (run under
 * tests/lib/with_pg.py). Each test works in its own fresh database. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lib/pg_test_util.h"
#include "migrate.h"

#define SET(plugin, arr) { (plugin), (arr), LG_COUNT(arr) - 1 }

static const struct lg_migration three[] = {
	{ 1, "first", "CREATE TABLE t1 (a int);" },
	{ 2, "second", "CREATE TABLE t2 (a int);\nINSERT INTO t2 VALUES (1), (2);" },
	{ 3, "third", "CREATE TABLE t3 (a int)" },
	{ 0, NULL, NULL },
};

/* A connection to a fresh database; *url is its URL. */
static PGconn *fresh(const char *name, char **url)
{
	PGconn *conn;

	*url = pgt_fresh_db(name);
	assert_non_null(*url);
	conn = PQconnectdb(*url);
	assert_int_equal(PQstatus(conn), CONNECTION_OK);
	PQsetNoticeProcessor(conn, pgt_quiet, NULL);
	return conn;
}

/* lg_migrate() with its output captured into *text (malloc'ed). */
static int migrate(PGconn *conn, const struct lg_migration_set *sets, size_t nsets,
		   enum lg_migrate_mode mode, char **text, char *err, size_t errlen)
{
	size_t len;
	FILE *out = open_memstream(text, &len);
	int r;

	assert_non_null(out);
	err[0] = '\0';
	r = lg_migrate(conn, sets, nsets, mode, out, err, errlen);
	assert_int_equal(fclose(out), 0);
	return r;
}

static char *q(const char *url, const char *sql)
{
	char *v = pgt_query(url, sql);

	assert_non_null(v);
	return v;
}

static void assert_query(const char *url, const char *sql, const char *want)
{
	char *v = q(url, sql);

	assert_string_equal(v, want);
	free(v);
}

static void test_checksum(void **state)
{
	char hex[65];

	lg_migration_checksum("", hex);
	assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	lg_migration_checksum("abc", hex);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_invalid_sets_refused(void **state)
{
	static const struct lg_migration gap[] = {
		{ 1, "a", "SELECT 1" }, { 3, "c", "SELECT 1" }, { 0, NULL, NULL },
	};
	static const struct lg_migration noname[] = { { 1, "", "SELECT 1" }, { 0, NULL, NULL } };
	static const struct lg_migration nosql[] = { { 1, "a", " \n\t" }, { 0, NULL, NULL } };
	static const struct lg_migration zero[] = { { 0, "a", "SELECT 1" }, { 0, NULL, NULL } };
	const struct lg_migration_set bad[][2] = {
		{ SET("core", gap) },
		{ SET("core", noname) },
		{ SET("core", nosql) },
		{ SET("core", zero) },
		{ SET("", three) },
	};
	const char *const words[] = { "version 3, expected 2", "no name", "has no SQL",
				      "version 0, expected 1", "no plugin name" };
	const struct lg_migration_set twice[] = { SET("core", three), SET("core", three) };
	char *url, *text, err[512];
	PGconn *conn = fresh("lgt_mig_invalid", &url);

	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		int r = migrate(conn, bad[i], 1, LG_MIGRATE_APPLY, &text, err, sizeof err);

		assert_int_equal(r, -1);
		assert_non_null(strstr(err, words[i]));
		free(text);
	}
	assert_int_equal(migrate(conn, twice, 2, LG_MIGRATE_APPLY, &text, err, sizeof err), -1);
	assert_non_null(strstr(err, "core"));
	free(text);
	/* Checked before the database is touched. */
	assert_query(url, "SELECT to_regclass('schema_migrations') IS NULL", "t");
	PQfinish(conn);
	free(url);
}

static void test_fresh_apply_and_rerun(void **state)
{
	const struct lg_migration_set sets[] = { SET("core", three) };
	char *url, *text, err[512], sum[65], sql[256];
	PGconn *conn = fresh("lgt_mig_fresh", &url);

	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), 3);
	assert_string_equal(text, "applied core 0001 first\napplied core 0002 second\n"
			    "applied core 0003 third\n");
	free(text);
	assert_query(url, "SELECT count(*) FROM t2", "2");
	assert_query(url, "SELECT string_agg(version || ':' || name, ',' ORDER BY version) "
		     "FROM schema_migrations WHERE plugin = 'core'", "1:first,2:second,3:third");
	for (size_t i = 0; i < 3; i++) {
		lg_migration_checksum(three[i].sql, sum);
		snprintf(sql, sizeof sql, "SELECT checksum FROM schema_migrations "
			 "WHERE plugin = 'core' AND version = %zu", i + 1);
		assert_query(url, sql, sum);
	}
	assert_query(url, "SELECT count(*) FROM schema_migrations WHERE applied_at IS NULL", "0");

	/* Again: nothing to do, nothing printed. */
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), 0);
	assert_string_equal(text, "");
	free(text);
	assert_query(url, "SELECT count(*) FROM schema_migrations", "3");
	/* The lock is given back. */
	assert_query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", "0");
	PQfinish(conn);
	free(url);
}

static void test_edited_migration_refused(void **state)
{
	static const struct lg_migration edited[] = {
		{ 1, "first", "CREATE TABLE t1 (a int);" },
		{ 2, "second", "CREATE TABLE t2 (a bigint);" },
		{ 3, "third", "CREATE TABLE t3 (a int)" },
		{ 0, NULL, NULL },
	};
	const struct lg_migration_set two[] = { { "core", three, 2 } };
	const struct lg_migration_set sets[] = { SET("core", edited) };
	char *url, *text, err[512];
	PGconn *conn = fresh("lgt_mig_edited", &url);

	assert_int_equal(migrate(conn, two, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), 2);
	free(text);
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), -1);
	assert_non_null(strstr(err, "core migration 0002 second was edited after it was applied"));
	free(text);
	/* Refused before anything ran: the third one is not applied. */
	assert_query(url, "SELECT to_regclass('t3') IS NULL", "t");
	assert_query(url, "SELECT count(*) FROM schema_migrations", "2");
	/* Status refuses too. */
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_STATUS, &text, err, sizeof err), -1);
	assert_non_null(strstr(err, "edited"));
	free(text);
	PQfinish(conn);
	free(url);
}

static void test_newer_database_refused(void **state)
{
	const struct lg_migration_set sets[] = { { "core", three, 2 } };
	char *url, *text, err[512];
	PGconn *conn = fresh("lgt_mig_newer", &url);

	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), 2);
	free(text);
	assert_true(pgt_exec(url, "INSERT INTO schema_migrations (plugin, version, name, checksum) "
			     "VALUES ('core', 5, 'future', 'abc')"));
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), -1);
	assert_string_equal(err, "database has core migration 5 but this llmgate ships only up "
			    "to 2: upgrade llmgate");
	free(text);
	assert_query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", "0");
	PQfinish(conn);
	free(url);
}

static void test_failing_migration_rolls_back(void **state)
{
	static const struct lg_migration broken[] = {
		{ 1, "first", "CREATE TABLE t1 (a int);" },
		{ 2, "broken", "CREATE TABLE t2 (a int);\nINSERT INTO no_such_table VALUES (1);" },
		{ 3, "third", "CREATE TABLE t3 (a int)" },
		{ 0, NULL, NULL },
	};
	static const struct lg_migration fixed[] = {
		{ 1, "first", "CREATE TABLE t1 (a int);" },
		{ 2, "fixed", "CREATE TABLE t2 (a int);" },
		{ 3, "third", "CREATE TABLE t3 (a int)" },
		{ 0, NULL, NULL },
	};
	const struct lg_migration_set sets[] = { SET("core", broken) };
	const struct lg_migration_set good[] = { SET("core", fixed) };
	char *url, *text, err[512];
	PGconn *conn = fresh("lgt_mig_fail", &url);

	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), -1);
	assert_non_null(strstr(err, "core migration 0002 broken failed"));
	assert_non_null(strstr(err, "no_such_table"));
	assert_string_equal(text, "applied core 0001 first\n");
	free(text);
	assert_query(url, "SELECT to_regclass('t1') IS NOT NULL", "t");
	assert_query(url, "SELECT to_regclass('t2') IS NULL", "t");
	assert_query(url, "SELECT to_regclass('t3') IS NULL", "t");
	assert_query(url, "SELECT string_agg(version::text, ',') FROM schema_migrations", "1");
	assert_query(url, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", "0");
	assert_int_equal(PQtransactionStatus(conn), PQTRANS_IDLE);

	/* The same connection goes on once the migration is fixed. */
	assert_int_equal(migrate(conn, good, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), 2);
	free(text);
	assert_query(url, "SELECT to_regclass('t3') IS NOT NULL", "t");
	PQfinish(conn);
	free(url);
}

static void test_dry_run_and_status(void **state)
{
	const struct lg_migration_set sets[] = { SET("core", three) };
	const struct lg_migration_set one[] = { { "core", three, 1 } };
	char *url, *text, err[512];
	PGconn *conn = fresh("lgt_mig_dry", &url);

	/* No schema_migrations yet: all pending, and none is created. */
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_DRY_RUN, &text, err, sizeof err), 3);
	assert_string_equal(text, "pending core 0001 first\npending core 0002 second\n"
			    "pending core 0003 third\n");
	free(text);
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_STATUS, &text, err, sizeof err), 3);
	assert_string_equal(text, "core 0001 first pending\ncore 0002 second pending\n"
			    "core 0003 third pending\n");
	free(text);
	assert_query(url, "SELECT to_regclass('schema_migrations') IS NULL", "t");
	assert_query(url, "SELECT to_regclass('t1') IS NULL", "t");

	assert_int_equal(migrate(conn, one, 1, LG_MIGRATE_APPLY, &text, err, sizeof err), 1);
	free(text);
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_STATUS, &text, err, sizeof err), 2);
	assert_true(strncmp(text, "core 0001 first applied 20", 26) == 0);
	assert_non_null(strstr(text, "Z\ncore 0002 second pending\ncore 0003 third pending\n"));
	free(text);
	assert_int_equal(migrate(conn, sets, 1, LG_MIGRATE_DRY_RUN, &text, err, sizeof err), 2);
	assert_string_equal(text, "pending core 0002 second\npending core 0003 third\n");
	free(text);
	assert_query(url, "SELECT count(*) FROM schema_migrations", "1");
	assert_query(url, "SELECT to_regclass('t2') IS NULL", "t");
	/* A NULL output is allowed. */
	assert_int_equal(lg_migrate(conn, sets, 1, LG_MIGRATE_STATUS, NULL, err, sizeof err), 2);
	PQfinish(conn);
	free(url);
}

/* ---- two instances at once ---- */

static const struct lg_migration once_only[] = {
	/* No IF NOT EXISTS: fails if run twice. */
	{ 1, "create_once", "CREATE TABLE once (a int)" },
	{ 2, "slow_insert", "SELECT pg_sleep(0.5); INSERT INTO once VALUES (1);" },
	{ 3, "create_twice", "CREATE TABLE twice (a int)" },
	{ 0, NULL, NULL },
};

struct instance {
	const char *url;
	pthread_barrier_t *start;
	int result;
	char err[512];
};

static void *instance_main(void *arg)
{
	struct instance *in = arg;
	const struct lg_migration_set sets[] = { SET("core", once_only) };
	PGconn *conn = PQconnectdb(in->url);

	PQsetNoticeProcessor(conn, pgt_quiet, NULL);
	pthread_barrier_wait(in->start);
	in->result = lg_migrate(conn, sets, 1, LG_MIGRATE_APPLY, NULL, in->err, sizeof in->err);
	PQfinish(conn);
	return NULL;
}

static void test_concurrent_instances(void **state)
{
	pthread_barrier_t start;
	struct instance in[2];
	pthread_t threads[2];
	char *url;
	PGconn *conn = fresh("lgt_mig_race", &url);

	assert_int_equal(pthread_barrier_init(&start, NULL, 2), 0);
	for (int i = 0; i < 2; i++) {
		in[i] = (struct instance){ .url = url, .start = &start };
		assert_int_equal(pthread_create(&threads[i], NULL, instance_main, &in[i]), 0);
	}
	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_join(threads[i], NULL), 0);
	pthread_barrier_destroy(&start);
	for (int i = 0; i < 2; i++) {
		if (in[i].result < 0)
			fail_msg("instance %d: %s", i, in[i].err);
	}
	assert_int_equal(in[0].result + in[1].result, 3);
	assert_query(url, "SELECT count(*) FROM schema_migrations", "3");
	assert_query(url, "SELECT count(*) FROM once", "1");
	assert_query(url, "SELECT to_regclass('twice') IS NOT NULL", "t");
	PQfinish(conn);
	free(url);
}

/* Holds the migration lock from another session for a while. */
struct holder {
	PGconn *conn;
	double hold_s;
};

static void *holder_main(void *arg)
{
	struct holder *h = arg;
	PGresult *res;

	usleep((useconds_t)(h->hold_s * 1e6));
	res = PQexec(h->conn, "SELECT pg_advisory_unlock_all()");
	PQclear(res);
	return NULL;
}

static void test_waits_past_statement_timeout(void **state)
{
	const struct lg_migration_set sets[] = { SET("core", once_only) };
	struct holder h = { .hold_s = 1.0 };
	char *url, *short_url, err[512];
	pthread_t thread;
	PGresult *res;
	PGconn *conn = fresh("lgt_mig_timeout", &url);

	PQfinish(conn);
	/* The runtime's connection: a 200 ms statement_timeout, shorter than
	 * both the wait for the lock and the 0.5 s migration. */
	assert_true(asprintf(&short_url, "%s?options=-c%%20statement_timeout%%3D200", url) > 0);
	conn = PQconnectdb(short_url);
	assert_int_equal(PQstatus(conn), CONNECTION_OK);
	PQsetNoticeProcessor(conn, pgt_quiet, NULL);
	h.conn = PQconnectdb(url);
	assert_int_equal(PQstatus(h.conn), CONNECTION_OK);
	/* The key lg_migrate() uses: "llmgate" in ASCII. */
	res = PQexec(h.conn, "SELECT pg_advisory_lock(30518514626425957)");
	assert_int_equal(PQresultStatus(res), PGRES_TUPLES_OK);
	PQclear(res);
	assert_int_equal(pthread_create(&thread, NULL, holder_main, &h), 0);

	err[0] = '\0';
	if (lg_migrate(conn, sets, 1, LG_MIGRATE_APPLY, NULL, err, sizeof err) != 3)
		fail_msg("%s", err);
	assert_int_equal(pthread_join(thread, NULL), 0);
	assert_query(url, "SELECT count(*) FROM once", "1");
	/* The connection's own timeout is untouched afterwards. */
	res = PQexec(conn, "SHOW statement_timeout");
	assert_string_equal(PQgetvalue(res, 0, 0), "200ms");
	PQclear(res);
	PQfinish(h.conn);
	PQfinish(conn);
	free(short_url);
	free(url);
}

static void test_plugin_order(void **state)
{
	static const struct lg_migration core[] = {
		{ 1, "core_thing", "CREATE TABLE core_thing (id int PRIMARY KEY)" },
		{ 0, NULL, NULL },
	};
	static const struct lg_migration auth[] = {
		{ 1, "auth_thing", "CREATE TABLE auth_thing (core_id int REFERENCES core_thing (id))" },
		{ 2, "auth_more", "ALTER TABLE auth_thing ADD COLUMN note text" },
		{ 0, NULL, NULL },
	};
	const struct lg_migration_set ordered[] = { SET("core", core), SET("auth", auth) };
	const struct lg_migration_set reversed[] = { SET("auth", auth), SET("core", core) };
	char *url, *text, err[512];
	PGconn *conn = fresh("lgt_mig_order", &url);

	assert_int_equal(migrate(conn, ordered, 2, LG_MIGRATE_APPLY, &text, err, sizeof err), 3);
	assert_string_equal(text, "applied core 0001 core_thing\napplied auth 0001 auth_thing\n"
			    "applied auth 0002 auth_more\n");
	free(text);
	assert_query(url, "SELECT string_agg(plugin || version, ',' ORDER BY applied_at, plugin "
		     "DESC) FROM schema_migrations", "core1,auth1,auth2");
	assert_int_equal(migrate(conn, ordered, 2, LG_MIGRATE_STATUS, &text, err, sizeof err), 0);
	assert_non_null(strstr(text, "auth 0002 auth_more applied 20"));
	free(text);
	PQfinish(conn);
	free(url);

	/* Given the other way round, auth runs first and cannot find core's
	 * table: the order given is the order applied. */
	conn = fresh("lgt_mig_order2", &url);
	assert_int_equal(migrate(conn, reversed, 2, LG_MIGRATE_APPLY, &text, err, sizeof err), -1);
	assert_non_null(strstr(err, "auth migration 0001 auth_thing failed"));
	assert_non_null(strstr(err, "core_thing"));
	assert_string_equal(text, "");
	free(text);
	PQfinish(conn);
	free(url);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_checksum),
		cmocka_unit_test(test_invalid_sets_refused),
		cmocka_unit_test(test_fresh_apply_and_rerun),
		cmocka_unit_test(test_edited_migration_refused),
		cmocka_unit_test(test_newer_database_refused),
		cmocka_unit_test(test_failing_migration_rolls_back),
		cmocka_unit_test(test_dry_run_and_status),
		cmocka_unit_test(test_concurrent_instances),
		cmocka_unit_test(test_waits_past_statement_timeout),
		cmocka_unit_test(test_plugin_order),
	};

	pgt_env("LG_TEST_PG_URL");
	return cmocka_run_group_tests(tests, NULL, NULL);
}
