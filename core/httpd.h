/* SPDX-License-Identifier: Apache-2.0 */
/* The HTTP/1.1 protocol layer of one worker: accepts connections on a
 * listening socket, parses requests strictly, enforces sizes and absolute
 * deadlines, and writes whole or chunked (streamed) replies.
 *
 * It is our own rather than libevent's evhttp because evhttp 2.1 accepts
 * ambiguous framing (duplicate Content-Length, "+3", "Transfer-Encoding :",
 * NUL, obs-fold), has only inactivity timeouts, and stops reading after a
 * request so it notices a client that left only when it writes. See
 * docs/architecture.md.
 *
 * An exchange is one request and its reply. It belongs to the httpd; the
 * handler answers it exactly once (reply, reply_error or a stream that
 * ends). If the client leaves first, the close callback runs and the
 * exchange stays valid until the handler has answered (the answer is then
 * discarded), so accounting can finish. After the done callback the
 * exchange is freed. */
#ifndef LG_HTTPD_H
#define LG_HTTPD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <llmgate/http.h>

struct lg_httpd;
struct lg_exchange;

struct lg_httpd_limits {
	size_t max_header_bytes;     /* request line + headers; 431 beyond */
	size_t max_headers;          /* count; 431 beyond */
	size_t max_body_bytes;       /* default body limit; 413 beyond */
	uint32_t header_timeout_ms;  /* absolute, from the request's first byte */
	uint32_t body_timeout_ms;    /* absolute, from the end of the headers */
	uint32_t idle_timeout_ms;    /* keep-alive wait for the next request */
	uint32_t write_timeout_ms;   /* no progress writing to the client */
	size_t max_connections;      /* per worker; further accepts wait */
	size_t stream_high_water;    /* queued stream bytes that mean "pause" */
};

struct lg_httpd_handlers {
	/* The headers are complete: return the body limit for this request
	 * (0: the default). May answer already (e.g. 404) and return 0. */
	size_t (*on_head)(struct lg_exchange *ex, void *arg);
	/* The whole request is here: answer it. */
	void (*on_request)(struct lg_exchange *ex, void *arg);
	/* The exchange ends (sent, or the client left); free what hangs on it.
	 * @status is the status sent (0 if none), @bytes the body bytes sent. */
	void (*on_done)(struct lg_exchange *ex, int status, uint64_t bytes, void *arg);
};

/* Serves @listen_fd (a listening, non-blocking socket; the httpd does not
 * close it) on @base. Thread: the worker that runs @base. */
struct lg_httpd *lg_httpd_new(struct event_base *base, int listen_fd,
			      const struct lg_httpd_limits *limits,
			      const struct lg_httpd_handlers *h, void *arg);
/* Stops accepting; idle keep-alive connections are closed now and busy ones
 * after their reply ("Connection: close"). */
void lg_httpd_stop_accepting(struct lg_httpd *h);
/* Exchanges not yet done. */
size_t lg_httpd_busy(const struct lg_httpd *h);
/* Open connections. */
size_t lg_httpd_connections(const struct lg_httpd *h);
/* Closes every connection (exchanges get their close and done callbacks). */
void lg_httpd_free(struct lg_httpd *h);

/* ---- reading an exchange ---- */
const char *lg_exchange_method(const struct lg_exchange *ex);
const char *lg_exchange_target(const struct lg_exchange *ex);   /* raw request-target */
const char *lg_exchange_path(const struct lg_exchange *ex);     /* percent-decoded, no query */
const char *lg_exchange_query(const struct lg_exchange *ex);    /* raw query string or NULL */
/* Case-insensitive; the value without surrounding blanks, or NULL. */
const char *lg_exchange_header(const struct lg_exchange *ex, const char *name);
size_t lg_exchange_header_count(const struct lg_exchange *ex);
void lg_exchange_header_at(const struct lg_exchange *ex, size_t i,
			   const char **name, const char **value);
struct lg_str lg_exchange_body(const struct lg_exchange *ex);
/* The client's X-Request-Id if it is 1-64 of [A-Za-z0-9._-], else a new one. */
const char *lg_exchange_id(const struct lg_exchange *ex);
const char *lg_exchange_peer(const struct lg_exchange *ex);     /* "127.0.0.1:5555" */
bool lg_exchange_client_gone(const struct lg_exchange *ex);
void lg_exchange_set_data(struct lg_exchange *ex, void *data);
void *lg_exchange_get_data(const struct lg_exchange *ex);

/* ---- answering ---- */
/* Before the reply starts. Copied. -EINVAL on CR, LF, NUL or a header the
 * httpd owns (Content-Length, Transfer-Encoding, Connection). */
int lg_exchange_add_header(struct lg_exchange *ex, const char *name, const char *value);
void lg_exchange_reply(struct lg_exchange *ex, int status, const char *content_type,
		       const char *body, size_t len);
/* {"detail": msg, "error": {"message": msg, "type": <by status>, "code": status}} */
void lg_exchange_reply_error(struct lg_exchange *ex, int status, const char *message);
int lg_exchange_stream_start(struct lg_exchange *ex, int status, const char *content_type);
/* Returns the bytes queued for the client after this write, or -1 if the
 * client is gone. */
long lg_exchange_stream_write(struct lg_exchange *ex, const char *data, size_t len);
void lg_exchange_stream_end(struct lg_exchange *ex);
/* @close: the client left before the reply was complete.
 * @drain: queued stream output fell below half the high-water mark. */
void lg_exchange_set_callbacks(struct lg_exchange *ex,
			       void (*close)(struct lg_exchange *ex, void *arg),
			       void (*drain)(struct lg_exchange *ex, void *arg), void *arg);

/* The JSON error body of DESIGN §7, for callers that build replies. Returns
 * a malloc'ed string (caller frees) or NULL. */
char *lg_error_body(int status, const char *message);

#endif
