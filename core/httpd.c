/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP/1.1 server of one worker (see httpd.h).
 *
 * Each connection reads into its bufferevent's input buffer and moves
 * through a small state machine:
 *   IDLE      waiting for a request's first byte (idle deadline)
 *   HEAD      reading the header section (header deadline)
 *   BODY      reading the body (body deadline)
 *   EXCHANGE  the request is with the handler or being answered; further
 *             input is only buffered (pipelining) or, after a framing
 *             error, discarded
 *   LINGER    the last reply is out and our side is shut down; what the
 *             client still sends is read and dropped for a moment, so that
 *             closing does not reset the connection under the reply.
 *
 * The deadlines are absolute and share one timer per connection. The same
 * timer, activated by hand, also runs the work that must not happen inside
 * a handler's call (finishing an exchange, a failed write): reply() and the
 * stream calls never call back into the handler.
 *
 * Output goes straight to the socket when nothing is queued; only what the
 * kernel does not take waits for the bufferevent's write event, whose
 * timeout is the write deadline (it only runs while output is pending).
 * The process must ignore SIGPIPE, as for any bufferevent writer. */
#include "httpd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <jansson.h>
#include <sodium.h>

#include "log.h"

#define COMP "http"

/* Defaults for limits given as 0. A timeout of 0 means no deadline and a
 * max_connections of 0 no cap. */
#define DEF_MAX_HEADER_BYTES	(16u * 1024)
#define DEF_MAX_HEADERS		100u
#define DEF_MAX_BODY_BYTES	(4u * 1024 * 1024)
#define DEF_STREAM_HIGH_WATER	(256u * 1024)

/* Input buffered past the current request while its exchange runs; beyond
 * it reading pauses until the exchange is done. */
#define READ_SLACK		(64u * 1024)
/* The most a body read straight from the socket asks for at once. */
#define RECV_CHUNK		(256u * 1024)
/* The longest chunk-size line (with extensions) or trailer line. */
#define MAX_CHUNK_LINE		4096u
/* How long a closing connection keeps reading what the client still sends. */
#define LINGER_MS		2000u
/* Per-connection buffers larger than this are released between requests. */
#define KEEP_HEAD_BYTES		(8u * 1024)
#define KEEP_BODY_BYTES		(64u * 1024)
/* Pause after accept() failed, e.g. for lack of descriptors. */
#define ACCEPT_RETRY_MS		100u

#define ID_HEX			32
#define ID_MAX			64

enum rstate { R_IDLE, R_HEAD, R_BODY, R_EXCHANGE, R_LINGER };
enum body_mode { BODY_NONE, BODY_LENGTH, BODY_CHUNKED };
enum chunk_state { CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER };

struct hdr {
	const char *name;
	const char *value;
};

struct conn;

/* Embedded in its connection and reset for each request. */
struct lg_exchange {
	struct conn *conn;
	const char *method;
	const char *target;
	const char *path;
	const char *query;
	size_t nhdrs;
	char id[ID_MAX + 1];
	bool http10;
	bool is_head;
	bool keep_alive;        /* what the request asked for */
	bool expect_continue;
	bool reached_head;      /* on_head ran and on_done is still owed */
	bool delivered;         /* the handler holds it (on_request ran, or on_head answered) */
	bool started;           /* the status line is queued (or discarded) */
	bool answered;          /* reply given, or stream ended */
	bool no_body;           /* HEAD, 204 or 304: headers only */
	bool chunked_out;       /* a stream with chunked framing */
	bool client_gone;
	bool close_notified;
	bool paused;            /* the stream queue went above the high-water mark */
	int status;
	uint64_t bytes;
	void (*close_cb)(struct lg_exchange *ex, void *arg);
	void (*drain_cb)(struct lg_exchange *ex, void *arg);
	void *cb_arg;
	void *data;
};

struct conn {
	struct lg_httpd *httpd;
	struct conn *prev, *next;
	struct bufferevent *bev;        /* NULL once the socket is closed */
	struct event *timer;            /* deadlines, and deferred work */
	enum rstate rstate;
	uint64_t deadline;              /* monotonic ms; 0: none */
	uint64_t armed;                 /* the deadline the timer is set for */
	bool deferred;                  /* the timer was activated for deferred work */
	bool write_on;                  /* the bufferevent is flushing our output */
	bool write_failed;              /* a direct write failed: the client is gone */
	bool discard_input;             /* nothing more is served on this connection */
	bool close_after;               /* the reply said "Connection: close" */
	bool body_complete;

	/* scanning for the end of the header section, resumable */
	size_t scan_off;
	size_t scan_line;
	size_t scan_lines;
	size_t first_line;
	char scan_last;

	/* the header section, parsed in place; then the decoded path */
	char *hbuf;
	size_t hcap;
	struct hdr *hdrs;
	size_t hdrs_cap;
	const char *why;                /* reason of the last parse error */

	/* the request body */
	enum body_mode body_mode;
	uint64_t content_length;
	size_t body_limit;
	char *body;
	size_t body_len, body_cap;
	enum chunk_state chunk;
	uint64_t chunk_left;
	size_t line_scan;
	size_t trailer_bytes, trailer_count;

	/* headers added by the handler, "Name: value\r\n" each */
	char *xhdrs;
	size_t xhdrs_len, xhdrs_cap;

	struct lg_exchange ex;
	char peer[64];
};

struct lg_httpd {
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *retry;            /* re-enables accepting after an accept error */
	struct lg_httpd_limits lim;
	struct lg_httpd_handlers h;
	void *arg;
	struct conn *conns;
	size_t nconns;                  /* open sockets */
	size_t busy;                    /* exchanges between on_head and on_done */
	bool listening;
	bool backoff;
	bool stopping;
	uint64_t id_seq;
	char id_prefix[ID_HEX / 2 + 1];
	time_t date_sec;
	char date[64];
};

/* RFC 9110 tchar. */
static const uint8_t tchar[256] = {
	['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1,
	['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,
	['~'] = 1, ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1,
};

static bool is_tchar(unsigned char ch) { return tchar[ch]; }

/* field-value bytes: VCHAR, obs-text, SP and HTAB; no other control. */
static bool is_field_char(unsigned char ch) { return ch == '\t' || (ch >= 0x20 && ch != 0x7f); }

static bool is_ows(char ch) { return ch == ' ' || ch == '\t'; }

static int hexval(unsigned char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t deadline_in(uint32_t ms)
{
	return ms ? now_ms() + ms : 0;
}

/* ---- status codes and error bodies ---- */

static const char *status_reason(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 206: return "Partial Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 402: return "Payment Required";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 406: return "Not Acceptable";
	case 408: return "Request Timeout";
	case 409: return "Conflict";
	case 410: return "Gone";
	case 411: return "Length Required";
	case 412: return "Precondition Failed";
	case 413: return "Content Too Large";
	case 414: return "URI Too Long";
	case 415: return "Unsupported Media Type";
	case 416: return "Range Not Satisfiable";
	case 417: return "Expectation Failed";
	case 422: return "Unprocessable Content";
	case 424: return "Failed Dependency";
	case 425: return "Too Early";
	case 426: return "Upgrade Required";
	case 428: return "Precondition Required";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 451: return "Unavailable For Legal Reasons";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 505: return "HTTP Version Not Supported";
	case 507: return "Insufficient Storage";
	}
	switch (status / 100) {
	case 2: return "Success";
	case 3: return "Redirection";
	case 4: return "Client Error";
	default: return "Server Error";
	}
}

/* The OpenAI error "type" of a status. */
static const char *error_type(int status)
{
	switch (status) {
	case 401: return "authentication_error";
	case 403: return "permission_error";
	case 404: return "not_found_error";
	case 408: return "timeout_error";
	case 413:
	case 431: return "request_too_large";
	case 429: return "rate_limit_error";
	case 503: return "service_unavailable";
	}
	return status >= 400 && status < 500 ? "invalid_request_error" : "server_error";
}

char *lg_error_body(int status, const char *message)
{
	json_t *root = json_object(), *err = json_object(), *msg = NULL;
	char *out = NULL;

	if (!root || !err)
		goto out;
	msg = message ? json_string(message) : NULL;
	if (!msg)       /* none, or not UTF-8: the reason phrase says enough */
		msg = json_string(status_reason(status));
	if (!msg)
		goto out;
	if (json_object_set(err, "message", msg) != 0 ||
	    json_object_set_new(err, "type", json_string(error_type(status))) != 0 ||
	    json_object_set_new(err, "code", json_integer(status)) != 0 ||
	    json_object_set(root, "detail", msg) != 0 ||
	    json_object_set(root, "error", err) != 0)
		goto out;
	out = json_dumps(root, JSON_COMPACT);
out:
	json_decref(msg);
	json_decref(err);
	json_decref(root);
	return out;
}

/* ---- small helpers ---- */

static void put(char **w, const char *s, size_t n)
{
	memcpy(*w, s, n);
	*w += n;
}

#define PUT_LIT(w, s) put((w), (s), sizeof(s) - 1)

static void put_u64(char **w, uint64_t v)
{
	char tmp[20];
	size_t i = sizeof tmp;

	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put(w, tmp + i, sizeof tmp - i);
}

/* The Date header's value, formatted once per second. */
static const char *http_date(struct lg_httpd *h)
{
	static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char months[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	time_t t = time(NULL);
	struct tm tm;

	if (t != h->date_sec && gmtime_r(&t, &tm)) {
		snprintf(h->date, sizeof h->date, "%s, %02d %s %04d %02d:%02d:%02d GMT",
			 days[tm.tm_wday % 7], tm.tm_mday, months[tm.tm_mon % 12],
			 tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
		h->date_sec = t;
	}
	return h->date;
}

/* A per-httpd random prefix and a counter: 32 hex digits, unique across
 * workers and restarts without a syscall per request. */
static void make_id(struct lg_httpd *h, char *out)
{
	static const char hex[] = "0123456789abcdef";
	uint64_t n = ++h->id_seq;

	memcpy(out, h->id_prefix, ID_HEX / 2);
	for (int i = ID_HEX - 1; i >= ID_HEX / 2; i--, n >>= 4)
		out[i] = hex[n & 15];
	out[ID_HEX] = '\0';
}

static bool valid_client_id(const char *v)
{
	size_t n = 0;

	for (; v[n]; n++) {
		unsigned char ch = (unsigned char)v[n];

		if (n >= ID_MAX || !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
				     (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return n > 0;
}

static void format_peer(char *out, size_t n, const struct sockaddr *sa)
{
	char ip[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		if (inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip)) {
			snprintf(out, n, "%s:%u", ip, ntohs(sin->sin_port));
			return;
		}
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		if (inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof ip)) {
			snprintf(out, n, "[%s]:%u", ip, ntohs(sin6->sin6_port));
			return;
		}
	}
	snprintf(out, n, "local");
}

/* ---- forward declarations of the connection life cycle ---- */

static bool process_input(struct conn *c);
static bool conn_advance(struct conn *c);

static bool ex_gone(const struct lg_exchange *ex)
{
	return ex->client_gone || ex->conn->write_failed;
}

/* ---- listener ---- */

static void listener_update(struct lg_httpd *h)
{
	bool want = h->listener && !h->stopping && !h->backoff &&
		    (!h->lim.max_connections || h->nconns < h->lim.max_connections);
	int rc;

	if (want == h->listening)
		return;
	rc = want ? evconnlistener_enable(h->listener) : evconnlistener_disable(h->listener);
	if (rc != 0) {
		lg_error(COMP, "cannot %s accepting connections", want ? "resume" : "pause");
		return;
	}
	h->listening = want;
}

/* ---- timer: deadlines and deferred work ---- */

static void timer_sync(struct conn *c)
{
	struct timeval tv;
	uint64_t now, left;

	/* A deferred run is pending: it syncs when it is done. Touching the
	 * event now could cancel that run. */
	if (c->deferred || c->deadline == c->armed)
		return;
	if (c->deadline == 0) {
		if (event_del(c->timer) != 0)
			lg_error(COMP, "%s: cannot cancel a deadline", c->peer);
		c->armed = 0;
		return;
	}
	now = now_ms();
	left = c->deadline > now ? c->deadline - now : 0;
	tv.tv_sec = (time_t)(left / 1000);
	tv.tv_usec = (suseconds_t)(left % 1000) * 1000;
	if (event_add(c->timer, &tv) != 0) {
		lg_error(COMP, "%s: cannot arm a deadline", c->peer);
		return;
	}
	c->armed = c->deadline;
}

/* Runs conn_advance() soon from the loop rather than inside the caller,
 * which may be a handler in the middle of its own work. Activated with
 * EV_READ, not EV_TIMEOUT, so that re-arming the timeout cannot cancel it. */
static void conn_defer(struct conn *c)
{
	if (c->deferred)
		return;
	c->deferred = true;
	event_active(c->timer, EV_READ, 0);
}

static void write_failed(struct conn *c, const char *why)
{
	if (why)
		lg_log(LG_LOG_WARN, COMP, c->ex.id[0] ? c->ex.id : NULL, "%s: %s", c->peer, why);
	c->write_failed = true;
	conn_defer(c);
}

/* ---- connection life cycle ---- */

static void socket_close(struct conn *c)
{
	struct lg_httpd *h = c->httpd;

	bufferevent_free(c->bev);
	c->bev = NULL;
	h->nconns--;
	listener_update(h);
}

static void conn_free(struct conn *c)
{
	struct lg_httpd *h = c->httpd;

	if (c->bev)
		socket_close(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		h->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	event_free(c->timer);
	free(c->hbuf);
	free(c->hdrs);
	free(c->body);
	free(c->xhdrs);
	free(c);
}

/* Clears the exchange for the next request on the connection. */
static void request_reset(struct conn *c)
{
	memset(&c->ex, 0, sizeof c->ex);
	c->ex.conn = c;
	c->xhdrs_len = 0;
	c->body_len = 0;
	c->body_mode = BODY_NONE;
	c->content_length = 0;
	c->body_complete = false;
	c->chunk = CH_SIZE;
	c->chunk_left = 0;
	c->line_scan = 0;
	c->trailer_bytes = c->trailer_count = 0;
	c->close_after = false;
	c->why = NULL;
	/* A large upload or header block does not pin memory on an idle
	 * keep-alive connection. */
	if (c->body_cap > KEEP_BODY_BYTES) {
		free(c->body);
		c->body = NULL;
		c->body_cap = 0;
	}
	if (c->hcap > KEEP_HEAD_BYTES) {
		free(c->hbuf);
		c->hbuf = NULL;
		c->hcap = 0;
	}
}

static void notify_close(struct lg_exchange *ex)
{
	if (ex->close_notified || !ex->close_cb)
		return;
	ex->close_notified = true;
	ex->close_cb(ex, ex->cb_arg);
}

static bool exchange_complete(struct conn *c)
{
	const struct lg_exchange *ex = &c->ex;

	if (ex->client_gone)
		return ex->answered || !ex->delivered;
	return ex->answered && !c->write_failed &&
	       evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
}

/* Closes after the last reply. Returns true if @c was freed. */
static bool conn_close(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);

	if (!c->discard_input && evbuffer_get_length(in) == 0) {
		conn_free(c);
		return true;
	}
	/* The client may still be sending (a body we refused, pipelined
	 * requests): closing now would answer them with a reset that can
	 * destroy our reply in flight. Shut our side and drain a while. */
	if (shutdown(bufferevent_getfd(c->bev), SHUT_WR) != 0 ||
	    evbuffer_drain(in, evbuffer_get_length(in)) != 0) {
		conn_free(c);
		return true;
	}
	c->discard_input = true;
	c->rstate = R_LINGER;
	c->deadline = now_ms() + LINGER_MS;
	timer_sync(c);
	return false;
}

/* The exchange is over: on_done, then the next request or the close.
 * Returns true if @c was freed. */
static bool exchange_finish(struct conn *c)
{
	struct lg_exchange *ex = &c->ex;
	struct lg_httpd *h = c->httpd;

	if (ex->reached_head) {
		ex->reached_head = false;
		h->busy--;
		if (h->h.on_done)
			h->h.on_done(ex, ex->status, ex->bytes, h->arg);
	}
	if (!c->bev) {
		conn_free(c);
		return true;
	}
	if (c->close_after || !ex->keep_alive || h->stopping)
		return conn_close(c);
	request_reset(c);
	c->rstate = R_IDLE;
	c->deadline = deadline_in(h->lim.idle_timeout_ms);
	return process_input(c);
}

/* Finishes the exchange if it is complete. Returns true if @c was freed. */
static bool conn_advance(struct conn *c)
{
	if (c->rstate != R_EXCHANGE || !exchange_complete(c))
		return false;
	return exchange_finish(c);
}

/* The client closed, reset, or stopped taking our output. The socket goes
 * now; an exchange the handler still holds keeps the connection (without
 * its socket) until the handler answers. Returns true if @c was freed. */
static bool client_left(struct conn *c)
{
	struct lg_exchange *ex = &c->ex;
	bool complete;

	if (!c->bev)
		return false;
	complete = exchange_complete(c);
	socket_close(c);
	if (!ex->reached_head) {
		conn_free(c);
		return true;
	}
	ex->client_gone = true;
	c->rstate = R_EXCHANGE;
	c->deadline = 0;
	if (!complete)
		notify_close(ex);
	if (exchange_complete(c))
		return exchange_finish(c);
	timer_sync(c);
	return false;
}

/* A deadline passed. Returns true if @c was freed. */
static bool deadline_passed(struct conn *c);

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	(void)fd;
	(void)what;
	c->armed = 0;   /* a non-persistent event is no longer pending */
	if (c->deferred) {
		c->deferred = false;
		if (c->write_failed && c->bev) {
			(void)client_left(c);
			return;
		}
		if (conn_advance(c))
			return;
	}
	if (c->deadline && now_ms() >= c->deadline) {
		(void)deadline_passed(c);
		return;
	}
	timer_sync(c);
}

/* ---- output ---- */

/* Writes queued output now if the bufferevent is not already on it; what
 * the kernel does not take is left to the write event. */
static void flush_out(struct conn *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	int n;

	if (c->write_on)
		return;
	if (evbuffer_get_length(out) > 0) {
		/* The bufferevent keeps the front of its output frozen
		 * between its own writes. */
		if (evbuffer_unfreeze(out, 1) != 0) {
			write_failed(c, "cannot unfreeze output");
			return;
		}
		n = evbuffer_write(out, bufferevent_getfd(c->bev));
		if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			(void)evbuffer_freeze(out, 1);
			write_failed(c, NULL);
			return;
		}
		if (evbuffer_freeze(out, 1) != 0) {
			write_failed(c, "cannot freeze output");
			return;
		}
	}
	if (evbuffer_get_length(out) == 0) {
		if (c->ex.answered)
			conn_defer(c);
		return;
	}
	if (bufferevent_enable(c->bev, EV_WRITE) != 0) {
		write_failed(c, "cannot watch the socket for writing");
		return;
	}
	c->write_on = true;
}

/* Queues the status line and headers. */
static int write_head(struct lg_exchange *ex, int status, const char *ctype, bool has_length,
		      uint64_t length, bool chunked)
{
	struct conn *c = ex->conn;
	struct lg_httpd *h = c->httpd;
	struct evbuffer *out = bufferevent_get_output(c->bev);
	const char *reason = status_reason(status), *date = http_date(h);
	size_t ctlen = 0, idlen = strlen(ex->id), cap;
	struct evbuffer_iovec v;
	char *w;

	if (ctype && strpbrk(ctype, "\r\n")) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "content type with CR or LF dropped");
		ctype = NULL;
	}
	if (ctype)
		ctlen = strlen(ctype);
	c->close_after = !ex->keep_alive || h->stopping || c->discard_input || !c->body_complete ||
			 (!has_length && !chunked && !ex->no_body);
	cap = 192 + strlen(reason) + strlen(date) + ctlen + idlen + c->xhdrs_len;
	if (evbuffer_reserve_space(out, (ev_ssize_t)cap, &v, 1) < 1)
		return -1;
	w = v.iov_base;
	PUT_LIT(&w, "HTTP/1.1 ");
	put_u64(&w, (uint64_t)status);
	*w++ = ' ';
	put(&w, reason, strlen(reason));
	PUT_LIT(&w, "\r\nDate: ");
	put(&w, date, strlen(date));
	PUT_LIT(&w, "\r\n");
	if (ctype) {
		PUT_LIT(&w, "Content-Type: ");
		put(&w, ctype, ctlen);
		PUT_LIT(&w, "\r\n");
	}
	if (has_length) {
		PUT_LIT(&w, "Content-Length: ");
		put_u64(&w, length);
		PUT_LIT(&w, "\r\n");
	}
	if (chunked)
		PUT_LIT(&w, "Transfer-Encoding: chunked\r\n");
	PUT_LIT(&w, "x-request-id: ");
	put(&w, ex->id, idlen);
	PUT_LIT(&w, "\r\n");
	if (c->xhdrs_len)
		put(&w, c->xhdrs, c->xhdrs_len);
	if (c->close_after)
		PUT_LIT(&w, "Connection: close\r\n");
	else if (ex->http10)
		PUT_LIT(&w, "Connection: keep-alive\r\n");
	PUT_LIT(&w, "\r\n");
	v.iov_len = (size_t)(w - (char *)v.iov_base);
	if (evbuffer_commit_space(out, &v, 1) != 0)
		return -1;
	ex->status = status;
	return 0;
}

static bool final_status(int status)
{
	return status >= 200 && status <= 599;
}

void lg_exchange_reply(struct lg_exchange *ex, int status, const char *content_type,
		       const char *body, size_t len)
{
	struct conn *c = ex->conn;
	bool bodyless;

	if (ex->answered) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "reply: the exchange is already answered");
		return;
	}
	if (ex->started) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "reply after stream_start: ending the stream");
		lg_exchange_stream_end(ex);
		return;
	}
	if (!final_status(status)) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "reply: status %d is not a final status", status);
		status = 500;
		content_type = NULL;
		len = 0;
	}
	ex->started = ex->answered = true;
	if (ex_gone(ex)) {
		conn_defer(c);
		return;
	}
	bodyless = status == 204 || status == 304;
	ex->no_body = bodyless || ex->is_head;
	if (write_head(ex, status, content_type, !bodyless, len, false) != 0)
		goto fail;
	if (!ex->no_body && len) {
		if (evbuffer_add(bufferevent_get_output(c->bev), body, len) != 0)
			goto fail;
		ex->bytes = len;
	}
	flush_out(c);
	return;
fail:
	write_failed(c, "reply: out of memory");
}

void lg_exchange_reply_error(struct lg_exchange *ex, int status, const char *message)
{
	char *body = lg_error_body(status, message);
	char fallback[128];

	if (!body) {
		snprintf(fallback, sizeof fallback, "{\"detail\":\"%s\"}", status_reason(status));
		lg_exchange_reply(ex, status, "application/json", fallback, strlen(fallback));
		return;
	}
	lg_exchange_reply(ex, status, "application/json", body, strlen(body));
	free(body);
}

int lg_exchange_stream_start(struct lg_exchange *ex, int status, const char *content_type)
{
	struct conn *c = ex->conn;

	if (ex->started || ex->answered || !final_status(status))
		return -EINVAL;
	ex->started = true;
	if (ex_gone(ex))
		return 0;
	ex->no_body = ex->is_head || status == 204 || status == 304;
	/* HTTP/1.0 has no chunks: the body ends with the connection. */
	ex->chunked_out = !ex->no_body && !ex->http10;
	if (write_head(ex, status, content_type, false, 0, ex->chunked_out) != 0) {
		write_failed(c, "stream_start: out of memory");
		return -ENOMEM;
	}
	flush_out(c);
	return 0;
}

long lg_exchange_stream_write(struct lg_exchange *ex, const char *data, size_t len)
{
	struct conn *c = ex->conn;
	struct evbuffer *out;
	size_t queued;

	if (ex_gone(ex))
		return -1;
	if (!ex->started || ex->answered) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "stream_write outside a stream");
		return -1;
	}
	out = bufferevent_get_output(c->bev);
	if (len && !ex->no_body) {
		if (ex->chunked_out) {
			char size[24];
			int n = snprintf(size, sizeof size, "%zx\r\n", len);

			if (evbuffer_add(out, size, (size_t)n) != 0 ||
			    evbuffer_add(out, data, len) != 0 || evbuffer_add(out, "\r\n", 2) != 0)
				goto fail;
		} else if (evbuffer_add(out, data, len) != 0) {
			goto fail;
		}
		ex->bytes += len;
		flush_out(c);
		if (c->write_failed)
			return -1;
	}
	queued = evbuffer_get_length(out);
	if (queued > c->httpd->lim.stream_high_water)
		ex->paused = true;
	return (long)queued;
fail:
	write_failed(c, "stream_write: out of memory");
	return -1;
}

void lg_exchange_stream_end(struct lg_exchange *ex)
{
	struct conn *c = ex->conn;

	if (ex->answered) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "stream_end: the exchange is already answered");
		return;
	}
	if (!ex->started) {
		lg_log(LG_LOG_ERROR, COMP, ex->id, "stream_end without stream_start");
		lg_exchange_reply_error(ex, 500, "The reply ended before it started.");
		return;
	}
	ex->answered = true;
	if (ex_gone(ex)) {
		conn_defer(c);
		return;
	}
	if (ex->chunked_out && evbuffer_add(bufferevent_get_output(c->bev), "0\r\n\r\n", 5) != 0) {
		write_failed(c, "stream_end: out of memory");
		return;
	}
	flush_out(c);
}

void lg_exchange_set_callbacks(struct lg_exchange *ex,
			       void (*close)(struct lg_exchange *ex, void *arg),
			       void (*drain)(struct lg_exchange *ex, void *arg), void *arg)
{
	ex->close_cb = close;
	ex->drain_cb = drain;
	ex->cb_arg = arg;
}

int lg_exchange_add_header(struct lg_exchange *ex, const char *name, const char *value)
{
	struct conn *c = ex->conn;
	size_t nlen, vlen, need;

	if (!name || !value || ex->started)
		return -EINVAL;
	nlen = strlen(name);
	vlen = strlen(value);
	if (nlen == 0 || strpbrk(value, "\r\n"))
		return -EINVAL;
	for (size_t i = 0; i < nlen; i++)
		if (!is_tchar((unsigned char)name[i]))
			return -EINVAL;
	if (strcasecmp(name, "Content-Length") == 0 || strcasecmp(name, "Transfer-Encoding") == 0 ||
	    strcasecmp(name, "Connection") == 0)
		return -EINVAL;
	need = c->xhdrs_len + nlen + vlen + 4;
	if (need > c->xhdrs_cap) {
		size_t cap = c->xhdrs_cap ? c->xhdrs_cap : 256;
		char *p;

		while (cap < need)
			cap *= 2;
		p = realloc(c->xhdrs, cap);
		if (!p)
			return -ENOMEM;
		c->xhdrs = p;
		c->xhdrs_cap = cap;
	}
	memcpy(c->xhdrs + c->xhdrs_len, name, nlen);
	memcpy(c->xhdrs + c->xhdrs_len + nlen, ": ", 2);
	memcpy(c->xhdrs + c->xhdrs_len + nlen + 2, value, vlen);
	memcpy(c->xhdrs + c->xhdrs_len + nlen + 2 + vlen, "\r\n", 2);
	c->xhdrs_len = need;
	return 0;
}

/* ---- answering on the handler's behalf ---- */

/* A request the httpd refuses before on_head: reply, then close. */
static void protocol_error(struct conn *c, int status, const char *why)
{
	struct lg_exchange *ex = &c->ex;
	struct evbuffer *in = bufferevent_get_input(c->bev);

	c->discard_input = true;
	(void)evbuffer_drain(in, evbuffer_get_length(in));
	c->rstate = R_EXCHANGE;
	c->deadline = 0;
	ex->keep_alive = false;
	ex->is_head = false;
	ex->delivered = true;
	if (!ex->id[0])
		make_id(c->httpd, ex->id);
	/* No exchange reached the pipeline, so the access line is written here:
	 * every request the server answers has one. */
	lg_log(LG_LOG_INFO, "access", ex->id, "%s \"-\" %d refused: %s", c->peer, status, why);
	lg_exchange_reply_error(ex, status, why);
}

/* An exchange that reached on_head fails while its body is read (too
 * large, bad chunk, deadline): the httpd answers it and closes. */
static void httpd_answer(struct conn *c, int status, const char *why)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);

	lg_log(LG_LOG_DEBUG, COMP, c->ex.id, "%s: %d %s", c->peer, status, why);
	c->discard_input = true;
	(void)evbuffer_drain(in, evbuffer_get_length(in));
	c->rstate = R_EXCHANGE;
	c->deadline = 0;
	c->ex.delivered = true;
	lg_exchange_reply_error(&c->ex, status, why);
}

static bool deadline_passed(struct conn *c)
{
	switch (c->rstate) {
	case R_IDLE:    /* nothing to answer: just close */
	case R_LINGER:
		conn_free(c);
		return true;
	case R_HEAD:
		protocol_error(c, 408, "The request headers took too long.");
		break;
	case R_BODY:
		httpd_answer(c, 408, "The request body took too long.");
		break;
	case R_EXCHANGE:
		c->deadline = 0;
		break;
	}
	timer_sync(c);
	return false;
}

/* ---- reading the header section ---- */

static int fail(struct conn *c, int status, const char *why)
{
	c->why = why;
	return status;
}

/* Scans @len bytes at @s for the blank line that ends the header section,
 * counting lines and bytes. Returns 1 when found (*hlen set), 0 for more,
 * or an error status. */
static int scan_segment(struct conn *c, const char *s, size_t len, size_t *hlen)
{
	const struct lg_httpd_limits *lim = &c->httpd->lim;
	const char *p = s, *end = s + len;

	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t k = (size_t)((nl ? nl : end) - p);

		if (k) {
			c->scan_line += k;
			c->scan_last = p[k - 1];
		}
		c->scan_off += k;
		if (c->scan_off > lim->max_header_bytes)
			return fail(c, 431, "The request headers are too large.");
		if (!nl)
			break;
		c->scan_off++;
		if (c->scan_line == 0 || (c->scan_line == 1 && c->scan_last == '\r')) {
			if (c->scan_off > lim->max_header_bytes)
				return fail(c, 431, "The request headers are too large.");
			*hlen = c->scan_off;
			return 1;
		}
		if (c->scan_lines++ == 0)
			c->first_line = c->scan_off;
		if (c->scan_lines > lim->max_headers + 1)
			return fail(c, 431, "The request has too many headers.");
		c->scan_line = 0;
		p = nl + 1;
	}
	return 0;
}

/* Resumes scanning the input where the last call stopped, so a header
 * section that arrives in pieces is scanned once. */
static int scan_head(struct conn *c, size_t *hlen)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t total = evbuffer_get_length(in);
	struct evbuffer_iovec v[8];
	struct evbuffer_ptr pos;

	while (c->scan_off < total) {
		int n, r;

		if (evbuffer_ptr_set(in, &pos, c->scan_off, EVBUFFER_PTR_SET) != 0)
			return fail(c, 500, "Input buffer error.");
		n = evbuffer_peek(in, -1, &pos, v, 8);
		if (n <= 0)
			return fail(c, 500, "Input buffer error.");
		if (n > 8)
			n = 8;
		for (int i = 0; i < n; i++) {
			r = scan_segment(c, v[i].iov_base, v[i].iov_len, hlen);
			if (r != 0)
				return r;
		}
	}
	return 0;
}

static int decode_path(struct conn *c, const char *s, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++) {
		int hi, lo;

		if (s[i] != '%') {
			*out++ = s[i];
			continue;
		}
		if (n - i < 3)
			return fail(c, 400, "Invalid percent-encoding in the path.");
		hi = hexval((unsigned char)s[i + 1]);
		lo = hexval((unsigned char)s[i + 2]);
		if (hi < 0 || lo < 0)
			return fail(c, 400, "Invalid percent-encoding in the path.");
		if (hi == 0 && lo == 0)
			return fail(c, 400, "The path contains %00.");
		*out++ = (char)(hi * 16 + lo);
		i += 2;
	}
	*out = '\0';
	return 0;
}

static int parse_request_line(struct conn *c, char *p, char *e, char *path_out)
{
	struct lg_exchange *ex = &c->ex;
	char *m = p, *t, *v, *q;
	size_t vlen;

	while (p < e && is_tchar((unsigned char)*p))
		p++;
	if (p == m || p == e || *p != ' ')
		return fail(c, 400, "Malformed request line.");
	*p++ = '\0';
	t = p;
	while (p < e && *p != ' ') {
		unsigned char ch = (unsigned char)*p;

		if (ch <= 0x20 || ch >= 0x7f || ch == '#')
			return fail(c, 400, "Invalid character in the request target.");
		p++;
	}
	if (p == t || p == e || *t != '/')
		return fail(c, 400, "The request target must be a path.");
	*p++ = '\0';
	v = p;
	vlen = (size_t)(e - v);
	if (vlen == 8 && memcmp(v, "HTTP/1.", 7) == 0 && (v[7] == '1' || v[7] == '0')) {
		ex->http10 = v[7] == '0';
	} else if (vlen > 5 && memcmp(v, "HTTP/", 5) == 0 &&
		   strspn(v + 5, "0123456789.") >= vlen - 5 && v[5] >= '0' && v[5] <= '9') {
		return fail(c, 505, "HTTP version not supported.");
	} else {
		return fail(c, 400, "Malformed request line.");
	}
	ex->method = m;
	ex->target = t;
	ex->is_head = strcmp(m, "HEAD") == 0;
	q = strchr(t, '?');
	ex->query = q ? q + 1 : NULL;
	ex->path = path_out;
	return decode_path(c, t, q ? (size_t)(q - t) : strlen(t), path_out);
}

/* What the request's own headers say about framing and the connection. */
struct head_info {
	unsigned hosts;
	bool has_length;
	bool has_te;
	bool conn_close;
	bool conn_keep_alive;
};

static bool name_is(const char *name, size_t nlen, const char *want, size_t wlen)
{
	return nlen == wlen && strcasecmp(name, want) == 0;
}

static int parse_content_length(struct conn *c, const char *v)
{
	uint64_t n = 0;

	if (!*v)
		return fail(c, 400, "Empty Content-Length.");
	for (; *v; v++) {
		if (*v < '0' || *v > '9')
			return fail(c, 400, "Invalid Content-Length.");
		if (n > (UINT64_MAX - 9) / 10)
			return fail(c, 400, "Content-Length overflows.");
		n = n * 10 + (uint64_t)(*v - '0');
	}
	c->content_length = n;
	return 0;
}

static void parse_connection(struct head_info *hi, const char *v)
{
	while (*v) {
		size_t n;

		while (*v == ',' || is_ows(*v))
			v++;
		n = strcspn(v, ", \t");
		if (n == 5 && strncasecmp(v, "close", 5) == 0)
			hi->conn_close = true;
		else if (n == 10 && strncasecmp(v, "keep-alive", 10) == 0)
			hi->conn_keep_alive = true;
		v += n;
	}
}

/* Headers that decide framing, the connection or the request id. */
static int note_header(struct conn *c, struct head_info *hi, const char *name, size_t nlen,
		       const char *v)
{
	struct lg_exchange *ex = &c->ex;

	switch (nlen) {
	case 4:
		if (name_is(name, nlen, "host", 4) && ++hi->hosts > 1)
			return fail(c, 400, "Duplicate Host header.");
		break;
	case 6:
		if (name_is(name, nlen, "expect", 6) && strcasecmp(v, "100-continue") == 0)
			ex->expect_continue = true;
		break;
	case 10:
		if (name_is(name, nlen, "connection", 10))
			parse_connection(hi, v);
		break;
	case 12:
		if (name_is(name, nlen, "x-request-id", 12) && !ex->id[0] && valid_client_id(v))
			memcpy(ex->id, v, strlen(v) + 1);
		break;
	case 14:
		if (!name_is(name, nlen, "content-length", 14))
			break;
		if (hi->has_length)
			return fail(c, 400, "Duplicate Content-Length header.");
		hi->has_length = true;
		return parse_content_length(c, v);
	case 17:
		if (!name_is(name, nlen, "transfer-encoding", 17))
			break;
		if (hi->has_te)
			return fail(c, 400, "Duplicate Transfer-Encoding header.");
		hi->has_te = true;
		if (ex->http10)
			return fail(c, 400, "Transfer-Encoding in an HTTP/1.0 request.");
		if (strcasecmp(v, "chunked") != 0)
			return fail(c, 400, "Unsupported Transfer-Encoding.");
		break;
	}
	return 0;
}

static int add_hdr(struct conn *c, const char *name, const char *value)
{
	struct lg_exchange *ex = &c->ex;

	if (ex->nhdrs == c->hdrs_cap) {
		size_t cap = c->hdrs_cap ? c->hdrs_cap * 2 : 16;
		struct hdr *p = realloc(c->hdrs, cap * sizeof *p);

		if (!p)
			return fail(c, 503, "Out of memory.");
		c->hdrs = p;
		c->hdrs_cap = cap;
	}
	c->hdrs[ex->nhdrs].name = name;
	c->hdrs[ex->nhdrs].value = value;
	ex->nhdrs++;
	return 0;
}

/* One header line in [p, e), NUL-terminated in place. */
static int parse_field(struct conn *c, struct head_info *hi, char *p, char *e)
{
	char *name = p, *v;
	size_t nlen;
	int rc;

	while (p < e && is_tchar((unsigned char)*p))
		p++;
	/* Covers obs-fold (a leading blank), blanks before the colon and
	 * any other non-token byte in the name. */
	if (p == name || p == e || *p != ':')
		return fail(c, 400, "Malformed header line.");
	nlen = (size_t)(p - name);
	*p++ = '\0';
	while (p < e && is_ows(*p))
		p++;
	v = p;
	for (; p < e; p++)
		if (!is_field_char((unsigned char)*p))
			return fail(c, 400, "Invalid character in a header value.");
	while (p > v && is_ows(p[-1]))
		p--;
	*p = '\0';
	if (c->ex.nhdrs >= c->httpd->lim.max_headers)
		return fail(c, 431, "The request has too many headers.");
	rc = add_hdr(c, name, v);
	if (rc)
		return rc;
	return note_header(c, hi, name, nlen, v);
}

static int check_framing(struct conn *c, const struct head_info *hi)
{
	struct lg_exchange *ex = &c->ex;

	if (!ex->http10 && hi->hosts == 0)
		return fail(c, 400, "Missing Host header.");
	if (hi->has_te && hi->has_length)
		return fail(c, 400, "Both Transfer-Encoding and Content-Length.");
	if (hi->has_te)
		c->body_mode = BODY_CHUNKED;
	else if (c->content_length > 0)
		c->body_mode = BODY_LENGTH;
	c->body_complete = c->body_mode == BODY_NONE;
	ex->keep_alive = ex->http10 ? hi->conn_keep_alive && !hi->conn_close : !hi->conn_close;
	if (!ex->id[0])
		make_id(c->httpd, ex->id);
	return 0;
}

/* Splits [p, end) at the next LF; *e is the line's end without its CR. */
static char *next_line(char *p, char *end, char **e)
{
	char *nl = memchr(p, '\n', (size_t)(end - p));

	if (!nl)
		nl = end;
	*e = nl;
	if (*e > p && (*e)[-1] == '\r')
		(*e)--;
	return nl + 1;
}

/* Moves the header section (@hlen bytes) out of the input and parses it in
 * place. Returns 0 or an error status. */
static int parse_head(struct conn *c, size_t hlen)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct head_info hi = { 0 };
	size_t need = hlen + 1 + c->first_line + 1;
	char *p, *end, *e, *path;
	int rc;

	if (need > c->hcap) {
		char *nb = realloc(c->hbuf, need);

		if (!nb)
			return fail(c, 503, "Out of memory.");
		c->hbuf = nb;
		c->hcap = need;
	}
	if (evbuffer_remove(in, c->hbuf, hlen) != (int)hlen)
		return fail(c, 500, "Input buffer error.");
	c->hbuf[hlen] = '\0';
	path = c->hbuf + hlen + 1;
	end = c->hbuf + hlen;
	p = next_line(c->hbuf, end, &e);
	rc = parse_request_line(c, c->hbuf, e, path);
	if (rc)
		return rc;
	for (;;) {
		char *line = p;

		p = next_line(line, end, &e);
		if (e == line)
			break;
		rc = parse_field(c, &hi, line, e);
		if (rc)
			return rc;
	}
	return check_framing(c, &hi);
}

/* Drops CRLFs between requests (RFC 9112 2.2). Returns -1 on a bare CR. */
static int skip_blank_lines(struct evbuffer *in)
{
	for (;;) {
		unsigned char b[2];
		ev_ssize_t n = evbuffer_copyout(in, b, 2);

		if (n <= 0)
			return 0;
		if (b[0] == '\n') {
			(void)evbuffer_drain(in, 1);
		} else if (b[0] == '\r') {
			if (n < 2)
				return 0;
			if (b[1] != '\n')
				return -1;
			(void)evbuffer_drain(in, 2);
		} else {
			return 0;
		}
	}
}

/* ---- reading the body ---- */

static int body_reserve(struct conn *c, size_t need)
{
	size_t cap = c->body_cap ? c->body_cap : 4096;
	char *p;

	if (need + 1 <= c->body_cap)
		return 0;
	while (cap < need + 1)
		cap *= 2;
	/* A declared length is the most this body will need. */
	if (c->body_mode == BODY_LENGTH && c->content_length + 1 < cap)
		cap = (size_t)c->content_length + 1;
	p = realloc(c->body, cap);
	if (!p)
		return -1;
	c->body = p;
	c->body_cap = cap;
	return 0;
}

/* Moves up to @max body bytes from the input to the body buffer. */
static int take_body(struct conn *c, uint64_t max, size_t *took)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t n = evbuffer_get_length(in);

	if (n > max)
		n = (size_t)max;
	*took = n;
	if (!n)
		return 0;
	if (body_reserve(c, c->body_len + n) != 0)
		return fail(c, 503, "Out of memory.");
	if (evbuffer_remove(in, c->body + c->body_len, n) != (int)n)
		return fail(c, 500, "Input buffer error.");
	c->body_len += n;
	return 0;
}

/* The rest of a declared-length body skips the input buffer, which
 * libevent fills 4 KiB per loop turn: it goes from the socket straight into
 * the body buffer. EOF and errors are left for the bufferevent to report. */
static int recv_body(struct conn *c)
{
	evutil_socket_t fd = bufferevent_getfd(c->bev);

	while (c->body_len < c->content_length) {
		size_t want = (size_t)(c->content_length - c->body_len);
		ssize_t n;

		if (want > RECV_CHUNK)
			want = RECV_CHUNK;
		if (body_reserve(c, c->body_len + want) != 0)
			return fail(c, 503, "Out of memory.");
		n = recv(fd, c->body + c->body_len, want, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		c->body_len += (size_t)n;
		if ((size_t)n < want)   /* the socket is drained */
			break;
	}
	return 0;
}

/* Returns 1 when the body is complete, 0 for more, or an error status as a
 * negative number. */
static int read_length_body(struct conn *c)
{
	size_t took;
	int rc = take_body(c, c->content_length - c->body_len, &took);

	/* Only with the input buffer empty, or bytes would be reordered. */
	if (!rc && c->body_len < c->content_length)
		rc = recv_body(c);
	if (rc)
		return -rc;
	return c->body_len == c->content_length;
}

/* Reads one line of the chunked framing into @buf (without CR LF).
 * Returns 1 with *len set, 0 for more, or an error status as a negative
 * number. Scanning resumes where it stopped. */
static int read_chunk_line(struct conn *c, char *buf, size_t *len, int too_long)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	size_t total = evbuffer_get_length(in), eol_len, n;
	struct evbuffer_ptr start, found;

	if (c->line_scan >= total)
		return 0;
	if (evbuffer_ptr_set(in, &start, c->line_scan, EVBUFFER_PTR_SET) != 0)
		return -fail(c, 500, "Input buffer error.");
	found = evbuffer_search_eol(in, &start, &eol_len, EVBUFFER_EOL_LF);
	if (found.pos < 0) {
		c->line_scan = total;
		if (total > MAX_CHUNK_LINE)
			return -fail(c, too_long, "Chunk framing line too long.");
		return 0;
	}
	n = (size_t)found.pos;
	if (n > MAX_CHUNK_LINE)
		return -fail(c, too_long, "Chunk framing line too long.");
	if (evbuffer_remove(in, buf, n + 1) != (int)(n + 1))
		return -fail(c, 500, "Input buffer error.");
	c->line_scan = 0;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	buf[n] = '\0';
	*len = n;
	return 1;
}

static int parse_chunk_size(struct conn *c, const char *p, size_t len, uint64_t *size)
{
	const char *end = p + len;
	uint64_t v = 0;
	size_t digits = 0;

	for (; p < end && hexval((unsigned char)*p) >= 0; p++, digits++) {
		if (v > (UINT64_MAX >> 4))
			return fail(c, 400, "Chunk size overflows.");
		v = v * 16 + (uint64_t)hexval((unsigned char)*p);
	}
	if (!digits)
		return fail(c, 400, "Invalid chunk size.");
	while (p < end && is_ows(*p))
		p++;
	if (p < end && *p != ';')
		return fail(c, 400, "Invalid chunk size.");
	for (; p < end; p++)            /* extensions: ignored, but no controls */
		if (!is_field_char((unsigned char)*p))
			return fail(c, 400, "Invalid chunk extension.");
	*size = v;
	return 0;
}

static int check_trailer(struct conn *c, char *line, size_t len)
{
	const struct lg_httpd_limits *lim = &c->httpd->lim;
	size_t i = 0;

	c->trailer_bytes += len + 2;
	if (++c->trailer_count > lim->max_headers || c->trailer_bytes > lim->max_header_bytes)
		return fail(c, 431, "The request trailers are too large.");
	while (i < len && is_tchar((unsigned char)line[i]))
		i++;
	if (i == 0 || i == len || line[i] != ':')
		return fail(c, 400, "Malformed trailer line.");
	for (i++; i < len; i++)
		if (!is_field_char((unsigned char)line[i]))
			return fail(c, 400, "Invalid character in a trailer.");
	return 0;
}

static int read_chunked_body(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	char line[MAX_CHUNK_LINE + 2];
	size_t len, took;
	int rc;

	for (;;) {
		switch (c->chunk) {
		case CH_SIZE:
			rc = read_chunk_line(c, line, &len, 400);
			if (rc <= 0)
				return rc;
			rc = parse_chunk_size(c, line, len, &c->chunk_left);
			if (rc)
				return -rc;
			if (c->chunk_left == 0) {
				c->chunk = CH_TRAILER;
			} else if (c->chunk_left > c->body_limit - c->body_len) {
				/* Refused before its bytes are read. */
				return -fail(c, 413, "The request body is too large.");
			} else {
				c->chunk = CH_DATA;
			}
			break;
		case CH_DATA:
			rc = take_body(c, c->chunk_left, &took);
			if (rc)
				return -rc;
			c->chunk_left -= took;
			if (c->chunk_left)
				return 0;
			c->chunk = CH_DATA_END;
			break;
		case CH_DATA_END: {
			unsigned char b[2];
			ev_ssize_t n = evbuffer_copyout(in, b, 2);

			if (n <= 0 || (n == 1 && b[0] == '\r'))
				return 0;
			if (b[0] == '\n')
				(void)evbuffer_drain(in, 1);
			else if (b[0] == '\r' && b[1] == '\n')
				(void)evbuffer_drain(in, 2);
			else
				return -fail(c, 400, "Missing CRLF after chunk data.");
			c->chunk = CH_SIZE;
			break;
		}
		case CH_TRAILER:
			rc = read_chunk_line(c, line, &len, 431);
			if (rc <= 0)
				return rc;
			if (len == 0)
				return 1;
			rc = check_trailer(c, line, len);
			if (rc)
				return -rc;
			break;
		}
	}
}

/* ---- the request state machine ---- */

static void deliver(struct conn *c)
{
	struct lg_httpd *h = c->httpd;

	if (c->body)
		c->body[c->body_len] = '\0';
	c->body_complete = true;
	c->rstate = R_EXCHANGE;
	c->deadline = 0;
	c->ex.delivered = true;
	h->h.on_request(&c->ex, h->arg);
}

static void send_continue(struct conn *c)
{
	static const char line[] = "HTTP/1.1 100 Continue\r\n\r\n";

	if (evbuffer_add(bufferevent_get_output(c->bev), line, sizeof line - 1) != 0) {
		write_failed(c, "100 Continue: out of memory");
		return;
	}
	flush_out(c);
}

/* The headers are parsed: on_head decides the body limit, or answers. */
static void begin_exchange(struct conn *c)
{
	struct lg_exchange *ex = &c->ex;
	struct lg_httpd *h = c->httpd;
	size_t limit = 0;

	ex->reached_head = true;
	h->busy++;
	if (h->h.on_head)
		limit = h->h.on_head(ex, h->arg);
	if (ex->started) {
		/* Answered already (e.g. 404): the body is never read, so
		 * the reply said "Connection: close" if there was one. */
		ex->delivered = true;
		c->rstate = R_EXCHANGE;
		c->deadline = 0;
		if (c->body_mode != BODY_NONE)
			c->discard_input = true;
		return;
	}
	c->body_limit = limit ? limit : h->lim.max_body_bytes;
	if (c->body_mode == BODY_NONE) {
		deliver(c);
		return;
	}
	if (c->body_mode == BODY_LENGTH && c->content_length > c->body_limit) {
		httpd_answer(c, 413, "The request body is too large.");
		return;
	}
	c->rstate = R_BODY;
	c->deadline = deadline_in(h->lim.body_timeout_ms);
	if (ex->expect_continue && !ex->http10 &&
	    evbuffer_get_length(bufferevent_get_input(c->bev)) == 0)
		send_continue(c);
}

static void start_head(struct conn *c)
{
	c->rstate = R_HEAD;
	c->deadline = deadline_in(c->httpd->lim.header_timeout_ms);
	c->scan_off = c->scan_line = c->scan_lines = c->first_line = 0;
	c->scan_last = 0;
}

/* Runs the state machine over what the input holds. Returns true if @c
 * was freed (it never is today; callers still respect it). */
static bool process_input(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	unsigned char first;
	size_t hlen;
	int rc;

	for (;;) {
		switch (c->rstate) {
		case R_IDLE:
			if (skip_blank_lines(in) < 0) {
				protocol_error(c, 400, "Bare CR in the request.");
				break;
			}
			if (evbuffer_copyout(in, &first, 1) != 1)
				goto out;
			start_head(c);
			if (!is_tchar(first))
				protocol_error(c, 400, "Malformed request line.");
			break;
		case R_HEAD:
			rc = scan_head(c, &hlen);
			if (rc == 0)
				goto out;
			if (rc != 1) {
				protocol_error(c, rc, c->why);
				break;
			}
			rc = parse_head(c, hlen);
			if (rc) {
				protocol_error(c, rc, c->why);
				break;
			}
			begin_exchange(c);
			break;
		case R_BODY:
			rc = c->body_mode == BODY_LENGTH ? read_length_body(c) : read_chunked_body(c);
			if (rc == 0)
				goto out;
			if (rc < 0) {
				httpd_answer(c, -rc, c->why);
				break;
			}
			deliver(c);
			break;
		case R_EXCHANGE:
		case R_LINGER:
			/* Pipelined input waits; after a refusal it is dropped. */
			if (c->discard_input)
				(void)evbuffer_drain(in, evbuffer_get_length(in));
			goto out;
		}
	}
out:
	timer_sync(c);
	return false;
}

/* ---- bufferevent callbacks ---- */

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	(void)process_input(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct lg_exchange *ex = &c->ex;
	struct evbuffer *out = bufferevent_get_output(bev);

	if (ex->paused && evbuffer_get_length(out) <= c->httpd->lim.stream_high_water / 2) {
		ex->paused = false;
		if (ex->drain_cb && !ex_gone(ex) && !ex->answered)
			ex->drain_cb(ex, ex->cb_arg);
	}
	if (evbuffer_get_length(out) > 0 || c->write_failed)
		return;
	if (c->write_on) {
		if (bufferevent_disable(bev, EV_WRITE) != 0)
			lg_error(COMP, "%s: cannot stop watching for writes", c->peer);
		c->write_on = false;
	}
	(void)conn_advance(c);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	(void)bev;
	if (what & BEV_EVENT_TIMEOUT)
		lg_log(LG_LOG_DEBUG, COMP, c->ex.id[0] ? c->ex.id : NULL, "%s: write timeout",
		       c->peer);
	if (c->rstate == R_LINGER) {
		conn_free(c);
		return;
	}
	(void)client_left(c);
}

/* ---- accepting ---- */

static struct conn *conn_new(struct lg_httpd *h, evutil_socket_t fd, const struct sockaddr *sa)
{
	const struct lg_httpd_limits *lim = &h->lim;
	struct conn *c = calloc(1, sizeof *c);
	int one = 1;

	if (!c) {
		evutil_closesocket(fd);
		return NULL;
	}
	c->httpd = h;
	c->ex.conn = c;
	format_peer(c->peer, sizeof c->peer, sa);
	/* Replies leave in one write and stream events must not wait for
	 * an ACK: no Nagle. */
	if ((sa->sa_family == AF_INET || sa->sa_family == AF_INET6) &&
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
		lg_debug(COMP, "%s: TCP_NODELAY: %s", c->peer, strerror(errno));
	c->timer = event_new(h->base, -1, 0, conn_timer_cb, c);
	if (!c->timer)
		goto fail;
	c->bev = bufferevent_socket_new(h->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev)
		goto fail;
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, lim->max_header_bytes + READ_SLACK);
	bufferevent_setwatermark(c->bev, EV_WRITE, lim->stream_high_water / 2, 0);
	if (lim->write_timeout_ms) {
		struct timeval tv = { .tv_sec = lim->write_timeout_ms / 1000,
				      .tv_usec = (suseconds_t)(lim->write_timeout_ms % 1000) * 1000 };

		if (bufferevent_set_timeouts(c->bev, NULL, &tv) != 0)
			goto fail_bev;
	}
	/* A bufferevent starts with writing enabled: every reply would then
	 * schedule a write event although it usually leaves at once. The
	 * write event is only for what the kernel did not take. */
	if (bufferevent_disable(c->bev, EV_WRITE) != 0 || bufferevent_enable(c->bev, EV_READ) != 0)
		goto fail_bev;
	c->next = h->conns;
	if (h->conns)
		h->conns->prev = c;
	h->conns = c;
	h->nconns++;
	/* A new connection gets the header deadline for its first byte. */
	c->rstate = R_IDLE;
	c->deadline = deadline_in(lim->header_timeout_ms ? lim->header_timeout_ms
							 : lim->idle_timeout_ms);
	timer_sync(c);
	return c;
fail_bev:
	bufferevent_free(c->bev);       /* closes @fd */
	event_free(c->timer);
	free(c);
	return NULL;
fail:
	if (c->timer)
		event_free(c->timer);
	free(c);
	evutil_closesocket(fd);
	return NULL;
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct lg_httpd *h = arg;

	(void)l;
	(void)salen;
	if (!conn_new(h, fd, sa)) {     /* it closed @fd */
		lg_error(COMP, "cannot set up a new connection: out of memory");
		return;
	}
	listener_update(h);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
	struct lg_httpd *h = arg;

	(void)fd;
	(void)what;
	h->backoff = false;
	listener_update(h);
}

static void on_accept_error(struct evconnlistener *l, void *arg)
{
	struct lg_httpd *h = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { .tv_sec = 0, .tv_usec = ACCEPT_RETRY_MS * 1000 };

	(void)l;
	/* Out of descriptors or memory: the socket stays readable, so
	 * pause instead of spinning on accept(). */
	lg_error(COMP, "accept: %s; pausing accepts for %u ms", evutil_socket_error_to_string(err),
		 ACCEPT_RETRY_MS);
	h->backoff = true;
	listener_update(h);
	if (evtimer_add(h->retry, &tv) != 0) {
		lg_error(COMP, "cannot arm the accept retry timer");
		h->backoff = false;
		listener_update(h);
	}
}

/* ---- the httpd ---- */

static void apply_defaults(struct lg_httpd_limits *lim)
{
	if (!lim->max_header_bytes)
		lim->max_header_bytes = DEF_MAX_HEADER_BYTES;
	if (!lim->max_headers)
		lim->max_headers = DEF_MAX_HEADERS;
	if (!lim->max_body_bytes)
		lim->max_body_bytes = DEF_MAX_BODY_BYTES;
	if (!lim->stream_high_water)
		lim->stream_high_water = DEF_STREAM_HIGH_WATER;
}

struct lg_httpd *lg_httpd_new(struct event_base *base, int listen_fd,
			      const struct lg_httpd_limits *limits,
			      const struct lg_httpd_handlers *handlers, void *arg)
{
	struct lg_httpd *h;
	unsigned char rnd[ID_HEX / 4];

	if (!base || listen_fd < 0 || !limits || !handlers || !handlers->on_request) {
		lg_error(COMP, "lg_httpd_new: missing argument");
		return NULL;
	}
	if (sodium_init() < 0) {
		lg_error(COMP, "libsodium cannot be initialised");
		return NULL;
	}
	h = calloc(1, sizeof *h);
	if (!h)
		return NULL;
	h->base = base;
	h->lim = *limits;
	apply_defaults(&h->lim);
	h->h = *handlers;
	h->arg = arg;
	randombytes_buf(rnd, sizeof rnd);
	if (!sodium_bin2hex(h->id_prefix, sizeof h->id_prefix, rnd, sizeof rnd))
		goto fail;
	h->retry = evtimer_new(base, on_accept_retry, h);
	if (!h->retry)
		goto fail;
	/* No LEV_OPT_CLOSE_ON_FREE: the socket is the caller's. Backlog 0:
	 * it is listening already. */
	h->listener = evconnlistener_new(base, on_accept, h, LEV_OPT_CLOSE_ON_EXEC, 0, listen_fd);
	if (!h->listener) {
		lg_error(COMP, "cannot accept on socket %d", listen_fd);
		goto fail;
	}
	evconnlistener_set_error_cb(h->listener, on_accept_error);
	h->listening = true;
	listener_update(h);
	return h;
fail:
	if (h->retry)
		event_free(h->retry);
	free(h);
	return NULL;
}

void lg_httpd_stop_accepting(struct lg_httpd *h)
{
	struct conn *c, *next;

	h->stopping = true;
	if (h->listener) {
		evconnlistener_free(h->listener);
		h->listener = NULL;
		h->listening = false;
	}
	if (event_del(h->retry) != 0)
		lg_error(COMP, "cannot cancel the accept retry timer");
	for (c = h->conns; c; c = next) {
		next = c->next;
		if (c->rstate == R_IDLE || c->rstate == R_LINGER)
			conn_free(c);
	}
}

size_t lg_httpd_busy(const struct lg_httpd *h) { return h->busy; }
size_t lg_httpd_connections(const struct lg_httpd *h) { return h->nconns; }

void lg_httpd_free(struct lg_httpd *h)
{
	if (!h)
		return;
	lg_httpd_stop_accepting(h);
	while (h->conns) {
		struct conn *c = h->conns;
		struct lg_exchange *ex = &c->ex;

		if (ex->reached_head) {
			bool complete = c->bev && exchange_complete(c);

			if (c->bev)
				socket_close(c);
			ex->client_gone = true;
			if (!complete)
				notify_close(ex);
			ex->reached_head = false;
			h->busy--;
			if (h->h.on_done)
				h->h.on_done(ex, ex->status, ex->bytes, h->arg);
		}
		conn_free(c);
	}
	event_free(h->retry);
	free(h);
}

/* ---- reading an exchange ---- */

const char *lg_exchange_method(const struct lg_exchange *ex) { return ex->method; }
const char *lg_exchange_target(const struct lg_exchange *ex) { return ex->target; }
const char *lg_exchange_path(const struct lg_exchange *ex) { return ex->path; }
const char *lg_exchange_query(const struct lg_exchange *ex) { return ex->query; }
const char *lg_exchange_id(const struct lg_exchange *ex) { return ex->id; }
const char *lg_exchange_peer(const struct lg_exchange *ex) { return ex->conn->peer; }
bool lg_exchange_client_gone(const struct lg_exchange *ex) { return ex_gone(ex); }
void lg_exchange_set_data(struct lg_exchange *ex, void *data) { ex->data = data; }
void *lg_exchange_get_data(const struct lg_exchange *ex) { return ex->data; }
size_t lg_exchange_header_count(const struct lg_exchange *ex) { return ex->nhdrs; }

const char *lg_exchange_header(const struct lg_exchange *ex, const char *name)
{
	const struct hdr *hs = ex->conn->hdrs;

	for (size_t i = 0; i < ex->nhdrs; i++)
		if (strcasecmp(hs[i].name, name) == 0)
			return hs[i].value;
	return NULL;
}

void lg_exchange_header_at(const struct lg_exchange *ex, size_t i, const char **name,
			   const char **value)
{
	const struct hdr *hs = ex->conn->hdrs;

	*name = i < ex->nhdrs ? hs[i].name : NULL;
	*value = i < ex->nhdrs ? hs[i].value : NULL;
}

struct lg_str lg_exchange_body(const struct lg_exchange *ex)
{
	const struct conn *c = ex->conn;

	return (struct lg_str){ .ptr = c->body && c->body_len ? c->body : "", .len = c->body_len };
}
