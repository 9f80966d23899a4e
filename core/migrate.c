/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The migration runner.
 *
 * APPLY holds a session advisory lock for its whole run, so that several
 * instances starting at once apply each migration exactly once: the second
 * waits, then finds them applied. The lock is taken before schema_migrations
 * is created, since two concurrent CREATE TABLE IF NOT EXISTS can still
 * collide in the catalog.
 *
 * Every set is checked (checksums, versions newer than ours) before
 * anything is applied, so a refusal leaves the database as it was. Each
 * migration then runs in its own transaction together with its row in
 * schema_migrations. Migrations must not hold BEGIN/COMMIT themselves, nor
 * statements that cannot run in a transaction.
 *
 * Waiting for the lock and running a migration ignore the connection's
 * statement_timeout (the runtime's command timeout): a long schema change,
 * or another instance's, is not a stuck query.
 *
 * DRY_RUN and STATUS only read: without a schema_migrations table,
 * everything is pending.
 */
#include "migrate.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "log.h"

#define LOG_COMP "migrate"
/* "llmgate" in ASCII, as the key of the advisory lock. */
#define MIGRATE_LOCK_KEY "30518514626425957"

static const char create_table_sql[] =
	"CREATE TABLE IF NOT EXISTS schema_migrations ("
	" plugin text NOT NULL,"
	" version integer NOT NULL,"
	" name text NOT NULL,"
	" checksum text NOT NULL,"
	" applied_at timestamptz NOT NULL DEFAULT now(),"
	" PRIMARY KEY (plugin, version))";

static const char read_applied_sql[] =
	"SELECT version, name, checksum,"
	" to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
	" FROM schema_migrations WHERE plugin = $1 ORDER BY version";

static const char insert_sql[] =
	"INSERT INTO schema_migrations (plugin, version, name, checksum) VALUES ($1, $2, $3, $4)";

/* The database's message on one line. */
static void db_message(char *dst, size_t size, const PGresult *res, const PGconn *conn)
{
	const char *msg = res ? PQresultErrorMessage(res) : NULL;
	size_t n = 0;
	bool space = false;

	if (!msg || !*msg)
		msg = PQerrorMessage(conn);
	if (!msg || !*msg)
		msg = "unknown error";
	for (; *msg && n + 2 < size; msg++) {
		if (isspace((unsigned char)*msg)) {
			space = n > 0;
			continue;
		}
		if (space)
			dst[n++] = ' ';
		space = false;
		dst[n++] = *msg;
	}
	dst[n] = '\0';
}

/* Runs @sql; NULL (and @err) unless the result has status @want. */
static PGresult *exec_expect(PGconn *conn, const char *sql, int nparams,
			     const char *const *params, ExecStatusType want, char *err,
			     size_t errlen)
{
	PGresult *res;
	char msg[512];

	if (nparams)
		res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
	else
		res = PQexec(conn, sql);
	if (res && PQresultStatus(res) == want)
		return res;
	db_message(msg, sizeof msg, res, conn);
	lg_errf(err, errlen, "%s", msg);
	PQclear(res);
	return NULL;
}

static int exec_command(PGconn *conn, const char *sql, int nparams, const char *const *params,
			char *err, size_t errlen)
{
	PGresult *res = exec_expect(conn, sql, nparams, params, PGRES_COMMAND_OK, err, errlen);

	if (!res)
		return -1;
	PQclear(res);
	return 0;
}

void lg_migration_checksum(const char *sql, char hex[65])
{
	unsigned char digest[crypto_hash_sha256_BYTES];

	hex[0] = '\0';
	if (crypto_hash_sha256(digest, (const unsigned char *)sql, strlen(sql)) != 0)
		return;
	if (!sodium_bin2hex(hex, 65, digest, sizeof digest))
		hex[0] = '\0';
}

static bool blank(const char *s)
{
	if (!s)
		return true;
	for (; *s; s++)
		if (!isspace((unsigned char)*s))
			return false;
	return true;
}

static int validate_set(const struct lg_migration_set *set, char *err, size_t errlen)
{
	if (!set->plugin || !*set->plugin) {
		lg_errf(err, errlen, "a migration set has no plugin name");
		return -1;
	}
	if (set->n && !set->migrations) {
		lg_errf(err, errlen, "%s: %zu migrations announced but none given", set->plugin,
			set->n);
		return -1;
	}
	for (size_t i = 0; i < set->n; i++) {
		const struct lg_migration *m = &set->migrations[i];

		if (m->version != i + 1) {
			lg_errf(err, errlen, "%s: migration #%zu has version %u, expected %zu "
				"(versions go 1, 2, 3... in order)", set->plugin, i + 1, m->version,
				i + 1);
			return -1;
		}
		if (!m->name || !*m->name) {
			lg_errf(err, errlen, "%s migration %04u has no name", set->plugin, m->version);
			return -1;
		}
		if (blank(m->sql)) {
			lg_errf(err, errlen, "%s migration %04u %s has no SQL", set->plugin,
				m->version, m->name);
			return -1;
		}
	}
	return 0;
}

static int validate_sets(const struct lg_migration_set *sets, size_t nsets, char *err,
			 size_t errlen)
{
	for (size_t i = 0; i < nsets; i++) {
		if (validate_set(&sets[i], err, errlen) != 0)
			return -1;
		for (size_t j = 0; j < i; j++) {
			if (strcmp(sets[i].plugin, sets[j].plugin) == 0) {
				lg_errf(err, errlen, "migrations of %s given twice", sets[i].plugin);
				return -1;
			}
		}
	}
	return 0;
}

static int table_exists(PGconn *conn, bool *exists, char *err, size_t errlen)
{
	PGresult *res = exec_expect(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL", 0,
				    NULL, PGRES_TUPLES_OK, err, errlen);

	if (!res)
		return -1;
	*exists = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return 0;
}

/* The row of @version in @rows (read_applied_sql), or -1. */
static int find_row(const PGresult *rows, uint32_t version)
{
	for (int i = 0; rows && i < PQntuples(rows); i++)
		if (strtoul(PQgetvalue(rows, i, 0), NULL, 10) == version)
			return i;
	return -1;
}

/* Refuses a database that does not match the shipped migrations. */
static int check_applied(const struct lg_migration_set *set, const PGresult *rows, char *err,
			 size_t errlen)
{
	char sum[65];

	for (int i = 0; i < PQntuples(rows); i++) {
		long version = strtol(PQgetvalue(rows, i, 0), NULL, 10);
		const struct lg_migration *m;

		if (version < 1 || (unsigned long)version > set->n) {
			lg_errf(err, errlen, "database has %s migration %ld but this llmgate ships "
				"only up to %zu: upgrade llmgate", set->plugin, version, set->n);
			return -1;
		}
		m = &set->migrations[version - 1];
		lg_migration_checksum(m->sql, sum);
		if (strcmp(sum, PQgetvalue(rows, i, 2)) != 0) {
			lg_errf(err, errlen, "%s migration %04u %s was edited after it was applied "
				"(its checksum in schema_migrations differs from the shipped SQL): "
				"restore the original and add a new migration instead", set->plugin,
				m->version, m->name);
			return -1;
		}
	}
	return 0;
}

static int read_applied(PGconn *conn, const struct lg_migration_set *set, PGresult **rows,
			char *err, size_t errlen)
{
	const char *params[] = { set->plugin };
	char msg[512];

	*rows = exec_expect(conn, read_applied_sql, 1, params, PGRES_TUPLES_OK, msg, sizeof msg);
	if (!*rows) {
		lg_errf(err, errlen, "cannot read schema_migrations: %s", msg);
		return -1;
	}
	return check_applied(set, *rows, err, errlen);
}

static void rollback(PGconn *conn)
{
	PGresult *res = PQexec(conn, "ROLLBACK");

	if (!res || PQresultStatus(res) != PGRES_COMMAND_OK)
		lg_warn(LOG_COMP, "ROLLBACK failed: %s", PQerrorMessage(conn));
	PQclear(res);
}

/* One migration and its row, in one transaction. */
static int apply_one(PGconn *conn, const char *plugin, const struct lg_migration *m, char *err,
		     size_t errlen)
{
	char version[16], sum[65], msg[512];
	const char *params[] = { plugin, version, m->name, sum };

	snprintf(version, sizeof version, "%u", m->version);
	lg_migration_checksum(m->sql, sum);
	if (exec_command(conn, "BEGIN", 0, NULL, msg, sizeof msg) != 0)
		goto fail;
	/* The runtime's command timeout is not meant for schema changes. */
	if (exec_command(conn, "SET LOCAL statement_timeout = 0", 0, NULL, msg, sizeof msg) != 0)
		goto fail_rollback;
	/* PQexec: a migration may hold several statements. */
	if (exec_command(conn, m->sql, 0, NULL, msg, sizeof msg) != 0)
		goto fail_rollback;
	if (exec_command(conn, insert_sql, 4, params, msg, sizeof msg) != 0)
		goto fail_rollback;
	if (exec_command(conn, "COMMIT", 0, NULL, msg, sizeof msg) != 0)
		goto fail_rollback;
	return 0;
fail_rollback:
	rollback(conn);
fail:
	lg_errf(err, errlen, "%s migration %04u %s failed: %s", plugin, m->version, m->name, msg);
	return -1;
}

static void print_line(FILE *out, const char *fmt, ...) LG_PRINTF(2, 3);
static void print_line(FILE *out, const char *fmt, ...)
{
	va_list ap;

	if (!out)
		return;
	va_start(ap, fmt);
	vfprintf(out, fmt, ap);
	va_end(ap);
}

/* Applies, or prints, what @set has pending. The count, or -1. */
static int run_set(PGconn *conn, const struct lg_migration_set *set, const PGresult *rows,
		   enum lg_migrate_mode mode, FILE *out, char *err, size_t errlen)
{
	int count = 0;

	for (size_t i = 0; i < set->n; i++) {
		const struct lg_migration *m = &set->migrations[i];
		int row = find_row(rows, m->version);

		if (row >= 0) {
			if (mode == LG_MIGRATE_STATUS)
				print_line(out, "%s %04u %s applied %s\n", set->plugin, m->version,
					   m->name, PQgetvalue(rows, row, 3));
			continue;
		}
		count++;
		if (mode == LG_MIGRATE_STATUS) {
			print_line(out, "%s %04u %s pending\n", set->plugin, m->version, m->name);
		} else if (mode == LG_MIGRATE_DRY_RUN) {
			print_line(out, "pending %s %04u %s\n", set->plugin, m->version, m->name);
		} else {
			if (apply_one(conn, set->plugin, m, err, errlen) != 0)
				return -1;
			lg_info(LOG_COMP, "applied %s %04u %s", set->plugin, m->version, m->name);
			print_line(out, "applied %s %04u %s\n", set->plugin, m->version, m->name);
		}
	}
	return count;
}

/* Runs @sql in a transaction free of the connection's statement and lock
 * timeouts: waiting for another instance to finish migrating, or a long
 * migration, is not a stuck query. */
static int exec_untimed(PGconn *conn, const char *sql, int nparams, const char *const *params,
			ExecStatusType want, char *err, size_t errlen)
{
	PGresult *res;

	if (exec_command(conn, "BEGIN", 0, NULL, err, errlen) != 0)
		return -1;
	if (exec_command(conn, "SET LOCAL statement_timeout = 0", 0, NULL, err, errlen) != 0 ||
	    exec_command(conn, "SET LOCAL lock_timeout = 0", 0, NULL, err, errlen) != 0)
		goto fail;
	res = exec_expect(conn, sql, nparams, params, want, err, errlen);
	if (!res)
		goto fail;
	PQclear(res);
	if (exec_command(conn, "COMMIT", 0, NULL, err, errlen) != 0)
		goto fail;
	return 0;
fail:
	rollback(conn);
	return -1;
}

static int lock_migrations(PGconn *conn, char *err, size_t errlen)
{
	PGresult *res;
	char msg[512];
	bool got;

	res = exec_expect(conn, "SELECT pg_try_advisory_lock(" MIGRATE_LOCK_KEY ")", 0, NULL,
			  PGRES_TUPLES_OK, msg, sizeof msg);
	if (!res)
		goto fail;
	got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (got)
		return 0;
	lg_info(LOG_COMP, "another instance is applying migrations: waiting for it");
	/* A session lock: it outlives the transaction that takes it. */
	if (exec_untimed(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", 0, NULL,
			 PGRES_TUPLES_OK, msg, sizeof msg) == 0)
		return 0;
fail:
	lg_errf(err, errlen, "cannot take the migration lock: %s", msg);
	return -1;
}

static void unlock_migrations(PGconn *conn)
{
	PGresult *res;

	if (PQtransactionStatus(conn) != PQTRANS_IDLE)
		rollback(conn);
	res = PQexec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")");
	/* The server drops it with the session anyway. */
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
		lg_warn(LOG_COMP, "cannot release the migration lock: %s", PQerrorMessage(conn));
	PQclear(res);
}

/* Makes sure schema_migrations exists (APPLY) or tells whether it does. */
static int prepare_table(PGconn *conn, enum lg_migrate_mode mode, bool *exists, char *err,
			 size_t errlen)
{
	char msg[512];

	if (mode != LG_MIGRATE_APPLY)
		return table_exists(conn, exists, err, errlen);
	if (exec_command(conn, create_table_sql, 0, NULL, msg, sizeof msg) != 0) {
		lg_errf(err, errlen, "cannot create schema_migrations: %s", msg);
		return -1;
	}
	*exists = true;
	return 0;
}

int lg_migrate(PGconn *conn, const struct lg_migration_set *sets, size_t nsets,
	       enum lg_migrate_mode mode, FILE *out, char *err, size_t errlen)
{
	PGresult **rows = NULL;
	bool locked = false, have_table = false;
	int total = 0, ret = -1;

	if (validate_sets(sets, nsets, err, errlen) != 0)
		return -1;
	if (!conn || PQstatus(conn) != CONNECTION_OK ||
	    PQtransactionStatus(conn) != PQTRANS_IDLE) {
		lg_errf(err, errlen, "migrations need an idle database connection");
		return -1;
	}
	if (sodium_init() < 0) {
		lg_errf(err, errlen, "libsodium failed to initialise");
		return -1;
	}
	rows = calloc(nsets ? nsets : 1, sizeof *rows);
	if (!rows) {
		lg_errf(err, errlen, "out of memory");
		return -1;
	}
	if (mode == LG_MIGRATE_APPLY) {
		if (lock_migrations(conn, err, errlen) != 0)
			goto cleanup;
		locked = true;
	}
	if (prepare_table(conn, mode, &have_table, err, errlen) != 0)
		goto cleanup;
	/* Everything is checked before anything is applied. */
	for (size_t i = 0; have_table && i < nsets; i++)
		if (read_applied(conn, &sets[i], &rows[i], err, errlen) != 0)
			goto cleanup;
	for (size_t i = 0; i < nsets; i++) {
		int n = run_set(conn, &sets[i], rows[i], mode, out, err, errlen);

		if (n < 0)
			goto cleanup;
		total += n;
	}
	ret = total;
cleanup:
	if (locked)
		unlock_migrations(conn);
	for (size_t i = 0; i < nsets; i++)
		PQclear(rows[i]);
	free(rows);
	return ret;
}
