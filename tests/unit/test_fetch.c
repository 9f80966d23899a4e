/* SPDX-License-Identifier: Apache-2.0 */
/* The outbound HTTP client against a real peer on 127.0.0.1: a small
 * HTTP/1.1 server on its own thread and event base (bufferevents, so it
 * can also misbehave: stall, trickle, reset, cut), plus raw sockets for a
 * closed port and a listener whose backlog is full. The fetcher runs on
 * the test's own event base, dispatched until the transfers end. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "fetch.h"

#define BIG_LEN (1024 * 1024)
#define BIG_CL_LEN 100000
#define RESET_CL_LEN 100000
#define RESET_SENT 1000
#define STALL_SENT 100

static char pattern_byte(size_t i)
{
	return (char)('a' + i % 23);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ==== the peer ==== */

enum route {
	R_NONE, R_HELLO, R_ECHO, R_STATUS500, R_CTYPE, R_INTERIM, R_CHUNKED, R_BIG, R_BIG_CL,
	R_NEVER, R_STALL_BODY, R_TRICKLE, R_RESET, R_CUT, R_REDIRECT, R_TRAP, R_NOT_FOUND,
};

static const struct {
	const char *path;
	enum route route;
} routes[] = {
	{ "/hello", R_HELLO }, { "/echo", R_ECHO }, { "/status500", R_STATUS500 },
	{ "/ctype", R_CTYPE }, { "/interim", R_INTERIM }, { "/chunked", R_CHUNKED },
	{ "/big", R_BIG }, { "/big-cl", R_BIG_CL }, { "/never", R_NEVER },
	{ "/stall-body", R_STALL_BODY }, { "/trickle", R_TRICKLE }, { "/reset", R_RESET },
	{ "/cut", R_CUT }, { "/redirect", R_REDIRECT }, { "/trap", R_TRAP },
};

struct peer_conn {
	LIST_ENTRY(peer_conn) link;
	struct bufferevent *bev;
	struct event *tick;     /* paced replies */
	enum route route;       /* a reply in progress, R_NONE between requests */
	int step;
	bool close_after_write;
};

static struct peer {
	pthread_t thread;
	struct event_base *base;
	struct evconnlistener *lis;
	int port;
	atomic_int conns;       /* TCP connections accepted */
	atomic_int requests;    /* requests read */
	atomic_int trap_hits;   /* requests for the redirect target */
	atomic_int reset_go;    /* the client has the first bytes: reset now */
	LIST_HEAD(, peer_conn) list;
} peer;

static void peer_conn_free(struct peer_conn *c)
{
	LIST_REMOVE(c, link);
	if (c->tick)
		event_free(c->tick);
	bufferevent_free(c->bev);
	free(c);
}

static void out_printf(struct peer_conn *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void out_printf(struct peer_conn *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (evbuffer_add_vprintf(bufferevent_get_output(c->bev), fmt, ap) < 0)
		abort();
	va_end(ap);
}

static void out_add(struct peer_conn *c, const void *data, size_t len)
{
	if (evbuffer_add(bufferevent_get_output(c->bev), data, len) != 0)
		abort();
}

static void out_pattern(struct peer_conn *c, size_t from, size_t len)
{
	char *p = malloc(len);

	if (!p)
		abort();
	for (size_t i = 0; i < len; i++)
		p[i] = pattern_byte(from + i);
	out_add(c, p, len);
	free(p);
}

static void reply_simple(struct peer_conn *c, const char *status, const char *headers,
			 const char *body)
{
	out_printf(c, "HTTP/1.1 %s\r\nContent-Length: %zu\r\n%s\r\n%s", status, strlen(body),
		   headers, body);
}

static void chunk(struct peer_conn *c, const void *data, size_t len)
{
	out_printf(c, "%zx\r\n", len);
	out_add(c, data, len);
	out_add(c, "\r\n", 2);
}

static const char chunked_head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
				   "Transfer-Encoding: chunked\r\n\r\n";

static void start_ticks(struct peer_conn *c, void (*fn)(evutil_socket_t, short, void *), int ms)
{
	struct timeval tv = { 0, ms * 1000 };

	c->tick = event_new(peer.base, -1, EV_PERSIST, fn, c);
	if (!c->tick || event_add(c->tick, &tv) != 0)
		abort();
}

static void stop_ticks(struct peer_conn *c)
{
	event_free(c->tick);
	c->tick = NULL;
	c->route = R_NONE;
}

static void tick_chunked(evutil_socket_t fd, short what, void *arg)
{
	struct peer_conn *c = arg;
	char piece[32];

	if (c->step < 10) {
		int n = snprintf(piece, sizeof piece, "piece-%d\n", c->step++);

		chunk(c, piece, (size_t)n);
		return;
	}
	out_printf(c, "0\r\n\r\n");
	stop_ticks(c);
}

static void tick_trickle(evutil_socket_t fd, short what, void *arg)
{
	chunk(arg, "tick\n", 5);
}

static void tick_reset(evutil_socket_t fd, short what, void *arg)
{
	struct peer_conn *c = arg;
	struct linger lg = { 1, 0 };

	if (!atomic_load(&peer.reset_go))
		return;
	/* SO_LINGER {1, 0}: close() sends a RST. */
	if (setsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_LINGER, &lg, sizeof lg) != 0)
		abort();
	peer_conn_free(c);
}

static void reply_big(struct peer_conn *c)
{
	out_printf(c, "%s", chunked_head);
	for (size_t off = 0; off < BIG_LEN; off += 65536) {
		out_printf(c, "%x\r\n", 65536);
		out_pattern(c, off, 65536);
		out_add(c, "\r\n", 2);
	}
	out_printf(c, "0\r\n\r\n");
}

static enum route find_route(const char *head)
{
	const char *sp = strchr(head, ' ');
	size_t n;

	if (!sp)
		return R_NOT_FOUND;
	sp++;
	n = strcspn(sp, " ?");
	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
		if (strlen(routes[i].path) == n && strncmp(sp, routes[i].path, n) == 0)
			return routes[i].route;
	return R_NOT_FOUND;
}

/* Answers one request. @req holds all of it (head and body). */
static void respond(struct peer_conn *c, const char *head, struct evbuffer *req)
{
	enum route r = find_route(head);

	switch (r) {
	case R_HELLO:
		reply_simple(c, "200 OK", "Content-Type: text/plain\r\n", "hello world");
		break;
	case R_ECHO:
		out_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n"
			   "Content-Type: application/octet-stream\r\n\r\n",
			   evbuffer_get_length(req));
		if (evbuffer_add_buffer(bufferevent_get_output(c->bev), req) != 0)
			abort();
		break;
	case R_STATUS500:
		reply_simple(c, "500 Internal Server Error", "Content-Type: text/plain\r\n",
			     "upstream exploded");
		break;
	case R_CTYPE:
		reply_simple(c, "200 OK", "cOnTeNt-TyPe:   application/json; charset=utf-8  \r\n",
			     "{}");
		break;
	case R_INTERIM:
		out_printf(c, "HTTP/1.1 100 Continue\r\n\r\n");
		reply_simple(c, "200 OK", "Content-Type: text/plain\r\n", "after interim");
		break;
	case R_CHUNKED:
		c->route = r;
		c->step = 0;
		out_printf(c, "%s", chunked_head);
		start_ticks(c, tick_chunked, 10);
		break;
	case R_BIG:
		reply_big(c);
		break;
	case R_BIG_CL:
		out_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG_CL_LEN);
		out_pattern(c, 0, BIG_CL_LEN);
		break;
	case R_NEVER:
		c->route = r;
		break;
	case R_STALL_BODY:
		c->route = r;
		out_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
		out_pattern(c, 0, STALL_SENT);
		break;
	case R_TRICKLE:
		c->route = r;
		out_printf(c, "%s", chunked_head);
		start_ticks(c, tick_trickle, 50);
		break;
	case R_RESET:
		c->route = r;
		out_printf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", RESET_CL_LEN);
		out_pattern(c, 0, RESET_SENT);
		start_ticks(c, tick_reset, 10);
		break;
	case R_CUT:
		c->route = r;
		out_printf(c, "%s", chunked_head);
		chunk(c, "partial\n", 8);
		c->close_after_write = true;
		break;
	case R_REDIRECT: {
		char loc[96];

		snprintf(loc, sizeof loc, "Location: http://127.0.0.1:%d/trap\r\n", peer.port);
		reply_simple(c, "302 Found", loc, "moved");
		break;
	}
	case R_TRAP:
		atomic_fetch_add(&peer.trap_hits, 1);
		reply_simple(c, "200 OK", "", "trapped");
		break;
	default:
		reply_simple(c, "404 Not Found", "", "no such path");
		break;
	}
}

static size_t content_length(const char *head)
{
	for (const char *p = strchr(head, '\n'); p; p = strchr(p + 1, '\n'))
		if (strncasecmp(p + 1, "content-length:", 15) == 0)
			return strtoul(p + 16, NULL, 10);
	return 0;
}

static void peer_read(struct bufferevent *bev, void *arg)
{
	struct peer_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	/* Requests one after another on a kept-alive connection. */
	while (c->route == R_NONE) {
		struct evbuffer_ptr end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
		struct evbuffer *req;
		size_t head_len, total;
		char *head;

		if (end.pos < 0)
			return;
		head_len = (size_t)end.pos + 4;
		head = malloc(head_len + 1);
		if (!head || evbuffer_copyout(in, head, head_len) != (ev_ssize_t)head_len)
			abort();
		head[head_len] = '\0';
		total = head_len + content_length(head);
		if (evbuffer_get_length(in) < total) {
			free(head);
			return;
		}
		req = evbuffer_new();
		if (!req || evbuffer_remove_buffer(in, req, total) != (int)total)
			abort();
		atomic_fetch_add(&peer.requests, 1);
		respond(c, head, req);
		evbuffer_free(req);
		free(head);
	}
}

static void peer_write(struct bufferevent *bev, void *arg)
{
	struct peer_conn *c = arg;

	if (c->close_after_write)
		peer_conn_free(c);
}

static void peer_event(struct bufferevent *bev, short what, void *arg)
{
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		peer_conn_free(arg);
}

static void peer_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
			int salen, void *arg)
{
	struct peer_conn *c = calloc(1, sizeof *c);

	if (!c)
		abort();
	atomic_fetch_add(&peer.conns, 1);
	c->bev = bufferevent_socket_new(peer.base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		abort();
	LIST_INSERT_HEAD(&peer.list, c, link);
	bufferevent_setcb(c->bev, peer_read, peer_write, peer_event, c);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) != 0)
		abort();
}

static void *peer_main(void *arg)
{
	event_base_loop(peer.base, EVLOOP_NO_EXIT_ON_EMPTY);
	return NULL;
}

static int peer_start(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof sin;

	LIST_INIT(&peer.list);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	peer.base = event_base_new();
	if (!peer.base)
		return -1;
	peer.lis = evconnlistener_new_bind(peer.base, peer_accept, NULL,
					   LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 1024,
					   (struct sockaddr *)&sin, sizeof sin);
	if (!peer.lis)
		return -1;
	if (getsockname(evconnlistener_get_fd(peer.lis), (struct sockaddr *)&sin, &len) != 0)
		return -1;
	peer.port = ntohs(sin.sin_port);
	return pthread_create(&peer.thread, NULL, peer_main, NULL) == 0 ? 0 : -1;
}

static void peer_stop(void)
{
	struct peer_conn *c;

	event_base_loopbreak(peer.base);
	pthread_join(peer.thread, NULL);
	while ((c = LIST_FIRST(&peer.list)))
		peer_conn_free(c);
	evconnlistener_free(peer.lis);
	event_base_free(peer.base);
}

/* ==== the client side ==== */

struct tctx {
	struct event_base *base;
	struct lg_fetcher *f;
	int remaining;          /* transfers still to end before the loop stops */
	struct event *watchdog;
	bool watchdog_fired;
};

struct xfer {
	struct tctx *t;
	struct lg_fetch *fe;
	/* what happened */
	int head_calls, data_calls, done_calls;
	int head_status;
	char ctype[256];
	int data_before_head;
	int data_while_paused;
	enum lg_fetch_result result;
	int status;
	bool error_null;
	char error[512];
	char *body;
	size_t body_len;
	uint64_t t_start, t_done;
	/* how to behave */
	int head_ret, data_ret;
	bool cancel_in_data, pause_each_piece, pause_in_head, reset_on_data;
	uint32_t resume_after_ms;
	bool paused_now;
	struct event *resume_ev;
	void (*after_done)(struct xfer *x);
	void (*after_first_data)(struct xfer *x);
	void *ud;
};

static void append(struct xfer *x, const char *data, size_t len)
{
	char *n = realloc(x->body, x->body_len + len + 1);

	assert_non_null(n);
	x->body = n;
	memcpy(x->body + x->body_len, data, len);
	x->body_len += len;
	x->body[x->body_len] = '\0';
}

static void on_resume_timer(evutil_socket_t fd, short what, void *arg)
{
	struct xfer *x = arg;

	if (x->done_calls)
		return;
	x->paused_now = false;
	lg_fetch_pause(x->fe, false);
}

static void resume_later(struct xfer *x)
{
	struct timeval tv = { 0, (suseconds_t)x->resume_after_ms * 1000 };

	if (!x->resume_ev) {
		x->resume_ev = evtimer_new(x->t->base, on_resume_timer, x);
		assert_non_null(x->resume_ev);
	}
	assert_int_equal(evtimer_add(x->resume_ev, &tv), 0);
}

static int cb_head(void *arg, int status, const char *content_type)
{
	struct xfer *x = arg;

	x->head_calls++;
	x->head_status = status;
	snprintf(x->ctype, sizeof x->ctype, "%s", content_type ? content_type : "(null)");
	if (x->pause_in_head) {
		lg_fetch_pause(x->fe, true);
		x->paused_now = true;
		resume_later(x);
	}
	return x->head_ret;
}

static int cb_data(void *arg, const char *data, size_t len)
{
	struct xfer *x = arg;

	if (!x->head_calls)
		x->data_before_head++;
	if (x->paused_now)
		x->data_while_paused++;
	x->data_calls++;
	append(x, data, len);
	if (x->data_calls == 1 && x->after_first_data)
		x->after_first_data(x);
	if (x->reset_on_data)
		atomic_store(&peer.reset_go, 1);
	if (x->cancel_in_data) {
		lg_fetch_cancel(x->fe);
		lg_fetch_cancel(x->fe); /* twice is harmless */
	}
	if (x->pause_each_piece) {
		x->paused_now = true;
		resume_later(x);
		return 1;
	}
	return x->data_ret;
}

static void cb_done(void *arg, enum lg_fetch_result result, int status, struct lg_str body,
		    const char *error)
{
	struct xfer *x = arg;

	x->done_calls++;
	x->t_done = now_ms();
	x->result = result;
	x->status = status;
	x->error_null = error == NULL;
	snprintf(x->error, sizeof x->error, "%s", error ? error : "");
	if (body.len)
		append(x, body.ptr, body.len);
	if (x->after_done)
		x->after_done(x);
	if (--x->t->remaining == 0)
		event_base_loopbreak(x->t->base);
}

static const struct lg_fetch_handlers buffered = {
	.size = sizeof(struct lg_fetch_handlers),
	.on_head = cb_head,
	.on_done = cb_done,
};

static const struct lg_fetch_handlers streamed = {
	.size = sizeof(struct lg_fetch_handlers),
	.on_head = cb_head,
	.on_data = cb_data,
	.on_done = cb_done,
};

static void url_for(char *buf, size_t n, const char *path)
{
	snprintf(buf, n, "http://127.0.0.1:%d%s", peer.port, path);
}

static struct lg_fetch_request request(const char *method, const char *url)
{
	struct lg_fetch_request rq = {
		.size = sizeof rq,
		.method = method,
		.url = url,
	};

	return rq;
}

/* Starts @rq (the URL is @path on the peer unless it is absolute). */
static struct lg_fetch *start_rq(struct tctx *t, struct xfer *x, struct lg_fetch_request rq,
				 const char *path, const struct lg_fetch_handlers *h)
{
	char url[256];

	if (strncmp(path, "/", 1) == 0) {
		url_for(url, sizeof url, path);
		rq.url = url;
	} else {
		rq.url = path;
	}
	x->t = t;
	x->t_start = now_ms();
	x->fe = lg_fetch_start(t->f, &rq, h, x);
	if (x->fe)
		t->remaining++;
	return x->fe;
}

static struct lg_fetch *start_get(struct tctx *t, struct xfer *x, const char *path,
				  const struct lg_fetch_handlers *h)
{
	return start_rq(t, x, request("GET", NULL), path, h);
}

static void on_watchdog(evutil_socket_t fd, short what, void *arg)
{
	struct tctx *t = arg;

	t->watchdog_fired = true;
	event_base_loopbreak(t->base);
}

/* Runs the loop until every started transfer has ended (20 s at most). */
static void run(struct tctx *t)
{
	struct timeval tv = { 20, 0 };

	t->watchdog_fired = false;
	assert_int_equal(evtimer_add(t->watchdog, &tv), 0);
	if (t->remaining > 0)
		assert_true(event_base_loop(t->base, 0) >= 0);
	assert_int_equal(event_del(t->watchdog), 0);
	assert_false(t->watchdog_fired);
	assert_int_equal(t->remaining, 0);
}

static void xfer_clean(struct xfer *x)
{
	free(x->body);
	x->body = NULL;
	if (x->resume_ev)
		event_free(x->resume_ev);
	x->resume_ev = NULL;
}

static void assert_done_once(const struct xfer *x, enum lg_fetch_result result)
{
	assert_int_equal(x->done_calls, 1);
	if (x->result != result)
		fail_msg("result %d (error \"%s\"), expected %d", x->result, x->error, result);
	if (result == LG_FETCH_OK)
		assert_true(x->error_null);
	else
		assert_true(x->error[0] != '\0');
}

static int setup(void **state)
{
	struct tctx *t = calloc(1, sizeof *t);
	struct event_config *cfg = event_config_new();

	if (!t || !cfg)
		return -1;
	/* As the workers' loops are made. */
	if (event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) != 0)
		return -1;
	t->base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	if (!t->base)
		return -1;
	t->watchdog = evtimer_new(t->base, on_watchdog, t);
	t->f = lg_fetcher_new(t->base, NULL);
	if (!t->watchdog || !t->f)
		return -1;
	atomic_store(&peer.reset_go, 0);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct tctx *t = *state;

	lg_fetcher_free(t->f);
	event_free(t->watchdog);
	event_base_free(t->base);
	free(t);
	return 0;
}

/* ==== tests ==== */

static void test_get_buffered(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { 0 };

	assert_non_null(start_get(t, &x, "/hello", &buffered));
	assert_int_equal(lg_fetcher_active(t->f), 1);
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	assert_int_equal(x.status, 200);
	assert_int_equal(x.head_calls, 1);
	assert_int_equal(x.head_status, 200);
	assert_string_equal(x.ctype, "text/plain");
	assert_int_equal(x.body_len, 11);
	assert_string_equal(x.body, "hello world");
	assert_int_equal(lg_fetcher_active(t->f), 0);
	xfer_clean(&x);
}

static void assert_pattern(const char *body, size_t len, size_t want)
{
	assert_int_equal(len, want);
	for (size_t i = 0; i < len; i++)
		if (body[i] != pattern_byte(i))
			fail_msg("byte %zu is wrong", i);
}

static char *echo_of(struct tctx *t, struct lg_fetch_request rq, struct xfer *x)
{
	assert_non_null(start_rq(t, x, rq, "/echo", &buffered));
	run(t);
	assert_done_once(x, LG_FETCH_OK);
	assert_int_equal(x->status, 200);
	return x->body;
}

/* The peer echoes the whole request it read. The caller's request is
 * scribbled over and freed right after the start: it is only borrowed. */
static void test_post_exact(void **state)
{
	struct tctx *t = *state;
	static const char body[] = "{\"a\":1}\0tail\r\n";
	size_t body_len = sizeof body - 1;
	char *b = malloc(body_len), *h1 = strdup("X-Test: one two"), *echo;
	const char **hdrs = calloc(3, sizeof *hdrs);
	struct lg_fetch_request rq = request("POST", NULL);
	struct xfer x = { 0 };
	char url[128];

	assert_non_null(b);
	assert_non_null(hdrs);
	memcpy(b, body, body_len);
	hdrs[0] = h1;
	hdrs[1] = "Content-Type: application/json";
	rq.headers = hdrs;
	rq.body = (struct lg_str){ b, body_len };
	url_for(url, sizeof url, "/echo");
	rq.url = strdup(url);
	rq.method = strdup("POST");
	x.t = t;
	x.fe = lg_fetch_start(t->f, &rq, &buffered, &x);
	assert_non_null(x.fe);
	t->remaining++;
	memset(b, 'Z', body_len);
	memset(h1, 'Z', strlen(h1));
	free(b);
	free(h1);
	free(hdrs);
	free((char *)rq.url);
	free((char *)rq.method);
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	echo = x.body;
	assert_non_null(strstr(echo, "POST /echo HTTP/1.1\r\n"));
	assert_non_null(strstr(echo, "\r\nX-Test: one two\r\n"));
	assert_non_null(strstr(echo, "\r\nContent-Type: application/json\r\n"));
	assert_non_null(strstr(echo, "\r\nContent-Length: 14\r\n"));
	assert_null(strcasestr(echo, "\r\nExpect:"));
	assert_null(strcasestr(echo, "\r\nAccept-Encoding:"));
	assert_true(x.body_len > body_len);
	assert_memory_equal(echo + x.body_len - body_len, body, body_len);
	assert_memory_equal(echo + x.body_len - body_len - 4, "\r\n\r\n", 4);
	xfer_clean(&x);
}

/* curl would ask for 100-continue above 1 MiB; llmgate never waits for it. */
static void test_post_large(void **state)
{
	struct tctx *t = *state;
	size_t len = 2 * 1024 * 1024;
	char *b = malloc(len), *echo;
	struct lg_fetch_request rq = request("POST", NULL);
	struct xfer x = { 0 };

	assert_non_null(b);
	for (size_t i = 0; i < len; i++)
		b[i] = pattern_byte(i);
	rq.body = (struct lg_str){ b, len };
	echo = echo_of(t, rq, &x);
	free(b);
	assert_null(strcasestr(echo, "\r\nExpect:"));
	assert_non_null(strstr(echo, "\r\nContent-Length: 2097152\r\n"));
	assert_true(x.body_len > len);
	assert_pattern(echo + x.body_len - len, len, len);
	xfer_clean(&x);
}

/* Other methods, caller framing headers dropped, no invented form
 * Content-Type. */
static void test_methods(void **state)
{
	static const char *const framing[] = {
		"Content-Length: 3", "transfer-encoding: chunked", "Expect: 100-continue",
		"X-Kept: yes", NULL,
	};
	struct tctx *t = *state;
	struct lg_fetch_request rq = request("PUT", NULL);
	struct xfer x1 = { 0 }, x2 = { 0 }, x3 = { 0 }, x4 = { 0 };
	char *echo;

	/* The framing is computed from the body, whatever the caller says. */
	rq.headers = framing;
	rq.body = (struct lg_str){ "put-body", 8 };
	echo = echo_of(t, rq, &x1);
	assert_true(strncmp(echo, "PUT /echo HTTP/1.1\r\n", 20) == 0);
	assert_null(strcasestr(echo, "\r\nContent-Type:"));
	assert_true(x1.body_len > 8 && memcmp(echo + x1.body_len - 8, "put-body", 8) == 0);
	assert_non_null(strstr(echo, "\r\nContent-Length: 8\r\n"));
	assert_null(strcasestr(echo, "\r\nContent-Length: 3"));
	assert_null(strcasestr(echo, "\r\nTransfer-Encoding:"));
	assert_null(strcasestr(echo, "\r\nExpect:"));
	assert_non_null(strstr(echo, "\r\nX-Kept: yes\r\n"));

	echo = echo_of(t, request("DELETE", NULL), &x2);
	assert_true(strncmp(echo, "DELETE /echo HTTP/1.1\r\n", 23) == 0);
	assert_null(strcasestr(echo, "\r\nContent-Length:"));

	echo = echo_of(t, request("POST", NULL), &x3);
	assert_true(strncmp(echo, "POST /echo HTTP/1.1\r\n", 21) == 0);
	assert_non_null(strcasestr(echo, "\r\nContent-Length: 0\r\n"));
	assert_null(strcasestr(echo, "\r\nContent-Type:"));

	assert_non_null(start_rq(t, &x4, request("HEAD", NULL), "/hello", &buffered));
	run(t);
	assert_done_once(&x4, LG_FETCH_OK);
	assert_int_equal(x4.status, 200);
	assert_int_equal(x4.body_len, 0);
	xfer_clean(&x1);
	xfer_clean(&x2);
	xfer_clean(&x3);
	xfer_clean(&x4);
}

static void test_status_500(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { 0 };

	assert_non_null(start_get(t, &x, "/status500", &buffered));
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	assert_int_equal(x.status, 500);
	assert_int_equal(x.head_status, 500);
	assert_string_equal(x.body, "upstream exploded");
	xfer_clean(&x);
}

/* The header name matches in any case; a 1xx block is not the head. */
static void test_head_parsing(void **state)
{
	struct tctx *t = *state;
	struct xfer x1 = { 0 }, x2 = { 0 };

	assert_non_null(start_get(t, &x1, "/ctype", &buffered));
	assert_non_null(start_get(t, &x2, "/interim", &buffered));
	run(t);
	assert_done_once(&x1, LG_FETCH_OK);
	assert_int_equal(x1.head_calls, 1);
	assert_string_equal(x1.ctype, "application/json; charset=utf-8");
	assert_done_once(&x2, LG_FETCH_OK);
	assert_int_equal(x2.head_calls, 1);
	assert_int_equal(x2.head_status, 200);
	assert_int_equal(x2.status, 200);
	assert_string_equal(x2.body, "after interim");
	xfer_clean(&x1);
	xfer_clean(&x2);
}

static const char chunked_all[] = "piece-0\npiece-1\npiece-2\npiece-3\npiece-4\n"
				  "piece-5\npiece-6\npiece-7\npiece-8\npiece-9\n";

static void test_streaming_chunked(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { 0 };

	assert_non_null(start_get(t, &x, "/chunked", &streamed));
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	assert_int_equal(x.head_calls, 1);
	assert_string_equal(x.ctype, "text/event-stream");
	assert_int_equal(x.data_before_head, 0);
	assert_true(x.data_calls >= 1);
	assert_string_equal(x.body, chunked_all);
	xfer_clean(&x);
}

/* Every piece pauses the transfer; a timer resumes it. Nothing arrives
 * while paused, nothing is lost or repeated. */
static void test_pause_each_piece(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { .pause_each_piece = true, .resume_after_ms = 2 };
	struct xfer small = { .pause_each_piece = true, .resume_after_ms = 20 };

	assert_non_null(start_get(t, &x, "/big", &streamed));
	/* The whole reply arrives in one read: the end is seen while paused. */
	assert_non_null(start_get(t, &small, "/hello", &streamed));
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	assert_true(x.data_calls > 1);
	assert_int_equal(x.data_while_paused, 0);
	assert_pattern(x.body, x.body_len, BIG_LEN);
	assert_done_once(&small, LG_FETCH_OK);
	assert_int_equal(small.data_while_paused, 0);
	assert_string_equal(small.body, "hello world");
	xfer_clean(&x);
	xfer_clean(&small);
}

/* Paused from on_head for longer than the idle deadline: no data until
 * resumed, and a paused transfer is not idle. */
static void test_pause_from_head(void **state)
{
	struct tctx *t = *state;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer x = { .pause_in_head = true, .resume_after_ms = 600 };

	rq.idle_timeout_ms = 200;
	assert_non_null(start_rq(t, &x, rq, "/chunked", &streamed));
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	assert_int_equal(x.data_while_paused, 0);
	assert_string_equal(x.body, chunked_all);
	assert_true(x.t_done - x.t_start >= 550);
	xfer_clean(&x);
}

static void test_cancel_from_on_data(void **state)
{
	struct tctx *t = *state;
	struct xfer by_return = { .data_ret = -1 }, by_call = { .cancel_in_data = true };
	struct xfer by_head = { .head_ret = -1 };

	assert_non_null(start_get(t, &by_return, "/trickle", &streamed));
	assert_non_null(start_get(t, &by_call, "/trickle", &streamed));
	assert_non_null(start_get(t, &by_head, "/chunked", &streamed));
	run(t);
	assert_done_once(&by_return, LG_FETCH_ECANCELED);
	assert_int_equal(by_return.data_calls, 1);
	assert_done_once(&by_call, LG_FETCH_ECANCELED);
	assert_int_equal(by_call.data_calls, 1);
	assert_done_once(&by_head, LG_FETCH_ECANCELED);
	assert_int_equal(by_head.head_calls, 1);
	assert_int_equal(by_head.data_calls, 0);
	assert_int_equal(by_head.status, 200);
	xfer_clean(&by_return);
	xfer_clean(&by_call);
	xfer_clean(&by_head);
}

static void on_cancel_timer(evutil_socket_t fd, short what, void *arg)
{
	struct xfer *x = arg;

	lg_fetch_cancel(x->fe);
	/* on_done comes later, from the loop, never from inside cancel. */
	assert_int_equal(x->done_calls, 0);
}

static void test_cancel_from_timer(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { 0 };
	struct timeval tv = { 0, 50000 };
	struct event *ev;

	assert_non_null(start_get(t, &x, "/never", &buffered));
	ev = evtimer_new(t->base, on_cancel_timer, &x);
	assert_non_null(ev);
	assert_int_equal(evtimer_add(ev, &tv), 0);
	run(t);
	assert_done_once(&x, LG_FETCH_ECANCELED);
	assert_int_equal(x.status, 0);
	assert_int_equal(x.head_calls, 0);
	event_free(ev);
	xfer_clean(&x);
}

static int closed_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof sin;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

static void test_connect_refused(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { 0 };
	char url[64];

	snprintf(url, sizeof url, "http://127.0.0.1:%d/", closed_port());
	assert_non_null(start_get(t, &x, url, &buffered));
	run(t);
	assert_done_once(&x, LG_FETCH_ECONNECT);
	assert_int_equal(x.status, 0);
	assert_int_equal(x.head_calls, 0);
	xfer_clean(&x);
}

/* A listener with backlog 0 and one connection queued drops new SYNs. */
static void test_connect_timeout(void **state)
{
	struct tctx *t = *state;
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof sin;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer x = { 0 };
	int lfd = socket(AF_INET, SOCK_STREAM, 0), filler = socket(AF_INET, SOCK_STREAM, 0);
	char url[64];
	uint64_t took;

	assert_true(lfd >= 0 && filler >= 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sin, sizeof sin), 0);
	assert_int_equal(listen(lfd, 0), 0);
	assert_int_equal(getsockname(lfd, (struct sockaddr *)&sin, &len), 0);
	assert_int_equal(connect(filler, (struct sockaddr *)&sin, sizeof sin), 0);
	snprintf(url, sizeof url, "http://127.0.0.1:%d/", ntohs(sin.sin_port));
	rq.connect_timeout_ms = 300;
	rq.first_byte_timeout_ms = 5000;
	assert_non_null(start_rq(t, &x, rq, url, &buffered));
	run(t);
	assert_done_once(&x, LG_FETCH_ETIMEOUT);
	assert_non_null(strstr(x.error, "connect timeout after 300 ms"));
	took = x.t_done - x.t_start;
	assert_true(took >= 250 && took < 5000);
	close(filler);
	close(lfd);
	xfer_clean(&x);
}

static void test_first_byte_timeout(void **state)
{
	struct tctx *t = *state;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer x = { 0 };
	uint64_t took;

	rq.first_byte_timeout_ms = 300;
	assert_non_null(start_rq(t, &x, rq, "/never", &buffered));
	run(t);
	assert_done_once(&x, LG_FETCH_ETIMEOUT);
	assert_string_equal(x.error, "first byte timeout after 300 ms");
	assert_int_equal(x.head_calls, 0);
	took = x.t_done - x.t_start;
	assert_true(took >= 290 && took < 5000);
	xfer_clean(&x);
}

static void test_idle_timeout(void **state)
{
	struct tctx *t = *state;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer x = { 0 };
	uint64_t took;

	rq.idle_timeout_ms = 300;
	assert_non_null(start_rq(t, &x, rq, "/stall-body", &streamed));
	run(t);
	assert_done_once(&x, LG_FETCH_ETIMEOUT);
	assert_string_equal(x.error, "idle timeout after 300 ms");
	assert_int_equal(x.head_calls, 1);
	assert_int_equal(x.status, 200);
	assert_pattern(x.body, x.body_len, STALL_SENT);
	took = x.t_done - x.t_start;
	assert_true(took >= 290 && took < 5000);
	xfer_clean(&x);
}

/* Data every 50 ms keeps a 600 ms idle deadline away; the total one ends it. */
static void test_total_timeout(void **state)
{
	struct tctx *t = *state;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer x = { 0 }, silent = { 0 };
	uint64_t took;

	rq.idle_timeout_ms = 600;
	rq.total_timeout_ms = 1500;
	assert_non_null(start_rq(t, &x, rq, "/trickle", &streamed));
	/* Connected, no byte yet: still the total deadline, not the connect one. */
	rq.idle_timeout_ms = 0;
	rq.total_timeout_ms = 500;
	assert_non_null(start_rq(t, &silent, rq, "/never", &streamed));
	run(t);
	assert_done_once(&x, LG_FETCH_ETIMEOUT);
	assert_string_equal(x.error, "total timeout after 1500 ms");
	assert_true(x.data_calls > 1);
	took = x.t_done - x.t_start;
	assert_true(took >= 1450 && took < 6000);
	assert_done_once(&silent, LG_FETCH_ETIMEOUT);
	assert_string_equal(silent.error, "total timeout after 500 ms");
	took = silent.t_done - silent.t_start;
	assert_true(took >= 450 && took < 5000);
	xfer_clean(&x);
	xfer_clean(&silent);
}

static void test_reset_mid_body(void **state)
{
	struct tctx *t = *state;
	struct xfer rst = { .reset_on_data = true }, cut = { 0 };

	assert_non_null(start_get(t, &rst, "/reset", &streamed));
	assert_non_null(start_get(t, &cut, "/cut", &streamed));
	run(t);
	assert_done_once(&rst, LG_FETCH_ERESET);
	assert_int_equal(rst.status, 200);
	assert_true(rst.body_len > 0 && rst.body_len <= RESET_SENT);
	assert_done_once(&cut, LG_FETCH_ERESET);
	assert_string_equal(cut.body, "partial\n");
	xfer_clean(&rst);
	xfer_clean(&cut);
}

static void test_too_large(void **state)
{
	struct tctx *t = *state;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer chunked = { 0 }, announced = { 0 }, stream = { 0 };

	rq.max_response_bytes = 1000;
	assert_non_null(start_rq(t, &chunked, rq, "/big", &buffered));
	assert_non_null(start_rq(t, &announced, rq, "/big-cl", &buffered));
	assert_non_null(start_rq(t, &stream, rq, "/big", &streamed));
	run(t);
	assert_done_once(&chunked, LG_FETCH_ETOOLARGE);
	assert_int_equal(chunked.body_len, 0);
	assert_non_null(strstr(chunked.error, "1000"));
	assert_done_once(&announced, LG_FETCH_ETOOLARGE);
	assert_int_equal(announced.body_len, 0);
	assert_done_once(&stream, LG_FETCH_ETOOLARGE);
	assert_true(stream.body_len <= 1000);
	xfer_clean(&chunked);
	xfer_clean(&announced);
	xfer_clean(&stream);
}

/* The fetcher's default cap bounds buffered replies, not streams. */
static void test_default_max(void **state)
{
	struct tctx *t = *state;
	struct lg_fetch_defaults d = { .max_response_bytes = 500000 };
	struct xfer over = { 0 }, under = { 0 }, stream = { 0 };

	lg_fetcher_free(t->f);
	t->f = lg_fetcher_new(t->base, &d);
	assert_non_null(t->f);
	assert_non_null(start_get(t, &over, "/big", &buffered));
	assert_non_null(start_get(t, &under, "/big-cl", &buffered));
	assert_non_null(start_get(t, &stream, "/big", &streamed));
	run(t);
	assert_done_once(&over, LG_FETCH_ETOOLARGE);
	assert_done_once(&under, LG_FETCH_OK);
	assert_pattern(under.body, under.body_len, BIG_CL_LEN);
	assert_done_once(&stream, LG_FETCH_OK);
	assert_pattern(stream.body, stream.body_len, BIG_LEN);
	xfer_clean(&over);
	xfer_clean(&under);
	xfer_clean(&stream);
}

static void test_redirect_not_followed(void **state)
{
	struct tctx *t = *state;
	struct xfer x = { 0 };
	int requests = atomic_load(&peer.requests), traps = atomic_load(&peer.trap_hits);

	assert_non_null(start_get(t, &x, "/redirect", &buffered));
	run(t);
	assert_done_once(&x, LG_FETCH_OK);
	assert_int_equal(x.status, 302);
	assert_string_equal(x.body, "moved");
	assert_int_equal(atomic_load(&peer.requests) - requests, 1);
	assert_int_equal(atomic_load(&peer.trap_hits), traps);
	xfer_clean(&x);
}

#define MANY 200

static void test_many_concurrent(void **state)
{
	struct tctx *t = *state;
	struct xfer *xs = calloc(MANY, sizeof *xs);

	assert_non_null(xs);
	for (int i = 0; i < MANY; i++)
		assert_non_null(start_get(t, &xs[i], i % 2 ? "/hello" : "/chunked",
					  i % 2 ? &buffered : &streamed));
	assert_int_equal(lg_fetcher_active(t->f), MANY);
	run(t);
	for (int i = 0; i < MANY; i++) {
		assert_done_once(&xs[i], LG_FETCH_OK);
		assert_string_equal(xs[i].body, i % 2 ? "hello world" : chunked_all);
		xfer_clean(&xs[i]);
	}
	assert_int_equal(lg_fetcher_active(t->f), 0);
	free(xs);
}

#define CHAIN 5

/* Each on_done starts the next request: one kept-alive connection. */
static void chain_next(struct xfer *x)
{
	struct xfer *next = x + 1;
	int *left = x->ud;

	if (--*left == 0)
		return;
	next->after_done = chain_next;
	next->ud = left;
	assert_non_null(start_get(x->t, next, "/hello", &buffered));
}

static void test_connection_reuse(void **state)
{
	struct tctx *t = *state;
	struct xfer xs[CHAIN] = { 0 };
	int left = CHAIN, conns = atomic_load(&peer.conns);
	int requests = atomic_load(&peer.requests);

	xs[0].after_done = chain_next;
	xs[0].ud = &left;
	assert_non_null(start_get(t, &xs[0], "/hello", &buffered));
	run(t);
	for (int i = 0; i < CHAIN; i++) {
		assert_done_once(&xs[i], LG_FETCH_OK);
		assert_string_equal(xs[i].body, "hello world");
		xfer_clean(&xs[i]);
	}
	assert_int_equal(atomic_load(&peer.requests) - requests, CHAIN);
	assert_int_equal(atomic_load(&peer.conns) - conns, 1);
}

static void try_restart(struct xfer *x)
{
	struct xfer *again = x->ud;

	/* The fetcher is closing: no new transfer. */
	assert_null(start_get(x->t, again, "/hello", &buffered));
}

struct wait_requests {
	struct event_base *base;
	int target;
};

static void on_poll_requests(evutil_socket_t fd, short what, void *arg)
{
	struct wait_requests *w = arg;

	if (atomic_load(&peer.requests) >= w->target)
		event_base_loopbreak(w->base);
}

static void test_free_in_flight(void **state)
{
	struct tctx *t = *state;
	struct xfer xs[3] = { 0 }, again = { 0 };
	struct wait_requests w = { t->base, atomic_load(&peer.requests) + 3 };
	struct timeval tv = { 0, 10000 };
	struct event *poll = event_new(t->base, -1, EV_PERSIST, on_poll_requests, &w);

	assert_non_null(poll);
	for (int i = 0; i < 3; i++) {
		xs[i].after_done = try_restart;
		xs[i].ud = &again;
		assert_non_null(start_get(t, &xs[i], "/never", &buffered));
	}
	/* Until the peer holds all three requests. */
	assert_int_equal(event_add(poll, &tv), 0);
	tv.tv_sec = 20;
	assert_int_equal(evtimer_add(t->watchdog, &tv), 0);
	assert_true(event_base_loop(t->base, 0) >= 0);
	assert_false(t->watchdog_fired);
	event_free(poll);
	assert_int_equal(lg_fetcher_active(t->f), 3);
	for (int i = 0; i < 3; i++)
		assert_int_equal(xs[i].done_calls, 0);
	lg_fetcher_free(t->f);
	t->f = NULL;
	for (int i = 0; i < 3; i++) {
		assert_done_once(&xs[i], LG_FETCH_ECANCELED);
		xfer_clean(&xs[i]);
	}
	assert_null(again.fe);
	assert_int_equal(t->remaining, 0);
}

struct reentry {
	struct xfer a, b, c, d, e;
};

/* A's on_done cancels B and starts C. */
static void a_done(struct xfer *x)
{
	struct reentry *r = x->ud;

	lg_fetch_cancel(r->b.fe);
	assert_non_null(start_get(x->t, &r->c, "/hello", &buffered));
}

/* D's first piece starts E from inside a curl callback. */
static void d_first_data(struct xfer *x)
{
	struct reentry *r = x->ud;

	assert_non_null(start_get(x->t, &r->e, "/hello", &buffered));
}

static void test_reentrancy(void **state)
{
	struct tctx *t = *state;
	struct reentry r = { 0 };

	r.a.after_done = a_done;
	r.a.ud = &r;
	r.d.after_first_data = d_first_data;
	r.d.ud = &r;
	assert_non_null(start_get(t, &r.b, "/never", &buffered));
	assert_non_null(start_get(t, &r.a, "/hello", &buffered));
	assert_non_null(start_get(t, &r.d, "/chunked", &streamed));
	run(t);
	assert_done_once(&r.a, LG_FETCH_OK);
	assert_done_once(&r.b, LG_FETCH_ECANCELED);
	assert_done_once(&r.c, LG_FETCH_OK);
	assert_string_equal(r.c.body, "hello world");
	assert_done_once(&r.d, LG_FETCH_OK);
	assert_string_equal(r.d.body, chunked_all);
	assert_done_once(&r.e, LG_FETCH_OK);
	assert_string_equal(r.e.body, "hello world");
	xfer_clean(&r.a);
	xfer_clean(&r.b);
	xfer_clean(&r.c);
	xfer_clean(&r.d);
	xfer_clean(&r.e);
}

/* Refused at the start (NULL, no on_done), or by curl's protocol list. */
static void test_bad_requests(void **state)
{
	struct tctx *t = *state;
	static const char *const crlf[] = { "X-Evil: a\r\nHost: evil", NULL };
	static const char *const nocolon[] = { "X-Evil", NULL };
	struct lg_fetch_handlers no_done = buffered;
	struct lg_fetch_request rq = request("GET", NULL);
	struct xfer x = { 0 }, ftp = { 0 }, file = { 0 };

	rq.headers = crlf;
	assert_null(start_rq(t, &x, rq, "/hello", &buffered));
	rq.headers = nocolon;
	assert_null(start_rq(t, &x, rq, "/hello", &buffered));
	assert_null(start_rq(t, &x, request("GE T", NULL), "/hello", &buffered));
	assert_null(start_rq(t, &x, request("GET\r\nX:", NULL), "/hello", &buffered));
	rq = request("GET", NULL);
	rq.size = 4;
	assert_null(start_rq(t, &x, rq, "/hello", &buffered));
	no_done.on_done = NULL;
	assert_null(start_rq(t, &x, request("GET", NULL), "/hello", &no_done));
	rq = request("GET", NULL);
	assert_null(lg_fetch_start(t->f, &rq, &buffered, &x)); /* no URL */
	assert_int_equal(lg_fetcher_active(t->f), 0);
	assert_int_equal(t->remaining, 0);

	assert_non_null(start_get(t, &ftp, "ftp://127.0.0.1/", &buffered));
	assert_non_null(start_get(t, &file, "file:///etc/passwd", &buffered));
	run(t);
	assert_done_once(&ftp, LG_FETCH_EOTHER);
	assert_done_once(&file, LG_FETCH_EOTHER);
	assert_int_equal(file.body_len, 0);
	assert_int_equal(x.done_calls, 0);
	xfer_clean(&ftp);
	xfer_clean(&file);
}

static int group_setup(void **state)
{
	return peer_start();
}

static int group_teardown(void **state)
{
	peer_stop();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_get_buffered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_post_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(test_post_large, setup, teardown),
		cmocka_unit_test_setup_teardown(test_methods, setup, teardown),
		cmocka_unit_test_setup_teardown(test_status_500, setup, teardown),
		cmocka_unit_test_setup_teardown(test_head_parsing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_streaming_chunked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pause_each_piece, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pause_from_head, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_from_on_data, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_from_timer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_first_byte_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_total_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset_mid_body, setup, teardown),
		cmocka_unit_test_setup_teardown(test_too_large, setup, teardown),
		cmocka_unit_test_setup_teardown(test_default_max, setup, teardown),
		cmocka_unit_test_setup_teardown(test_redirect_not_followed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_concurrent, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connection_reuse, setup, teardown),
		cmocka_unit_test_setup_teardown(test_free_in_flight, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reentrancy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_requests, setup, teardown),
	};
	int rc;

	/* A peer that writes to a closed socket must not kill the test. */
	signal(SIGPIPE, SIG_IGN);
	/* The peer's loop is stopped from this thread. */
	if (evthread_use_pthreads() != 0 || lg_fetch_global_init() != 0)
		return 1;
	/* LG_TEST_FILTER=test_total* runs some tests only. */
	if (getenv("LG_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LG_TEST_FILTER"));
	rc = cmocka_run_group_tests(tests, group_setup, group_teardown);
	lg_fetch_global_cleanup();
	return rc;
}
