/* SPDX-License-Identifier: Apache-2.0 */
/* The model registry: models (OpenGateLLM's routers), their providers and
 * aliases. Stored in PostgreSQL (tables model, model_client, model_alias,
 * sql/core), reconciled with the models: section of config.yml at start
 * and on SIGHUP, changed through the admin API, and held in memory as
 * immutable views that workers read without locks. Other instances learn of
 * changes through NOTIFY llmgate_models. */
#ifndef LG_MODELS_H
#define LG_MODELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <llmgate/provider.h>

#include "config.h"
#include "runtime.h"

struct lg_pg;
struct lg_provider_state;

enum lg_strategy {
	LG_STRATEGY_SHUFFLE,
	LG_STRATEGY_LEAST_BUSY,
};

/* One provider of a model, immutable within a view. */
struct lg_model_provider {
	struct lg_provider_conf conf;          /* id, type, url, key, model_name, timeout */
	const struct lg_provider_entry *impl;  /* the registered provider type */
	uint32_t connect_timeout_ms;           /* per-provider timeouts (0: defaults) */
	uint32_t first_byte_timeout_ms;
	uint32_t idle_timeout_ms;
	int max_concurrency;                   /* 0: uncapped */
	const char *hosting_zone;              /* ISO alpha-3 or WOR, or NULL */
	double total_params, active_params;    /* billions */
	int64_t max_context_length;            /* probed, or 0 */
	int64_t vector_size;                   /* probed (embeddings), or 0 */
	struct lg_provider_state *state;       /* live state, shared across views */
};

struct lg_model {
	int64_t id;
	const char *name;
	const char *type;                      /* "text-generation"... */
	enum lg_strategy strategy;
	const char *const *aliases;
	size_t naliases;
	double cost_prompt_tokens;             /* per million tokens */
	double cost_completion_tokens;
	int64_t max_context_length;
	int64_t vector_size;
	const char *owned_by;
	int64_t created;                       /* Unix seconds */
	bool from_config;                      /* declared in config.yml */
	struct lg_model_provider *providers;
	size_t nproviders;
};

struct lg_models;
struct lg_models_view;

struct lg_models *lg_models_new(struct lg_runtime *rt);
void lg_models_free(struct lg_models *m);

/* Registers GET /v1/models, GET /v1/models/{model...}, GET /health/models
 * and the admin routes /v1/admin/routers and /v1/admin/providers.
 * Thread: main, before plugins' init(). */
int lg_models_register_routes(struct lg_models *m, char *err, size_t errlen);

/* Validates the models: section (types, names, aliases, strategies,
 * provider types registered and able to serve the model type, numbers in
 * range) with file and line in @err. Used by --check, start and reload. */
int lg_models_check_config(const struct lg_runtime *rt, const struct lg_node *models,
			   const char *file, char *err, size_t errlen);

/* Once the database is up and migrated: reconciles config.yml's models
 * (created or updated by name, removed when they left the file; models
 * created through the admin API are left alone), loads the view, starts
 * listening for changes and the health refresher. Thread: main. */
int lg_models_start(struct lg_models *m, char *err, size_t errlen);
/* SIGHUP: the same reconciliation with a new config; on any error nothing
 * changes and @err says why. Thread: main. */
int lg_models_reload(struct lg_models *m, const struct lg_core_config *cfg, char *err,
		     size_t errlen);
/* Stops listening and refreshing. Thread: main. */
void lg_models_stop(struct lg_models *m);

/* The current view; a request holds it until it ends. Thread: any. */
struct lg_models_view *lg_models_view_get(struct lg_models *m);
void lg_models_view_put(struct lg_models_view *v);
/* By name or alias; NULL if unknown. */
const struct lg_model *lg_models_find(const struct lg_models_view *v, const char *name_or_alias);
size_t lg_models_count(const struct lg_models_view *v);
const struct lg_model *lg_models_at(const struct lg_models_view *v, size_t i);

/* Notes on the view (additions):
 * - get() is lock-free; it is safe on the workers and the main thread,
 *   whose callbacks lg_server_sync() waits for before an old view loses
 *   the registry's reference. A request may keep its view for as long as
 *   it runs (a stream included); providers' states outlive views.
 * - count()/at()/find() see every model, also those without providers,
 *   which clients must not see (404 "Model {name} not found.").
 * - A provider whose type is not loaded in this process has impl == NULL.
 * - max_concurrency is 0 (uncapped) or >= 1: the API and config.yml refuse
 *   OpenGateLLM's qos_limit 0 ("closed"). */

/* Prints the keys of a model and of a provider under models: (the
 * configuration reference), as lg_settings_print_reference() does. */
void lg_models_print_reference(FILE *out, bool markdown);

#endif
