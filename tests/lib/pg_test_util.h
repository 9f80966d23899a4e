/* SPDX-License-Identifier: Apache-2.0 */
/* Shared by the C tests that run under tests/lib/with_pg.py: a fresh
 * database per test, small queries, and stopping or starting the throwaway
 * cluster (LG_TEST_PG_DATA) to test outages. */
#ifndef LG_PG_TEST_UTIL_H
#define LG_PG_TEST_UTIL_H

#include <glob.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static inline const char *pgt_env(const char *name)
{
	const char *v = getenv(name);

	if (!v || !*v) {
		fprintf(stderr, "%s is not set: run this test under tests/lib/with_pg.py\n", name);
		exit(1);
	}
	return v;
}

static inline double pgt_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline char *pgt_url(const char *dbname)
{
	char *url;

	if (asprintf(&url, "postgresql://postgres:%s@127.0.0.1:%s/%s",
		     pgt_env("LG_TEST_PG_PASSWORD"), pgt_env("LG_TEST_PG_PORT"), dbname) < 0)
		return NULL;
	return url;
}

static inline void pgt_quiet(void *arg, const char *msg) { }

/* Runs @sql on @url; the first value of the first row, malloc'ed ("" when
 * there is none), or NULL on error (printed). */
static inline char *pgt_query(const char *url, const char *sql)
{
	PGconn *conn = PQconnectdb(url);
	PGresult *res = NULL;
	char *out = NULL;
	ExecStatusType st;

	if (PQstatus(conn) != CONNECTION_OK) {
		fprintf(stderr, "pgt_query: %s", PQerrorMessage(conn));
		goto done;
	}
	PQsetNoticeProcessor(conn, pgt_quiet, NULL);
	res = PQexec(conn, sql);
	st = PQresultStatus(res);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
		fprintf(stderr, "pgt_query %s: %s", sql, PQerrorMessage(conn));
		goto done;
	}
	out = strdup(st == PGRES_TUPLES_OK && PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "");
done:
	PQclear(res);
	PQfinish(conn);
	return out;
}

static inline bool pgt_exec(const char *url, const char *sql)
{
	char *v = pgt_query(url, sql);

	free(v);
	return v != NULL;
}

/* An empty database named @name; its URL, malloc'ed. */
static inline char *pgt_fresh_db(const char *name)
{
	const char *admin = pgt_env("LG_TEST_PG_URL");
	char sql[256];

	snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
	if (!pgt_exec(admin, sql))
		return NULL;
	snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
	if (!pgt_exec(admin, sql))
		return NULL;
	return pgt_url(name);
}

/* Runs pg_ctl on the test cluster, as the postgres user when root (the
 * server refuses to run as root), as tests/lib/pgcluster.py does. */
static inline bool pgt_pg_ctl(const char *action, const char *mode)
{
	const char *data = pgt_env("LG_TEST_PG_DATA");
	const char *bindir = getenv("LG_PG_BINDIR");
	char pg_ctl[512], log[512], dir[512];
	const char *argv[16];
	glob_t g;
	int n = 0, status;
	pid_t pid;

	if (bindir && *bindir) {
		snprintf(pg_ctl, sizeof pg_ctl, "%s/pg_ctl", bindir);
	} else {
		if (glob("/usr/lib/postgresql/*/bin/pg_ctl", 0, NULL, &g) != 0 || !g.gl_pathc)
			return false;
		snprintf(pg_ctl, sizeof pg_ctl, "%s", g.gl_pathv[g.gl_pathc - 1]);
		globfree(&g);
	}
	snprintf(dir, sizeof dir, "%s", data);
	snprintf(log, sizeof log, "%s/postgres.log", dirname(dir));
	if (geteuid() == 0) {
		argv[n++] = "runuser";
		argv[n++] = "-u";
		argv[n++] = "postgres";
		argv[n++] = "--";
	}
	argv[n++] = pg_ctl;
	argv[n++] = "-D";
	argv[n++] = data;
	argv[n++] = "-w";
	argv[n++] = "-t";
	argv[n++] = "60";
	if (mode) {
		argv[n++] = "-m";
		argv[n++] = mode;
	}
	if (strcmp(action, "start") == 0) {
		argv[n++] = "-l";
		argv[n++] = log;
	}
	argv[n++] = action;
	argv[n] = NULL;
	pid = fork();
	if (pid < 0)
		return false;
	if (pid == 0) {
		/* pg_ctl's progress goes with the test's diagnostics. */
		if (dup2(STDERR_FILENO, STDOUT_FILENO) < 0)
			_exit(127);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid)
		return false;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

#endif
