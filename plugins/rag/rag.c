/* SPDX-License-Identifier: Apache-2.0 */
/* rag: collections of documents, cut into chunks and searched by full text
 * and by embeddings, all in PostgreSQL (OpenGateLLM 0.4's RAG, spec §10).
 * This file reads the settings, registers the modules' routes and the chat
 * hook, listens to NOTIFY llmgate_rag for vectors.c, and holds the little REST helpers the
 * modules share. It works with any AUTH plugin: owners are principals'
 * user ids, 0 being the master key. See docs/rag.md. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

#include "api.h"
#include "rag.h"

#define CHAT_HOOK_PRIORITY 50

extern const struct lg_migration rag_migrations[];

static const struct lg_setting rag_settings[] = {
	{ "embeddings_model", LG_SETTING_STRING, NULL, 1, 255, LG_SETTING_REQUIRED,
	  "the model of the registry (text-embeddings-inference) that embeds chunks and queries" },
	{ "language", LG_SETTING_STRING, "english", 1, 63, 0,
	  "the PostgreSQL text search configuration of lexical search (english, french, simple...)" },
	{ "max_file_size", LG_SETTING_SIZE, "20M", 1, 1073741824.0, 0,
	  "the largest file POST /v1/documents and /v1/parse-beta accept (413 beyond)" },
	{ "embed_batch", LG_SETTING_INT, "32", 1, 2048, 0,
	  "texts per call to the embeddings model" },
	{ "chunk_size", LG_SETTING_INT, "2048", 1, 1000000, 0,
	  "default chunk size of an upload, in characters" },
	{ "chunk_overlap", LG_SETTING_INT, "0", 0, 999999, 0,
	  "default overlap between chunks, in characters" },
	{ "chunk_min_size", LG_SETTING_INT, "0", 0, 1000000, 0,
	  "default minimum chunk size, in characters (shorter chunks are dropped)" },
	{ "preset_separators", LG_SETTING_STRING, "markdown", 1, 32, 0,
	  "default separators preset: markdown, html, text, python or latex" },
	{ "vectors_max_bytes", LG_SETTING_SIZE, "1G", 1048576, 1099511627776.0, 0,
	  "memory for the collections' vectors held for semantic search; the least "
	  "recently used collections are dropped beyond it" },
};

void rag_changed(struct rag *r, int64_t collection_id)
{
	rag_vectors_forget(r, collection_id);
}

/* ---- REST helpers ---- */

int rag_routes_add(struct rag *r, const struct rag_route *routes, size_t n)
{
	int rc;

	for (size_t i = 0; i < n; i++) {
		struct lg_route route = {
			.size = sizeof route, .method = routes[i].method, .path = routes[i].path,
			.policy = LG_POLICY_KEY, .max_body = routes[i].max_body,
			.fn = routes[i].fn,
		};

		rc = r->host->route_add(r->self, &route, r);
		if (rc < 0) {
			r->host->set_error(r->self, "cannot serve %s %s (%d)", routes[i].method,
					   routes[i].path, rc);
			return rc;
		}
	}
	return 0;
}

void rag_sql_reply(struct rag *r, struct lg_req *req, int status, const char *not_found,
		   const char *sql, int n, const char *const *params)
{
	struct api_json_reply *how = r->host->req_alloc(req, sizeof *how);

	if (!how) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	*how = (struct api_json_reply){
		.host = r->host, .self = r->self, .req = req, .status = status,
		.not_found = not_found,
	};
	api_query(r->host, r->self, req, sql, n, params, api_json_reply_cb, how);
}

struct empty_reply {
	struct rag *r;
	struct lg_req *req;
	const char *not_found;
	int64_t changed;
};

static void empty_reply_cb(const PGresult *res, const char *error, void *arg)
{
	struct empty_reply *e = arg;

	if (error) {
		api_db_failed(e->r->host, e->r->self, e->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) == 0) {
		e->r->host->reply_error(e->req, 404, "%s", e->not_found);
		return;
	}
	if (e->changed == RAG_CHANGED_FROM_ROW)
		rag_changed(e->r, strtoll(PQgetvalue(res, 0, 0), NULL, 10));
	else if (e->changed > 0)
		rag_changed(e->r, e->changed);
	api_reply_empty(e->r->host, e->req);
}

void rag_sql_empty(struct rag *r, struct lg_req *req, const char *not_found, int64_t changed,
		   const char *sql, int n, const char *const *params)
{
	struct empty_reply *e = r->host->req_alloc(req, sizeof *e);

	if (!e) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	*e = (struct empty_reply){ .r = r, .req = req, .not_found = not_found,
				   .changed = changed };
	api_query(r->host, r->self, req, sql, n, params, empty_reply_cb, e);
}

#define LIST_FILTERS_MAX 6

void rag_list_reply(struct rag *r, struct lg_req *req, const struct api_list *l,
		    const char *const *filters, int nfilters)
{
	const char *params[2 + LIST_FILTERS_MAX];
	char *sql;

	if (nfilters > LIST_FILTERS_MAX) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	sql = api_list_sql(r->host, req, l, filters, nfilters, params);
	if (sql)
		rag_sql_reply(r, req, 200, NULL, sql, 2 + nfilters, params);
}

const char *rag_user_text(struct rag *r, struct lg_req *req)
{
	const struct lg_principal *who = r->host->req_principal(req);

	if (!who) {
		r->host->reply_error(req, 401, "Invalid API key.");
		return NULL;
	}
	return api_id_text(r->host, req, who->user_id);
}

/* ---- lifecycle ---- */

static int read_settings(struct rag *r)
{
	const struct lg_host *h = r->host;

	if (h->cfg_str(r->self, "embeddings_model", &r->embeddings_model) < 0 ||
	    h->cfg_str(r->self, "language", &r->language) < 0 ||
	    h->cfg_u64(r->self, "max_file_size", &r->max_file_size) < 0 ||
	    h->cfg_int(r->self, "embed_batch", &r->embed_batch) < 0 ||
	    h->cfg_int(r->self, "chunk_size", &r->chunk_size) < 0 ||
	    h->cfg_int(r->self, "chunk_overlap", &r->chunk_overlap) < 0 ||
	    h->cfg_int(r->self, "chunk_min_size", &r->chunk_min_size) < 0 ||
	    h->cfg_str(r->self, "preset_separators", &r->preset_separators) < 0) {
		h->set_error(r->self, "cannot read the settings");
		return -EINVAL;
	}
	if (r->chunk_overlap >= r->chunk_size || r->chunk_min_size > r->chunk_size) {
		h->set_error(r->self, "chunk_overlap must be less than chunk_size, and "
			     "chunk_min_size at most chunk_size");
		return -EINVAL;
	}
	if (!rag_chunk_preset(r->preset_separators)) {
		h->set_error(r->self, "preset_separators: unknown preset '%s'",
			     r->preset_separators);
		return -EINVAL;
	}
	return 0;
}

static int register_all(struct rag *r)
{
	const struct lg_host *h = r->host;
	int rc;

	rc = rag_collections_register(r);
	if (rc == 0)
		rc = rag_documents_register(r);
	if (rc == 0)
		rc = rag_search_register(r);
	if (rc == 0) {
		rc = h->hook_add(r->self, LG_PHASE_PRE_UPSTREAM, rag_chat_hook,
				 CHAT_HOOK_PRIORITY, r);
		if (rc < 0)
			h->set_error(r->self, "cannot add the chat hook (%d)", rc);
	}
	if (rc == 0) {
		rc = h->db_listen(r->self, RAG_NOTIFY_CHANNEL, rag_vectors_notify, r);
		if (rc < 0)
			h->set_error(r->self, "cannot listen to %s (%d)", RAG_NOTIFY_CHANNEL, rc);
	}
	return rc;
}

static int rag_init(struct lg_plugin *self, const struct lg_host *host)
{
	struct rag *r = calloc(1, sizeof *r);
	int rc;

	if (!r) {
		host->set_error(self, "out of memory");
		return -ENOMEM;
	}
	r->host = host;
	r->self = self;
	/* libxml2 sets up its globals once, before any worker parses HTML. */
	xmlInitParser();
	rc = read_settings(r);
	if (rc == 0)
		rc = register_all(r);
	if (rc < 0) {
		free(r);
		return rc;
	}
	host->set_data(self, r);
	return 0;
}

/* The text search configuration must exist, or every upload would fail. */
static int check_language(struct rag *r)
{
	const char *param = r->language;
	PGresult *res = NULL;
	char err[256] = "";
	int rc;

	rc = r->host->db_query_sync(r->self, "SELECT $1::regconfig::text", 1, &param, &res,
				    err, sizeof err);
	PQclear(res);
	if (rc < 0 && strstr(err, "text search configuration")) {
		r->host->set_error(r->self, "language: PostgreSQL has no text search "
				   "configuration '%s'", r->language);
		return -EINVAL;
	}
	if (rc < 0)
		r->host->log(r->self, LG_LOG_WARN, "cannot check the language setting: %s", err);
	return 0;
}

static int rag_start(struct lg_plugin *self, const struct lg_host *host)
{
	struct rag *r = host->get_data(self);
	int rc = check_language(r);

	if (rc == 0)
		rc = rag_vectors_start(r);
	return rc;
}

static void rag_stop(struct lg_plugin *self, const struct lg_host *host)
{
	struct rag *r = host->get_data(self);

	if (r)
		rag_vectors_stop(r);
}

static void rag_fini(struct lg_plugin *self, const struct lg_host *host)
{
	free(host->get_data(self));
	host->set_data(self, NULL);
}

LG_PLUGIN(.name = "rag", .version = "0.1.0",
	  .description = "RAG: collections, documents, chunking and search in PostgreSQL",
	  .migrations = rag_migrations, .settings = rag_settings,
	  .n_settings = LG_COUNT(rag_settings), .init = rag_init, .start = rag_start,
	  .stop = rag_stop, .fini = rag_fini);
