/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: requests, routes, hooks and the outbound HTTP client
 *
 * struct lg_req is opaque; plugins read and answer it through the host
 * vtable (<llmgate/host.h>). A request lives on one worker thread from
 * accept to the last byte of its reply; every callback about it runs on
 * that thread.
 */
#ifndef LLMGATE_HTTP_H
#define LLMGATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct lg_req;          /* one request/response; owned by the host */
struct json_t;          /* jansson's value type (<jansson.h>) */
struct lg_fetch;        /* one outbound HTTP transfer; owned by the host */

/** struct lg_str - a byte string that crosses the ABI; not NUL-terminated. */
struct lg_str {
	const char *ptr;
	size_t len;
};

/**
 * enum lg_policy - who may call a route. Every route declares one, so no
 * route can exist without a policy.
 * @LG_POLICY_PUBLIC: anybody; no AUTH hook runs.
 * @LG_POLICY_KEY:    an AUTH hook must accept the caller (else 401).
 * @LG_POLICY_ADMIN:  as KEY, and the principal has LG_PERM_ADMIN (else 403).
 */
enum lg_policy {
	LG_POLICY_PUBLIC = 1,
	LG_POLICY_KEY,
	LG_POLICY_ADMIN,
};

/**
 * lg_route_fn - handles one request. It must answer the request exactly
 * once, now or later (reply, reply_error or a stream), on this thread.
 * Thread: the request's worker.
 */
typedef void (*lg_route_fn)(struct lg_req *req, void *ud);

/**
 * struct lg_route - a route registration.
 * @size:     sizeof(struct lg_route).
 * @method:   "GET", "POST", "PATCH", "PUT" or "DELETE".
 * @path:     an exact pattern; "{name}" matches one segment and "{name...}"
 *            the rest of the path (it may contain '/'), e.g.
 *            "/v1/collections/{id}" or "/v1/models/{model...}".
 * @policy:   who may call it.
 * @max_body: the largest body accepted in bytes; 0 takes server.max_body.
 * @fn:       the handler.
 */
struct lg_route {
	uint32_t size;
	const char *method;
	const char *path;
	enum lg_policy policy;
	size_t max_body;
	lg_route_fn fn;
};

/**
 * enum lg_phase - the pipeline phases a hook can join (DESIGN §3).
 * @LG_PHASE_AUTH:         identify the caller (routes with KEY or ADMIN policy).
 * @LG_PHASE_AUTHORIZE:    model access, rate limits, budget holds (forwarded calls).
 * @LG_PHASE_PRE_UPSTREAM: change the request before it goes upstream.
 * @LG_PHASE_COMPLETE:     after the reply, exactly once per forwarded request,
 *                         also when the client left or the upstream failed.
 */
enum lg_phase {
	LG_PHASE_AUTH = 1,
	LG_PHASE_AUTHORIZE,
	LG_PHASE_PRE_UPSTREAM,
	LG_PHASE_COMPLETE,
	LG_PHASE_COUNT_ /* not a phase */
};

/**
 * enum lg_hook_result - what a hook decided.
 * @LG_HOOK_DECLINE: not mine; the next hook of the phase runs. In AUTH, if
 *                   every hook declines the caller is refused (401).
 * @LG_HOOK_OK:      done with this phase (AUTH: the caller is identified,
 *                   later AUTH hooks are skipped; other phases: next hook).
 * @LG_HOOK_DONE:    the hook has answered the request itself; the pipeline stops.
 * @LG_HOOK_PENDING: the hook will call host->resume() later, on this thread,
 *                   with one of the results above.
 */
enum lg_hook_result {
	LG_HOOK_DECLINE = 0,
	LG_HOOK_OK,
	LG_HOOK_DONE,
	LG_HOOK_PENDING,
};

/** lg_hook_fn - one hook. Thread: the request's worker. */
typedef enum lg_hook_result (*lg_hook_fn)(struct lg_req *req, void *ud);

/* Permissions of a principal (OpenGateLLM's names). */
#define LG_PERM_ADMIN                    0x1u
#define LG_PERM_READ_METRIC              0x2u
#define LG_PERM_PROVIDE_MODELS           0x4u
#define LG_PERM_CREATE_PUBLIC_COLLECTION 0x8u

/**
 * struct lg_principal - who is calling, as set by an AUTH hook.
 * Ids are 0 when unknown. Strings are copied by the host.
 */
struct lg_principal {
	uint32_t size;
	int64_t user_id;
	int64_t key_id;
	int64_t role_id;
	int64_t organization_id;
	const char *user_name;
	const char *key_name;
	uint32_t permissions;   /* LG_PERM_* */
};

/**
 * struct lg_form_part - one part of a multipart/form-data body.
 * @name:         the field's name.
 * @filename:     the file name the client gave, or NULL for a plain field
 *                (never a path to open: keep it as a label only).
 * @content_type: the part's Content-Type, or NULL.
 * @data:         its bytes (not NUL-terminated; may contain NUL).
 */
struct lg_form_part {
	const char *name;
	const char *filename;
	const char *content_type;
	struct lg_str data;
};

/** lg_close_fn - the client closed the connection before the reply ended. */
typedef void (*lg_close_fn)(struct lg_req *req, void *arg);
/** lg_drain_fn - a paused stream may write again (the client caught up). */
typedef void (*lg_drain_fn)(struct lg_req *req, void *arg);

/**
 * struct lg_call - a forwarded call (chat, embeddings...), as hooks see it.
 * In AUTHORIZE and PRE_UPSTREAM the model fields and @max_tokens are set;
 * in COMPLETE everything is. Ownership: the host's, valid during the hook.
 */
struct lg_call {
	uint32_t size;
	const char *request_id;
	const char *endpoint;           /* "/v1/chat/completions"... */
	const char *model;              /* the name or alias the client used */
	int64_t model_id;               /* the model (router) */
	const char *model_name;         /* its canonical name */
	const char *model_type;
	double cost_prompt_tokens;      /* per million tokens */
	double cost_completion_tokens;
	int64_t max_tokens;             /* requested, or -1 */
	bool stream;
	/* set once a provider was chosen */
	int64_t provider_id;
	const char *provider_type;
	const char *provider_model;     /* the upstream's model name */
	const char *hosting_zone;       /* ISO 3166 alpha-3 or WOR, or NULL */
	double total_params, active_params; /* billions */
	/* COMPLETE only */
	int status;                     /* sent to the client (streams: at start) */
	int64_t prompt_tokens, completion_tokens, total_tokens;
	bool usage_estimated;           /* counted by the gateway, not the provider */
	double ttft_ms;                 /* first token, or -1 */
	double latency_ms;
	bool client_gone;
	const char *error;              /* NULL, or why the call failed */
	/* 1.1: COMPLETE only, as sent in the reply's usage */
	double cost;                    /* spec §6, rounded to 6 decimals */
	double kwh, kgco2eq;            /* the energy and carbon impacts */
};

/* ---- outbound HTTP (libcurl multi on the worker's loop) ---- */

/** enum lg_fetch_result - how a transfer ended. */
enum lg_fetch_result {
	LG_FETCH_OK = 0,        /* a complete reply was received (any status) */
	LG_FETCH_ECONNECT,      /* DNS, refused, TLS */
	LG_FETCH_ETIMEOUT,      /* connect, first byte, idle or total deadline */
	LG_FETCH_ERESET,        /* the peer closed or reset mid-reply */
	LG_FETCH_ETOOLARGE,     /* the reply exceeded max_response_bytes */
	LG_FETCH_ECANCELED,     /* fetch_cancel() or on_data() returned < 0 */
	LG_FETCH_EOTHER,
};

/**
 * struct lg_fetch_request - one outbound request.
 * @size:    sizeof(struct lg_fetch_request).
 * @method:  "GET", "POST", ...
 * @url:     absolute http(s) URL; never taken from a client's body.
 * @headers: NULL-terminated "Name: value" strings, or NULL.
 * @body:    the request body (copied by the host), or {NULL, 0}.
 * @connect_timeout_ms, @first_byte_timeout_ms, @idle_timeout_ms,
 * @total_timeout_ms: 0 means the host's default.
 * @max_response_bytes: 0 means the host's default.
 */
struct lg_fetch_request {
	uint32_t size;
	const char *method;
	const char *url;
	const char *const *headers;
	struct lg_str body;
	uint32_t connect_timeout_ms;
	uint32_t first_byte_timeout_ms;
	uint32_t idle_timeout_ms;
	uint32_t total_timeout_ms;
	size_t max_response_bytes;
};

/**
 * struct lg_fetch_handlers - callbacks of a transfer, all on the calling
 * worker's loop. Borrowed data is valid only during the call.
 * @on_head: status and headers arrived (optional); @content_type is "" when
 *           the reply has none. Return 0 to go on, < 0 to cancel.
 * @on_data: a piece of the body (optional; when NULL the body is buffered
 *           and handed to on_done). Return 0 to go on, 1 to pause
 *           (fetch_pause(f, false) resumes), < 0 to cancel.
 * @on_done: always called exactly once, last, and never from inside
 *           fetch(), fetch_cancel() or fetch_pause(). @error is NULL on
 *           LG_FETCH_OK; on any error @body is {NULL, 0} and @status is 0
 *           unless the headers had arrived. @body is the buffered body when
 *           on_data is NULL. After it returns the lg_fetch is gone.
 *
 * The request's Content-Length, Transfer-Encoding and Expect headers are
 * dropped: the client frames the body itself. max_response_bytes limits a
 * streamed reply only when the request sets it.
 */
struct lg_fetch_handlers {
	uint32_t size;
	int (*on_head)(void *arg, int status, const char *content_type);
	int (*on_data)(void *arg, const char *data, size_t len);
	void (*on_done)(void *arg, enum lg_fetch_result result, int status,
			struct lg_str body, const char *error);
};

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_HTTP_H */
