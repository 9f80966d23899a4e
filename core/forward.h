/* SPDX-License-Identifier: Apache-2.0 */
/* The forwarding engine: the OpenAI-compatible endpoints. It resolves the
 * model, runs the AUTHORIZE and PRE_UPSTREAM hooks, picks a provider
 * (strategy, concurrency cap, breaker, failover before the first byte),
 * has the provider type prepare the call, sends it (or lets the type serve
 * it), relays the reply or its server-sent events, reads usage, and runs
 * the COMPLETE hooks exactly once. Plugins start calls of their own with
 * host->model_call(): the same engine on a request without an exchange. */
#ifndef LG_FORWARD_H
#define LG_FORWARD_H

#include <stddef.h>

#include "runtime.h"

/* Registers POST /v1/chat/completions, /v1/completions, /v1/embeddings,
 * /v1/rerank, /v1/audio/transcriptions and /v1/ocr (policy: key).
 * Thread: main, before plugins' init(). */
int lg_forward_register_routes(struct lg_runtime *rt, char *err, size_t errlen);

/* ---- calls made by plugins (host->model_call()) ---- */

/* What the request of such a call shows to hooks in place of an exchange. */
struct lg_internal_req {
	const char *id;                 /* "<plugin>-<16 hex>" */
	const char *endpoint;           /* its path; the method is POST */
	struct lg_str body;
};

/* host->model_call(). Thread: loop. */
int lg_forward_model_call(struct lg_plugin *self, const struct lg_model_request *rq,
			  lg_model_done_fn done, void *arg);
/* The request of a plugin's call, or NULL for a client's request. */
const struct lg_internal_req *lg_forward_internal(const struct lg_req *req);
/* Answers a plugin's call (the first answer counts), as reply() and
 * reply_error() answer a client. */
void lg_forward_internal_reply(struct lg_req *req, int status, const char *body, size_t len);
void lg_forward_internal_error(struct lg_req *req, int status, const char *msg);

/* ---- what hooks change in a forwarded call ---- */

/* host->call_set_body(): -EINVAL outside PRE_UPSTREAM, for a multipart
 * call, a body that is not a JSON object or that changes "stream". */
int lg_forward_set_body(struct lg_req *req, struct lg_str body);
/* host->call_reply_member(): -EINVAL outside AUTHORIZE and PRE_UPSTREAM,
 * for a name that is not plain or is "id", "model" or "usage", or a value
 * that is not JSON; -ENOSPC past 8 members. The same name again replaces
 * the value. */
int lg_forward_reply_member(struct lg_req *req, const char *name, struct lg_str json);

#endif
