/* SPDX-License-Identifier: Apache-2.0 */
/* rag: POST /v1/search (spec §10.4), also used by the chat "search" tool.
 *
 * - semantic: the query is embedded with the plugin's model, then compared
 *   with every vector of the collections (exact cosine, vectors.c), on the
 *   work pool when there are many; a bounded heap keeps the best. Metadata
 *   filters are checked in SQL on those candidates, and the candidate list
 *   grows when too few pass.
 * - lexical: PostgreSQL ranks with ts_rank_cd over the GIN-indexed tsv; the
 *   query's words are OR-ed (plainto_tsquery's AND would drop every chunk
 *   that misses one word of a question). Filters are in the SQL.
 * - hybrid: both with twice the candidates, fused by reciprocal rank:
 *   score = sum of 1 / (rff_k + rank + 1), rank from 0.
 * The chunks of the final page are read in one query at the end.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/api.h"
#include "rag.h"

#define SEARCH_QUERY_MAX 65536          /* characters */
#define SEARCH_LIMIT_MAX 100
#define SEARCH_OFFSET_MAX 10000
#define SEARCH_RFF_K_MAX 16384
#define SEARCH_RFF_K_DEFAULT 60
#define SEARCH_POOL_VECTORS 20000       /* more than this: scan on the work pool */
#define SEARCH_WIDEN 4                  /* candidates grow by this factor */
#define SEARCH_FILTERS_MIN 2
#define SEARCH_FILTERS_MAX 4
#define SEARCH_SQL_MAX 4096
#define SEARCH_PARAMS_MAX 16

static const char *const method_names[] = { "semantic", "lexical", "hybrid", NULL };

struct hit {
	int64_t chunk_id;
	double score;
};

typedef void (*search_done_fn)(void *arg, int status, const char *error, const char *data,
			       int64_t prompt_tokens);

struct search {
	struct rag *r;
	struct lg_req *req;
	struct rag_search_args a;
	json_t *filters;                /* a reference, or NULL */
	char user_id[24];
	char *collections_text;         /* "{1,2}" of the readable collections */
	int64_t *collections;
	size_t ncollections;
	/* semantic */
	float *query;
	size_t dim;
	int64_t prompt_tokens;
	struct rag_snap **snaps;
	size_t nsnaps, loading, nvectors;
	char snap_error[256];
	size_t want;                    /* candidates asked of the scan */
	struct hit *sem;
	size_t nsem;
	bool sem_exhausted;             /* the scan found fewer than wanted */
	struct hit *passed;             /* candidates that passed the filters */
	size_t npassed;
	/* lexical */
	struct hit *lex;
	size_t nlex;
	/* the page */
	struct hit *page;
	size_t npage;
	search_done_fn done;
	void *arg;
};

/* ==== reading the body ==== */

static bool read_ids(struct rag *r, struct lg_req *req, const json_t *body, const char *key,
		     int64_t *out, size_t *n)
{
	const json_t *list = json_object_get(body, key), *v;
	size_t i;

	*n = 0;
	if (!list || json_is_null(list))
		return true;
	if (!json_is_array(list) || json_array_size(list) > RAG_MAX_IDS) {
		r->host->reply_error(req, 422, "%s: a list of at most %d ids is required", key,
				     RAG_MAX_IDS);
		return false;
	}
	json_array_foreach(list, i, v) {
		if (!json_is_integer(v) || json_integer_value(v) <= 0) {
			r->host->reply_error(req, 422, "%s: ids are positive integers", key);
			return false;
		}
		out[(*n)++] = json_integer_value(v);
	}
	return true;
}

static bool filter_valid(const json_t *f, char *why, size_t whylen)
{
	const json_t *key = json_object_get(f, "key"), *type = json_object_get(f, "type");
	const json_t *value = json_object_get(f, "value");
	const char *t = json_string_value(type);

	if (!json_is_object(f) || !json_is_string(key) || json_string_length(key) == 0 ||
	    json_string_length(key) > 255) {
		snprintf(why, whylen, "metadata_filters: key must be a string of 1 to 255 characters");
		return false;
	}
	if (!t || (strcmp(t, "eq") && strcmp(t, "sw") && strcmp(t, "ew") && strcmp(t, "co"))) {
		snprintf(why, whylen, "metadata_filters: type must be eq, sw, ew or co");
		return false;
	}
	if (!value || !(json_is_string(value) || json_is_number(value) || json_is_boolean(value))) {
		snprintf(why, whylen, "metadata_filters: value must be a string, number or boolean");
		return false;
	}
	if (strcmp(t, "eq") && !json_is_string(value)) {
		snprintf(why, whylen, "metadata_filters: sw, ew and co compare strings");
		return false;
	}
	return true;
}

/* {key, type, value} or {filters: [2-4 of them], operator: and|or}. */
static bool filters_valid(const json_t *mf, char *why, size_t whylen)
{
	const json_t *list = json_object_get(mf, "filters"), *f;
	const char *op = json_string_value(json_object_get(mf, "operator"));
	size_t i;

	if (!json_is_object(mf)) {
		snprintf(why, whylen, "metadata_filters: an object is required");
		return false;
	}
	if (!list)
		return filter_valid(mf, why, whylen);
	if (!json_is_array(list) || json_array_size(list) < SEARCH_FILTERS_MIN ||
	    json_array_size(list) > SEARCH_FILTERS_MAX) {
		snprintf(why, whylen, "metadata_filters: filters must hold 2 to 4 filters");
		return false;
	}
	if (!op || (strcmp(op, "and") && strcmp(op, "or"))) {
		snprintf(why, whylen, "metadata_filters: operator must be and or or");
		return false;
	}
	json_array_foreach(list, i, f)
		if (!filter_valid(f, why, whylen))
			return false;
	return true;
}

static bool read_method(struct rag *r, struct lg_req *req, const json_t *body,
			enum rag_method *out)
{
	const json_t *m = json_object_get(body, "method");

	*out = RAG_SEMANTIC;
	if (!m || json_is_null(m))
		return true;
	for (size_t i = 0; json_is_string(m) && method_names[i]; i++)
		if (strcmp(json_string_value(m), method_names[i]) == 0) {
			*out = (enum rag_method)i;
			return true;
		}
	r->host->reply_error(req, 422, "method: must be semantic, lexical or hybrid");
	return false;
}

bool rag_search_args_read(struct rag *r, struct lg_req *req, const json_t *body,
			  struct rag_search_args *out)
{
	const struct lg_host *h = r->host;
	const json_t *mf = json_object_get(body, "metadata_filters");
	bool present = false;
	char why[128];

	memset(out, 0, sizeof *out);
	if (!api_str(h, req, body, "query", API_OPTIONAL, 1, SEARCH_QUERY_MAX, &out->query))
		return false;
	if (!out->query && !api_str(h, req, body, "prompt", API_REQUIRED, 1, SEARCH_QUERY_MAX,
				    &out->query))
		return false;
	if (!read_ids(r, req, body, "collection_ids", out->collection_ids, &out->ncollections) ||
	    !read_ids(r, req, body, "document_ids", out->document_ids, &out->ndocuments) ||
	    !read_method(r, req, body, &out->method))
		return false;
	if (!api_int(h, req, body, "limit", API_OPTIONAL, 1, SEARCH_LIMIT_MAX, &present,
		     &out->limit))
		return false;
	if (!present)
		out->limit = 10;
	if (!api_int(h, req, body, "offset", API_OPTIONAL, 0, SEARCH_OFFSET_MAX, &present,
		     &out->offset))
		return false;
	if (!present)
		out->offset = 0;
	if (!api_int(h, req, body, "rff_k", API_OPTIONAL, 0, SEARCH_RFF_K_MAX, &present,
		     &out->rff_k))
		return false;
	if (!present)
		out->rff_k = SEARCH_RFF_K_DEFAULT;
	if (!api_num(h, req, body, "score_threshold", API_OPTIONAL, 0, 1, &present,
		     &out->score_threshold))
		return false;
	if (!present)
		out->score_threshold = 0;
	if (out->score_threshold > 0 && out->method != RAG_SEMANTIC) {
		h->reply_error(req, 422, "score_threshold: only valid with the semantic method");
		return false;
	}
	if (mf && !json_is_null(mf)) {
		if (!filters_valid(mf, why, sizeof why)) {
			h->reply_error(req, 422, "%s", why);
			return false;
		}
		out->metadata_filters = mf;
	}
	return true;
}

/* ==== SQL pieces ==== */

struct sqlb {
	char sql[SEARCH_SQL_MAX];
	size_t len;
	const char *params[SEARCH_PARAMS_MAX];
	int n;
	bool failed;
};

static void sqlb_add(struct sqlb *b, const char *fmt, ...) LG_PRINTF(2, 3);
static void sqlb_add(struct sqlb *b, const char *fmt, ...)
{
	va_list ap;
	int w;

	va_start(ap, fmt);
	w = vsnprintf(b->sql + b->len, sizeof b->sql - b->len, fmt, ap);
	va_end(ap);
	if (w < 0 || (size_t)w >= sizeof b->sql - b->len)
		b->failed = true;
	else
		b->len += (size_t)w;
}

/* The number of a new parameter ($n), or 0. */
static int sqlb_param(struct sqlb *b, const char *value)
{
	if (!value || b->n == SEARCH_PARAMS_MAX) {
		b->failed = true;
		return 0;
	}
	b->params[b->n++] = value;
	return b->n;
}

/* @s with LIKE's wildcards escaped, between @pre and @post, in the
 * request's memory. */
static char *like_pattern(struct search *s, const char *v, const char *pre, const char *post)
{
	size_t len = strlen(v);
	char *out = s->r->host->req_alloc(s->req, 2 * len + 3), *p = out;

	if (!out)
		return NULL;
	p += sprintf(p, "%s", pre);
	for (size_t i = 0; i < len; i++) {
		if (v[i] == '\\' || v[i] == '%' || v[i] == '_')
			*p++ = '\\';
		*p++ = v[i];
	}
	sprintf(p, "%s", post);
	return out;
}

static char *req_strdup_json(struct search *s, const json_t *v)
{
	char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
	char *out = NULL;

	if (text) {
		out = s->r->host->req_alloc(s->req, strlen(text) + 1);
		if (out)
			strcpy(out, text);
	}
	free(text);
	return out;
}

/* One filter on chunk "ch": eq compares JSON values (also an element of a
 * list); sw, ew and co compare strings. */
static void sql_filter(struct search *s, struct sqlb *b, const json_t *f)
{
	const char *type = json_string_value(json_object_get(f, "type"));
	const json_t *value = json_object_get(f, "value");
	int k = sqlb_param(b, json_string_value(json_object_get(f, "key")));

	if (strcmp(type, "eq") == 0) {
		int v = sqlb_param(b, req_strdup_json(s, value));

		sqlb_add(b, "(ch.metadata -> $%d = $%d::jsonb OR (jsonb_typeof(ch.metadata -> $%d) = "
			 "'array' AND ch.metadata -> $%d @> jsonb_build_array($%d::jsonb)))",
			 k, v, k, k, v);
		return;
	}
	const char *str = json_string_value(value);
	const char *pattern = strcmp(type, "sw") == 0 ? like_pattern(s, str, "", "%") :
			      strcmp(type, "ew") == 0 ? like_pattern(s, str, "%", "") :
			      like_pattern(s, str, "%", "%");

	sqlb_add(b, "(ch.metadata ->> $%d LIKE $%d)", k, sqlb_param(b, pattern));
}

static void sql_filters(struct search *s, struct sqlb *b)
{
	const json_t *mf = s->filters, *list, *f;
	size_t i;

	if (!mf)
		return;
	list = json_object_get(mf, "filters");
	sqlb_add(b, " AND (");
	if (!list) {
		sql_filter(s, b, mf);
	} else {
		const char *op = strcmp(json_string_value(json_object_get(mf, "operator")),
					"and") == 0 ? " AND " : " OR ";

		json_array_foreach(list, i, f) {
			if (i)
				sqlb_add(b, "%s", op);
			sql_filter(s, b, f);
		}
	}
	sqlb_add(b, ")");
}

/* "{1,2,3}" in the request's memory. */
static char *ids_text(struct search *s, const int64_t *ids, size_t n)
{
	char *out = s->r->host->req_alloc(s->req, n * 21 + 3), *p = out;

	if (!out)
		return NULL;
	*p++ = '{';
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%s%" PRId64, i ? "," : "", ids[i]);
	strcpy(p, "}");
	return out;
}

static char *hit_ids_text(struct search *s, const struct hit *h, size_t n)
{
	int64_t *ids = s->r->host->req_alloc(s->req, (n ? n : 1) * sizeof *ids);

	if (!ids)
		return NULL;
	for (size_t i = 0; i < n; i++)
		ids[i] = h[i].chunk_id;
	return ids_text(s, ids, n);
}

/* ==== the end of a search ==== */

static void search_free(struct search *s)
{
	for (size_t i = 0; i < s->nsnaps; i++)
		rag_snap_release(s->snaps[i]);
	free(s->snaps);
	free(s->query);
	free(s->sem);
	free(s->passed);
	free(s->lex);
	free(s->page);
	json_decref(s->filters);
	free(s);
}

static void search_fail(struct search *s, int status, const char *error)
{
	s->done(s->arg, status, error, NULL, 0);
	search_free(s);
}

static void search_db_fail(struct search *s, const char *error)
{
	s->r->host->log(s->r->self, LG_LOG_ERROR, "search: %s", error);
	search_fail(s, api_db_unreachable(error) ? 503 : 500,
		    api_db_unreachable(error) ? API_DB_UNAVAILABLE : API_INTERNAL_ERROR);
}

static json_t *result_json(const struct search *s, const struct hit *h, const char *chunk)
{
	json_t *c = json_loads(chunk, 0, NULL);

	if (!c)
		return NULL;
	return json_pack("{s:s, s:f, s:o}", "method", method_names[s->a.method], "score",
			 h->score, "chunk", c);
}

static void page_read(const PGresult *res, const char *error, void *arg)
{
	struct search *s = arg;
	json_t *data = json_array();
	char *text = NULL;
	int rows = res ? PQntuples(res) : 0;

	if (error) {
		json_decref(data);
		search_db_fail(s, error);
		return;
	}
	/* The page's order, not the query's; a chunk deleted since the
	 * scan is left out. */
	for (size_t i = 0; data && i < s->npage; i++)
		for (int row = 0; row < rows; row++) {
			if (strtoll(PQgetvalue(res, row, 0), NULL, 10) != s->page[i].chunk_id)
				continue;
			if (json_array_append_new(data, result_json(s, &s->page[i],
								    PQgetvalue(res, row, 1))) < 0) {
				json_decref(data);
				data = NULL;
			}
			break;
		}
	text = data ? json_dumps(data, JSON_COMPACT) : NULL;
	json_decref(data);
	if (!text) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	s->done(s->arg, 200, NULL, text, s->prompt_tokens);
	free(text);
	search_free(s);
}

#define CHUNK_JSON \
	"json_build_object('object', 'chunk', 'id', ch.id, 'collection_id', ch.collection_id, " \
	"'document_id', ch.document_id, 'content', ch.content, 'metadata', ch.metadata, " \
	"'created', extract(epoch FROM ch.created)::bigint)::text"

static const char page_sql[] =
	"SELECT ch.id, " CHUNK_JSON " FROM chunk ch WHERE ch.id = ANY($1::bigint[])";

/* @hits (sorted best first, owned by @s) minus the offset become the page. */
static void search_page(struct search *s, struct hit *hits, size_t n)
{
	size_t from = (size_t)s->a.offset < n ? (size_t)s->a.offset : n;
	size_t count = n - from < (size_t)s->a.limit ? n - from : (size_t)s->a.limit;
	const char *params[1];

	s->page = malloc((count ? count : 1) * sizeof *s->page);
	if (!s->page) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	memcpy(s->page, hits + from, count * sizeof *hits);
	s->npage = count;
	if (count == 0) {
		page_read(NULL, NULL, s);
		return;
	}
	params[0] = hit_ids_text(s, s->page, count);
	if (!params[0] || s->r->host->db_query(s->r->self, page_sql, 1, params, page_read, s) < 0)
		search_fail(s, 503, API_DB_UNAVAILABLE);
}

/* ==== fusion ==== */

static int hit_cmp(const void *a, const void *b)
{
	const struct hit *x = a, *y = b;

	if (x->score != y->score)
		return x->score < y->score ? 1 : -1;
	return x->chunk_id < y->chunk_id ? -1 : x->chunk_id > y->chunk_id;
}

/* Reciprocal rank fusion of the semantic and lexical lists. */
static void search_fuse(struct search *s)
{
	size_t n = 0;
	struct hit *all = malloc((s->npassed + s->nlex + 1) * sizeof *all);
	const struct hit *lists[2] = { s->passed, s->lex };
	size_t sizes[2] = { s->npassed, s->nlex };

	if (!all) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	for (int l = 0; l < 2; l++)
		for (size_t rank = 0; rank < sizes[l]; rank++) {
			double add = 1.0 / ((double)s->a.rff_k + (double)rank + 1.0);
			size_t j;

			for (j = 0; j < n && all[j].chunk_id != lists[l][rank].chunk_id; j++)
				;
			if (j == n)
				all[n++] = (struct hit){ lists[l][rank].chunk_id, 0 };
			all[j].score += add;
		}
	qsort(all, n, sizeof *all, hit_cmp);
	free(s->sem);
	s->sem = all;           /* owned from here on */
	s->nsem = n;
	search_page(s, all, n);
}

/* ==== lexical ==== */

static void semantic_begin(struct search *s);

static void lexical_read(const PGresult *res, const char *error, void *arg)
{
	struct search *s = arg;
	int rows;

	if (error) {
		search_db_fail(s, error);
		return;
	}
	rows = PQntuples(res);
	s->lex = malloc(((size_t)rows + 1) * sizeof *s->lex);
	if (!s->lex) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	for (int i = 0; i < rows; i++)
		s->lex[i] = (struct hit){ strtoll(PQgetvalue(res, i, 0), NULL, 10),
					  strtod(PQgetvalue(res, i, 1), NULL) };
	s->nlex = (size_t)rows;
	if (s->a.method == RAG_LEXICAL)
		search_page(s, s->lex, s->nlex);
	else
		semantic_begin(s);
}

static size_t search_candidates(const struct search *s)
{
	size_t k = (size_t)(s->a.limit + s->a.offset);

	return s->a.method == RAG_HYBRID ? 2 * k : k;
}

static void lexical_begin(struct search *s)
{
	struct sqlb *b = s->r->host->req_alloc(s->req, sizeof *b);
	char *limit = api_printf(s->r->host, s->req, "%zu", search_candidates(s));

	if (!b || !limit) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	sqlb_param(b, s->collections_text);
	sqlb_param(b, s->a.query);
	sqlb_param(b, s->r->language ? s->r->language : "english");
	sqlb_param(b, limit);
	sqlb_add(b, "SELECT ch.id, ts_rank_cd(ch.tsv, q.q, 32) AS score FROM chunk ch, "
		 "(SELECT to_tsquery($3::regconfig, replace(plainto_tsquery($3::regconfig, $2)"
		 "::text, ' & ', ' | ')) AS q) q "
		 "WHERE ch.collection_id = ANY($1::bigint[]) AND ch.tsv @@ q.q");
	if (s->a.ndocuments)
		sqlb_add(b, " AND ch.document_id = ANY($%d::bigint[])",
			 sqlb_param(b, ids_text(s, s->a.document_ids, s->a.ndocuments)));
	sql_filters(s, b);
	sqlb_add(b, " ORDER BY score DESC, ch.id LIMIT $4::bigint");
	if (b->failed) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	if (s->r->host->db_query(s->r->self, b->sql, b->n, b->params, lexical_read, s) < 0)
		search_fail(s, 503, API_DB_UNAVAILABLE);
}

/* ==== semantic: the scan ==== */

static bool document_wanted(const struct search *s, int64_t id)
{
	if (!s->a.ndocuments)
		return true;
	for (size_t i = 0; i < s->a.ndocuments; i++)
		if (s->a.document_ids[i] == id)
			return true;
	return false;
}

/* A min-heap of the best @cap hits: heap[0] is the worst kept. */
static void heap_push(struct hit *heap, size_t *n, size_t cap, struct hit h)
{
	size_t i;

	if (*n == cap) {
		if (hit_cmp(&h, &heap[0]) >= 0)
			return;
		i = 0;
		/* sift down the new root */
		for (;;) {
			size_t l = 2 * i + 1, r = l + 1, worst = i;
			const struct hit *wh = &h;

			if (l < *n && hit_cmp(&heap[l], wh) > 0)
				worst = l, wh = &heap[l];
			if (r < *n && hit_cmp(&heap[r], wh) > 0)
				worst = r;
			if (worst == i)
				break;
			heap[i] = heap[worst];
			i = worst;
		}
		heap[i] = h;
		return;
	}
	i = (*n)++;
	while (i > 0 && hit_cmp(&heap[(i - 1) / 2], &h) < 0) {
		heap[i] = heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	heap[i] = h;
}

static float dot(const float *a, const float *b, size_t dim)
{
	float sum = 0;

	for (size_t i = 0; i < dim; i++)
		sum += a[i] * b[i];
	return sum;
}

/* Any thread: the best s->want vectors, sorted, in s->sem. */
static void scan_work(void *arg)
{
	struct search *s = arg;
	size_t n = 0;

	free(s->sem);
	s->sem = malloc((s->want ? s->want : 1) * sizeof *s->sem);
	s->nsem = 0;
	if (!s->sem)
		return;
	for (size_t c = 0; c < s->nsnaps; c++) {
		const struct rag_snap *sn = s->snaps[c];

		if (sn->dim != s->dim)
			continue;
		for (size_t i = 0; i < sn->n; i++) {
			double score;

			if (!document_wanted(s, sn->document_ids[i]))
				continue;
			score = dot(s->query, sn->vectors + i * sn->dim, sn->dim);
			if (score < s->a.score_threshold)
				continue;
			heap_push(s->sem, &n, s->want, (struct hit){ sn->chunk_ids[i], score });
		}
	}
	qsort(s->sem, n, sizeof *s->sem, hit_cmp);
	s->nsem = n;
	s->sem_exhausted = n < s->want;
}

static void filter_begin(struct search *s);

static void scan_done(void *arg)
{
	struct search *s = arg;

	if (!s->sem) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	filter_begin(s);
}

static void scan_start(struct search *s)
{
	if (s->nvectors > SEARCH_POOL_VECTORS &&
	    s->r->host->work_submit(s->r->self, scan_work, scan_done, s) == 0)
		return;
	scan_work(s);
	scan_done(s);
}

static void semantic_end(struct search *s)
{
	if (s->a.method == RAG_HYBRID)
		search_fuse(s);
	else
		search_page(s, s->passed, s->npassed);
}

static int id_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return x < y ? -1 : x > y;
}

static void filter_read(const PGresult *res, const char *error, void *arg)
{
	struct search *s = arg;
	int64_t *ids;
	int rows;
	size_t k = 0;

	if (error) {
		search_db_fail(s, error);
		return;
	}
	rows = PQntuples(res);
	free(s->passed);
	s->passed = malloc((s->nsem + 1) * sizeof *s->passed);
	ids = malloc(((size_t)rows + 1) * sizeof *ids);
	if (!s->passed || !ids) {
		free(ids);
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	/* In the scan's order: the ids that came back passed (the list may
	 * have grown to many thousands: sorted, then searched). */
	for (int row = 0; row < rows; row++)
		ids[row] = strtoll(PQgetvalue(res, row, 0), NULL, 10);
	qsort(ids, (size_t)rows, sizeof *ids, id_cmp);
	for (size_t i = 0; i < s->nsem; i++)
		if (bsearch(&s->sem[i].chunk_id, ids, (size_t)rows, sizeof *ids, id_cmp))
			s->passed[k++] = s->sem[i];
	free(ids);
	s->npassed = k;
	if (k < search_candidates(s) && !s->sem_exhausted && s->want < s->nvectors) {
		s->want *= SEARCH_WIDEN;
		scan_start(s);
		return;
	}
	semantic_end(s);
}

/* Metadata filters on the scan's candidates, in SQL. */
static void filter_begin(struct search *s)
{
	struct sqlb *b;

	if (!s->filters) {
		free(s->passed);
		s->passed = malloc((s->nsem + 1) * sizeof *s->passed);
		if (!s->passed) {
			search_fail(s, 500, API_INTERNAL_ERROR);
			return;
		}
		memcpy(s->passed, s->sem, s->nsem * sizeof *s->sem);
		s->npassed = s->nsem;
		semantic_end(s);
		return;
	}
	b = s->r->host->req_alloc(s->req, sizeof *b);
	if (!b) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	sqlb_add(b, "SELECT ch.id FROM chunk ch WHERE ch.id = ANY($%d::bigint[])",
		 sqlb_param(b, hit_ids_text(s, s->sem, s->nsem)));
	sql_filters(s, b);
	if (b->failed) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	if (s->r->host->db_query(s->r->self, b->sql, b->n, b->params, filter_read, s) < 0)
		search_fail(s, 503, API_DB_UNAVAILABLE);
}

/* ==== semantic: the vectors ==== */

static void snaps_ready(struct search *s)
{
	if (s->snap_error[0]) {
		search_fail(s, 500, s->snap_error);
		return;
	}
	s->nvectors = 0;
	for (size_t i = 0; i < s->nsnaps; i++)
		s->nvectors += s->snaps[i]->n;
	s->want = search_candidates(s);
	if (s->filters)
		s->want *= SEARCH_WIDEN;
	scan_start(s);
}

static void snap_loaded(void *arg, struct rag_snap *snap, const char *error)
{
	struct search *s = arg;

	if (snap)
		s->snaps[s->nsnaps++] = snap;
	else if (!s->snap_error[0])
		snprintf(s->snap_error, sizeof s->snap_error, "%s", error ? error :
			 API_INTERNAL_ERROR);
	if (--s->loading == 0)
		snaps_ready(s);
}

static void snaps_get(struct search *s)
{
	s->snaps = calloc(s->ncollections + 1, sizeof *s->snaps);
	if (!s->snaps) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	/* One count for this loop, so that loads finishing early do not
	 * end it. */
	s->loading = 1;
	for (size_t i = 0; i < s->ncollections; i++) {
		struct rag_snap *snap = NULL;
		int rc = rag_vectors_get(s->r, s->collections[i], &snap, snap_loaded, s);

		if (rc == 1)
			s->snaps[s->nsnaps++] = snap;
		else if (rc == 0)
			s->loading++;
		else if (!s->snap_error[0])
			snprintf(s->snap_error, sizeof s->snap_error, "%s", API_INTERNAL_ERROR);
	}
	if (--s->loading == 0)
		snaps_ready(s);
}

static void query_embedded(void *arg, int status, const char *error, const float *vectors,
			   size_t n, size_t dim, int64_t prompt_tokens)
{
	struct search *s = arg;

	(void)n;
	if (status != 200) {
		search_fail(s, status, error ? error : API_INTERNAL_ERROR);
		return;
	}
	s->prompt_tokens = prompt_tokens;
	s->dim = dim;
	s->query = malloc(dim * sizeof *s->query);
	if (!s->query) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	/* Stored vectors are of length 1; the query's length does not
	 * change the order, but the score threshold needs a cosine. */
	{
		double norm = 0;

		for (size_t i = 0; i < dim; i++)
			norm += (double)vectors[i] * vectors[i];
		norm = norm > 0 ? sqrt(norm) : 1;
		for (size_t i = 0; i < dim; i++)
			s->query[i] = (float)(vectors[i] / norm);
	}
	snaps_get(s);
}

static void semantic_begin(struct search *s)
{
	int rc;

	if (s->ncollections == 0) {
		semantic_end(s);
		return;
	}
	rc = rag_embed_usage(s->r, s->req ? s->r->host->req_principal(s->req) : NULL,
			     &s->a.query, 1, query_embedded, s);
	if (rc == -ENOSYS)
		search_fail(s, 503, "Semantic search is not available: no embeddings model.");
	else if (rc < 0)
		search_fail(s, 503, "Embeddings failed: the call could not be made.");
}

/* ==== collections ==== */

static void collections_read(const PGresult *res, const char *error, void *arg)
{
	struct search *s = arg;
	int rows;

	if (error) {
		search_db_fail(s, error);
		return;
	}
	rows = PQntuples(res);
	for (size_t i = 0; i < s->a.ncollections; i++) {
		bool found = false;

		for (int row = 0; row < rows && !found; row++)
			found = strtoll(PQgetvalue(res, row, 0), NULL, 10) == s->a.collection_ids[i];
		if (!found) {
			char msg[64];

			snprintf(msg, sizeof msg, "Collection %" PRId64 " not found.",
				 s->a.collection_ids[i]);
			search_fail(s, 404, msg);
			return;
		}
	}
	s->collections = s->r->host->req_alloc(s->req, ((size_t)rows + 1) * sizeof(int64_t));
	if (!s->collections) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	for (int row = 0; row < rows; row++)
		s->collections[row] = strtoll(PQgetvalue(res, row, 0), NULL, 10);
	s->ncollections = (size_t)rows;
	s->collections_text = ids_text(s, s->collections, s->ncollections);
	if (!s->collections_text) {
		search_fail(s, 500, API_INTERNAL_ERROR);
		return;
	}
	if (s->a.method == RAG_SEMANTIC)
		semantic_begin(s);
	else
		lexical_begin(s);
}

/* No collection_ids: every collection the caller can read. */
static const char collections_sql[] =
	"SELECT c.id FROM collection c WHERE ($2::bigint[] = '{}' OR c.id = ANY($2::bigint[])) "
	"AND " RAG_READABLE_SQL " ORDER BY c.id";

static int search_begin(struct rag *r, struct lg_req *req, const struct rag_search_args *args,
			search_done_fn done, void *arg)
{
	const struct lg_principal *who = r->host->req_principal(req);
	struct search *s = calloc(1, sizeof *s);
	const char *params[2];

	if (!s)
		return -ENOMEM;
	*s = (struct search){ .r = r, .req = req, .a = *args, .done = done, .arg = arg };
	s->filters = json_incref((json_t *)args->metadata_filters);
	snprintf(s->user_id, sizeof s->user_id, "%" PRId64, who ? who->user_id : -1);
	params[0] = s->user_id;
	params[1] = ids_text(s, args->collection_ids, args->ncollections);
	if (!params[1] ||
	    r->host->db_query(r->self, collections_sql, 2, params, collections_read, s) < 0) {
		json_decref(s->filters);
		free(s);
		return -EAGAIN;
	}
	return 0;
}

/* ==== rag_search() ==== */

struct plain {
	rag_search_fn done;
	void *arg;
};

static void plain_done(void *arg, int status, const char *error, const char *data,
		       int64_t prompt_tokens)
{
	struct plain *p = arg;

	(void)prompt_tokens;
	p->done(p->arg, status, error, data);
}

int rag_search(struct rag *r, struct lg_req *req, const struct rag_search_args *args,
	       rag_search_fn done, void *arg)
{
	struct plain *p = r->host->req_alloc(req, sizeof *p);

	if (!p)
		return -ENOMEM;
	*p = (struct plain){ .done = done, .arg = arg };
	return search_begin(r, req, args, plain_done, p);
}

/* ==== POST /v1/search ==== */

struct handler {
	struct rag *r;
	struct lg_req *req;
	json_t *body;   /* args point into it */
};

static void handler_done(void *arg, int status, const char *error, const char *data,
			 int64_t prompt_tokens)
{
	struct handler *hd = arg;
	const struct lg_host *h = hd->r->host;
	char *reply;

	json_decref(hd->body);
	if (status != 200) {
		h->reply_error(hd->req, status, "%s", error);
		return;
	}
	reply = api_printf(h, hd->req, "{\"object\":\"list\",\"data\":%s,\"usage\":"
			   "{\"prompt_tokens\":%" PRId64 ",\"completion_tokens\":0,"
			   "\"total_tokens\":%" PRId64 "}}", data, prompt_tokens, prompt_tokens);
	if (reply)
		api_reply_raw(h, hd->req, 200, reply);
}

static void search_route(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	struct handler *hd = r->host->req_alloc(req, sizeof *hd);
	struct rag_search_args *args = r->host->req_alloc(req, sizeof *args);
	json_t *body;

	if (!hd || !args) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	body = r->host->req_json(req);
	if (!body)
		return;
	if (!rag_search_args_read(r, req, body, args)) {
		json_decref(body);
		return;
	}
	*hd = (struct handler){ .r = r, .req = req, .body = body };
	if (search_begin(r, req, args, handler_done, hd) < 0) {
		json_decref(body);
		r->host->reply_error(req, 503, API_DB_UNAVAILABLE);
	}
}

int rag_search_register(struct rag *r)
{
	static const struct lg_route route = {
		.size = sizeof(struct lg_route), .method = "POST", .path = "/v1/search",
		.policy = LG_POLICY_KEY, .fn = search_route,
	};

	return r->host->route_add(r->self, &route, r);
}
