/* SPDX-License-Identifier: Apache-2.0 */
/* A test plugin for the host calls of ABI 1.1, for the host-call tests:
 *   POST /caller/call   {"endpoint", "body": {...} or "raw": "text",
 *                        "as": user id (optional), "admin": bool}
 *                       -> {"rc", "status", "body" (the reply's text),
 *                           "error", "inside" (done ran inside model_call)}
 *   POST /caller/form   multipart/form-data -> {"parts": [{"name",
 *                       "filename", "content_type", "data", "size"}]}
 *   GET  /caller/completes  what COMPLETE hooks saw of calls made here
 *   POST /caller/reset  forgets them
 * Hooks on forwarded calls: PRE_UPSTREAM appends the X-Caller-System header
 * as a system message (call_set_body) and adds the JSON of X-Caller-Member
 * as "search_results" (call_reply_member); AUTHORIZE adds the JSON of
 * X-Caller-Authorize as "authorized". Model access: user deny_user sees no
 * model. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llmgate/host.h>

#define MAX_RECORDS 200

struct caller {
	const struct lg_host *host;
	struct lg_plugin *self;
	int64_t deny_user;
	pthread_mutex_t lock;       /* hooks run on every worker */
	json_t *completes;
};

/* One /caller/call in flight. */
struct call {
	struct caller *c;
	struct lg_req *req;
	bool inside;                /* model_call() has not returned yet */
	bool reentered;
};

static const struct lg_setting caller_settings[] = {
	{ "deny_user", LG_SETTING_INT, "99", 0, 0, 0, "this user sees no model" },
};

static void reply_json(struct caller *c, struct lg_req *req, int status, json_t *body)
{
	char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

	json_decref(body);
	if (!text) {
		c->host->reply_error(req, 500, "out of memory");
		return;
	}
	c->host->reply(req, status, "application/json", text, strlen(text));
	free(text);
}

/* ---- model_call() ---- */

static void call_done(void *arg, int status, struct lg_str body, const char *error)
{
	struct call *k = arg;

	if (k->inside)
		k->reentered = true;
	reply_json(k->c, k->req, 200,
		   json_pack("{s:i,s:i,s:s%,s:o,s:b}", "rc", 0, "status", status, "body",
			     body.ptr ? body.ptr : "", body.len,
			     "error", error ? json_string(error) : json_null(),
			     "inside", k->reentered));
}

static void route_call(struct lg_req *req, void *ud)
{
	struct caller *c = ud;
	json_t *in = c->host->req_json(req), *as;
	struct lg_principal who = { .size = sizeof who, .user_name = "caller" };
	struct lg_model_request mr = { .size = sizeof mr };
	struct call *k = c->host->req_alloc(req, sizeof *k);
	char *text = NULL;
	int rc;

	if (!in)
		return;
	if (!k) {
		c->host->reply_error(req, 500, "out of memory");
		goto out;
	}
	*k = (struct call){ .c = c, .req = req };
	mr.endpoint = json_string_value(json_object_get(in, "endpoint"));
	if (json_is_string(json_object_get(in, "raw"))) {
		mr.body.ptr = json_string_value(json_object_get(in, "raw"));
		mr.body.len = json_string_length(json_object_get(in, "raw"));
	} else if (json_object_get(in, "body")) {
		text = json_dumps(json_object_get(in, "body"), JSON_COMPACT);
		mr.body = (struct lg_str){ text, text ? strlen(text) : 0 };
	}
	as = json_object_get(in, "as");
	if (json_is_integer(as)) {
		who.user_id = json_integer_value(as);
		if (json_is_true(json_object_get(in, "admin")))
			who.permissions = LG_PERM_ADMIN;
		mr.who = &who;
	}
	k->inside = true;
	rc = c->host->model_call(c->self, &mr, call_done, k);
	k->inside = false;
	if (rc < 0)
		reply_json(c, req, 200, json_pack("{s:i}", "rc", rc));
out:
	free(text);
	json_decref(in);
}

/* ---- req_form() ---- */

static void route_form(struct lg_req *req, void *ud)
{
	struct caller *c = ud;
	const struct lg_form_part *parts;
	json_t *list;
	size_t n;

	if (c->host->req_form(req, &parts, &n) < 0)
		return;     /* answered 400 */
	list = json_array();
	for (size_t i = 0; list && i < n; i++) {
		const struct lg_form_part *p = &parts[i];
		json_t *one = json_pack("{s:s,s:o,s:o,s:s%,s:I}", "name", p->name,
					"filename", p->filename ? json_string(p->filename) : json_null(),
					"content_type", p->content_type ? json_string(p->content_type)
					: json_null(), "data", p->data.ptr, p->data.len,
					"size", (json_int_t)p->data.len);

		/* Binary data is not UTF-8: its size alone then. */
		if (!one)
			one = json_pack("{s:s,s:n,s:I}", "name", p->name, "data", "size",
					(json_int_t)p->data.len);
		if (json_array_append_new(list, one) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	reply_json(c, req, 200, list ? json_pack("{s:o}", "parts", list) : NULL);
}

/* ---- COMPLETE records ---- */

static void route_completes(struct lg_req *req, void *ud)
{
	struct caller *c = ud;
	json_t *body;

	pthread_mutex_lock(&c->lock);
	body = json_pack("{s:O}", "calls", c->completes);
	pthread_mutex_unlock(&c->lock);
	reply_json(c, req, 200, body);
}

static void route_reset(struct lg_req *req, void *ud)
{
	struct caller *c = ud;

	pthread_mutex_lock(&c->lock);
	json_array_clear(c->completes);
	pthread_mutex_unlock(&c->lock);
	c->host->reply(req, 200, "application/json", "{}", 2);
}

/* ---- blocking database calls from a worker: refused ---- */

static void route_db_sync(struct lg_req *req, void *ud)
{
	struct caller *c = ud;
	struct lg_db_copy copy = { .size = sizeof copy, .copy_sql = "COPY t FROM STDIN" };
	struct lg_db_copy bad = { .size = 0, .copy_sql = "COPY t FROM STDIN" };
	char qerr[128] = "", cerr[128] = "";
	PGresult *res = NULL, *cres = NULL;
	int q = c->host->db_query_sync(c->self, "SELECT 1", 0, NULL, &res, qerr, sizeof qerr);
	int cp = c->host->db_copy_sync(c->self, &copy, &cres, cerr, sizeof cerr);
	int inval = c->host->db_copy(c->self, &bad, NULL, NULL);
	bool results = res || cres;

	PQclear(res);
	PQclear(cres);
	reply_json(c, req, 200, json_pack("{s:i,s:s,s:i,s:s,s:b,s:i}", "query", q,
					  "query_error", qerr, "copy", cp, "copy_error", cerr,
					  "results", results, "invalid", inval));
}

static enum lg_hook_result on_complete(struct lg_req *req, void *ud)
{
	struct caller *c = ud;
	const struct lg_call *call = c->host->req_call(req);
	const struct lg_principal *who = c->host->req_principal(req);
	json_t *rec;

	if (!call)
		return LG_HOOK_OK;
	rec = json_pack("{s:s,s:s,s:s,s:s,s:o,s:i,s:I,s:I,s:f,s:b,s:s,s:o}",
			"request_id", call->request_id, "endpoint", call->endpoint,
			"method", c->host->req_method(req), "path", c->host->req_path(req),
			"user_id", who ? json_integer(who->user_id) : json_null(),
			"status", call->status, "prompt_tokens", (json_int_t)call->prompt_tokens,
			"completion_tokens", (json_int_t)call->completion_tokens,
			"cost", call->cost,
			"has_authorization", c->host->req_header(req, "Authorization") != NULL,
			"req_id", c->host->req_id(req),
			"error", call->error ? json_string(call->error) : json_null());
	if (!rec)
		return LG_HOOK_OK;
	pthread_mutex_lock(&c->lock);
	if (json_array_size(c->completes) >= MAX_RECORDS)
		json_array_remove(c->completes, 0);
	json_array_append_new(c->completes, rec);
	pthread_mutex_unlock(&c->lock);
	return LG_HOOK_OK;
}

/* ---- hooks that change the call ---- */

static int add_member(struct caller *c, struct lg_req *req, const char *header,
		      const char *name)
{
	const char *v = c->host->req_header(req, header);

	if (!v)
		return 0;
	return c->host->call_reply_member(req, name, (struct lg_str){ v, strlen(v) });
}

static enum lg_hook_result on_authorize(struct lg_req *req, void *ud)
{
	struct caller *c = ud;

	if (add_member(c, req, "X-Caller-Authorize", "authorized") < 0) {
		c->host->reply_error(req, 500, "call_reply_member refused");
		return LG_HOOK_DONE;
	}
	return LG_HOOK_OK;
}

/* The client's messages with one more, as a system message at the end. */
static int append_system(struct caller *c, struct lg_req *req, const char *text)
{
	json_t *body = c->host->req_json(req), *messages;
	char *out;
	int rc = -EINVAL;

	if (!body)
		return -EINVAL;
	messages = json_object_get(body, "messages");
	if (json_is_array(messages) &&
	    json_array_append_new(messages, json_pack("{s:s,s:s}", "role", "system",
						      "content", text)) == 0) {
		out = json_dumps(body, JSON_COMPACT);
		rc = out ? c->host->call_set_body(req, (struct lg_str){ out, strlen(out) }) : -ENOMEM;
		free(out);
	}
	json_decref(body);
	return rc;
}

static enum lg_hook_result on_pre_upstream(struct lg_req *req, void *ud)
{
	struct caller *c = ud;
	const char *sys = c->host->req_header(req, "X-Caller-System");
	const char *bad = c->host->req_header(req, "X-Caller-Bad-Body");
	int rc = 0;

	if (sys)
		rc = append_system(c, req, sys);
	if (rc == 0 && bad)
		rc = c->host->call_set_body(req, (struct lg_str){ bad, strlen(bad) }) == -EINVAL
		     ? 0 : -1;
	if (rc == 0)
		rc = add_member(c, req, "X-Caller-Member", "search_results");
	if (rc < 0) {
		c->host->reply_error(req, 500, "caller: the hook failed (%d)", rc);
		return LG_HOOK_DONE;
	}
	return LG_HOOK_OK;
}

static bool model_access(const struct lg_principal *who, int64_t model_id, void *ud)
{
	struct caller *c = ud;

	(void)model_id;
	return who->user_id != c->deny_user;
}

static int caller_init(struct lg_plugin *self, const struct lg_host *host)
{
	static const struct lg_route routes[] = {
		{ sizeof(struct lg_route), "POST", "/caller/call", LG_POLICY_KEY, 0, route_call },
		{ sizeof(struct lg_route), "POST", "/caller/form", LG_POLICY_KEY, 0, route_form },
		{ sizeof(struct lg_route), "GET", "/caller/completes", LG_POLICY_PUBLIC, 0,
		  route_completes },
		{ sizeof(struct lg_route), "POST", "/caller/reset", LG_POLICY_PUBLIC, 0,
		  route_reset },
		{ sizeof(struct lg_route), "GET", "/caller/db-sync", LG_POLICY_PUBLIC, 0,
		  route_db_sync },
	};
	struct caller *c = calloc(1, sizeof *c);
	int rc = 0;

	if (!c)
		return -ENOMEM;
	c->host = host;
	c->self = self;
	c->completes = json_array();
	if (!c->completes || pthread_mutex_init(&c->lock, NULL) != 0 ||
	    host->cfg_int(self, "deny_user", &c->deny_user) < 0) {
		json_decref(c->completes);
		free(c);
		return -ENOMEM;
	}
	for (size_t i = 0; i < LG_COUNT(routes) && rc == 0; i++)
		rc = host->route_add(self, &routes[i], c);
	if (rc == 0)
		rc = host->hook_add(self, LG_PHASE_AUTHORIZE, on_authorize, 50, c);
	if (rc == 0)
		rc = host->hook_add(self, LG_PHASE_PRE_UPSTREAM, on_pre_upstream, 50, c);
	if (rc == 0)
		rc = host->hook_add(self, LG_PHASE_COMPLETE, on_complete, 50, c);
	if (rc == 0)
		rc = host->model_access_add(self, model_access, c);
	if (rc < 0) {
		host->set_error(self, "caller: registration failed (%d)", rc);
		pthread_mutex_destroy(&c->lock);
		json_decref(c->completes);
		free(c);
		return rc;
	}
	host->set_data(self, c);
	return 0;
}

static void caller_fini(struct lg_plugin *self, const struct lg_host *host)
{
	struct caller *c = host->get_data(self);

	pthread_mutex_destroy(&c->lock);
	json_decref(c->completes);
	free(c);
}

LG_PLUGIN(.name = "caller", .version = "1.0.0",
	  .description = "test plugin: model_call, req_form, call_set_body, call_reply_member",
	  .settings = caller_settings, .n_settings = LG_COUNT(caller_settings),
	  .init = caller_init, .fini = caller_fini);
