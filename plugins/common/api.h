/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: the REST toolkit of llmgate's own plugins
 *
 * Reading bodies, paths and query strings, paging lists and answering in
 * OpenGateLLM's shapes, the same way in every plugin that serves an API
 * (auth, usage, rag). It is compiled into each of them (a static library,
 * not part of the ABI) and only calls the host vtable.
 *
 * Every reader returns false once it has answered the request (422 with a
 * message naming the field, or 500), so a handler stops at the first
 * false. Strings handed out live in the request's memory.
 * Thread: the request's worker.
 */
#ifndef LLMGATE_PLUGIN_API_H
#define LLMGATE_PLUGIN_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <llmgate/host.h>

/* The message of every unexpected failure (spec §3.6). */
#define API_INTERNAL_ERROR "An unexpected error occurred"
#define API_DB_UNAVAILABLE "The database is not available, please try again later."
#define API_RETRY_AFTER "5"     /* seconds, on every 503 */

/** enum api_field - whether a body member must be there. */
enum api_field {
	API_OPTIONAL = 0,       /* absent or null: *present = false */
	API_REQUIRED,           /* absent or null: 422 "<key>: field required" */
};

/** api_str() - a string member, trimmed of blanks, @min..@max characters
 * after trimming (UTF-8 code points). Absent or null: *out = NULL. */
bool api_str(const struct lg_host *h, struct lg_req *req, const json_t *body,
	     const char *key, enum api_field f, size_t min, size_t max, const char **out);
/** api_secret() - the same for a password: taken as it is, not trimmed
 * (blanks are part of it); NUL refused. */
bool api_secret(const struct lg_host *h, struct lg_req *req, const json_t *body,
		const char *key, enum api_field f, size_t min, size_t max, const char **out);
/** api_int() - an integer member (300.0 counts), @min..@max. */
bool api_int(const struct lg_host *h, struct lg_req *req, const json_t *body,
	     const char *key, enum api_field f, int64_t min, int64_t max,
	     bool *present, int64_t *out);
/** api_num() - a finite number member, @min..@max. */
bool api_num(const struct lg_host *h, struct lg_req *req, const json_t *body,
	     const char *key, enum api_field f, double min, double max,
	     bool *present, double *out);
/** api_bool() - a boolean member. */
bool api_bool(const struct lg_host *h, struct lg_req *req, const json_t *body,
	      const char *key, enum api_field f, bool *present, bool *out);
/** api_is_null() - the member is there and is JSON null (to clear a field). */
bool api_is_null(const json_t *body, const char *key);

/** api_path_id() - the route parameter @name as a positive id; 422 if not. */
bool api_path_id(const struct lg_host *h, struct lg_req *req, const char *name, int64_t *out);
/** api_query_int() - an integer query parameter, @def when absent. */
bool api_query_int(const struct lg_host *h, struct lg_req *req, const char *name,
		   int64_t def, int64_t min, int64_t max, int64_t *out);
/** api_query_choice() - the index of the parameter's value in the
 * NULL-terminated @choices, @def when absent. */
bool api_query_choice(const struct lg_host *h, struct lg_req *req, const char *name,
		      const char *const *choices, size_t def, size_t *out);

/**
 * struct api_page - a list request: `offset` (0..API_OFFSET_MAX, default 0),
 * `limit` (1..100, default 10), `sort_by` from a fixed list (default its
 * first), `sort_order` asc|desc (default asc). @order_sql is "ASC" or
 * "DESC": with the column from the caller's own table, safe to paste into SQL.
 */
struct api_page {
	int64_t offset, limit;
	size_t sort;            /* index in the caller's list of columns */
	const char *order_sql;
	const char *offset_text, *limit_text;   /* for SQL parameters */
};
#define API_OFFSET_MAX 1000000
bool api_page(const struct lg_host *h, struct lg_req *req, const char *const *sort_by,
	      struct api_page *out);

/**
 * struct api_list, api_list_sql() - a list in the envelope of spec §2
 * ({"object":"list","total","offset","limit","data"}), built by PostgreSQL
 * for the request's offset, limit, sort_by and sort_order. @from is the
 * table with its alias (e.g. "token t"), @where a condition on it with
 * parameters from $3 ("true" without filters), @object one item's JSON
 * expression; @sort_by names the sortable fields (NULL-terminated) and
 * @sort_columns their columns. The id breaks ties, so pages never overlap.
 * api_list_sql() fills @params (at least 2 + @nfilters slots: offset,
 * limit, then @filters) and returns the statement, or NULL once it has
 * answered (422 for bad paging, 500).
 */
struct api_list {
	const char *from, *alias, *where, *object;
	const char *const *sort_by;
	const char *const *sort_columns;
};
char *api_list_sql(const struct lg_host *h, struct lg_req *req, const struct api_list *l,
		   const char *const *filters, int nfilters, const char **params);

/** api_printf() - formatted text in the request's memory; on failure it
 * answers 500 and returns NULL. */
char *api_printf(const struct lg_host *h, struct lg_req *req, const char *fmt, ...)
	LG_PRINTF(3, 4);
/** api_id_text() - @id as text in the request's memory, or NULL (500 sent). */
const char *api_id_text(const struct lg_host *h, struct lg_req *req, int64_t id);

/** api_reply_json() - answer @root as JSON (the reference is taken); NULL
 * answers 500. */
void api_reply_json(const struct lg_host *h, struct lg_req *req, int status, json_t *root);
/** api_reply_raw() - answer JSON text made elsewhere (e.g. by PostgreSQL). */
void api_reply_raw(const struct lg_host *h, struct lg_req *req, int status, const char *json);
/** api_reply_unavailable() - answer 503 API_DB_UNAVAILABLE with Retry-After. */
void api_reply_unavailable(const struct lg_host *h, struct lg_req *req);
/** api_reply_empty() - answer 204 No Content. */
void api_reply_empty(const struct lg_host *h, struct lg_req *req);

/**
 * api_query() - run @sql for a request; @cb runs on this worker. If the
 * query cannot be sent (the database pool is closed or full), it answers
 * 503 and returns false; @cb will not run then.
 */
bool api_query(const struct lg_host *h, struct lg_plugin *self, struct lg_req *req,
	       const char *sql, int n, const char *const *params, lg_db_fn cb, void *arg);
/**
 * api_db_failed() - answer a failed query: 409 with @conflict when the
 * error names one of the NULL-terminated unique @constraints, 503 when the
 * database is unreachable, else 500 (the error goes to the log, not to the
 * client, since it may quote the statement).
 */
void api_db_failed(const struct lg_host *h, struct lg_plugin *self, struct lg_req *req,
		   const char *error, const char *const *constraints, const char *conflict);
/** api_db_unreachable() - whether a query error means the database is down
 * (connection lost, refused, pool closing) rather than a bad statement. */
bool api_db_unreachable(const char *error);

/**
 * struct api_json_reply, api_json_reply_cb() - a query callback that
 * answers @status with the first column of the first row (JSON built by
 * PostgreSQL), or 404 @not_found when there is no row, or the error as
 * api_db_failed() does. Allocate the struct in the request's memory.
 */
struct api_json_reply {
	const struct lg_host *host;
	struct lg_plugin *self;
	struct lg_req *req;
	int status;             /* on success, usually 200 or 201 */
	const char *not_found;  /* 404 text when no row, or NULL for "{}" */
	const char *const *constraints; /* for api_db_failed() */
	const char *conflict;
};
void api_json_reply_cb(const PGresult *res, const char *error, void *arg);

#endif /* LLMGATE_PLUGIN_API_H */
