/* SPDX-License-Identifier: Apache-2.0 */
/* A well-formed test plugin: settings, migrations, public, key and admin
 * routes, an AUTH hook, an asynchronous query, work-pool work, and
 * start/stop/fini that log so tests can see the lifecycle. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llmgate/host.h>

struct good {
	const struct lg_host *host;
	struct lg_plugin *self;
	const char *greeting;
	int64_t count;
	const char *upstream;
	/* NOTIFY arrives on the main thread, requests read it on workers. */
	pthread_mutex_t lock;
	char last_notify[128];
};

struct call {
	struct good *g;
	struct lg_req *req;
	long result;
	struct lg_timer *timer;
};

static const struct lg_setting good_settings[] = {
	{ "greeting", LG_SETTING_STRING, "hello", 1, 64, 0, "what GET /good/hello says" },
	{ "count", LG_SETTING_INT, "1", 1, 10, 0, "how many times it says it" },
	{ "secret", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_SECRET, "never logged" },
	{ "upstream", LG_SETTING_STRING, NULL, 0, 0, 0, "base URL that GET /good/upstream calls" },
};

static const struct lg_migration good_migrations[] = {
	{ 1, "good_item", "CREATE TABLE good_item (id integer PRIMARY KEY, name text NOT NULL);" },
	{ 2, "good_item_seed", "INSERT INTO good_item VALUES (1, 'first');" },
	{ 0, NULL, NULL },
};

/* /good/ready?why=...: the plugin says it cannot serve; without why, it can. */
static void ready(struct lg_req *req, void *ud)
{
	struct good *g = ud;

	g->host->set_ready(g->self, g->host->req_query(req, "why"));
	g->host->reply(req, 204, NULL, "", 0);
}

static void hello(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	const char *name = g->host->req_query(req, "name");
	char body[512];
	int n = snprintf(body, sizeof body, "{\"says\":\"");

	for (int64_t i = 0; i < g->count; i++)
		n += snprintf(body + n, sizeof body - (size_t)n, "%s%s", i ? " " : "", g->greeting);
	n += snprintf(body + n, sizeof body - (size_t)n, "\",\"name\":\"%s\"}", name ? name : "");
	g->host->reply(req, 200, "application/json", body, (size_t)n);
}

static void item_loaded(const PGresult *res, const char *error, void *arg)
{
	struct call *c = arg;
	const struct lg_host *h = c->g->host;
	char body[256];
	int n;

	if (error) {
		h->reply_error(c->req, 500, "database error");
		return;
	}
	if (PQntuples(res) == 0) {
		h->reply_error(c->req, 404, "Item %s not found.", h->req_param(c->req, "id"));
		return;
	}
	n = snprintf(body, sizeof body, "{\"id\":%s,\"name\":\"%s\",\"user\":%lld}",
		     PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
		     (long long)h->req_principal(c->req)->user_id);
	h->reply(c->req, 200, "application/json", body, (size_t)n);
}

static void item(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	struct call *c = g->host->req_alloc(req, sizeof *c);
	const char *params[1] = { g->host->req_param(req, "id") };

	if (!c) {
		g->host->reply_error(req, 500, "out of memory");
		return;
	}
	c->g = g;
	c->req = req;
	/* The id is data, never SQL: "1 OR 1=1" finds nothing. */
	if (g->host->db_query(g->self, "SELECT id, name FROM good_item WHERE id::text = $1", 1,
			      params, item_loaded, c) < 0)
		g->host->reply_error(req, 503, "database unavailable");
}

static void admin_only(struct lg_req *req, void *ud)
{
	struct good *g = ud;

	g->host->reply(req, 200, "application/json", "{\"admin\":true}", 14);
}

static void sum_work(void *arg)
{
	struct call *c = arg;

	/* Runs on a work-pool thread: blocking is allowed here. */
	for (long i = 1; i <= 1000; i++)
		c->result += i;
}

static void sum_done(void *arg)
{
	struct call *c = arg;
	char body[64];
	int n = snprintf(body, sizeof body, "{\"sum\":%ld}", c->result);

	c->g->host->reply(c->req, 200, "application/json", body, (size_t)n);
}

static void sum(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	struct call *c = g->host->req_alloc(req, sizeof *c);

	if (!c || g->host->work_submit(g->self, sum_work, sum_done, c) < 0) {
		g->host->reply_error(req, 500, "cannot submit work");
		return;
	}
	c->g = g;
	c->req = req;
}

static void slow_done(void *arg)
{
	struct call *c = arg;
	char body[64];

	c->timer = NULL; /* a one-shot timer is freed once it fired */
	int n = snprintf(body, sizeof body, "{\"slept_ms\":%ld}", c->result);

	c->g->host->reply(c->req, 200, "application/json", body, (size_t)n);
}

/* The client left: stop waiting, and end the request (the answer is
 * discarded) so that it can be freed. */
static void slow_abandoned(struct lg_req *req, void *arg)
{
	struct call *c = arg;

	c->g->host->timer_stop(c->timer);
	c->timer = NULL;
	c->g->host->reply_error(req, 499, "client closed the request");
}

/* GET /good/slow?ms=N answers after N ms, from a timer: the loop stays free. */
static void slow(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	struct call *c = g->host->req_alloc(req, sizeof *c);
	const char *ms = g->host->req_query(req, "ms");

	if (!c) {
		g->host->reply_error(req, 500, "out of memory");
		return;
	}
	c->g = g;
	c->req = req;
	c->result = ms ? strtol(ms, NULL, 10) : 100;
	c->timer = g->host->timer_start(g->self, (uint64_t)c->result, false, slow_done, c);
	if (!c->timer) {
		g->host->reply_error(req, 500, "cannot start a timer");
		return;
	}
	g->host->on_close(req, g->self, slow_abandoned, c);
}

static void upstream_done(void *arg, enum lg_fetch_result result, int status,
			  struct lg_str body, const char *error)
{
	struct call *c = arg;
	const struct lg_host *h = c->g->host;
	char head[256];

	if (result != LG_FETCH_OK) {
		h->reply_error(c->req, 502, "upstream failed (%d): %s", (int)result,
			       error ? error : "");
		return;
	}
	snprintf(head, sizeof head, "%d", status);
	h->reply_header(c->req, "X-Upstream-Status", head);
	h->reply(c->req, 200, "application/json", body.ptr, body.len);
}

/* GET /good/upstream: fetches <upstream>/v1/models through host->fetch(). */
static void upstream(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	struct call *c = g->host->req_alloc(req, sizeof *c);
	static const struct lg_fetch_handlers handlers = {
		.size = sizeof(struct lg_fetch_handlers), .on_done = upstream_done,
	};
	struct lg_fetch_request rq = { .size = sizeof rq, .method = "GET" };
	char url[512];

	if (!c || !g->upstream) {
		g->host->reply_error(req, 500, "no upstream configured");
		return;
	}
	c->g = g;
	c->req = req;
	snprintf(url, sizeof url, "%s/v1/models", g->upstream);
	rq.url = url;
	if (!g->host->fetch(g->self, &rq, &handlers, c))
		g->host->reply_error(req, 500, "cannot start the fetch");
}

static void notified(const char *channel, const char *payload, void *arg)
{
	struct good *g = arg;

	pthread_mutex_lock(&g->lock);
	snprintf(g->last_notify, sizeof g->last_notify, "%s", payload);
	pthread_mutex_unlock(&g->lock);
	g->host->log(g->self, LG_LOG_INFO, "good: notify on %s", channel);
}

static void last_notify(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	char body[192];
	int n;

	pthread_mutex_lock(&g->lock);
	n = snprintf(body, sizeof body, "{\"last\":\"%s\"}", g->last_notify);
	pthread_mutex_unlock(&g->lock);
	g->host->reply(req, 200, "application/json", body, (size_t)n);
}

/* POST /good/json: the body through host->req_json(); answers its size. */
static void json_body(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	json_t *body = g->host->req_json(req);
	char out[64];
	int n;

	if (!body)
		return; /* req_json answered already */
	n = snprintf(out, sizeof out, "{\"members\":%zu}", json_object_size(body));
	json_decref(body);
	g->host->reply(req, 200, "application/json", out, (size_t)n);
}

/* "Bearer good-token" is user 7; "Bearer good-admin" is an admin. */
struct slow_auth {
	struct good *g;
	struct lg_req *req;
};

static void slow_auth_done(const PGresult *res, const char *error, void *arg)
{
	struct slow_auth *s = arg;
	struct lg_principal who = { .size = sizeof who, .user_id = 8, .user_name = "slow" };

	(void)res;
	if (error || s->g->host->req_set_principal(s->req, &who) != 0) {
		s->g->host->resume(s->req, LG_HOOK_DECLINE);
		return;
	}
	s->g->host->resume(s->req, LG_HOOK_OK);
}

/* "Bearer good-slow?ms=N": identified after a query that lasts N ms, to
 * test requests whose AUTH hook is still pending. */
static enum lg_hook_result slow_authenticate(struct good *g, struct lg_req *req, const char *ms)
{
	struct slow_auth *s = g->host->req_alloc(req, sizeof *s);
	const char *params[] = { ms };

	if (!s)
		return LG_HOOK_DECLINE;
	s->g = g;
	s->req = req;
	if (g->host->db_query(g->self, "SELECT pg_sleep($1::int / 1000.0)", 1, params,
			      slow_auth_done, s) < 0)
		return LG_HOOK_DECLINE;
	return LG_HOOK_PENDING;
}

static enum lg_hook_result authenticate(struct lg_req *req, void *ud)
{
	struct good *g = ud;
	const char *authz = g->host->req_header(req, "Authorization");
	struct lg_principal who = { .size = sizeof who };

	if (!authz)
		return LG_HOOK_DECLINE;
	if (strncmp(authz, "Bearer good-slow?ms=", 20) == 0)
		return slow_authenticate(g, req, authz + 20);
	if (strcmp(authz, "Bearer good-token") == 0) {
		who.user_id = 7;
		who.user_name = "alice";
	} else if (strcmp(authz, "Bearer good-admin") == 0) {
		who.user_id = 1;
		who.user_name = "admin";
		who.permissions = LG_PERM_ADMIN;
	} else {
		return LG_HOOK_DECLINE;
	}
	return g->host->req_set_principal(req, &who) == 0 ? LG_HOOK_OK : LG_HOOK_DECLINE;
}

static int good_init(struct lg_plugin *self, const struct lg_host *host)
{
	static const struct lg_route routes[] = {
		{ sizeof(struct lg_route), "GET", "/good/hello", LG_POLICY_PUBLIC, 0, hello },
		{ sizeof(struct lg_route), "POST", "/good/ready", LG_POLICY_PUBLIC, 0, ready },
		{ sizeof(struct lg_route), "GET", "/good/items/{id}", LG_POLICY_KEY, 0, item },
		{ sizeof(struct lg_route), "GET", "/good/admin", LG_POLICY_ADMIN, 0, admin_only },
		{ sizeof(struct lg_route), "POST", "/good/sum", LG_POLICY_PUBLIC, 1024, sum },
		{ sizeof(struct lg_route), "GET", "/good/slow", LG_POLICY_PUBLIC, 0, slow },
		{ sizeof(struct lg_route), "GET", "/good/upstream", LG_POLICY_PUBLIC, 0, upstream },
		{ sizeof(struct lg_route), "GET", "/good/notified", LG_POLICY_PUBLIC, 0, last_notify },
		{ sizeof(struct lg_route), "POST", "/good/json", LG_POLICY_PUBLIC, 0, json_body },
	};
	struct good *g = calloc(1, sizeof *g);
	int rc;

	if (!g)
		return -ENOMEM;
	g->host = host;
	g->self = self;
	if (pthread_mutex_init(&g->lock, NULL) != 0) {
		free(g);
		return -ENOMEM;
	}
	if (host->cfg_str(self, "upstream", &g->upstream) < 0)
		g->upstream = NULL;
	if (host->cfg_str(self, "greeting", &g->greeting) < 0 ||
	    host->cfg_int(self, "count", &g->count) < 0) {
		host->set_error(self, "cannot read settings");
		free(g);
		return -EINVAL;
	}
	for (size_t i = 0; i < LG_COUNT(routes); i++) {
		rc = host->route_add(self, &routes[i], g);
		if (rc < 0) {
			host->set_error(self, "route %s: %s", routes[i].path, strerror(-rc));
			free(g);
			return rc;
		}
	}
	rc = host->hook_add(self, LG_PHASE_AUTH, authenticate, 100, g);
	if (rc == 0)
		rc = host->db_listen(self, "good_events", notified, g);
	if (rc < 0) {
		free(g);
		return rc;
	}
	host->set_data(self, g);
	host->log(self, LG_LOG_INFO, "good: init");
	return 0;
}

static int good_start(struct lg_plugin *self, const struct lg_host *host)
{
	PGresult *res = NULL;
	char err[256];

	if (host->db_query_sync(self, "SELECT count(*) FROM good_item", 0, NULL, &res, err,
				sizeof err) < 0) {
		host->set_error(self, "start: %s", err);
		return -EIO;
	}
	host->log(self, LG_LOG_INFO, "good: start (%s items)", PQgetvalue(res, 0, 0));
	PQclear(res);
	return 0;
}

static void good_stop(struct lg_plugin *self, const struct lg_host *host)
{
	host->log(self, LG_LOG_INFO, "good: stop");
}

static void good_fini(struct lg_plugin *self, const struct lg_host *host)
{
	struct good *g = host->get_data(self);

	host->log(self, LG_LOG_INFO, "good: fini");
	pthread_mutex_destroy(&g->lock);
	free(g);
}

LG_PLUGIN(.name = "good", .version = "1.2.3", .description = "a well-formed test plugin",
	  .migrations = good_migrations, .settings = good_settings,
	  .n_settings = LG_COUNT(good_settings), .init = good_init, .start = good_start,
	  .stop = good_stop, .fini = good_fini);
