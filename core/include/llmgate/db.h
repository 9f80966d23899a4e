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

#include <stdint.h>

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

/**
 * struct lg_db_stats - the state of the host's PostgreSQL pool (ABI 1.2),
 * for a plugin that exports metrics. The caller sets @size to
 * sizeof(struct lg_db_stats); the host fills what both know.
 * @connections: the pool's size (dependencies.postgres.pool_size).
 * @connected:   connections not known to be broken (one the server closed
 *               while it was idle counts until it is next used).
 * @busy:        connections running a statement now.
 * @queued:      statements waiting for a free connection.
 * @succeeded:   statements that succeeded since start.
 * @errors:      statements the server refused (a statement error).
 * @unavailable: statements that failed for want of a connection (the
 *               server down, the connection lost).
 * @reconnects:  connections re-established after a failure.
 * @healthy:     1 when the database answered recently (as /ready sees it).
 * @reserved:    0. (No padding anywhere: @size alone says which members a
 *               host filled, so members added later start past it.)
 */
struct lg_db_stats {
	uint32_t size;
	uint32_t connections;
	uint32_t connected;
	uint32_t busy;
	uint32_t healthy;
	uint32_t reserved;
	uint64_t queued;
	uint64_t succeeded;
	uint64_t errors;
	uint64_t unavailable;
	uint64_t reconnects;
};

/**
 * struct lg_db_copy - a bulk load for host->db_copy() (ABI 1.3): rows sent
 * with COPY ... FROM STDIN, in one transaction, after an optional claim.
 * @size:      sizeof(struct lg_db_copy): members added later start past it.
 * @nparams:   the number of @params of @claim_sql (0 without a claim).
 * @claim_sql: NULL, or a parameterised statement run first, in the same
 *             transaction, that returns rows (RETURNING, or a function
 *             returning a set; one that returns none fails the load). When
 *             it returns no row the COPY is skipped and the transaction
 *             commits what the claim did. Settings it makes
 *             for the transaction (set_config(name, value, true): a
 *             lock_timeout, say) hold for the COPY too.
 * @params:    the claim's text parameters ($1...); NULL is SQL NULL.
 * @copy_sql:  the COPY ... FROM STDIN statement (any format COPY reads).
 * @data:      the rows, exactly as that statement reads them.
 * @len:       the bytes of @data (0: no rows).
 *
 * A claim gives exactly-once loads: one that inserts the batch's id into a
 * table of loaded batches with ON CONFLICT DO NOTHING RETURNING returns no
 * row when a committed transaction loaded that batch already, so a batch
 * sent again (its reply lost on the way, replayed from a journal, sent by
 * two connections at once) adds its rows once.
 */
struct lg_db_copy {
	uint32_t size;
	int32_t nparams;
	const char *claim_sql;
	const char *const *params;
	const char *copy_sql;
	const char *data;
	size_t len;
};

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_DB_H */
