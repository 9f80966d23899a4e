/* SPDX-License-Identifier: Apache-2.0 */
/* The PostgreSQL pool: pool_size threads, each with its own libpq
 * connection, taking queries from one queue and posting results back to the
 * loop that asked. Workers never block on the database. */
#ifndef LG_PG_H
#define LG_PG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <llmgate/db.h>

#include "loop.h"

struct lg_pg;

struct lg_pg_config {
	const char *url;                 /* postgresql://, postgres:// or postgresql+asyncpg:// */
	int pool_size;                   /* >= 1 */
	uint32_t connect_retry_ms;       /* at start: keep retrying this long */
	uint32_t command_timeout_ms;     /* 0: none; else statement_timeout per query */
	const char *const *server_settings; /* NULL-terminated name, value, name, value... */
	const char *application_name;    /* "llmgate" */
};

/* Turns a URL into a libpq connection string ("+asyncpg" removed,
 * server_settings and application_name added as options). Malloc'ed into
 * *out. Errors never contain the password. */
int lg_pg_conninfo(const struct lg_pg_config *cfg, char **out, char *err, size_t errlen);

/* "host:port/dbname" of @cfg->url without credentials, for messages. */
void lg_pg_describe(const struct lg_pg_config *cfg, char *buf, size_t len);

/* Connects every pool connection, retrying with backoff for up to
 * connect_retry_ms, then starts the pool threads. NULL with @err set to
 * "cannot connect to PostgreSQL at host:port/db: libpq message" (never the
 * password). Thread: main or a start-up thread. */
struct lg_pg *lg_pg_start(const struct lg_pg_config *cfg, char *err, size_t errlen);
/* Finishes queued queries (their callbacks are posted to their loops, which
 * must still exist), joins threads, and closes LISTEN connections: call it
 * on the listening loop's thread or once that loop has stopped. */
void lg_pg_stop(struct lg_pg *pg);

typedef void (*lg_pg_fn)(const PGresult *res, const char *error, void *arg);

/* Queues a parameterised query; @cb runs on @reply_to with the result.
 * A query fails (cb with an error) rather than wait forever when the
 * database is down. Copies @sql and @params. Thread: any. */
int lg_pg_query(struct lg_pg *pg, struct lg_loop *reply_to, const char *sql, int nparams,
		const char *const *params, lg_pg_fn cb, void *arg);

/* Whether @copy is a bulk load as of ABI 1.3 (a later plugin's struct is
 * longer: its new members are not read): a COPY statement, parameters only
 * with a claim, rows only with a length. Thread: any. */
bool lg_pg_copy_valid(const struct lg_db_copy *copy);

/* Queues a bulk load (struct lg_db_copy of the SDK: a claim, then COPY
 * FROM STDIN with its data, in one transaction); @cb runs on @reply_to
 * with the COPY's result, or the claim's when it returned no row and the
 * COPY was skipped. Copies everything @copy points to. Thread: any. */
int lg_pg_copy(struct lg_pg *pg, struct lg_loop *reply_to, const struct lg_db_copy *copy,
	       lg_pg_fn cb, void *arg);

/* The same, blocking (as lg_pg_query_sync()). */
PGresult *lg_pg_copy_sync(struct lg_pg *pg, const struct lg_db_copy *copy, char *err,
			  size_t errlen);

/* Blocking query on a pool connection. The result is the caller's
 * (PQclear); NULL on error with @err set. Thread: main or work pool, never
 * a worker. */
PGresult *lg_pg_query_sync(struct lg_pg *pg, const char *sql, int nparams,
			   const char *const *params, char *err, size_t errlen);

/* A new connection outside the pool (migrations hold an advisory lock on
 * it). The caller owns it (PQfinish). */
PGconn *lg_pg_connect_one(const struct lg_pg_config *cfg, char *err, size_t errlen);

typedef void (*lg_pg_notify_fn)(const char *channel, const char *payload, void *arg);

/* LISTEN on @channel with a dedicated connection watched by @loop;
 * reconnects (and re-LISTENs) by itself. Thread: @loop's. */
int lg_pg_listen(struct lg_pg *pg, struct lg_loop *loop, const char *channel,
		 lg_pg_notify_fn fn, void *arg);

/* Whether the database answered recently (for /ready). Thread: any. */
bool lg_pg_healthy(const struct lg_pg *pg);

/* The pool's state now (struct lg_db_stats of the SDK, every member).
 * Thread: any. */
void lg_pg_stats(struct lg_pg *pg, struct lg_db_stats *out);

#endif
