/* SPDX-License-Identifier: Apache-2.0 */
/* The migration runner: applies each plugin's ordered SQL migrations
 * (core first, then plugins in dependency order), each in its own
 * transaction with its row in schema_migrations, under an advisory lock so
 * that several instances can start at once. */
#ifndef LG_MIGRATE_H
#define LG_MIGRATE_H

#include <stddef.h>
#include <stdio.h>

#include <libpq-fe.h>
#include <llmgate/plugin.h>

struct lg_migration_set {
	const char *plugin;                    /* "core" or the plugin's name */
	const struct lg_migration *migrations;
	size_t n;
};

enum lg_migrate_mode {
	LG_MIGRATE_APPLY,    /* apply what is pending */
	LG_MIGRATE_DRY_RUN,  /* print what would be applied, change nothing */
	LG_MIGRATE_STATUS,   /* print applied and pending per plugin */
};

/* Checks the sets (versions 1..n in order, non-empty SQL), then works as
 * @mode says, printing one line per migration to @out (may be NULL).
 * Refuses (returns -1 with @err) when a stored checksum differs from the
 * shipped SQL, or the database holds a version the code does not ship.
 * Returns the number of migrations applied (or pending, for dry-run and
 * status). Thread: main. */
int lg_migrate(PGconn *conn, const struct lg_migration_set *sets, size_t nsets,
	       enum lg_migrate_mode mode, FILE *out, char *err, size_t errlen);

/* The hex SHA-256 of @sql into @hex (65 bytes). */
void lg_migration_checksum(const char *sql, char hex[65]);

#endif
