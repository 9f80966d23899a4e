/* SPDX-License-Identifier: Apache-2.0 */
/* Monthly partitions of usage: this month's and the next one exist before
 * rows need them, and with retention_days the months that ended longer
 * ago than that are dropped whole (a partition drop, not a DELETE). The
 * work is done by SQL functions of sql/usage/0002, once at start and then
 * every maintenance_interval on the work pool, so the main loop, which
 * also runs the ledger's flusher, never waits for it. Each statement waits
 * at most lock_timeout for its locks: a busy table delays the maintenance
 * to the next run instead of stalling the inserts queued behind it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "usage.h"

#define MONTHS_AHEAD "1"        /* the next month's partition is made ahead */

static const char create_sql[] = "SELECT usage_create_partitions($1::int, $2::text)";
static const char drop_sql[] = "SELECT usage_drop_partitions($1::int, $2::text)";

/* Logs what a maintenance statement did (@what: "created", "dropped"). */
static void log_names(struct usage *u, const PGresult *res, const char *what)
{
	for (int i = 0; i < PQntuples(res); i++)
		u->host->log(u->self, LG_LOG_INFO, "usage: %s %s", what, PQgetvalue(res, i, 0));
}

static void create_partitions(struct usage *u)
{
	const char *params[2] = { MONTHS_AHEAD, u->lock_timeout_text };
	PGresult *res = NULL;
	char err[512];

	/* Rows of a month without a partition land in usage_default, so a
	 * failure here costs speed, not rows. */
	if (u->host->db_query_sync(u->self, create_sql, 2, params, &res, err, sizeof err) < 0) {
		u->host->log(u->self, LG_LOG_WARN, "usage: cannot create the monthly "
			     "partitions (rows go to usage_default; retried in the next "
			     "maintenance): %s", err);
		return;
	}
	log_names(u, res, "created the partition");
	PQclear(res);
}

static void drop_old_partitions(struct usage *u)
{
	char days[24];
	const char *params[2] = { days, u->lock_timeout_text };
	PGresult *res = NULL;
	char err[512];

	if (u->retention_days <= 0)
		return;
	snprintf(days, sizeof days, "%lld", (long long)u->retention_days);
	if (u->host->db_query_sync(u->self, drop_sql, 2, params, &res, err, sizeof err) < 0) {
		u->host->log(u->self, LG_LOG_WARN, "usage: cannot apply retention_days "
			     "(retried in the next maintenance): %s", err);
		return;
	}
	log_names(u, res, "retention dropped");
	PQclear(res);
}

void usage_partitions_now(struct usage *u)
{
	create_partitions(u);
	drop_old_partitions(u);
}

static void maintenance_work(void *arg)
{
	usage_partitions_now(arg);
}

static void maintenance_done(void *arg)
{
	struct usage *u = arg;

	u->maint_running = false;
}

static void on_maintenance_timer(void *arg)
{
	struct usage *u = arg;
	int rc;

	if (u->maint_running || u->stopping)
		return;
	rc = u->host->work_submit(u->self, maintenance_work, maintenance_done, u);
	if (rc < 0) {
		u->host->log(u->self, LG_LOG_WARN, "usage: cannot start the partition "
			     "maintenance: %s", strerror(-rc));
		return;
	}
	u->maint_running = true;
}

int usage_partitions_timer(struct usage *u)
{
	u->maint_timer = u->host->timer_start(u->self, u->maintenance_interval_ms, true,
					      on_maintenance_timer, u);
	return u->maint_timer ? 0 : -ENOMEM;
}

/* A run in progress finishes on the work pool; the host runs its done
 * callback before fini(), so the state it touches is still there. */
void usage_partitions_stop(struct usage *u)
{
	u->host->timer_stop(u->maint_timer);
	u->maint_timer = NULL;
}
