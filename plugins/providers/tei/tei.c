/* SPDX-License-Identifier: Apache-2.0 */
/* The "tei" provider type: Hugging Face text-embeddings-inference.
 *
 * Embeddings go to TEI's OpenAI-compatible /v1/embeddings unchanged; the
 * probe lists the model at /info. Rerank uses TEI's own route:
 *
 * - prepare() turns the client's {query, documents, top_n} into
 *   POST {url}/rerank {"query", "texts", "raw_scores": false,
 *   "return_text": false, "truncate": false, "truncation_direction":
 *   "right"}, as OpenGateLLM does. A document is a string or an object
 *   with a "text" string. top_n (absent, null, or >= 1) stays here: TEI
 *   has no such field.
 * - convert() turns TEI's [{"index", "score"}] into {"object": "list",
 *   "id", "model", "results": [{"index", "relevance_score"}]}, sorted by
 *   score, highest first (ties: lower index first), cut to top_n.
 *
 * Usage: TEI reports none, so the converted reply has no "usage" and the
 * host counts it the way it counts every provider that gives none (its
 * estimate over the query and the documents, marked as estimated in the
 * usage record, DESIGN §9), and adds it to the reply. A number made up
 * here would be recorded as if TEI had reported it. */
#include "../common/provider_common.h"

static const char *const tei_model_types[] = {
	"text-embeddings-inference", "text-classification", NULL,
};

/* What convert() needs from the request, kept by prepare(). */
struct tei_rerank {
	int64_t top_n;          /* 0: every result */
	size_t ndocs;
};

/* One scored document of TEI's reply. */
struct tei_result {
	int64_t index;
	double score;
};

/* A document's text: a string, or an object's "text" string; else NULL. */
static json_t *tei_document_text(json_t *doc)
{
	if (json_is_object(doc))
		doc = json_object_get(doc, "text");
	return json_is_string(doc) ? doc : NULL;
}

/* top_n: absent or null is every result (0); else an integer >= 1. */
static int tei_read_top_n(const json_t *body, int64_t *top_n)
{
	const json_t *v = json_object_get(body, "top_n");

	*top_n = 0;
	if (!v || json_is_null(v))
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 1)
		return -EINVAL;
	*top_n = json_integer_value(v);
	return 0;
}

/* The "texts" array of TEI's request. */
static int tei_texts(const json_t *docs, json_t **out)
{
	json_t *texts = json_array(), *doc;
	size_t i;

	if (!texts)
		return -ENOMEM;
	json_array_foreach(docs, i, doc) {
		json_t *text = tei_document_text(doc);

		if (!text) {
			json_decref(texts);
			return -EINVAL;
		}
		if (json_array_append(texts, text) < 0) {
			json_decref(texts);
			return -ENOMEM;
		}
	}
	*out = texts;
	return 0;
}

static int tei_prepare_rerank(struct lgp_ctx *ctx, struct lg_req *req,
			      const struct lg_provider_conf *p, struct lg_upstream_call *call)
{
	json_t *body = lgp_json_object(call->request.body), *texts = NULL, *tei = NULL;
	json_t *query = json_object_get(body, "query"), *docs = json_object_get(body, "documents");
	struct tei_rerank *st = ctx->host->req_alloc(req, sizeof *st);
	int rc = -EINVAL;

	if (!st) {
		rc = -ENOMEM;
		goto out;
	}
	if (!json_is_string(query) || !json_is_array(docs) || json_array_size(docs) == 0)
		goto out;
	st->ndocs = json_array_size(docs);
	rc = tei_read_top_n(body, &st->top_n);
	if (rc == 0)
		rc = tei_texts(docs, &texts);
	if (rc < 0)
		goto out;
	tei = json_pack("{s:O, s:O, s:b, s:b, s:b, s:s}", "query", query, "texts", texts,
			"raw_scores", 0, "return_text", 0, "truncate", 0,
			"truncation_direction", "right");
	rc = tei ? lgp_json_dump_req(ctx, req, tei, &call->request.body) : -ENOMEM;
	if (rc == 0)
		rc = lgp_set_path(ctx, req, p, call, "/rerank");
	if (rc == 0)
		ctx->host->req_set_data(req, ctx->self, st);
out:
	if (rc == -EINVAL)
		ctx->host->log(ctx->self, LG_LOG_DEBUG,
			       "rerank: the body needs \"query\" and \"documents\" (strings), "
			       "and top_n >= 1 or null");
	json_decref(tei);
	json_decref(texts);
	json_decref(body);
	return rc;
}

static int tei_prepare(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
		       struct lg_upstream_call *call)
{
	if (call->endpoint != LG_ENDPOINT_RERANK)
		return 0;
	return tei_prepare_rerank(ud, req, p, call);
}

/* Highest score first; equal scores keep the documents' order. */
static int tei_result_cmp(const void *a, const void *b)
{
	const struct tei_result *x = a, *y = b;

	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return (x->index > y->index) - (x->index < y->index);
}

/* Reads TEI's reply into @res (room for json_array_size(@reply) items). */
static int tei_read_results(const json_t *reply, const struct tei_rerank *st,
			    struct tei_result *res)
{
	const json_t *item;
	size_t i;

	json_array_foreach(reply, i, item) {
		const json_t *index = json_object_get(item, "index");
		const json_t *score = json_object_get(item, "score");

		if (!json_is_integer(index) || json_integer_value(index) < 0 ||
		    (st && (uint64_t)json_integer_value(index) >= st->ndocs) ||
		    !json_is_number(score))
			return -EPROTO;
		res[i] = (struct tei_result){ .index = json_integer_value(index),
					      .score = json_number_value(score) };
	}
	return 0;
}

static json_t *tei_results_json(const struct tei_result *res, size_t n)
{
	json_t *results = json_array();

	for (size_t i = 0; results && i < n; i++) {
		if (json_array_append_new(results,
					  json_pack("{s:I, s:f}", "index", (json_int_t)res[i].index,
						    "relevance_score", res[i].score)) < 0) {
			json_decref(results);
			results = NULL;
		}
	}
	return results;
}

static int tei_convert_rerank(struct lgp_ctx *ctx, struct lg_req *req,
			      const struct lg_provider_conf *p, struct lg_str in, struct lg_str *out)
{
	const struct tei_rerank *st = ctx->host->req_get_data(req, ctx->self);
	json_t *reply = json_loadb(in.ptr, in.len, 0, NULL), *results = NULL, *obj = NULL;
	struct tei_result *res;
	const char *id = ctx->host->req_id(req);
	size_t n;
	int rc = -EPROTO;

	if (!json_is_array(reply))
		goto out;
	n = json_array_size(reply);
	res = ctx->host->req_alloc(req, (n ? n : 1) * sizeof *res);
	rc = res ? tei_read_results(reply, st, res) : -ENOMEM;
	if (rc < 0)
		goto out;
	qsort(res, n, sizeof *res, tei_result_cmp);
	if (st && st->top_n > 0 && (uint64_t)st->top_n < n)
		n = (size_t)st->top_n;
	rc = -ENOMEM;
	results = tei_results_json(res, n);
	if (!results)
		goto out;
	obj = json_pack("{s:s, s:s, s:s, s:O}", "object", "list", "id", id ? id : "",
			"model", p->model_name ? p->model_name : "", "results", results);
	if (obj)
		rc = lgp_json_dump_req(ctx, req, obj, out);
out:
	if (rc == -EPROTO)
		ctx->host->log(ctx->self, LG_LOG_WARN,
			       "rerank: the reply is not a list of {index, score}");
	json_decref(obj);
	json_decref(results);
	json_decref(reply);
	return rc;
}

static int tei_convert(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
		       enum lg_endpoint endpoint, struct lg_str in, struct lg_str *out)
{
	if (endpoint != LG_ENDPOINT_RERANK) {
		*out = in;
		return 0;
	}
	return tei_convert_rerank(ud, req, p, in, out);
}

static const struct lg_provider_ops tei_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "tei",
	.model_types = tei_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) | LG_ENDPOINT_BIT(LG_ENDPOINT_RERANK),
	.models_path = "/info",
	.prepare = tei_prepare,
	.convert = tei_convert,
};

static int tei_init(struct lg_plugin *self, const struct lg_host *host)
{
	return lgp_init(self, host, &tei_ops);
}

LG_PLUGIN(.name = "tei", .version = "1.0.0",
	  .description = "provider type tei: Hugging Face text-embeddings-inference",
	  .init = tei_init, .fini = lgp_fini);
