/* SPDX-License-Identifier: Apache-2.0 */
/* Requires "good": it must be initialised after it, whatever the order of
 * the configuration, and its migrations run after good's. */
#include <llmgate/host.h>

static const char *const needs[] = { "good", NULL };

static const struct lg_migration needs_migrations[] = {
	/* Fails unless good's migrations ran first. */
	{ 1, "needs_good_view", "CREATE VIEW needs_good_view AS SELECT id FROM good_item;" },
	{ 0, NULL, NULL },
};

static const struct lg_host *needs_host;

static int needs_init(struct lg_plugin *self, const struct lg_host *host)
{
	needs_host = host;
	host->log(self, LG_LOG_INFO, "needs_good: init");
	return 0;
}

LG_PLUGIN(.name = "needs_good", .version = "0.0.1", .requires = needs,
	  .migrations = needs_migrations, .init = needs_init);
