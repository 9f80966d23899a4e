/* SPDX-License-Identifier: Apache-2.0 */
#include "server.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/util.h>

#include "fetch.h"
#include "httpd.h"
#include "log.h"
#include "pg.h"

struct lg_worker {
	struct lg_server *srv;
	int id;
	pthread_t thread;
	bool running;
	struct lg_loop *loop;
	struct lg_fetcher *fetcher;
	struct lg_httpd **httpds;        /* one per listen address */
	int *fds;                        /* this worker's listening sockets */
	atomic_size_t busy;
};

struct lg_server {
	struct lg_runtime *rt;
	struct lg_worker *workers;
	int nworkers;
	size_t naddrs;
	struct lg_httpd_limits limits;
	struct lg_fetch_defaults fetch_defaults;
};

/* ---- listening sockets ---- */

/* Splits "host:port" or "[v6]:port" into @host and @port. */
static int split_addr(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon;

	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');

		if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= hostlen)
			return -1;
		memcpy(host, addr + 1, (size_t)(end - addr - 1));
		host[end - addr - 1] = '\0';
		colon = end + 1;
	} else {
		colon = strrchr(addr, ':');
		if (!colon || (size_t)(colon - addr) >= hostlen)
			return -1;
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = '\0';
	}
	snprintf(port, portlen, "%s", colon + 1);
	return 0;
}

static int listen_socket(const struct addrinfo *ai, char *err, size_t errlen, const char *addr)
{
	int one = 1;
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
			ai->ai_protocol);

	if (fd < 0) {
		snprintf(err, errlen, "listen %s: socket: %s", addr, strerror(errno));
		return -1;
	}
	/* One socket per worker on the same port: the kernel spreads
	 * connections across workers without a shared accept lock. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
		snprintf(err, errlen, "listen %s: %s", addr, strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* Opens one socket per worker for @addr; a port 0 is resolved by the first. */
static int open_address(struct lg_server *srv, size_t idx, const char *addr, char *err,
			size_t errlen)
{
	char host[256], port[16], shown[300];
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
	struct addrinfo *ai = NULL;
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof ss;
	int rc;

	if (split_addr(addr, host, sizeof host, port, sizeof port) < 0) {
		snprintf(err, errlen, "listen %s: expected host:port or [v6]:port", addr);
		return -1;
	}
	for (int w = 0; w < srv->nworkers; w++) {
		rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
		if (rc != 0) {
			snprintf(err, errlen, "listen %s: %s", addr, gai_strerror(rc));
			return -1;
		}
		srv->workers[w].fds[idx] = listen_socket(ai, err, errlen, addr);
		freeaddrinfo(ai);
		if (srv->workers[w].fds[idx] < 0)
			return -1;
		if (w == 0) {
			if (getsockname(srv->workers[0].fds[idx], (struct sockaddr *)&ss, &sslen) != 0) {
				snprintf(err, errlen, "listen %s: getsockname: %s", addr, strerror(errno));
				return -1;
			}
			snprintf(port, sizeof port, "%u", ntohs(ss.ss_family == AF_INET6
				 ? ((struct sockaddr_in6 *)&ss)->sin6_port
				 : ((struct sockaddr_in *)&ss)->sin_port));
		}
	}
	snprintf(shown, sizeof shown, strchr(host, ':') ? "[%s]:%s" : "%s:%s",
		 host[0] ? host : "0.0.0.0", port);
	lg_info("core", "listening on http://%s", shown);
	return 0;
}

/* ---- the request pipeline ---- */

static void call_handler(struct lg_req *req)
{
	const struct lg_route_entry *e = req->match.entry;

	e->route.fn(req, e->ud);
}

static void after_auth(struct lg_req *req, enum lg_hook_result result)
{
	const struct lg_route_entry *e = req->match.entry;

	if (result == LG_HOOK_DONE)
		return;
	if (result != LG_HOOK_OK || !req->has_principal) {
		const char *authz = lg_exchange_header(req->ex, "Authorization");

		req->answered = true;
		lg_exchange_add_header(req->ex, "WWW-Authenticate", "Bearer");
		lg_exchange_reply_error(req->ex, 401, authz && strncasecmp(authz, "Bearer ", 7) == 0
					? "Invalid API key." : "Invalid authentication scheme.");
		return;
	}
	if (e->route.policy == LG_POLICY_ADMIN && !(req->principal.permissions & LG_PERM_ADMIN)) {
		req->answered = true;
		lg_exchange_reply_error(req->ex, 403, "User has no admin rights.");
		return;
	}
	call_handler(req);
}

static void on_client_gone(struct lg_exchange *ex, void *arg)
{
	struct lg_req *req = arg;

	(void)ex;
	lg_host_set_current_request(lg_exchange_id(req->ex));
	for (size_t i = 0; i < req->nclose; i++)
		if (req->closes[i].fn)
			req->closes[i].fn(req, req->closes[i].arg);
	lg_host_set_current_request(NULL);
}

static void on_stream_drain(struct lg_exchange *ex, void *arg)
{
	struct lg_req *req = arg;

	(void)ex;
	if (req->drain)
		req->drain(req, req->drain_arg);
}

static size_t on_head(struct lg_exchange *ex, void *arg)
{
	struct lg_worker *w = arg;
	struct lg_req *req = calloc(1, sizeof *req);
	char allow[64];
	int rc;

	atomic_fetch_add(&w->busy, 1);
	if (!req) {
		lg_exchange_reply_error(ex, 503, "Out of memory, please try again later.");
		return 0;
	}
	req->ex = ex;
	req->rt = w->srv->rt;
	req->start_ns = lg_now_ns();
	lg_exchange_set_data(ex, req);
	lg_exchange_set_callbacks(ex, on_client_gone, on_stream_drain, req);
	rc = lg_router_match(req->rt->registry->router, lg_exchange_method(ex),
			     lg_exchange_path(ex), &req->match, req->params, sizeof req->params,
			     allow, sizeof allow);
	if (rc == -ENOENT) {
		req->answered = true;
		lg_exchange_reply_error(ex, 404, "Not Found");
		return 0;
	}
	if (rc == -EPERM) {
		req->answered = true;
		lg_exchange_add_header(ex, "Allow", allow);
		lg_exchange_reply_error(ex, 405, "Method Not Allowed");
		return 0;
	}
	return req->match.entry->route.max_body;
}

static void route_health(struct lg_req *req, void *ud);
static void route_ready(struct lg_req *req, void *ud);

static void on_request(struct lg_exchange *ex, void *arg)
{
	struct lg_req *req = lg_exchange_get_data(ex);
	const struct lg_route_entry *e;

	(void)arg;
	if (!req || req->answered)
		return;
	e = req->match.entry;
	lg_host_set_current_request(lg_exchange_id(ex));
	/* Everything but liveness and readiness needs the database. */
	if (!atomic_load(&req->rt->ready) && e->route.fn != route_health &&
	    e->route.fn != route_ready) {
		req->answered = true;
		lg_exchange_add_header(ex, "Retry-After", "1");
		lg_exchange_reply_error(ex, 503, "llmgate is starting: the database is not ready yet.");
	} else if (e->route.policy == LG_POLICY_PUBLIC) {
		call_handler(req);
	} else {
		lg_req_run_phase(req, LG_PHASE_AUTH, after_auth);
	}
	lg_host_set_current_request(NULL);
}

static void on_done(struct lg_exchange *ex, int status, uint64_t bytes, void *arg)
{
	struct lg_worker *w = arg;
	struct lg_req *req = lg_exchange_get_data(ex);
	double ms = req ? (double)(lg_now_ns() - req->start_ns) / 1e6 : 0;

	lg_log(LG_LOG_INFO, "access", lg_exchange_id(ex), "%s \"%s %s\" %d %llu %.2fms%s",
	       lg_exchange_peer(ex), lg_exchange_method(ex), lg_exchange_path(ex), status,
	       (unsigned long long)bytes, ms, lg_exchange_client_gone(ex) ? " client-gone" : "");
	if (req) {
		lg_exchange_set_data(ex, NULL);
		if (req->hook_pending) {
			/* Closed by force at shutdown while a hook waits for the
			 * database or the work pool: the hook's resume() frees it. */
			req->ex = NULL;
		} else {
			lg_req_arena_free(req);
			free(req);
		}
	}
	atomic_fetch_sub(&w->busy, 1);
}

static const struct lg_httpd_handlers pipeline = {
	.on_head = on_head,
	.on_request = on_request,
	.on_done = on_done,
};

/* ---- the core's own routes ---- */

static void route_health(struct lg_req *req, void *ud)
{
	static const char body[] = "{\"status\":\"ok\"}";

	(void)ud;
	req->answered = true;
	lg_exchange_reply(req->ex, 200, "application/json", body, sizeof body - 1);
}

/* The first plugin that said it cannot serve (set_ready), as "name: why". */
static bool plugin_not_ready(const struct lg_runtime *rt, char *buf, size_t len)
{
	for (size_t i = 0; i < rt->nplugins; i++) {
		struct lg_plugin *p = rt->plugins[i];

		if (!atomic_load(&p->not_ready))
			continue;
		pthread_mutex_lock(&p->ready_lock);
		snprintf(buf, len, "%s: %s", p->name, p->not_ready_why);
		pthread_mutex_unlock(&p->ready_lock);
		return true;
	}
	return false;
}

static void route_ready(struct lg_req *req, void *ud)
{
	struct lg_runtime *rt = req->rt;
	struct lg_pg *pg = atomic_load(&rt->pg);
	static const char body[] = "{\"status\":\"ready\"}";
	char why[300];

	(void)ud;
	req->answered = true;
	if (atomic_load(&rt->draining))
		lg_exchange_reply_error(req->ex, 503, "llmgate is shutting down.");
	else if (!atomic_load(&rt->ready))
		lg_exchange_reply_error(req->ex, 503,
					"The database is not reachable or not migrated yet.");
	else if (!lg_pg_healthy(pg))
		lg_exchange_reply_error(req->ex, 503, "The database is not reachable.");
	else if (plugin_not_ready(rt, why, sizeof why))
		lg_exchange_reply_error(req->ex, 503, why);
	else
		lg_exchange_reply(req->ex, 200, "application/json", body, sizeof body - 1);
}

static int add_core_routes(struct lg_runtime *rt, char *err, size_t errlen)
{
	static const struct lg_route routes[] = {
		{ sizeof(struct lg_route), "GET", "/health", LG_POLICY_PUBLIC, 0, route_health },
		{ sizeof(struct lg_route), "GET", "/ready", LG_POLICY_PUBLIC, 0, route_ready },
	};

	for (size_t i = 0; i < LG_COUNT(routes); i++)
		if (lg_router_add(rt->registry->router, &routes[i], NULL, NULL, err, errlen) < 0)
			return -1;
	return 0;
}

/* ---- workers ---- */

static void limits_from_config(struct lg_server *srv, const struct lg_core_config *c)
{
	srv->limits = (struct lg_httpd_limits){
		.max_header_bytes = c->max_header_bytes,
		.max_headers = c->max_headers,
		.max_body_bytes = c->max_body_bytes,
		.header_timeout_ms = c->header_timeout_ms,
		.body_timeout_ms = c->body_timeout_ms,
		.idle_timeout_ms = c->idle_timeout_ms,
		.write_timeout_ms = c->write_timeout_ms,
		.max_connections = c->max_connections,
		.stream_high_water = 256 * 1024,
	};
	srv->fetch_defaults = (struct lg_fetch_defaults){
		.connect_timeout_ms = 5000,
		.first_byte_timeout_ms = 120000,
		.idle_timeout_ms = 60000,
		.total_timeout_ms = 600000,
		.max_response_bytes = 64u << 20,
	};
}

int lg_server_prepare(struct lg_runtime *rt, char *err, size_t errlen)
{
	const struct lg_core_config *c = rt->cfg;
	struct lg_server *srv = calloc(1, sizeof *srv);

	if (!srv)
		goto oom;
	rt->server = srv;
	srv->rt = rt;
	srv->nworkers = c->workers;
	srv->naddrs = c->n_listen;
	limits_from_config(srv, c);
	srv->workers = calloc((size_t)srv->nworkers, sizeof *srv->workers);
	if (!srv->workers)
		goto oom;
	for (int w = 0; w < srv->nworkers; w++) {
		struct lg_worker *wk = &srv->workers[w];

		wk->srv = srv;
		wk->id = w;
		wk->fds = malloc(srv->naddrs * sizeof *wk->fds);
		wk->httpds = calloc(srv->naddrs, sizeof *wk->httpds);
		if (!wk->fds || !wk->httpds)
			goto oom;
		for (size_t a = 0; a < srv->naddrs; a++)
			wk->fds[a] = -1;
	}
	for (size_t a = 0; a < srv->naddrs; a++)
		if (open_address(srv, a, c->listen[a], err, errlen) < 0)
			return -1;
	return add_core_routes(rt, err, errlen);
oom:
	snprintf(err, errlen, "out of memory");
	return -1;
}

static void *worker_main(void *arg)
{
	struct lg_worker *wk = arg;

	if (lg_loop_run(wk->loop) < 0)
		lg_error("core", "worker %d: event loop failed", wk->id);
	return NULL;
}

static int worker_setup(struct lg_worker *wk, char *err, size_t errlen)
{
	struct lg_server *srv = wk->srv;
	char name[32];

	snprintf(name, sizeof name, "worker-%d", wk->id);
	wk->loop = lg_loop_new(name);
	if (!wk->loop)
		goto fail;
	wk->fetcher = lg_fetcher_new(lg_loop_base(wk->loop), &srv->fetch_defaults);
	if (!wk->fetcher)
		goto fail;
	lg_loop_set_fetcher(wk->loop, wk->fetcher);
	for (size_t a = 0; a < srv->naddrs; a++) {
		wk->httpds[a] = lg_httpd_new(lg_loop_base(wk->loop), wk->fds[a], &srv->limits,
					     &pipeline, wk);
		if (!wk->httpds[a])
			goto fail;
	}
	return 0;
fail:
	snprintf(err, errlen, "worker %d: cannot set up its event loop", wk->id);
	return -1;
}

int lg_server_start(struct lg_runtime *rt, char *err, size_t errlen)
{
	struct lg_server *srv = rt->server;

	for (int w = 0; w < srv->nworkers; w++) {
		struct lg_worker *wk = &srv->workers[w];

		if (worker_setup(wk, err, errlen) < 0)
			return -1;
		if (pthread_create(&wk->thread, NULL, worker_main, wk) != 0) {
			snprintf(err, errlen, "worker %d: cannot start its thread", w);
			return -1;
		}
		wk->running = true;
	}
	return 0;
}

static void close_listeners(struct lg_worker *wk)
{
	for (size_t a = 0; wk->fds && a < wk->srv->naddrs; a++) {
		if (wk->httpds && wk->httpds[a])
			lg_httpd_stop_accepting(wk->httpds[a]);
		if (wk->fds[a] >= 0) {
			close(wk->fds[a]);
			wk->fds[a] = -1;
		}
	}
}

/* Runs on the worker: its listeners belong to its loop. */
static void worker_stop_accepting(void *arg)
{
	close_listeners(arg);
}

void lg_server_stop_accepting(struct lg_runtime *rt)
{
	struct lg_server *srv = rt->server;

	for (int w = 0; srv && w < srv->nworkers; w++) {
		struct lg_worker *wk = &srv->workers[w];

		if (wk->running && lg_loop_post(wk->loop, worker_stop_accepting, wk) != 0)
			lg_error("core", "worker %d: cannot post stop-accepting", w);
	}
}

size_t lg_server_busy(struct lg_runtime *rt)
{
	struct lg_server *srv = rt->server;
	size_t busy = 0;

	for (int w = 0; srv && w < srv->nworkers; w++)
		busy += atomic_load(&srv->workers[w].busy);
	return busy;
}

void lg_server_sync(struct lg_runtime *rt)
{
	struct lg_server *srv = rt->server;

	for (int w = 0; srv && w < srv->nworkers; w++)
		if (srv->workers[w].running && lg_loop_sync(srv->workers[w].loop) != 0)
			lg_error("core", "worker %d: cannot synchronise", w);
}

/* Runs on the worker: end every exchange while the rest of the process
 * (plugins, database, pool) still works, so that their COMPLETE hooks and
 * accounting run. Outbound transfers go first: their on_done reaches
 * requests that are still alive. */
static void worker_close(void *arg)
{
	struct lg_worker *wk = arg;

	close_listeners(wk);
	if (wk->fetcher) {
		lg_loop_set_fetcher(wk->loop, NULL);
		lg_fetcher_free(wk->fetcher);
		wk->fetcher = NULL;
	}
	for (size_t a = 0; wk->httpds && a < wk->srv->naddrs; a++) {
		if (wk->httpds[a])
			lg_httpd_free(wk->httpds[a]);
		wk->httpds[a] = NULL;
	}
}

static void worker_stop(void *arg)
{
	struct lg_worker *wk = arg;

	lg_loop_stop(wk->loop);
}

void lg_server_close_exchanges(struct lg_runtime *rt)
{
	struct lg_server *srv = rt->server;

	for (int w = 0; srv && w < srv->nworkers; w++) {
		struct lg_worker *wk = &srv->workers[w];

		if (!wk->running)
			worker_close(wk);
		else if (lg_loop_post(wk->loop, worker_close, wk) != 0)
			lg_error("core", "worker %d: cannot post the close of its exchanges", w);
	}
	lg_server_sync(rt);
}

void lg_server_free(struct lg_runtime *rt)
{
	struct lg_server *srv = rt->server;

	if (!srv)
		return;
	for (int w = 0; srv->workers && w < srv->nworkers; w++) {
		struct lg_worker *wk = &srv->workers[w];

		if (wk->running) {
			if (lg_loop_post(wk->loop, worker_close, wk) == 0 &&
			    lg_loop_post(wk->loop, worker_stop, wk) == 0)
				pthread_join(wk->thread, NULL);
			else
				lg_error("core", "worker %d: cannot post shutdown", w);
		} else {
			worker_close(wk);
		}
		lg_loop_free(wk->loop);
		free(wk->fds);
		free(wk->httpds);
	}
	free(srv->workers);
	free(srv);
	rt->server = NULL;
}
