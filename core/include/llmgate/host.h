/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: the host vtable
 *
 * Everything a plugin asks of llmgate goes through struct lg_host, handed to
 * init(). Plugins never call core symbols, so they load with RTLD_LOCAL and
 * can be tested against a fake host. Members are only ever appended; test
 * for a member newer than your build's minimum with LG_HOST_HAS().
 *
 * Return values: 0 or a non-negative value on success, a negative errno on
 * failure (-EBUSY: registration outside init; -EINVAL: bad argument;
 * -ENOENT: no such key or object; -ENOMEM; -EEXIST: duplicate).
 *
 * Every member states its Ownership and the Thread it may be called from:
 * "init" (during init()), "main" (init/start/stop/fini and main-loop
 * callbacks), "loop" (any thread that runs a host loop: workers and main),
 * "any" (any thread, including work-pool threads).
 */
#ifndef LLMGATE_HOST_H
#define LLMGATE_HOST_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llmgate/plugin.h>
#include <llmgate/http.h>
#include <llmgate/db.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lg_provider_ops; /* <llmgate/provider.h> */
struct lg_model_request; /* below */
struct lg_timer;        /* a timer on a host loop */

enum lg_log_level {
	LG_LOG_ERROR = 0,
	LG_LOG_WARN,
	LG_LOG_INFO,
	LG_LOG_DEBUG,
};

/** lg_work_fn - runs on a work-pool thread; may block. */
typedef void (*lg_work_fn)(void *arg);
/** lg_done_fn - runs on the loop that submitted the work, after it ran. */
typedef void (*lg_done_fn)(void *arg);
/** lg_timer_fn - a timer fired, on the loop that started it. */
typedef void (*lg_timer_fn)(void *arg);
/**
 * lg_model_access_fn - whether @who may see and call model @model_id. Asked
 * for callers without LG_PERM_ADMIN, on every model listing, model lookup
 * and forwarded call; it must answer from memory, quickly, without
 * blocking. A model refused by any registered function is, for that
 * caller, the same 404 as an unknown model. Thread: any loop.
 */
typedef bool (*lg_model_access_fn)(const struct lg_principal *who, int64_t model_id, void *ud);

/**
 * struct lg_model_request - a call a plugin makes to a model of the
 * registry, as a client would (e.g. RAG embedding its chunks).
 * @size:     sizeof(struct lg_model_request).
 * @endpoint: "/v1/embeddings", "/v1/chat/completions", "/v1/rerank"...
 * @body:     the JSON body as a client would send it; its "model" names
 *            the model (name or alias). Never streamed: "stream" is refused.
 * @who:      on whose behalf (access to the model is checked as for that
 *            caller), or NULL for the plugin itself (no access check).
 */
struct lg_model_request {
	uint32_t size;
	const char *endpoint;
	struct lg_str body;
	const struct lg_principal *who;
};

/**
 * lg_model_done_fn - the answer of a model_call(): @status and @body as the
 * client of that endpoint would have received them (the gateway's reply,
 * usage included), or status 0 and @error when the call could not be made.
 * Ownership: @body and @error are borrowed for the call. Thread: the loop
 * that called model_call().
 */
typedef void (*lg_model_done_fn)(void *arg, int status, struct lg_str body, const char *error);

struct lg_host {
	uint32_t size;          /* sizeof(struct lg_host) of the running host */
	uint16_t abi_major;
	uint16_t abi_minor;

	/* ---- logging and errors ---- */

	/** log() - one line to the log, tagged with the plugin (and the request
	 * id when called during a request). Never pass secrets.
	 * Thread: any. */
	void (*log)(struct lg_plugin *self, enum lg_log_level level, const char *fmt, ...)
		LG_PRINTF(3, 4);
	/** set_error() - the reason init()/start() failed, printed by the host.
	 * Thread: main. */
	void (*set_error)(struct lg_plugin *self, const char *fmt, ...) LG_PRINTF(2, 3);

	/* ---- configuration: the plugin's own block, validated against its
	 * settings table; defaults applied. Ownership: values are borrowed and
	 * live until fini(). Thread: any. Return 0, or -ENOENT for a key with
	 * no value and no default, -EINVAL for a key not in the table or of
	 * another type. ---- */
	int (*cfg_str)(struct lg_plugin *self, const char *key, const char **out);
	int (*cfg_int)(struct lg_plugin *self, const char *key, int64_t *out);
	int (*cfg_double)(struct lg_plugin *self, const char *key, double *out);
	int (*cfg_bool)(struct lg_plugin *self, const char *key, bool *out);
	/** cfg_strings() - a STRINGS setting; *out is NULL-terminated. */
	int (*cfg_strings)(struct lg_plugin *self, const char *key,
			   const char *const **out, size_t *n);
	/** cfg_u64() - a DURATION (ms) or SIZE (bytes) setting. */
	int (*cfg_u64)(struct lg_plugin *self, const char *key, uint64_t *out);

	/* ---- plugin state ---- */

	/** set_data()/get_data() - the plugin's one state pointer.
	 * Ownership: stays the plugin's; free it in fini(). Thread: any. */
	void (*set_data)(struct lg_plugin *self, void *data);
	void *(*get_data)(struct lg_plugin *self);

	/* ---- registration. Thread: init only; later calls return -EBUSY. ---- */

	/** route_add() - serve a method and path. Ownership: @route is copied.
	 * -EEXIST if the method and path are already taken. */
	int (*route_add)(struct lg_plugin *self, const struct lg_route *route, void *ud);
	/** hook_add() - join a phase; lower @priority runs first. */
	int (*hook_add)(struct lg_plugin *self, enum lg_phase phase, lg_hook_fn fn,
			int priority, void *ud);
	/** provider_add() - register a provider type (<llmgate/provider.h>).
	 * Ownership: @ops must stay valid until fini(). */
	int (*provider_add)(struct lg_plugin *self, const struct lg_provider_ops *ops, void *ud);

	/* ---- loops, timers and work ---- */

	/** loop() - the calling thread's event base (a worker's or main's), or
	 * NULL on a thread without a host loop. Thread: loop. */
	struct event_base *(*loop)(void);
	/** timer_start() - call @fn after @ms, once or every @ms, on the calling
	 * loop. Ownership: the host's. A one-shot timer is freed by the host
	 * just before @fn runs (the pointer is then invalid); a repeating one
	 * lives until timer_stop(). Thread: loop. NULL on failure. */
	struct lg_timer *(*timer_start)(struct lg_plugin *self, uint64_t ms, bool repeat,
					lg_timer_fn fn, void *arg);
	/** timer_stop() - stop and free a timer; NULL is ignored. Thread: the
	 * loop that started it. */
	void (*timer_stop)(struct lg_timer *timer);
	/** work_submit() - run @work on the work pool, then @done on the
	 * calling loop. Thread: loop. */
	int (*work_submit)(struct lg_plugin *self, lg_work_fn work, lg_done_fn done, void *arg);

	/* ---- PostgreSQL ---- */

	/** db_query() - run one parameterised statement on the pool; @cb runs on
	 * the calling loop with the result. Ownership: @sql and @params are
	 * copied. Thread: loop. */
	int (*db_query)(struct lg_plugin *self, const char *sql, int nparams,
			const char *const *params, lg_db_fn cb, void *arg);
	/** db_query_sync() - the same, blocking, for start() and work-pool
	 * threads only (never a worker; the database is not connected during
	 * init(), which only registers). Ownership: *out is the caller's; free
	 * it with PQclear(). On error *out is NULL and @err (if not NULL)
	 * receives the message; -EPERM on a worker. Thread: main or work pool. */
	int (*db_query_sync)(struct lg_plugin *self, const char *sql, int nparams,
			     const char *const *params, PGresult **out,
			     char *err, size_t errlen);
	/** db_listen() - receive NOTIFY on @channel ([a-z][a-z0-9_]*) once
	 * the database is up; re-subscribed after reconnects. Thread: init. */
	int (*db_listen)(struct lg_plugin *self, const char *channel, lg_notify_fn fn, void *arg);

	/* ---- the request: reading it. Thread: the request's worker. ---- */

	const char *(*req_method)(struct lg_req *req);
	/** req_path() - the decoded path without the query string. */
	const char *(*req_path)(struct lg_req *req);
	/** req_param() - a path parameter of the route ("{id}"), or NULL. */
	const char *(*req_param)(struct lg_req *req, const char *name);
	/** req_query() - the first value of a query parameter, decoded, or NULL. */
	const char *(*req_query)(struct lg_req *req, const char *name);
	/** req_header() - a request header (case-insensitive name), or NULL. */
	const char *(*req_header)(struct lg_req *req, const char *name);
	/** req_body() - the whole request body. */
	struct lg_str (*req_body)(struct lg_req *req);
	/** req_json() - the body parsed as a JSON object within the server's
	 * bounds (server.json_max_depth, json_max_items, max string size),
	 * duplicate keys refused. On failure it has already answered 400 (not
	 * JSON, with the position) or 422 (not an object) and returns NULL.
	 * Ownership: the caller's (json_decref). */
	struct json_t *(*req_json)(struct lg_req *req);
	/** req_id() - the request id sent back in x-request-id. */
	const char *(*req_id)(struct lg_req *req);
	/** req_alloc() - zeroed memory freed when the request ends.
	 * Ownership: the request's. NULL on failure. */
	void *(*req_alloc)(struct lg_req *req, size_t size);
	/** req_set_data()/req_get_data() - one pointer per plugin per request.
	 * Ownership: the plugin's (use req_alloc to tie it to the request). */
	void (*req_set_data)(struct lg_req *req, struct lg_plugin *self, void *data);
	void *(*req_get_data)(struct lg_req *req, struct lg_plugin *self);
	/** req_set_principal() - set by an AUTH hook. Ownership: copied. */
	int (*req_set_principal)(struct lg_req *req, const struct lg_principal *who);
	/** req_principal() - the caller, or NULL for an anonymous one. */
	const struct lg_principal *(*req_principal)(struct lg_req *req);
	/** req_call() - the forwarded call this request is, or NULL for other
	 * routes (<llmgate/http.h>, struct lg_call). */
	const struct lg_call *(*req_call)(struct lg_req *req);

	/* ---- the request: answering it. Thread: the request's worker. ---- */

	/** resume() - finish a hook that returned LG_HOOK_PENDING. */
	void (*resume)(struct lg_req *req, enum lg_hook_result result);
	/** reply_header() - add a header to the reply (before it starts).
	 * Ownership: copied. -EINVAL on CR/LF or a reserved header. */
	int (*reply_header)(struct lg_req *req, const char *name, const char *value);
	/** reply() - answer with a whole body. Ownership: @body is copied. */
	void (*reply)(struct lg_req *req, int status, const char *content_type,
		      const char *body, size_t len);
	/** reply_error() - answer with the error shape of DESIGN §7:
	 * {"detail": msg, "error": {"message", "type", "code"}}. */
	void (*reply_error)(struct lg_req *req, int status, const char *fmt, ...) LG_PRINTF(3, 4);
	/** stream_start() - start a chunked reply (e.g. text/event-stream). */
	int (*stream_start)(struct lg_req *req, int status, const char *content_type);
	/** stream_write() - send bytes now. Returns the bytes still queued for
	 * the client; above a few hundred KiB, pause the producer and wait
	 * for the drain callback. Ownership: copied. */
	long (*stream_write)(struct lg_req *req, const char *data, size_t len);
	/** stream_end() - finish the stream; the request ends when it is sent. */
	void (*stream_end)(struct lg_req *req);
	/** on_close() - @fn runs if the client goes away before the reply is
	 * complete (or the server shuts down past its drain deadline). The
	 * request must still be ended (reply, reply_error or stream_end; the
	 * answer is discarded), now or when the work in progress finishes,
	 * so that it is freed: the request stays valid until then. One per
	 * plugin per request. */
	void (*on_close)(struct lg_req *req, struct lg_plugin *self, lg_close_fn fn, void *arg);
	/** on_drain() - @fn runs when the queued stream output falls low. */
	void (*on_drain)(struct lg_req *req, lg_drain_fn fn, void *arg);

	/* ---- outbound HTTP ---- */

	/** fetch() - start an outbound request on the calling loop.
	 * Ownership: @rq is copied; the lg_fetch is the host's and lives until
	 * on_done returns. Thread: loop. NULL on failure (on_done not called). */
	struct lg_fetch *(*fetch)(struct lg_plugin *self, const struct lg_fetch_request *rq,
				  const struct lg_fetch_handlers *h, void *arg);
	/** fetch_cancel() - stop a transfer; on_done runs with ECANCELED. */
	void (*fetch_cancel)(struct lg_fetch *f);
	/** fetch_pause() - stop or restart reading the reply. */
	void (*fetch_pause)(struct lg_fetch *f, bool paused);
	/** fetch_header() - a header of the reply, from on_head until on_done
	 * returns, or NULL. Ownership: borrowed. Thread: the fetch's loop. */
	const char *(*fetch_header)(struct lg_fetch *f, const char *name);

	/* ---- the server ---- */

	/** server_exposed() - whether some server.listen address is not a
	 * loopback one (so default secrets must be refused). Thread: any. */
	bool (*server_exposed)(struct lg_plugin *self);

	/* ---- 1.1 ---- */

	/** model_access_add() - decide which models non-admin callers see
	 * (lg_model_access_fn). Without any, every caller sees every model
	 * that has a provider. Thread: init only (-EBUSY later). */
	int (*model_access_add)(struct lg_plugin *self, lg_model_access_fn fn, void *ud);
	/** set_ready() - say that the plugin cannot do its job (@why, e.g.
	 * "the usage journal is full"), or that it can again (@why NULL).
	 * While any plugin is not ready, GET /ready answers 503 with the
	 * plugin's name and @why, so that load balancers and operators see it.
	 * Ownership: @why is copied (truncated to 255 bytes). Thread: any. */
	void (*set_ready)(struct lg_plugin *self, const char *why);
	/** sync_workers() - return once every worker loop has finished the
	 * callback it was running: a grace period, after which no worker
	 * still holds a pointer it loaded before the call. With it a plugin
	 * can publish read-mostly state by atomic pointer swap and free the
	 * old state safely, with no lock on the request path. Thread: main or
	 * work pool (never a worker: it would wait for itself). */
	void (*sync_workers)(struct lg_plugin *self);
	/** model_call() - call a model through the registry: resolution,
	 * provider choice, failover, timeouts and cost as for a client's call,
	 * without an HTTP request of its own. @done runs exactly once, later,
	 * never from inside model_call(). Ownership: @rq is copied.
	 * Thread: loop. 0, or a negative errno (then @done will not run). */
	int (*model_call)(struct lg_plugin *self, const struct lg_model_request *rq,
			  lg_model_done_fn done, void *arg);
	/** req_form() - the body read as multipart/form-data. On a body that
	 * is not (no boundary, malformed, too many parts) it has answered 400
	 * and returns a negative errno. Ownership: the parts live in the
	 * request's memory. Thread: the request's worker. */
	int (*req_form)(struct lg_req *req, const struct lg_form_part **parts, size_t *n);
	/** call_set_body() - in a PRE_UPSTREAM hook of a forwarded call:
	 * replace the JSON body that goes to the provider (the core still
	 * sets the upstream model name and the stream options). @body must be
	 * a JSON object. Ownership: copied. Thread: the request's worker.
	 * -EINVAL outside PRE_UPSTREAM or for a body that is not an object. */
	int (*call_set_body)(struct lg_req *req, struct lg_str body);
	/** call_reply_member() - from AUTHORIZE or PRE_UPSTREAM: add a top-level
	 * member @name with the JSON value @json to the reply of a forwarded
	 * call: to the reply object, or for a stream to its first event.
	 * Ownership: copied. Thread: the request's worker. */
	int (*call_reply_member)(struct lg_req *req, const char *name, struct lg_str json);

	/* ---- 1.2 ---- */

	/** db_stats() - the state of the PostgreSQL pool (struct
	 * lg_db_stats; set @out->size first). Thread: any. 0, or -EAGAIN
	 * while the pool is not started, -EINVAL for a bad @out. */
	int (*db_stats)(struct lg_plugin *self, struct lg_db_stats *out);
	/** core_setting_bool() - a boolean of config.yml's core `settings:`
	 * section, its default when absent: "monitoring_postgres_enabled",
	 * "monitoring_prometheus_enabled". A plugin that does what such a
	 * setting names obeys it. Thread: any. 0, or -ENOENT for a name the
	 * core does not have. */
	int (*core_setting_bool)(struct lg_plugin *self, const char *name, bool *out);

	/* ---- 1.3 ---- */

	/** db_copy() - load rows with COPY FROM STDIN in one transaction, after
	 * an optional claim (struct lg_db_copy, <llmgate/db.h>); @cb runs on
	 * the calling loop. @res is the COPY's result (PQcmdTuples(): the rows
	 * loaded) or, when the claim returned no row, the claim's (no COPY
	 * ran). On error nothing is loaded: the transaction is rolled back.
	 * Ownership: everything @copy points to is copied. Thread: loop.
	 * -EINVAL for a bad @copy (wrong size, no copy_sql, len without data). */
	int (*db_copy)(struct lg_plugin *self, const struct lg_db_copy *copy, lg_db_fn cb,
		       void *arg);
	/** db_copy_sync() - the same, blocking, where db_query_sync() may be
	 * used. Ownership: *out is the caller's (PQclear()); NULL on error, with
	 * @err (if not NULL) set. Thread: main or work pool. */
	int (*db_copy_sync)(struct lg_plugin *self, const struct lg_db_copy *copy,
			    PGresult **out, char *err, size_t errlen);

	/* 1.4+ members go below, never above */
};

/** LG_HOST_HAS() - whether the running host has vtable member @m. */
#define LG_HOST_HAS(h, m) \
	((h)->size >= offsetof(struct lg_host, m) + sizeof((h)->m))

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_HOST_H */
