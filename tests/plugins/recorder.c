/* SPDX-License-Identifier: Apache-2.0 */
/* A test plugin that records what AUTHORIZE and COMPLETE hooks see of
 * forwarded calls, for the forwarding tests:
 *   GET  /recorder/calls   {"calls": [{"phase": "authorize"|"complete", ...}]}
 *   POST /recorder/reset   forgets them
 * Settings: deny_model (AUTHORIZE answers 403 for calls to that model),
 * pending_ms (hooks return PENDING and resume after that many ms). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llmgate/host.h>

#define MAX_RECORDS 2000

struct recorder {
	const struct lg_host *host;
	struct lg_plugin *self;
	const char *deny_model;
	int64_t pending_ms;
	pthread_mutex_t lock;       /* hooks run on every worker */
	json_t *calls;
};

struct pending {
	struct recorder *r;
	struct lg_req *req;
	enum lg_hook_result result;
};

static const struct lg_setting recorder_settings[] = {
	{ "deny_model", LG_SETTING_STRING, NULL, 0, 0, 0,
	  "AUTHORIZE refuses calls to this model (403)" },
	{ "pending_ms", LG_SETTING_INT, "0", 0, 10000, 0,
	  "hooks answer later (PENDING) after this many ms; 0: at once" },
};

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *call_record(const char *phase, const struct lg_call *c)
{
	return json_pack("{s:s,s:o,s:o,s:o,s:I,s:o,s:o,s:I,s:b,s:I,s:o,s:o,s:o,s:f,s:f,"
			 "s:i,s:I,s:I,s:I,s:b,s:f,s:f,s:b,s:o}",
			 "phase", phase,
			 "request_id", str_or_null(c->request_id),
			 "endpoint", str_or_null(c->endpoint),
			 "model", str_or_null(c->model),
			 "model_id", (json_int_t)c->model_id,
			 "model_name", str_or_null(c->model_name),
			 "model_type", str_or_null(c->model_type),
			 "max_tokens", (json_int_t)c->max_tokens,
			 "stream", c->stream,
			 "provider_id", (json_int_t)c->provider_id,
			 "provider_type", str_or_null(c->provider_type),
			 "provider_model", str_or_null(c->provider_model),
			 "hosting_zone", str_or_null(c->hosting_zone),
			 "total_params", c->total_params,
			 "active_params", c->active_params,
			 "status", c->status,
			 "prompt_tokens", (json_int_t)c->prompt_tokens,
			 "completion_tokens", (json_int_t)c->completion_tokens,
			 "total_tokens", (json_int_t)c->total_tokens,
			 "usage_estimated", c->usage_estimated,
			 "ttft_ms", c->ttft_ms,
			 "latency_ms", c->latency_ms,
			 "client_gone", c->client_gone,
			 "error", str_or_null(c->error));
}

static void record(struct recorder *r, const char *phase, struct lg_req *req)
{
	const struct lg_call *c = r->host->req_call(req);
	json_t *rec;

	if (!c) {
		r->host->log(r->self, LG_LOG_ERROR, "recorder: %s hook without a call", phase);
		return;
	}
	rec = call_record(phase, c);
	if (!rec)
		return;
	pthread_mutex_lock(&r->lock);
	if (json_array_size(r->calls) >= MAX_RECORDS)
		json_array_remove(r->calls, 0);
	if (json_array_append_new(r->calls, rec) < 0)
		r->host->log(r->self, LG_LOG_ERROR, "recorder: cannot keep a record");
	pthread_mutex_unlock(&r->lock);
}

static void resume_later(void *arg)
{
	struct pending *p = arg;

	p->r->host->resume(p->req, p->result);
}

/* Answers @result now, or PENDING and @result after pending_ms. */
static enum lg_hook_result answer(struct recorder *r, struct lg_req *req,
				  enum lg_hook_result result)
{
	struct pending *p;

	if (r->pending_ms <= 0)
		return result;
	p = r->host->req_alloc(req, sizeof *p);
	if (!p)
		return result;
	*p = (struct pending){ .r = r, .req = req, .result = result };
	if (!r->host->timer_start(r->self, (uint64_t)r->pending_ms, false, resume_later, p))
		return result;
	return LG_HOOK_PENDING;
}

static enum lg_hook_result on_authorize(struct lg_req *req, void *ud)
{
	struct recorder *r = ud;
	const struct lg_call *c = r->host->req_call(req);

	record(r, "authorize", req);
	/* A hook that answered may not go PENDING: the request ends with
	 * its answer. */
	if (r->deny_model && c && c->model_name && strcmp(c->model_name, r->deny_model) == 0) {
		r->host->reply_error(req, 403, "Access denied by the recorder.");
		return LG_HOOK_DONE;
	}
	return answer(r, req, LG_HOOK_OK);
}

static enum lg_hook_result on_complete(struct lg_req *req, void *ud)
{
	struct recorder *r = ud;
	const struct lg_call *c = r->host->req_call(req);

	record(r, "complete", req);
	/* Status 0: a hook answered the request already, which then ends:
	 * COMPLETE must finish at once. */
	return c && c->status == 0 ? LG_HOOK_OK : answer(r, req, LG_HOOK_OK);
}

static void calls(struct lg_req *req, void *ud)
{
	struct recorder *r = ud;
	json_t *body;
	char *text;

	pthread_mutex_lock(&r->lock);
	body = json_pack("{s:O}", "calls", r->calls);
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	pthread_mutex_unlock(&r->lock);
	json_decref(body);
	if (!text) {
		r->host->reply_error(req, 500, "out of memory");
		return;
	}
	r->host->reply(req, 200, "application/json", text, strlen(text));
	free(text);
}

static void reset(struct lg_req *req, void *ud)
{
	struct recorder *r = ud;

	pthread_mutex_lock(&r->lock);
	json_array_clear(r->calls);
	pthread_mutex_unlock(&r->lock);
	r->host->reply(req, 200, "application/json", "{}", 2);
}

static int recorder_init(struct lg_plugin *self, const struct lg_host *host)
{
	static const struct lg_route routes[] = {
		{ sizeof(struct lg_route), "GET", "/recorder/calls", LG_POLICY_PUBLIC, 0, calls },
		{ sizeof(struct lg_route), "POST", "/recorder/reset", LG_POLICY_PUBLIC, 0, reset },
	};
	struct recorder *r = calloc(1, sizeof *r);
	int rc = 0;

	if (!r)
		return -ENOMEM;
	r->host = host;
	r->self = self;
	r->calls = json_array();
	if (!r->calls || pthread_mutex_init(&r->lock, NULL) != 0) {
		json_decref(r->calls);
		free(r);
		return -ENOMEM;
	}
	if (host->cfg_str(self, "deny_model", &r->deny_model) < 0)
		r->deny_model = NULL;
	if (host->cfg_int(self, "pending_ms", &r->pending_ms) < 0)
		r->pending_ms = 0;
	for (size_t i = 0; i < LG_COUNT(routes) && rc == 0; i++)
		rc = host->route_add(self, &routes[i], r);
	if (rc == 0)
		rc = host->hook_add(self, LG_PHASE_AUTHORIZE, on_authorize, 100, r);
	if (rc == 0)
		rc = host->hook_add(self, LG_PHASE_COMPLETE, on_complete, 100, r);
	if (rc < 0) {
		host->set_error(self, "cannot register: %s", strerror(-rc));
		pthread_mutex_destroy(&r->lock);
		json_decref(r->calls);
		free(r);
		return rc;
	}
	host->set_data(self, r);
	return 0;
}

static void recorder_fini(struct lg_plugin *self, const struct lg_host *host)
{
	struct recorder *r = host->get_data(self);

	pthread_mutex_destroy(&r->lock);
	json_decref(r->calls);
	free(r);
}

LG_PLUGIN(.name = "recorder", .version = "1.0.0",
	  .description = "records forwarded calls as AUTHORIZE and COMPLETE hooks see them",
	  .settings = recorder_settings, .n_settings = LG_COUNT(recorder_settings),
	  .init = recorder_init, .fini = recorder_fini);
