/* SPDX-License-Identifier: Apache-2.0 */
/* hello: an out-of-tree llmgate plugin. GET /hello/{name} greets a name and
 * counts the visits in its own table, created by its own migration. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llmgate/host.h>

/* Generated from sql/NNNN_*.sql by llmgate-sql2c (see the Makefile). */
extern const struct lg_migration hello_migrations[];

struct hello {
	const struct lg_host *host;
	struct lg_plugin *self;
	const char *greeting;
};

/* What one request needs after its query comes back. */
struct visit {
	struct hello *h;
	struct lg_req *req;
	const char *name;
};

static const struct lg_setting hello_settings[] = {
	{ "greeting", LG_SETTING_STRING, "Hello", 1, 64, 0, "the word said before the name" },
};

static void reply_json(const struct lg_host *host, struct lg_req *req, int status, json_t *obj)
{
	char *body = obj ? json_dumps(obj, JSON_COMPACT) : NULL;

	if (!body)
		host->reply_error(req, 500, "Cannot build the reply.");
	else
		host->reply(req, status, "application/json", body, strlen(body));
	free(body);
	json_decref(obj);
}

static void visit_counted(const PGresult *res, const char *error, void *arg)
{
	struct visit *v = arg;
	const struct lg_host *host = v->h->host;

	if (error) {
		host->log(v->h->self, LG_LOG_WARN, "counting a visit failed: %s", error);
		host->reply_error(v->req, 503, "The database is not available.");
		return;
	}
	reply_json(host, v->req, 200,
		   json_pack("{s:s, s:s, s:I}", "greeting", v->h->greeting, "name", v->name,
			     "visits", (json_int_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10)));
}

static void greet(struct lg_req *req, void *ud)
{
	struct hello *h = ud;
	const struct lg_host *host = h->host;
	struct visit *v = host->req_alloc(req, sizeof *v);
	const char *params[1];

	if (!v) {
		host->reply_error(req, 500, "Out of memory.");
		return;
	}
	*v = (struct visit){ .h = h, .req = req, .name = host->req_param(req, "name") };
	if (strlen(v->name) > 100) {
		host->reply_error(req, 422, "name: at most 100 characters.");
		return;
	}
	params[0] = v->name;
	/* Parameterised: the name is data, whatever it holds. */
	if (host->db_query(h->self,
			   "INSERT INTO hello_visit (name, visits) VALUES ($1, 1) "
			   "ON CONFLICT (name) DO UPDATE SET visits = hello_visit.visits + 1 "
			   "RETURNING visits", 1, params, visit_counted, v) < 0)
		host->reply_error(req, 503, "The database is not available.");
}

static int hello_init(struct lg_plugin *self, const struct lg_host *host)
{
	static const struct lg_route route = {
		.size = sizeof(struct lg_route),
		.method = "GET",
		.path = "/hello/{name}",
		.policy = LG_POLICY_PUBLIC,
		.fn = greet,
	};
	struct hello *h = calloc(1, sizeof *h);
	int rc;

	if (!h)
		return -ENOMEM;
	h->host = host;
	h->self = self;
	rc = host->cfg_str(self, "greeting", &h->greeting);
	if (rc == 0)
		rc = host->route_add(self, &route, h);
	if (rc < 0) {
		host->set_error(self, "cannot set up: %s", strerror(-rc));
		free(h);
		return rc;
	}
	host->set_data(self, h);
	return 0;
}

/* fini() runs only if init() succeeded, so the data is there to free. */
static void hello_fini(struct lg_plugin *self, const struct lg_host *host)
{
	free(host->get_data(self));
}

LG_PLUGIN(.name = "hello",
	  .version = "1.0.0",
	  .description = "greets names and counts visits (SDK example)",
	  .migrations = hello_migrations,
	  .settings = hello_settings,
	  .n_settings = LG_COUNT(hello_settings),
	  .init = hello_init,
	  .fini = hello_fini);
