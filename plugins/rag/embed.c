/* SPDX-License-Identifier: Apache-2.0 */
/* rag: embeddings through the gateway's registry. Texts go to the
 * embeddings model r->embed_batch at a time, one batch after the other
 * (a document of a thousand chunks does not flood the provider), through
 * host->model_call on behalf of the caller, so that access rules, failover,
 * usage and cost apply as for a client's call. The vectors of every batch
 * land in one contiguous array handed to the caller at the end. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "rag.h"

#define EMBED_ENDPOINT "/v1/embeddings"
#define EMBED_DEFAULT_BATCH 32
#define EMBED_MAX_DIM 65536

struct embed_job {
	struct rag *r;
	struct lg_principal who;        /* a copy: the caller's may go first */
	bool has_who;
	const char *const *texts;       /* borrowed until done runs */
	size_t n, next, batch;
	float *vectors;                 /* n * dim, allocated with the first batch */
	size_t dim;
	int64_t prompt_tokens;
	rag_embed_usage_fn done;
	void *arg;
};

/* The client-facing reason of a failed embeddings reply: the gateway's own
 * error shape ({"detail": ...}) or OpenAI's ({"error": {"message"}}). */
static void embed_reply_error(struct lg_str body, char *why, size_t whylen)
{
	json_t *root = json_loadb(body.ptr, body.len, 0, NULL);
	const json_t *detail = json_object_get(root, "detail");
	const json_t *msg = json_object_get(json_object_get(root, "error"), "message");

	if (json_is_string(detail))
		snprintf(why, whylen, "%s", json_string_value(detail));
	else if (json_is_string(msg))
		snprintf(why, whylen, "%s", json_string_value(msg));
	else
		snprintf(why, whylen, "the embeddings model gave no reason");
	json_decref(root);
}

static int embed_one(const json_t *emb, float *out, size_t dim, char *why, size_t whylen)
{
	const json_t *v;
	size_t i;

	if (json_array_size(emb) != dim) {
		snprintf(why, whylen, "embeddings of different dimensions (%zu and %zu)",
			 json_array_size(emb), dim);
		return -EINVAL;
	}
	json_array_foreach(emb, i, v) {
		if (!json_is_number(v)) {
			snprintf(why, whylen, "an embedding holds something else than numbers");
			return -EINVAL;
		}
		out[i] = (float)json_number_value(v);
	}
	return 0;
}

/*
 * rag_embed_parse() - the "data" of an embeddings reply into @out (@n
 * vectors of *@dim floats, in "index" order). *@dim is 0 when not known
 * yet: the first vector sets it. Every index 0..n-1 must come exactly once.
 */
int rag_embed_parse(const char *body, size_t len, size_t n, float **out, size_t *dim,
		    int64_t *prompt_tokens, char *why, size_t whylen)
{
	json_t *root = json_loadb(body, len, 0, NULL);
	const json_t *data = json_object_get(root, "data"), *item;
	const json_t *tokens = json_object_get(json_object_get(root, "usage"), "prompt_tokens");
	bool *seen = NULL;
	size_t i;
	int rc = -EINVAL;

	if (!json_is_array(data) || json_array_size(data) != n) {
		snprintf(why, whylen, "the embeddings reply does not hold %zu vectors", n);
		goto out;
	}
	seen = calloc(n ? n : 1, sizeof *seen);
	if (!seen) {
		rc = -ENOMEM;
		goto out;
	}
	json_array_foreach(data, i, item) {
		const json_t *emb = json_object_get(item, "embedding");
		const json_t *index = json_object_get(item, "index");
		json_int_t at = json_is_integer(index) ? json_integer_value(index) : (json_int_t)i;

		rc = -EINVAL;
		if (at < 0 || (size_t)at >= n || seen[at]) {
			snprintf(why, whylen, "the embeddings reply has a bad index");
			goto out;
		}
		if (*dim == 0) {
			*dim = json_array_size(emb);
			if (*dim == 0 || *dim > EMBED_MAX_DIM) {
				snprintf(why, whylen, "the embeddings reply holds no vector");
				goto out;
			}
			*out = malloc(n * *dim * sizeof **out);
			if (!*out) {
				rc = -ENOMEM;
				goto out;
			}
		}
		rc = embed_one(emb, *out + (size_t)at * *dim, *dim, why, whylen);
		if (rc < 0)
			goto out;
		seen[at] = true;
	}
	if (prompt_tokens && json_is_integer(tokens))
		*prompt_tokens += json_integer_value(tokens);
	rc = 0;
out:
	free(seen);
	json_decref(root);
	return rc;
}

static void embed_job_finish(struct embed_job *job, int status, const char *error)
{
	job->done(job->arg, status, error, status == 200 ? job->vectors : NULL, job->n,
		  job->dim, job->prompt_tokens);
	free(job->vectors);
	free(job);
}

static int embed_send_batch(struct embed_job *job);

static void embed_batch_done(void *arg, int status, struct lg_str body, const char *error)
{
	struct embed_job *job = arg;
	size_t count = job->n - job->next < job->batch ? job->n - job->next : job->batch;
	float *batch = NULL;
	char why[256];
	int rc;

	if (status == 0) {
		job->r->host->log(job->r->self, LG_LOG_WARN, "embeddings call failed: %s",
				  error ? error : "no reason");
		embed_job_finish(job, 502, "Embeddings failed: the embeddings model cannot be reached.");
		return;
	}
	if (status != 200) {
		char msg[320];

		embed_reply_error(body, why, sizeof why);
		snprintf(msg, sizeof msg, "Embeddings failed: %s", why);
		embed_job_finish(job, status >= 400 && status < 600 ? status : 502, msg);
		return;
	}
	/* Each batch is parsed into its own array, then copied: the first
	 * batch fixes the dimension of all of them. */
	{
		size_t dim = 0;

		rc = rag_embed_parse(body.ptr, body.len, count, &batch, &dim, &job->prompt_tokens,
				     why, sizeof why);
		if (rc == 0 && job->dim && dim != job->dim) {
			snprintf(why, sizeof why, "embeddings of different dimensions (%zu and %zu)",
				 dim, job->dim);
			rc = -EINVAL;
		}
		if (rc == 0 && !job->vectors) {
			job->dim = dim;
			job->vectors = malloc(job->n * dim * sizeof *job->vectors);
			if (!job->vectors)
				rc = -ENOMEM;
		}
	}
	if (rc == 0)
		memcpy(job->vectors + job->next * job->dim, batch,
		       count * job->dim * sizeof *batch);
	free(batch);
	if (rc < 0) {
		char msg[320];

		snprintf(msg, sizeof msg, "Embeddings failed: %s",
			 rc == -ENOMEM ? "out of memory" : why);
		embed_job_finish(job, rc == -ENOMEM ? 500 : 502, msg);
		return;
	}
	job->next += count;
	if (job->next == job->n) {
		embed_job_finish(job, 200, NULL);
		return;
	}
	rc = embed_send_batch(job);
	if (rc < 0) {
		job->r->host->log(job->r->self, LG_LOG_ERROR, "embeddings call refused (%d)", rc);
		embed_job_finish(job, 503, "Embeddings failed: the call could not be made.");
	}
}

static int embed_send_batch(struct embed_job *job)
{
	const struct lg_host *h = job->r->host;
	size_t count = job->n - job->next < job->batch ? job->n - job->next : job->batch;
	json_t *body = json_pack("{s:s, s:[]}", "model", job->r->embeddings_model, "input");
	json_t *input = json_object_get(body, "input");
	char *text = NULL;
	int rc = -ENOMEM;

	if (!body)
		goto out;
	for (size_t i = 0; i < count; i++)
		if (json_array_append_new(input, json_string(job->texts[job->next + i])) < 0)
			goto out;
	text = json_dumps(body, JSON_COMPACT);
	if (!text)
		goto out;
	rc = h->model_call(job->r->self, &(struct lg_model_request){
				   .size = sizeof(struct lg_model_request),
				   .endpoint = EMBED_ENDPOINT,
				   .body = { text, strlen(text) },
				   .who = job->has_who ? &job->who : NULL,
			   }, embed_batch_done, job);
out:
	free(text);
	json_decref(body);
	return rc;
}

bool rag_embed_available(const struct rag *r)
{
	return LG_HOST_HAS(r->host, model_call) && r->host->model_call && r->embeddings_model;
}

int rag_embed_usage(struct rag *r, const struct lg_principal *who, const char *const *texts,
		    size_t n, rag_embed_usage_fn done, void *arg)
{
	struct embed_job *job;
	int rc;

	if (!rag_embed_available(r))
		return -ENOSYS;
	if (n == 0)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (!texts[i])
			return -EINVAL;
	job = calloc(1, sizeof *job);
	if (!job)
		return -ENOMEM;
	*job = (struct embed_job){
		.r = r, .texts = texts, .n = n, .done = done, .arg = arg,
		.batch = r->embed_batch > 0 ? (size_t)r->embed_batch : EMBED_DEFAULT_BATCH,
	};
	if (who) {
		job->who = *who;
		job->has_who = true;
	}
	rc = embed_send_batch(job);
	if (rc < 0)
		free(job);
	return rc;
}

/* rag_embed() without the token count. */
struct embed_plain {
	rag_embed_fn done;
	void *arg;
};

static void embed_plain_done(void *arg, int status, const char *error, const float *vectors,
			     size_t n, size_t dim, int64_t prompt_tokens)
{
	struct embed_plain *p = arg;

	(void)prompt_tokens;
	p->done(p->arg, status, error, vectors, n, dim);
	free(p);
}

int rag_embed(struct rag *r, const struct lg_principal *who, const char *const *texts,
	      size_t n, rag_embed_fn done, void *arg)
{
	struct embed_plain *p = malloc(sizeof *p);
	int rc;

	if (!p)
		return -ENOMEM;
	*p = (struct embed_plain){ .done = done, .arg = arg };
	rc = rag_embed_usage(r, who, texts, n, embed_plain_done, p);
	if (rc < 0)
		free(p);
	return rc;
}
