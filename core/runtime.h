/* SPDX-License-Identifier: Apache-2.0 */
/* The core's shared structures: loaded plugins, what they registered, the
 * process-wide runtime, and a request as the core sees it. Private to the
 * core; plugins see none of this. */
#ifndef LG_RUNTIME_H
#define LG_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llmgate/host.h>
#include <llmgate/provider.h>

#include "config.h"
#include "loop.h"
#include "router.h"

struct lg_pg;
struct lg_models;
struct lg_balancer;
struct lg_workpool;
struct lg_server;
struct lg_exchange;

struct lg_plugin {
	char *name;
	char *path;                       /* the .so it came from */
	void *dl;
	const struct lg_plugin_info *info;
	struct lg_settings *settings;
	void *data;                       /* set_data() */
	struct lg_runtime *rt;
	size_t index;                     /* slot of its per-request data */
	bool initialized, started;
	char error[512];                  /* set_error() */
	/* set_ready(): why the plugin cannot serve, "" when it can */
	pthread_mutex_t ready_lock;
	atomic_bool not_ready;
	char not_ready_why[256];
};

struct lg_hook_entry {
	lg_hook_fn fn;
	int priority;
	size_t seq;                       /* registration order breaks ties */
	void *ud;
	struct lg_plugin *owner;
};

struct lg_provider_entry {
	const struct lg_provider_ops *ops;
	void *ud;
	struct lg_plugin *owner;
};

struct lg_access_entry {
	lg_model_access_fn fn;
	void *ud;
};

struct lg_listen_entry {
	char *channel;
	lg_notify_fn fn;
	void *arg;
	struct lg_plugin *owner;
};

/* What plugins registered during init(); read-only once frozen. */
struct lg_registry {
	struct lg_router *router;
	struct lg_hook_entry *hooks[LG_PHASE_COUNT_];
	size_t nhooks[LG_PHASE_COUNT_];
	struct lg_provider_entry *providers;
	size_t nproviders;
	struct lg_listen_entry *listens;
	size_t nlistens;
	struct lg_access_entry *access;
	size_t naccess;
	size_t hook_seq;
	bool frozen;
};

struct lg_registry *lg_registry_new(void);
void lg_registry_free(struct lg_registry *reg);
/* Ends the registration window and sorts hooks by priority. */
void lg_registry_freeze(struct lg_registry *reg);
const struct lg_provider_entry *lg_registry_provider(const struct lg_registry *reg,
						     const char *type);
/* Whether @who may see and call model @model_id: admins and anonymous
 * callers of public routes always, others when every access function agrees. */
bool lg_registry_model_allowed(const struct lg_registry *reg, const struct lg_principal *who,
			       int64_t model_id);

/* Process-wide state, owned by main(). */
struct lg_runtime {
	struct lg_core_config *cfg;
	struct lg_registry *registry;
	struct lg_plugin **plugins;       /* in dependency order */
	size_t nplugins;
	struct lg_loop *main_loop;
	struct lg_workpool *workpool;
	struct lg_server *server;
	struct lg_models *models;         /* the model registry */
	struct lg_balancer *balancer;     /* live provider state */
	_Atomic(struct lg_pg *) pg;       /* NULL until the database is up */
	atomic_bool ready;                /* database reachable and migrated */
	atomic_bool draining;             /* SIGTERM received */
	atomic_bool closing;              /* past draining: no new database or pool work */
};

/* The host vtable handed to every plugin. */
extern const struct lg_host lg_host_api;

/* Thread-local request context, so log() from a plugin carries the id. */
void lg_host_set_current_request(const char *request_id);

/* ---- a request, as the core sees it ---- */

struct lg_arena_chunk;

struct lg_close_cb {
	lg_close_fn fn;
	void *arg;
	struct lg_plugin *owner;
};

/* Continuation after a phase: the phase's final result. */
typedef void (*lg_phase_done_fn)(struct lg_req *req, enum lg_hook_result result);

struct lg_req {
	struct lg_exchange *ex;
	struct lg_runtime *rt;
	struct lg_route_match match;
	char params[512];
	struct lg_arena_chunk *arena;
	struct lg_principal principal;
	bool has_principal;
	struct lg_call *call;             /* set by the forwarding engine */
	void **plugin_data;               /* rt->nplugins slots */
	struct lg_close_cb *closes;
	size_t nclose, close_cap;
	lg_drain_fn drain;
	void *drain_arg;
	/* the phase being run */
	enum lg_phase phase;
	size_t hook_idx;
	bool hook_pending;
	lg_phase_done_fn phase_done;
	bool answered;                    /* reply, reply_error or stream_start done */
	bool streaming;
	uint64_t start_ns;
};

/* Runs @phase's hooks from the first; @done gets the outcome: OK if any
 * hook accepted (AUTH) or all went through, DECLINE if all declined, DONE
 * if a hook answered. May return before @done runs (a hook is PENDING). */
void lg_req_run_phase(struct lg_req *req, enum lg_phase phase, lg_phase_done_fn done);

void *lg_req_alloc(struct lg_req *req, size_t size);
char *lg_req_strdup(struct lg_req *req, const char *s);
char *lg_req_printf(struct lg_req *req, const char *fmt, ...) LG_PRINTF(2, 3);
void lg_req_arena_free(struct lg_req *req);

uint64_t lg_now_ns(void);

#endif
