/* SPDX-License-Identifier: Apache-2.0 */
/* GET /metrics: Prometheus text of the forwarded calls and of the ledger.
 *
 * Each worker counts its calls in its own shard (found by thread id in a
 * small table it claims once), under the shard's own mutex, which only a
 * scrape ever contends for: the request path takes no lock shared between
 * workers. A scrape merges the shards. A series is one (endpoint, model,
 * status) triple; its strings are copied once and live until fini, so a
 * merged view may borrow them after the shard's lock is released.
 *
 * The names of OpenGateLLM's series are kept where they exist (spec §3.4:
 * ogl_inference_*), so its dashboards work; time to first token is in
 * seconds like every other duration here (ogl_inference_ttft_seconds, not
 * OpenGateLLM's ..._milliseconds). The ledger's series are llmgate_usage_*.
 *
 * Who may read it: any caller with LG_PERM_READ_METRIC or LG_PERM_ADMIN
 * (OpenGateLLM lets any valid key in, but has the read_metric permission
 * for this). */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "usage.h"

#define SHARDS_MAX 64           /* threads with a shard of their own */
#define SERIES_MAX 4096         /* series per shard; more are counted, not kept */
#define TABLE_MIN 64
#define NBUCKETS 12

/* OpenGateLLM's duration buckets (0.05 s to 300 s), for latency and TTFT. */
static const double bucket_le[NBUCKETS] = {
	0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300,
};
static const char *const bucket_text[NBUCKETS] = {
	"0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "120", "300",
};

struct series {
	uint64_t hash;
	const char *endpoint, *model;   /* NULL: an empty slot */
	int status;
	uint64_t requests;
	uint64_t latency[NBUCKETS + 1]; /* per bucket, the last one +Inf */
	double latency_sum;
	uint64_t ttft[NBUCKETS + 1];
	double ttft_sum;
	uint64_t ttft_count;
	uint64_t prompt_tokens, completion_tokens;
	double cost, kwh, kgco2eq;
};

/* Open addressing, linear probing, at most half full. */
struct table {
	struct series *slots;
	size_t cap, n;
};

struct shard {
	pthread_mutex_t lock;
	pthread_t owner;
	atomic_bool claimed;            /* owner is set */
	struct table t;
	uint64_t overflow;              /* calls not counted: SERIES_MAX reached */
	char **strings;                 /* what the series' strings point to */
	size_t nstrings, capstrings;
};

struct usage_metrics {
	struct shard shards[SHARDS_MAX];
	atomic_size_t claimed;
	struct shard shared;            /* threads beyond SHARDS_MAX */
};

/* ---- the table ---- */

static uint64_t fnv(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return (h ^ 0xff) * 1099511628211ULL;
}

static uint64_t series_hash(const char *endpoint, const char *model, int status)
{
	uint64_t h = fnv(fnv(14695981039346656037ULL, endpoint), model);

	return (h ^ (uint64_t)(unsigned)status) * 1099511628211ULL;
}

static struct series *table_find(struct table *t, uint64_t hash, const char *endpoint,
				 const char *model, int status)
{
	size_t i = hash & (t->cap - 1);

	for (;; i = (i + 1) & (t->cap - 1)) {
		struct series *s = &t->slots[i];

		if (!s->endpoint)
			return s;
		if (s->hash == hash && s->status == status && strcmp(s->endpoint, endpoint) == 0 &&
		    strcmp(s->model, model) == 0)
			return s;
	}
}

static int table_grow(struct table *t)
{
	size_t cap = t->cap ? t->cap * 2 : TABLE_MIN;
	struct series *slots = calloc(cap, sizeof *slots), *old = t->slots;
	size_t oldcap = t->cap;

	if (!slots)
		return -ENOMEM;
	t->slots = slots;
	t->cap = cap;
	for (size_t i = 0; i < oldcap; i++)
		if (old[i].endpoint)
			*table_find(t, old[i].hash, old[i].endpoint, old[i].model,
				    old[i].status) = old[i];
	free(old);
	return 0;
}

/* ---- recording (workers) ---- */

static struct shard *my_shard(struct usage_metrics *m)
{
	pthread_t self = pthread_self();
	size_t n = atomic_load(&m->claimed), i;

	if (n > SHARDS_MAX)
		n = SHARDS_MAX;
	for (i = 0; i < n; i++)
		if (atomic_load(&m->shards[i].claimed) && pthread_equal(m->shards[i].owner, self))
			return &m->shards[i];
	/* Only this thread claims a shard for itself, once. */
	i = atomic_fetch_add(&m->claimed, 1);
	if (i >= SHARDS_MAX)
		return &m->shared;
	m->shards[i].owner = self;
	atomic_store(&m->shards[i].claimed, true);
	return &m->shards[i];
}

static char *shard_strdup(struct shard *sh, const char *s)
{
	char *copy;

	if (sh->nstrings == sh->capstrings) {
		size_t cap = sh->capstrings ? sh->capstrings * 2 : 32;
		char **grown = realloc(sh->strings, cap * sizeof *grown);

		if (!grown)
			return NULL;
		sh->strings = grown;
		sh->capstrings = cap;
	}
	copy = strdup(s);
	if (copy)
		sh->strings[sh->nstrings++] = copy;
	return copy;
}

/* The shard's series for the call, or NULL when SERIES_MAX is reached or
 * memory is short; its strings are copied when it is added. */
static struct series *shard_series(struct shard *sh, const char *endpoint, const char *model,
				   int status)
{
	uint64_t hash = series_hash(endpoint, model, status);
	struct series *s;

	if (sh->t.cap && (s = table_find(&sh->t, hash, endpoint, model, status))->endpoint)
		return s;
	if (sh->t.n >= SERIES_MAX)
		return NULL;
	if ((sh->t.n + 1) * 2 > sh->t.cap && table_grow(&sh->t) < 0)
		return NULL;
	endpoint = shard_strdup(sh, endpoint);
	model = endpoint ? shard_strdup(sh, model) : NULL;
	if (!model)
		return NULL;
	s = table_find(&sh->t, hash, endpoint, model, status);
	*s = (struct series){ .hash = hash, .endpoint = endpoint, .model = model,
			      .status = status };
	sh->t.n++;
	return s;
}

static size_t bucket_of(double seconds)
{
	size_t i = 0;

	while (i < NBUCKETS && seconds > bucket_le[i])
		i++;
	return i;
}

void usage_metrics_record(struct usage_metrics *m, const struct lg_call *c)
{
	struct shard *sh = my_shard(m);
	const char *endpoint = c->endpoint ? c->endpoint : "";
	const char *model = c->model_name ? c->model_name : "";
	double latency = isfinite(c->latency_ms) ? c->latency_ms / 1000.0 : 0;
	double ttft = isfinite(c->ttft_ms) ? c->ttft_ms / 1000.0 : -1;
	double cost = usage_call_cost(c);
	double kwh = CALL_HAS(c, kwh) && isfinite(c->kwh) ? c->kwh : 0;
	double kgco2eq = CALL_HAS(c, kgco2eq) && isfinite(c->kgco2eq) ? c->kgco2eq : 0;
	size_t lb = bucket_of(latency), tb = bucket_of(ttft);
	struct series *s;

	pthread_mutex_lock(&sh->lock);
	s = shard_series(sh, endpoint, model, c->status);
	if (!s) {
		sh->overflow++;
		pthread_mutex_unlock(&sh->lock);
		return;
	}
	s->requests++;
	s->latency[lb]++;
	s->latency_sum += latency;
	if (ttft >= 0) {
		s->ttft[tb]++;
		s->ttft_sum += ttft;
		s->ttft_count++;
	}
	s->prompt_tokens += (uint64_t)(c->prompt_tokens > 0 ? c->prompt_tokens : 0);
	s->completion_tokens += (uint64_t)(c->completion_tokens > 0 ? c->completion_tokens : 0);
	s->cost += cost;
	s->kwh += kwh;
	s->kgco2eq += kgco2eq;
	pthread_mutex_unlock(&sh->lock);
}

/* ---- the scrape ---- */

static void series_add(struct series *to, const struct series *from)
{
	to->requests += from->requests;
	for (size_t i = 0; i <= NBUCKETS; i++) {
		to->latency[i] += from->latency[i];
		to->ttft[i] += from->ttft[i];
	}
	to->latency_sum += from->latency_sum;
	to->ttft_sum += from->ttft_sum;
	to->ttft_count += from->ttft_count;
	to->prompt_tokens += from->prompt_tokens;
	to->completion_tokens += from->completion_tokens;
	to->cost += from->cost;
	to->kwh += from->kwh;
	to->kgco2eq += from->kgco2eq;
}

/* Adds a shard into @merged. -ENOMEM leaves @merged partly merged. */
static int merge_shard(struct table *merged, struct shard *sh, uint64_t *overflow)
{
	int rc = 0;

	pthread_mutex_lock(&sh->lock);
	*overflow += sh->overflow;
	for (size_t i = 0; i < sh->t.cap && rc == 0; i++) {
		const struct series *s = &sh->t.slots[i];
		struct series *to;

		if (!s->endpoint)
			continue;
		/* The merged table may hold more than SERIES_MAX series. */
		if ((merged->n + 1) * 2 > merged->cap && table_grow(merged) < 0) {
			rc = -ENOMEM;
			break;
		}
		to = table_find(merged, s->hash, s->endpoint, s->model, s->status);
		if (!to->endpoint) {
			*to = (struct series){ .hash = s->hash, .endpoint = s->endpoint,
					       .model = s->model, .status = s->status };
			merged->n++;
		}
		series_add(to, s);
	}
	pthread_mutex_unlock(&sh->lock);
	return rc;
}

static int cmp_series(const void *a, const void *b)
{
	const struct series *x = a, *y = b;
	int c = strcmp(x->endpoint, y->endpoint);

	if (c == 0)
		c = strcmp(x->model, y->model);
	if (c == 0)
		c = (x->status > y->status) - (x->status < y->status);
	return c;
}

/* Every series, merged across shards and sorted. Ownership: the caller's. */
static struct series *collect(struct usage_metrics *m, size_t *n, uint64_t *overflow)
{
	struct table merged = { NULL, 0, 0 };
	size_t shards = atomic_load(&m->claimed), k = 0;
	struct series *out;

	*overflow = 0;
	if (shards > SHARDS_MAX)
		shards = SHARDS_MAX;
	for (size_t i = 0; i < shards; i++)
		if (atomic_load(&m->shards[i].claimed) &&
		    merge_shard(&merged, &m->shards[i], overflow) < 0)
			goto fail;
	if (merge_shard(&merged, &m->shared, overflow) < 0)
		goto fail;
	out = malloc((merged.n ? merged.n : 1) * sizeof *out);
	if (!out)
		goto fail;
	for (size_t i = 0; i < merged.cap; i++)
		if (merged.slots[i].endpoint)
			out[k++] = merged.slots[i];
	free(merged.slots);
	qsort(out, k, sizeof *out, cmp_series);
	*n = k;
	return out;
fail:
	free(merged.slots);
	return NULL;
}

/* A label value in Prometheus' text format: \, " and newline escaped. */
static void put_label(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

static void put_labels(FILE *f, const struct series *s)
{
	fputs("{endpoint=\"", f);
	put_label(f, s->endpoint);
	fputs("\",model=\"", f);
	put_label(f, s->model);
	fputc('"', f);
}

static void family(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void put_requests(FILE *f, const struct series *v, size_t n)
{
	family(f, "ogl_inference_requests_total", "counter",
	       "Forwarded calls by endpoint, model and the status sent to the client.");
	for (size_t i = 0; i < n; i++) {
		fputs("ogl_inference_requests_total", f);
		put_labels(f, &v[i]);
		fprintf(f, ",status_code=\"%d\"} %" PRIu64 "\n", v[i].status, v[i].requests);
	}
}

/* The series of one (endpoint, model), statuses added up: v[*i] onwards. */
static struct series group(const struct series *v, size_t n, size_t *i)
{
	struct series g = v[*i];

	for ((*i)++; *i < n && strcmp(v[*i].endpoint, g.endpoint) == 0 &&
	     strcmp(v[*i].model, g.model) == 0; (*i)++)
		series_add(&g, &v[*i]);
	return g;
}

static void put_histogram(FILE *f, const char *name, const struct series *g,
			  const uint64_t *buckets, double sum, uint64_t count)
{
	uint64_t cumulative = 0;

	for (size_t b = 0; b <= NBUCKETS; b++) {
		cumulative += buckets[b];
		fprintf(f, "%s_bucket", name);
		put_labels(f, g);
		fprintf(f, ",le=\"%s\"} %" PRIu64 "\n", b < NBUCKETS ? bucket_text[b] : "+Inf",
			cumulative);
	}
	fprintf(f, "%s_sum", name);
	put_labels(f, g);
	fprintf(f, "} %.9g\n%s_count", sum, name);
	put_labels(f, g);
	fprintf(f, "} %" PRIu64 "\n", count);
}

static void put_per_model(FILE *f, const struct series *v, size_t n)
{
	static const char lat[] = "ogl_inference_requests_duration_seconds";
	static const char ttft[] = "ogl_inference_ttft_seconds";

	family(f, lat, "histogram", "Duration of forwarded calls, to their last byte.");
	for (size_t i = 0; i < n;) {
		struct series g = group(v, n, &i);

		put_histogram(f, lat, &g, g.latency, g.latency_sum, g.requests);
	}
	family(f, ttft, "histogram", "Time to the first token of forwarded calls that had one.");
	for (size_t i = 0; i < n;) {
		struct series g = group(v, n, &i);

		if (g.ttft_count)
			put_histogram(f, ttft, &g, g.ttft, g.ttft_sum, g.ttft_count);
	}
	family(f, "ogl_inference_tokens_total", "counter", "Tokens of forwarded calls by type.");
	for (size_t i = 0; i < n;) {
		struct series g = group(v, n, &i);

		fputs("ogl_inference_tokens_total", f);
		put_labels(f, &g);
		fprintf(f, ",type=\"prompt\"} %" PRIu64 "\n", g.prompt_tokens);
		fputs("ogl_inference_tokens_total", f);
		put_labels(f, &g);
		fprintf(f, ",type=\"completion\"} %" PRIu64 "\n", g.completion_tokens);
	}
	family(f, "llmgate_usage_cost_total", "counter",
	       "Cost of forwarded calls, in the unit of the models' prices.");
	for (size_t i = 0; i < n;) {
		struct series g = group(v, n, &i);

		fputs("llmgate_usage_cost_total", f);
		put_labels(f, &g);
		fprintf(f, "} %.9g\n", g.cost);
	}
	family(f, "llmgate_usage_kwh_total", "counter", "Estimated energy of forwarded calls.");
	for (size_t i = 0; i < n;) {
		struct series g = group(v, n, &i);

		fputs("llmgate_usage_kwh_total", f);
		put_labels(f, &g);
		fprintf(f, "} %.9g\n", g.kwh);
	}
	family(f, "llmgate_usage_kgco2eq_total", "counter",
	       "Estimated emissions of forwarded calls.");
	for (size_t i = 0; i < n;) {
		struct series g = group(v, n, &i);

		fputs("llmgate_usage_kgco2eq_total", f);
		put_labels(f, &g);
		fprintf(f, "} %.9g\n", g.kgco2eq);
	}
}

static void gauge(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
	family(f, name, type, help);
	fprintf(f, "%s %" PRIu64 "\n", name, v);
}

static void put_ledger(FILE *f, const struct ledger_stats *s, uint64_t overflow)
{
	gauge(f, "llmgate_metrics_calls_uncounted_total", "counter",
	      "Calls left out of the per-model series (too many series).", overflow);
	if (!s->enabled)
		return;
	gauge(f, "llmgate_usage_queue_depth", "gauge",
	      "Usage records waiting in memory for their batch.", s->queue_depth);
	gauge(f, "llmgate_usage_queue_capacity", "gauge",
	      "Records the queue holds before new ones are lost (queue_max).", s->queue_max);
	gauge(f, "llmgate_usage_journal_bytes", "gauge",
	      "Size of the journal of records PostgreSQL has not taken yet.", s->journal_bytes);
	gauge(f, "llmgate_usage_journal_max_bytes", "gauge",
	      "The journal's cap (journal_max_size).", s->journal_max);
	gauge(f, "llmgate_usage_journal_segments", "gauge",
	      "Journal segment files waiting to be replayed.", s->journal_segments);
	gauge(f, "llmgate_usage_journal_full", "gauge",
	      "1 while the journal is at its cap (records are then being lost).",
	      s->journal_full);
	gauge(f, "llmgate_usage_database_up", "gauge",
	      "0 while PostgreSQL refuses the ledger's batches.", s->db_up);
	gauge(f, "llmgate_usage_rows_inserted_total", "counter",
	      "Usage rows committed to PostgreSQL.", s->rows_inserted);
	gauge(f, "llmgate_usage_records_journaled_total", "counter",
	      "Usage records written to the journal.", s->rows_journaled);
	family(f, "llmgate_usage_dropped_total", "counter",
	       "Usage records lost, by reason.");
	fprintf(f, "llmgate_usage_dropped_total{reason=\"queue_full\"} %" PRIu64 "\n"
		"llmgate_usage_dropped_total{reason=\"journal_full\"} %" PRIu64 "\n"
		"llmgate_usage_dropped_total{reason=\"journal_error\"} %" PRIu64 "\n",
		s->dropped_queue_full, s->dropped_journal_full, s->dropped_journal_error);
}

/* The host's PostgreSQL pool (ABI 1.2; left out on an older host). */
static void put_db_pool(FILE *f, struct usage *u)
{
	struct lg_db_stats db = { .size = sizeof db };

	if (!LG_HOST_HAS(u->host, db_stats) || !u->host->db_stats ||
	    u->host->db_stats(u->self, &db) != 0 || db.size < sizeof db)
		return;
	gauge(f, "llmgate_db_pool_connections", "gauge",
	      "Connections of the PostgreSQL pool (pool_size).", db.connections);
	gauge(f, "llmgate_db_pool_connected", "gauge",
	      "Pool connections open now.", db.connected);
	gauge(f, "llmgate_db_pool_busy", "gauge",
	      "Pool connections running a statement now.", db.busy);
	gauge(f, "llmgate_db_pool_queued", "gauge",
	      "Statements waiting for a free pool connection.", db.queued);
	gauge(f, "llmgate_db_up", "gauge",
	      "1 while PostgreSQL answers the pool.", db.healthy);
	gauge(f, "llmgate_db_reconnects_total", "counter",
	      "Pool connections re-established after a failure.", db.reconnects);
	family(f, "llmgate_db_queries_total", "counter",
	       "Statements the pool finished, by outcome.");
	fprintf(f, "llmgate_db_queries_total{outcome=\"ok\"} %" PRIu64 "\n"
		"llmgate_db_queries_total{outcome=\"error\"} %" PRIu64 "\n"
		"llmgate_db_queries_total{outcome=\"unavailable\"} %" PRIu64 "\n",
		db.succeeded, db.errors, db.unavailable);
}

/* The whole page. Ownership: the caller's (free). NULL on failure. */
static char *render(struct usage *u, size_t *len)
{
	struct ledger_stats ls;
	struct series *v;
	uint64_t overflow;
	size_t n = 0;
	char *text = NULL;
	FILE *f;

	v = collect(u->metrics, &n, &overflow);
	if (!v)
		return NULL;
	usage_ledger_stats(u, &ls);
	f = open_memstream(&text, len);
	if (!f) {
		free(v);
		return NULL;
	}
	put_requests(f, v, n);
	put_per_model(f, v, n);
	put_ledger(f, &ls, overflow);
	put_db_pool(f, u);
	free(v);
	if (ferror(f)) {
		fclose(f);
		free(text);
		return NULL;
	}
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static void route_metrics(struct lg_req *req, void *ud)
{
	struct usage *u = ud;
	const struct lg_principal *who = u->host->req_principal(req);
	size_t len = 0;
	char *text;

	if (!who || !(who->permissions & (LG_PERM_READ_METRIC | LG_PERM_ADMIN))) {
		u->host->reply_error(req, 403, "Access denied: reading metrics needs the "
				     "read_metric permission.");
		return;
	}
	text = render(u, &len);
	if (!text) {
		u->host->reply_error(req, 500, "An unexpected error occurred");
		return;
	}
	u->host->reply(req, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
	free(text);
}

/* ---- lifecycle ---- */

static void shard_free(struct shard *sh)
{
	for (size_t i = 0; i < sh->nstrings; i++)
		free(sh->strings[i]);
	free(sh->strings);
	free(sh->t.slots);
	pthread_mutex_destroy(&sh->lock);
}

/* shards[0..SHARDS_MAX-1] then shared, as one sequence. */
static struct shard *shard_at(struct usage_metrics *m, size_t i)
{
	return i < SHARDS_MAX ? &m->shards[i] : &m->shared;
}

static void metrics_free_first(struct usage_metrics *m, size_t n)
{
	for (size_t i = 0; i < n; i++)
		shard_free(shard_at(m, i));
	free(m);
}

void usage_metrics_free(struct usage_metrics *m)
{
	if (m)
		metrics_free_first(m, SHARDS_MAX + 1);
}

static struct usage_metrics *metrics_new(void)
{
	struct usage_metrics *m = calloc(1, sizeof *m);

	if (!m)
		return NULL;
	for (size_t i = 0; i <= SHARDS_MAX; i++) {
		if (pthread_mutex_init(&shard_at(m, i)->lock, NULL) != 0) {
			metrics_free_first(m, i);
			return NULL;
		}
	}
	return m;
}

int usage_metrics_init(struct usage *u)
{
	static const struct lg_route route = {
		sizeof(struct lg_route), "GET", "/metrics", LG_POLICY_KEY, 0, route_metrics,
	};
	int rc;

	u->metrics = metrics_new();
	if (!u->metrics)
		return -ENOMEM;
	rc = u->host->route_add(u->self, &route, u);
	if (rc < 0)
		u->host->set_error(u->self, "cannot serve /metrics: %s", strerror(-rc));
	return rc;
}
