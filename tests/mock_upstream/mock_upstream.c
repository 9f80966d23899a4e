/* SPDX-License-Identifier: Apache-2.0 */
/*
 * mock-upstream: an OpenAI-compatible upstream for llmgate's tests.
 *
 *   mock-upstream [--host 127.0.0.1] [--port 0] [--model NAME]... [--dim 8]
 *                 [--context 8192] [--event-delay-ms 0]
 *
 * Prints one line "listening on HOST:PORT" on stdout once it accepts
 * connections, then serves until SIGTERM or SIGINT (exit status 0).
 *
 * It speaks HTTP/1.1 itself on bufferevents (keep-alive, Content-Length and
 * chunked request bodies, Expect: 100-continue) so that faults can be exact:
 * a reset is a real TCP RST, a stall really sends nothing more.
 *
 * Endpoints (what a vLLM / OpenAI / TEI server would answer):
 *   GET  /health                  200, empty body
 *   GET  /metrics                 vllm:num_requests_running / _waiting gauges
 *   GET  /v1/models[/ID]          the --model names (default mock-chat,
 *                                 mock-embed), with max_model_len and
 *                                 max_context_length = --context
 *   GET  /info                    TEI-style info about the first model
 *   POST /v1/chat/completions     "Mock reply to: <last user message, first
 *                                 200 bytes>", words joined by single spaces
 *   POST /v1/completions          "Mock completion for: <prompt, 200 bytes>"
 *   POST /v1/embeddings           unit vectors of --dim (or "dimensions")
 *                                 derived from a hash of each input
 *   POST /v1/rerank, /rerank      TEI {query, texts} -> [{index, score}];
 *                                 {query, documents} -> {results: [{index,
 *                                 relevance_score}]}; score = share of the
 *                                 query's words found in the text
 *   POST /v1/audio/transcriptions multipart with a "file" part ->
 *                                 {"text": "mock transcription"}
 * Tokens are words (runs of non-space characters): prompt_tokens counts the
 * words of every message (or prompt, or input), completion_tokens the words of
 * the reply; max_tokens / max_completion_tokens cut the reply (finish_reason
 * "length"). A model that is not in --model is answered 404, as vLLM does.
 * Streams send a role chunk (chat), one chunk per word, a chunk with the
 * finish_reason, a usage chunk when stream_options.include_usage is true,
 * then "data: [DONE]", --event-delay-ms apart.
 *
 * Control endpoints (never counted in stats, never subject to faults; a
 * connection whose first request is a control request is not counted either):
 *   POST /__mock/fault   {"mode": M, "count": 1, ...params}; count -1 = until
 *                        reset. Optional "path": only requests to that path
 *                        (by default every path but /health and /metrics).
 *                        Optional "event_delay_ms" for the affected requests.
 *   POST /__mock/config  {"event_delay_ms", "metrics_running",
 *                        "metrics_waiting"} until reset
 *   POST /__mock/reset   clears faults, config, counters and recorded requests
 *   GET  /__mock/stats   requests, by_path, connections_opened/_closed,
 *                        open_connections, aborted (responses the client left
 *                        before their end), last_request (not /health nor
 *                        /metrics), last_by_path, fault
 *
 * Fault modes: status (status, body, retry_after, headers, content_type),
 * delay (ms, default 1000), reset_after (events, default 1), stall (events,
 * default 1), malformed (variant: line|json|both), error_event (message, type,
 * code), big_event (bytes, default 10 MB), endless (interval_ms, default 10),
 * redirect (location, status). Non-stream replies get the closest meaning:
 * malformed = invalid JSON body, error_event = 200 with an error object,
 * big_event = a "mock_padding" member of that many bytes, endless = a chunked
 * body of blanks that never ends, reset_after/stall act after the headers.
 */
#include <ctype.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <jansson.h>

#define MAX_HEAD_BYTES (64 * 1024)
#define MAX_HEADERS 200
#define MAX_BODY_BYTES (64 * 1024 * 1024)
#define MAX_RECORDED_BODY (1024 * 1024)
#define MAX_MODELS 32
#define MAX_DIM 65536
#define ECHO_BYTES 200
/* An endless stream skips ticks while this much is still unsent. */
#define ENDLESS_BACKLOG (1024 * 1024)
#define MODEL_CREATED 1700000000

enum fault_mode {
	FAULT_NONE,
	FAULT_STATUS,
	FAULT_DELAY,
	FAULT_RESET_AFTER,
	FAULT_STALL,
	FAULT_MALFORMED,
	FAULT_ERROR_EVENT,
	FAULT_BIG_EVENT,
	FAULT_ENDLESS,
	FAULT_REDIRECT,
};

static const char *const fault_names[] = {
	[FAULT_NONE] = "none",
	[FAULT_STATUS] = "status",
	[FAULT_DELAY] = "delay",
	[FAULT_RESET_AFTER] = "reset_after",
	[FAULT_STALL] = "stall",
	[FAULT_MALFORMED] = "malformed",
	[FAULT_ERROR_EVENT] = "error_event",
	[FAULT_BIG_EVENT] = "big_event",
	[FAULT_ENDLESS] = "endless",
	[FAULT_REDIRECT] = "redirect",
};

struct options {
	const char *host;
	int port;
	const char *models[MAX_MODELS];
	int n_models;
	int dim;
	int context;
	int event_delay_ms;
};

struct fault {
	enum fault_mode mode;
	long remaining;            /* requests it still applies to; -1: until reset */
	json_t *params;            /* the POST /__mock/fault body */
};

struct stats {
	long requests;
	long opened;
	long closed;
	long aborted;
	json_t *by_path;           /* path -> count */
	json_t *last_by_path;      /* path -> last request seen there */
	json_t *last_request;      /* last request but probes, or NULL */
};

struct conn;

struct mock {
	struct options opt;
	struct event_base *base;
	struct evconnlistener *listener;
	struct event *sig_term;
	struct event *sig_int;
	struct conn *conns;        /* every open connection */
	unsigned long next_id;
	unsigned long epoch;       /* bumped by reset: older connections are not counted */
	/* What tests change through /__mock/config, until reset. */
	int event_delay_ms;
	long metrics_running;      /* -1: the live value */
	long metrics_waiting;
	struct fault fault;
	struct stats stats;
};

enum parse_state {
	PS_LINE,
	PS_HEADERS,
	PS_BODY,
	PS_CHUNK_SIZE,
	PS_CHUNK_DATA,
	PS_CHUNK_END,
	PS_TRAILERS,
	PS_DONE,
};

struct request {
	enum parse_state state;
	char *method;
	char *target;
	char *path;                /* target without its query */
	int minor;                 /* HTTP/1.minor */
	json_t *headers;           /* lower-case name -> value */
	size_t head_bytes;
	int n_headers;
	struct evbuffer *body;
	uint64_t remaining;        /* body or chunk bytes still to read */
	bool keep_alive;
	int error;                 /* the status to answer when parsing failed */
};

enum kind { KIND_OTHER, KIND_CHAT, KIND_COMPLETION };

struct frame {
	char *data;
	size_t len;
};

/* A response before it is sent. */
struct reply {
	int status;
	const char *content_type;
	json_t *headers;           /* extra response headers, or NULL */
	json_t *json;              /* the body as JSON, serialised when sent */
	char *body;
	size_t body_len;
	bool stream;
	struct frame *events;      /* complete SSE frames */
	size_t n_events;
	/* What a stream chunk is made of, for endless and big events. */
	enum kind kind;
	char *id;
	char *model;
	long long created;
	bool include_usage;
};

enum phase { PH_START, PH_EVENTS, PH_ENDLESS, PH_STALLED };

/* A response being sent. */
struct exchange {
	struct reply r;
	enum fault_mode fault;
	json_t *params;
	enum phase phase;
	long delay_ms;             /* before the first byte */
	long event_delay_ms;       /* between events */
	long interval_ms;          /* between endless ticks */
	size_t next;               /* next event to send */
	size_t limit;              /* events to send before the fault acts */
	unsigned long ticks;
	bool keep_alive;
};

struct conn {
	struct mock *m;
	struct conn *prev;
	struct conn *next;
	struct bufferevent *bev;
	struct event *timer;       /* delays, stream pacing, deferred close */
	struct request req;        /* being parsed */
	struct exchange *x;        /* the response in progress, if any */
	unsigned long served;
	unsigned long epoch;
	bool control;
	bool peer_eof;
	bool closing;              /* close once the output is written */
	bool resetting;            /* ... with a TCP reset */
	bool dead;                 /* freed by the timer at the next loop turn */
};

struct route {
	const char *method;
	const char *path;
	bool prefix;
	bool json_body;
	int (*fn)(struct mock *m, const struct request *q, json_t *body, struct reply *r);
};

static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fputs("mock-upstream: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Small text and JSON helpers                                         */

static const char *reason_phrase(int status)
{
	switch (status) {
	case 100: return "Continue";
	case 200: return "OK";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 303: return "See Other";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 413: return "Content Too Large";
	case 422: return "Unprocessable Content";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	default: return "Mock Status";
	}
}

/* jansson takes UTF-8 only: bytes of anything else are shown as '?'. */
static json_t *json_string_lossy(const char *s, size_t len)
{
	json_t *j = json_stringn(s, len);
	char *copy;

	if (j)
		return j;
	copy = malloc(len + 1);
	if (!copy)
		return NULL;
	for (size_t i = 0; i < len; i++)
		copy[i] = (unsigned char)s[i] >= 0x80 ? '?' : s[i];
	j = json_stringn(copy, len);
	free(copy);
	return j;
}

static long param_int(const json_t *params, const char *key, long def)
{
	const json_t *v = json_object_get(params, key);

	if (json_is_integer(v))
		return (long)json_integer_value(v);
	if (json_is_real(v))
		return (long)json_real_value(v);
	return def;
}

static const char *param_str(const json_t *params, const char *key, const char *def)
{
	const char *v = json_string_value(json_object_get(params, key));

	return v ? v : def;
}

static long count_words(const char *s)
{
	long n = 0;
	bool in_word = false;

	for (; *s; s++) {
		bool space = isspace((unsigned char)*s);

		if (!space && !in_word)
			n++;
		in_word = !space;
	}
	return n;
}

struct word {
	const char *s;
	size_t len;
};

/* Splits @s at white space; the words point into @s. Returns -1 on OOM. */
static long split_words(const char *s, struct word **out)
{
	long n = count_words(s), i = 0;
	struct word *w;

	*out = NULL;
	if (n == 0)
		return 0;
	w = calloc((size_t)n, sizeof *w);
	if (!w)
		return -1;
	while (*s) {
		while (*s && isspace((unsigned char)*s))
			s++;
		if (!*s)
			break;
		w[i].s = s;
		while (*s && !isspace((unsigned char)*s))
			s++;
		w[i].len = (size_t)(s - w[i].s);
		i++;
	}
	*out = w;
	return n;
}

/* The length of at most @max bytes of @s that does not cut a UTF-8 sequence. */
static size_t utf8_prefix(const char *s, size_t max)
{
	size_t len = strlen(s);

	if (len <= max)
		return len;
	while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
		max--;
	return max;
}

/* Message content is a string or a list of parts; text parts are joined. */
static char *content_text(const json_t *content)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f;
	size_t i;
	json_t *part;

	if (json_is_string(content))
		return strdup(json_string_value(content));
	f = open_memstream(&text, &len);
	if (!f)
		return NULL;
	json_array_foreach(content, i, part) {
		const char *t = json_string_value(json_object_get(part, "text"));

		/* The flush updates len, which says whether a blank goes first. */
		if (t && (fprintf(f, "%s%s", len ? " " : "", t) < 0 || fflush(f) != 0))
			break;
	}
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

static bool model_known(const struct mock *m, const char *model)
{
	for (int i = 0; i < m->opt.n_models; i++)
		if (strcmp(m->opt.models[i], model) == 0)
			return true;
	return false;
}

static bool is_probe_path(const char *path)
{
	return strcmp(path, "/health") == 0 || strcmp(path, "/metrics") == 0;
}

/* ------------------------------------------------------------------ */
/* Replies                                                             */

static void reply_release(struct reply *r)
{
	json_decref(r->headers);
	json_decref(r->json);
	free(r->body);
	for (size_t i = 0; i < r->n_events; i++)
		free(r->events[i].data);
	free(r->events);
	free(r->id);
	free(r->model);
	memset(r, 0, sizeof *r);
}

static int reply_error(struct reply *r, int status, const char *type, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* An OpenAI-style error; vLLM also puts the status in "code". */
static int reply_error(struct reply *r, int status, const char *type, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	json_decref(r->json);
	r->json = json_pack("{s:{s:s,s:s,s:n,s:i}}", "error", "message", msg, "type", type,
			    "param", "code", status);
	r->status = status;
	r->stream = false;
	r->content_type = "application/json";
	return r->json ? 0 : -1;
}

static int reply_header(struct reply *r, const char *name, const char *value)
{
	if (!r->headers) {
		r->headers = json_object();
		if (!r->headers)
			return -1;
	}
	return json_object_set_new(r->headers, name, json_string_lossy(value, strlen(value)));
}

/* Takes @data (malloc'd) and puts it at @pos among the events. */
static int reply_insert_frame(struct reply *r, size_t pos, char *data, size_t len)
{
	struct frame *grown;

	if (!data)
		return -1;
	grown = realloc(r->events, (r->n_events + 1) * sizeof *grown);
	if (!grown) {
		free(data);
		return -1;
	}
	r->events = grown;
	if (pos > r->n_events)
		pos = r->n_events;
	memmove(&grown[pos + 1], &grown[pos], (r->n_events - pos) * sizeof *grown);
	grown[pos].data = data;
	grown[pos].len = len;
	r->n_events++;
	return 0;
}

static int reply_insert_text(struct reply *r, size_t pos, const char *text)
{
	char *data = strdup(text);

	return reply_insert_frame(r, pos, data, data ? strlen(data) : 0);
}

/* Takes @obj and puts "data: <obj>" at @pos. */
static int reply_insert_json(struct reply *r, size_t pos, json_t *obj)
{
	char *text, *data;
	int len;

	if (!obj)
		return -1;
	text = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (!text)
		return -1;
	len = asprintf(&data, "data: %s\n\n", text);
	free(text);
	if (len < 0)
		return -1;
	return reply_insert_frame(r, pos, data, (size_t)len);
}

static int reply_add_json(struct reply *r, json_t *obj)
{
	return reply_insert_json(r, r->n_events, obj);
}

/* One chunk of a chat or text completion stream. */
static json_t *chunk_new(const struct reply *r, const char *content, size_t len, bool role,
			 const char *finish)
{
	json_t *chunk;

	if (r->kind == KIND_CHAT) {
		json_t *delta;

		if (role)
			delta = json_pack("{s:s,s:s%}", "role", "assistant", "content", content,
					  len);
		else if (content)
			delta = json_pack("{s:s%}", "content", content, len);
		else
			delta = json_object();
		chunk = json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:o,s:n,s:s?}]}", "id", r->id,
				  "object", "chat.completion.chunk", "created", r->created,
				  "model", r->model, "choices", "index", 0, "delta", delta,
				  "logprobs", "finish_reason", finish);
	} else {
		chunk = json_pack("{s:s,s:s,s:I,s:s,s:[{s:s%,s:i,s:n,s:s?}]}", "id", r->id,
				  "object", "text_completion", "created", r->created,
				  "model", r->model, "choices", "text", content ? content : "",
				  content ? len : 0, "index", 0, "logprobs", "finish_reason",
				  finish);
	}
	/* With include_usage, every chunk but the last carries "usage": null. */
	if (chunk && r->include_usage && json_object_set_new(chunk, "usage", json_null()) < 0) {
		json_decref(chunk);
		return NULL;
	}
	return chunk;
}

/* ------------------------------------------------------------------ */
/* Text generation: chat and completions                               */

struct gen {
	const char *model;
	const char *echo;          /* the text the reply repeats */
	long prompt_tokens;
	long max_tokens;           /* 0: no limit */
	bool stream;
	bool include_usage;
};

static int usage_add(json_t *obj, long prompt, long completion)
{
	return json_object_set_new(obj, "usage", json_pack("{s:I,s:I,s:I}",
			"prompt_tokens", (json_int_t)prompt, "completion_tokens",
			(json_int_t)completion, "total_tokens", (json_int_t)(prompt + completion)));
}

static char *join_words(const struct word *w, long n)
{
	size_t len = 0, at = 0;
	char *text;

	for (long i = 0; i < n; i++)
		len += w[i].len + 1;
	text = malloc(len + 1);
	if (!text)
		return NULL;
	for (long i = 0; i < n; i++) {
		if (i)
			text[at++] = ' ';
		memcpy(text + at, w[i].s, w[i].len);
		at += w[i].len;
	}
	text[at] = '\0';
	return text;
}

static json_t *completion_object(const struct reply *r, const char *text, const char *finish)
{
	if (r->kind == KIND_CHAT)
		return json_pack("{s:s,s:s,s:I,s:s,s:[{s:i,s:{s:s,s:s},s:n,s:s}]}", "id", r->id,
				 "object", "chat.completion", "created", r->created,
				 "model", r->model, "choices", "index", 0, "message", "role",
				 "assistant", "content", text, "logprobs", "finish_reason", finish);
	return json_pack("{s:s,s:s,s:I,s:s,s:[{s:s,s:i,s:n,s:s}]}", "id", r->id,
			 "object", "text_completion", "created", r->created, "model", r->model,
			 "choices", "text", text, "index", 0, "logprobs", "finish_reason", finish);
}

static int stream_events(struct reply *r, const struct word *w, long n, const char *finish,
			 long prompt_tokens)
{
	json_t *last;

	r->stream = true;
	r->content_type = "text/event-stream";
	if (r->kind == KIND_CHAT && reply_add_json(r, chunk_new(r, "", 0, true, NULL)) < 0)
		return -1;
	for (long i = 0; i < n; i++) {
		char *piece;
		int len = asprintf(&piece, "%s%.*s", i ? " " : "", (int)w[i].len, w[i].s);

		if (len < 0)
			return -1;
		if (reply_add_json(r, chunk_new(r, piece, (size_t)len, false, NULL)) < 0) {
			free(piece);
			return -1;
		}
		free(piece);
	}
	if (reply_add_json(r, chunk_new(r, NULL, 0, false, finish)) < 0)
		return -1;
	if (r->include_usage) {
		last = json_pack("{s:s,s:s,s:I,s:s,s:[]}", "id", r->id, "object",
				 r->kind == KIND_CHAT ? "chat.completion.chunk" : "text_completion",
				 "created", r->created, "model", r->model, "choices");
		if (!last || usage_add(last, prompt_tokens, n) < 0) {
			json_decref(last);
			return -1;
		}
		if (reply_add_json(r, last) < 0)
			return -1;
	}
	return reply_insert_text(r, r->n_events, "data: [DONE]\n\n");
}

static int generate(struct mock *m, const struct gen *g, struct reply *r)
{
	const char *prefix = r->kind == KIND_CHAT ? "Mock reply to: " : "Mock completion for: ";
	struct word *w = NULL;
	char *source = NULL, *text = NULL;
	const char *finish = "stop";
	long n;
	int ret = -1;
	json_t *obj;

	r->id = NULL;
	if (asprintf(&r->id, "%s-mock-%lu", r->kind == KIND_CHAT ? "chatcmpl" : "cmpl",
		     ++m->next_id) < 0) {
		r->id = NULL;
		return -1;
	}
	r->model = strdup(g->model);
	r->created = (long long)time(NULL);
	r->include_usage = g->stream && g->include_usage;
	if (!r->model || asprintf(&source, "%s%.*s", prefix, (int)utf8_prefix(g->echo, ECHO_BYTES),
				  g->echo) < 0)
		return -1;
	n = split_words(source, &w);
	if (n < 0)
		goto out;
	if (g->max_tokens > 0 && g->max_tokens < n) {
		n = g->max_tokens;
		finish = "length";
	}
	if (g->stream) {
		ret = stream_events(r, w, n, finish, g->prompt_tokens);
		goto out;
	}
	text = join_words(w, n);
	obj = text ? completion_object(r, text, finish) : NULL;
	if (!obj || usage_add(obj, g->prompt_tokens, n) < 0) {
		json_decref(obj);
		goto out;
	}
	r->json = obj;
	r->content_type = "application/json";
	ret = 0;
out:
	free(text);
	free(w);
	free(source);
	return ret;
}

/* Reads what chat and completions share; 1 when @r already holds an error. */
static int gen_common(struct mock *m, json_t *body, struct gen *g, struct reply *r)
{
	const json_t *max = json_object_get(body, "max_completion_tokens");

	g->model = json_string_value(json_object_get(body, "model"));
	if (!g->model)
		return reply_error(r, 400, "invalid_request_error", "model is required") ?: 1;
	if (!model_known(m, g->model))
		return reply_error(r, 404, "NotFoundError", "The model `%s` does not exist.",
				   g->model) ?: 1;
	if (!max)
		max = json_object_get(body, "max_tokens");
	g->max_tokens = json_is_integer(max) ? (long)json_integer_value(max) : 0;
	g->stream = json_is_true(json_object_get(body, "stream"));
	g->include_usage = json_is_true(json_object_get(json_object_get(body, "stream_options"),
							"include_usage"));
	return 0;
}

static int handle_chat(struct mock *m, const struct request *q, json_t *body, struct reply *r)
{
	const json_t *messages = json_object_get(body, "messages");
	const json_t *msg, *last_user = NULL;
	struct gen g = { 0 };
	char *echo = NULL;
	size_t i;
	int ret;

	r->kind = KIND_CHAT;
	ret = gen_common(m, body, &g, r);
	if (ret)
		return ret < 0 ? -1 : 0;
	if (!json_is_array(messages) || json_array_size(messages) == 0)
		return reply_error(r, 400, "invalid_request_error",
				   "messages must be a non-empty list");
	json_array_foreach(messages, i, msg) {
		char *text = content_text(json_object_get(msg, "content"));

		if (!text)
			return -1;
		g.prompt_tokens += count_words(text);
		free(text);
		if (json_is_string(json_object_get(msg, "role")) &&
		    strcmp(json_string_value(json_object_get(msg, "role")), "user") == 0)
			last_user = msg;
	}
	echo = last_user ? content_text(json_object_get(last_user, "content")) : strdup("");
	if (!echo)
		return -1;
	g.echo = echo;
	ret = generate(m, &g, r);
	free(echo);
	return ret;
}

static int handle_completions(struct mock *m, const struct request *q, json_t *body,
			      struct reply *r)
{
	const json_t *prompt = json_object_get(body, "prompt");
	const json_t *item;
	struct gen g = { 0 };
	size_t i;
	int ret;

	r->kind = KIND_COMPLETION;
	ret = gen_common(m, body, &g, r);
	if (ret)
		return ret < 0 ? -1 : 0;
	if (json_is_string(prompt)) {
		g.echo = json_string_value(prompt);
		g.prompt_tokens = count_words(g.echo);
	} else if (json_is_array(prompt) && json_is_string(json_array_get(prompt, 0))) {
		g.echo = json_string_value(json_array_get(prompt, 0));
		json_array_foreach(prompt, i, item)
			g.prompt_tokens += json_is_string(item) ?
				count_words(json_string_value(item)) : 0;
	} else {
		return reply_error(r, 400, "invalid_request_error",
				   "prompt must be a string or a list of strings");
	}
	return generate(m, &g, r);
}

/* ------------------------------------------------------------------ */
/* Embeddings, rerank, transcriptions                                  */

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static uint64_t fnv1a(const char *s, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)s[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

/* Newton's method: the mock links no libm. */
static double square_root(double x)
{
	double r = x > 1 ? x : 1;

	if (x <= 0)
		return 0;
	for (int i = 0; i < 64; i++)
		r = 0.5 * (r + x / r);
	return r;
}

/* A unit vector that depends only on @text and @dim. */
static json_t *embedding_vector(const char *text, size_t len, long dim)
{
	double *v = calloc((size_t)dim, sizeof *v);
	double norm = 0;
	uint64_t h = fnv1a(text, len);
	json_t *vec = json_array();

	if (!v || !vec)
		goto fail;
	for (long i = 0; i < dim; i++) {
		uint64_t bits = mix64(h + (uint64_t)(i + 1) * 0x9e3779b97f4a7c15ULL) >> 11;

		v[i] = (double)bits / 9007199254740992.0 * 2.0 - 1.0;
		norm += v[i] * v[i];
	}
	norm = square_root(norm);
	for (long i = 0; i < dim; i++)
		if (json_array_append_new(vec, json_real(norm > 0 ? v[i] / norm : i == 0)) < 0)
			goto fail;
	free(v);
	return vec;
fail:
	free(v);
	json_decref(vec);
	return NULL;
}

/* One input: a string, or a list of token ids (hashed as its JSON text). */
static json_t *embedding_item(const json_t *input, size_t index, long dim, long *tokens)
{
	json_t *vec;
	char *text;

	if (json_is_string(input)) {
		*tokens += count_words(json_string_value(input));
		vec = embedding_vector(json_string_value(input), json_string_length(input), dim);
	} else {
		text = json_dumps(input, JSON_COMPACT | JSON_ENCODE_ANY);
		if (!text)
			return NULL;
		*tokens += (long)json_array_size(input);
		vec = embedding_vector(text, strlen(text), dim);
		free(text);
	}
	return json_pack("{s:s,s:I,s:o}", "object", "embedding", "index", (json_int_t)index,
			 "embedding", vec);
}

static bool embedding_inputs_valid(const json_t *inputs)
{
	const json_t *item;
	size_t i;

	if (json_array_size(inputs) == 0)
		return false;
	json_array_foreach(inputs, i, item)
		if (!json_is_string(item) && !json_is_array(item))
			return false;
	return true;
}

static int handle_embeddings(struct mock *m, const struct request *q, json_t *body,
			     struct reply *r)
{
	const char *model = json_string_value(json_object_get(body, "model"));
	json_t *input = json_object_get(body, "input");
	json_t *inputs = NULL, *data = NULL, *item;
	long dim = param_int(body, "dimensions", m->opt.dim), tokens = 0;
	size_t i;
	int ret = -1;

	if (!model)
		return reply_error(r, 400, "invalid_request_error", "model is required");
	if (!model_known(m, model))
		return reply_error(r, 404, "NotFoundError", "The model `%s` does not exist.",
				   model);
	if (dim < 1 || dim > MAX_DIM)
		return reply_error(r, 400, "invalid_request_error", "dimensions out of range");
	/* A string or a list of ints is one input; a list of those is several. */
	if (json_is_string(input) || json_is_integer(json_array_get(input, 0)))
		inputs = json_pack("[O]", input);
	else if (json_is_array(input))
		inputs = json_incref(input);
	else
		return reply_error(r, 400, "invalid_request_error",
				   "input must be a string or a list");
	if (!inputs)
		return -1;
	if (!embedding_inputs_valid(inputs)) {
		ret = reply_error(r, 400, "invalid_request_error", "input must not be empty");
		goto out;
	}
	data = json_array();
	if (!data)
		goto out;
	json_array_foreach(inputs, i, item)
		if (json_array_append_new(data, embedding_item(item, i, dim, &tokens)) < 0)
			goto out;
	r->json = json_pack("{s:s,s:s,s:O,s:s,s:{s:I,s:I}}", "id", "embd-mock", "object", "list",
			    "data", data, "model", model, "usage", "prompt_tokens",
			    (json_int_t)tokens, "total_tokens", (json_int_t)tokens);
	r->content_type = "application/json";
	ret = r->json ? 0 : -1;
out:
	json_decref(data);
	json_decref(inputs);
	return ret;
}

struct scored {
	size_t index;
	double score;
};

static int by_score(const void *a, const void *b)
{
	const struct scored *x = a, *y = b;

	if (x->score != y->score)
		return x->score < y->score ? 1 : -1;
	return x->index < y->index ? -1 : x->index > y->index;
}

static bool word_in(const struct word *w, const char *text)
{
	struct word *tw;
	long n = split_words(text, &tw);
	bool found = false;

	for (long i = 0; i < n && !found; i++)
		found = tw[i].len == w->len && strncasecmp(tw[i].s, w->s, w->len) == 0;
	free(tw);
	return found;
}

/* The share of the query's words that occur in @text, case-insensitively. */
static double overlap_score(const struct word *qw, long nq, const char *text)
{
	long hits = 0;

	for (long i = 0; i < nq; i++)
		hits += word_in(&qw[i], text);
	return nq ? (double)hits / (double)nq : 0.0;
}

static json_t *rerank_results(const struct scored *s, size_t n, bool tei)
{
	json_t *list = json_array();

	if (!list)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		json_t *one = json_pack("{s:I,s:f}", "index", (json_int_t)s[i].index,
					tei ? "score" : "relevance_score", s[i].score);

		if (json_array_append_new(list, one) < 0) {
			json_decref(list);
			return NULL;
		}
	}
	return list;
}

static int handle_rerank(struct mock *m, const struct request *q, json_t *body, struct reply *r)
{
	const char *query = json_string_value(json_object_get(body, "query"));
	json_t *texts = json_object_get(body, "texts"), *results, *t;
	bool tei = texts != NULL;
	struct scored *s = NULL;
	struct word *qw = NULL;
	long nq, tokens, top_n = param_int(body, "top_n", 0);
	size_t i, n;
	int ret = -1;

	if (!tei)
		texts = json_object_get(body, "documents");
	if (!query || !json_is_array(texts) || json_array_size(texts) == 0)
		return reply_error(r, 400, "invalid_request_error",
				   "query and a non-empty list of texts are required");
	n = json_array_size(texts);
	nq = split_words(query, &qw);
	s = calloc(n, sizeof *s);
	if (nq < 0 || !s)
		goto out;
	tokens = nq;
	json_array_foreach(texts, i, t) {
		if (!json_is_string(t)) {
			ret = reply_error(r, 400, "invalid_request_error", "texts must be strings");
			goto out;
		}
		s[i].index = i;
		s[i].score = overlap_score(qw, nq, json_string_value(t));
		tokens += count_words(json_string_value(t));
	}
	qsort(s, n, sizeof *s, by_score);
	if (top_n > 0 && (size_t)top_n < n)
		n = (size_t)top_n;
	results = rerank_results(s, n, tei);
	if (tei)
		r->json = results;
	else if (results)
		r->json = json_pack("{s:s,s:s,s:s,s:o,s:{s:I,s:I}}", "id", "rerank-mock", "object",
				    "list", "model", param_str(body, "model", ""), "results",
				    results, "usage", "prompt_tokens", (json_int_t)tokens,
				    "total_tokens", (json_int_t)tokens);
	r->content_type = "application/json";
	ret = r->json ? 0 : -1;
out:
	free(s);
	free(qw);
	return ret;
}

/* The boundary parameter of a multipart Content-Type, or NULL. */
static char *multipart_boundary(const char *ctype)
{
	const char *b;
	size_t len;

	if (!ctype || strncasecmp(ctype, "multipart/form-data", 19) != 0)
		return NULL;
	b = strcasestr(ctype, "boundary=");
	if (!b)
		return NULL;
	b += 9;
	if (*b == '"') {
		b++;
		len = strcspn(b, "\"");
	} else {
		len = strcspn(b, "; \t");
	}
	return len && len < 200 ? strndup(b, len) : NULL;
}

/* Whether the part headers in [@h, @end) carry name="@name" (not filename=). */
static bool part_named(const char *h, const char *end, const char *name)
{
	char pat[128];
	int plen = snprintf(pat, sizeof pat, "name=\"%s\"", name);
	const char *p = h;

	if (plen < 0 || (size_t)plen >= sizeof pat)
		return false;
	while ((p = memmem(p, (size_t)(end - p), pat, (size_t)plen))) {
		if (p > h && (p[-1] == ' ' || p[-1] == ';' || p[-1] == '\t'))
			return true;
		p++;
	}
	return false;
}

/* Finds the part named @name; its content is [*val, *val + *len). */
static bool multipart_field(const char *body, size_t size, const char *boundary,
			    const char *name, const char **val, size_t *len)
{
	const char *end = body + size, *p;
	char delim[256];
	int dlen = snprintf(delim, sizeof delim, "--%s", boundary);

	if (dlen < 0 || (size_t)dlen >= sizeof delim)
		return false;
	p = memmem(body, size, delim, (size_t)dlen);
	while (p) {
		const char *part = p + dlen, *head_end, *content, *next;

		if (end - part < 2 || (part[0] == '-' && part[1] == '-'))
			return false;
		head_end = memmem(part, (size_t)(end - part), "\r\n\r\n", 4);
		if (!head_end)
			return false;
		content = head_end + 4;
		next = memmem(content, (size_t)(end - content), delim, (size_t)dlen);
		if (!next)
			return false;
		if (part_named(part, head_end, name)) {
			*val = content;
			*len = (size_t)(next - content) >= 2 ? (size_t)(next - content) - 2 : 0;
			return true;
		}
		p = next;
	}
	return false;
}

static int handle_transcription(struct mock *m, const struct request *q, json_t *unused,
				struct reply *r)
{
	char *boundary = multipart_boundary(json_string_value(json_object_get(q->headers,
									       "content-type")));
	size_t size = evbuffer_get_length(q->body), flen = 0, file_len;
	const char *body = size ? (const char *)evbuffer_pullup(q->body, -1) : "";
	const char *format = NULL, *file;
	int ret;

	if (!boundary)
		return reply_error(r, 400, "invalid_request_error",
				   "expected a multipart/form-data body");
	if (!body || !multipart_field(body, size, boundary, "file", &file, &file_len)) {
		free(boundary);
		return reply_error(r, 400, "invalid_request_error", "the file part is missing");
	}
	if (!multipart_field(body, size, boundary, "response_format", &format, &flen))
		flen = 0;
	free(boundary);
	r->content_type = "application/json";
	if (flen == 4 && memcmp(format, "text", 4) == 0) {
		r->content_type = "text/plain; charset=utf-8";
		r->body = strdup("mock transcription");
		r->body_len = r->body ? strlen(r->body) : 0;
		return r->body ? 0 : -1;
	}
	if (flen == 12 && memcmp(format, "verbose_json", 12) == 0)
		r->json = json_pack("{s:s,s:s,s:f,s:s,s:[]}", "task", "transcribe", "language",
				    "english", "duration", 1.0, "text", "mock transcription",
				    "segments");
	else
		r->json = json_pack("{s:s}", "text", "mock transcription");
	ret = r->json ? 0 : -1;
	return ret;
}

/* ------------------------------------------------------------------ */
/* Models, health, metrics                                             */

static json_t *model_object(const struct mock *m, const char *id)
{
	return json_pack("{s:s,s:s,s:i,s:s,s:s,s:i,s:i}", "id", id, "object", "model",
			 "created", MODEL_CREATED, "owned_by", "mock", "root", id,
			 "max_model_len", m->opt.context, "max_context_length", m->opt.context);
}

static int handle_models(struct mock *m, const struct request *q, json_t *body, struct reply *r)
{
	json_t *data = json_array();

	if (!data)
		return -1;
	for (int i = 0; i < m->opt.n_models; i++) {
		if (json_array_append_new(data, model_object(m, m->opt.models[i])) < 0) {
			json_decref(data);
			return -1;
		}
	}
	r->json = json_pack("{s:s,s:o}", "object", "list", "data", data);
	r->content_type = "application/json";
	return r->json ? 0 : -1;
}

static int handle_model(struct mock *m, const struct request *q, json_t *body, struct reply *r)
{
	const char *id = q->path + strlen("/v1/models/");

	if (!model_known(m, id))
		return reply_error(r, 404, "NotFoundError", "The model `%s` does not exist.", id);
	r->json = model_object(m, id);
	r->content_type = "application/json";
	return r->json ? 0 : -1;
}

static int handle_info(struct mock *m, const struct request *q, json_t *body, struct reply *r)
{
	r->json = json_pack("{s:s,s:s,s:i,s:{s:{s:s}},s:s}", "model_id", m->opt.models[0],
			    "model_dtype", "float32", "max_input_length", m->opt.context,
			    "model_type", "embedding", "pooling", "cls", "version", "mock");
	r->content_type = "application/json";
	return r->json ? 0 : -1;
}

static int handle_health(struct mock *m, const struct request *q, json_t *body, struct reply *r)
{
	r->content_type = "text/plain";
	return 0;
}

static long running_requests(const struct mock *m)
{
	long n = 0;

	for (const struct conn *c = m->conns; c; c = c->next)
		n += c->x && !c->control;
	return n;
}

static int handle_metrics(struct mock *m, const struct request *q, json_t *body,
			  struct reply *r)
{
	long running = m->metrics_running >= 0 ? m->metrics_running : running_requests(m);
	long waiting = m->metrics_waiting >= 0 ? m->metrics_waiting : 0;
	const char *name = m->opt.models[0];
	int len;

	len = asprintf(&r->body,
		       "# HELP vllm:num_requests_running Number of requests running.\n"
		       "# TYPE vllm:num_requests_running gauge\n"
		       "vllm:num_requests_running{model_name=\"%s\"} %ld\n"
		       "# HELP vllm:num_requests_waiting Number of requests waiting.\n"
		       "# TYPE vllm:num_requests_waiting gauge\n"
		       "vllm:num_requests_waiting{model_name=\"%s\"} %ld\n",
		       name, running, name, waiting);
	if (len < 0) {
		r->body = NULL;
		return -1;
	}
	r->body_len = (size_t)len;
	r->content_type = "text/plain; version=0.0.4";
	return 0;
}

static const struct route routes[] = {
	{ "GET", "/health", false, false, handle_health },
	{ "GET", "/metrics", false, false, handle_metrics },
	{ "GET", "/v1/models", false, false, handle_models },
	{ "GET", "/v1/models/", true, false, handle_model },
	{ "GET", "/info", false, false, handle_info },
	{ "POST", "/v1/chat/completions", false, true, handle_chat },
	{ "POST", "/v1/completions", false, true, handle_completions },
	{ "POST", "/v1/embeddings", false, true, handle_embeddings },
	{ "POST", "/v1/rerank", false, true, handle_rerank },
	{ "POST", "/rerank", false, true, handle_rerank },
	{ "POST", "/v1/audio/transcriptions", false, false, handle_transcription },
};

/* The body as a JSON object, or NULL. */
static json_t *body_object(const struct request *q)
{
	size_t len = evbuffer_get_length(q->body);
	const char *data = len ? (const char *)evbuffer_pullup(q->body, -1) : NULL;
	json_t *obj;

	if (!data)
		return NULL;
	obj = json_loadb(data, len, 0, NULL);
	if (obj && !json_is_object(obj)) {
		json_decref(obj);
		return NULL;
	}
	return obj;
}

static int route_request(struct mock *m, const struct request *q, struct reply *r)
{
	bool path_found = false;
	json_t *body = NULL;
	int ret;

	for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
		const struct route *rt = &routes[i];
		bool match = rt->prefix ? strncmp(q->path, rt->path, strlen(rt->path)) == 0 :
			strcmp(q->path, rt->path) == 0;

		if (!match)
			continue;
		path_found = true;
		if (strcmp(q->method, rt->method) != 0)
			continue;
		if (rt->json_body) {
			body = body_object(q);
			if (!body)
				return reply_error(r, 400, "invalid_request_error",
						   "the body must be a JSON object");
		}
		r->status = 200;
		ret = rt->fn(m, q, body, r);
		json_decref(body);
		return ret;
	}
	if (path_found)
		return reply_error(r, 405, "invalid_request_error", "method not allowed");
	return reply_error(r, 404, "invalid_request_error", "no route for %s", q->path);
}

/* ------------------------------------------------------------------ */
/* Faults                                                              */

static enum fault_mode fault_parse(const char *name)
{
	for (size_t i = 1; name && i < sizeof fault_names / sizeof fault_names[0]; i++)
		if (strcmp(name, fault_names[i]) == 0)
			return (enum fault_mode)i;
	return FAULT_NONE;
}

static void fault_clear(struct fault *f)
{
	json_decref(f->params);
	f->params = NULL;
	f->mode = FAULT_NONE;
	f->remaining = 0;
}

/* The fault that applies to this request, if any; it counts as used. */
static enum fault_mode fault_take(struct mock *m, const char *path, json_t **params)
{
	struct fault *f = &m->fault;
	const char *only = param_str(f->params, "path", NULL);
	enum fault_mode mode = f->mode;

	*params = NULL;
	if (mode == FAULT_NONE || f->remaining == 0)
		return FAULT_NONE;
	if (only ? strcmp(only, path) != 0 : is_probe_path(path))
		return FAULT_NONE;
	*params = json_incref(f->params);
	if (f->remaining > 0 && --f->remaining == 0)
		fault_clear(f);
	return mode;
}

static int fault_status_reply(const json_t *params, struct reply *r)
{
	long status = param_int(params, "status", 500);
	const json_t *body = json_object_get(params, "body");
	const json_t *retry = json_object_get(params, "retry_after");
	const json_t *extra = json_object_get(params, "headers"), *v;
	const char *name;
	char num[32];

	if (status < 100 || status > 999)
		status = 500;
	if (reply_error(r, (int)status, "server_error", "mock upstream fault") < 0)
		return -1;
	if (json_is_string(body)) {
		json_decref(r->json);
		r->json = NULL;
		r->body = strndup(json_string_value(body), json_string_length(body));
		r->body_len = r->body ? json_string_length(body) : 0;
		if (!r->body)
			return -1;
	} else if (body) {
		json_decref(r->json);
		r->json = json_incref((json_t *)body);
	}
	r->content_type = param_str(params, "content_type", "application/json");
	if (json_is_integer(retry)) {
		snprintf(num, sizeof num, "%lld", (long long)json_integer_value(retry));
		if (reply_header(r, "Retry-After", num) < 0)
			return -1;
	} else if (json_is_string(retry) &&
		   reply_header(r, "Retry-After", json_string_value(retry)) < 0) {
		return -1;
	}
	json_object_foreach((json_t *)extra, name, v)
		if (json_is_string(v) && reply_header(r, name, json_string_value(v)) < 0)
			return -1;
	return 0;
}

static int fault_redirect_reply(const json_t *params, struct reply *r)
{
	long status = param_int(params, "status", 302);

	if (status < 300 || status > 399)
		status = 302;
	r->status = (int)status;
	r->content_type = "text/plain";
	r->body = strdup("redirected by mock-upstream\n");
	r->body_len = r->body ? strlen(r->body) : 0;
	if (!r->body)
		return -1;
	return reply_header(r, "Location", param_str(params, "location",
						     "http://127.0.0.1:9/redirected"));
}

/* Where faults put their own events: after the role chunk of a chat stream. */
static size_t fault_event_pos(const struct reply *r)
{
	size_t pos = r->kind == KIND_CHAT ? 1 : 0;

	return pos < r->n_events ? pos : r->n_events;
}

static int fault_malformed(const json_t *params, struct reply *r)
{
	const char *variant = param_str(params, "variant", "both");
	size_t pos = fault_event_pos(r);

	if (!r->stream) {
		json_decref(r->json);
		r->json = NULL;
		free(r->body);
		r->body = strdup("{\"id\": \"mock-malformed\", \"choices\": [{\"message\": oops");
		r->body_len = r->body ? strlen(r->body) : 0;
		return r->body ? 0 : -1;
	}
	if (strcmp(variant, "line") != 0 &&
	    reply_insert_text(r, pos, "data: {\"id\": \"mock-malformed\", not json\n\n") < 0)
		return -1;
	if (strcmp(variant, "json") != 0 &&
	    reply_insert_text(r, pos, "this line is not server-sent events\n\n") < 0)
		return -1;
	return 0;
}

static int fault_error_event(const json_t *params, struct reply *r)
{
	json_t *err = json_pack("{s:{s:s,s:s,s:n,s:I}}", "error", "message",
				param_str(params, "message", "mock upstream error"), "type",
				param_str(params, "type", "server_error"), "param", "code",
				(json_int_t)param_int(params, "code", 500));

	if (!err)
		return -1;
	r->status = 200;
	if (!r->stream) {
		json_decref(r->json);
		r->json = err;
		return 0;
	}
	for (size_t i = 0; i < r->n_events; i++)
		free(r->events[i].data);
	r->n_events = 0;
	if (reply_add_json(r, err) < 0)
		return -1;
	return reply_insert_text(r, r->n_events, "data: [DONE]\n\n");
}

static int fault_big_event(const json_t *params, struct reply *r)
{
	long bytes = param_int(params, "bytes", 10L * 1024 * 1024);
	char *fill;
	int ret = -1;

	if (bytes < 1 || bytes > 512L * 1024 * 1024)
		bytes = 10L * 1024 * 1024;
	fill = malloc((size_t)bytes);
	if (!fill)
		return -1;
	memset(fill, 'x', (size_t)bytes);
	if (r->stream) {
		ret = reply_insert_json(r, fault_event_pos(r),
					chunk_new(r, fill, (size_t)bytes, false, NULL));
	} else if (json_is_object(r->json)) {
		ret = json_object_set_new(r->json, "mock_padding",
					  json_stringn(fill, (size_t)bytes));
	} else {
		free(r->body);
		r->body = fill;
		r->body_len = (size_t)bytes;
		return 0;
	}
	free(fill);
	return ret;
}

/* Changes a normal reply the way the fault says. */
static int fault_transform(enum fault_mode fault, const json_t *params, struct reply *r)
{
	switch (fault) {
	case FAULT_MALFORMED:
		return fault_malformed(params, r);
	case FAULT_ERROR_EVENT:
		return fault_error_event(params, r);
	case FAULT_BIG_EVENT:
		return fault_big_event(params, r);
	default:
		return 0;
	}
}

/* ------------------------------------------------------------------ */
/* Writing responses                                                   */

static struct evbuffer *conn_out(struct conn *c)
{
	return bufferevent_get_output(c->bev);
}

static int write_head(struct conn *c, const struct reply *r, long long content_length,
		      bool keep_alive)
{
	struct evbuffer *out = conn_out(c);
	const char *name;
	json_t *value;

	if (evbuffer_add_printf(out, "HTTP/1.1 %d %s\r\nServer: mock-upstream\r\n", r->status,
				reason_phrase(r->status)) < 0)
		return -1;
	if (r->content_type && evbuffer_add_printf(out, "Content-Type: %s\r\n",
						   r->content_type) < 0)
		return -1;
	json_object_foreach(r->headers, name, value)
		if (evbuffer_add_printf(out, "%s: %s\r\n", name, json_string_value(value)) < 0)
			return -1;
	if (content_length < 0) {
		if (evbuffer_add_printf(out, "Transfer-Encoding: chunked\r\n") < 0)
			return -1;
	} else if (evbuffer_add_printf(out, "Content-Length: %lld\r\n", content_length) < 0) {
		return -1;
	}
	if (r->stream && evbuffer_add_printf(out, "Cache-Control: no-cache\r\n") < 0)
		return -1;
	return evbuffer_add_printf(out, "Connection: %s\r\n\r\n",
				   keep_alive ? "keep-alive" : "close") < 0 ? -1 : 0;
}

static int write_chunk(struct conn *c, const char *data, size_t len)
{
	struct evbuffer *out = conn_out(c);

	if (evbuffer_add_printf(out, "%zx\r\n", len) < 0 || evbuffer_add(out, data, len) < 0 ||
	    evbuffer_add(out, "\r\n", 2) < 0)
		return -1;
	return 0;
}

static int timer_arm(struct conn *c, long ms)
{
	struct timeval tv = { .tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000 };

	return evtimer_add(c->timer, &tv);
}

/* The connection is freed at the next turn of the loop, out of any callback. */
static void conn_kill(struct conn *c)
{
	c->dead = true;
	event_active(c->timer, EV_TIMEOUT, 1);
}

static void conn_close_when_written(struct conn *c)
{
	c->closing = true;
	if (evbuffer_get_length(conn_out(c)) == 0)
		conn_kill(c);
}

static void exchange_free(struct exchange *x)
{
	if (!x)
		return;
	reply_release(&x->r);
	json_decref(x->params);
	free(x);
}

static void exchange_finish(struct conn *c)
{
	bool keep = c->x->keep_alive && !c->peer_eof;

	exchange_free(c->x);
	c->x = NULL;
	if (!keep)
		conn_close_when_written(c);
}

/* The stream has sent what the fault allows: reset, stall or end it. */
static int events_done(struct conn *c)
{
	switch (c->x->fault) {
	case FAULT_RESET_AFTER:
		c->resetting = true;
		conn_close_when_written(c);
		return 0;
	case FAULT_STALL:
		c->x->phase = PH_STALLED;
		return 0;
	default:
		if (evbuffer_add(conn_out(c), "0\r\n\r\n", 5) < 0)
			return -1;
		exchange_finish(c);
		return 0;
	}
}

static int send_events(struct conn *c)
{
	struct exchange *x = c->x;

	while (x->next < x->limit) {
		const struct frame *f = &x->r.events[x->next++];

		if (write_chunk(c, f->data, f->len) < 0)
			return -1;
		if (x->event_delay_ms > 0 && x->next < x->limit)
			return timer_arm(c, x->event_delay_ms);
	}
	return events_done(c);
}

static int send_tick(struct conn *c)
{
	struct exchange *x = c->x;
	int ret = 0;

	if (evbuffer_get_length(conn_out(c)) < ENDLESS_BACKLOG) {
		if (!x->r.stream || x->r.kind == KIND_OTHER) {
			ret = write_chunk(c, x->ticks ? " " : "{", 1);
		} else {
			const char *word = x->ticks ? " tick" : "tick";
			json_t *chunk = chunk_new(&x->r, word, strlen(word), x->ticks == 0, NULL);
			char *text = chunk ? json_dumps(chunk, JSON_COMPACT) : NULL;
			char *frame = NULL;
			int len = text ? asprintf(&frame, "data: %s\n\n", text) : -1;

			ret = len < 0 ? -1 : write_chunk(c, frame, (size_t)len);
			if (len >= 0)
				free(frame);
			free(text);
			json_decref(chunk);
		}
		x->ticks++;
	}
	return ret < 0 ? -1 : timer_arm(c, x->interval_ms);
}

static int exchange_head(struct conn *c)
{
	struct exchange *x = c->x;
	struct reply *r = &x->r;
	bool chunked = r->stream || x->fault == FAULT_ENDLESS;

	if (write_head(c, r, chunked ? -1 : (long long)r->body_len, x->keep_alive) < 0)
		return -1;
	if (x->fault == FAULT_ENDLESS) {
		x->phase = PH_ENDLESS;
		return send_tick(c);
	}
	if (r->stream) {
		x->phase = PH_EVENTS;
		return send_events(c);
	}
	if (x->fault == FAULT_RESET_AFTER || x->fault == FAULT_STALL)
		return events_done(c);
	if (r->body_len && evbuffer_add(conn_out(c), r->body, r->body_len) < 0)
		return -1;
	exchange_finish(c);
	return 0;
}

/* Sends as much of the response as may go now; the timer runs the rest. */
static void exchange_step(struct conn *c)
{
	struct exchange *x = c->x;
	int ret = 0;

	switch (x->phase) {
	case PH_START:
		if (x->delay_ms > 0) {
			ret = timer_arm(c, x->delay_ms);
			x->delay_ms = 0;
		} else {
			ret = exchange_head(c);
		}
		break;
	case PH_EVENTS:
		ret = send_events(c);
		break;
	case PH_ENDLESS:
		ret = send_tick(c);
		break;
	case PH_STALLED:
		break;
	}
	if (ret < 0) {
		warn("cannot write a response (out of memory?)");
		conn_kill(c);
	}
}

/* Takes @r and @params. */
static void exchange_begin(struct conn *c, struct reply *r, enum fault_mode fault,
			   json_t *params, bool keep_alive)
{
	struct exchange *x = calloc(1, sizeof *x);
	long events;

	if (!x)
		goto fail;
	if (r->json) {
		free(r->body);
		r->body = json_dumps(r->json, JSON_COMPACT);
		if (!r->body)
			goto fail;
		r->body_len = strlen(r->body);
	}
	x->r = *r;
	memset(r, 0, sizeof *r);
	x->fault = fault;
	x->params = params;
	x->keep_alive = keep_alive;
	x->delay_ms = fault == FAULT_DELAY ? param_int(params, "ms", 1000) : 0;
	x->event_delay_ms = param_int(params, "event_delay_ms", c->m->event_delay_ms);
	x->interval_ms = param_int(params, "interval_ms", 10);
	if (x->interval_ms < 1)
		x->interval_ms = 1;
	x->limit = x->r.n_events;
	if (fault == FAULT_RESET_AFTER || fault == FAULT_STALL) {
		events = param_int(params, "events", 1);
		if (events >= 0 && (size_t)events < x->limit)
			x->limit = (size_t)events;
	}
	c->x = x;
	exchange_step(c);
	return;
fail:
	free(x);
	reply_release(r);
	json_decref(params);
	conn_kill(c);
}

/* ------------------------------------------------------------------ */
/* Stats and control endpoints                                         */

static json_t *request_record(const struct request *q)
{
	size_t len = evbuffer_get_length(q->body);
	size_t shown = len < MAX_RECORDED_BODY ? len : MAX_RECORDED_BODY;
	const char *data = shown ? (const char *)evbuffer_pullup(q->body, (ssize_t)shown) : "";
	const char *query = strchr(q->target, '?');

	if (!data)
		return NULL;
	return json_pack("{s:s,s:s,s:s?,s:O,s:o,s:I,s:b}", "method", q->method, "path", q->path,
			 "query", query ? query + 1 : NULL, "headers", q->headers,
			 "body", json_string_lossy(data, shown), "body_length", (json_int_t)len,
			 "body_truncated", shown < len);
}

static void stats_record(struct mock *m, const struct request *q)
{
	struct stats *s = &m->stats;
	json_int_t seen = json_integer_value(json_object_get(s->by_path, q->path));
	json_t *rec = request_record(q);

	s->requests++;
	if (json_object_set_new(s->by_path, q->path, json_integer(seen + 1)) < 0 || !rec ||
	    json_object_set(s->last_by_path, q->path, rec) < 0)
		warn("cannot record %s %s", q->method, q->path);
	if (rec && !is_probe_path(q->path)) {
		json_decref(s->last_request);
		s->last_request = json_incref(rec);
	}
	json_decref(rec);
}

static long open_connections(const struct mock *m)
{
	long n = 0;

	for (const struct conn *c = m->conns; c; c = c->next)
		n += !c->control;
	return n;
}

static int control_stats(struct mock *m, struct reply *r)
{
	const struct stats *s = &m->stats;

	r->json = json_pack("{s:I,s:O,s:I,s:I,s:I,s:I,s:O?,s:O,s:{s:s,s:I}}",
			    "requests", (json_int_t)s->requests, "by_path", s->by_path,
			    "connections_opened", (json_int_t)s->opened,
			    "connections_closed", (json_int_t)s->closed,
			    "open_connections", (json_int_t)open_connections(m),
			    "aborted", (json_int_t)s->aborted, "last_request", s->last_request,
			    "last_by_path", s->last_by_path, "fault", "mode",
			    fault_names[m->fault.mode], "remaining",
			    (json_int_t)m->fault.remaining);
	return r->json ? 0 : -1;
}

static int stats_init(struct stats *s)
{
	memset(s, 0, sizeof *s);
	s->by_path = json_object();
	s->last_by_path = json_object();
	return s->by_path && s->last_by_path ? 0 : -1;
}

static void stats_fini(struct stats *s)
{
	json_decref(s->by_path);
	json_decref(s->last_by_path);
	json_decref(s->last_request);
	memset(s, 0, sizeof *s);
}

static int mock_reset(struct mock *m)
{
	fault_clear(&m->fault);
	stats_fini(&m->stats);
	m->event_delay_ms = m->opt.event_delay_ms;
	m->metrics_running = -1;
	m->metrics_waiting = -1;
	m->epoch++;
	return stats_init(&m->stats);
}

static int control_fault(struct mock *m, json_t *body, struct reply *r)
{
	enum fault_mode mode = fault_parse(param_str(body, "mode", NULL));
	long count = param_int(body, "count", 1);

	if (mode == FAULT_NONE)
		return reply_error(r, 400, "invalid_request_error",
				   "unknown or missing fault mode");
	if (count < -1)
		return reply_error(r, 400, "invalid_request_error", "count must be >= -1");
	fault_clear(&m->fault);
	if (count != 0) {
		m->fault.mode = mode;
		m->fault.remaining = count;
		m->fault.params = json_incref(body);
	}
	r->json = json_pack("{s:b,s:s,s:I}", "ok", 1, "mode", fault_names[mode], "count",
			    (json_int_t)count);
	return r->json ? 0 : -1;
}

static int control_config(struct mock *m, json_t *body, struct reply *r)
{
	m->event_delay_ms = (int)param_int(body, "event_delay_ms", m->event_delay_ms);
	m->metrics_running = param_int(body, "metrics_running", m->metrics_running);
	m->metrics_waiting = param_int(body, "metrics_waiting", m->metrics_waiting);
	r->json = json_pack("{s:b,s:i,s:I,s:I}", "ok", 1, "event_delay_ms", m->event_delay_ms,
			    "metrics_running", (json_int_t)m->metrics_running,
			    "metrics_waiting", (json_int_t)m->metrics_waiting);
	return r->json ? 0 : -1;
}

static int control_route(struct mock *m, const struct request *q, struct reply *r)
{
	bool post = strcmp(q->method, "POST") == 0;
	json_t *body = NULL;
	int ret;

	if (strcmp(q->path, "/__mock/stats") == 0 && strcmp(q->method, "GET") == 0)
		return control_stats(m, r);
	if (strcmp(q->path, "/__mock/reset") == 0 && post) {
		if (mock_reset(m) < 0)
			return -1;
		r->json = json_pack("{s:b}", "ok", 1);
		return r->json ? 0 : -1;
	}
	if (!post || (strcmp(q->path, "/__mock/fault") != 0 &&
		      strcmp(q->path, "/__mock/config") != 0))
		return reply_error(r, 404, "invalid_request_error", "no control route %s %s",
				   q->method, q->path);
	body = body_object(q);
	if (!body)
		return reply_error(r, 400, "invalid_request_error",
				   "the body must be a JSON object");
	if (strcmp(q->path, "/__mock/fault") == 0)
		ret = control_fault(m, body, r);
	else
		ret = control_config(m, body, r);
	json_decref(body);
	return ret;
}

/* ------------------------------------------------------------------ */
/* Serving a parsed request                                            */

static void serve(struct conn *c)
{
	struct mock *m = c->m;
	struct request *q = &c->req;
	struct reply r = { .status = 200, .content_type = "application/json" };
	bool control = strncmp(q->path, "/__mock/", 8) == 0;
	enum fault_mode fault = FAULT_NONE;
	json_t *params = NULL;
	int ret;

	if (c->served++ == 0 && control) {
		c->control = true;
		if (c->epoch == m->epoch)
			m->stats.opened--;
	}
	if (control) {
		ret = control_route(m, q, &r);
	} else {
		stats_record(m, q);
		fault = fault_take(m, q->path, &params);
		warn("%s %s%s%s", q->method, q->target, fault ? " fault=" : "",
		     fault ? fault_names[fault] : "");
		if (fault == FAULT_STATUS)
			ret = fault_status_reply(params, &r);
		else if (fault == FAULT_REDIRECT)
			ret = fault_redirect_reply(params, &r);
		else
			ret = route_request(m, q, &r) ?: fault_transform(fault, params, &r);
	}
	if (ret < 0) {
		reply_release(&r);
		if (reply_error(&r, 500, "server_error", "mock-upstream: out of memory") < 0) {
			json_decref(params);
			conn_kill(c);
			return;
		}
	}
	exchange_begin(c, &r, fault, params, q->keep_alive && !c->peer_eof);
}

/* ------------------------------------------------------------------ */
/* Parsing requests                                                    */

static void request_clear(struct request *q)
{
	free(q->method);
	free(q->target);
	free(q->path);
	json_decref(q->headers);
	q->method = q->target = q->path = NULL;
	q->headers = NULL;
	if (q->body && evbuffer_drain(q->body, evbuffer_get_length(q->body)) < 0)
		warn("cannot drain a request body");
	q->state = PS_LINE;
	q->minor = 0;
	q->head_bytes = 0;
	q->n_headers = 0;
	q->remaining = 0;
	q->keep_alive = false;
	q->error = 0;
}

static int parse_fail(struct request *q, int status)
{
	q->error = status;
	return -1;
}

static bool token_char(char ch)
{
	return isalnum((unsigned char)ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

static int on_request_line(struct request *q, char *line)
{
	char *sp1, *sp2;

	if (*line == '\0')
		return 1;               /* a stray CRLF before a request is allowed */
	sp1 = strchr(line, ' ');
	sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	if (!sp1 || !sp2 || sp1 == line || sp2[1] == '\0')
		return parse_fail(q, 400);
	*sp1 = *sp2 = '\0';
	for (const char *p = line; *p; p++)
		if (!isupper((unsigned char)*p))
			return parse_fail(q, 400);
	if (sp1[1] != '/')
		return parse_fail(q, 400);
	for (const char *p = sp1 + 1; *p; p++)
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			return parse_fail(q, 400);
	if (strcmp(sp2 + 1, "HTTP/1.1") == 0)
		q->minor = 1;
	else if (strcmp(sp2 + 1, "HTTP/1.0") == 0)
		q->minor = 0;
	else
		return parse_fail(q, 400);
	q->method = strdup(line);
	q->target = strdup(sp1 + 1);
	q->path = strndup(sp1 + 1, strcspn(sp1 + 1, "?"));
	q->headers = json_object();
	if (!q->method || !q->target || !q->path || !q->headers)
		return parse_fail(q, 500);
	q->state = PS_HEADERS;
	return 1;
}

static bool has_token(const char *list, const char *token)
{
	size_t len = strlen(token);

	for (const char *p = list; p && *p; p += strcspn(p, ",")) {
		p += strspn(p, ", \t");
		if (strncasecmp(p, token, len) == 0 && strchr(", \t", p[len]))
			return true;
	}
	return false;
}

static const char *request_header(const struct request *q, const char *name)
{
	return json_string_value(json_object_get(q->headers, name));
}

static int headers_done(struct conn *c, struct request *q)
{
	const char *te = request_header(q, "transfer-encoding");
	const char *cl = request_header(q, "content-length");
	const char *expect = request_header(q, "expect");
	const char *connection = request_header(q, "connection");
	char *end;
	unsigned long long len = 0;

	q->keep_alive = q->minor == 1 ? !has_token(connection, "close") :
		has_token(connection, "keep-alive");
	if (te) {
		if (cl)
			return parse_fail(q, 400);
		if (strcasecmp(te, "chunked") != 0)
			return parse_fail(q, 501);
		q->state = PS_CHUNK_SIZE;
	} else if (cl) {
		if (!isdigit((unsigned char)*cl))
			return parse_fail(q, 400);
		len = strtoull(cl, &end, 10);
		if (*end != '\0')
			return parse_fail(q, 400);
		if (len > MAX_BODY_BYTES)
			return parse_fail(q, 413);
		q->remaining = len;
		q->state = len ? PS_BODY : PS_DONE;
	} else {
		q->state = PS_DONE;
	}
	if (expect && strcasecmp(expect, "100-continue") == 0 && q->state != PS_DONE &&
	    evbuffer_add_printf(conn_out(c), "HTTP/1.1 100 Continue\r\n\r\n") < 0)
		return parse_fail(q, 500);
	return 1;
}

static int on_header_line(struct conn *c, struct request *q, char *line)
{
	char *colon, *value, *end, *name;
	const char *seen;
	json_t *joined;

	if (*line == '\0')
		return headers_done(c, q);
	if (*line == ' ' || *line == '\t')
		return parse_fail(q, 400);       /* obsolete line folding */
	if (++q->n_headers > MAX_HEADERS)
		return parse_fail(q, 431);
	colon = strchr(line, ':');
	if (!colon || colon == line)
		return parse_fail(q, 400);
	*colon = '\0';
	for (name = line; *name; name++) {
		if (!token_char(*name))
			return parse_fail(q, 400);
		*name = (char)tolower((unsigned char)*name);
	}
	value = colon + 1 + strspn(colon + 1, " \t");
	end = value + strlen(value);
	while (end > value && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	seen = request_header(q, line);
	if (seen) {
		char *both;

		if (asprintf(&both, "%s, %s", seen, value) < 0)
			return parse_fail(q, 500);
		joined = json_string_lossy(both, strlen(both));
		free(both);
	} else {
		joined = json_string_lossy(value, strlen(value));
	}
	if (json_object_set_new(q->headers, line, joined) < 0)
		return parse_fail(q, 500);
	return 1;
}

static int on_chunk_size(struct request *q, const char *line)
{
	char *end;
	unsigned long long size;

	if (!isxdigit((unsigned char)*line))
		return parse_fail(q, 400);
	size = strtoull(line, &end, 16);
	if (*end != '\0' && *end != ';' && *end != ' ' && *end != '\t')
		return parse_fail(q, 400);
	if (size > MAX_BODY_BYTES || evbuffer_get_length(q->body) + size > MAX_BODY_BYTES)
		return parse_fail(q, 413);
	q->remaining = size;
	q->state = size ? PS_CHUNK_DATA : PS_TRAILERS;
	return 1;
}

static int on_line(struct conn *c, struct request *q, char *line)
{
	switch (q->state) {
	case PS_LINE:
		return on_request_line(q, line);
	case PS_HEADERS:
		return on_header_line(c, q, line);
	case PS_CHUNK_SIZE:
		return on_chunk_size(q, line);
	case PS_CHUNK_END:
		if (*line != '\0')
			return parse_fail(q, 400);
		q->state = PS_CHUNK_SIZE;
		return 1;
	case PS_TRAILERS:
		if (*line == '\0')
			q->state = PS_DONE;
		return 1;
	default:
		return parse_fail(q, 500);
	}
}

#define MAX_CHUNK_LINE 1024

static int parse_line(struct conn *c, struct evbuffer *in)
{
	struct request *q = &c->req;
	bool head = q->state == PS_LINE || q->state == PS_HEADERS || q->state == PS_TRAILERS;
	size_t limit = head ? MAX_HEAD_BYTES - q->head_bytes : MAX_CHUNK_LINE;
	size_t len;
	char *line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF);
	int ret;

	if (!line)
		return evbuffer_get_length(in) > limit ? parse_fail(q, head ? 431 : 400) : 0;
	if (len + 2 > limit || strlen(line) != len) {
		free(line);
		return parse_fail(q, len + 2 > limit && head ? 431 : 400);
	}
	if (head)
		q->head_bytes += len + 2;
	ret = on_line(c, q, line);
	free(line);
	return ret;
}

static int parse_data(struct request *q, struct evbuffer *in)
{
	size_t avail = evbuffer_get_length(in);
	size_t n = q->remaining < avail ? (size_t)q->remaining : avail;

	if (n == 0)
		return 0;
	if (evbuffer_remove_buffer(in, q->body, n) != (int)n)
		return parse_fail(q, 500);
	q->remaining -= n;
	if (q->remaining == 0)
		q->state = q->state == PS_BODY ? PS_DONE : PS_CHUNK_END;
	return 1;
}

/* 1: a whole request is in c->req; 0: more input is needed; -1: bad input,
 * c->req.error is the status to answer. */
static int request_parse(struct conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct request *q = &c->req;
	int ret;

	for (;;) {
		if (q->state == PS_DONE)
			return 1;
		if (q->state == PS_BODY || q->state == PS_CHUNK_DATA)
			ret = parse_data(q, in);
		else
			ret = parse_line(c, in);
		if (ret <= 0)
			return ret;
	}
}

static void answer_bad_request(struct conn *c, int status)
{
	struct reply r = { 0 };

	if (reply_error(&r, status, "invalid_request_error", "mock-upstream cannot read this "
			"request") < 0) {
		conn_kill(c);
		return;
	}
	/* Whatever follows a bad request is not read: the connection closes. */
	if (bufferevent_disable(c->bev, EV_READ) < 0) {
		reply_release(&r);
		conn_kill(c);
		return;
	}
	exchange_begin(c, &r, FAULT_NONE, NULL, false);
}

/* Serves the requests waiting in the input, one at a time. */
static void conn_process(struct conn *c)
{
	while (!c->dead && !c->x && !c->closing) {
		int ret = request_parse(c);

		if (ret == 0)
			return;
		if (ret < 0) {
			answer_bad_request(c, c->req.error);
			return;
		}
		serve(c);
		request_clear(&c->req);
	}
}

/* ------------------------------------------------------------------ */
/* Connections                                                         */

static void conn_free(struct conn *c, bool by_peer)
{
	struct mock *m = c->m;
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	if (c->resetting && setsockopt(bufferevent_getfd(c->bev), SOL_SOCKET, SO_LINGER, &lg,
				       sizeof lg) < 0)
		warn("cannot set SO_LINGER for a reset");
	if (!c->control && c->epoch == m->epoch) {
		m->stats.closed++;
		if (by_peer && c->x)
			m->stats.aborted++;
	}
	if (c->prev)
		c->prev->next = c->next;
	else
		m->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	exchange_free(c->x);
	request_clear(&c->req);
	if (c->req.body)
		evbuffer_free(c->req.body);
	if (c->timer)
		event_free(c->timer);
	bufferevent_free(c->bev);
	free(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;

	if (c->dead) {
		conn_free(c, false);
		return;
	}
	if (!c->x)
		return;
	exchange_step(c);
	if (!c->x && !c->closing && !c->dead)
		conn_process(c);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (!c->dead && !c->x && !c->closing)
		conn_process(c);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;

	if (c->closing && !c->dead && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		conn_free(c, false);
}

/* The client closed or the socket failed. A client that half-closes after a
 * request still gets the answer; one that leaves during a response aborts it. */
static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;

	if (c->dead)
		return;
	if (!(what & BEV_EVENT_EOF) || c->x || c->closing) {
		conn_free(c, true);
		return;
	}
	c->peer_eof = true;
	conn_process(c);
	if (!c->x && !c->closing && !c->dead)
		conn_free(c, true);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
		      int salen, void *arg)
{
	struct mock *m = arg;
	struct conn *c = calloc(1, sizeof *c);
	int one = 1;

	if (!c) {
		evutil_closesocket(fd);
		return;
	}
	/* Each SSE event leaves at once, as from a real server. */
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
		warn("cannot set TCP_NODELAY");
	c->m = m;
	c->epoch = m->epoch;
	c->bev = bufferevent_socket_new(m->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (!c->bev) {
		evutil_closesocket(fd);
		free(c);
		return;
	}
	c->timer = evtimer_new(m->base, on_timer, c);
	c->req.body = evbuffer_new();
	if (!c->timer || !c->req.body)
		goto fail;
	bufferevent_setcb(c->bev, on_read, on_write, on_event, c);
	if (bufferevent_enable(c->bev, EV_READ | EV_WRITE) < 0)
		goto fail;
	c->next = m->conns;
	if (m->conns)
		m->conns->prev = c;
	m->conns = c;
	m->stats.opened++;
	return;
fail:
	if (c->req.body)
		evbuffer_free(c->req.body);
	if (c->timer)
		event_free(c->timer);
	bufferevent_free(c->bev);
	free(c);
}

/* ------------------------------------------------------------------ */
/* Start and stop                                                      */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	struct mock *m = arg;

	if (event_base_loopbreak(m->base) < 0)
		warn("cannot stop the loop");
}

static void usage(FILE *f)
{
	fputs("usage: mock-upstream [--host 127.0.0.1] [--port 0] [--model NAME]... [--dim 8]\n"
	      "                     [--context 8192] [--event-delay-ms 0]\n", f);
}

static int parse_int_arg(const char *arg, int min, int max, int *out)
{
	char *end;
	long v = strtol(arg, &end, 10);

	if (*arg == '\0' || *end != '\0' || v < min || v > max)
		return -1;
	*out = (int)v;
	return 0;
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "host", required_argument, NULL, 'h' },
		{ "port", required_argument, NULL, 'p' },
		{ "model", required_argument, NULL, 'm' },
		{ "dim", required_argument, NULL, 'd' },
		{ "context", required_argument, NULL, 'c' },
		{ "event-delay-ms", required_argument, NULL, 'e' },
		{ "help", no_argument, NULL, 'H' },
		{ NULL, 0, NULL, 0 },
	};
	int opt, bad = 0;

	*o = (struct options){ .host = "127.0.0.1", .dim = 8, .context = 8192 };
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'h': o->host = optarg; break;
		case 'p': bad |= parse_int_arg(optarg, 0, 65535, &o->port); break;
		case 'd': bad |= parse_int_arg(optarg, 1, MAX_DIM, &o->dim); break;
		case 'c': bad |= parse_int_arg(optarg, 1, INT_MAX, &o->context); break;
		case 'e': bad |= parse_int_arg(optarg, 0, 3600000, &o->event_delay_ms); break;
		case 'm':
			if (o->n_models == MAX_MODELS)
				bad = -1;
			else
				o->models[o->n_models++] = optarg;
			break;
		case 'H': usage(stdout); exit(0);
		default: bad = -1; break;
		}
	}
	if (bad || optind != argc) {
		usage(stderr);
		return -1;
	}
	if (o->n_models == 0) {
		o->models[o->n_models++] = "mock-chat";
		o->models[o->n_models++] = "mock-embed";
	}
	return 0;
}

static int listen_and_announce(struct mock *m)
{
	struct sockaddr_storage ss = { 0 };
	socklen_t len = sizeof ss;
	int port;
	bool v6 = strchr(m->opt.host, ':') != NULL;
	struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

	if (v6) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)m->opt.port);
		len = sizeof *sin6;
		if (evutil_inet_pton(AF_INET6, m->opt.host, &sin6->sin6_addr) != 1)
			goto bad_host;
	} else {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)m->opt.port);
		len = sizeof *sin;
		if (evutil_inet_pton(AF_INET, m->opt.host, &sin->sin_addr) != 1)
			goto bad_host;
	}
	m->listener = evconnlistener_new_bind(m->base, on_accept, m, LEV_OPT_REUSEABLE |
					      LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1,
					      (struct sockaddr *)&ss, (int)len);
	if (!m->listener) {
		warn("cannot listen on %s:%d: %s", m->opt.host, m->opt.port,
		     evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		return -1;
	}
	len = sizeof ss;
	if (getsockname(evconnlistener_get_fd(m->listener), (struct sockaddr *)&ss, &len) < 0)
		return -1;
	port = ntohs(v6 ? sin6->sin6_port : sin->sin_port);
	if (printf(v6 ? "listening on [%s]:%d\n" : "listening on %s:%d\n", m->opt.host, port) < 0 ||
	    fflush(stdout) != 0)
		return -1;
	return 0;
bad_host:
	warn("not a numeric address: %s", m->opt.host);
	return -1;
}

static int mock_init(struct mock *m)
{
	m->metrics_running = -1;
	m->metrics_waiting = -1;
	m->event_delay_ms = m->opt.event_delay_ms;
	if (stats_init(&m->stats) < 0)
		return -1;
	m->base = event_base_new();
	if (!m->base)
		return -1;
	m->sig_term = evsignal_new(m->base, SIGTERM, on_signal, m);
	m->sig_int = evsignal_new(m->base, SIGINT, on_signal, m);
	if (!m->sig_term || !m->sig_int || event_add(m->sig_term, NULL) < 0 ||
	    event_add(m->sig_int, NULL) < 0)
		return -1;
	return 0;
}

static void mock_fini(struct mock *m)
{
	while (m->conns) {
		m->conns->resetting = false;
		conn_free(m->conns, false);
	}
	if (m->listener)
		evconnlistener_free(m->listener);
	if (m->sig_term)
		event_free(m->sig_term);
	if (m->sig_int)
		event_free(m->sig_int);
	if (m->base)
		event_base_free(m->base);
	fault_clear(&m->fault);
	stats_fini(&m->stats);
	libevent_global_shutdown();
}

int main(int argc, char **argv)
{
	struct mock m = { 0 };
	int rc = 1;

	if (parse_options(argc, argv, &m.opt) < 0)
		return 2;
	/* A client that leaves mid-stream must not kill the mock. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		goto out;
	if (mock_init(&m) < 0) {
		warn("cannot start");
		goto out;
	}
	if (listen_and_announce(&m) < 0)
		goto out;
	if (event_base_dispatch(m.base) < 0)
		goto out;
	rc = 0;
out:
	mock_fini(&m);
	return rc;
}
