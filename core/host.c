/* SPDX-License-Identifier: Apache-2.0 */
/* The host vtable: everything a plugin may ask of the core. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <jansson.h>

#include "fetch.h"
#include "forward.h"
#include "httpd.h"
#include "json.h"
#include "log.h"
#include "multipart.h"
#include "pg.h"
#include "runtime.h"
#include "server.h"
#include "workpool.h"

static _Thread_local const char *current_rid;

static void h_reply_error(struct lg_req *req, int status, const char *fmt, ...) LG_PRINTF(3, 4);

void lg_host_set_current_request(const char *request_id) { current_rid = request_id; }

uint64_t lg_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- logging and errors ---- */

static void h_log(struct lg_plugin *self, enum lg_log_level level, const char *fmt, ...)
{
	va_list ap;

	if (level < LG_LOG_ERROR || level > LG_LOG_DEBUG)
		level = LG_LOG_ERROR;
	va_start(ap, fmt);
	lg_logv(level, self ? self->name : "?", current_rid, fmt, ap);
	va_end(ap);
}

static void h_set_error(struct lg_plugin *self, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(self->error, sizeof self->error, fmt, ap);
	va_end(ap);
}

/* ---- configuration ---- */

static int h_cfg_str(struct lg_plugin *self, const char *key, const char **out)
{
	return self->settings ? lg_settings_str(self->settings, key, out) : -EINVAL;
}

static int h_cfg_int(struct lg_plugin *self, const char *key, int64_t *out)
{
	return self->settings ? lg_settings_int(self->settings, key, out) : -EINVAL;
}

static int h_cfg_double(struct lg_plugin *self, const char *key, double *out)
{
	return self->settings ? lg_settings_double(self->settings, key, out) : -EINVAL;
}

static int h_cfg_bool(struct lg_plugin *self, const char *key, bool *out)
{
	return self->settings ? lg_settings_bool(self->settings, key, out) : -EINVAL;
}

static int h_cfg_strings(struct lg_plugin *self, const char *key, const char *const **out,
			 size_t *n)
{
	return self->settings ? lg_settings_strings(self->settings, key, out, n) : -EINVAL;
}

static int h_cfg_u64(struct lg_plugin *self, const char *key, uint64_t *out)
{
	return self->settings ? lg_settings_u64(self->settings, key, out) : -EINVAL;
}

static void h_set_data(struct lg_plugin *self, void *data) { self->data = data; }
static void *h_get_data(struct lg_plugin *self) { return self->data; }

/* ---- registration ---- */

/* Registration after init() would race with requests in flight. */
static int registration_closed(struct lg_plugin *self, const char *what)
{
	if (!self->rt->registry->frozen)
		return 0;
	lg_error(self->name, "%s after init() refused: register everything in init()", what);
	return -EBUSY;
}

static int h_route_add(struct lg_plugin *self, const struct lg_route *route, void *ud)
{
	char err[256];
	int rc = registration_closed(self, "route_add");

	if (rc < 0)
		return rc;
	if (!route || route->size < sizeof(struct lg_route)) {
		lg_error(self->name, "route_add: struct lg_route too small (size %u, host needs %zu)",
			 route ? route->size : 0, sizeof(struct lg_route));
		return -EINVAL;
	}
	rc = lg_router_add(self->rt->registry->router, route, ud, self, err, sizeof err);
	if (rc < 0)
		lg_error(self->name, "%s", err);
	return rc;
}

static int h_hook_add(struct lg_plugin *self, enum lg_phase phase, lg_hook_fn fn, int priority,
		      void *ud)
{
	struct lg_registry *reg = self->rt->registry;
	struct lg_hook_entry *grown;
	int rc = registration_closed(self, "hook_add");

	if (rc < 0)
		return rc;
	if (phase < LG_PHASE_AUTH || phase >= LG_PHASE_COUNT_ || !fn) {
		lg_error(self->name, "hook_add: unknown phase %d or no function", (int)phase);
		return -EINVAL;
	}
	grown = realloc(reg->hooks[phase], (reg->nhooks[phase] + 1) * sizeof *grown);
	if (!grown)
		return -ENOMEM;
	reg->hooks[phase] = grown;
	grown[reg->nhooks[phase]++] = (struct lg_hook_entry){
		.fn = fn, .priority = priority, .seq = reg->hook_seq++, .ud = ud, .owner = self,
	};
	return 0;
}

static int h_model_access_add(struct lg_plugin *self, lg_model_access_fn fn, void *ud)
{
	struct lg_registry *reg = self->rt->registry;
	struct lg_access_entry *grown;
	int rc = registration_closed(self, "model_access_add");

	if (rc < 0)
		return rc;
	if (!fn)
		return -EINVAL;
	grown = realloc(reg->access, (reg->naccess + 1) * sizeof *grown);
	if (!grown)
		return -ENOMEM;
	reg->access = grown;
	grown[reg->naccess++] = (struct lg_access_entry){ .fn = fn, .ud = ud };
	return 0;
}

static void h_set_ready(struct lg_plugin *self, const char *why)
{
	pthread_mutex_lock(&self->ready_lock);
	snprintf(self->not_ready_why, sizeof self->not_ready_why, "%s", why ? why : "");
	atomic_store(&self->not_ready, why != NULL);
	pthread_mutex_unlock(&self->ready_lock);
}

static void h_sync_workers(struct lg_plugin *self)
{
	lg_server_sync(self->rt);
}

static bool valid_name(const char *s)
{
	if (!s || !(*s >= 'a' && *s <= 'z'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

static int h_provider_add(struct lg_plugin *self, const struct lg_provider_ops *ops, void *ud)
{
	struct lg_registry *reg = self->rt->registry;
	struct lg_provider_entry *grown;
	int rc = registration_closed(self, "provider_add");

	if (rc < 0)
		return rc;
	if (!ops || ops->size < sizeof(struct lg_provider_ops) || !valid_name(ops->type)) {
		lg_error(self->name, "provider_add: invalid lg_provider_ops (size or type name)");
		return -EINVAL;
	}
	if (lg_registry_provider(reg, ops->type)) {
		lg_error(self->name, "provider type \"%s\" is already registered by plugin %s",
			 ops->type, lg_registry_provider(reg, ops->type)->owner->name);
		return -EEXIST;
	}
	grown = realloc(reg->providers, (reg->nproviders + 1) * sizeof *grown);
	if (!grown)
		return -ENOMEM;
	reg->providers = grown;
	grown[reg->nproviders++] = (struct lg_provider_entry){ .ops = ops, .ud = ud, .owner = self };
	return 0;
}

static int h_db_listen(struct lg_plugin *self, const char *channel, lg_notify_fn fn, void *arg)
{
	struct lg_registry *reg = self->rt->registry;
	struct lg_listen_entry *grown;
	int rc = registration_closed(self, "db_listen");

	if (rc < 0)
		return rc;
	if (!valid_name(channel) || !fn)
		return -EINVAL;
	grown = realloc(reg->listens, (reg->nlistens + 1) * sizeof *grown);
	if (!grown)
		return -ENOMEM;
	reg->listens = grown;
	grown[reg->nlistens] = (struct lg_listen_entry){
		.channel = strdup(channel), .fn = fn, .arg = arg, .owner = self,
	};
	if (!grown[reg->nlistens].channel)
		return -ENOMEM;
	reg->nlistens++;
	return 0;
}

/* ---- loops, timers, work ---- */

struct lg_timer {
	struct event *ev;
	lg_timer_fn fn;
	void *arg;
	bool repeat;
};

static struct event_base *h_loop(void)
{
	struct lg_loop *loop = lg_loop_current();

	return loop ? lg_loop_base(loop) : NULL;
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
	struct lg_timer *t = arg;
	lg_timer_fn fn = t->fn;
	void *fn_arg = t->arg;

	(void)fd;
	(void)what;
	if (!t->repeat) {
		/* A one-shot timer is gone once it fired: free it first so the
		 * callback may start a new one. */
		event_free(t->ev);
		free(t);
	}
	fn(fn_arg);
}

static struct lg_timer *h_timer_start(struct lg_plugin *self, uint64_t ms, bool repeat,
				      lg_timer_fn fn, void *arg)
{
	struct event_base *base = h_loop();
	struct lg_timer *t;
	struct timeval tv = { .tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000 };

	if (!base || !fn) {
		lg_error(self ? self->name : "core", "timer_start: no host loop on this thread");
		return NULL;
	}
	t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	*t = (struct lg_timer){ .fn = fn, .arg = arg, .repeat = repeat };
	t->ev = event_new(base, -1, repeat ? EV_PERSIST : 0, timer_fire, t);
	if (!t->ev || event_add(t->ev, &tv) != 0) {
		if (t->ev)
			event_free(t->ev);
		free(t);
		return NULL;
	}
	return t;
}

static void h_timer_stop(struct lg_timer *t)
{
	if (!t)
		return;
	event_free(t->ev);
	free(t);
}

static int h_work_submit(struct lg_plugin *self, lg_work_fn work, lg_done_fn done, void *arg)
{
	struct lg_loop *loop = lg_loop_current();

	if (!work || (done && !loop))
		return -EINVAL;
	if (atomic_load(&self->rt->closing))
		return -ESHUTDOWN;
	return lg_workpool_submit(self->rt->workpool, loop, work, done, arg);
}

/* ---- PostgreSQL ---- */

static int h_db_query(struct lg_plugin *self, const char *sql, int nparams,
		      const char *const *params, lg_db_fn cb, void *arg)
{
	struct lg_pg *pg = atomic_load(&self->rt->pg);
	struct lg_loop *loop = lg_loop_current();

	if (!sql || !cb || !loop || nparams < 0)
		return -EINVAL;
	if (atomic_load(&self->rt->closing))
		return -ESHUTDOWN;
	if (!pg)
		return -EAGAIN;
	return lg_pg_query(pg, loop, sql, nparams, params, cb, arg);
}

static int h_db_stats(struct lg_plugin *self, struct lg_db_stats *out)
{
	struct lg_pg *pg = atomic_load(&self->rt->pg);
	struct lg_db_stats now;
	uint32_t size;

	if (!out || out->size < sizeof out->size)
		return -EINVAL;
	if (atomic_load(&self->rt->closing))
		return -ESHUTDOWN;      /* the pool may be going away */
	if (!pg)
		return -EAGAIN;
	lg_pg_stats(pg, &now);
	/* An older plugin's struct is shorter: fill only what it has. */
	size = out->size < sizeof now ? out->size : (uint32_t)sizeof now;
	memcpy(out, &now, size);
	out->size = size;
	return 0;
}

/* The core settings plugins may read, by name (host.h). */
static int h_core_setting_bool(struct lg_plugin *self, const char *name, bool *out)
{
	const struct lg_core_config *cfg = self->rt->cfg;

	if (!name || !out)
		return -EINVAL;
	if (strcmp(name, "monitoring_postgres_enabled") == 0)
		*out = cfg->monitoring_postgres_enabled;
	else if (strcmp(name, "monitoring_prometheus_enabled") == 0)
		*out = cfg->monitoring_prometheus_enabled;
	else
		return -ENOENT;
	return 0;
}

/* The pool for a blocking call (@what: its asynchronous name), or NULL
 * with *@rc and @err set: refused on a worker, which would stall every
 * request it holds, while closing, and before the pool is up. */
static struct lg_pg *sync_pool(struct lg_plugin *self, const char *what, char *err,
			       size_t errlen, int *rc)
{
	struct lg_pg *pg = atomic_load(&self->rt->pg);

	if (lg_loop_current() && lg_loop_current() != self->rt->main_loop) {
		snprintf(err, errlen, "%s_sync on a worker: use %s", what, what);
		lg_error(self->name, "%s_sync called on a worker: refused, use %s", what, what);
		*rc = -EPERM;
	} else if (atomic_load(&self->rt->closing)) {
		snprintf(err, errlen, "llmgate is shutting down");
		*rc = -ESHUTDOWN;
	} else if (!pg) {
		snprintf(err, errlen, "the database is not connected yet (use it from start())");
		*rc = -EAGAIN;
	} else {
		return pg;
	}
	return NULL;
}

static int h_db_query_sync(struct lg_plugin *self, const char *sql, int nparams,
			   const char *const *params, PGresult **out, char *err, size_t errlen)
{
	char local[256];
	struct lg_pg *pg;
	int rc;

	*out = NULL;
	if (!err || errlen == 0) {
		err = local;
		errlen = sizeof local;
	}
	pg = sync_pool(self, "db_query", err, errlen, &rc);
	if (!pg)
		return rc;
	*out = lg_pg_query_sync(pg, sql, nparams, params, err, errlen);
	return *out ? 0 : -EIO;
}

static int h_db_copy(struct lg_plugin *self, const struct lg_db_copy *copy, lg_db_fn cb,
		     void *arg)
{
	struct lg_pg *pg = atomic_load(&self->rt->pg);
	struct lg_loop *loop = lg_loop_current();

	if (!lg_pg_copy_valid(copy) || !cb || !loop)
		return -EINVAL;
	if (atomic_load(&self->rt->closing))
		return -ESHUTDOWN;
	if (!pg)
		return -EAGAIN;
	return lg_pg_copy(pg, loop, copy, cb, arg);
}

static int h_db_copy_sync(struct lg_plugin *self, const struct lg_db_copy *copy,
			  PGresult **out, char *err, size_t errlen)
{
	char local[256];
	struct lg_pg *pg;
	int rc;

	*out = NULL;
	if (!err || errlen == 0) {
		err = local;
		errlen = sizeof local;
	}
	if (!lg_pg_copy_valid(copy)) {
		snprintf(err, errlen, "invalid bulk load");
		return -EINVAL;
	}
	pg = sync_pool(self, "db_copy", err, errlen, &rc);
	if (!pg)
		return rc;
	*out = lg_pg_copy_sync(pg, copy, err, errlen);
	return *out ? 0 : -EIO;
}

/* ---- the request: reading ---- */

/* A request whose connection was closed by force at shutdown while one of
 * its hooks was pending has no exchange any more (on_done() in server.c):
 * it reads as empty and its answers go nowhere. A call made by a plugin
 * (model_call()) has none either: it reads as a POST of its body to its
 * endpoint, without headers, and its answer goes to the plugin. */
static const char *h_req_method(struct lg_req *req)
{
	if (lg_forward_internal(req))
		return "POST";
	return req->ex ? lg_exchange_method(req->ex) : "";
}
static const char *h_req_path(struct lg_req *req)
{
	const struct lg_internal_req *in = lg_forward_internal(req);

	if (in)
		return in->endpoint;
	return req->ex ? lg_exchange_path(req->ex) : "";
}
static const char *h_req_header(struct lg_req *req, const char *name)
{
	return req->ex ? lg_exchange_header(req->ex, name) : NULL;
}
static struct lg_str h_req_body(struct lg_req *req)
{
	const struct lg_internal_req *in = lg_forward_internal(req);

	if (in)
		return in->body;
	return req->ex ? lg_exchange_body(req->ex) : (struct lg_str){ "", 0 };
}
static const char *h_req_id(struct lg_req *req)
{
	const struct lg_internal_req *in = lg_forward_internal(req);

	if (in)
		return in->id;
	return req->ex ? lg_exchange_id(req->ex) : "-";
}

static const char *h_req_param(struct lg_req *req, const char *name)
{
	for (size_t i = 0; i < req->match.nparams; i++)
		if (strcmp(req->match.names[i], name) == 0)
			return req->match.values[i];
	return NULL;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes a query component ('+' is a space) into the request's arena. An
 * invalid escape or an encoded NUL makes the whole value absent. */
static char *query_decode(struct lg_req *req, const char *s, size_t len)
{
	char *out = lg_req_alloc(req, len + 1), *o = out;

	if (!out)
		return NULL;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == '+') {
			*o++ = ' ';
		} else if (s[i] == '%') {
			int hi = i + 2 < len ? hexval(s[i + 1]) : -1;
			int lo = i + 2 < len ? hexval(s[i + 2]) : -1;

			if (hi < 0 || lo < 0)
				return NULL;
			*o = (char)(hi * 16 + lo);
			if (*o == '\0')
				return NULL;
			o++;
			i += 2;
		} else {
			*o++ = s[i];
		}
	}
	*o = '\0';
	return out;
}

static const char *h_req_query(struct lg_req *req, const char *name)
{
	const char *q = req->ex ? lg_exchange_query(req->ex) : NULL;
	size_t nlen = strlen(name);

	while (q && *q) {
		size_t plen = strcspn(q, "&");
		const char *eq = memchr(q, '=', plen);
		size_t klen = eq ? (size_t)(eq - q) : plen;
		char *key = query_decode(req, q, klen);

		if (key && strlen(key) == nlen && memcmp(key, name, nlen) == 0)
			return eq ? query_decode(req, eq + 1, plen - klen - 1) : "";
		q += plen;
		if (*q == '&')
			q++;
	}
	return NULL;
}

static json_t *h_req_json(struct lg_req *req)
{
	const struct lg_core_config *cfg = req->rt->cfg;
	struct lg_json_limits lim = {
		.max_depth = cfg->json_max_depth,
		.max_items = cfg->json_max_items,
		.max_string = cfg->max_body_bytes,
	};
	struct lg_str body = h_req_body(req);
	enum lg_json_type type;
	char err[160];
	json_error_t jerr;
	json_t *root;
	size_t n;

	/* The scan bounds depth and sizes before jansson builds anything. */
	if (lg_json_scan(body.ptr, body.len, &lim, NULL, 0, &n, &type, err, sizeof err) < 0) {
		h_reply_error(req, 400, "%s", err);
		return NULL;
	}
	if (type != LG_JSON_OBJECT) {
		h_reply_error(req, 422, "The request body must be a JSON object.");
		return NULL;
	}
	root = json_loadb(body.ptr, body.len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		h_reply_error(req, 400, "invalid JSON at byte %d: %s", jerr.position, jerr.text);
	return root;
}

static void *h_req_alloc(struct lg_req *req, size_t size) { return lg_req_alloc(req, size); }

static void h_req_set_data(struct lg_req *req, struct lg_plugin *self, void *data)
{
	if (!req->plugin_data) {
		req->plugin_data = lg_req_alloc(req, req->rt->nplugins * sizeof(void *) + 1);
		if (!req->plugin_data)
			return;
	}
	req->plugin_data[self->index] = data;
}

static void *h_req_get_data(struct lg_req *req, struct lg_plugin *self)
{
	return req->plugin_data ? req->plugin_data[self->index] : NULL;
}

static int h_req_set_principal(struct lg_req *req, const struct lg_principal *who)
{
	if (!who || who->size < sizeof(struct lg_principal))
		return -EINVAL;
	req->principal = *who;
	req->principal.user_name = who->user_name ? lg_req_strdup(req, who->user_name) : NULL;
	req->principal.key_name = who->key_name ? lg_req_strdup(req, who->key_name) : NULL;
	req->has_principal = true;
	return 0;
}

static const struct lg_principal *h_req_principal(struct lg_req *req)
{
	return req->has_principal ? &req->principal : NULL;
}

static const struct lg_call *h_req_call(struct lg_req *req)
{
	return req->call;
}

static int h_req_form(struct lg_req *req, const struct lg_form_part **parts, size_t *n)
{
	struct lg_form_part *out;
	char err[160];

	if (!parts || !n)
		return -EINVAL;
	if (lg_multipart_parse(req, h_req_header(req, "Content-Type"), h_req_body(req), &out, n,
			       err, sizeof err) < 0) {
		h_reply_error(req, 400, "%s", err);
		*parts = NULL;
		return -EINVAL;
	}
	*parts = out;
	return 0;
}

/* ---- the request: answering ---- */

/* A request is answered once; a second answer is a plugin bug. */
static bool claim_answer(struct lg_req *req, const char *what)
{
	if (!req->ex && !lg_forward_internal(req))
		return false;
	if (req->answered) {
		lg_log(LG_LOG_ERROR, "core", h_req_id(req),
		       "%s on a request already answered: ignored", what);
		return false;
	}
	req->answered = true;
	return true;
}

static int h_reply_header(struct lg_req *req, const char *name, const char *value)
{
	if (lg_forward_internal(req))
		return 0;       /* a plugin's call has no headers to send */
	return req->ex ? lg_exchange_add_header(req->ex, name, value) : -ENOTCONN;
}

static void h_reply(struct lg_req *req, int status, const char *content_type, const char *body,
		    size_t len)
{
	if (!claim_answer(req, "reply"))
		return;
	if (lg_forward_internal(req))
		lg_forward_internal_reply(req, status, body, len);
	else
		lg_exchange_reply(req->ex, status, content_type, body, len);
}

static void h_reply_error(struct lg_req *req, int status, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (!claim_answer(req, "reply_error"))
		return;
	if (lg_forward_internal(req))
		lg_forward_internal_error(req, status, msg);
	else
		lg_exchange_reply_error(req->ex, status, msg);
}

static int h_stream_start(struct lg_req *req, int status, const char *content_type)
{
	if (lg_forward_internal(req))
		return -ENOTSUP;        /* plugins' calls are not streamed */
	if (!claim_answer(req, "stream_start"))
		return -EALREADY;
	req->streaming = true;
	return lg_exchange_stream_start(req->ex, status, content_type);
}

static long h_stream_write(struct lg_req *req, const char *data, size_t len)
{
	if (!req->streaming || !req->ex)
		return -1;
	return lg_exchange_stream_write(req->ex, data, len);
}

static void h_stream_end(struct lg_req *req)
{
	if (req->streaming && req->ex) {
		req->streaming = false;
		lg_exchange_stream_end(req->ex);
	}
}

static void h_on_close(struct lg_req *req, struct lg_plugin *self, lg_close_fn fn, void *arg)
{
	for (size_t i = 0; i < req->nclose; i++) {
		if (req->closes[i].owner == self) {
			req->closes[i].fn = fn;
			req->closes[i].arg = arg;
			return;
		}
	}
	if (req->nclose == req->close_cap) {
		size_t cap = req->close_cap ? req->close_cap * 2 : 4;
		struct lg_close_cb *v = lg_req_alloc(req, cap * sizeof *v);

		if (!v)
			return;
		if (req->nclose)
			memcpy(v, req->closes, req->nclose * sizeof *v);
		req->closes = v;
		req->close_cap = cap;
	}
	req->closes[req->nclose++] = (struct lg_close_cb){ .fn = fn, .arg = arg, .owner = self };
}

static void h_on_drain(struct lg_req *req, lg_drain_fn fn, void *arg)
{
	req->drain = fn;
	req->drain_arg = arg;
}

/* ---- hooks ---- */

/* Applies one hook's result; true when the phase is over. */
static bool phase_step(struct lg_req *req, enum lg_hook_result r)
{
	if (r == LG_HOOK_DONE) {
		req->phase_done(req, LG_HOOK_DONE);
		return true;
	}
	if (r == LG_HOOK_OK && req->phase == LG_PHASE_AUTH) {
		req->phase_done(req, LG_HOOK_OK);
		return true;
	}
	return false;
}

static void phase_continue(struct lg_req *req)
{
	const struct lg_registry *reg = req->rt->registry;
	size_t n = reg->nhooks[req->phase];

	while (req->hook_idx < n) {
		const struct lg_hook_entry *e = &reg->hooks[req->phase][req->hook_idx];
		enum lg_hook_result r = e->fn(req, e->ud);

		if (r == LG_HOOK_PENDING) {
			req->hook_pending = true;
			return;
		}
		if (phase_step(req, r))
			return;
		req->hook_idx++;
	}
	req->phase_done(req, req->phase == LG_PHASE_AUTH ? LG_HOOK_DECLINE : LG_HOOK_OK);
}

void lg_req_run_phase(struct lg_req *req, enum lg_phase phase, lg_phase_done_fn done)
{
	req->phase = phase;
	req->hook_idx = 0;
	req->hook_pending = false;
	req->phase_done = done;
	phase_continue(req);
}

static void h_resume(struct lg_req *req, enum lg_hook_result result)
{
	if (!req->ex && !lg_forward_internal(req)) {
		/* Its connection was closed by force (on_done() in server.c). */
		lg_req_arena_free(req);
		free(req);
		return;
	}
	if (!req->hook_pending || result == LG_HOOK_PENDING) {
		lg_log(LG_LOG_ERROR, "core", h_req_id(req),
		       "resume() without a pending hook, or with PENDING: ignored");
		return;
	}
	req->hook_pending = false;
	if (phase_step(req, result))
		return;
	req->hook_idx++;
	phase_continue(req);
}

/* ---- outbound HTTP ---- */

static struct lg_fetch *h_fetch(struct lg_plugin *self, const struct lg_fetch_request *rq,
				const struct lg_fetch_handlers *h, void *arg)
{
	struct lg_loop *loop = lg_loop_current();
	struct lg_fetcher *f = loop ? lg_loop_fetcher(loop) : NULL;

	if (!f || !rq || rq->size < sizeof(struct lg_fetch_request) || !h ||
	    h->size < sizeof(struct lg_fetch_handlers) || !h->on_done) {
		lg_error(self ? self->name : "core",
			 "fetch: no HTTP client on this thread, or a request/handlers struct too small");
		return NULL;
	}
	return lg_fetch_start(f, rq, h, arg);
}

/* ---- the server ---- */

static bool loopback_host(const char *addr)
{
	size_t hostlen = addr[0] == '[' ? strcspn(addr, "]") + 1 : strcspn(addr, ":");

	if (strncmp(addr, "127.", 4) == 0 && hostlen > 4)
		return true;
	return (hostlen == 5 && strncmp(addr, "[::1]", 5) == 0) ||
	       (hostlen == 9 && strncmp(addr, "localhost", 9) == 0);
}

static bool h_server_exposed(struct lg_plugin *self)
{
	const struct lg_core_config *cfg = self->rt->cfg;

	for (size_t i = 0; i < cfg->n_listen; i++)
		if (!loopback_host(cfg->listen[i]))
			return true;
	return false;
}

/* ---- request memory ---- */

struct lg_arena_chunk {
	struct lg_arena_chunk *next;
	size_t used, cap;
	max_align_t data[];
};

#define ARENA_CHUNK 4096u

void *lg_req_alloc(struct lg_req *req, size_t size)
{
	struct lg_arena_chunk *c = req->arena;
	size_t need = (size + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
	void *p;

	if (need == 0)
		need = sizeof(max_align_t);
	if (!c || c->cap - c->used < need) {
		size_t cap = need > ARENA_CHUNK ? need : ARENA_CHUNK;

		c = malloc(sizeof *c + cap);
		if (!c)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = req->arena;
		req->arena = c;
	}
	p = (char *)c->data + c->used;
	c->used += need;
	memset(p, 0, size);
	return p;
}

char *lg_req_strdup(struct lg_req *req, const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = lg_req_alloc(req, n);

	if (d)
		memcpy(d, s, n);
	return d;
}

char *lg_req_printf(struct lg_req *req, const char *fmt, ...)
{
	va_list ap;
	char *s;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	s = lg_req_alloc(req, (size_t)n + 1);
	if (!s)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

void lg_req_arena_free(struct lg_req *req)
{
	while (req->arena) {
		struct lg_arena_chunk *next = req->arena->next;

		free(req->arena);
		req->arena = next;
	}
}

const struct lg_host lg_host_api = {
	.size = sizeof(struct lg_host),
	.abi_major = LG_ABI_MAJOR,
	.abi_minor = LG_ABI_MINOR,
	.log = h_log,
	.set_error = h_set_error,
	.cfg_str = h_cfg_str,
	.cfg_int = h_cfg_int,
	.cfg_double = h_cfg_double,
	.cfg_bool = h_cfg_bool,
	.cfg_strings = h_cfg_strings,
	.cfg_u64 = h_cfg_u64,
	.set_data = h_set_data,
	.get_data = h_get_data,
	.route_add = h_route_add,
	.hook_add = h_hook_add,
	.model_access_add = h_model_access_add,
	.set_ready = h_set_ready,
	.sync_workers = h_sync_workers,
	.provider_add = h_provider_add,
	.loop = h_loop,
	.timer_start = h_timer_start,
	.timer_stop = h_timer_stop,
	.work_submit = h_work_submit,
	.db_query = h_db_query,
	.db_query_sync = h_db_query_sync,
	.db_listen = h_db_listen,
	.req_method = h_req_method,
	.req_path = h_req_path,
	.req_param = h_req_param,
	.req_query = h_req_query,
	.req_header = h_req_header,
	.req_body = h_req_body,
	.req_json = h_req_json,
	.req_id = h_req_id,
	.req_alloc = h_req_alloc,
	.req_set_data = h_req_set_data,
	.req_get_data = h_req_get_data,
	.req_set_principal = h_req_set_principal,
	.req_principal = h_req_principal,
	.req_call = h_req_call,
	.resume = h_resume,
	.reply_header = h_reply_header,
	.reply = h_reply,
	.reply_error = h_reply_error,
	.stream_start = h_stream_start,
	.stream_write = h_stream_write,
	.stream_end = h_stream_end,
	.on_close = h_on_close,
	.on_drain = h_on_drain,
	.fetch = h_fetch,
	.fetch_cancel = lg_fetch_cancel,
	.fetch_pause = lg_fetch_pause,
	.fetch_header = lg_fetch_header,
	.server_exposed = h_server_exposed,
	.model_call = lg_forward_model_call,
	.req_form = h_req_form,
	.call_set_body = lg_forward_set_body,
	.call_reply_member = lg_forward_reply_member,
	.db_stats = h_db_stats,
	.core_setting_bool = h_core_setting_bool,
	.db_copy = h_db_copy,
	.db_copy_sync = h_db_copy_sync,
};
