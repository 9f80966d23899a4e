/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP/1.1 server (core/httpd.h) end to end, in process, in the way of
 * h2o's fuzz driver: per input a fresh event base, a loopback listener
 * served by lg_httpd, and one client connection that sends the input split
 * into several writes at markers, then shuts down its sending side. The
 * loop runs in non-blocking turns until the server has closed the
 * connection or a bounded number of turns has passed, reading and keeping
 * the replies; then everything is freed.
 *
 * Markers (each also ends a write):
 *   "\n--MARK--\n"   the loop turns a few times before the next write;
 *   "\n--WAIT--\n"   the same, after a pause longer than the short
 *                    deadlines (the first few of them, after SHORT only);
 *   "\n--SHUT--\n"   the client shuts down its sending side now, even
 *                    with answers pending (what follows is not sent);
 *   "\n--RESET--\n"  the client resets the connection (same);
 *   "\n--SHORT--\n"  at the very start: deadlines of a few milliseconds
 *                    instead of 30 s, so WAIT makes them pass.
 * The client's receive buffer and the server's send buffer are small, so a
 * large stream fills the httpd's output queue and reaches its pause and
 * drain.
 *
 * The handler answers by path prefix, so that inputs reach every way of
 * answering: /early (404 from on_head, body unread), /small (a 16-byte
 * body limit), /stream/now (a whole stream at once), /stream/big and
 * /stream (streams over later turns, of 32 KiB or small events, the big
 * one waiting for the drain callback), /late (a reply some turns later),
 * /hdr (a header from the query or path), /204, /error (the query as
 * message); anything else is echoed.
 *
 * Properties: no crash, leak, descriptor leak (the lowest free descriptor
 * is the same before and after each input) or hang; what reaches the
 * handler is well-formed (a token method, a path starting with '/', header
 * names that are tokens and values without CR or LF, a body within its
 * limit) and unambiguously framed (see check_framing); every exchange that reached on_head gets exactly one on_done;
 * lg_exchange_add_header refuses exactly the values with CR or LF; what the
 * server sends starts with an HTTP/1.1 status line. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "fuzz.h"
#include "httpd.h"
#include "log.h"

#define MAX_TURNS 200           /* loop turns per input, all steps together */
#define TURNS_PER_PART 3        /* turns after each part, so parts arrive apart */
#define TURNS_AFTER_CLOSE 8     /* turns once the connection is closed */
#define PENDING_TURNS 60        /* the most turns spent waiting for answers */
#define LATE_TURNS 5            /* loop turns before a late answer */
#define STREAM_STEPS 3
#define BIG_EVENT 32768         /* bytes per event of /stream/big */
#define CLIENT_RCVBUF 4096
#define SERVER_SNDBUF 4096
#define SHORT_MS 5              /* the deadlines after SHORT */
#define WAIT_US 12000           /* the pause at WAIT: past the short deadlines, on a 4 ms clock */
#define MAX_WAITS 3             /* more WAIT markers count as MARK: inputs stay fast */
#define KEEP_REPLY 65536        /* reply bytes kept for the checks */
#define SMALL_BODY 16           /* the body limit of /small */

enum marker { M_NONE, M_MARK, M_WAIT, M_SHUT, M_RESET };

static const struct { const char *text; enum marker kind; } markers[] = {
	{ "\n--MARK--\n", M_MARK },
	{ "\n--WAIT--\n", M_WAIT },
	{ "\n--SHUT--\n", M_SHUT },
	{ "\n--RESET--\n", M_RESET },
};

static const char SHORT[] = "\n--SHORT--\n";

static const struct lg_httpd_limits long_limits = {
	.max_header_bytes = 4096,
	.max_headers = 32,
	.max_body_bytes = 8192,
	/* Long enough never to pass during one input: the deadlines are
	 * armed and re-armed, which is what is fuzzed here. */
	.header_timeout_ms = 30000,
	.body_timeout_ms = 30000,
	.idle_timeout_ms = 30000,
	.write_timeout_ms = 30000,
	.max_connections = 4,
	.stream_high_water = 1024,
};

static const struct lg_httpd_limits short_limits = {
	.max_header_bytes = 4096,
	.max_headers = 32,
	.max_body_bytes = 8192,
	.header_timeout_ms = SHORT_MS,
	.body_timeout_ms = SHORT_MS,
	.idle_timeout_ms = SHORT_MS,
	.write_timeout_ms = SHORT_MS,
	.max_connections = 4,
	.stream_high_water = 1024,
};

struct server {
	struct event_base *base;
	const struct lg_httpd_limits *lim;
	int heads, requests, dones, closes, drains;
	struct later *laters;   /* answers still to finish */
};

/* An answer finished over later loop turns: the harness moves it one step
 * after each turn, as a work-pool completion or an upstream's next chunk
 * would. Hangs on its exchange; freed by on_done, which also comes when
 * lg_httpd_free ends the exchange. */
struct later {
	struct server *srv;
	struct lg_exchange *ex;
	struct later *prev, *next;
	int step;
	bool stream;
	bool big;
	bool done;              /* answered: nothing more to do */
	bool paused;            /* the output queue is full: wait for on_drain */
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	/* The server writes to sockets the client may have reset. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		abort();
	lg_log_set_level(LG_LOG_ERROR);
	return 0;
}

/* ---- the handler ---- */

static bool path_is(const struct lg_exchange *ex, const char *prefix)
{
	return strncmp(lg_exchange_path(ex), prefix, strlen(prefix)) == 0;
}

static bool is_token(const char *s)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";

	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
		      (ch >= 'A' && ch <= 'Z') || strchr(extra, ch)))
			return false;
	}
	return true;
}

static bool valid_id(const char *id)
{
	size_t n = strlen(id);

	return n >= 1 && n <= 64 &&
	       strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

/* The smuggling catalogue, seen from the handler: a request that reaches
 * it has unambiguous framing (one Content-Length of digits only, or one
 * Transfer-Encoding that is exactly chunked, never both) and one Host. */
static void check_framing(const struct lg_exchange *ex)
{
	size_t n = lg_exchange_header_count(ex), cl = 0, te = 0, host = 0;

	for (size_t i = 0; i < n; i++) {
		const char *name, *value;

		lg_exchange_header_at(ex, i, &name, &value);
		if (strcasecmp(name, "Content-Length") == 0) {
			cl++;
			FUZZ_CHECK(value[0] && strspn(value, "0123456789") == strlen(value));
		} else if (strcasecmp(name, "Transfer-Encoding") == 0) {
			te++;
			FUZZ_CHECK(strcasecmp(value, "chunked") == 0);
		} else if (strcasecmp(name, "Host") == 0) {
			host++;
		}
	}
	FUZZ_CHECK(cl <= 1 && te <= 1 && !(cl && te) && host <= 1);
}

static void check_request(const struct server *srv, const struct lg_exchange *ex)
{
	size_t n = lg_exchange_header_count(ex);

	FUZZ_CHECK(is_token(lg_exchange_method(ex)));
	FUZZ_CHECK(lg_exchange_target(ex)[0] == '/' && lg_exchange_path(ex)[0] == '/');
	FUZZ_CHECK(!strpbrk(lg_exchange_target(ex), " \r\n#"));
	FUZZ_CHECK(valid_id(lg_exchange_id(ex)));
	FUZZ_CHECK(lg_exchange_peer(ex)[0] != '\0');
	FUZZ_CHECK(n <= srv->lim->max_headers);
	for (size_t i = 0; i < n; i++) {
		const char *name, *value;

		lg_exchange_header_at(ex, i, &name, &value);
		FUZZ_CHECK(name && value && is_token(name));
		FUZZ_CHECK(!strpbrk(value, "\r\n"));
		FUZZ_CHECK(lg_exchange_header(ex, name) != NULL);
	}
	check_framing(ex);
}

static size_t on_head(struct lg_exchange *ex, void *arg)
{
	struct server *srv = arg;

	srv->heads++;
	check_request(srv, ex);
	if (path_is(ex, "/early")) {
		lg_exchange_reply_error(ex, 404, "No route for this path.");
		return 0;
	}
	return path_is(ex, "/small") ? SMALL_BODY : 0;
}

static void on_close(struct lg_exchange *ex, void *arg)
{
	struct later *l = arg;

	FUZZ_CHECK(l->ex == ex && lg_exchange_client_gone(ex));
	l->srv->closes++;
}

static void on_drain(struct lg_exchange *ex, void *arg)
{
	struct later *l = arg;

	FUZZ_CHECK(l->ex == ex && !lg_exchange_client_gone(ex));
	FUZZ_CHECK(l->paused);
	l->paused = false;
	l->srv->drains++;
}

static void echo(struct lg_exchange *ex)
{
	struct lg_str body = lg_exchange_body(ex);
	char out[256];
	size_t keep = body.len < 64 ? body.len : 64;
	int n = snprintf(out, sizeof out - keep, "%s %.80s %zu\n", lg_exchange_method(ex),
			 lg_exchange_path(ex), body.len);

	FUZZ_CHECK(n > 0);
	if ((size_t)n >= sizeof out - keep)
		n = (int)(sizeof out - keep - 1);
	memcpy(out + n, body.ptr, keep);
	lg_exchange_reply(ex, 200, "text/plain", out, (size_t)n + keep);
}

/* The query becomes a header value: refused exactly when it holds CR or
 * LF (a raw query never does; a decoded path could). */
static void reply_with_header(struct lg_exchange *ex)
{
	const char *q = lg_exchange_query(ex);
	const char *value = q ? q : lg_exchange_path(ex);
	int rc = lg_exchange_add_header(ex, "X-Echo", value);

	FUZZ_CHECK(strpbrk(value, "\r\n") ? rc == -EINVAL : rc == 0);
	FUZZ_CHECK(lg_exchange_add_header(ex, "Content-Length", "1") == -EINVAL);
	FUZZ_CHECK(lg_exchange_add_header(ex, "Bad Name", "x") == -EINVAL);
	lg_exchange_reply(ex, 200, "text/plain", "ok\n", 3);
}

static void start_later(struct server *srv, struct lg_exchange *ex, bool stream, bool big)
{
	struct later *l = calloc(1, sizeof *l);

	FUZZ_CHECK(l != NULL);
	l->srv = srv;
	l->ex = ex;
	l->stream = stream;
	l->big = big;
	l->next = srv->laters;
	if (srv->laters)
		srv->laters->prev = l;
	srv->laters = l;
	lg_exchange_set_data(ex, l);
	lg_exchange_set_callbacks(ex, on_close, on_drain, l);
	if (stream) {
		FUZZ_CHECK(lg_exchange_stream_start(ex, 200, "text/event-stream") == 0);
		(void)lg_exchange_stream_write(ex, "data: 0\n\n", 9);
	}
}

static void later_free(struct later *l)
{
	if (l->prev)
		l->prev->next = l->next;
	else
		l->srv->laters = l->next;
	if (l->next)
		l->next->prev = l->prev;
	free(l);
}

/* A large event: "data: " and a run of one letter, as an SSE event. */
static long write_big_event(struct lg_exchange *ex, int step)
{
	char *ev = malloc(BIG_EVENT);
	long rc;

	FUZZ_CHECK(ev != NULL);
	memset(ev, 'a' + step % 26, BIG_EVENT);
	memcpy(ev, "data: ", 6);
	memcpy(ev + BIG_EVENT - 2, "\n\n", 2);
	rc = lg_exchange_stream_write(ex, ev, BIG_EVENT);
	free(ev);
	return rc;
}

/* One step of a late answer: waiting, the reply, or the next event of a
 * stream. The answer never calls back into the handler (httpd.h), so
 * on_done cannot free @l under this call. */
static void later_step(struct later *l)
{
	char line[32];
	long rc;
	int n;

	if (l->done || l->paused)
		return;
	l->step++;
	if (!l->stream) {
		if (l->step < LATE_TURNS)
			return;
		l->done = true;
		lg_exchange_reply(l->ex, 200, "application/json", "{\"late\":true}", 13);
		return;
	}
	if (l->big) {
		rc = write_big_event(l->ex, l->step);
	} else {
		n = snprintf(line, sizeof line, "data: %d\n\n", l->step);
		rc = lg_exchange_stream_write(l->ex, line, (size_t)n);
	}
	FUZZ_CHECK(rc >= -1);
	/* A producer that respects the high-water mark, as the forwarding
	 * path does: the next event waits for the drain callback. */
	l->paused = rc > (long)l->srv->lim->stream_high_water;
	if (rc < 0 || l->step >= STREAM_STEPS) {
		l->done = true;
		lg_exchange_stream_end(l->ex);
	}
}

static void advance_laters(struct server *srv)
{
	for (struct later *l = srv->laters; l; l = l->next)
		later_step(l);
}

static void on_request(struct lg_exchange *ex, void *arg)
{
	struct server *srv = arg;
	struct lg_str body = lg_exchange_body(ex);

	srv->requests++;
	check_request(srv, ex);
	FUZZ_CHECK(body.ptr && body.ptr[body.len] == '\0');
	FUZZ_CHECK(body.len <= (path_is(ex, "/small") ? SMALL_BODY : srv->lim->max_body_bytes));
	if (path_is(ex, "/stream/now")) {
		FUZZ_CHECK(lg_exchange_stream_start(ex, 200, "text/event-stream") == 0);
		(void)lg_exchange_stream_write(ex, body.ptr, body.len);
		(void)lg_exchange_stream_write(ex, "", 0);
		lg_exchange_stream_end(ex);
	} else if (path_is(ex, "/stream/big")) {
		start_later(srv, ex, true, true);
	} else if (path_is(ex, "/stream")) {
		start_later(srv, ex, true, false);
	} else if (path_is(ex, "/late")) {
		start_later(srv, ex, false, false);
	} else if (path_is(ex, "/hdr")) {
		reply_with_header(ex);
	} else if (path_is(ex, "/204")) {
		lg_exchange_reply(ex, 204, "text/plain", "dropped", 7);
	} else if (path_is(ex, "/error")) {
		lg_exchange_reply_error(ex, 422, lg_exchange_query(ex));
	} else {
		echo(ex);
	}
}

static void on_done(struct lg_exchange *ex, int status, uint64_t bytes, void *arg)
{
	struct server *srv = arg;
	struct later *l = lg_exchange_get_data(ex);

	(void)bytes;
	srv->dones++;
	FUZZ_CHECK(status == 0 || (status >= 200 && status <= 599));
	if (l) {
		later_free(l);
		lg_exchange_set_data(ex, NULL);
	}
}

static const struct lg_httpd_handlers handlers = {
	.on_head = on_head, .on_request = on_request, .on_done = on_done,
};

/* ---- sockets ---- */

/* As the server's loops are made (core/loop.c). */
static struct event_base *new_base(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base;

	FUZZ_CHECK(cfg != NULL);
	FUZZ_CHECK(event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	FUZZ_CHECK(base != NULL);
	return base;
}

static int listen_loopback(uint16_t *port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof sin;
	int one = 1, sndbuf = SERVER_SNDBUF;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	FUZZ_CHECK(fd >= 0);
	FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
	/* Accepted sockets inherit it: a large stream then fills the
	 * httpd's own output queue, not only the kernel's. */
	FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf) == 0);
	FUZZ_CHECK(bind(fd, (struct sockaddr *)&sin, sizeof sin) == 0);
	FUZZ_CHECK(listen(fd, 8) == 0);
	FUZZ_CHECK(getsockname(fd, (struct sockaddr *)&sin, &len) == 0);
	*port = ntohs(sin.sin_port);
	return fd;
}

static int connect_loopback(uint16_t port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int rcvbuf = CLIENT_RCVBUF;

	FUZZ_CHECK(fd >= 0);
	/* Before connecting, so that the window is small from the start. */
	FUZZ_CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) == 0);
	FUZZ_CHECK(connect(fd, (struct sockaddr *)&sin, sizeof sin) == 0 || errno == EINPROGRESS);
	return fd;
}

/* Closes with a reset: no TIME_WAIT, so a long fuzzing run does not use
 * up the loopback's ports. */
static void close_abortive(int fd)
{
	struct linger lin = { .l_onoff = 1, .l_linger = 0 };

	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
	close(fd);
}

static int lowest_free_fd(void)
{
	int fd = dup(STDERR_FILENO);

	FUZZ_CHECK(fd >= 0);
	close(fd);
	return fd;
}

/* ---- the client ---- */

struct client {
	int fd;
	int turns;
	bool eof;               /* the server closed (or reset) the connection */
	bool write_closed;      /* the server no longer takes input */
	char reply[KEEP_REPLY];
	size_t reply_len;
};

static void client_read(struct client *cl)
{
	char buf[16384];

	while (!cl->eof) {
		ssize_t n = recv(cl->fd, buf, sizeof buf, 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		if (n <= 0) {
			cl->eof = true;
			return;
		}
		if (cl->reply_len < sizeof cl->reply) {
			size_t keep = sizeof cl->reply - cl->reply_len;

			if ((size_t)n < keep)
				keep = (size_t)n;
			memcpy(cl->reply + cl->reply_len, buf, keep);
			cl->reply_len += keep;
		}
	}
}

/* One turn: the loop runs what is ready, then late answers move a step. */
static void turn(struct server *srv, struct client *cl)
{
	FUZZ_CHECK(event_base_loop(srv->base, EVLOOP_NONBLOCK) >= 0);
	advance_laters(srv);
	cl->turns++;
}

/* Runs up to @turns turns, reading replies after each. */
static void pump(struct server *srv, struct client *cl, int turns)
{
	for (int i = 0; i < turns && cl->turns < MAX_TURNS && !cl->eof; i++) {
		turn(srv, cl);
		client_read(cl);
	}
}

/* Sends one part, turning the loop whenever the socket is full. */
static void send_part(struct server *srv, struct client *cl, const uint8_t *p, size_t len)
{
	size_t off = 0;

	while (off < len && !cl->write_closed && !cl->eof && cl->turns < MAX_TURNS) {
		ssize_t n = send(cl->fd, p + off, len - off, MSG_NOSIGNAL);

		if (n > 0) {
			off += (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			pump(srv, cl, 1);
		} else {
			cl->write_closed = true;
		}
	}
	pump(srv, cl, TURNS_PER_PART);
}

/* The first marker in [p, end), or NULL; *kind and *len describe it. */
static const uint8_t *find_marker(const uint8_t *p, const uint8_t *end, enum marker *kind,
				  size_t *len)
{
	for (; p < end; p++) {
		p = memchr(p, '\n', (size_t)(end - p));
		if (!p)
			return NULL;
		for (size_t i = 0; i < sizeof markers / sizeof markers[0]; i++) {
			size_t mlen = strlen(markers[i].text);

			if ((size_t)(end - p) >= mlen && memcmp(p, markers[i].text, mlen) == 0) {
				*kind = markers[i].kind;
				*len = mlen;
				return p;
			}
		}
	}
	return NULL;
}

/* Turns the loop without the client: late answers to a client that left. */
static void run_without_client(struct server *srv, struct client *cl)
{
	for (int i = 0; i < TURNS_AFTER_CLOSE && cl->turns < MAX_TURNS; i++)
		turn(srv, cl);
}

static void reset_client(struct server *srv, struct client *cl)
{
	close_abortive(cl->fd);
	cl->fd = -1;
	cl->eof = true;
	run_without_client(srv, cl);
}

/* Returns the marker that ended the input early (SHUT, RESET), or M_NONE. */
static enum marker send_input(struct server *srv, struct client *cl, const uint8_t *data,
			      size_t size)
{
	const uint8_t *p = data, *end = data + size;
	int waits = 0;

	for (;;) {
		enum marker kind = M_NONE;
		size_t mlen = 0;
		const uint8_t *m = find_marker(p, end, &kind, &mlen);

		send_part(srv, cl, p, (size_t)((m ? m : end) - p));
		if (!m || cl->eof)
			return M_NONE;
		if (kind == M_RESET) {
			reset_client(srv, cl);
			return M_RESET;
		}
		if (kind == M_SHUT)
			return M_SHUT;
		/* Without SHORT no deadline can pass: no need to wait. */
		if (kind == M_WAIT && srv->lim == &short_limits && waits++ < MAX_WAITS) {
			/* Deadlines that passed fire now, before more input. */
			usleep(WAIT_US);
			pump(srv, cl, TURNS_PER_PART);
		}
		p = m + mlen;
	}
}

static bool answers_pending(const struct server *srv)
{
	for (const struct later *l = srv->laters; l; l = l->next)
		if (!l->done)
			return true;
	return false;
}

/* Everything sent is a sequence of replies, each opening with a status
 * line (100 Continue included). Only the first is checked: bodies are
 * arbitrary bytes. */
static void check_reply(const struct client *cl)
{
	static const char status_line[] = "HTTP/1.1 ";
	const char *r = cl->reply;

	if (cl->reply_len == 0)
		return;
	FUZZ_CHECK(cl->reply_len >= sizeof status_line - 1 + 3);
	FUZZ_CHECK(memcmp(r, status_line, sizeof status_line - 1) == 0);
	r += sizeof status_line - 1;
	FUZZ_CHECK(r[0] >= '1' && r[0] <= '5' && r[1] >= '0' && r[1] <= '9' &&
		   r[2] >= '0' && r[2] <= '9');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct server srv = { .lim = &long_limits };
	struct client *cl = calloc(1, sizeof *cl);
	struct lg_httpd *h;
	uint16_t port;
	int lfd, lowest_fd;

	FUZZ_CHECK(cl != NULL);
	lowest_fd = lowest_free_fd();
	if (size >= sizeof SHORT - 1 && memcmp(data, SHORT, sizeof SHORT - 1) == 0) {
		srv.lim = &short_limits;
		data += sizeof SHORT - 1;
		size -= sizeof SHORT - 1;
	}
	srv.base = new_base();
	lfd = listen_loopback(&port);
	h = lg_httpd_new(srv.base, lfd, srv.lim, &handlers, &srv);
	FUZZ_CHECK(h != NULL);
	cl->fd = connect_loopback(port);

	if (send_input(&srv, cl, data, size) != M_SHUT) {
		/* The httpd takes a half-close for a client that left: wait
		 * for the answers first (SHUT is there to not wait). */
		for (int i = 0; i < PENDING_TURNS && !cl->eof &&
				(answers_pending(&srv) || lg_httpd_busy(h) > 0); i++)
			pump(&srv, cl, 1);
	}
	if (!cl->eof && shutdown(cl->fd, SHUT_WR) != 0)
		FUZZ_CHECK(errno == ENOTCONN || errno == ECONNRESET || errno == EPIPE);
	while (!cl->eof && cl->turns < MAX_TURNS)
		pump(&srv, cl, 1);
	check_reply(cl);
	run_without_client(&srv, cl);

	if (cl->fd >= 0)
		close_abortive(cl->fd);
	lg_httpd_free(h);
	FUZZ_CHECK(srv.heads == srv.dones);
	FUZZ_CHECK(srv.requests <= srv.heads);
	event_base_free(srv.base);
	close(lfd);
	free(cl);
	FUZZ_CHECK(lowest_free_fd() == lowest_fd);
	return 0;
}
