/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The model registry.
 *
 * PostgreSQL holds the truth (model, model_alias, model_client; see
 * sql/core/0002_models.sql). Each instance keeps an immutable view of it,
 * which workers read without locks:
 *
 *   get:      v = atomic_load(&current); v->refs++       (workers, main)
 *   publish:  swap current; lg_server_sync(); put(old)   (main only)
 *
 * lg_server_sync() returns once every worker has left the callback it was
 * running, so no worker is still between the load and the increment of a
 * get() of the old view when the registry drops its reference; the last
 * put() frees the view.
 *
 * Who changes the tables, and how views follow:
 * - config.yml's models: are reconciled at start and on SIGHUP, in one
 *   transaction on a connection of their own (main thread, blocking);
 * - the admin API writes with single statements from the workers, through
 *   the pool, never blocking;
 * - every change NOTIFYs llmgate_models in its transaction. Every instance
 *   LISTENs and reloads its view on the main thread (one query, so one
 *   snapshot). An admin request answers once its own instance has reloaded,
 *   so the client reads its own writes;
 * - every 10 s a digest of the tables catches a NOTIFY lost while the
 *   LISTEN connection was down.
 *
 * /health/models comes from a refresher on the main loop (at start, every
 * 10 s, after each reload) whose results live in atomics of the view; a new
 * view inherits the statuses of the old one.
 */
#include "models.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "balancer.h"
#include "fetch.h"
#include "log.h"
#include "loop.h"
#include "pg.h"
#include "server.h"

#define COMP "models"
#define CHANNEL "llmgate_models"
#define NAME_MAX_CHARS 64
#define MODEL_NAME_MAX_CHARS 256       /* a provider's upstream model name */
#define ALIASES_MAX 64
#define URL_MAX 2048
#define TICK_MS 10000
#define HEALTH_CONNECT_MS 3000
#define HEALTH_TOTAL_MS 5000
#define HEALTH_MAX_BYTES (1u << 20)
#define PROBE_CONNECT_MS 5000
#define PROBE_TOTAL_MAX_MS 30000
#define PROBE_MAX_BYTES (8u << 20)
#define VLLM_RUNNING_RED 20
#define PAGE_LIMIT_DEFAULT 10
#define PAGE_LIMIT_MAX 100
#define PAGE_OFFSET_MAX 10000
#define ADMIN_MAX_BODY (1u << 20)
#define RECONCILE_CONNECT_RETRY_MS 2000
#define TIMEOUT_S_DEFAULT 300
#define TIMEOUT_S_MAX 3600
#define CONCURRENCY_MAX 1000000
#define COST_MAX 1e12
#define PARAMS_MAX 1e9
/* pg_advisory_xact_lock(LOCK_SPACE, 1) serialises reconciliations; the
 * namespace trigger locks (LOCK_SPACE, hashtext(name)). 'lgm' in ASCII. */
#define LOCK_SPACE "7104365"

static const char *const model_types[] = {
	"text-generation", "text-embeddings-inference", "text-classification",
	"automatic-speech-recognition", "image-to-text", NULL,
};

static const char owned_by[] = "llmgate";

/* ---- small tools ---- */

static bool in_list(const char *const *list, const char *s)
{
	for (; list && *list; list++)
		if (strcmp(*list, s) == 0)
			return true;
	return false;
}

static bool model_type_known(const char *t)
{
	return in_list(model_types, t);
}

static bool strategy_parse(const char *s, enum lg_strategy *out)
{
	if (strcmp(s, "shuffle") == 0)
		*out = LG_STRATEGY_SHUFFLE;
	else if (strcmp(s, "least_busy") == 0)
		*out = LG_STRATEGY_LEAST_BUSY;
	else
		return false;
	return true;
}

/* Whether provider type @ops can serve models of @model_type. */
static bool serves(const struct lg_provider_ops *ops, const char *model_type)
{
	return in_list(ops->model_types, model_type);
}

/* 1 to @max characters (UTF-8 code points; the input is valid UTF-8),
 * without control characters. */
static bool valid_text(const char *s, size_t max)
{
	size_t chars = 0;

	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p == 0x7f)
			return false;
		if ((*p & 0xc0) != 0x80)
			chars++;
	}
	return chars >= 1 && chars <= max;
}

static bool valid_zone(const char *s)
{
	return strlen(s) == 3 && isupper((unsigned char)s[0]) && isupper((unsigned char)s[1]) &&
	       isupper((unsigned char)s[2]);
}

/* An upstream base URL: http(s)://host..., no blanks or control
 * characters, without trailing slashes and without the /v1 that llmgate
 * adds itself. Malloc'ed, or NULL with @why set. */
static char *normalize_url(const char *in, const char **why)
{
	size_t len = strlen(in), scheme;
	char *out;

	if (strncasecmp(in, "http://", 7) == 0) {
		scheme = 7;
	} else if (strncasecmp(in, "https://", 8) == 0) {
		scheme = 8;
	} else {
		*why = "must start with http:// or https://";
		return NULL;
	}
	if (len > URL_MAX) {
		*why = "is too long";
		return NULL;
	}
	for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
		if (*p <= 0x20 || *p == 0x7f) {
			*why = "must not contain blanks or control characters";
			return NULL;
		}
	}
	while (len > scheme && in[len - 1] == '/')
		len--;
	if (len == scheme || in[scheme] == '/') {
		*why = "has no host";
		return NULL;
	}
	if (len >= 3 && strncmp(in + len - 3, "/v1", 3) == 0) {
		*why = "must not end with /v1: llmgate adds the API path itself";
		return NULL;
	}
	out = strndup(in, len);
	if (!out)
		*why = "out of memory";
	return out;
}

/* ---- views ---- */

enum health {
	HEALTH_UNKNOWN = 0,     /* not checked yet: shown as yellow */
	HEALTH_GREEN,
	HEALTH_YELLOW,
	HEALTH_RED,
};

static const char *const health_names[] = { "yellow", "green", "yellow", "red" };

struct name_entry {
	const char *key;        /* a name or an alias */
	size_t model;
};

struct lg_models_view {
	atomic_long refs;
	struct lg_balancer *balancer;      /* provider states are released to it */
	struct lg_model *models;
	size_t nmodels;
	/* every model's providers, one array; models point into it */
	struct lg_model_provider *providers;
	size_t nproviders;
	atomic_int *health;                /* per provider: enum health */
	struct name_entry *index;          /* names and aliases, sorted */
	size_t nindex;
	char *digest;                      /* of the tables it was loaded from */
};

struct reload_waiter {
	struct reload_waiter *next;
	struct lg_loop *loop;
	void (*fn)(void *arg);
	void *arg;
};

struct health_probe;

struct lg_models {
	struct lg_runtime *rt;
	_Atomic(struct lg_models_view *) current;
	/* main thread only */
	struct event *kick;                /* reload the view soon */
	struct event *tick;                /* digest and health, every TICK_MS */
	struct health_probe *probes;       /* health checks in flight */
	bool health_again;                 /* a round was asked for during one */
	/* shared with the workers, under @lock */
	pthread_mutex_t lock;
	bool accepting;                    /* between start and stop */
	struct reload_waiter *waiters;     /* admin requests awaiting a reload */
};

static void view_free(struct lg_models_view *v)
{
	if (!v)
		return;
	for (size_t i = 0; i < v->nproviders; i++) {
		struct lg_model_provider *p = &v->providers[i];

		free((char *)p->conf.type);
		free((char *)p->conf.url);
		free((char *)p->conf.key);
		free((char *)p->conf.model_name);
		free((char *)p->hosting_zone);
		if (p->state && v->balancer)
			lg_provider_state_unref(v->balancer, p->state);
	}
	for (size_t i = 0; i < v->nmodels; i++) {
		struct lg_model *md = &v->models[i];

		free((char *)md->name);
		free((char *)md->type);
		for (size_t a = 0; md->aliases && a < md->naliases; a++)
			free((char *)md->aliases[a]);
		free((void *)md->aliases);
	}
	free(v->providers);
	free(v->models);
	free(v->health);
	free(v->index);
	free(v->digest);
	free(v);
}

static struct lg_models_view *view_alloc(struct lg_balancer *b, size_t nmodels,
					 size_t nproviders)
{
	struct lg_models_view *v = calloc(1, sizeof *v);

	if (!v)
		return NULL;
	atomic_init(&v->refs, 1);
	v->balancer = b;
	v->nmodels = nmodels;
	v->nproviders = nproviders;
	v->models = calloc(nmodels ? nmodels : 1, sizeof *v->models);
	v->providers = calloc(nproviders ? nproviders : 1, sizeof *v->providers);
	v->health = calloc(nproviders ? nproviders : 1, sizeof *v->health);
	if (!v->models || !v->providers || !v->health) {
		view_free(v);
		return NULL;
	}
	for (size_t i = 0; i < nproviders; i++)
		atomic_init(&v->health[i], HEALTH_UNKNOWN);
	return v;
}

struct lg_models_view *lg_models_view_get(struct lg_models *m)
{
	struct lg_models_view *v = atomic_load_explicit(&m->current, memory_order_acquire);

	atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
	return v;
}

void lg_models_view_put(struct lg_models_view *v)
{
	if (v && atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) == 1)
		view_free(v);
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const struct name_entry *)a)->key, ((const struct name_entry *)b)->key);
}

const struct lg_model *lg_models_find(const struct lg_models_view *v, const char *name_or_alias)
{
	struct name_entry key = { .key = name_or_alias };
	const struct name_entry *e;

	if (!v || !name_or_alias || v->nindex == 0)
		return NULL;
	e = bsearch(&key, v->index, v->nindex, sizeof *v->index, entry_cmp);
	return e ? &v->models[e->model] : NULL;
}

size_t lg_models_count(const struct lg_models_view *v)
{
	return v ? v->nmodels : 0;
}

const struct lg_model *lg_models_at(const struct lg_models_view *v, size_t i)
{
	return v && i < v->nmodels ? &v->models[i] : NULL;
}

static enum health provider_health(const struct lg_models_view *v,
				   const struct lg_model_provider *p)
{
	return (enum health)atomic_load_explicit(&v->health[p - v->providers],
						 memory_order_relaxed);
}

/* The worst status of a model's providers; not checked yet counts as
 * yellow. */
static enum health model_health(const struct lg_models_view *v, const struct lg_model *md)
{
	enum health worst = HEALTH_GREEN;

	for (size_t i = 0; i < md->nproviders; i++) {
		enum health h = provider_health(v, &md->providers[i]);

		if (h == HEALTH_UNKNOWN)
			h = HEALTH_YELLOW;
		if (h > worst)
			worst = h;
	}
	return worst;
}

/* ---- building a view from the database ---- */

/* One statement, hence one snapshot: every model with its aliases and
 * providers, as JSON, and a digest of the three tables. */
#define DIGEST_SQL \
	"(SELECT count(*) || ':' || coalesce(sum(id), 0) || ':' || " \
	"coalesce(max(updated)::text, '') FROM model) || '/' || " \
	"(SELECT count(*) || ':' || coalesce(sum(id), 0) || ':' || " \
	"coalesce(max(updated)::text, '') FROM model_client) || '/' || " \
	"(SELECT count(*) || ':' || coalesce(sum(id), 0) FROM model_alias)"

static const char load_sql[] =
	"SELECT json_build_object('digest', " DIGEST_SQL ", 'models', coalesce(("
	"SELECT json_agg(json_build_object("
	"'id', m.id, 'name', m.name, 'type', m.type, 'strategy', m.load_balancing_strategy, "
	"'cost_prompt_tokens', m.cost_prompt_tokens, "
	"'cost_completion_tokens', m.cost_completion_tokens, "
	"'max_context_length', coalesce(m.max_context_length, (SELECT max(c.max_context_length) "
	"FROM model_client c WHERE c.model_id = m.id)), "
	"'vector_size', coalesce(m.vector_size, (SELECT max(c.vector_size) "
	"FROM model_client c WHERE c.model_id = m.id)), "
	"'created', extract(epoch FROM m.created)::bigint, 'from_config', m.from_config, "
	"'aliases', coalesce((SELECT json_agg(a.value ORDER BY a.id) FROM model_alias a "
	"WHERE a.model_id = m.id), '[]'::json), "
	"'providers', coalesce((SELECT json_agg(json_build_object("
	"'id', c.id, 'type', c.type, 'url', c.url, 'key', c.key, 'model_name', c.model_name, "
	"'timeout', c.timeout, 'connect_timeout_ms', c.connect_timeout_ms, "
	"'first_byte_timeout_ms', c.first_byte_timeout_ms, 'idle_timeout_ms', c.idle_timeout_ms, "
	"'max_concurrency', c.max_concurrency, 'model_hosting_zone', c.model_hosting_zone, "
	"'model_total_params', c.model_total_params, "
	"'model_active_params', c.model_active_params, "
	"'max_context_length', c.max_context_length, 'vector_size', c.vector_size) "
	"ORDER BY c.id) FROM model_client c WHERE c.model_id = m.id), '[]'::json)"
	") ORDER BY m.id) FROM model m), '[]'::json))::text";

static const char digest_sql[] = "SELECT " DIGEST_SQL;

static int64_t jint(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

static double jnum(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	return json_is_number(v) ? json_number_value(v) : 0;
}

/* A copy of a string member; NULL when absent or null. */
static char *jstrdup(const json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));

	return s ? strdup(s) : NULL;
}

static uint32_t clamp_u32(int64_t v)
{
	return v <= 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static int provider_from_json(const struct lg_runtime *rt, const json_t *j,
			      struct lg_model_provider *p)
{
	int64_t timeout = jint(j, "timeout");

	p->conf.size = sizeof p->conf;
	p->conf.id = jint(j, "id");
	p->conf.type = jstrdup(j, "type");
	p->conf.url = jstrdup(j, "url");
	p->conf.key = jstrdup(j, "key");
	p->conf.model_name = jstrdup(j, "model_name");
	p->conf.timeout_ms = clamp_u32((timeout > 0 ? timeout : TIMEOUT_S_DEFAULT) * 1000);
	p->hosting_zone = jstrdup(j, "model_hosting_zone");
	if (!p->conf.type || !p->conf.url || !p->conf.model_name ||
	    (json_is_string(json_object_get(j, "key")) && !p->conf.key) ||
	    (json_is_string(json_object_get(j, "model_hosting_zone")) && !p->hosting_zone))
		return -1;
	/* A type whose plugin is not loaded here stays, without impl: the
	 * forwarding engine treats it as unavailable, health shows red. */
	p->impl = rt->registry ? lg_registry_provider(rt->registry, p->conf.type) : NULL;
	p->connect_timeout_ms = clamp_u32(jint(j, "connect_timeout_ms"));
	p->first_byte_timeout_ms = clamp_u32(jint(j, "first_byte_timeout_ms"));
	p->idle_timeout_ms = clamp_u32(jint(j, "idle_timeout_ms"));
	p->max_concurrency = (int)jint(j, "max_concurrency");
	p->total_params = jnum(j, "model_total_params");
	p->active_params = jnum(j, "model_active_params");
	p->max_context_length = jint(j, "max_context_length");
	p->vector_size = jint(j, "vector_size");
	if (rt->balancer) {
		p->state = lg_provider_state_ref(rt->balancer, p->conf.id);
		if (!p->state)
			return -1;
	}
	return 0;
}

static int aliases_from_json(const json_t *arr, struct lg_model *md)
{
	size_t n = json_array_size(arr);
	char **aliases = calloc(n ? n : 1, sizeof *aliases);

	if (!aliases)
		return -1;
	md->aliases = (const char *const *)aliases;
	for (size_t i = 0; i < n; i++) {
		const char *s = json_string_value(json_array_get(arr, i));

		aliases[i] = s ? strdup(s) : NULL;
		if (!aliases[i])
			return -1;
		md->naliases = i + 1;
	}
	return 0;
}

static int model_from_json(const struct lg_runtime *rt, const json_t *j,
			   struct lg_model *md, struct lg_model_provider *providers)
{
	const json_t *provs = json_object_get(j, "providers");
	const char *strategy = json_string_value(json_object_get(j, "strategy"));

	md->id = jint(j, "id");
	md->name = jstrdup(j, "name");
	md->type = jstrdup(j, "type");
	if (!md->name || !md->type || !strategy || !strategy_parse(strategy, &md->strategy))
		return -1;
	md->cost_prompt_tokens = jnum(j, "cost_prompt_tokens");
	md->cost_completion_tokens = jnum(j, "cost_completion_tokens");
	md->max_context_length = jint(j, "max_context_length");
	md->vector_size = jint(j, "vector_size");
	md->owned_by = owned_by;
	md->created = jint(j, "created");
	md->from_config = json_is_true(json_object_get(j, "from_config"));
	if (aliases_from_json(json_object_get(j, "aliases"), md) < 0)
		return -1;
	md->providers = providers;
	for (size_t i = 0; i < json_array_size(provs); i++) {
		if (provider_from_json(rt, json_array_get(provs, i), &providers[i]) < 0)
			return -1;
		md->nproviders = i + 1;
	}
	return 0;
}

static int view_index(struct lg_models_view *v)
{
	size_t n = v->nmodels, k = 0;

	for (size_t i = 0; i < v->nmodels; i++)
		n += v->models[i].naliases;
	v->index = calloc(n ? n : 1, sizeof *v->index);
	if (!v->index)
		return -1;
	for (size_t i = 0; i < v->nmodels; i++) {
		v->index[k++] = (struct name_entry){ v->models[i].name, i };
		for (size_t a = 0; a < v->models[i].naliases; a++)
			v->index[k++] = (struct name_entry){ v->models[i].aliases[a], i };
	}
	qsort(v->index, n, sizeof *v->index, entry_cmp);
	v->nindex = n;
	/* The database keeps names unique; a duplicate would make lookups
	 * ambiguous, so say so rather than guess. */
	for (size_t i = 1; i < n; i++)
		if (strcmp(v->index[i - 1].key, v->index[i].key) == 0)
			lg_warn(COMP, "\"%s\" names two models; lookups may find either",
				v->index[i].key);
	return 0;
}

static struct lg_models_view *view_from_json(const struct lg_runtime *rt, const json_t *root)
{
	const json_t *models = json_object_get(root, "models");
	size_t nmodels = json_array_size(models), nproviders = 0, base = 0;
	struct lg_models_view *v;

	for (size_t i = 0; i < nmodels; i++)
		nproviders += json_array_size(json_object_get(json_array_get(models, i),
							      "providers"));
	v = view_alloc(rt->balancer, nmodels, nproviders);
	if (!v)
		return NULL;
	v->digest = jstrdup(root, "digest");
	if (!v->digest)
		goto fail;
	for (size_t i = 0; i < nmodels; i++) {
		const json_t *j = json_array_get(models, i);

		if (model_from_json(rt, j, &v->models[i], &v->providers[base]) < 0)
			goto fail;
		base += v->models[i].nproviders;
	}
	if (view_index(v) < 0)
		goto fail;
	return v;
fail:
	view_free(v);
	return NULL;
}

/* Loads a new view. Thread: main (a blocking query). */
static struct lg_models_view *load_view(struct lg_models *m, char *err, size_t errlen)
{
	struct lg_pg *pg = atomic_load(&m->rt->pg);
	struct lg_models_view *v = NULL;
	json_error_t jerr;
	json_t *root = NULL;
	PGresult *res;

	if (!pg) {
		lg_errf(err, errlen, "the database is not connected");
		return NULL;
	}
	res = lg_pg_query_sync(pg, load_sql, 0, NULL, err, errlen);
	if (!res)
		return NULL;
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
		lg_errf(err, errlen, "loading the models returned no row");
		goto out;
	}
	root = json_loads(PQgetvalue(res, 0, 0), 0, &jerr);
	if (!root) {
		lg_errf(err, errlen, "loading the models: invalid JSON: %s", jerr.text);
		goto out;
	}
	v = view_from_json(m->rt, root);
	if (!v)
		lg_errf(err, errlen, "out of memory loading the models");
out:
	json_decref(root);
	PQclear(res);
	return v;
}

struct id_health {
	int64_t id;
	int health;
};

static int id_health_cmp(const void *a, const void *b)
{
	int64_t x = ((const struct id_health *)a)->id, y = ((const struct id_health *)b)->id;

	return x < y ? -1 : x > y;
}

/* A new view starts with the statuses the old one had for the same
 * providers. Thread: main. */
static void carry_health(const struct lg_models_view *old, struct lg_models_view *v)
{
	struct id_health *known;

	if (!old || old->nproviders == 0)
		return;
	known = malloc(old->nproviders * sizeof *known);
	if (!known)
		return;   /* they start unknown and the next round fills them */
	for (size_t i = 0; i < old->nproviders; i++)
		known[i] = (struct id_health){ old->providers[i].conf.id,
					       atomic_load(&old->health[i]) };
	qsort(known, old->nproviders, sizeof *known, id_health_cmp);
	for (size_t i = 0; i < v->nproviders; i++) {
		struct id_health key = { .id = v->providers[i].conf.id };
		const struct id_health *k = bsearch(&key, known, old->nproviders, sizeof *known,
						    id_health_cmp);

		if (k)
			atomic_store(&v->health[i], k->health);
	}
	free(known);
}

/* Makes @v current. Thread: main. */
static void publish(struct lg_models *m, struct lg_models_view *v)
{
	struct lg_models_view *old = atomic_load(&m->current);

	carry_health(old, v);
	atomic_store_explicit(&m->current, v, memory_order_release);
	/* Every worker has now left any get() that loaded @old. */
	lg_server_sync(m->rt);
	lg_models_view_put(old);
}

/* ---- config.yml: models: ---- */

struct cfg_provider {
	int line;
	char *type, *url, *key, *model_name, *zone;   /* key, zone: may be NULL */
	int64_t timeout_s;
	int64_t max_concurrency;                       /* 0: uncapped */
	uint64_t connect_ms, first_byte_ms, idle_ms;   /* 0: the server's default */
	double total_params, active_params;
};

struct cfg_model {
	int line;
	char *name, *type, *strategy;
	char **aliases;
	int *alias_lines;
	size_t naliases;
	double cost_prompt, cost_completion;
	struct cfg_provider *providers;
	size_t nproviders;
};

struct cfg_models {
	struct cfg_model *v;
	size_t n;
};

static const struct lg_setting model_table[] = {
	{ "name", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_REQUIRED,
	  "the public name, 1 to 64 characters" },
	{ "type", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_REQUIRED,
	  "text-generation, text-embeddings-inference, text-classification, "
	  "automatic-speech-recognition or image-to-text" },
	{ "aliases", LG_SETTING_STRINGS, NULL, 0, 0, 0, "other names of the model" },
	{ "load_balancing_strategy", LG_SETTING_STRING, "shuffle", 0, 0, 0,
	  "shuffle or least_busy" },
	{ "cost_prompt_tokens", LG_SETTING_DOUBLE, "0", 0, COST_MAX, 0,
	  "cost of a million prompt tokens" },
	{ "cost_completion_tokens", LG_SETTING_DOUBLE, "0", 0, COST_MAX, 0,
	  "cost of a million completion tokens" },
};

static const struct lg_setting provider_table[] = {
	{ "type", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_REQUIRED,
	  "a provider type registered by a plugin (openai, vllm, tei, mock...)" },
	{ "url", LG_SETTING_STRING, NULL, 0, 0, 0, "base URL, without /v1" },
	{ "key", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_SECRET, "the upstream API key" },
	{ "timeout", LG_SETTING_INT, "300", 1, TIMEOUT_S_MAX, 0,
	  "seconds for a whole upstream call" },
	{ "model_name", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_REQUIRED,
	  "the model's name on the upstream" },
	{ "model_hosting_zone", LG_SETTING_STRING, NULL, 0, 0, 0,
	  "ISO 3166-1 alpha-3 country code, or WOR" },
	{ "model_total_params", LG_SETTING_DOUBLE, NULL, 0, PARAMS_MAX, 0, "billions" },
	{ "model_active_params", LG_SETTING_DOUBLE, NULL, 0, PARAMS_MAX, 0, "billions" },
	{ "max_concurrency", LG_SETTING_INT, NULL, 1, CONCURRENCY_MAX, 0,
	  "requests in flight at most (all instances count alone)" },
	{ "qos_limit", LG_SETTING_INT, NULL, 1, CONCURRENCY_MAX, 0,
	  "OpenGateLLM's name of max_concurrency" },
	{ "connect_timeout", LG_SETTING_DURATION, NULL, 1, 3600000, 0, "connecting upstream" },
	{ "first_byte_timeout", LG_SETTING_DURATION, NULL, 1, 3600000, 0,
	  "from the request sent to the first byte of the reply" },
	{ "idle_timeout", LG_SETTING_DURATION, NULL, 1, 3600000, 0,
	  "silence within a reply" },
	{ "model_carbon_footprint_zone", LG_SETTING_STRING, NULL, 0, 0, 0,
	  "older name of model_hosting_zone" },
	{ "model_carbon_footprint_total_params", LG_SETTING_DOUBLE, NULL, 0, PARAMS_MAX, 0,
	  "older name of model_total_params" },
	{ "model_carbon_footprint_active_params", LG_SETTING_DOUBLE, NULL, 0, PARAMS_MAX, 0,
	  "older name of model_active_params" },
};

void lg_models_print_reference(FILE *out, bool markdown)
{
	lg_settings_print_reference(out, "models[]", model_table, LG_COUNT(model_table), markdown);
	lg_settings_print_reference(out, "models[].providers[]", provider_table,
				    LG_COUNT(provider_table), markdown);
}

static void cfg_models_free(struct cfg_models *cm)
{
	for (size_t i = 0; cm->v && i < cm->n; i++) {
		struct cfg_model *md = &cm->v[i];

		free(md->name);
		free(md->type);
		free(md->strategy);
		for (size_t a = 0; md->aliases && a < md->naliases; a++)
			free(md->aliases[a]);
		free(md->aliases);
		free(md->alias_lines);
		for (size_t p = 0; md->providers && p < md->nproviders; p++) {
			struct cfg_provider *pv = &md->providers[p];

			free(pv->type);
			free(pv->url);
			free(pv->key);
			free(pv->model_name);
			free(pv->zone);
		}
		free(md->providers);
	}
	free(cm->v);
	cm->v = NULL;
	cm->n = 0;
}

static void cfg_error(char *err, size_t errlen, const char *file, int line,
		      const char *section, const char *key, const char *fmt, ...) LG_PRINTF(7, 8);

/* "FILE:LINE: SECTION.KEY: message" (or SECTION: when @key is NULL). */
static void cfg_error(char *err, size_t errlen, const char *file, int line,
		      const char *section, const char *key, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	lg_errf(err, errlen, "%s:%d: %s%s%s: %s", file, line, section, key ? "." : "",
		key ? key : "", msg);
}

static bool has_value(const struct lg_node *map, const char *key)
{
	const struct lg_node *n = lg_node_get(map, key);

	return n && n->kind != LG_NODE_NULL;
}

static int line_of(const struct lg_node *map, const char *key)
{
	const struct lg_node *n = lg_node_get(map, key);

	return n ? n->line : map->line;
}

/* @map without @key, sharing keys and values: the settings table of a model
 * does not describe its providers list. */
static int map_without(const struct lg_node *map, const char *key, struct lg_node *out)
{
	size_t n = 0;

	*out = *map;
	out->keys = calloc(map->n + 1, sizeof *out->keys);
	out->items = calloc(map->n + 1, sizeof *out->items);
	out->key_lines = calloc(map->n + 1, sizeof *out->key_lines);
	if (!out->keys || !out->items || !out->key_lines)
		return -1;
	for (size_t k = 0; k < map->n; k++) {
		if (strcmp(map->keys[k], key) == 0)
			continue;
		out->keys[n] = map->keys[k];
		out->items[n] = map->items[k];
		out->key_lines[n] = map->key_lines[k];
		n++;
	}
	out->n = n;
	return 0;
}

static void map_without_free(struct lg_node *n)
{
	free(n->keys);
	free(n->items);
	free(n->key_lines);
}

/* The key actually given among a current name and an older one (both
 * given is an error); @key when neither is. */
static int pick_key(const char *file, const char *section, const struct lg_node *map,
		    const char *key, const char *old, const char **chosen, char *err,
		    size_t errlen)
{
	if (has_value(map, key) && has_value(map, old)) {
		cfg_error(err, errlen, file, line_of(map, old), section, old,
			  "also given as %s; keep one of them", key);
		return -1;
	}
	*chosen = has_value(map, old) ? old : key;
	return 0;
}

static void list_provider_types(const struct lg_registry *reg, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; reg && i < reg->nproviders && used < len; i++) {
		int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
				 reg->providers[i].ops->type);

		if (w < 0)
			break;
		used += (size_t)w;
	}
	if (!buf[0])
		snprintf(buf, len, "none");
}

static void list_strings(const char *const *list, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = '\0';
	for (size_t i = 0; list && list[i] && used < len; i++) {
		int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "", list[i]);

		if (w < 0)
			break;
		used += (size_t)w;
	}
}

static const struct lg_provider_entry *rt_provider(const struct lg_runtime *rt, const char *type)
{
	return rt->registry && type ? lg_registry_provider(rt->registry, type) : NULL;
}

/* The provider type of a configured or requested provider, able to serve
 * @model_type; NULL with a message in @why otherwise. */
static const struct lg_provider_entry *provider_type_for(const struct lg_runtime *rt,
							 const char *type, const char *model_type,
							 char *why, size_t whylen)
{
	const struct lg_provider_entry *e = rt->registry ? lg_registry_provider(rt->registry, type)
							 : NULL;
	char list[256];

	if (!e) {
		list_provider_types(rt->registry, list, sizeof list);
		lg_errf(why, whylen, "unknown provider type \"%s\" (loaded: %s); add the plugin "
			"that provides it under plugins:", type, list);
		return NULL;
	}
	if (model_type && !serves(e->ops, model_type)) {
		list_strings(e->ops->model_types, list, sizeof list);
		lg_errf(why, whylen, "provider type \"%s\" cannot serve %s models (it serves: %s)",
			type, model_type, list[0] ? list : "nothing");
		return NULL;
	}
	return e;
}

/* A required key, or one with a default: bound, so never absent. */
static const char *setting_str(const struct lg_settings *s, const char *key)
{
	const char *v = NULL;

	return lg_settings_str(s, key, &v) == 0 && v ? v : "";
}

/* Hosting zone, sizes, concurrency and timeouts; OpenGateLLM's older key
 * names are accepted too. */
static int parse_provider_numbers(const char *file, const char *section,
				  const struct lg_node *node, const struct lg_settings *s,
				  struct cfg_provider *out, char *err, size_t errlen)
{
	const char *k, *str;
	int64_t i64;

	if (pick_key(file, section, node, "model_hosting_zone", "model_carbon_footprint_zone",
		     &k, err, errlen) < 0)
		return -1;
	if (lg_settings_str(s, k, &str) == 0) {
		if (!valid_zone(str)) {
			cfg_error(err, errlen, file, line_of(node, k), section, k,
				  "expected an ISO 3166-1 alpha-3 code in capitals (FRA, USA) or WOR");
			return -1;
		}
		out->zone = strdup(str);
		if (!out->zone) {
			lg_errf(err, errlen, "%s: out of memory", file);
			return -1;
		}
	}
	if (pick_key(file, section, node, "model_total_params",
		     "model_carbon_footprint_total_params", &k, err, errlen) < 0)
		return -1;
	lg_settings_double(s, k, &out->total_params);
	if (pick_key(file, section, node, "model_active_params",
		     "model_carbon_footprint_active_params", &k, err, errlen) < 0)
		return -1;
	lg_settings_double(s, k, &out->active_params);
	if (pick_key(file, section, node, "max_concurrency", "qos_limit", &k, err, errlen) < 0)
		return -1;
	if (lg_settings_int(s, k, &i64) == 0)
		out->max_concurrency = i64;
	lg_settings_int(s, "timeout", &out->timeout_s);
	lg_settings_u64(s, "connect_timeout", &out->connect_ms);
	lg_settings_u64(s, "first_byte_timeout", &out->first_byte_ms);
	lg_settings_u64(s, "idle_timeout", &out->idle_ms);
	return 0;
}

static int parse_provider_values(const struct lg_runtime *rt, const char *file,
				 const char *section, const struct lg_node *node,
				 const struct lg_settings *s, const char *model_type,
				 struct cfg_provider *out, char *err, size_t errlen)
{
	const struct lg_provider_entry *e;
	const char *str = setting_str(s, "type"), *why = NULL;
	char msg[512];

	e = provider_type_for(rt, str, model_type, msg, sizeof msg);
	if (!e) {
		cfg_error(err, errlen, file, line_of(node, "type"), section, "type", "%s", msg);
		return -1;
	}
	out->type = strdup(str);
	if (!out->type)
		goto nomem;
	if (lg_settings_str(s, "url", &str) < 0)
		str = e->ops->default_url;
	if (!str) {
		cfg_error(err, errlen, file, node->line, section, "url",
			  "required: provider type \"%s\" has no default URL", out->type);
		return -1;
	}
	out->url = normalize_url(str, &why);
	if (!out->url) {
		cfg_error(err, errlen, file, line_of(node, "url"), section, "url", "%s", why);
		return -1;
	}
	if (lg_settings_str(s, "key", &str) == 0 && *str) {
		/* It becomes a header line: no control characters. */
		if (!valid_text(str, 4096)) {
			cfg_error(err, errlen, file, line_of(node, "key"), section, "key",
				  "expected printable characters");
			return -1;
		}
		out->key = strdup(str);
		if (!out->key)
			goto nomem;
	}
	str = setting_str(s, "model_name");
	if (!valid_text(str, MODEL_NAME_MAX_CHARS)) {
		cfg_error(err, errlen, file, line_of(node, "model_name"), section, "model_name",
			  "must be 1 to %d characters, without control characters",
			  MODEL_NAME_MAX_CHARS);
		return -1;
	}
	out->model_name = strdup(str);
	if (!out->model_name)
		goto nomem;
	return parse_provider_numbers(file, section, node, s, out, err, errlen);
nomem:
	lg_errf(err, errlen, "%s: out of memory", file);
	return -1;
}

static int parse_provider(const struct lg_runtime *rt, const char *file, const char *model_section,
			  size_t j, const struct lg_node *node, const char *model_type,
			  struct cfg_provider *out, char *err, size_t errlen)
{
	struct lg_settings *s = NULL;
	char section[96];
	int rc;

	snprintf(section, sizeof section, "%s.providers[%zu]", model_section, j);
	out->line = node->line;
	if (node->kind != LG_NODE_MAP) {
		cfg_error(err, errlen, file, node->line, section, NULL,
			  "expected a map (type: ..., url: ..., model_name: ...)");
		return -1;
	}
	if (lg_settings_bind(file, section, node, provider_table, LG_COUNT(provider_table), &s,
			     err, errlen) < 0)
		return -1;
	rc = parse_provider_values(rt, file, section, node, s, model_type, out, err, errlen);
	lg_settings_free(s);
	return rc;
}

static int parse_aliases(const char *file, const char *section, const struct lg_node *node,
			 const struct lg_settings *s, struct cfg_model *out, char *err,
			 size_t errlen)
{
	const struct lg_node *an = lg_node_get(node, "aliases");
	const char *const *list = NULL;
	size_t n = 0;

	if (lg_settings_strings(s, "aliases", &list, &n) < 0 || n == 0)
		return 0;
	if (n > ALIASES_MAX) {
		cfg_error(err, errlen, file, an->line, section, "aliases",
			  "%zu aliases; at most %d", n, ALIASES_MAX);
		return -1;
	}
	out->aliases = calloc(n, sizeof *out->aliases);
	out->alias_lines = calloc(n, sizeof *out->alias_lines);
	if (!out->aliases || !out->alias_lines)
		goto nomem;
	for (size_t a = 0; a < n; a++) {
		int line = an->kind == LG_NODE_SEQ ? an->items[a]->line : an->line;

		if (!valid_text(list[a], NAME_MAX_CHARS)) {
			cfg_error(err, errlen, file, line, section, "aliases",
				  "\"%s\": an alias is 1 to %d characters, without control "
				  "characters", list[a], NAME_MAX_CHARS);
			return -1;
		}
		out->aliases[a] = strdup(list[a]);
		if (!out->aliases[a])
			goto nomem;
		out->alias_lines[a] = line;
		out->naliases = a + 1;
	}
	return 0;
nomem:
	lg_errf(err, errlen, "%s: out of memory", file);
	return -1;
}

static int parse_model_values(const char *file, const char *section, const struct lg_node *node,
			      const struct lg_settings *s, struct cfg_model *out, char *err,
			      size_t errlen)
{
	const char *str = NULL;
	enum lg_strategy strategy;

	str = setting_str(s, "name");
	if (!valid_text(str, NAME_MAX_CHARS)) {
		cfg_error(err, errlen, file, line_of(node, "name"), section, "name",
			  "must be 1 to %d characters, without control characters", NAME_MAX_CHARS);
		return -1;
	}
	out->name = strdup(str);
	str = setting_str(s, "type");
	if (!model_type_known(str)) {
		cfg_error(err, errlen, file, line_of(node, "type"), section, "type",
			  "unknown model type \"%s\" (text-generation, text-embeddings-inference, "
			  "text-classification, automatic-speech-recognition, image-to-text)", str);
		return -1;
	}
	out->type = strdup(str);
	str = setting_str(s, "load_balancing_strategy");
	if (!strategy_parse(str, &strategy)) {
		cfg_error(err, errlen, file, line_of(node, "load_balancing_strategy"), section,
			  "load_balancing_strategy", "unknown strategy \"%s\" (shuffle, least_busy)",
			  str);
		return -1;
	}
	out->strategy = strdup(str);
	lg_settings_double(s, "cost_prompt_tokens", &out->cost_prompt);
	lg_settings_double(s, "cost_completion_tokens", &out->cost_completion);
	if (!out->name || !out->type || !out->strategy) {
		lg_errf(err, errlen, "%s: out of memory", file);
		return -1;
	}
	return parse_aliases(file, section, node, s, out, err, errlen);
}

/* Two providers of one model with the same url and model_name. */
static int check_provider_duplicates(const char *file, const char *section,
				     const struct cfg_model *md, char *err, size_t errlen)
{
	for (size_t j = 0; j < md->nproviders; j++) {
		for (size_t k = 0; k < j; k++) {
			const struct cfg_provider *a = &md->providers[k], *b = &md->providers[j];
			char sub[96];

			if (strcmp(a->url, b->url) != 0 || strcmp(a->model_name, b->model_name) != 0)
				continue;
			snprintf(sub, sizeof sub, "%s.providers[%zu]", section, j);
			cfg_error(err, errlen, file, b->line, sub, NULL,
				  "same url and model_name as providers[%zu] (line %d)", k, a->line);
			return -1;
		}
	}
	return 0;
}

static int parse_model(const struct lg_runtime *rt, const char *file, size_t i,
		       const struct lg_node *node, struct cfg_model *out, char *err, size_t errlen)
{
	const struct lg_node *pn = lg_node_get(node, "providers");
	struct lg_settings *s = NULL;
	struct lg_node shallow;
	char section[48];
	int rc;

	snprintf(section, sizeof section, "models[%zu]", i);
	out->line = node->line;
	if (node->kind != LG_NODE_MAP) {
		cfg_error(err, errlen, file, node->line, section, NULL,
			  "expected a map (name: ..., type: ..., providers: [...])");
		return -1;
	}
	if (map_without(node, "providers", &shallow) < 0) {
		map_without_free(&shallow);
		lg_errf(err, errlen, "%s: out of memory", file);
		return -1;
	}
	rc = lg_settings_bind(file, section, &shallow, model_table, LG_COUNT(model_table), &s,
			      err, errlen);
	map_without_free(&shallow);
	if (rc < 0)
		return -1;
	rc = parse_model_values(file, section, node, s, out, err, errlen);
	lg_settings_free(s);
	if (rc < 0)
		return -1;
	if (!pn || pn->kind == LG_NODE_NULL)
		return 0;
	if (pn->kind != LG_NODE_SEQ) {
		cfg_error(err, errlen, file, pn->line, section, "providers",
			  "expected a list of providers (- type: ..., url: ...)");
		return -1;
	}
	out->providers = calloc(pn->n ? pn->n : 1, sizeof *out->providers);
	if (!out->providers) {
		lg_errf(err, errlen, "%s: out of memory", file);
		return -1;
	}
	for (size_t j = 0; j < pn->n; j++) {
		out->nproviders = j + 1;
		if (parse_provider(rt, file, section, j, pn->items[j], out->type,
				   &out->providers[j], err, errlen) < 0)
			return -1;
	}
	return check_provider_duplicates(file, section, out, err, errlen);
}

struct name_use {
	const char *value;
	size_t model;
	int line;
	bool alias;
};

/* Names and aliases form one namespace across all models. */
static int check_names(const char *file, const struct cfg_models *cm, char *err, size_t errlen)
{
	struct name_use *uses;
	size_t n = 0, total = cm->n;
	int rc = 0;

	for (size_t i = 0; i < cm->n; i++)
		total += cm->v[i].naliases;
	uses = calloc(total ? total : 1, sizeof *uses);
	if (!uses) {
		lg_errf(err, errlen, "%s: out of memory", file);
		return -1;
	}
	for (size_t i = 0; i < cm->n; i++) {
		const struct cfg_model *md = &cm->v[i];

		uses[n++] = (struct name_use){ md->name, i, md->line, false };
		for (size_t a = 0; a < md->naliases; a++)
			uses[n++] = (struct name_use){ md->aliases[a], i, md->alias_lines[a], true };
	}
	for (size_t k = 0; k < n && rc == 0; k++) {
		for (size_t j = 0; j < k; j++) {
			char section[48];

			if (strcmp(uses[j].value, uses[k].value) != 0)
				continue;
			snprintf(section, sizeof section, "models[%zu]", uses[k].model);
			if (uses[j].model == uses[k].model)
				cfg_error(err, errlen, file, uses[k].line, section, "aliases",
					  "\"%s\" is already %s", uses[k].value,
					  uses[j].alias ? "an alias of this model" :
					  "the name of this model");
			else
				cfg_error(err, errlen, file, uses[k].line, section,
					  uses[k].alias ? "aliases" : "name",
					  "\"%s\" is already the %s of models[%zu] (line %d); names "
					  "and aliases must be unique across models", uses[k].value,
					  uses[j].alias ? "alias" : "name", uses[j].model, uses[j].line);
			rc = -1;
			break;
		}
	}
	free(uses);
	return rc;
}

static int parse_models(const struct lg_runtime *rt, const struct lg_node *models,
			const char *file, struct cfg_models *out, char *err, size_t errlen)
{
	out->v = NULL;
	out->n = 0;
	if (!models || models->kind == LG_NODE_NULL)
		return 0;
	if (models->kind != LG_NODE_SEQ) {
		lg_errf(err, errlen, "%s:%d: models: expected a list of models (- name: ...)", file,
			models->line);
		return -1;
	}
	out->v = calloc(models->n ? models->n : 1, sizeof *out->v);
	if (!out->v) {
		lg_errf(err, errlen, "%s: out of memory", file);
		return -1;
	}
	for (size_t i = 0; i < models->n; i++) {
		out->n = i + 1;
		if (parse_model(rt, file, i, models->items[i], &out->v[i], err, errlen) < 0)
			goto fail;
	}
	if (check_names(file, out, err, errlen) < 0)
		goto fail;
	return 0;
fail:
	cfg_models_free(out);
	return -1;
}

int lg_models_check_config(const struct lg_runtime *rt, const struct lg_node *models,
			   const char *file, char *err, size_t errlen)
{
	struct cfg_models cm;
	int rc = parse_models(rt, models, file, &cm, err, errlen);

	cfg_models_free(&cm);
	return rc;
}

/* ---- reconciling config.yml with the database ---- */

struct reconcile_stats {
	long created, updated, removed;   /* models */
	long changes;                     /* rows touched, all tables */
};

/* A statement on the reconciliation's connection; NULL with the server's
 * primary message (never parameters) in @err. */
static PGresult *tx_exec(PGconn *conn, const char *sql, int n, const char *const *params,
			 char *err, size_t errlen)
{
	PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	const char *msg;

	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
		return res;
	msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	lg_errf(err, errlen, "%s", msg ? msg : PQerrorMessage(conn));
	PQclear(res);
	return NULL;
}

static int tx_run(PGconn *conn, const char *sql, int n, const char *const *params, long *changed,
		  char *err, size_t errlen)
{
	PGresult *res = tx_exec(conn, sql, n, params, err, errlen);

	if (!res)
		return -1;
	if (changed)
		*changed += atol(PQcmdTuples(res));
	PQclear(res);
	return 0;
}

/* A JSON text the caller frees, or NULL. */
static char *json_text(json_t *j)
{
	char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;

	json_decref(j);
	return s;
}

static char *names_json(const struct cfg_models *cm, bool with_aliases)
{
	json_t *arr = json_array();

	for (size_t i = 0; arr && i < cm->n; i++) {
		if (json_array_append_new(arr, json_string(cm->v[i].name)) < 0)
			goto fail;
		for (size_t a = 0; with_aliases && a < cm->v[i].naliases; a++)
			if (json_array_append_new(arr, json_string(cm->v[i].aliases[a])) < 0)
				goto fail;
	}
	return json_text(arr);
fail:
	json_decref(arr);
	return NULL;
}

static char *aliases_json(const struct cfg_model *md)
{
	json_t *arr = json_array();

	for (size_t a = 0; arr && a < md->naliases; a++) {
		if (json_array_append_new(arr, json_string(md->aliases[a])) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return json_text(arr);
}

static json_t *nullable_int(int64_t v)
{
	return v ? json_integer(v) : json_null();
}

static char *providers_json(const struct cfg_model *md)
{
	json_t *arr = json_array();

	for (size_t p = 0; arr && p < md->nproviders; p++) {
		const struct cfg_provider *pv = &md->providers[p];
		json_t *o = json_pack("{s:s,s:s,s:s?,s:s,s:I,s:o,s:o,s:o,s:o,s:s?,s:f,s:f}",
				      "type", pv->type, "url", pv->url, "key", pv->key,
				      "model_name", pv->model_name, "timeout", (json_int_t)pv->timeout_s,
				      "connect_timeout_ms", nullable_int((int64_t)pv->connect_ms),
				      "first_byte_timeout_ms", nullable_int((int64_t)pv->first_byte_ms),
				      "idle_timeout_ms", nullable_int((int64_t)pv->idle_ms),
				      "max_concurrency", nullable_int(pv->max_concurrency),
				      "model_hosting_zone", pv->zone,
				      "model_total_params", pv->total_params,
				      "model_active_params", pv->active_params);

		if (!o || json_array_append_new(arr, o) < 0) {
			json_decref(arr);
			return NULL;
		}
	}
	return json_text(arr);
}

/* A config model may not take a name or alias of a model created through
 * the admin API: say which, with the line. */
static int check_admin_conflicts(PGconn *conn, const struct cfg_models *cm, const char *file,
				 char *err, size_t errlen)
{
	static const char sql[] =
		"SELECT v.value, m.name, m.id FROM json_array_elements_text($1::json) AS v(value) "
		"JOIN model m ON NOT m.from_config AND (m.name = v.value OR EXISTS ("
		"SELECT 1 FROM model_alias a WHERE a.model_id = m.id AND a.value = v.value)) "
		"LIMIT 1";
	char *names = names_json(cm, true);
	const char *params[1] = { names };
	PGresult *res;
	int rc = 0;

	if (!names) {
		lg_errf(err, errlen, "out of memory");
		return -1;
	}
	res = tx_exec(conn, sql, 1, params, err, errlen);
	free(names);
	if (!res)
		return -1;
	if (PQntuples(res) > 0) {
		const char *value = PQgetvalue(res, 0, 0);

		for (size_t i = 0; i < cm->n && rc == 0; i++) {
			const struct cfg_model *md = &cm->v[i];
			char section[48];
			int line = md->line;
			bool alias = false;

			for (size_t a = 0; a < md->naliases; a++) {
				if (strcmp(md->aliases[a], value) == 0) {
					line = md->alias_lines[a];
					alias = true;
				}
			}
			if (!alias && strcmp(md->name, value) != 0)
				continue;
			snprintf(section, sizeof section, "models[%zu]", i);
			cfg_error(err, errlen, file, line, section, alias ? "aliases" : "name",
				  "\"%s\" is already taken by model \"%s\" (id %s), created through the "
				  "admin API; rename one of them", value, PQgetvalue(res, 0, 1),
				  PQgetvalue(res, 0, 2));
			rc = -1;
		}
	}
	PQclear(res);
	return rc;
}

static int delete_stale_models(PGconn *conn, const struct cfg_models *cm,
			       struct reconcile_stats *st, char *err, size_t errlen)
{
	static const char sql[] =
		"DELETE FROM model WHERE from_config AND name NOT IN "
		"(SELECT json_array_elements_text($1::json))";
	char *names = names_json(cm, false);
	const char *params[1] = { names };
	long removed = 0;
	int rc;

	if (!names) {
		lg_errf(err, errlen, "out of memory");
		return -1;
	}
	rc = tx_run(conn, sql, 1, params, &removed, err, errlen);
	free(names);
	st->removed += removed;
	st->changes += removed;
	return rc;
}

/* Creates or updates the model by name; its id in *@id. */
static int upsert_model(PGconn *conn, const struct cfg_model *md, struct reconcile_stats *st,
			int64_t *id, char *err, size_t errlen)
{
	static const char upsert[] =
		"INSERT INTO model (name, type, load_balancing_strategy, cost_prompt_tokens, "
		"cost_completion_tokens, from_config) VALUES ($1, $2, $3, $4::float8, $5::float8, true) "
		"ON CONFLICT (name) DO UPDATE SET type = EXCLUDED.type, "
		"load_balancing_strategy = EXCLUDED.load_balancing_strategy, "
		"cost_prompt_tokens = EXCLUDED.cost_prompt_tokens, "
		"cost_completion_tokens = EXCLUDED.cost_completion_tokens "
		"WHERE model.from_config AND (model.type, model.load_balancing_strategy, "
		"model.cost_prompt_tokens, model.cost_completion_tokens) IS DISTINCT FROM "
		"(EXCLUDED.type, EXCLUDED.load_balancing_strategy, EXCLUDED.cost_prompt_tokens, "
		"EXCLUDED.cost_completion_tokens) "
		"RETURNING (xmax = 0)";
	static const char select_id[] = "SELECT id, from_config FROM model WHERE name = $1";
	char cp[32], cc[32];
	const char *params[5] = { md->name, md->type, md->strategy, cp, cc };
	PGresult *res;

	snprintf(cp, sizeof cp, "%.17g", md->cost_prompt);
	snprintf(cc, sizeof cc, "%.17g", md->cost_completion);
	res = tx_exec(conn, upsert, 5, params, err, errlen);
	if (!res)
		return -1;
	if (PQntuples(res) == 1) {
		if (strcmp(PQgetvalue(res, 0, 0), "t") == 0)
			st->created++;
		else
			st->updated++;
		st->changes++;
	}
	PQclear(res);
	res = tx_exec(conn, select_id, 1, params, err, errlen);
	if (!res)
		return -1;
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
		lg_errf(err, errlen, "\"%s\" was taken by a model created through the admin API "
			"meanwhile", md->name);
		PQclear(res);
		return -1;
	}
	*id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return 0;
}

static int apply_aliases(PGconn *conn, const struct cfg_model *md, const char *id,
			 struct reconcile_stats *st, char *err, size_t errlen)
{
	static const char remove[] =
		"DELETE FROM model_alias WHERE model_id = $1::bigint AND value NOT IN "
		"(SELECT json_array_elements_text($2::json))";
	static const char add[] =
		"INSERT INTO model_alias (model_id, value) SELECT $1::bigint, v "
		"FROM json_array_elements_text($2::json) AS v WHERE NOT EXISTS ("
		"SELECT 1 FROM model_alias a WHERE a.model_id = $1::bigint AND a.value = v)";
	char *aliases = aliases_json(md);
	const char *params[2] = { id, aliases };
	int rc;

	if (!aliases) {
		lg_errf(err, errlen, "out of memory");
		return -1;
	}
	rc = tx_run(conn, remove, 2, params, &st->changes, err, errlen);
	if (rc == 0)
		rc = tx_run(conn, add, 2, params, &st->changes, err, errlen);
	free(aliases);
	return rc;
}

/* Providers are matched by (url, model_name), so a provider that stays
 * keeps its id (and its live state in the balancer). */
static int apply_providers(PGconn *conn, const struct cfg_model *md, const char *id,
			   struct reconcile_stats *st, char *err, size_t errlen)
{
	static const char remove[] =
		"DELETE FROM model_client WHERE model_id = $1::bigint AND (url, model_name) NOT IN "
		"(SELECT x->>'url', x->>'model_name' FROM json_array_elements($2::json) AS x)";
	static const char upsert[] =
		"INSERT INTO model_client (model_id, type, url, key, model_name, timeout, "
		"connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms, max_concurrency, "
		"model_hosting_zone, model_total_params, model_active_params) "
		"SELECT $1::bigint, x->>'type', x->>'url', x->>'key', x->>'model_name', "
		"(x->>'timeout')::int, (x->>'connect_timeout_ms')::int, "
		"(x->>'first_byte_timeout_ms')::int, (x->>'idle_timeout_ms')::int, "
		"(x->>'max_concurrency')::int, x->>'model_hosting_zone', "
		"(x->>'model_total_params')::float8, (x->>'model_active_params')::float8 "
		"FROM json_array_elements($2::json) AS x "
		"ON CONFLICT (model_id, url, model_name) DO UPDATE SET type = EXCLUDED.type, "
		"key = EXCLUDED.key, timeout = EXCLUDED.timeout, "
		"connect_timeout_ms = EXCLUDED.connect_timeout_ms, "
		"first_byte_timeout_ms = EXCLUDED.first_byte_timeout_ms, "
		"idle_timeout_ms = EXCLUDED.idle_timeout_ms, "
		"max_concurrency = EXCLUDED.max_concurrency, "
		"model_hosting_zone = EXCLUDED.model_hosting_zone, "
		"model_total_params = EXCLUDED.model_total_params, "
		"model_active_params = EXCLUDED.model_active_params "
		"WHERE (model_client.type, model_client.key, model_client.timeout, "
		"model_client.connect_timeout_ms, model_client.first_byte_timeout_ms, "
		"model_client.idle_timeout_ms, model_client.max_concurrency, "
		"model_client.model_hosting_zone, model_client.model_total_params, "
		"model_client.model_active_params) IS DISTINCT FROM (EXCLUDED.type, EXCLUDED.key, "
		"EXCLUDED.timeout, EXCLUDED.connect_timeout_ms, EXCLUDED.first_byte_timeout_ms, "
		"EXCLUDED.idle_timeout_ms, EXCLUDED.max_concurrency, EXCLUDED.model_hosting_zone, "
		"EXCLUDED.model_total_params, EXCLUDED.model_active_params)";
	char *providers = providers_json(md);
	const char *params[2] = { id, providers };
	int rc;

	if (!providers) {
		lg_errf(err, errlen, "out of memory");
		return -1;
	}
	rc = tx_run(conn, remove, 2, params, &st->changes, err, errlen);
	if (rc == 0)
		rc = tx_run(conn, upsert, 2, params, &st->changes, err, errlen);
	free(providers);
	return rc;
}

static int apply_model(PGconn *conn, const struct cfg_model *md, struct reconcile_stats *st,
		       char *err, size_t errlen)
{
	int64_t id;
	char ids[24];

	if (upsert_model(conn, md, st, &id, err, errlen) < 0)
		return -1;
	snprintf(ids, sizeof ids, "%" PRId64, id);
	if (apply_aliases(conn, md, ids, st, err, errlen) < 0 ||
	    apply_providers(conn, md, ids, st, err, errlen) < 0)
		return -1;
	return 0;
}

static PGconn *reconcile_connect(const struct lg_core_config *c, char *err, size_t errlen)
{
	struct lg_pg_config pc = {
		.url = c->pg_url,
		.pool_size = 1,
		.connect_retry_ms = RECONCILE_CONNECT_RETRY_MS,
		.command_timeout_ms = c->pg_command_timeout_ms,
		.server_settings = (const char *const *)c->pg_server_settings,
		.application_name = "llmgate",
	};

	return lg_pg_connect_one(&pc, err, errlen);
}

/* The transaction: config models are created or updated by name, their
 * aliases and providers made to match, config models that left the file
 * deleted; models created through the admin API are left alone.
 * Deferred constraints are checked at COMMIT, so an alias may move from
 * one model to another in the same reconciliation. */
static int reconcile_tx(PGconn *conn, const struct cfg_models *cm, const char *file,
			struct reconcile_stats *st, char *err, size_t errlen)
{
	char msg[512];

	if (check_admin_conflicts(conn, cm, file, err, errlen) < 0)
		return -1;   /* @err names the line */
	if (tx_run(conn, "SET CONSTRAINTS ALL DEFERRED", 0, NULL, NULL, msg, sizeof msg) < 0 ||
	    delete_stale_models(conn, cm, st, msg, sizeof msg) < 0)
		goto fail;
	for (size_t i = 0; i < cm->n; i++) {
		if (apply_model(conn, &cm->v[i], st, msg, sizeof msg) < 0) {
			lg_errf(err, errlen, "%s:%d: models[%zu]: cannot store it: %s", file,
				cm->v[i].line, i, msg);
			return -1;
		}
	}
	if (st->changes > 0 &&
	    tx_run(conn, "SELECT pg_notify('" CHANNEL "', '')", 0, NULL, NULL, msg,
		   sizeof msg) < 0)
		goto fail;
	return 0;
fail:
	lg_errf(err, errlen, "%s: models: cannot store them: %s", file, msg);
	return -1;
}

static int reconcile(struct lg_models *m, const struct cfg_models *cm, const char *file,
		     char *err, size_t errlen)
{
	struct reconcile_stats st = { 0 };
	char msg[768];
	PGconn *conn = reconcile_connect(m->rt->cfg, msg, sizeof msg);
	PGresult *res;

	if (!conn) {
		lg_errf(err, errlen, "%s: models: %s", file, msg);
		return -1;
	}
	/* The lock serialises instances that start or reload together. */
	if (tx_run(conn, "BEGIN", 0, NULL, NULL, msg, sizeof msg) < 0 ||
	    tx_run(conn, "SELECT pg_advisory_xact_lock(" LOCK_SPACE ", 1)", 0, NULL, NULL, msg,
		   sizeof msg) < 0) {
		lg_errf(err, errlen, "%s: models: %s", file, msg);
		goto rollback;
	}
	if (reconcile_tx(conn, cm, file, &st, err, errlen) < 0)
		goto rollback;
	/* Deferred checks run here: a failed COMMIT has rolled back. */
	if (tx_run(conn, "COMMIT", 0, NULL, NULL, msg, sizeof msg) < 0) {
		lg_errf(err, errlen, "%s: models: cannot store them: %s", file, msg);
		goto fail;
	}
	PQfinish(conn);
	if (st.changes > 0)
		lg_info(COMP, "%s: models reconciled: %ld created, %ld updated, %ld removed "
			"(%ld rows changed)", file, st.created, st.updated, st.removed, st.changes);
	return 0;
rollback:
	res = PQexec(conn, "ROLLBACK");
	PQclear(res);
fail:
	PQfinish(conn);
	return -1;
}

/* ---- following the database (main thread) ---- */

static struct reload_waiter *take_waiters(struct lg_models *m)
{
	struct reload_waiter *w;

	pthread_mutex_lock(&m->lock);
	w = m->waiters;
	m->waiters = NULL;
	pthread_mutex_unlock(&m->lock);
	return w;
}

static void waiter_fire(void *arg)
{
	struct reload_waiter *w = arg;

	w->fn(w->arg);
	free(w);
}

/* Each waiter continues on its own loop. */
static void release_waiters(struct reload_waiter *w)
{
	while (w) {
		struct reload_waiter *next = w->next;

		if (lg_loop_post(w->loop, waiter_fire, w) != 0) {
			lg_error(COMP, "out of memory: an admin request waiting for the model "
				 "registry stays unanswered");
			free(w);
		}
		w = next;
	}
}

/* Has the main thread reload the view, then runs @fn(@arg) on the calling
 * loop. -1 when the registry is not running: the caller goes on at once.
 * Thread: a loop other than main (a worker). */
static int wait_for_reload(struct lg_models *m, void (*fn)(void *arg), void *arg)
{
	struct reload_waiter *w = malloc(sizeof *w);
	struct lg_loop *loop = lg_loop_current();

	if (!w || !loop) {
		free(w);
		return -1;
	}
	*w = (struct reload_waiter){ .loop = loop, .fn = fn, .arg = arg };
	pthread_mutex_lock(&m->lock);
	if (!m->accepting) {
		pthread_mutex_unlock(&m->lock);
		free(w);
		return -1;
	}
	w->next = m->waiters;
	m->waiters = w;
	/* Under the lock: stop() frees the event after clearing accepting. */
	event_active(m->kick, EV_TIMEOUT, 0);
	pthread_mutex_unlock(&m->lock);
	return 0;
}

/* Reload soon; requests in a burst make one reload. */
static void request_reload(struct lg_models *m)
{
	pthread_mutex_lock(&m->lock);
	if (m->accepting)
		event_active(m->kick, EV_TIMEOUT, 0);
	pthread_mutex_unlock(&m->lock);
}

static void health_round(struct lg_models *m);

static int reload_now(struct lg_models *m, char *err, size_t errlen)
{
	struct lg_models_view *v = load_view(m, err, errlen);

	if (!v)
		return -1;
	publish(m, v);
	health_round(m);
	return 0;
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct lg_models *m = arg;
	/* Taken before the load: every waiter committed before it, so the
	 * load's snapshot has its change. */
	struct reload_waiter *w = take_waiters(m);
	char err[512];

	(void)fd;
	(void)what;
	if (reload_now(m, err, sizeof err) < 0)
		lg_warn(COMP, "cannot reload the models, the current ones stay: %s", err);
	release_waiters(w);
}

static void on_notify(const char *channel, const char *payload, void *arg)
{
	(void)channel;
	(void)payload;
	request_reload(arg);
}

/* A NOTIFY is lost while the LISTEN connection is down: compare a digest
 * of the tables with the view's. */
static void check_digest(struct lg_models *m)
{
	struct lg_pg *pg = atomic_load(&m->rt->pg);
	const struct lg_models_view *v = atomic_load(&m->current);
	char err[256];
	PGresult *res;

	if (!pg || !lg_pg_healthy(pg))
		return;
	res = lg_pg_query_sync(pg, digest_sql, 0, NULL, err, sizeof err);
	if (!res) {
		lg_debug(COMP, "digest: %s", err);
		return;
	}
	if (PQntuples(res) == 1 && (!v->digest || strcmp(PQgetvalue(res, 0, 0), v->digest) != 0)) {
		lg_debug(COMP, "the model tables changed: reloading");
		request_reload(m);
	}
	PQclear(res);
}

/* ---- health (main thread) ---- */

struct health_probe {
	struct health_probe *next;
	struct lg_models *m;         /* NULL once the registry stopped: just free */
	struct lg_fetch *fetch;
	int64_t provider_id;
	bool metrics;                /* vLLM's /metrics rather than the model list */
};

/* Into the current view; a later view inherits it. */
static void health_set(struct lg_models *m, int64_t provider_id, enum health h)
{
	struct lg_models_view *v = atomic_load(&m->current);

	for (size_t i = 0; i < v->nproviders; i++)
		if (v->providers[i].conf.id == provider_id)
			atomic_store(&v->health[i], h);
}

/* The sum of a Prometheus gauge over its label sets; *@found when any. */
static double metric_sum(const char *text, const char *name, bool *found)
{
	size_t n = strlen(name);
	double sum = 0;

	for (const char *line = text; line && *line;) {
		const char *eol = strchr(line, '\n');
		const char *end = eol ? eol : line + strlen(line);
		const char *p = line + n;

		if ((size_t)(end - line) > n && strncmp(line, name, n) == 0 &&
		    (*p == '{' || *p == ' ')) {
			if (*p == '{')
				p = memchr(p, '}', (size_t)(end - p));
			if (p) {
				char *num_end;
				double v = strtod(p + (*p == '}'), &num_end);

				if (num_end != p + (*p == '}') && num_end <= end && isfinite(v)) {
					sum += v;
					*found = true;
				}
			}
		}
		line = eol ? eol + 1 : NULL;
	}
	return sum;
}

static enum health judge(const struct health_probe *hp, enum lg_fetch_result result, int status,
			 struct lg_str body)
{
	bool found_running = false, found_waiting = false;
	double running, waiting;
	char *text;

	if (result != LG_FETCH_OK || status < 200 || status > 299)
		return HEALTH_RED;
	if (!hp->metrics)
		return HEALTH_GREEN;
	text = strndup(body.ptr ? body.ptr : "", body.len);
	if (!text)
		return HEALTH_RED;
	running = metric_sum(text, "vllm:num_requests_running", &found_running);
	waiting = metric_sum(text, "vllm:num_requests_waiting", &found_waiting);
	free(text);
	if (!found_running && !found_waiting)
		return HEALTH_RED;      /* metrics unreadable */
	if (running > VLLM_RUNNING_RED)
		return HEALTH_RED;
	return waiting > 0 ? HEALTH_YELLOW : HEALTH_GREEN;
}

static void health_done(void *arg, enum lg_fetch_result result, int status, struct lg_str body,
			const char *error)
{
	struct health_probe *hp = arg;
	struct lg_models *m = hp->m;

	(void)error;
	if (m) {
		for (struct health_probe **pp = &m->probes; *pp; pp = &(*pp)->next) {
			if (*pp == hp) {
				*pp = hp->next;
				break;
			}
		}
		health_set(m, hp->provider_id, judge(hp, result, status, body));
	}
	free(hp);
	if (m && !m->probes && m->health_again) {
		m->health_again = false;
		health_round(m);
	}
}

/* GET {url}/metrics for vLLM, else GET {url}{models_path}: never a
 * completion, so a check costs nothing upstream. */
static int health_probe_start(struct lg_models *m, struct lg_fetcher *f,
			      const struct lg_model_provider *p)
{
	static const struct lg_fetch_handlers handlers = {
		.size = sizeof(struct lg_fetch_handlers), .on_done = health_done,
	};
	bool metrics = strcmp(p->conf.type, "vllm") == 0;
	const char *path = metrics ? "/metrics" :
			   p->impl->ops->models_path ? p->impl->ops->models_path : "/v1/models";
	struct health_probe *hp = calloc(1, sizeof *hp);
	const char *headers[2] = { NULL, NULL };
	char *url = NULL, *auth = NULL;
	struct lg_fetch_request rq = {
		.size = sizeof rq, .method = "GET", .headers = headers,
		.connect_timeout_ms = HEALTH_CONNECT_MS, .first_byte_timeout_ms = HEALTH_TOTAL_MS,
		.idle_timeout_ms = HEALTH_TOTAL_MS, .total_timeout_ms = HEALTH_TOTAL_MS,
		.max_response_bytes = HEALTH_MAX_BYTES,
	};

	if (!hp || asprintf(&url, "%s%s", p->conf.url, path) < 0)
		goto fail;
	if (p->conf.key && asprintf(&auth, "Authorization: Bearer %s", p->conf.key) < 0) {
		auth = NULL;
		goto fail;
	}
	headers[0] = auth;
	rq.url = url;
	*hp = (struct health_probe){ .m = m, .provider_id = p->conf.id, .metrics = metrics };
	hp->fetch = lg_fetch_start(f, &rq, &handlers, hp);   /* copies the request */
	if (!hp->fetch)
		goto fail;
	hp->next = m->probes;
	m->probes = hp;
	free(url);
	free(auth);
	return 0;
fail:
	free(url);
	free(auth);
	free(hp);
	return -1;
}

/* Checks every provider of the current view; results land as they come. */
static void health_round(struct lg_models *m)
{
	struct lg_fetcher *f = m->rt->main_loop ? lg_loop_fetcher(m->rt->main_loop) : NULL;
	struct lg_models_view *v = atomic_load(&m->current);

	if (m->probes) {
		m->health_again = true;
		return;
	}
	for (size_t i = 0; i < v->nproviders; i++) {
		const struct lg_model_provider *p = &v->providers[i];
		enum health now = HEALTH_UNKNOWN;

		if (!p->impl)
			now = HEALTH_RED;          /* its plugin is not loaded here */
		else if (p->impl->ops->serve)
			now = HEALTH_GREEN;        /* answered in process */
		else if (!f || health_probe_start(m, f, p) < 0)
			now = HEALTH_RED;
		if (now != HEALTH_UNKNOWN)
			atomic_store(&v->health[i], now);
	}
}

static void health_stop(struct lg_models *m)
{
	struct health_probe *hp = m->probes;

	/* Their on_done runs later (at the latest when the fetcher is freed)
	 * and only frees them. */
	while (hp) {
		struct health_probe *next = hp->next;

		hp->m = NULL;
		lg_fetch_cancel(hp->fetch);
		hp = next;
	}
	m->probes = NULL;
	m->health_again = false;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	struct lg_models *m = arg;

	(void)fd;
	(void)what;
	check_digest(m);
	health_round(m);
}

/* ---- lifecycle ---- */

struct lg_models *lg_models_new(struct lg_runtime *rt)
{
	struct lg_models *m = calloc(1, sizeof *m);
	struct lg_models_view *v;

	if (!m)
		return NULL;
	m->rt = rt;
	if (pthread_mutex_init(&m->lock, NULL) != 0) {
		free(m);
		return NULL;
	}
	/* An empty view until start: get() never returns NULL. */
	v = view_alloc(rt ? rt->balancer : NULL, 0, 0);
	if (!v || view_index(v) < 0) {
		view_free(v);
		pthread_mutex_destroy(&m->lock);
		free(m);
		return NULL;
	}
	atomic_init(&m->current, v);
	return m;
}

void lg_models_free(struct lg_models *m)
{
	if (!m)
		return;
	lg_models_stop(m);
	lg_models_view_put(atomic_load(&m->current));
	pthread_mutex_destroy(&m->lock);
	free(m);
}

static const char *config_file(const struct lg_core_config *cfg)
{
	return cfg->doc && cfg->doc->path ? cfg->doc->path : "config.yml";
}

/* config.yml into the database, then a fresh view. */
static int apply_config(struct lg_models *m, const struct lg_core_config *cfg, char *err,
			size_t errlen)
{
	const char *file = config_file(cfg);
	struct cfg_models cm;
	char msg[512];
	int rc;

	if (parse_models(m->rt, cfg->models, file, &cm, err, errlen) < 0)
		return -1;
	rc = reconcile(m, &cm, file, err, errlen);
	cfg_models_free(&cm);
	if (rc < 0)
		return -1;
	if (reload_now(m, msg, sizeof msg) < 0) {
		lg_errf(err, errlen, "models: stored, but the registry cannot be reloaded: %s", msg);
		return -1;
	}
	return 0;
}

int lg_models_start(struct lg_models *m, char *err, size_t errlen)
{
	struct lg_runtime *rt = m->rt;
	struct event_base *base = lg_loop_base(rt->main_loop);
	struct timeval tick = { TICK_MS / 1000, (TICK_MS % 1000) * 1000 };
	const struct lg_models_view *v;

	/* No probing here: a provider that is down shows in /health/models. */
	if (apply_config(m, rt->cfg, err, errlen) < 0)
		return -1;
	m->kick = event_new(base, -1, 0, on_kick, m);
	m->tick = event_new(base, -1, EV_PERSIST, on_tick, m);
	if (!m->kick || !m->tick || event_add(m->tick, &tick) != 0) {
		lg_errf(err, errlen, "models: cannot create the reload and health timers");
		return -1;
	}
	if (lg_pg_listen(atomic_load(&rt->pg), rt->main_loop, CHANNEL, on_notify, m) < 0) {
		lg_errf(err, errlen, "models: cannot LISTEN on " CHANNEL);
		return -1;
	}
	pthread_mutex_lock(&m->lock);
	m->accepting = true;
	pthread_mutex_unlock(&m->lock);
	v = atomic_load(&m->current);
	lg_info(COMP, "%zu model%s, %zu provider%s", v->nmodels, v->nmodels == 1 ? "" : "s",
		v->nproviders, v->nproviders == 1 ? "" : "s");
	return 0;
}

int lg_models_reload(struct lg_models *m, const struct lg_core_config *cfg, char *err,
		     size_t errlen)
{
	if (!m->kick) {
		lg_errf(err, errlen, "models: the registry is not running");
		return -1;
	}
	return apply_config(m, cfg, err, errlen);
}

void lg_models_stop(struct lg_models *m)
{
	struct reload_waiter *w;

	pthread_mutex_lock(&m->lock);
	m->accepting = false;
	w = m->waiters;
	m->waiters = NULL;
	pthread_mutex_unlock(&m->lock);
	/* Workers still run: each waiting request answers. */
	release_waiters(w);
	if (m->kick)
		event_free(m->kick);
	if (m->tick)
		event_free(m->tick);
	m->kick = m->tick = NULL;
	health_stop(m);
}

/* ---- GET /v1/models, /v1/models/{model...}, /health/models ---- */

static void reply_json(struct lg_req *req, int status, json_t *root)
{
	char *text = json_text(root);

	if (!text) {
		lg_host_api.reply_error(req, 500, "An unexpected error occurred");
		return;
	}
	lg_host_api.reply(req, status, "application/json", text, strlen(text));
	free(text);
}

/* Visible: it has a provider and the caller may use it (the access
 * functions of plugins, e.g. auth's roles). */
static bool visible(const struct lg_models *m, struct lg_req *req, const struct lg_model *md)
{
	return md->nproviders > 0 &&
	       lg_registry_model_allowed(m->rt->registry, lg_host_api.req_principal(req), md->id);
}

/* OpenGateLLM's Model object. */
static json_t *model_json(const struct lg_model *md)
{
	json_t *aliases = json_array();

	for (size_t a = 0; aliases && a < md->naliases; a++) {
		if (json_array_append_new(aliases, json_string(md->aliases[a])) < 0) {
			json_decref(aliases);
			return NULL;
		}
	}
	if (!aliases)
		return NULL;
	return json_pack("{s:s,s:s,s:s,s:o,s:I,s:s,s:o,s:{s:f,s:f}}", "object", "model",
			 "id", md->name, "type", md->type, "aliases", aliases,
			 "created", (json_int_t)md->created, "owned_by", md->owned_by,
			 "max_context_length", nullable_int(md->max_context_length),
			 "costs", "prompt_tokens", md->cost_prompt_tokens,
			 "completion_tokens", md->cost_completion_tokens);
}

static void route_models(struct lg_req *req, void *ud)
{
	struct lg_models_view *v = lg_models_view_get(ud);
	json_t *data = json_array();

	for (size_t i = 0; data && i < v->nmodels; i++) {
		if (visible(ud, req, &v->models[i]) &&
		    json_array_append_new(data, model_json(&v->models[i])) < 0) {
			json_decref(data);
			data = NULL;
		}
	}
	lg_models_view_put(v);
	reply_json(req, 200, data ? json_pack("{s:s,s:o}", "object", "list", "data", data) : NULL);
}

static void route_model(struct lg_req *req, void *ud)
{
	const char *name = lg_host_api.req_param(req, "model");
	struct lg_models_view *v = lg_models_view_get(ud);
	const struct lg_model *md = lg_models_find(v, name);

	/* Unknown and invisible look the same: no existence leak. */
	if (!md || !visible(ud, req, md))
		lg_host_api.reply_error(req, 404, "Model %s not found.", name ? name : "");
	else
		reply_json(req, 200, model_json(md));
	lg_models_view_put(v);
}

static void route_health_models(struct lg_req *req, void *ud)
{
	struct lg_models_view *v = lg_models_view_get(ud);
	json_t *list = json_array();

	for (size_t i = 0; list && i < v->nmodels; i++) {
		const struct lg_model *md = &v->models[i];

		if (visible(ud, req, md) &&
		    json_array_append_new(list, json_pack("{s:s,s:s}", "id", md->name, "status",
							  health_names[model_health(v, md)])) < 0) {
			json_decref(list);
			list = NULL;
		}
	}
	lg_models_view_put(v);
	reply_json(req, 200, list);
}

/* ---- the admin API: common parts ---- */

enum admin_op { OP_GET, OP_CREATE, OP_PATCH, OP_DELETE };

/* A router (model) as the admin API sends it. */
struct router_in {
	const char *name, *type, *strategy;
	const char *cost_prompt, *cost_completion;  /* numbers as text, or NULL */
	const char **aliases;
	size_t naliases;
	const char *aliases_json;                   /* NULL: not given */
};

/* A provider as the admin API sends it, and what the database said. */
struct provider_in {
	const char *router_id;                      /* as text, or NULL */
	int64_t router;
	const char *type, *url, *key, *model_name, *zone;
	const struct lg_provider_entry *impl;
	const char *timeout, *max_concurrency, *connect_ms, *first_byte_ms, *idle_ms;
	const char *total_params, *active_params;
	/* the router it goes to */
	const char *router_name, *router_type;
	bool has_siblings;
	int64_t ref_ctx, ref_vs;                    /* the siblings' capabilities, or 0 */
	/* its own capabilities: probed (create) or stored (move), or 0 */
	int64_t ctx, vs;
	/* PATCH: where it is now */
	int64_t cur_router;
};

struct probe {
	struct admin *a;        /* NULL once the client left: just free */
	bool embeddings;        /* the second step: the vector size */
};

/* What differs between the router and the provider admin APIs. */
struct admin_kind {
	const char *noun;       /* "router", "provider" (logs) */
	const char *title;      /* "Model router", "Model provider" (404 texts) */
};

static const struct admin_kind router_kind = { "router", "Model router" };
static const struct admin_kind provider_kind = { "provider", "Model provider" };

struct admin {
	struct lg_models *m;
	struct lg_req *req;
	const struct admin_kind *kind;
	enum admin_op op;
	int64_t id;             /* the router or provider being worked on */
	const char *user_id;    /* the caller, as text, or NULL */
	const char *json;       /* the reply, in the request's arena */
	int status;
	struct router_in r;
	struct provider_in p;
	struct probe *probe;    /* in flight */
	struct lg_fetch *probe_fetch;
};


/* @s without leading and trailing blanks, in the request's arena. */
static char *arena_strip(struct lg_req *req, const char *s)
{
	size_t len;
	char *out;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	len = strlen(s);
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' ||
		       s[len - 1] == '\r'))
		len--;
	out = lg_req_alloc(req, len + 1);
	if (out)
		memcpy(out, s, len);
	return out;
}

static void reply_oom(struct lg_req *req)
{
	lg_host_api.reply_error(req, 500, "An unexpected error occurred");
}

/* Body members. Each returns false once it has answered 422 (or 500). */

static bool body_string(struct lg_req *req, const json_t *body, const char *key,
			const char **out)
{
	const json_t *v = json_object_get(body, key);

	*out = NULL;
	if (!v || json_is_null(v))
		return true;
	if (!json_is_string(v)) {
		lg_host_api.reply_error(req, 422, "%s: expected a string", key);
		return false;
	}
	*out = arena_strip(req, json_string_value(v));
	if (!*out)
		reply_oom(req);
	return *out != NULL;
}

static bool body_number(struct lg_req *req, const json_t *body, const char *key, double min,
			double max, const char **out)
{
	const json_t *v = json_object_get(body, key);
	double d;

	*out = NULL;
	if (!v || json_is_null(v))
		return true;
	d = json_is_number(v) ? json_number_value(v) : NAN;
	if (!isfinite(d) || d < min || d > max) {
		lg_host_api.reply_error(req, 422, "%s: expected a number from %g to %g", key, min,
					max);
		return false;
	}
	*out = lg_req_printf(req, "%.17g", d);
	if (!*out)
		reply_oom(req);
	return *out != NULL;
}

static bool body_int(struct lg_req *req, const json_t *body, const char *key, int64_t min,
		     int64_t max, const char **out, int64_t *value)
{
	const json_t *v = json_object_get(body, key);
	double d = NAN;
	int64_t i = 0;

	*out = NULL;
	if (!v || json_is_null(v))
		return true;
	if (json_is_integer(v)) {
		i = (int64_t)json_integer_value(v);
		d = (double)i;
	} else if (json_is_real(v) && json_real_value(v) > -9e15 && json_real_value(v) < 9e15 &&
		   (double)(int64_t)json_real_value(v) == json_real_value(v)) {
		/* 300.0 is an integer, as pydantic reads it */
		d = json_real_value(v);
		i = (int64_t)d;
	}
	if (isnan(d) || i < min || i > max) {
		lg_host_api.reply_error(req, 422, "%s: expected an integer from %" PRId64 " to %"
					PRId64, key, min, max);
		return false;
	}
	if (value)
		*value = i;
	*out = lg_req_printf(req, "%" PRId64, i);
	if (!*out)
		reply_oom(req);
	return *out != NULL;
}

/* A duration in seconds (a number, fractions allowed) as milliseconds. */
static bool body_seconds_ms(struct lg_req *req, const json_t *body, const char *key,
			    const char **out)
{
	const json_t *v = json_object_get(body, key);
	double d;

	*out = NULL;
	if (!v || json_is_null(v))
		return true;
	d = json_is_number(v) ? json_number_value(v) : NAN;
	if (!isfinite(d) || d < 0.001 || d > TIMEOUT_S_MAX) {
		lg_host_api.reply_error(req, 422, "%s: expected seconds from 0.001 to %d", key,
					TIMEOUT_S_MAX);
		return false;
	}
	*out = lg_req_printf(req, "%lld", (long long)(d * 1000 + 0.5));
	if (!*out)
		reply_oom(req);
	return *out != NULL;
}

static bool path_id(struct lg_req *req, const char *name, int64_t *out)
{
	const char *s = lg_host_api.req_param(req, name);
	size_t len = s ? strlen(s) : 0;

	if (len == 0 || len > 18 || strspn(s, "0123456789") != len) {
		lg_host_api.reply_error(req, 422, "%s: expected an integer", name);
		return false;
	}
	*out = strtoll(s, NULL, 10);
	return true;
}

static bool query_int(struct lg_req *req, const char *name, int64_t def, int64_t min,
		      int64_t max, int64_t *out)
{
	const char *s = lg_host_api.req_query(req, name);
	const char *digits = s && *s == '-' ? s + 1 : s;
	size_t len = digits ? strlen(digits) : 0;

	if (!s) {
		*out = def;
		return true;
	}
	if (len == 0 || len > 18 || strspn(digits, "0123456789") != len ||
	    (*out = strtoll(s, NULL, 10)) < min || *out > max) {
		lg_host_api.reply_error(req, 422, "%s: expected an integer from %" PRId64 " to %"
					PRId64, name, min, max);
		return false;
	}
	return true;
}

/* The index of the query parameter's value in @choices; @def if absent. */
static bool query_choice(struct lg_req *req, const char *name, const char *const *choices,
			 size_t def, size_t *out)
{
	const char *s = lg_host_api.req_query(req, name);
	char list[128];

	*out = def;
	if (!s)
		return true;
	for (size_t i = 0; choices[i]; i++) {
		if (strcmp(choices[i], s) == 0) {
			*out = i;
			return true;
		}
	}
	list_strings(choices, list, sizeof list);
	lg_host_api.reply_error(req, 422, "%s: expected one of %s", name, list);
	return false;
}

static struct admin *admin_new(struct lg_req *req, void *ud, const struct admin_kind *kind,
			       enum admin_op op)
{
	struct admin *a = lg_req_alloc(req, sizeof *a);
	const struct lg_principal *who = lg_host_api.req_principal(req);

	if (!a) {
		reply_oom(req);
		return NULL;
	}
	a->m = ud;
	a->req = req;
	a->kind = kind;
	a->op = op;
	if (who && who->user_id) {
		a->user_id = lg_req_printf(req, "%" PRId64, who->user_id);
		if (!a->user_id) {
			reply_oom(req);
			return NULL;
		}
	}
	return a;
}

/* A statement through the pool; @cb runs on this worker. */
static void admin_query(struct admin *a, const char *sql, int n, const char *const *params,
			lg_pg_fn cb)
{
	struct lg_runtime *rt = a->m->rt;
	struct lg_pg *pg = atomic_load(&rt->pg);
	struct lg_loop *loop = lg_loop_current();

	if (atomic_load(&rt->closing) || !pg || !loop ||
	    lg_pg_query(pg, loop, sql, n, params, cb, a) < 0)
		lg_host_api.reply_error(a->req, 503,
					"The database is not available, please try again later.");
}

/* Names and provider keys are unique in the database, which decides when
 * two writers race past the checks made before. */
static bool is_conflict(const char *error)
{
	return strstr(error, "model_name_key") || strstr(error, "model_alias_value_key") ||
	       strstr(error, "model_client_unique") || strstr(error, "model_namespace");
}

static void admin_db_error(struct admin *a, const char *error, const char *conflict)
{
	if (conflict && is_conflict(error)) {
		lg_host_api.reply_error(a->req, 409, "%s", conflict);
		return;
	}
	lg_log(LG_LOG_ERROR, COMP, lg_host_api.req_id(a->req), "admin query failed: %s", error);
	lg_host_api.reply_error(a->req, 500, "An unexpected error occurred");
}

static void admin_send(void *arg)
{
	struct admin *a = arg;

	lg_host_api.reply(a->req, a->status, "application/json", a->json, strlen(a->json));
}

/* The change is committed: answer once this instance's view has it. */
static void admin_finish(struct admin *a, int status, const char *json)
{
	a->status = status;
	a->json = lg_req_strdup(a->req, json);
	if (!a->json) {
		reply_oom(a->req);
		return;
	}
	if (wait_for_reload(a->m, admin_send, a) < 0)
		admin_send(a);
}

/* A query whose single value is the reply. */
static void reply_first_value(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;
	const char *text;

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	text = PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "{}";
	lg_host_api.reply(a->req, 200, "application/json", text, strlen(text));
}

/* Rows changed by a write that RETURNs the id: 0 or that id. */
static int64_t returned_id(const PGresult *res)
{
	return PQntuples(res) >= 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
}

/* The first provider type of @types_json (a JSON array) that cannot serve
 * @model_type, or NULL. Types whose plugin is not loaded here are not
 * judged. */
static const char *incompatible_type(const struct lg_runtime *rt, struct lg_req *req,
				     const char *types_json, const char *model_type)
{
	json_t *types = json_loads(types_json, 0, NULL);
	const char *bad = NULL;

	for (size_t i = 0; i < json_array_size(types) && !bad; i++) {
		const char *t = json_string_value(json_array_get(types, i));
		const struct lg_provider_entry *e = t ? lg_registry_provider(rt->registry, t) : NULL;

		if (e && !serves(e->ops, model_type))
			bad = lg_req_strdup(req, t);
	}
	json_decref(types);
	return bad;
}

/* ---- /v1/admin/routers ---- */

#define ROUTER_JSON \
	"json_build_object('object', 'router', 'id', m.id, 'name', m.name, 'user_id', m.user_id, " \
	"'type', m.type, 'aliases', coalesce((SELECT json_agg(a.value ORDER BY a.id) " \
	"FROM model_alias a WHERE a.model_id = m.id), '[]'::json), " \
	"'load_balancing_strategy', m.load_balancing_strategy, 'vector_size', m.vector_size, " \
	"'max_context_length', m.max_context_length, 'cost_prompt_tokens', m.cost_prompt_tokens, " \
	"'cost_completion_tokens', m.cost_completion_tokens, 'providers', " \
	"(SELECT count(*) FROM model_client c WHERE c.model_id = m.id), " \
	"'from_config', m.from_config, 'created', extract(epoch FROM m.created)::bigint, " \
	"'updated', extract(epoch FROM m.updated)::bigint)"

static const char router_get_sql[] =
	"SELECT " ROUTER_JSON "::text, m.from_config, m.type, coalesce((SELECT json_agg(DISTINCT "
	"c.type) FROM model_client c WHERE c.model_id = m.id), '[]'::json)::text "
	"FROM model m WHERE m.id = $1::bigint";

/* The names of a create or update that another model has. */
static const char collisions_sql[] =
	"SELECT v.value FROM json_array_elements_text($1::json) AS v(value) WHERE "
	"EXISTS (SELECT 1 FROM model m WHERE m.name = v.value AND m.id <> $2::bigint) OR "
	"EXISTS (SELECT 1 FROM model_alias a WHERE a.value = v.value AND a.model_id <> $2::bigint)";

static const char router_insert_sql[] =
	"WITH m AS (INSERT INTO model (name, type, load_balancing_strategy, cost_prompt_tokens, "
	"cost_completion_tokens, user_id) VALUES ($1, $2, $3, $4::float8, $5::float8, $6::bigint) "
	"RETURNING id), "
	"a AS (INSERT INTO model_alias (model_id, value) SELECT m.id, v FROM m, "
	"json_array_elements_text($7::json) AS v) "
	"SELECT m.id, pg_notify('" CHANNEL "', '') FROM m";

/* Aliases, when given, replace the whole set (the unique check on aliases
 * runs at the end of the statement). */
static const char router_update_sql[] =
	"WITH u AS (UPDATE model SET name = coalesce($2, name), type = coalesce($3, type), "
	"load_balancing_strategy = coalesce($4, load_balancing_strategy), "
	"cost_prompt_tokens = coalesce($5::float8, cost_prompt_tokens), "
	"cost_completion_tokens = coalesce($6::float8, cost_completion_tokens) "
	"WHERE id = $1::bigint AND NOT from_config RETURNING id), "
	"d AS (DELETE FROM model_alias WHERE $7::json IS NOT NULL AND model_id IN "
	"(SELECT id FROM u)), "
	"i AS (INSERT INTO model_alias (model_id, value) SELECT u.id, v FROM u, "
	"json_array_elements_text($7::json) AS v) "
	"SELECT u.id, pg_notify('" CHANNEL "', '') FROM u";

static const char router_delete_sql[] =
	"WITH d AS (DELETE FROM model WHERE id = $1::bigint AND NOT from_config RETURNING id) "
	"SELECT d.id, pg_notify('" CHANNEL "', '') FROM d";

static const char *id_text(struct admin *a, int64_t id)
{
	return lg_req_printf(a->req, "%" PRId64, id);
}

static void admin_not_found(struct admin *a)
{
	lg_host_api.reply_error(a->req, 404, "%s %" PRId64 " not found.", a->kind->title, a->id);
}

/* After a write: the object as it is now (one row), or 404. */
static void admin_written(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	if (PQntuples(res) != 1) {
		admin_not_found(a);
		return;
	}
	admin_finish(a, a->op == OP_CREATE ? 201 : 200, PQgetvalue(res, 0, 0));
}

static void admin_deleted(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	if (returned_id(res) == 0) {
		admin_not_found(a);
		return;
	}
	lg_log(LG_LOG_INFO, COMP, lg_host_api.req_id(a->req), "%s %" PRId64 " deleted",
	       a->kind->noun, a->id);
	admin_finish(a, 200, a->json);
}

static void router_from_config(struct admin *a)
{
	lg_host_api.reply_error(a->req, 409, "Model router %" PRId64 " is declared in config.yml: "
				"change it there.", a->id);
}

/* "Following aliases already exist: '['a', 'b']'", as OpenGateLLM says it. */
static void aliases_conflict(struct admin *a, const PGresult *res)
{
	char list[768];
	size_t used = 0;
	int n = PQntuples(res), shown = 0;

	list[0] = '\0';
	for (int i = 0; i < n && used < sizeof list; i++) {
		const char *v = PQgetvalue(res, i, 0);
		int w;

		if (a->r.name && strcmp(v, a->r.name) == 0)
			continue;
		w = snprintf(list + used, sizeof list - used, "%s'%s'", shown++ ? ", " : "", v);
		if (w < 0)
			break;
		used += (size_t)w;
	}
	lg_host_api.reply_error(a->req, 409, "Following aliases already exist: '[%s]'", list);
}

static const char *router_conflict_text(struct admin *a)
{
	if (a->r.name)
		return lg_req_printf(a->req, "Router %s already exists.", a->r.name);
	return "Following aliases already exist.";
}

static bool router_in_aliases(struct lg_req *req, const json_t *list, struct router_in *in)
{
	json_t *clean;
	char *text;
	size_t n = json_array_size(list);

	if (!json_is_array(list) || n > ALIASES_MAX) {
		lg_host_api.reply_error(req, 422, "aliases: expected a list of at most %d strings",
					ALIASES_MAX);
		return false;
	}
	in->aliases = lg_req_alloc(req, (n ? n : 1) * sizeof *in->aliases);
	clean = json_array();
	if (!in->aliases || !clean)
		goto nomem;
	for (size_t i = 0; i < n; i++) {
		const char *s = json_string_value(json_array_get(list, i));
		const char *v = s ? arena_strip(req, s) : NULL;

		if (s && !v)
			goto nomem;
		if (!v || !valid_text(v, NAME_MAX_CHARS)) {
			lg_host_api.reply_error(req, 422, "aliases: each alias is a string of 1 to %d "
						"characters, without control characters",
						NAME_MAX_CHARS);
			json_decref(clean);
			return false;
		}
		for (size_t k = 0; k < i; k++) {
			if (strcmp(in->aliases[k], v) == 0) {
				lg_host_api.reply_error(req, 422, "aliases: \"%s\" is listed twice", v);
				json_decref(clean);
				return false;
			}
		}
		if (in->name && strcmp(in->name, v) == 0) {
			lg_host_api.reply_error(req, 422, "aliases: \"%s\" is the router's name", v);
			json_decref(clean);
			return false;
		}
		in->aliases[i] = v;
		in->naliases = i + 1;
		if (json_array_append_new(clean, json_string(v)) < 0)
			goto nomem;
	}
	text = json_text(clean);
	in->aliases_json = text ? lg_req_strdup(req, text) : NULL;
	free(text);
	if (!in->aliases_json) {
		reply_oom(req);
		return false;
	}
	return true;
nomem:
	json_decref(clean);
	reply_oom(req);
	return false;
}

static bool router_in_parse(struct lg_req *req, const json_t *body, bool create,
			    struct router_in *in)
{
	const json_t *aliases = json_object_get(body, "aliases");
	enum lg_strategy strategy;

	if (!body_string(req, body, "name", &in->name) ||
	    !body_string(req, body, "type", &in->type) ||
	    !body_string(req, body, "load_balancing_strategy", &in->strategy) ||
	    !body_number(req, body, "cost_prompt_tokens", 0, COST_MAX, &in->cost_prompt) ||
	    !body_number(req, body, "cost_completion_tokens", 0, COST_MAX, &in->cost_completion))
		return false;
	if (create && (!in->name || !in->type)) {
		lg_host_api.reply_error(req, 422, "%s: field required", in->name ? "type" : "name");
		return false;
	}
	if (in->name && !valid_text(in->name, NAME_MAX_CHARS)) {
		lg_host_api.reply_error(req, 422, "name: expected 1 to %d characters, without "
					"control characters", NAME_MAX_CHARS);
		return false;
	}
	if (in->type && !model_type_known(in->type)) {
		lg_host_api.reply_error(req, 422, "type: expected one of text-generation, "
					"text-embeddings-inference, text-classification, "
					"automatic-speech-recognition, image-to-text");
		return false;
	}
	if (in->strategy && !strategy_parse(in->strategy, &strategy)) {
		lg_host_api.reply_error(req, 422, "load_balancing_strategy: expected shuffle or "
					"least_busy");
		return false;
	}
	if (aliases && !json_is_null(aliases))
		return router_in_aliases(req, aliases, in);
	if (create)
		in->aliases_json = "[]";
	return true;
}

/* The names a create or update takes, as a JSON array. */
static const char *router_names_json(struct admin *a)
{
	json_t *names = json_array();
	char *text;
	const char *out;

	if (!names)
		return NULL;
	if (a->r.name && json_array_append_new(names, json_string(a->r.name)) < 0)
		goto fail;
	for (size_t i = 0; i < a->r.naliases; i++)
		if (json_array_append_new(names, json_string(a->r.aliases[i])) < 0)
			goto fail;
	text = json_text(names);
	out = text ? lg_req_strdup(a->req, text) : NULL;
	free(text);
	return out;
fail:
	json_decref(names);
	return NULL;
}

/* After an insert or update: the router as it is now. */
static void router_stored(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;
	const char *params[1];

	if (error) {
		admin_db_error(a, error, router_conflict_text(a));
		return;
	}
	if (returned_id(res) == 0) {
		admin_not_found(a);
		return;
	}
	a->id = returned_id(res);
	lg_log(LG_LOG_INFO, COMP, lg_host_api.req_id(a->req), "router %" PRId64 " %s", a->id,
	       a->op == OP_CREATE ? "created" : "updated");
	params[0] = id_text(a, a->id);
	if (!params[0]) {
		reply_oom(a->req);
		return;
	}
	admin_query(a, router_get_sql, 1, params, admin_written);
}

static void router_write(struct admin *a)
{
	const char *id = id_text(a, a->id);

	if (!id) {
		reply_oom(a->req);
		return;
	}
	if (a->op == OP_CREATE) {
		const char *params[7] = {
			a->r.name, a->r.type, a->r.strategy ? a->r.strategy : "shuffle",
			a->r.cost_prompt ? a->r.cost_prompt : "0",
			a->r.cost_completion ? a->r.cost_completion : "0", a->user_id,
			a->r.aliases_json,
		};

		admin_query(a, router_insert_sql, 7, params, router_stored);
	} else {
		const char *params[7] = {
			id, a->r.name, a->r.type, a->r.strategy, a->r.cost_prompt,
			a->r.cost_completion, a->r.aliases_json,
		};

		admin_query(a, router_update_sql, 7, params, router_stored);
	}
}

static void router_collisions_checked(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	for (int i = 0; i < PQntuples(res); i++) {
		if (a->r.name && strcmp(PQgetvalue(res, i, 0), a->r.name) == 0) {
			lg_host_api.reply_error(a->req, 409, "Router %s already exists.", a->r.name);
			return;
		}
	}
	if (PQntuples(res) > 0) {
		aliases_conflict(a, res);
		return;
	}
	router_write(a);
}

static void router_check_collisions(struct admin *a)
{
	const char *params[2] = { router_names_json(a), id_text(a, a->op == OP_CREATE ? 0 : a->id) };

	if (!params[0] || !params[1]) {
		reply_oom(a->req);
		return;
	}
	admin_query(a, collisions_sql, 2, params, router_collisions_checked);
}

/* The router of the path, for GET, PATCH and DELETE. */
static void router_loaded(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;
	const char *params[1], *bad;

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	if (PQntuples(res) != 1) {
		admin_not_found(a);
		return;
	}
	if (a->op == OP_GET) {
		lg_host_api.reply(a->req, 200, "application/json", PQgetvalue(res, 0, 0),
				  strlen(PQgetvalue(res, 0, 0)));
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 1), "t") == 0) {
		router_from_config(a);
		return;
	}
	if (a->op == OP_DELETE) {
		a->json = lg_req_strdup(a->req, PQgetvalue(res, 0, 0));
		params[0] = id_text(a, a->id);
		if (!a->json || !params[0]) {
			reply_oom(a->req);
			return;
		}
		admin_query(a, router_delete_sql, 1, params, admin_deleted);
		return;
	}
	/* PATCH: a new type must suit the providers it has. */
	bad = a->r.type ? incompatible_type(a->m->rt, a->req, PQgetvalue(res, 0, 3), a->r.type)
			: NULL;
	if (bad) {
		lg_host_api.reply_error(a->req, 400, "Invalid model provider type %s for %s router.",
					bad, a->r.type);
		return;
	}
	if (a->r.name || a->r.aliases_json)
		router_check_collisions(a);
	else
		router_write(a);
}

static void router_load(struct admin *a)
{
	const char *params[1] = { id_text(a, a->id) };

	if (!params[0]) {
		reply_oom(a->req);
		return;
	}
	admin_query(a, router_get_sql, 1, params, router_loaded);
}

static void route_router_create(struct lg_req *req, void *ud)
{
	struct admin *a = admin_new(req, ud, &router_kind, OP_CREATE);
	json_t *body = a ? lg_host_api.req_json(req) : NULL;
	bool ok;

	if (!body)
		return;
	ok = router_in_parse(req, body, true, &a->r);
	json_decref(body);
	if (ok)
		router_check_collisions(a);
}

static void route_router_list(struct lg_req *req, void *ud)
{
	static const char *const sort_names[] = { "id", "name", "created", NULL };
	static const char *const sort_columns[] = { "m.id", "m.name", "m.created" };
	static const char *const orders[] = { "asc", "desc", NULL };
	static const char *const order_sql[] = { "ASC", "DESC" };
	struct admin *a = admin_new(req, ud, &router_kind, OP_GET);
	int64_t offset, limit;
	size_t by, order;
	char sql[4096];
	const char *params[2];

	if (!a || !query_int(req, "offset", 0, 0, PAGE_OFFSET_MAX, &offset) ||
	    !query_int(req, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX, &limit) ||
	    !query_choice(req, "sort_by", sort_names, 0, &by) ||
	    !query_choice(req, "sort_order", orders, 0, &order))
		return;
	/* Column and direction come from the tables above, never the client. */
	snprintf(sql, sizeof sql,
		 "SELECT json_build_object('object', 'list', 'total', (SELECT count(*) FROM model), "
		 "'offset', $1::bigint, 'limit', $2::bigint, 'data', coalesce((SELECT "
		 "json_agg(s.j ORDER BY s.n) FROM (SELECT " ROUTER_JSON " AS j, row_number() OVER "
		 "(ORDER BY %s %s, m.id %s) AS n FROM model m ORDER BY %s %s, m.id %s "
		 "LIMIT $2::bigint OFFSET $1::bigint) AS s), '[]'::json))::text",
		 sort_columns[by], order_sql[order], order_sql[order], sort_columns[by],
		 order_sql[order], order_sql[order]);
	params[0] = id_text(a, offset);
	params[1] = id_text(a, limit);
	if (!params[0] || !params[1]) {
		reply_oom(req);
		return;
	}
	admin_query(a, sql, 2, params, reply_first_value);
}

static void route_router_one(struct lg_req *req, void *ud, enum admin_op op)
{
	struct admin *a = admin_new(req, ud, &router_kind, op);
	json_t *body;
	bool ok;

	if (!a || !path_id(req, "router_id", &a->id))
		return;
	if (op == OP_PATCH) {
		body = lg_host_api.req_json(req);
		if (!body)
			return;
		ok = router_in_parse(req, body, false, &a->r);
		json_decref(body);
		if (!ok)
			return;
	}
	router_load(a);
}

static void route_router_get(struct lg_req *req, void *ud)
{
	route_router_one(req, ud, OP_GET);
}

static void route_router_patch(struct lg_req *req, void *ud)
{
	route_router_one(req, ud, OP_PATCH);
}

static void route_router_delete(struct lg_req *req, void *ud)
{
	route_router_one(req, ud, OP_DELETE);
}

/* ---- /v1/admin/providers ---- */

/* Never the key. */
#define PROVIDER_JSON \
	"json_build_object('object', 'provider', 'id', c.id, 'router_id', c.model_id, " \
	"'user_id', c.user_id, 'type', c.type, 'url', c.url, 'timeout', c.timeout, " \
	"'model_name', c.model_name, 'model_hosting_zone', c.model_hosting_zone, " \
	"'model_total_params', c.model_total_params, " \
	"'model_active_params', c.model_active_params, " \
	"'qos_limit', c.max_concurrency, 'max_concurrency', c.max_concurrency, " \
	"'connect_timeout', (c.connect_timeout_ms / 1000.0)::float8, " \
	"'first_byte_timeout', (c.first_byte_timeout_ms / 1000.0)::float8, " \
	"'idle_timeout', (c.idle_timeout_ms / 1000.0)::float8, " \
	"'max_context_length', c.max_context_length, 'vector_size', c.vector_size, " \
	"'created', extract(epoch FROM c.created)::bigint, " \
	"'updated', extract(epoch FROM c.updated)::bigint)"

static const char provider_get_sql[] =
	"SELECT " PROVIDER_JSON "::text, m.from_config, c.model_id, c.type, c.url, c.model_name, "
	"coalesce(c.max_context_length, 0), coalesce(c.vector_size, 0) "
	"FROM model_client c JOIN model m ON m.id = c.model_id WHERE c.id = $1::bigint";

/* The router a provider goes to: its type, whether it comes from
 * config.yml, its siblings' capabilities, and whether the provider would
 * duplicate one ($4: the provider itself, when it moves). */
static const char provider_router_sql[] =
	"SELECT m.name, m.type, m.from_config, coalesce(m.max_context_length, 0), "
	"coalesce(m.vector_size, 0), "
	"EXISTS (SELECT 1 FROM model_client c WHERE c.model_id = m.id AND c.id <> $4::bigint), "
	"EXISTS (SELECT 1 FROM model_client c WHERE c.model_id = m.id AND c.url = $2 "
	"AND c.model_name = $3 AND c.id <> $4::bigint) FROM model m WHERE m.id = $1::bigint";

/* The router's capabilities follow its first provider. */
#define ROUTER_CAPS(provider) \
	"max_context_length = CASE WHEN EXISTS (SELECT 1 FROM model_client o WHERE o.model_id = " \
	"m.id AND o.id <> " provider ".id) THEN coalesce(m.max_context_length, " \
	provider ".max_context_length) ELSE " provider ".max_context_length END, " \
	"vector_size = CASE WHEN EXISTS (SELECT 1 FROM model_client o WHERE o.model_id = m.id " \
	"AND o.id <> " provider ".id) THEN coalesce(m.vector_size, " provider ".vector_size) " \
	"ELSE " provider ".vector_size END"

static const char provider_insert_sql[] =
	"WITH c AS (INSERT INTO model_client (model_id, user_id, type, url, key, model_name, "
	"timeout, connect_timeout_ms, first_byte_timeout_ms, idle_timeout_ms, max_concurrency, "
	"model_hosting_zone, model_total_params, model_active_params, max_context_length, "
	"vector_size) SELECT m.id, $2::bigint, $3, $4, $5, $6, $7::int, $8::int, $9::int, "
	"$10::int, $11::int, $12, $13::float8, $14::float8, $15::bigint, $16::bigint "
	"FROM model m WHERE m.id = $1::bigint AND NOT m.from_config "
	"RETURNING id, model_id, max_context_length, vector_size), "
	"r AS (UPDATE model m SET " ROUTER_CAPS("c") " FROM c WHERE m.id = c.model_id) "
	"SELECT c.id, pg_notify('" CHANNEL "', '') FROM c";

static const char provider_update_sql[] =
	"WITH u AS (UPDATE model_client c SET model_id = coalesce($2::bigint, c.model_id), "
	"timeout = coalesce($3::int, c.timeout), "
	"model_hosting_zone = coalesce($4, c.model_hosting_zone), "
	"model_total_params = coalesce($5::float8, c.model_total_params), "
	"model_active_params = coalesce($6::float8, c.model_active_params), "
	"max_concurrency = coalesce($7::int, c.max_concurrency), "
	"connect_timeout_ms = coalesce($8::int, c.connect_timeout_ms), "
	"first_byte_timeout_ms = coalesce($9::int, c.first_byte_timeout_ms), "
	"idle_timeout_ms = coalesce($10::int, c.idle_timeout_ms) "
	"WHERE c.id = $1::bigint AND NOT EXISTS (SELECT 1 FROM model m WHERE m.from_config "
	"AND (m.id = c.model_id OR m.id = $2::bigint)) "
	"RETURNING c.id, c.model_id, c.max_context_length, c.vector_size), "
	"r AS (UPDATE model m SET " ROUTER_CAPS("u") " FROM u "
	"WHERE $2::bigint IS NOT NULL AND m.id = u.model_id) "
	"SELECT u.id, pg_notify('" CHANNEL "', '') FROM u";

static const char provider_delete_sql[] =
	"WITH d AS (DELETE FROM model_client c WHERE c.id = $1::bigint AND NOT EXISTS ("
	"SELECT 1 FROM model m WHERE m.id = c.model_id AND m.from_config) RETURNING c.id) "
	"SELECT d.id, pg_notify('" CHANNEL "', '') FROM d";

static const char *provider_conflict_text(struct admin *a)
{
	return lg_req_printf(a->req, "Model provider %s for url %s already exists for router %"
			    PRId64 ".", a->p.model_name, a->p.url, a->p.router);
}

static bool provider_in_create(struct lg_req *req, const json_t *body, struct provider_in *p,
			       const struct lg_runtime *rt)
{
	const json_t *basic = json_object_get(body, "basic_auth");
	const char *url, *why = NULL;
	char msg[512], *norm;

	if (!body_int(req, body, "router_id", 1, INT64_MAX, &p->router_id, &p->router) ||
	    !body_string(req, body, "type", &p->type) || !body_string(req, body, "url", &url) ||
	    !body_string(req, body, "key", &p->key) ||
	    !body_string(req, body, "model_name", &p->model_name))
		return false;
	if (!p->router_id || !p->type || !p->model_name) {
		lg_host_api.reply_error(req, 422, "%s: field required",
					!p->router_id ? "router_id" : !p->type ? "type" : "model_name");
		return false;
	}
	p->impl = provider_type_for(rt, p->type, NULL, msg, sizeof msg);
	if (!p->impl) {
		lg_host_api.reply_error(req, 422, "type: %s", msg);
		return false;
	}
	if (basic && !json_is_null(basic)) {
		lg_host_api.reply_error(req, 422, "basic_auth: not supported; use key");
		return false;
	}
	if (!url)
		url = p->impl->ops->default_url;
	if (!url) {
		lg_host_api.reply_error(req, 422, "url: required for provider type %s", p->type);
		return false;
	}
	norm = normalize_url(url, &why);
	p->url = norm ? lg_req_strdup(req, norm) : NULL;
	free(norm);
	if (!p->url) {
		lg_host_api.reply_error(req, 422, "url: %s", why);
		return false;
	}
	if (p->key && !*p->key)
		p->key = NULL;
	if (p->key && !valid_text(p->key, 4096)) {
		lg_host_api.reply_error(req, 422, "key: expected printable characters");
		return false;
	}
	if (!valid_text(p->model_name, MODEL_NAME_MAX_CHARS)) {
		lg_host_api.reply_error(req, 422, "model_name: expected 1 to %d characters, without "
					"control characters", MODEL_NAME_MAX_CHARS);
		return false;
	}
	return true;
}

/* The members both POST and PATCH take. */
static bool provider_in_common(struct lg_req *req, const json_t *body, struct provider_in *p)
{
	const char *qos = NULL;

	if (!body_int(req, body, "timeout", 1, TIMEOUT_S_MAX, &p->timeout, NULL) ||
	    !body_string(req, body, "model_hosting_zone", &p->zone) ||
	    !body_number(req, body, "model_total_params", 0, PARAMS_MAX, &p->total_params) ||
	    !body_number(req, body, "model_active_params", 0, PARAMS_MAX, &p->active_params) ||
	    !body_int(req, body, "max_concurrency", 1, CONCURRENCY_MAX, &p->max_concurrency, NULL) ||
	    !body_int(req, body, "qos_limit", 1, CONCURRENCY_MAX, &qos, NULL) ||
	    !body_seconds_ms(req, body, "connect_timeout", &p->connect_ms) ||
	    !body_seconds_ms(req, body, "first_byte_timeout", &p->first_byte_ms) ||
	    !body_seconds_ms(req, body, "idle_timeout", &p->idle_ms))
		return false;
	if (qos && p->max_concurrency && strcmp(qos, p->max_concurrency) != 0) {
		lg_host_api.reply_error(req, 422, "qos_limit: differs from max_concurrency; give one");
		return false;
	}
	if (qos)
		p->max_concurrency = qos;
	if (p->zone) {
		char *z = (char *)p->zone;

		for (; *z; z++)
			*z = (char)toupper((unsigned char)*z);
		if (!valid_zone(p->zone)) {
			lg_host_api.reply_error(req, 422, "model_hosting_zone: expected an ISO 3166-1 "
						"alpha-3 code (FRA, USA) or WOR");
			return false;
		}
	}
	return true;
}

/* After an insert or update: the provider as it is now. */
static void provider_stored(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;
	const char *params[1];

	if (error) {
		admin_db_error(a, error, provider_conflict_text(a));
		return;
	}
	if (returned_id(res) == 0) {
		if (a->op == OP_CREATE)
			lg_host_api.reply_error(a->req, 404, "Model router %" PRId64 " not found.",
						a->p.router);
		else
			admin_not_found(a);
		return;
	}
	a->id = returned_id(res);
	lg_log(LG_LOG_INFO, COMP, lg_host_api.req_id(a->req), "provider %" PRId64 " %s", a->id,
	       a->op == OP_CREATE ? "created" : "updated");
	params[0] = id_text(a, a->id);
	if (!params[0]) {
		reply_oom(a->req);
		return;
	}
	admin_query(a, provider_get_sql, 1, params, admin_written);
}

/* All providers of a router report the same capabilities. */
static bool capabilities_match(struct admin *a)
{
	const struct provider_in *p = &a->p;

	if (!p->has_siblings)
		return true;
	if (p->ref_ctx && p->ctx && p->ref_ctx != p->ctx) {
		lg_host_api.reply_error(a->req, 400, "Inconsistent max context length for %s. "
					"Expected: %" PRId64 ". Actual: %" PRId64, p->router_name,
					p->ref_ctx, p->ctx);
		return false;
	}
	if (p->ref_vs && p->vs && p->ref_vs != p->vs) {
		lg_host_api.reply_error(a->req, 400, "Inconsistent vector size for %s. Expected: %"
					PRId64 ". Actual: %" PRId64, p->router_name, p->ref_vs,
					p->vs);
		return false;
	}
	return true;
}

static void provider_insert(struct admin *a)
{
	const struct provider_in *p = &a->p;
	const char *ctx = p->ctx ? id_text(a, p->ctx) : NULL;
	const char *vs = p->vs ? id_text(a, p->vs) : NULL;
	const char *params[16] = {
		p->router_id, a->user_id, p->type, p->url, p->key, p->model_name,
		p->timeout ? p->timeout : "300", p->connect_ms, p->first_byte_ms, p->idle_ms,
		p->max_concurrency, p->zone, p->total_params ? p->total_params : "0",
		p->active_params ? p->active_params : "0", ctx, vs,
	};

	if ((p->ctx && !ctx) || (p->vs && !vs)) {
		reply_oom(a->req);
		return;
	}
	if (capabilities_match(a))
		admin_query(a, provider_insert_sql, 16, params, provider_stored);
}

static void provider_update(struct admin *a)
{
	const struct provider_in *p = &a->p;
	const char *params[10] = {
		id_text(a, a->id), p->router_id, p->timeout, p->zone, p->total_params,
		p->active_params, p->max_concurrency, p->connect_ms, p->first_byte_ms, p->idle_ms,
	};

	if (!params[0]) {
		reply_oom(a->req);
		return;
	}
	admin_query(a, provider_update_sql, 10, params, provider_stored);
}

/* ---- the capability probe (OpenGateLLM §9.3), on the worker ---- */

static void probe_done(void *arg, enum lg_fetch_result result, int status, struct lg_str body,
		       const char *error);

/* The client left while the probe ran: stop it and end the request. */
static void probe_abandoned(struct lg_req *req, void *arg)
{
	struct admin *a = arg;

	if (!a->probe)
		return;    /* a query is in flight; its callback answers */
	a->probe->a = NULL;
	lg_fetch_cancel(a->probe_fetch);
	a->probe = NULL;
	a->probe_fetch = NULL;
	lg_host_api.reply_error(req, 499, "The client closed the request.");
}

static bool probe_start(struct admin *a, bool embeddings)
{
	static const struct lg_fetch_handlers handlers = {
		.size = sizeof(struct lg_fetch_handlers), .on_done = probe_done,
	};
	const struct provider_in *p = &a->p;
	struct lg_loop *loop = lg_loop_current();
	struct lg_fetcher *f = loop ? lg_loop_fetcher(loop) : NULL;
	const char *path = embeddings ? "/v1/embeddings" :
			   p->impl->ops->models_path ? p->impl->ops->models_path : "/v1/models";
	int64_t timeout_s = p->timeout ? strtoll(p->timeout, NULL, 10) : TIMEOUT_S_DEFAULT;
	uint32_t total = timeout_s * 1000 < PROBE_TOTAL_MAX_MS ? (uint32_t)timeout_s * 1000
							      : PROBE_TOTAL_MAX_MS;
	const char *headers[3] = { NULL, NULL, NULL };
	struct probe *pr = calloc(1, sizeof *pr);
	char *url = NULL, *auth = NULL, *body = NULL;
	struct lg_fetch_request rq = {
		.size = sizeof rq, .method = embeddings ? "POST" : "GET", .headers = headers,
		.connect_timeout_ms = PROBE_CONNECT_MS, .first_byte_timeout_ms = total,
		.idle_timeout_ms = total, .total_timeout_ms = total,
		.max_response_bytes = PROBE_MAX_BYTES,
	};
	size_t nh = 0;

	if (!f || !pr || asprintf(&url, "%s%s", p->url, path) < 0)
		goto fail;
	if (p->key && asprintf(&auth, "Authorization: Bearer %s", p->key) < 0) {
		auth = NULL;
		goto fail;
	}
	if (auth)
		headers[nh++] = auth;
	if (embeddings) {
		body = json_text(json_pack("{s:s,s:s}", "model", p->model_name, "input",
					   "hello world"));
		if (!body)
			goto fail;
		headers[nh++] = "Content-Type: application/json";
		rq.body = (struct lg_str){ body, strlen(body) };
	}
	rq.url = url;
	*pr = (struct probe){ .a = a, .embeddings = embeddings };
	a->probe_fetch = lg_fetch_start(f, &rq, &handlers, pr);   /* copies the request */
	if (!a->probe_fetch)
		goto fail;
	a->probe = pr;
	lg_host_api.on_close(a->req, NULL, probe_abandoned, a);
	free(url);
	free(auth);
	free(body);
	return true;
fail:
	free(url);
	free(auth);
	free(body);
	free(pr);
	return false;
}

static int64_t positive_member(const json_t *obj, const char *key)
{
	const json_t *v = json_object_get(obj, key);

	return json_is_integer(v) && json_integer_value(v) > 0 ? (int64_t)json_integer_value(v) : 0;
}

/* The context length an entry of the model list reports. */
static int64_t entry_context(const json_t *e, const char *type)
{
	int64_t vllm = positive_member(e, "max_model_len");
	int64_t other = positive_member(e, "max_context_length");

	if (strcmp(type, "vllm") == 0)
		return vllm ? vllm : other;
	return other ? other : vllm;
}

static bool entry_matches(const json_t *e, const char *model_name)
{
	const char *id = json_string_value(json_object_get(e, "id"));
	const json_t *aliases = json_object_get(e, "aliases");

	if (id && strcmp(id, model_name) == 0)
		return true;
	for (size_t i = 0; i < json_array_size(aliases); i++) {
		const char *s = json_string_value(json_array_get(aliases, i));

		if (s && strcmp(s, model_name) == 0)
			return true;
	}
	return false;
}

/* 0 and *@ctx when the model list has @model_name; -1 when it has not,
 * -2 when the reply is no model list at all. TEI answers /info about its
 * one model. */
static int probe_find(const json_t *root, const char *model_name, const char *type,
		      int64_t *ctx)
{
	const json_t *data = json_object_get(root, "data");
	const char *tei = json_string_value(json_object_get(root, "model_id"));

	if (json_is_array(data)) {
		for (size_t i = 0; i < json_array_size(data); i++) {
			if (entry_matches(json_array_get(data, i), model_name)) {
				*ctx = entry_context(json_array_get(data, i), type);
				return 0;
			}
		}
		return -1;
	}
	if (tei) {
		*ctx = positive_member(root, "max_input_length");
		return strcmp(tei, model_name) == 0 ? 0 : -1;
	}
	return -2;
}

static void probe_failed(struct admin *a, int status, const char *fmt, ...) LG_PRINTF(3, 4);

static void probe_failed(struct admin *a, int status, const char *fmt, ...)
{
	char detail[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(detail, sizeof detail, fmt, ap);
	va_end(ap);
	if (status >= 0)
		lg_host_api.reply_error(a->req, 424, "Model provider %s not reachable (%d): %s",
					a->p.model_name, status, detail);
	else
		lg_host_api.reply_error(a->req, 424, "Model provider %s returned an invalid "
					"response: %s", a->p.model_name, detail);
}

/* Reads what the probe step learnt; false once it has answered. */
static bool probe_read(struct admin *a, bool embeddings, const json_t *root)
{
	struct provider_in *p = &a->p;
	int rc;

	if (embeddings) {
		const json_t *first = json_array_get(json_object_get(root, "data"), 0);

		p->vs = (int64_t)json_array_size(json_object_get(first, "embedding"));
		if (p->vs == 0) {
			probe_failed(a, -1, "no embedding in the reply to /v1/embeddings");
			return false;
		}
		return true;
	}
	rc = probe_find(root, p->model_name, p->type, &p->ctx);
	if (rc == -1)
		probe_failed(a, -1, "%s is not in its model list", p->model_name);
	else if (rc < 0)
		probe_failed(a, -1, "no model list");
	return rc == 0;
}

static void probe_done(void *arg, enum lg_fetch_result result, int status, struct lg_str body,
		       const char *error)
{
	struct probe *pr = arg;
	struct admin *a = pr->a;
	bool embeddings = pr->embeddings, ok;
	json_t *root;

	free(pr);
	if (!a)
		return;
	a->probe = NULL;
	a->probe_fetch = NULL;
	if (result != LG_FETCH_OK) {
		probe_failed(a, status, "%s", error ? error : "no reply");
		return;
	}
	if (status < 200 || status > 299) {
		probe_failed(a, status, "%.*s", (int)(body.len < 200 ? body.len : 200),
			     body.ptr ? body.ptr : "");
		return;
	}
	root = json_loadb(body.ptr ? body.ptr : "", body.len, 0, NULL);
	if (!root) {
		probe_failed(a, -1, "not JSON");
		return;
	}
	ok = probe_read(a, embeddings, root);
	json_decref(root);
	if (!ok)
		return;
	if (!embeddings && strcmp(a->p.router_type, "text-embeddings-inference") == 0) {
		if (!probe_start(a, true))
			reply_oom(a->req);
		return;
	}
	provider_insert(a);
}

/* The router a provider goes to (create, or a PATCH that moves it). */
static void provider_router_loaded(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;
	struct provider_in *p = &a->p;
	const struct lg_provider_entry *impl;

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	if (PQntuples(res) != 1) {
		lg_host_api.reply_error(a->req, 404, "Model router %" PRId64 " not found.", p->router);
		return;
	}
	p->router_name = lg_req_strdup(a->req, PQgetvalue(res, 0, 0));
	p->router_type = lg_req_strdup(a->req, PQgetvalue(res, 0, 1));
	if (!p->router_name || !p->router_type) {
		reply_oom(a->req);
		return;
	}
	p->ref_ctx = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	p->ref_vs = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
	p->has_siblings = strcmp(PQgetvalue(res, 0, 5), "t") == 0;
	if (strcmp(PQgetvalue(res, 0, 2), "t") == 0) {
		lg_host_api.reply_error(a->req, 409, "Model router %" PRId64 " is declared in "
					"config.yml: change its providers there.", p->router);
		return;
	}
	impl = rt_provider(a->m->rt, p->type);
	if (impl && !serves(impl->ops, p->router_type)) {
		lg_host_api.reply_error(a->req, 400, "Invalid model provider type %s for %s router.",
					p->type, p->router_type);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 6), "t") == 0) {
		lg_host_api.reply_error(a->req, 409, "%s", provider_conflict_text(a));
		return;
	}
	if (a->op == OP_PATCH) {
		if (capabilities_match(a))
			provider_update(a);
		return;
	}
	/* A type that answers in process has nothing to probe. */
	if (p->impl->ops->serve)
		provider_insert(a);
	else if (!probe_start(a, false))
		reply_oom(a->req);
}

static void provider_router_lookup(struct admin *a)
{
	const char *params[4] = {
		a->p.router_id, a->p.url, a->p.model_name, id_text(a, a->op == OP_PATCH ? a->id : 0),
	};

	if (!params[3]) {
		reply_oom(a->req);
		return;
	}
	admin_query(a, provider_router_sql, 4, params, provider_router_loaded);
}

/* The provider of the path, for GET, PATCH and DELETE. */
static void provider_loaded(const PGresult *res, const char *error, void *arg)
{
	struct admin *a = arg;
	struct provider_in *p = &a->p;
	const char *params[1];

	if (error) {
		admin_db_error(a, error, NULL);
		return;
	}
	if (PQntuples(res) != 1) {
		admin_not_found(a);
		return;
	}
	if (a->op == OP_GET) {
		lg_host_api.reply(a->req, 200, "application/json", PQgetvalue(res, 0, 0),
				  strlen(PQgetvalue(res, 0, 0)));
		return;
	}
	p->cur_router = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	if (strcmp(PQgetvalue(res, 0, 1), "t") == 0) {
		lg_host_api.reply_error(a->req, 409, "Model provider %" PRId64 " belongs to router %"
					PRId64 ", declared in config.yml: change it there.", a->id,
					p->cur_router);
		return;
	}
	if (a->op == OP_DELETE) {
		a->json = lg_req_strdup(a->req, PQgetvalue(res, 0, 0));
		params[0] = id_text(a, a->id);
		if (!a->json || !params[0]) {
			reply_oom(a->req);
			return;
		}
		admin_query(a, provider_delete_sql, 1, params, admin_deleted);
		return;
	}
	/* PATCH: moving to another router checks it as a create would. */
	p->type = lg_req_strdup(a->req, PQgetvalue(res, 0, 3));
	p->url = lg_req_strdup(a->req, PQgetvalue(res, 0, 4));
	p->model_name = lg_req_strdup(a->req, PQgetvalue(res, 0, 5));
	p->ctx = strtoll(PQgetvalue(res, 0, 6), NULL, 10);
	p->vs = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
	if (!p->type || !p->url || !p->model_name) {
		reply_oom(a->req);
		return;
	}
	if (p->router_id && p->router != p->cur_router)
		provider_router_lookup(a);
	else
		provider_update(a);
}

static void route_provider_create(struct lg_req *req, void *ud)
{
	struct admin *a = admin_new(req, ud, &provider_kind, OP_CREATE);
	json_t *body = a ? lg_host_api.req_json(req) : NULL;
	bool ok;

	if (!body)
		return;
	ok = provider_in_create(req, body, &a->p, a->m->rt) &&
	     provider_in_common(req, body, &a->p);
	json_decref(body);
	if (ok)
		provider_router_lookup(a);
}

static void route_provider_list(struct lg_req *req, void *ud)
{
	static const char *const sort_names[] = { "id", "model_name", "created", NULL };
	static const char *const sort_columns[] = { "c.id", "c.model_name", "c.created" };
	static const char *const orders[] = { "asc", "desc", NULL };
	static const char *const order_sql[] = { "ASC", "DESC" };
	struct admin *a = admin_new(req, ud, &provider_kind, OP_GET);
	int64_t offset, limit, router;
	size_t by, order;
	char sql[4096];
	const char *params[3];

	if (!a || !query_int(req, "offset", 0, 0, PAGE_OFFSET_MAX, &offset) ||
	    !query_int(req, "limit", PAGE_LIMIT_DEFAULT, 1, PAGE_LIMIT_MAX, &limit) ||
	    !query_int(req, "router_id", 0, 1, INT64_MAX / 2, &router) ||
	    !query_choice(req, "sort_by", sort_names, 0, &by) ||
	    !query_choice(req, "sort_order", orders, 0, &order))
		return;
	/* Column and direction come from the tables above, never the client. */
	snprintf(sql, sizeof sql,
		 "SELECT json_build_object('object', 'list', 'total', (SELECT count(*) FROM "
		 "model_client c WHERE $3::bigint IS NULL OR c.model_id = $3::bigint), "
		 "'offset', $1::bigint, 'limit', $2::bigint, 'data', coalesce((SELECT "
		 "json_agg(s.j ORDER BY s.n) FROM (SELECT " PROVIDER_JSON " AS j, row_number() OVER "
		 "(ORDER BY %s %s, c.id %s) AS n FROM model_client c WHERE $3::bigint IS NULL OR "
		 "c.model_id = $3::bigint ORDER BY %s %s, c.id %s LIMIT $2::bigint "
		 "OFFSET $1::bigint) AS s), '[]'::json))::text",
		 sort_columns[by], order_sql[order], order_sql[order], sort_columns[by],
		 order_sql[order], order_sql[order]);
	params[0] = id_text(a, offset);
	params[1] = id_text(a, limit);
	params[2] = router ? id_text(a, router) : NULL;
	if (!params[0] || !params[1] || (router && !params[2])) {
		reply_oom(req);
		return;
	}
	admin_query(a, sql, 3, params, reply_first_value);
}

static void route_provider_one(struct lg_req *req, void *ud, enum admin_op op)
{
	struct admin *a = admin_new(req, ud, &provider_kind, op);
	const char *params[1];
	json_t *body;
	bool ok;

	if (!a || !path_id(req, "provider_id", &a->id))
		return;
	if (op == OP_PATCH) {
		body = lg_host_api.req_json(req);
		if (!body)
			return;
		ok = body_int(req, body, "router_id", 1, INT64_MAX, &a->p.router_id, &a->p.router) &&
		     provider_in_common(req, body, &a->p);
		json_decref(body);
		if (!ok)
			return;
	}
	params[0] = id_text(a, a->id);
	if (!params[0]) {
		reply_oom(req);
		return;
	}
	admin_query(a, provider_get_sql, 1, params, provider_loaded);
}

static void route_provider_get(struct lg_req *req, void *ud)
{
	route_provider_one(req, ud, OP_GET);
}

static void route_provider_patch(struct lg_req *req, void *ud)
{
	route_provider_one(req, ud, OP_PATCH);
}

static void route_provider_delete(struct lg_req *req, void *ud)
{
	route_provider_one(req, ud, OP_DELETE);
}

/* ---- routes ---- */

int lg_models_register_routes(struct lg_models *m, char *err, size_t errlen)
{
#define ROUTE(method, path, policy, body, fn) \
	{ sizeof(struct lg_route), method, path, policy, body, fn }
	static const struct lg_route routes[] = {
		ROUTE("GET", "/v1/models", LG_POLICY_KEY, 0, route_models),
		ROUTE("GET", "/v1/models/{model...}", LG_POLICY_KEY, 0, route_model),
		ROUTE("GET", "/health/models", LG_POLICY_KEY, 0, route_health_models),
		ROUTE("POST", "/v1/admin/routers", LG_POLICY_ADMIN, ADMIN_MAX_BODY,
		      route_router_create),
		ROUTE("GET", "/v1/admin/routers", LG_POLICY_ADMIN, 0, route_router_list),
		ROUTE("GET", "/v1/admin/routers/{router_id}", LG_POLICY_ADMIN, 0, route_router_get),
		ROUTE("PATCH", "/v1/admin/routers/{router_id}", LG_POLICY_ADMIN, ADMIN_MAX_BODY,
		      route_router_patch),
		ROUTE("DELETE", "/v1/admin/routers/{router_id}", LG_POLICY_ADMIN, 0,
		      route_router_delete),
		ROUTE("POST", "/v1/admin/providers", LG_POLICY_ADMIN, ADMIN_MAX_BODY,
		      route_provider_create),
		ROUTE("GET", "/v1/admin/providers", LG_POLICY_ADMIN, 0, route_provider_list),
		ROUTE("GET", "/v1/admin/providers/{provider_id}", LG_POLICY_ADMIN, 0,
		      route_provider_get),
		ROUTE("PATCH", "/v1/admin/providers/{provider_id}", LG_POLICY_ADMIN, ADMIN_MAX_BODY,
		      route_provider_patch),
		ROUTE("DELETE", "/v1/admin/providers/{provider_id}", LG_POLICY_ADMIN, 0,
		      route_provider_delete),
	};
#undef ROUTE

	for (size_t i = 0; i < LG_COUNT(routes); i++)
		if (lg_router_add(m->rt->registry->router, &routes[i], m, NULL, err, errlen) < 0)
			return -1;
	return 0;
}
