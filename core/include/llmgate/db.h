/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: database access for plugins
 *
 * llmgate runs on PostgreSQL. Queries are parameterised ($1, $2... with text
 * parameters) and run on the host's pool threads; results are libpq's
 * PGresult, read with libpq's own accessors (PQntuples, PQgetvalue...).
 */
#ifndef LLMGATE_DB_H
#define LLMGATE_DB_H

#include <libpq-fe.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * lg_db_fn - the result of an asynchronous query.
 * @res:   the result (PGRES_TUPLES_OK or PGRES_COMMAND_OK), or NULL on error.
 * @error: NULL on success, else the database's message (no parameters in it).
 * @arg:   the caller's argument.
 *
 * Ownership: @res and @error are borrowed; the host frees them on return.
 * Thread: the loop that submitted the query.
 */
typedef void (*lg_db_fn)(const PGresult *res, const char *error, void *arg);

/**
 * lg_notify_fn - a NOTIFY arrived on a channel the plugin listens to.
 * Once LISTEN takes effect, and again after the LISTEN connection was lost
 * and is back, @fn is called with an empty @payload: notifications sent
 * before (since start(), or during the outage) were missed, so what the
 * plugin caches from the database should be refreshed.
 * Ownership: @channel and @payload are borrowed.
 * Thread: main.
 */
typedef void (*lg_notify_fn)(const char *channel, const char *payload, void *arg);

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_DB_H */
