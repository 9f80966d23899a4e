/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP/1.1 layer over real loopback sockets. The test drives the
 * httpd's event base itself between client steps (one thread, so handler
 * callbacks may assert), with a 5 ms tick so that a loop turn never
 * blocks for long. Deadline bounds are generous: a 300 ms deadline must
 * close within a few seconds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "httpd.h"

#define WAIT_MS 5000

/* ---- time and the loop ---- */

static struct event_base *base;
static struct event *tick;
static struct lg_httpd *httpd;
static struct lg_httpd_limits limits;
static int listen_fd = -1;
static uint16_t port;

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void pump_once(void)
{
	assert_true(event_base_loop(base, EVLOOP_ONCE) >= 0);
}

/* Runs the loop until @cond holds or @ms pass; evaluates to @cond. */
#define WAIT_UNTIL(cond, ms) ({                                         \
	uint64_t end_ = mono_ms() + (ms);                               \
	bool ok_;                                                       \
	for (;;) {                                                      \
		if ((ok_ = (cond)))                                     \
			break;                                          \
		if (mono_ms() >= end_)                                  \
			break;                                          \
		pump_once();                                            \
	}                                                               \
	ok_;                                                            \
})

static void pump_for(int ms)
{
	uint64_t end = mono_ms() + (uint64_t)ms;

	while (mono_ms() < end)
		pump_once();
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

/* ---- the handler under test ---- */

struct hstate {
	int heads, requests, dones, closes, drains;
	int done_status;
	uint64_t done_bytes;
	bool done_gone;
	size_t head_limit;              /* what on_head returns */
	int head_reply;                 /* on_head answers with this status */
	char method[16], path[256], target[512], query[256], id[80], peer[64];
	bool has_query;
	char order[64];                 /* C: close callback, D: done */
	struct lg_exchange *held;       /* answered later by a timer */
	struct event *later;
	int later_ms;
	bool replied;
	bool gone_at_reply;
	bool close_before_reply;
	int stream_ms;
	int stream_step;
	long stream_ret[4];
	long flood_ret[4096];
	size_t flood_n;
	size_t flood_total;
	int add_rc[6];
	char seen_header[64];
	size_t header_count;
};

static struct hstate S;

static const char ERROR_MSG[] = "no \"such\" model\n\t\\ é";

static void note(char what)
{
	size_t n = strlen(S.order);

	if (n + 1 < sizeof S.order)
		S.order[n] = what;
}

static void h_close(struct lg_exchange *ex, void *arg)
{
	(void)ex;
	(void)arg;
	S.closes++;
	S.close_before_reply = !S.replied;
	note('C');
}

static void h_drain(struct lg_exchange *ex, void *arg)
{
	(void)arg;
	S.drains++;
	if (S.held == ex) {
		assert_true(lg_exchange_stream_write(ex, "END", 3) >= 0);
		S.flood_total += 3;
		lg_exchange_stream_end(ex);
		S.held = NULL;
	}
}

static size_t h_head(struct lg_exchange *ex, void *arg)
{
	(void)arg;
	S.heads++;
	if (S.head_reply) {
		lg_exchange_reply_error(ex, S.head_reply, "refused early");
		return 0;
	}
	if (strcmp(lg_exchange_path(ex), "/small") == 0)
		return 10;
	return S.head_limit;
}

static void echo(struct lg_exchange *ex)
{
	struct lg_str body = lg_exchange_body(ex);
	size_t n = strlen(S.method) + strlen(S.path) + body.len + 3;
	char *out = malloc(n);

	assert_non_null(out);
	n = (size_t)snprintf(out, n, "%s %s ", S.method, S.path);
	memcpy(out + n, body.ptr, body.len);
	lg_exchange_reply(ex, 200, "text/plain", out, n + body.len);
	free(out);
}

static void arm(struct event *ev, int ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	assert_int_equal(evtimer_add(ev, &tv), 0);
}

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lg_exchange *ex = S.held;

	(void)fd;
	(void)what;
	(void)arg;
	if (!ex)
		return;
	S.held = NULL;
	S.replied = true;
	S.gone_at_reply = lg_exchange_client_gone(ex);
	if (strcmp(S.path, "/stream") == 0) {
		/* the stream's later steps */
		char ev[32];
		int n;

		S.stream_step++;
		n = snprintf(ev, sizeof ev, "data: %d\n\n", S.stream_step);
		S.stream_ret[S.stream_step] = lg_exchange_stream_write(ex, ev, (size_t)n);
		if (S.stream_step < 3 && S.stream_ret[S.stream_step] >= 0) {
			S.held = ex;
			S.replied = false;
			arm(S.later, S.stream_ms);
		} else {
			lg_exchange_stream_end(ex);
		}
		return;
	}
	lg_exchange_reply(ex, 200, "text/plain", "late", 4);
}

static void start_stream(struct lg_exchange *ex)
{
	lg_exchange_set_callbacks(ex, h_close, NULL, NULL);
	assert_int_equal(lg_exchange_stream_start(ex, 200, "text/event-stream"), 0);
	assert_int_equal(lg_exchange_stream_start(ex, 200, NULL), -EINVAL);
	S.stream_step = 1;
	S.stream_ret[1] = lg_exchange_stream_write(ex, "data: 1\n\n", 9);
	S.held = ex;
	arm(S.later, S.stream_ms);
}

static void start_flood(struct lg_exchange *ex)
{
	static char chunk[16 * 1024];
	long r = 0;

	memset(chunk, 'x', sizeof chunk);
	lg_exchange_set_callbacks(ex, h_close, h_drain, NULL);
	assert_int_equal(lg_exchange_stream_start(ex, 200, "application/octet-stream"), 0);
	while (S.flood_n < 4096 && r <= (long)limits.stream_high_water) {
		r = lg_exchange_stream_write(ex, chunk, sizeof chunk);
		assert_true(r >= 0);
		S.flood_ret[S.flood_n++] = r;
		S.flood_total += sizeof chunk;
	}
	S.held = ex;
}

static void reply_big(struct lg_exchange *ex)
{
	size_t n = 4u << 20;
	char *body = malloc(n);

	assert_non_null(body);
	memset(body, 'b', n);
	lg_exchange_set_callbacks(ex, h_close, NULL, NULL);
	lg_exchange_reply(ex, 200, "application/octet-stream", body, n);
	free(body);
}

static void reply_with_headers(struct lg_exchange *ex)
{
	const char *name, *value, *seen = lg_exchange_header(ex, "x-TEST");

	snprintf(S.seen_header, sizeof S.seen_header, "%s", seen ? seen : "(none)");
	S.header_count = lg_exchange_header_count(ex);
	lg_exchange_header_at(ex, 0, &name, &value);
	assert_string_equal(name, "Host");
	assert_string_equal(value, "t");
	lg_exchange_header_at(ex, 99, &name, &value);
	assert_null(name);
	S.add_rc[0] = lg_exchange_add_header(ex, "X-Foo", "bar");
	S.add_rc[1] = lg_exchange_add_header(ex, "X-Bad", "a\r\nb");
	S.add_rc[2] = lg_exchange_add_header(ex, "content-length", "1");
	S.add_rc[3] = lg_exchange_add_header(ex, "Connection", "keep-alive");
	S.add_rc[4] = lg_exchange_add_header(ex, "Bad Name", "x");
	S.add_rc[5] = lg_exchange_add_header(ex, "Transfer-Encoding", "chunked");
	lg_exchange_reply(ex, 201, NULL, "ok", 2);
	assert_int_equal(lg_exchange_add_header(ex, "X-Late", "1"), -EINVAL);
}

static void h_request(struct lg_exchange *ex, void *arg)
{
	const char *q = lg_exchange_query(ex);

	(void)arg;
	S.requests++;
	snprintf(S.method, sizeof S.method, "%s", lg_exchange_method(ex));
	snprintf(S.path, sizeof S.path, "%s", lg_exchange_path(ex));
	snprintf(S.target, sizeof S.target, "%s", lg_exchange_target(ex));
	snprintf(S.query, sizeof S.query, "%s", q ? q : "");
	S.has_query = q != NULL;
	snprintf(S.id, sizeof S.id, "%s", lg_exchange_id(ex));
	snprintf(S.peer, sizeof S.peer, "%s", lg_exchange_peer(ex));
	if (strcmp(S.path, "/later") == 0) {
		lg_exchange_set_callbacks(ex, h_close, NULL, NULL);
		S.held = ex;
		S.replied = false;
		arm(S.later, S.later_ms);
	} else if (strcmp(S.path, "/stream") == 0) {
		start_stream(ex);
	} else if (strcmp(S.path, "/flood") == 0) {
		start_flood(ex);
	} else if (strcmp(S.path, "/error") == 0) {
		lg_exchange_reply_error(ex, 404, ERROR_MSG);
	} else if (strcmp(S.path, "/big") == 0) {
		reply_big(ex);
	} else if (strcmp(S.path, "/headers") == 0) {
		reply_with_headers(ex);
	} else {
		echo(ex);
	}
}

static void h_done(struct lg_exchange *ex, int status, uint64_t bytes, void *arg)
{
	(void)arg;
	S.dones++;
	S.done_status = status;
	S.done_bytes = bytes;
	S.done_gone = lg_exchange_client_gone(ex);
	if (S.held == ex)
		S.held = NULL;
	note('D');
}

static const struct lg_httpd_handlers handlers = {
	.on_head = h_head,
	.on_request = h_request,
	.on_done = h_done,
};

/* ---- server set-up ---- */

static void open_listener(int sndbuf)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof sa;

	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	assert_true(listen_fd >= 0);
	/* Accepted sockets inherit it: a small send buffer makes a client
	 * that does not read visible quickly. */
	if (sndbuf)
		assert_int_equal(setsockopt(listen_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
	assert_int_equal(bind(listen_fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(listen_fd, 128), 0);
	assert_int_equal(getsockname(listen_fd, (struct sockaddr *)&sa, &len), 0);
	port = ntohs(sa.sin_port);
}

static void start_with_sndbuf(int sndbuf)
{
	open_listener(sndbuf);
	httpd = lg_httpd_new(base, listen_fd, &limits, &handlers, NULL);
	assert_non_null(httpd);
}

static void start(void)
{
	start_with_sndbuf(0);
}

static int setup(void **state)
{
	struct timeval tv = { .tv_sec = 0, .tv_usec = 5000 };

	(void)state;
	memset(&S, 0, sizeof S);
	S.later_ms = 300;
	S.stream_ms = 20;
	limits = (struct lg_httpd_limits){
		.max_header_bytes = 4096,
		.max_headers = 20,
		.max_body_bytes = 1u << 20,
		.header_timeout_ms = 10000,
		.body_timeout_ms = 10000,
		.idle_timeout_ms = 10000,
		.write_timeout_ms = 10000,
		.max_connections = 64,
		.stream_high_water = 64 * 1024,
	};
	base = event_base_new();
	if (!base)
		return -1;
	tick = event_new(base, -1, EV_PERSIST, on_tick, NULL);
	S.later = evtimer_new(base, later_cb, NULL);
	if (!tick || !S.later || event_add(tick, &tv) != 0)
		return -1;
	return 0;
}

/* ---- clients ---- */

struct client {
	int fd;
	char *buf;
	size_t pos, len, cap;   /* unread bytes are buf[pos..len) */
	bool eof;
	bool reset;             /* it ended with a reset, not a FIN */
};

static struct client *clients[128];
static size_t nclients;

static struct client *client_open_rcvbuf(int rcvbuf)
{
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct client *cl = calloc(1, sizeof *cl);

	assert_non_null(cl);
	assert_true(nclients < 128);
	cl->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(cl->fd >= 0);
	if (rcvbuf)
		assert_int_equal(setsockopt(cl->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
	/* Completes from the listen backlog, before the server accepts. */
	assert_int_equal(connect(cl->fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(fcntl(cl->fd, F_SETFL, O_NONBLOCK), 0);
	cl->cap = 64 * 1024;
	cl->buf = malloc(cl->cap);
	assert_non_null(cl->buf);
	clients[nclients++] = cl;
	return cl;
}

static struct client *client_open(void)
{
	return client_open_rcvbuf(0);
}

static void client_close(struct client *cl)
{
	if (cl->fd >= 0)
		close(cl->fd);
	cl->fd = -1;
}

/* Closes with a reset rather than a FIN. */
static void client_reset(struct client *cl)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	assert_int_equal(setsockopt(cl->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
	client_close(cl);
}

static void client_send(struct client *cl, const char *data, size_t len)
{
	uint64_t end = mono_ms() + WAIT_MS;

	while (len) {
		ssize_t n = send(cl->fd, data, len, MSG_NOSIGNAL);

		if (n > 0) {
			data += n;
			len -= (size_t)n;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
			assert_true(mono_ms() < end);
			pump_once();
		} else {
			fail_msg("send: %s", strerror(errno));
		}
	}
}

#define SEND(cl, lit) client_send((cl), (lit), sizeof(lit) - 1)

/* Reads what is there without blocking. */
static void client_fill(struct client *cl)
{
	for (;;) {
		ssize_t n;

		if (cl->pos > 0 && cl->pos == cl->len)
			cl->pos = cl->len = 0;
		if (cl->cap - cl->len < 16 * 1024) {
			if (cl->pos > cl->cap / 2) {
				memmove(cl->buf, cl->buf + cl->pos, cl->len - cl->pos);
				cl->len -= cl->pos;
				cl->pos = 0;
			} else {
				cl->cap *= 2;
				cl->buf = realloc(cl->buf, cl->cap);
				assert_non_null(cl->buf);
			}
		}
		n = recv(cl->fd, cl->buf + cl->len, cl->cap - cl->len, MSG_DONTWAIT);
		if (n > 0) {
			cl->len += (size_t)n;
			continue;
		}
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n < 0 && errno == EINTR)
			continue;
		cl->eof = true;
		if (n < 0 && errno == ECONNRESET)
			cl->reset = true;       /* reported once, then reads say 0 */
		return;
	}
}

static size_t unread(const struct client *cl)
{
	return cl->len - cl->pos;
}

struct resp {
	int status;
	char head[8192];
	char *body;
	size_t body_len;
};

static void resp_free(struct resp *r)
{
	free(r->body);
	r->body = NULL;
}

/* The value of header @name in @head, or NULL. */
static const char *header_in(const char *head, const char *name, char *out, size_t outlen)
{
	size_t n = strlen(name);
	const char *line = strstr(head, "\r\n");

	while (line && line[2] != '\r' && line[2]) {
		const char *l = line + 2, *end = strstr(l, "\r\n");

		if (end && strncasecmp(l, name, n) == 0 && l[n] == ':') {
			const char *v = l + n + 1;
			size_t len;

			while (*v == ' ')
				v++;
			len = (size_t)(end - v);
			if (len >= outlen)
				len = outlen - 1;
			memcpy(out, v, len);
			out[len] = '\0';
			return out;
		}
		line = end;
	}
	return NULL;
}

static const char *resp_header(const struct resp *r, const char *name)
{
	static char v[1024];

	return header_in(r->head, name, v, sizeof v);
}

/* Decodes a chunked body at @p. Returns the bytes used, or 0 if incomplete. */
static size_t dechunk(const char *p, size_t len, struct resp *r)
{
	size_t at = 0, cap = 1024;

	r->body = malloc(cap);
	assert_non_null(r->body);
	r->body_len = 0;
	for (;;) {
		const char *nl = memmem(p + at, len - at, "\r\n", 2);
		unsigned long size;
		char *end;

		if (!nl)
			goto incomplete;
		size = strtoul(p + at, &end, 16);
		assert_ptr_equal(end, nl);
		at = (size_t)(nl - p) + 2;
		if (size == 0) {
			if (len - at < 2)
				goto incomplete;
			assert_memory_equal(p + at, "\r\n", 2);
			r->body[r->body_len] = '\0';
			return at + 2;
		}
		if (len - at < size + 2)
			goto incomplete;
		while (r->body_len + size + 1 > cap)
			cap *= 2;
		r->body = realloc(r->body, cap);
		assert_non_null(r->body);
		memcpy(r->body + r->body_len, p + at, size);
		r->body_len += size;
		assert_memory_equal(p + at + size, "\r\n", 2);
		at += size + 2;
	}
incomplete:
	resp_free(r);
	return 0;
}

/* Takes one whole response off @cl's buffer: 1, or 0 if incomplete. */
static int take_response(struct client *cl, struct resp *r, bool head_request)
{
	const char *p = cl->buf + cl->pos, *end = memmem(p, unread(cl), "\r\n\r\n", 4);
	size_t hlen, blen, used;
	const char *v;

	if (!end)
		return 0;
	hlen = (size_t)(end - p) + 4;
	assert_true(hlen < sizeof r->head);
	memcpy(r->head, p, hlen);
	r->head[hlen] = '\0';
	assert_memory_equal(r->head, "HTTP/1.1 ", 9);
	r->status = atoi(r->head + 9);
	r->body = NULL;
	r->body_len = 0;
	if (head_request || r->status < 200 || r->status == 204 || r->status == 304) {
		used = hlen;
		r->body = strdup("");
	} else if ((v = resp_header(r, "Transfer-Encoding"))) {
		assert_string_equal(v, "chunked");
		used = dechunk(p + hlen, unread(cl) - hlen, r);
		if (!used)
			return 0;
		used += hlen;
	} else if ((v = resp_header(r, "Content-Length"))) {
		blen = strtoul(v, NULL, 10);
		if (unread(cl) - hlen < blen)
			return 0;
		r->body = malloc(blen + 1);
		assert_non_null(r->body);
		memcpy(r->body, p + hlen, blen);
		r->body[blen] = '\0';
		r->body_len = blen;
		used = hlen + blen;
	} else {
		/* delimited by the close */
		if (!cl->eof)
			return 0;
		blen = unread(cl) - hlen;
		r->body = malloc(blen + 1);
		assert_non_null(r->body);
		memcpy(r->body, p + hlen, blen);
		r->body[blen] = '\0';
		r->body_len = blen;
		used = hlen + blen;
	}
	cl->pos += used;
	return 1;
}

static bool got_response(struct client *cl, struct resp *r, bool head_request)
{
	client_fill(cl);
	return take_response(cl, r, head_request) == 1;
}

static void read_response_ex(struct client *cl, struct resp *r, bool head_request)
{
	if (!WAIT_UNTIL(got_response(cl, r, head_request), WAIT_MS))
		fail_msg("no complete response within %d ms (%zu bytes: %.*s)", WAIT_MS,
			 unread(cl), (int)(unread(cl) > 200 ? 200 : unread(cl)), cl->buf + cl->pos);
}

static void read_response(struct client *cl, struct resp *r)
{
	read_response_ex(cl, r, false);
}

static bool is_closed(struct client *cl)
{
	client_fill(cl);
	return cl->eof;
}

static void assert_closed(struct client *cl)
{
	assert_true(WAIT_UNTIL(is_closed(cl), WAIT_MS));
}

static int teardown(void **state)
{
	(void)state;
	if (httpd)
		lg_httpd_free(httpd);
	httpd = NULL;
	for (size_t i = 0; i < nclients; i++) {
		client_close(clients[i]);
		free(clients[i]->buf);
		free(clients[i]);
	}
	nclients = 0;
	if (listen_fd >= 0)
		close(listen_fd);
	listen_fd = -1;
	event_free(S.later);
	event_free(tick);
	event_base_free(base);
	base = NULL;
	return 0;
}

static bool is_hex_id(const char *s)
{
	if (strlen(s) != 32)
		return false;
	for (; *s; s++)
		if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f')))
			return false;
	return true;
}

/* ---- tests ---- */

static void test_get(void **state)
{
	struct client *cl;
	struct resp r;
	char id[80];

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /hello/w%20rld%2Fx?x=1&y=%41 HTTP/1.1\r\nHost: t\r\nX-Test: abc\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "GET /hello/w rld/x ");
	assert_string_equal(resp_header(&r, "Content-Length"), "19");
	assert_string_equal(resp_header(&r, "Content-Type"), "text/plain");
	assert_non_null(resp_header(&r, "Date"));
	assert_null(resp_header(&r, "Connection"));
	snprintf(id, sizeof id, "%s", resp_header(&r, "x-request-id"));
	assert_true(is_hex_id(id));
	assert_string_equal(id, S.id);
	assert_string_equal(S.target, "/hello/w%20rld%2Fx?x=1&y=%41");
	assert_string_equal(S.query, "x=1&y=%41");
	assert_memory_equal(S.peer, "127.0.0.1:", 10);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.done_status, 200);
	assert_int_equal(S.done_bytes, 19);
	assert_false(S.done_gone);
	assert_int_equal(lg_httpd_connections(httpd), 1);
	assert_int_equal(lg_httpd_busy(httpd), 0);
	resp_free(&r);

	/* no query at all */
	SEND(cl, "GET /plain HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_false(S.has_query);
	resp_free(&r);
}

static void test_post_in_pieces(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "POST /echo HTTP/1.1\r\nHo");
	pump_for(20);
	SEND(cl, "st: t\r\nContent-Length: 11\r\n\r\nhel");
	pump_for(20);
	assert_int_equal(S.heads, 1);
	assert_int_equal(S.requests, 0);
	SEND(cl, "lo world");
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "POST /echo hello world");
	resp_free(&r);
}

static char *pattern(size_t n)
{
	char *p = malloc(n);

	assert_non_null(p);
	for (size_t i = 0; i < n; i++)
		p[i] = (char)('a' + i % 23);
	return p;
}

/* Bodies far larger than a socket read, at exactly the limit (inclusive). */
static void test_large_bodies(void **state)
{
	size_t n = limits.max_body_bytes, third = n / 3;
	char *body = pattern(n), head[256];
	struct client *cl;
	struct resp r;
	int hl;

	(void)state;
	start();
	cl = client_open();
	hl = snprintf(head, sizeof head,
		      "POST /big-up HTTP/1.1\r\nHost: t\r\nContent-Length: %zu\r\n\r\n", n);
	client_send(cl, head, (size_t)hl);
	client_send(cl, body, n);
	SEND(cl, "GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.body_len, 13 + n);
	assert_memory_equal(r.body, "POST /big-up ", 13);
	assert_memory_equal(r.body + 13, body, n);
	resp_free(&r);
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /next ");
	resp_free(&r);

	SEND(cl, "POST /chunks HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
	for (size_t i = 0; i < 3; i++) {
		size_t len = i < 2 ? third : n - 2 * third;

		hl = snprintf(head, sizeof head, "%zx\r\n", len);
		client_send(cl, head, (size_t)hl);
		client_send(cl, body + i * third, len);
		SEND(cl, "\r\n");
	}
	SEND(cl, "0\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.body_len, 13 + n);
	assert_memory_equal(r.body + 13, body, n);
	resp_free(&r);
	free(body);
}

/* Every byte in its own segment: the header scan resumes, never restarts. */
static void test_byte_by_byte(void **state)
{
	static const char reqs[] =
		"POST /one HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nabcde"
		"POST /two HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
		"3;x=y\r\nfgh\r\n2\r\nij\r\n0\r\nT: v\r\n\r\n";
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	for (size_t i = 0; i < sizeof reqs - 1; i++) {
		client_send(cl, reqs + i, 1);
		assert_true(event_base_loop(base, EVLOOP_NONBLOCK) >= 0);
	}
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /one abcde");
	resp_free(&r);
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /two fghij");
	resp_free(&r);
}

static void test_keep_alive(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /first HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /first ");
	resp_free(&r);
	SEND(cl, "GET /second HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /second ");
	resp_free(&r);
	assert_true(WAIT_UNTIL(S.dones == 2, WAIT_MS));
	assert_int_equal(S.requests, 2);
	assert_false(is_closed(cl));
	assert_int_equal(lg_httpd_connections(httpd), 1);
}

static void test_pipelined(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
		 "POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nxyz"
		 "\r\n"         /* a stray CRLF between requests is allowed */
		 "GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /a ");
	resp_free(&r);
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /b xyz");
	resp_free(&r);
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /c ");
	resp_free(&r);
	assert_int_equal(S.requests, 3);
}

/* While one exchange is held, far more pipelined input arrives than the
 * connection buffers: reading pauses, then everything is answered in order. */
static void test_pipelined_flood_while_busy(void **state)
{
	enum { N = 3000 };
	struct client *cl;
	struct resp r;
	char *all = malloc((size_t)N * 64), *w = all, want[64];

	(void)state;
	assert_non_null(all);
	start();
	cl = client_open();
	S.later_ms = 200;
	w += sprintf(w, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
	for (int i = 0; i < N; i++)
		w += sprintf(w, "GET /p%04d HTTP/1.1\r\nHost: t\r\n\r\n", i);
	client_send(cl, all, (size_t)(w - all));
	free(all);
	read_response(cl, &r);
	assert_string_equal(r.body, "late");
	resp_free(&r);
	for (int i = 0; i < N; i++) {
		read_response(cl, &r);
		snprintf(want, sizeof want, "GET /p%04d ", i);
		assert_string_equal(r.body, want);
		resp_free(&r);
	}
	assert_int_equal(S.requests, N + 1);
}

struct bad_case {
	const char *name;
	const char *req;
	size_t len;
	int status;
};

#define BAD(name, req, status) { name, req, sizeof(req) - 1, status }

static const char SMUGGLED[] = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

static void check_refused(const struct bad_case *bc)
{
	struct client *cl = client_open();
	struct resp r;
	int requests = S.requests;

	client_send(cl, bc->req, bc->len);
	client_send(cl, SMUGGLED, sizeof SMUGGLED - 1);
	read_response(cl, &r);
	if (r.status != bc->status)
		fail_msg("%s: status %d, want %d", bc->name, r.status, bc->status);
	if (!resp_header(&r, "Connection") || strcmp(resp_header(&r, "Connection"), "close") != 0)
		fail_msg("%s: no Connection: close", bc->name);
	assert_non_null(resp_header(&r, "x-request-id"));
	if (!WAIT_UNTIL(is_closed(cl), WAIT_MS))
		fail_msg("%s: connection still open", bc->name);
	if (unread(cl) != 0)
		fail_msg("%s: more after the refusal: %.*s", bc->name, (int)unread(cl),
			 cl->buf + cl->pos);
	if (cl->reset)
		fail_msg("%s: reset instead of a clean close", bc->name);
	if (S.requests != requests)
		fail_msg("%s: a request after the bad one was served", bc->name);
	/* those refused after on_head still get their on_done */
	assert_true(WAIT_UNTIL(S.dones == S.heads, WAIT_MS));
	resp_free(&r);
	client_close(cl);
}

static void test_framing_rejected(void **state)
{
	static char big_header[6000], many_headers[2000];
	static const struct bad_case cases[] = {
		BAD("duplicate CL, equal",
		    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
		BAD("duplicate CL, differing",
		    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 0\r\n\r\nabc", 400),
		BAD("CL +3", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc", 400),
		BAD("CL -1", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
		BAD("CL with a space inside", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1 2\r\n\r\n", 400),
		BAD("CL empty", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\n", 400),
		BAD("CL overflow",
		    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 184467440737095516160\r\n\r\n", 400),
		BAD("CL hex", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x3\r\n\r\nabc", 400),
		BAD("CL list", "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3, 3\r\n\r\nabc", 400),
		BAD("TE and CL",
		    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
		    "3\r\nabc\r\n0\r\n\r\n", 400),
		BAD("TE gzip, chunked",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
		BAD("TE chunked twice in one",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
		BAD("TE identity", "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", 400),
		BAD("TE duplicate",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"
		    "\r\n0\r\n\r\n", 400),
		BAD("TE with a blank before the colon",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc",
		    400),
		BAD("CL with a blank before the colon",
		    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length : 3\r\n\r\nabc", 400),
		BAD("TE in HTTP/1.0",
		    "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
		BAD("non-token header name", "GET / HTTP/1.1\r\nHost: t\r\nX(y: 1\r\n\r\n", 400),
		BAD("header name with @", "GET / HTTP/1.1\r\nHost: t\r\nX@y: 1\r\n\r\n", 400),
		BAD("header name with a space", "GET / HTTP/1.1\r\nHost: t\r\nX y: 1\r\n\r\n", 400),
		BAD("empty header name", "GET / HTTP/1.1\r\nHost: t\r\n: x\r\n\r\n", 400),
		BAD("header line without colon", "GET / HTTP/1.1\r\nHost: t\r\nFoo\r\n\r\n", 400),
		BAD("NUL in a header value", "GET / HTTP/1.1\r\nHost: t\r\nX: a\0b\r\n\r\n", 400),
		BAD("control in a header value", "GET / HTTP/1.1\r\nHost: t\r\nX: a\x01z\r\n\r\n", 400),
		BAD("DEL in a header value", "GET / HTTP/1.1\r\nHost: t\r\nX: a\x7fz\r\n\r\n", 400),
		BAD("bare CR in a header value", "GET / HTTP/1.1\r\nHost: t\r\nX: a\rb\r\n\r\n", 400),
		BAD("bare CR before CRLF", "GET / HTTP/1.1\r\nHost: t\r\r\n\r\n", 400),
		BAD("bare CR ending the request line", "GET / HTTP/1.1\rHost: t\r\n\r\n", 400),
		BAD("bare CR before the request", "\rGET / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("obs-fold, space", "GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n b\r\n\r\n", 400),
		BAD("obs-fold, tab", "GET / HTTP/1.1\r\nHost: t\r\nX: a\r\n\tb\r\n\r\n", 400),
		BAD("blank-led first header", "GET / HTTP/1.1\r\n Host: t\r\n\r\n", 400),
		BAD("missing Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n", 400),
		BAD("duplicate Host", "GET / HTTP/1.1\r\nHost: t\r\nhost: u\r\n\r\n", 400),
		BAD("NUL in the target", "GET /a\0b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("control in the target", "GET /a\x01z HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("non-ASCII in the target", "GET /a\xffz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("fragment in the target", "GET /a#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("absolute-form target", "GET http://t/ HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("asterisk target", "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("two spaces", "GET  / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("trailing space", "GET / HTTP/1.1 \r\nHost: t\r\n\r\n", 400),
		BAD("no version", "GET /\r\nHost: t\r\n\r\n", 400),
		BAD("lower-case version", "GET / http/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("version junk", "GET / HTTP/1.1x\r\nHost: t\r\n\r\n", 400),
		BAD("bad method", "GE(T / HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("binary junk", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),
		BAD("HTTP/2.0", "GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
		BAD("HTTP/1.2", "GET / HTTP/1.2\r\nHost: t\r\n\r\n", 505),
		BAD("HTTP/3", "GET / HTTP/3\r\nHost: t\r\n\r\n", 505),
		BAD("%00 in the path", "GET /a%00b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("bad escape", "GET /a%zzb HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("short escape", "GET /a%4 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
		BAD("bad chunk size",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
		    "zz\r\nabc\r\n0\r\n\r\n", 400),
		BAD("blank before the chunk size",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
		    " 3\r\nabc\r\n0\r\n\r\n", 400),
		BAD("chunk size overflow",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
		    "100000000000000000000\r\nabc\r\n0\r\n\r\n", 400),
		BAD("no CRLF after chunk data",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", 400),
		BAD("control in a chunk extension",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01\r\nabc\r\n0\r\n\r\n",
		    400),
		BAD("bad trailer",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
		    "bad trailer\r\n\r\n", 400),
		BAD("body over the limit",
		    "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413),
		BAD("chunk over the limit",
		    "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n", 413),
		BAD("over the route's limit",
		    "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\nhello world", 413),
		BAD("chunks over the route's limit",
		    "POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
		    "6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n", 413),
	};
	struct bad_case sized[2];
	char *w;

	(void)state;
	start();
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		check_refused(&cases[i]);

	w = big_header + sprintf(big_header, "GET / HTTP/1.1\r\nHost: t\r\nX-Big: ");
	memset(w, 'a', 5000);
	w += 5000;
	w += sprintf(w, "\r\n\r\n");
	sized[0] = (struct bad_case){ "header section too large", big_header,
				      (size_t)(w - big_header), 431 };
	w = many_headers + sprintf(many_headers, "GET / HTTP/1.1\r\nHost: t\r\n");
	for (int i = 0; i < 25; i++)
		w += sprintf(w, "X-H%d: v\r\n", i);
	w += sprintf(w, "\r\n");
	sized[1] = (struct bad_case){ "too many headers", many_headers,
				      (size_t)(w - many_headers), 431 };
	check_refused(&sized[0]);
	check_refused(&sized[1]);
	assert_int_equal(S.requests, 0);
	assert_true(WAIT_UNTIL(lg_httpd_connections(httpd) == 0, WAIT_MS));
}

/* What must still pass: the limits are inclusive, LF alone ends lines. */
static void test_framing_accepted(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /lf HTTP/1.1\nHost: t\nX-A:\tv \t\n\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	resp_free(&r);
	SEND(cl, "\r\n\r\nPOST /small HTTP/1.1\r\nHost: t\r\nContent-Length:  10 \r\n\r\n0123456789");
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /small 0123456789");
	resp_free(&r);
	SEND(cl, "POST /c HTTP/1.1\r\nHost: t\r\ntransfer-encoding: CHUNKED\r\n\r\n"
		 "3\nabc\n0\n\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /c abc");
	resp_free(&r);
	SEND(cl, "POST /zero HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /zero ");
	resp_free(&r);
	SEND(cl, "GET /host HTTP/1.1\r\nHost:\r\n\r\n");       /* empty Host is allowed */
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	resp_free(&r);
	assert_false(is_closed(cl));
}

static void test_413_before_body(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	/* Only the headers: the answer must not wait for the body. */
	SEND(cl, "POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
		 "Content-Length: 1000000000\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 413);
	assert_string_equal(resp_header(&r, "Connection"), "close");
	resp_free(&r);
	assert_closed(cl);
	assert_int_equal(unread(cl), 0);
	assert_int_equal(S.heads, 1);
	assert_int_equal(S.requests, 0);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.done_status, 413);

	/* A client that sends its body anyway still reads the answer and a
	 * clean end: the server drains before closing instead of resetting. */
	{
		static char part[64 * 1024];

		memset(part, 'z', sizeof part);
		cl = client_open();
		SEND(cl, "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n");
		client_send(cl, part, sizeof part);
		read_response(cl, &r);
		assert_int_equal(r.status, 413);
		resp_free(&r);
		assert_closed(cl);
		assert_false(cl->reset);
	}

	/* on_head's own limit, and the body at exactly the limit */
	cl = client_open();
	SEND(cl, "POST /small HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 413);
	resp_free(&r);
	assert_closed(cl);
}

static void test_header_deadline(void **state)
{
	static const char req[] = "GET /drip HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
	struct client *cl, *silent;
	struct resp r;
	uint64_t t0;
	json_t *j;
	size_t i = 0;

	(void)state;
	limits.header_timeout_ms = 300;
	start();
	silent = client_open();
	cl = client_open();
	t0 = mono_ms();
	/* One byte every 50 ms: each is progress, none extends the deadline. */
	while (!is_closed(cl) && mono_ms() - t0 < 4000) {
		if (i < sizeof req - 1)
			client_send(cl, req + i++, 1);
		pump_for(50);
	}
	assert_true(cl->eof);
	assert_true(mono_ms() - t0 < 4000);
	assert_true(i < sizeof req - 1);         /* cut off before it finished */
	assert_int_equal(take_response(cl, &r, false), 1);
	assert_int_equal(r.status, 408);
	j = json_loads(r.body, 0, NULL);
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "error"), "code")), 408);
	json_decref(j);
	resp_free(&r);
	assert_int_equal(S.heads, 0);

	/* A connection that never sent a byte is closed without a word. */
	assert_closed(silent);
	assert_int_equal(unread(silent), 0);
	assert_true(WAIT_UNTIL(lg_httpd_connections(httpd) == 0, WAIT_MS));
}

static void test_body_deadline(void **state)
{
	struct client *cl;
	struct resp r;
	uint64_t t0;

	(void)state;
	limits.body_timeout_ms = 300;
	start();
	cl = client_open();
	t0 = mono_ms();
	SEND(cl, "POST /slow HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc");
	read_response(cl, &r);
	assert_int_equal(r.status, 408);
	assert_true(mono_ms() - t0 >= 250);
	resp_free(&r);
	assert_closed(cl);
	assert_int_equal(S.requests, 0);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.done_status, 408);
}

static void test_idle_deadline(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	limits.idle_timeout_ms = 300;
	start();
	cl = client_open();
	SEND(cl, "GET /once HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	resp_free(&r);
	assert_closed(cl);
	assert_int_equal(unread(cl), 0);
	assert_true(WAIT_UNTIL(lg_httpd_connections(httpd) == 0, WAIT_MS));
}

static void test_chunked_body(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
		 "5;ext=1;q=\"a b\"\r\nhello\r\n6 ; e\r\n world\r\nA\r\n0123456789\r\n"
		 "0\r\nX-Trailer: yes\r\nX-Other: no\r\n\r\n"
		 "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "POST /c hello world0123456789");
	resp_free(&r);
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /after ");
	resp_free(&r);
}

static void test_expect_continue(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 100);
	resp_free(&r);
	assert_int_equal(S.requests, 0);
	SEND(cl, "hello");
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(r.body, "POST /e hello");
	resp_free(&r);

	/* refused in on_head: no 100, and the body is never read */
	S.head_reply = 401;
	SEND(cl, "POST /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 401);
	assert_string_equal(resp_header(&r, "Connection"), "close");
	resp_free(&r);
	assert_closed(cl);
	assert_int_equal(S.requests, 1);
}

static void test_on_head_answers(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	S.head_reply = 404;
	cl = client_open();
	SEND(cl, "GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 404);
	assert_null(resp_header(&r, "Connection"));     /* no body: stays open */
	resp_free(&r);
	S.head_reply = 0;
	SEND(cl, "GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /next ");
	resp_free(&r);
	assert_int_equal(S.requests, 1);
	assert_true(WAIT_UNTIL(S.dones == 2, WAIT_MS));
}

static void test_stream(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 200);
	assert_string_equal(resp_header(&r, "Transfer-Encoding"), "chunked");
	assert_string_equal(resp_header(&r, "Content-Type"), "text/event-stream");
	assert_null(resp_header(&r, "Content-Length"));
	assert_string_equal(r.body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
	resp_free(&r);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.done_bytes, 27);
	for (int i = 1; i <= 3; i++)
		assert_true(S.stream_ret[i] >= 0);
	/* the connection is still good */
	SEND(cl, "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /after ");
	resp_free(&r);

	/* HTTP/1.0 has no chunks: the body ends with the connection */
	cl = client_open();
	SEND(cl, "GET /stream HTTP/1.0\r\n\r\n");
	read_response(cl, &r);
	assert_null(resp_header(&r, "Transfer-Encoding"));
	assert_string_equal(resp_header(&r, "Connection"), "close");
	assert_string_equal(r.body, "data: 1\n\ndata: 2\n\ndata: 3\n\n");
	resp_free(&r);

	/* HEAD: headers only, and the connection stays usable */
	cl = client_open();
	SEND(cl, "HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response_ex(cl, &r, true);
	assert_int_equal(r.status, 200);
	resp_free(&r);
	assert_true(WAIT_UNTIL(S.dones == 3, WAIT_MS));
	SEND(cl, "GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /x ");
	resp_free(&r);
}

static void test_stream_client_gone(void **state)
{
	struct client *cl;

	(void)state;
	S.stream_ms = 1000;
	start();
	cl = client_open();
	SEND(cl, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n");
	assert_true(WAIT_UNTIL((client_fill(cl), memmem(cl->buf, cl->len, "data: 1", 7) != NULL),
			       WAIT_MS));
	client_close(cl);
	assert_true(WAIT_UNTIL(S.closes == 1, WAIT_MS));
	assert_int_equal(S.stream_step, 1);             /* noticed before the next event */
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.stream_step, 2);
	assert_int_equal(S.stream_ret[2], -1);
	assert_int_equal(S.done_status, 200);
	assert_int_equal(S.done_bytes, 9);
	assert_true(S.done_gone);
	assert_int_equal(S.closes, 1);
	assert_string_equal(S.order, "CD");
}

static void test_backpressure(void **state)
{
	struct client *cl;
	struct resp r;
	size_t n;

	(void)state;
	start_with_sndbuf(4096);
	cl = client_open_rcvbuf(4096);
	SEND(cl, "GET /flood HTTP/1.1\r\nHost: t\r\n\r\n");
	assert_true(WAIT_UNTIL(S.requests == 1, WAIT_MS));
	n = S.flood_n;
	assert_true(n >= 3);
	assert_true(S.flood_ret[n - 1] > (long)limits.stream_high_water);
	for (size_t i = 1; i < n; i++)
		assert_true(S.flood_ret[i] > S.flood_ret[i - 1]);
	/* nobody reads: no drain */
	pump_for(100);
	assert_int_equal(S.drains, 0);
	/* the client catches up: drain fires, the handler ends the stream */
	read_response(cl, &r);
	assert_int_equal(S.drains, 1);
	assert_int_equal(r.body_len, S.flood_total);
	assert_memory_equal(r.body + r.body_len - 3, "END", 3);
	for (size_t i = 0; i + 3 < r.body_len; i++)
		if (r.body[i] != 'x')
			fail_msg("byte %zu is %d", i, r.body[i]);
	resp_free(&r);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.done_bytes, S.flood_total);
	assert_int_equal(S.closes, 0);
}

static void test_client_gone_before_reply(void **state)
{
	struct client *cl;

	(void)state;
	S.later_ms = 1000;
	start();
	cl = client_open();
	SEND(cl, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
	assert_true(WAIT_UNTIL(S.requests == 1, WAIT_MS));
	client_close(cl);
	assert_true(WAIT_UNTIL(S.closes == 1, WAIT_MS));
	assert_true(S.close_before_reply);
	assert_int_equal(S.dones, 0);                   /* the handler still holds it */
	assert_int_equal(lg_httpd_busy(httpd), 1);
	assert_int_equal(lg_httpd_connections(httpd), 0);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_true(S.replied);
	assert_true(S.gone_at_reply);
	assert_int_equal(S.done_status, 0);
	assert_int_equal(S.done_bytes, 0);
	assert_true(S.done_gone);
	assert_string_equal(S.order, "CD");
	assert_int_equal(lg_httpd_busy(httpd), 0);

	/* the same with a reset */
	memset(S.order, 0, sizeof S.order);
	cl = client_open();
	SEND(cl, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
	assert_true(WAIT_UNTIL(S.requests == 2, WAIT_MS));
	client_reset(cl);
	assert_true(WAIT_UNTIL(S.closes == 2, WAIT_MS));
	assert_true(S.close_before_reply);
	assert_true(WAIT_UNTIL(S.dones == 2, WAIT_MS));
	assert_string_equal(S.order, "CD");
}

/* Leaving while the body is still coming: on_done, never on_request. */
static void test_client_gone_during_body(void **state)
{
	struct client *cl;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc");
	assert_true(WAIT_UNTIL(S.heads == 1, WAIT_MS));
	client_close(cl);
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_int_equal(S.requests, 0);
	assert_int_equal(S.done_status, 0);
	assert_true(S.done_gone);
	assert_int_equal(lg_httpd_busy(httpd), 0);
}

static void test_write_deadline(void **state)
{
	struct client *cl;

	(void)state;
	limits.write_timeout_ms = 300;
	start_with_sndbuf(4096);
	cl = client_open_rcvbuf(4096);
	SEND(cl, "GET /big HTTP/1.1\r\nHost: t\r\n\r\n");
	/* never read: no progress, so the reply is abandoned */
	assert_true(WAIT_UNTIL(S.dones == 1, WAIT_MS));
	assert_true(S.done_gone);
	assert_int_equal(S.closes, 1);
	assert_int_equal(S.done_status, 200);
	assert_int_equal(lg_httpd_connections(httpd), 0);
}

static void test_request_id(void **state)
{
	static const char long_id[] =
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";  /* 65 */
	struct client *cl;
	struct resp r;
	char first[80];

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /id HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123_X.y\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(resp_header(&r, "x-request-id"), "abc-123_X.y");
	assert_string_equal(S.id, "abc-123_X.y");
	resp_free(&r);

	SEND(cl, "GET /id HTTP/1.1\r\nHost: t\r\nx-request-id: bad id!\r\n\r\n");
	read_response(cl, &r);
	snprintf(first, sizeof first, "%s", resp_header(&r, "x-request-id"));
	assert_true(is_hex_id(first));
	resp_free(&r);

	client_send(cl, "GET /id HTTP/1.1\r\nHost: t\r\nX-Request-Id: ", 41);
	client_send(cl, long_id, sizeof long_id - 1);
	SEND(cl, "\r\n\r\n");
	read_response(cl, &r);
	assert_true(is_hex_id(resp_header(&r, "x-request-id")));
	assert_string_not_equal(resp_header(&r, "x-request-id"), first);
	resp_free(&r);

	/* 64 characters is still the client's */
	client_send(cl, "GET /id HTTP/1.1\r\nHost: t\r\nX-Request-Id: ", 41);
	client_send(cl, long_id, 64);
	SEND(cl, "\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(strlen(resp_header(&r, "x-request-id")), 64);
	resp_free(&r);
}

static void test_reply_error_shape(void **state)
{
	struct client *cl;
	struct resp r;
	json_t *j, *err;
	json_error_t jerr;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /error HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 404);
	assert_string_equal(resp_header(&r, "Content-Type"), "application/json");
	j = json_loads(r.body, JSON_REJECT_DUPLICATES, &jerr);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "detail")), ERROR_MSG);
	err = json_object_get(j, "error");
	assert_string_equal(json_string_value(json_object_get(err, "message")), ERROR_MSG);
	assert_string_equal(json_string_value(json_object_get(err, "type")), "not_found_error");
	assert_int_equal(json_integer_value(json_object_get(err, "code")), 404);
	json_decref(j);
	resp_free(&r);
}

static void check_error_body(int status, const char *msg, const char *want_type,
			     const char *want_msg)
{
	char *body = lg_error_body(status, msg);
	json_t *j, *err;

	assert_non_null(body);
	j = json_loads(body, 0, NULL);
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "detail")), want_msg);
	err = json_object_get(j, "error");
	assert_string_equal(json_string_value(json_object_get(err, "message")), want_msg);
	assert_string_equal(json_string_value(json_object_get(err, "type")), want_type);
	assert_int_equal(json_integer_value(json_object_get(err, "code")), status);
	json_decref(j);
	free(body);
}

static void test_error_body(void **state)
{
	(void)state;
	check_error_body(400, "m", "invalid_request_error", "m");
	check_error_body(401, "m", "authentication_error", "m");
	check_error_body(403, "m", "permission_error", "m");
	check_error_body(404, "m", "not_found_error", "m");
	check_error_body(408, "m", "timeout_error", "m");
	check_error_body(413, "m", "request_too_large", "m");
	check_error_body(422, "m", "invalid_request_error", "m");
	check_error_body(429, "m", "rate_limit_error", "m");
	check_error_body(431, "m", "request_too_large", "m");
	check_error_body(500, "m", "server_error", "m");
	check_error_body(502, "m", "server_error", "m");
	check_error_body(503, "m", "service_unavailable", "m");
	check_error_body(429, NULL, "rate_limit_error", "Too Many Requests");
	check_error_body(400, "\xff\xfe not UTF-8", "invalid_request_error", "Bad Request");
	check_error_body(400, "<\"\\\n\x01>", "invalid_request_error", "<\"\\\n\x01>");
}

static void test_headers_and_head(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /headers HTTP/1.1\r\nHost: t\r\nX-Test:  spaced value \t\r\n\r\n");
	read_response(cl, &r);
	assert_int_equal(r.status, 201);
	assert_string_equal(resp_header(&r, "X-Foo"), "bar");
	assert_null(resp_header(&r, "X-Bad"));
	assert_null(resp_header(&r, "Content-Type"));
	assert_string_equal(r.body, "ok");
	resp_free(&r);
	assert_string_equal(S.seen_header, "spaced value");
	assert_int_equal(S.header_count, 2);
	assert_int_equal(S.add_rc[0], 0);
	for (int i = 1; i < 6; i++)
		assert_int_equal(S.add_rc[i], -EINVAL);

	/* extra headers do not leak into the next reply */
	SEND(cl, "HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response_ex(cl, &r, true);
	assert_int_equal(r.status, 200);
	assert_string_equal(resp_header(&r, "Content-Length"), "8");   /* "HEAD /h " */
	assert_null(resp_header(&r, "X-Foo"));
	resp_free(&r);
	SEND(cl, "GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /after ");
	resp_free(&r);
	assert_int_equal(unread(cl), 0);
}

static void test_http10_and_close(void **state)
{
	struct client *cl;
	struct resp r;

	(void)state;
	start();
	cl = client_open();
	SEND(cl, "GET /a HTTP/1.0\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /a ");
	assert_string_equal(resp_header(&r, "Connection"), "close");
	resp_free(&r);
	assert_closed(cl);

	cl = client_open();
	SEND(cl, "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(resp_header(&r, "Connection"), "keep-alive");
	resp_free(&r);
	SEND(cl, "GET /b HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(r.body, "GET /b ");
	resp_free(&r);
	assert_false(is_closed(cl));

	cl = client_open();
	SEND(cl, "GET /c HTTP/1.1\r\nHost: t\r\nConnection: foo, close\r\n\r\n"
		 "GET /never HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(cl, &r);
	assert_string_equal(resp_header(&r, "Connection"), "close");
	resp_free(&r);
	assert_closed(cl);
	assert_int_equal(unread(cl), 0);
	assert_string_equal(S.path, "/c");
}

static void test_stop_accepting(void **state)
{
	struct client *idle, *busy, *late;
	struct resp r;

	(void)state;
	start();
	idle = client_open();
	SEND(idle, "GET /warm HTTP/1.1\r\nHost: t\r\n\r\n");
	read_response(idle, &r);
	resp_free(&r);
	busy = client_open();
	SEND(busy, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
	assert_true(WAIT_UNTIL(S.requests == 2, WAIT_MS));
	assert_int_equal(lg_httpd_connections(httpd), 2);

	lg_httpd_stop_accepting(httpd);
	assert_int_equal(lg_httpd_connections(httpd), 1);      /* the idle one, at once */
	assert_closed(idle);
	assert_int_equal(unread(idle), 0);

	late = client_open();                   /* queued by the kernel, never served */
	SEND(late, "GET /late HTTP/1.1\r\nHost: t\r\n\r\n");

	read_response(busy, &r);
	assert_string_equal(r.body, "late");
	assert_string_equal(resp_header(&r, "Connection"), "close");
	resp_free(&r);
	assert_closed(busy);
	assert_true(WAIT_UNTIL(lg_httpd_connections(httpd) == 0, WAIT_MS));
	pump_for(100);
	client_fill(late);
	assert_int_equal(unread(late), 0);
	assert_int_equal(S.requests, 2);
	assert_int_equal(lg_httpd_connections(httpd), 0);
}

static void test_max_connections(void **state)
{
	struct client *a, *b, *c;
	struct resp r;

	(void)state;
	limits.max_connections = 2;
	start();
	a = client_open();
	b = client_open();
	c = client_open();
	SEND(c, "GET /third HTTP/1.1\r\nHost: t\r\n\r\n");
	pump_for(100);
	assert_int_equal(lg_httpd_connections(httpd), 2);
	client_fill(c);
	assert_int_equal(unread(c), 0);
	assert_int_equal(S.requests, 0);
	client_close(a);
	read_response(c, &r);
	assert_string_equal(r.body, "GET /third ");
	resp_free(&r);
	assert_int_equal(lg_httpd_connections(httpd), 2);
	(void)b;
}

static void test_free_with_open_exchange(void **state)
{
	struct client *cl;

	(void)state;
	S.later_ms = 10000;
	start();
	cl = client_open();
	SEND(cl, "GET /later HTTP/1.1\r\nHost: t\r\n\r\n");
	assert_true(WAIT_UNTIL(S.requests == 1, WAIT_MS));
	lg_httpd_free(httpd);
	httpd = NULL;
	assert_string_equal(S.order, "CD");
	assert_int_equal(S.done_status, 0);
	assert_null(S.held);
	assert_closed(cl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
		T(test_get),
		T(test_post_in_pieces),
		T(test_large_bodies),
		T(test_byte_by_byte),
		T(test_keep_alive),
		T(test_pipelined),
		T(test_pipelined_flood_while_busy),
		T(test_framing_rejected),
		T(test_framing_accepted),
		T(test_413_before_body),
		T(test_header_deadline),
		T(test_body_deadline),
		T(test_idle_deadline),
		T(test_chunked_body),
		T(test_expect_continue),
		T(test_on_head_answers),
		T(test_stream),
		T(test_stream_client_gone),
		T(test_backpressure),
		T(test_client_gone_before_reply),
		T(test_client_gone_during_body),
		T(test_write_deadline),
		T(test_request_id),
		T(test_reply_error_shape),
		cmocka_unit_test(test_error_body),
		T(test_headers_and_head),
		T(test_http10_and_close),
		T(test_stop_accepting),
		T(test_max_connections),
		T(test_free_with_open_exchange),
#undef T
	};

	/* A client that left makes writes fail with EPIPE, not a signal. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
