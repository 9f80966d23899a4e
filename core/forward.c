/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The forwarding engine: POST /v1/chat/completions, /v1/completions,
 * /v1/embeddings, /v1/rerank, /v1/audio/transcriptions and /v1/ocr.
 *
 * The hot path builds no JSON tree (DESIGN §2): the body is validated once
 * with lg_json_scan(), which also gives the spans of its top-level members;
 * "model" (and for streams "stream_options") is spliced in place; replies
 * and server-sent events are scanned the same way and only "id", "model"
 * and "usage" are rewritten. Nothing here wakes another thread per request.
 *
 * A request goes through these steps, all on its worker:
 *   parse and validate the body -> resolve the model (view held until the
 *   end) -> AUTHORIZE hooks -> PRE_UPSTREAM hooks -> choose a provider
 *   (strategy, breaker, concurrency cap; wait for a slot if all are busy)
 *   -> one attempt (provider type's prepare(), then its serve() or an
 *   outbound fetch) -> on failure before the first byte reached the client,
 *   up to two more attempts after a full-jitter backoff -> the reply or the
 *   relayed stream -> COMPLETE hooks -> the last bytes of the answer.
 *
 * Decisions:
 * - COMPLETE runs exactly once for every request whose model was resolved
 *   and served this endpoint (that is when req->call is set), whatever
 *   happens next: an AUTHORIZE or PRE_UPSTREAM hook answered (status 0: the
 *   gateway does not know what the hook sent), no provider, upstream
 *   failures, the client left. Requests refused before that (invalid body,
 *   refused fields, unknown model 404, wrong model type 422) have no call
 *   and no COMPLETE.
 * - COMPLETE runs before the last part of the answer is sent (the whole
 *   reply, or a stream's usage event, [DONE] and end), so that hooks see
 *   the final usage and the request is still alive for them (they may go
 *   PENDING). Cost and impacts (core/impacts.c, docs/impacts.md) are
 *   computed with the final usage before COMPLETE, so that hooks and the
 *   reply's usage show the same figures. When a hook answered the request
 *   itself, the request ends with that answer: COMPLETE hooks then run at
 *   once and must not go PENDING (status 0 tells them).
 * - Failover: a connect error, a timeout, a reset, a 5xx or a 429 (also as
 *   the first event of a 200 stream) before the first byte reached the
 *   client is retried at most twice, on a provider of the model not tried
 *   yet when there is one, after a random delay in [0, min(1 s, 100 ms *
 *   2^n)]; a 429's Retry-After of at most 5 s is a floor for that delay, a
 *   longer one ends the retries. When every attempt failed: an upstream HTTP
 *   error status passes through with the upstream's message (error.message,
 *   detail or message of a JSON body, else the body, cut at 1000 bytes);
 *   transport failures, open breakers and slot waits that time out answer
 *   503 "Model is too busy, please try again later." with Retry-After: 10.
 *   An invalid reply (not JSON, an oversized event, a redirect, which is
 *   never followed) answers 502 and is not retried.
 * - Mid-stream (after the first byte) an upstream reset, timeout, error
 *   event or invalid event becomes one "event: error" frame, and the stream
 *   ends without [DONE].
 * - A provider at its max_concurrency is waited for without polling, for
 *   its first_byte_timeout when set, else SLOT_WAIT_MS.
 * - Breaker reports: transport failures, 5xx, 429 and invalid replies count
 *   as failures; other answers as successes; a call the client abandoned
 *   reports nothing.
 * - Tokens: the provider's usage when it gives one; otherwise estimated as
 *   ceil(characters / 4), characters counted in Unicode code points of the
 *   request's prompt strings (messages, prompt, input, query, documents)
 *   and of the reply's content (message or delta content and
 *   reasoning_content, or text), and usage_estimated is set. A call that
 *   failed before any reply has 0 tokens.
 * - Times: ttft_ms and latency_ms count from the request's arrival.
 *   Server-Timing: auth = arrival to handler; limits = AUTHORIZE hooks;
 *   route = model resolution, PRE_UPSTREAM hooks, provider choice, slot
 *   waits, failed attempts and backoff; upstream = the last attempt until
 *   its reply (streams: its first event); total = arrival to now.
 * - Client gone: the upstream is cancelled at once (fetch cancel or the
 *   type's cancel()), COMPLETE runs with client_gone and the tokens relayed
 *   so far (status 499 if no reply had started).
 * - Slow client: when more than STREAM_HIGH_WATER bytes wait for the
 *   client, the upstream transfer is paused until the drain callback (an
 *   in-process serve() cannot be paused; its output is queued).
 * - Calls made by plugins (host->model_call()) run this same engine on a
 *   request without an exchange (struct icall): answers go to the plugin
 *   (out_reply(), out_error()), headers nowhere, and they are never
 *   streamed. AUTHORIZE and COMPLETE hooks run as for a client's call, with
 *   the plugin's principal, so limits and usage count them. The answer is
 *   handed over from the loop once the engine is done with the request.
 * - Hooks rewrite a call: call_set_body() swaps the body that goes upstream
 *   (then rescanned: model, stream_options); call_reply_member() adds
 *   members that are spliced into the reply, or into the first event,
 *   with the same editor as id, model and usage.
 */
#include "forward.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <sodium.h>

#include "balancer.h"
#include "fetch.h"
#include "httpd.h"
#include "impacts.h"
#include "json.h"
#include "log.h"
#include "models.h"
#include "multipart.h"

#define COMPONENT "forward"

#define MAX_ATTEMPTS 3                  /* the first and at most two retries */
#define BACKOFF_BASE_MS 100u
#define BACKOFF_CAP_MS 1000u
#define RETRY_AFTER_MAX_MS 5000u   /* longer asked pauses are not waited for */
#define SLOT_WAIT_MS 30000u             /* waiting for a capped provider */
#define STREAM_HIGH_WATER (256u * 1024) /* the httpd's stream_high_water (server.c) */
#define EVENT_MAX (16u << 20)           /* one server-sent event */
#define ERROR_BODY_MAX (64u * 1024)     /* kept of an upstream error body */
#define DETAIL_MAX 1000                 /* of a raw upstream body in an error */
#define REPLY_MAX ((size_t)64 << 20)    /* a buffered upstream reply */
#define TRANSCRIPTION_MAX_BODY ((size_t)25 << 20)
#define REPLY_MEMBERS_MAX 8             /* call_reply_member() per call */
#define REPLY_MEMBER_NAME_MAX 64
#define MODEL_NAME_MAX 256
#define SMALL_MEMBERS 32

#define BUSY_MESSAGE "Model is too busy, please try again later."

struct endpoint {
	enum lg_endpoint id;
	const char *path;               /* on the gateway and on the upstream */
	const char *model_type;
	bool multipart;
	bool streams;                   /* "stream": true is honoured */
	const char *chunk_object;       /* "object" of the final usage event */
	const char *prompt[3];          /* members whose strings make the prompt */
};

static const struct endpoint endpoints[] = {
	{ LG_ENDPOINT_CHAT, "/v1/chat/completions", "text-generation", false, true,
	  "chat.completion.chunk", { "messages", NULL, NULL } },
	{ LG_ENDPOINT_COMPLETIONS, "/v1/completions", "text-generation", false, true,
	  "text_completion", { "prompt", NULL, NULL } },
	{ LG_ENDPOINT_EMBEDDINGS, "/v1/embeddings", "text-embeddings-inference", false, false,
	  NULL, { "input", NULL, NULL } },
	{ LG_ENDPOINT_RERANK, "/v1/rerank", "text-classification", false, false,
	  NULL, { "query", "documents", NULL } },
	{ LG_ENDPOINT_TRANSCRIPTION, "/v1/audio/transcriptions", "automatic-speech-recognition",
	  true, false, NULL, { NULL, NULL, NULL } },
	{ LG_ENDPOINT_OCR, "/v1/ocr", "image-to-text", false, false, NULL, { NULL, NULL, NULL } },
};

/* Body fields that would let a client point the gateway elsewhere or
 * inject credentials (DESIGN §8): refused, never forwarded. */
static const char *const refused_fields[] = {
	"api_base", "base_url", "api_key", "api_type", "api_version", "extra_headers",
	"extra_query", "custom_llm_provider", "azure_endpoint", "azure_ad_token",
	"organization", "api_host", "aws_access_key_id", "aws_secret_access_key",
	"vertex_credentials", NULL,
};

/* ---- small buffers (malloc'ed: they may grow large) ---- */

struct buf {
	char *p;
	size_t len, cap;
};

static int buf_reserve(struct buf *b, size_t more)
{
	size_t want;
	char *p;

	if (b->cap - b->len > more)
		return 0;
	want = b->cap ? b->cap * 2 : 1024;
	while (want - b->len <= more)
		want *= 2;
	p = realloc(b->p, want);
	if (!p)
		return -1;
	b->p = p;
	b->cap = want;
	return 0;
}

static int buf_add(struct buf *b, const void *data, size_t n)
{
	if (buf_reserve(b, n) < 0)
		return -1;
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

static int buf_str(struct buf *b, const char *s)
{
	return buf_add(b, s, strlen(s));
}

static int LG_PRINTF(2, 3) buf_printf(struct buf *b, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof small)
		return -1;
	return buf_add(b, small, (size_t)n);
}

static void buf_free(struct buf *b)
{
	free(b->p);
	*b = (struct buf){ 0 };
}

/* ---- odds and ends ---- */

static _Thread_local uint64_t rng_state;

/* xorshift64*: shuffles and jitter need speed, not secrecy. */
static uint32_t rng_below(uint32_t n)
{
	if (!rng_state)
		rng_state = ((uint64_t)randombytes_random() << 32 | randombytes_random()) | 1;
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return n ? (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32) % n : 0;
}

static uint64_t now_ms(void)
{
	return lg_now_ns() / 1000000u;
}

static double ms_between(uint64_t from_ns, uint64_t to_ns)
{
	return to_ns > from_ns ? (double)(to_ns - from_ns) / 1e6 : 0;
}


/* @s as a JSON string token in the request's memory. */
static struct lg_str req_json_token(struct lg_req *req, const char *s)
{
	size_t len = strlen(s);
	char *out = lg_req_alloc(req, lg_json_escaped_max(len) + 1);

	if (!out)
		return (struct lg_str){ NULL, 0 };
	return (struct lg_str){ out, lg_json_escape(s, len, out) };
}

static int64_t tokens_of_chars(size_t chars)
{
	return (int64_t)((chars + 3) / 4);
}

/* One change of a JSON text: @del bytes at @at replaced by the parts. */
struct edit {
	size_t at, del;
	struct lg_str part[3];
};

/* Changes to the members of one JSON object: values replaced in place,
 * new members appended before its closing brace. */
struct editor {
	struct edit e[4 + REPLY_MEMBERS_MAX];
	size_t n;
	size_t close_at;                /* the closing brace */
	size_t members;                 /* the object's, and those added */
};

/* ---- one forwarded request ---- */

enum fwd_state {
	FWD_HOOKS,          /* AUTHORIZE or PRE_UPSTREAM hooks */
	FWD_WAITING,        /* for a provider slot */
	FWD_BACKOFF,        /* between two attempts */
	FWD_UPSTREAM,       /* an attempt in flight */
	FWD_FINISHING,      /* COMPLETE hooks; then the answer */
	FWD_DONE,
};

enum failure {
	FAIL_NONE,
	FAIL_TRANSPORT,     /* connect, timeout, reset: retried */
	FAIL_STATUS,        /* the upstream's error status: 5xx and 429 retried */
	FAIL_REPLY,         /* an invalid reply: 502 */
	FAIL_BUSY,          /* no provider or slot: 503 */
};

struct fwd;

/* A member a hook adds to the reply (call_reply_member()). */
struct reply_member {
	const char *name;
	struct lg_str key_lit;          /* "name": */
	struct lg_str value;
};

/* The link between an attempt and its transfer. Allocated apart from the
 * request: when the client leaves, the request finishes at once and the
 * cancelled transfer's last callback only frees this. */
struct upstream {
	struct fwd *f;                  /* NULL once detached */
	struct lg_fetch *fetch;         /* or, for serve(): */
	void *handle;
	const struct lg_provider_entry *impl;
};

struct fwd {
	struct lg_req *req;
	struct lg_runtime *rt;
	const struct endpoint *ep;
	struct lg_call call;
	enum fwd_state state;

	/* the client's request */
	struct lg_str body;
	size_t model_at, model_len;     /* the model's JSON token or form value */
	const char *client_model;
	struct lg_str client_model_tok; /* as a JSON string */
	struct lg_str rid_tok;
	size_t body_members;
	bool stream;
	bool has_stream_options;
	size_t opts_at, opts_len;       /* stream_options' value */
	size_t body_close;              /* offset of the body's final '}' */
	const char *content_type;       /* multipart: the client's */
	size_t prompt_chars;
	struct lg_str upbody;           /* what goes upstream, for upbody_model */
	const char *upbody_model;

	struct reply_member added[REPLY_MEMBERS_MAX]; /* call_reply_member() */
	size_t nadded;

	struct lg_json_member *members; /* of the last JSON scanned (malloc'ed) */
	size_t members_cap;

	/* the model and the choice of provider */
	struct lg_models_view *view;
	const struct lg_model *model;
	bool *tried;                    /* per provider of the model */
	size_t *order;                  /* providers to try, in order */
	int *busy;                      /* their requests in flight (least_busy) */
	const struct lg_model_provider *prov;
	bool holds_slot;
	struct lg_provider_wait *wait;
	struct event *timer;
	int attempts;

	/* the attempt in flight */
	struct upstream *up;
	int status;
	uint32_t retry_after_ms;        /* a 429's Retry-After, or 0 */
	char ctype[128];
	bool sse;                       /* 2xx text/event-stream: relayed */
	struct buf in;                  /* unparsed event bytes, or an error body */
	size_t pos, scan;               /* line start, and how far we looked for '\n' */
	struct buf ev;                  /* data of the event being read */
	bool ev_has_data;
	char ev_type[32];
	struct buf out;
	bool want_pause, paused;
	bool done_seen;

	/* the outcome */
	enum failure fail;
	int fail_status;
	char *fail_detail;              /* malloc'ed */
	bool started;                   /* the client's stream began */
	bool stream_broken;             /* an error event went out */
	bool client_gone;
	bool hook_answered;
	bool usage_known;
	bool reply_ok;                  /* a 2xx reply or stream arrived */
	int64_t prompt_tokens, completion_tokens, total_tokens;
	size_t completion_chars;
	int reply_status;
	bool reply_json;                /* in holds a JSON reply to rewrite */
	struct editor red;              /* its rewrite */
	size_t usage_edit;
	char error[256];

	/* times (lg_now_ns) */
	uint64_t handler_ns, authorize_ns, authorized_ns, attempt_ns, replied_ns, first_token_ns;
};

static struct fwd *fwd_of(struct lg_req *req)
{
	return (struct fwd *)((char *)req->call - offsetof(struct fwd, call));
}

static void LG_PRINTF(2, 3) set_error(struct fwd *f, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(f->error, sizeof f->error, fmt, ap);
	va_end(ap);
}

/* ---- where answers go: a client's exchange, or a plugin's call ---- */

/* A call made by a plugin (host->model_call()): a request without an
 * exchange. Its answer is kept and handed to @done from the loop, once,
 * after the engine is finished with the request. */
struct icall {
	struct lg_req req;              /* first: the engine sees only this */
	struct lg_internal_req info;
	const struct endpoint *ep;
	lg_model_done_fn done;
	void *arg;
	struct event *ev;               /* starts the call, then delivers it */
	bool started, answered, engine_done, delivered;
	int status;
	char *reply;                    /* malloc'ed */
	size_t reply_len;
	const char *error;
	char id[64];
};

/* Marks the requests of calls made by plugins. */
static const struct lg_route_entry internal_route;

static struct icall *icall_of(const struct lg_req *req)
{
	return req->match.entry == &internal_route ? (struct icall *)req : NULL;
}

const struct lg_internal_req *lg_forward_internal(const struct lg_req *req)
{
	struct icall *ic = icall_of(req);

	return ic ? &ic->info : NULL;
}

static const char *req_rid(const struct lg_req *req)
{
	struct icall *ic = icall_of(req);

	return ic ? ic->id : lg_exchange_id(req->ex);
}

static const char *rid(const struct fwd *f)
{
	return req_rid(f->req);
}

static void icall_arm(struct icall *ic);

void lg_forward_internal_reply(struct lg_req *req, int status, const char *body, size_t len)
{
	struct icall *ic = icall_of(req);

	if (!ic || ic->answered)
		return;
	ic->answered = true;
	ic->status = status;
	ic->reply = malloc(len + 1);
	if (ic->reply) {
		memcpy(ic->reply, body, len);
		ic->reply[len] = '\0';
		ic->reply_len = len;
	} else {
		ic->status = 0;
		ic->error = "out of memory for the reply";
	}
	icall_arm(ic);
}

void lg_forward_internal_error(struct lg_req *req, int status, const char *msg)
{
	char *body = lg_error_body(status, msg);

	if (!body) {
		lg_forward_internal_reply(req, status, "{}", 2);
		return;
	}
	lg_forward_internal_reply(req, status, body, strlen(body));
	free(body);
}

static void out_reply(struct lg_req *req, int status, const char *ctype, const char *body,
		      size_t len)
{
	if (icall_of(req))
		lg_forward_internal_reply(req, status, body, len);
	else
		lg_exchange_reply(req->ex, status, ctype, body, len);
}

static void out_error(struct lg_req *req, int status, const char *msg)
{
	if (icall_of(req))
		lg_forward_internal_error(req, status, msg);
	else
		lg_exchange_reply_error(req->ex, status, msg);
}

/* Headers only mean something to a client. */
static int out_header(struct lg_req *req, const char *name, const char *value)
{
	return icall_of(req) ? 0 : lg_exchange_add_header(req->ex, name, value);
}

/* Records why this attempt failed; the first reason wins. */
static void fail_attempt(struct fwd *f, enum failure kind, int status, const char *detail,
			 size_t detail_len)
{
	if (f->fail != FAIL_NONE)
		return;
	f->fail = kind;
	f->fail_status = status;
	free(f->fail_detail);
	f->fail_detail = NULL;
	if (detail) {
		if (detail_len > DETAIL_MAX)
			detail_len = DETAIL_MAX;
		f->fail_detail = strndup(detail, detail_len);
	}
}

static void fail_msg(struct fwd *f, enum failure kind, int status, const char *msg)
{
	fail_attempt(f, kind, status, msg, strlen(msg));
}

static void finish(struct fwd *f);
static void select_provider(struct fwd *f);
static void attempt_failed(struct fwd *f);

/* ---- answering before the call exists ---- */

static void answer_error(struct lg_req *req, int status, const char *fmt, ...) LG_PRINTF(3, 4);

static void answer_error(struct lg_req *req, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (req->answered)
		return;
	req->answered = true;
	out_error(req, status, msg);
}

/* ---- reading the client's JSON body ---- */

/* Validates @text (an object or not) within the server's bounds and lists
 * its top-level members in f->members, which every scan reuses (one event
 * of a stream after the other); -1 with @err on failure. */
static int scan_object(struct fwd *f, const char *text, size_t len, size_t max_string,
		       struct lg_json_member **members, size_t *n, enum lg_json_type *type,
		       char *err, size_t errlen)
{
	const struct lg_core_config *cfg = f->rt->cfg;
	struct lg_json_limits lim = {
		.max_depth = cfg->json_max_depth, .max_items = cfg->json_max_items,
		.max_string = max_string,
	};
	size_t most = cfg->json_max_items;
	struct lg_json_member *grown;

	if (!f->members) {
		f->members = malloc(SMALL_MEMBERS * sizeof *f->members);
		if (!f->members) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		f->members_cap = SMALL_MEMBERS;
	}
	*members = f->members;
	if (lg_json_scan(text, len, &lim, f->members, f->members_cap, n, type, err, errlen) == 0)
		return 0;
	/* Rare: more top-level members than the first guess. */
	if (!strstr(err, "too many top-level members") || most <= f->members_cap)
		return -1;
	grown = realloc(f->members, most * sizeof *grown);
	if (!grown)
		return -1;
	f->members = grown;
	f->members_cap = most;
	*members = grown;
	return lg_json_scan(text, len, &lim, grown, most, n, type, err, errlen);
}

static bool refused_field(const char *name)
{
	for (size_t i = 0; refused_fields[i]; i++)
		if (strcasecmp(name, refused_fields[i]) == 0)
			return true;
	return false;
}

/* Refuses fields that would redirect the gateway. Top-level keys carry no
 * escapes (lg_json_scan() refuses "api\u005fbase"), so they compare as
 * they are. */
static int check_fields(struct fwd *f, const struct lg_json_member *m, size_t n)
{
	char name[64];

	for (size_t i = 0; i < n; i++) {
		if (m[i].key_len >= sizeof name)
			continue;
		memcpy(name, m[i].key, m[i].key_len);
		name[m[i].key_len] = '\0';
		if (refused_field(name)) {
			answer_error(f->req, 400, "Field %s is not allowed: upstream addresses and "
				     "credentials come from the configuration.", name);
			return -1;
		}
	}
	return 0;
}

/* At the opening quote; returns just after the closing one. */
static const char *skip_string(const char *p, const char *end)
{
	for (p++; p < end; p++) {
		if (*p == '\\')
			p++;
		else if (*p == '"')
			return p + 1;
	}
	return end;
}

/* Characters of every string value (not key) in validated JSON text. */
static size_t text_chars(const char *p, size_t len)
{
	const char *end = p + len;
	size_t n = 0;

	while (p < end) {
		const char *s, *q;

		if (*p != '"') {
			p++;
			continue;
		}
		s = p;
		p = skip_string(p, end);
		for (q = p; q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'); q++)
			;
		if (q < end && *q == ':')
			continue;
		n += lg_json_string_chars(s, (size_t)(p - s));
	}
	return n;
}

/* Notes where f->body's members are, for upstream_body(): "model" (or
 * none: SIZE_MAX), "stream_options", the closing brace; and counts the
 * prompt's characters. */
static void note_members(struct fwd *f, const struct lg_json_member *m, size_t n)
{
	const struct lg_json_member *model = lg_json_find(m, n, "model");
	const struct lg_json_member *opts = lg_json_find(m, n, "stream_options");

	f->body_members = n;
	f->model_at = model ? (size_t)(model->value - f->body.ptr) : SIZE_MAX;
	f->model_len = model ? model->value_len : 0;
	f->has_stream_options = opts != NULL;
	f->opts_at = opts ? (size_t)(opts->value - f->body.ptr) : 0;
	f->opts_len = opts ? opts->value_len : 0;
	f->body_close = f->body.len;
	while (f->body_close > 0 && f->body.ptr[f->body_close - 1] != '}')
		f->body_close--;
	f->body_close--;
	f->prompt_chars = 0;
	for (size_t i = 0; i < LG_COUNT(f->ep->prompt) && f->ep->prompt[i]; i++) {
		const struct lg_json_member *p = lg_json_find(m, n, f->ep->prompt[i]);

		if (p)
			f->prompt_chars += text_chars(p->value, p->value_len);
	}
}

static int read_json_body(struct fwd *f)
{
	struct lg_req *req = f->req;
	struct lg_json_member *m;
	const struct lg_json_member *model, *stream, *max;
	enum lg_json_type type;
	char err[192];
	size_t n;
	char *name;
	long long v;

	if (scan_object(f, f->body.ptr, f->body.len, req->rt->cfg->max_body_bytes, &m, &n,
			&type, err, sizeof err) < 0) {
		answer_error(req, 400, "%s", err);
		return -1;
	}
	if (type != LG_JSON_OBJECT) {
		answer_error(req, 422, "body: Input should be a valid dictionary or object.");
		return -1;
	}
	if (check_fields(f, m, n) < 0)
		return -1;
	model = lg_json_find(m, n, "model");
	if (!model) {
		answer_error(req, 422, "body.model: Field required.");
		return -1;
	}
	if (model->type != LG_JSON_STRING || model->value_len <= 2) {
		answer_error(req, 422, "body.model: Input should be a valid string.");
		return -1;
	}
	name = lg_req_alloc(req, model->value_len + 1);
	if (!name) {
		answer_error(req, 503, "Out of memory, please try again later.");
		return -1;
	}
	lg_json_unescape(model->value, model->value_len, name);
	f->client_model = name;
	stream = lg_json_find(m, n, "stream");
	f->stream = f->ep->streams && lg_json_is_true(stream);
	if (f->stream && icall_of(req)) {
		answer_error(req, 400, "body.stream: calls made by plugins are not streamed.");
		return -1;
	}
	note_members(f, m, n);
	max = lg_json_find(m, n, "max_completion_tokens");
	if (!max || max->type != LG_JSON_NUMBER)
		max = lg_json_find(m, n, "max_tokens");
	/* A negative value is as good as none (hooks reserve budget from it). */
	f->call.max_tokens = max && max->type == LG_JSON_NUMBER &&
			     lg_json_int(max->value, max->value_len, &v) && v >= 0 ? v : -1;
	return 0;
}

/* ---- reading a multipart/form-data body (transcriptions) ---- */

/* The form's model (its value is replaced in place for the upstream) and
 * its file are required; fields that would redirect the gateway are
 * refused as in JSON bodies. */
static int read_multipart_body(struct fwd *f)
{
	struct lg_req *req = f->req;
	struct lg_form_part *parts;
	bool has_file = false, has_model = false;
	char err[160];
	size_t n;

	f->content_type = lg_exchange_header(req->ex, "Content-Type");
	if (lg_multipart_parse(req, f->content_type, f->body, &parts, &n, err, sizeof err) < 0) {
		answer_error(req, 400, "%s", err);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		const struct lg_str *v = &parts[i].data;

		if (refused_field(parts[i].name)) {
			answer_error(req, 400, "Field %.64s is not allowed: upstream addresses and "
				     "credentials come from the configuration.", parts[i].name);
			return -1;
		}
		if (strcmp(parts[i].name, "file") == 0) {
			has_file = true;
		} else if (strcmp(parts[i].name, "model") == 0) {
			char *name;

			if (has_model) {
				answer_error(req, 400, "Duplicate field model in the form.");
				return -1;
			}
			if (v->len == 0 || v->len > MODEL_NAME_MAX || memchr(v->ptr, '\0', v->len) ||
			    memchr(v->ptr, '\r', v->len) || memchr(v->ptr, '\n', v->len)) {
				answer_error(req, 422, "body.model: Input should be a valid string.");
				return -1;
			}
			name = lg_req_alloc(req, v->len + 1);
			if (!name) {
				answer_error(req, 503, "Out of memory, please try again later.");
				return -1;
			}
			memcpy(name, v->ptr, v->len);
			f->client_model = name;
			f->model_at = (size_t)(v->ptr - f->body.ptr);
			f->model_len = v->len;
			has_model = true;
		}
	}
	if (!has_model) {
		answer_error(req, 422, "body.model: Field required.");
		return -1;
	}
	if (!has_file) {
		answer_error(req, 422, "body.file: Field required.");
		return -1;
	}
	return 0;
}

/* ---- replies ---- */

/* Tenths of a millisecond between two times (integer formatting is cheaper
 * than %f on the hot path). */
static unsigned long long tenths(uint64_t from_ns, uint64_t to_ns)
{
	return to_ns > from_ns ? (to_ns - from_ns) / 100000u : 0;
}

#define TENTHS_FMT "%llu.%llu"
#define TENTHS(t) (t) / 10, (t) % 10

static void add_server_timing(struct fwd *f)
{
	uint64_t now = lg_now_ns();
	uint64_t start = f->req->start_ns;
	uint64_t authorize = f->authorize_ns ? f->authorize_ns : f->handler_ns;
	uint64_t authorized = f->authorized_ns ? f->authorized_ns : now;
	uint64_t attempt = f->attempt_ns ? f->attempt_ns : now;
	uint64_t replied = f->replied_ns ? f->replied_ns : now;
	unsigned long long auth = tenths(start, f->handler_ns);
	unsigned long long limits = f->authorize_ns ? tenths(authorize, authorized) : 0;
	unsigned long long route = tenths(f->handler_ns, authorize) + tenths(authorized, attempt);
	unsigned long long upstream = f->attempt_ns ? tenths(attempt, replied) : 0;
	unsigned long long total = tenths(start, now);
	char v[256];

	snprintf(v, sizeof v, "auth;dur=" TENTHS_FMT ", limits;dur=" TENTHS_FMT ", route;dur="
		 TENTHS_FMT ", upstream;dur=" TENTHS_FMT ", total;dur=" TENTHS_FMT,
		 TENTHS(auth), TENTHS(limits), TENTHS(route), TENTHS(upstream), TENTHS(total));
	if (out_header(f->req, "Server-Timing", v) < 0)
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "cannot add Server-Timing");
}

/* @x as the shortest text that reads back as the same double; JSON has no
 * NaN or infinity, those are written 0. */
static int buf_double(struct buf *b, double x)
{
	char s[32];

	if (x == 0 || !isfinite(x))
		return buf_str(b, "0");     /* the common case: no prices, no params */
	for (int digits = 15; digits <= 17; digits++) {
		snprintf(s, sizeof s, "%.*g", digits, x);
		if (strtod(s, NULL) == x)
			break;
	}
	return buf_str(b, s);
}

/* The usage object of replies and of the final stream event: the tokens,
 * the cost and the impacts of the call as fill_call() left them. */
static int usage_json(struct fwd *f, struct buf *b)
{
	const struct lg_call *c = &f->call;

	if (buf_printf(b, "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,"
		       "\"total_tokens\":%lld,\"cost\":", (long long)c->prompt_tokens,
		       (long long)c->completion_tokens, (long long)c->total_tokens) < 0 ||
	    buf_double(b, c->cost) < 0 || buf_str(b, ",\"impacts\":{\"kWh\":") < 0 ||
	    buf_double(b, c->kwh) < 0 || buf_str(b, ",\"kgCO2eq\":") < 0 ||
	    buf_double(b, c->kgco2eq) < 0 || buf_str(b, "}}") < 0)
		return -1;
	return 0;
}

#define LIT(s) ((struct lg_str){ (s), sizeof(s) - 1 })

static void editor_init(struct editor *ed, const char *obj, size_t len, size_t members)
{
	ed->n = 0;
	ed->members = members;
	ed->close_at = len;
	while (ed->close_at > 0 && obj[ed->close_at - 1] != '}')
		ed->close_at--;
	if (ed->close_at > 0)
		ed->close_at--;
}

/* Sets member @key (plain ASCII) to @tok; returns the edit's index. */
static size_t editor_set(struct editor *ed, const char *obj, const struct lg_json_member *m,
			 size_t n, const char *key, struct lg_str key_lit, struct lg_str tok)
{
	const struct lg_json_member *have = lg_json_find(m, n, key);
	struct edit *e = &ed->e[ed->n];

	if (have) {
		*e = (struct edit){ .at = (size_t)(have->value - obj), .del = have->value_len,
				    .part = { tok } };
	} else {
		*e = (struct edit){ .at = ed->close_at,
				    .part = { ed->members ? LIT(",") : (struct lg_str){ "", 0 },
					      key_lit, tok } };
		ed->members++;
	}
	return ed->n++;
}

/* The length of @len bytes of text once the edits are applied. */
static size_t editor_size(const struct editor *ed, size_t len)
{
	for (size_t i = 0; i < ed->n; i++) {
		len -= ed->e[i].del;
		for (size_t k = 0; k < 3; k++)
			len += ed->e[i].part[k].len;
	}
	return len;
}

/* Writes @text with the edits applied (sorted by position; those at the
 * same position keep their order) to @dst, which has editor_size() bytes. */
static void editor_copy(const struct editor *ed, char *dst, const char *text, size_t len)
{
	struct edit sorted[LG_COUNT(ed->e)];
	size_t at = 0;

	memcpy(sorted, ed->e, ed->n * sizeof *sorted);
	for (size_t i = 1; i < ed->n; i++)
		for (size_t j = i; j > 0 && sorted[j].at < sorted[j - 1].at; j--) {
			struct edit t = sorted[j];

			sorted[j] = sorted[j - 1];
			sorted[j - 1] = t;
		}
	for (size_t i = 0; i < ed->n; i++) {
		memcpy(dst, text + at, sorted[i].at - at);
		dst += sorted[i].at - at;
		for (size_t k = 0; k < 3; k++) {
			if (sorted[i].part[k].len)
				memcpy(dst, sorted[i].part[k].ptr, sorted[i].part[k].len);
			dst += sorted[i].part[k].len;
		}
		at = sorted[i].at + sorted[i].del;
	}
	memcpy(dst, text + at, len - at);
}

/* Appends @text with the edits applied to @out. */
static int editor_apply(const struct editor *ed, struct buf *out, const char *text, size_t len)
{
	size_t size = editor_size(ed, len);

	if (buf_reserve(out, size) < 0)
		return -1;
	editor_copy(ed, out->p + out->len, text, len);
	out->len += size;
	out->p[out->len] = '\0';
	return 0;
}

/* The members hooks added (call_reply_member()), set in @text's object. */
static void add_reply_members(const struct fwd *f, struct editor *ed, const char *text,
			      const struct lg_json_member *m, size_t n)
{
	for (size_t i = 0; i < f->nadded; i++)
		editor_set(ed, text, m, n, f->added[i].name, f->added[i].key_lit,
			   f->added[i].value);
}

/* ---- usage and content ---- */

static bool member_int(const char *obj, size_t len, const char *key, int64_t *out)
{
	struct lg_json_member m;
	long long v;

	if (!lg_json_get(obj, len, key, &m) || m.type != LG_JSON_NUMBER ||
	    !lg_json_int(m.value, m.value_len, &v) || v < 0)
		return false;
	*out = v;
	return true;
}

/* Reads a "usage" object; true if it held token counts. */
static bool read_usage(struct fwd *f, const struct lg_json_member *usage)
{
	int64_t prompt = 0, completion = 0, total = 0;
	bool has_p, has_c, has_t;

	if (!usage || usage->type != LG_JSON_OBJECT)
		return false;
	has_p = member_int(usage->value, usage->value_len, "prompt_tokens", &prompt);
	has_c = member_int(usage->value, usage->value_len, "completion_tokens", &completion);
	has_t = member_int(usage->value, usage->value_len, "total_tokens", &total);
	if (!has_p && !has_c && !has_t)
		return false;
	f->usage_known = true;
	f->prompt_tokens = prompt;
	f->completion_tokens = completion;
	f->total_tokens = has_t ? total : prompt + completion;
	return true;
}

static size_t string_member_chars(const char *obj, size_t len, const char *key)
{
	struct lg_json_member m;

	if (!lg_json_get(obj, len, key, &m) || m.type != LG_JSON_STRING)
		return 0;
	return lg_json_string_chars(m.value, m.value_len);
}

/* Characters of generated content in a "choices" array: message or delta
 * content and reasoning_content, or text (completions). */
static size_t choices_chars(const struct lg_json_member *choices)
{
	struct lg_json_iter it;
	struct lg_json_member c, inner;
	size_t n = 0;

	if (!choices || choices->type != LG_JSON_ARRAY ||
	    !lg_json_iter_init(&it, choices->value, choices->value_len))
		return 0;
	while (lg_json_iter_next(&it, &c)) {
		if (c.type != LG_JSON_OBJECT)
			continue;
		if ((lg_json_get(c.value, c.value_len, "delta", &inner) ||
		     lg_json_get(c.value, c.value_len, "message", &inner)) &&
		    inner.type == LG_JSON_OBJECT) {
			n += string_member_chars(inner.value, inner.value_len, "content");
			n += string_member_chars(inner.value, inner.value_len, "reasoning_content");
		}
		n += string_member_chars(c.value, c.value_len, "text");
	}
	return n;
}

static bool empty_array(const struct lg_json_member *m)
{
	struct lg_json_iter it;
	struct lg_json_member e;

	return m && m->type == LG_JSON_ARRAY && lg_json_iter_init(&it, m->value, m->value_len) &&
	       !lg_json_iter_next(&it, &e);
}

/* The status and message of an upstream error object ("error": {...} or
 * "error": "text", with "detail" or "message" beside): the error's numeric
 * code if it is an HTTP error status, else @dflt. */
static int error_of(const struct lg_json_member *m, size_t n, int dflt, char *msg, size_t cap)
{
	const struct lg_json_member *err = lg_json_find(m, n, "error");
	const struct lg_json_member *detail = lg_json_find(m, n, "detail");
	struct lg_json_member x;
	int64_t code;
	int status = dflt;

	msg[0] = '\0';
	if (err && err->type == LG_JSON_OBJECT) {
		if (member_int(err->value, err->value_len, "code", &code) && code >= 400 &&
		    code <= 599)
			status = (int)code;
		if (lg_json_get(err->value, err->value_len, "message", &x) &&
		    x.type == LG_JSON_STRING && x.value_len < cap)
			lg_json_unescape(x.value, x.value_len, msg);
	} else if (err && err->type == LG_JSON_STRING && err->value_len < cap) {
		lg_json_unescape(err->value, err->value_len, msg);
	}
	if (!msg[0] && detail && detail->type == LG_JSON_STRING && detail->value_len < cap)
		lg_json_unescape(detail->value, detail->value_len, msg);
	if (!msg[0]) {
		const struct lg_json_member *mm = lg_json_find(m, n, "message");

		if (mm && mm->type == LG_JSON_STRING && mm->value_len < cap)
			lg_json_unescape(mm->value, mm->value_len, msg);
	}
	return status;
}

/* The failure of a non-2xx upstream reply: its status, and its message
 * (error.message or detail of a JSON body, else the raw body). */
/* Masks what looks like a credential ("sk-...", "Bearer ...") in a message
 * that goes back to the client: providers quote the key they were given. */
static void redact_keys(char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		size_t skip = 0;

		if (len - i > 3 && memcmp(s + i, "sk-", 3) == 0)
			skip = 3;
		else if (len - i > 7 && strncasecmp(s + i, "Bearer ", 7) == 0)
			skip = 7;
		if (!skip)
			continue;
		for (i += skip; i < len && (isalnum((unsigned char)s[i]) || s[i] == '-' ||
					    s[i] == '_' || s[i] == '.' || s[i] == '*'); i++)
			s[i] = '*';
	}
}

static void fail_with_body(struct fwd *f, int status, const char *body, size_t len)
{
	struct lg_json_member *m;
	enum lg_json_type type;
	char err[160], msg[DETAIL_MAX + 1];
	size_t n;

	if (status < 400) {
		/* 1xx left over, 3xx: redirects are never followed. */
		snprintf(msg, sizeof msg, "The provider answered %d, which llmgate does not follow.",
			 status);
		fail_msg(f, FAIL_REPLY, 502, msg);
		return;
	}
	if (status == 401 || status == 403 || status == 407) {
		/* The provider refused llmgate's own credentials: that is not the
		 * client's key, and the provider's words may quote ours. */
		snprintf(msg, sizeof msg, "The provider refused llmgate's credentials (%d).", status);
		fail_msg(f, FAIL_REPLY, 502, msg);
		return;
	}
	if (len && scan_object(f, body, len, len, &m, &n, &type, err, sizeof err) == 0 &&
	    type == LG_JSON_OBJECT) {
		(void)error_of(m, n, status, msg, sizeof msg);
		if (msg[0]) {
			redact_keys(msg, strlen(msg));
			fail_attempt(f, FAIL_STATUS, status, msg, strlen(msg));
			return;
		}
	}
	if (len == 0) {
		snprintf(msg, sizeof msg, "The provider answered %d.", status);
		fail_attempt(f, FAIL_STATUS, status, msg, strlen(msg));
		return;
	}
	n = len < DETAIL_MAX ? len : DETAIL_MAX;
	memcpy(msg, body, n);
	msg[n] = '\0';
	redact_keys(msg, n);
	fail_attempt(f, FAIL_STATUS, status, msg, n);
}

/* ---- the client's stream ---- */

static int client_send(struct fwd *f, const char *data, size_t len)
{
	long queued = lg_exchange_stream_write(f->req->ex, data, len);

	if (queued < 0) {
		f->client_gone = true;
		return -1;
	}
	/* A served call cannot be paused: its output queues. */
	if ((size_t)queued > STREAM_HIGH_WATER && f->up && f->up->fetch)
		f->want_pause = true;
	return 0;
}

/* The events of one piece from the upstream are gathered in f->out and
 * sent with one write (nginx-like: one syscall per piece, not per event);
 * anything else written first sends what is gathered, to keep the order. */
static int flush_events(struct fwd *f)
{
	int rc = 0;

	if (f->out.len)
		rc = client_send(f, f->out.p, f->out.len);
	f->out.len = 0;
	return rc;
}

static int client_write(struct fwd *f, const char *data, size_t len)
{
	if (flush_events(f) < 0)
		return -1;
	return client_send(f, data, len);
}

static void on_drain(struct lg_req *req, void *arg)
{
	struct fwd *f = arg;

	(void)req;
	if (!f->paused || !f->up || !f->up->fetch)
		return;
	f->paused = false;
	f->want_pause = false;
	lg_fetch_pause(f->up->fetch, false);
}

static int start_client_stream(struct fwd *f)
{
	struct lg_req *req = f->req;

	f->replied_ns = lg_now_ns();
	add_server_timing(f);
	if (lg_exchange_add_header(req->ex, "Cache-Control", "no-cache") < 0 ||
	    lg_exchange_add_header(req->ex, "X-Accel-Buffering", "no") < 0)
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "cannot add stream headers");
	f->started = true;
	f->reply_ok = true;
	f->call.status = f->status;
	req->answered = true;
	req->streaming = true;
	req->drain = on_drain;
	req->drain_arg = f;
	if (lg_exchange_stream_start(req->ex, f->status, "text/event-stream") < 0) {
		f->client_gone = true;
		return -1;
	}
	return 0;
}

/* After the first byte a failure is an error event, and the stream ends
 * without [DONE]. */
static void stream_error_event(struct fwd *f, int code, const char *message)
{
	struct buf b = { 0 };
	char tok_space[lg_json_escaped_max(300)];
	size_t mlen = strnlen(message, 300);

	if (f->stream_broken || f->client_gone)
		return;
	f->stream_broken = true;
	if (buf_str(&b, "event: error\ndata: {\"error\":{\"message\":") == 0 &&
	    buf_add(&b, tok_space, lg_json_escape(message, mlen, tok_space)) == 0 &&
	    buf_printf(&b, ",\"type\":\"server_error\",\"code\":%d}}\n\n", code) == 0)
		(void)client_write(f, b.p, b.len);
	buf_free(&b);
}

/* ---- server-sent events from the upstream ---- */

/* A problem in the stream: before the first byte the attempt fails with
 * @status; after, an error event ends the stream. Returns -1 (stop). */
static int stream_problem(struct fwd *f, enum failure kind, int status, const char *message)
{
	if (!f->started) {
		fail_attempt(f, kind, status, message, strlen(message));
		return -1;
	}
	set_error(f, "%s", message);
	stream_error_event(f, status, message);
	return -1;
}

/* One data event: checked, rewritten and relayed. */
static int relay_event(struct fwd *f, const char *data, size_t len, bool error_event)
{
	struct lg_json_member *m;
	const struct lg_json_member *usage, *choices, *errm;
	enum lg_json_type type;
	char err[192], msg[DETAIL_MAX + 1];
	struct editor ed;
	size_t n, chars;
	bool first;

	if (!error_event && len == 6 && memcmp(data, "[DONE]", 6) == 0) {
		f->done_seen = true;
		return 0;
	}
	if (scan_object(f, data, len, EVENT_MAX, &m, &n, &type, err, sizeof err) < 0 ||
	    type != LG_JSON_OBJECT) {
		if (error_event)
			return stream_problem(f, FAIL_STATUS, 502, len ? data : "upstream error");
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "provider %lld sent an invalid event: %s",
		       (long long)f->prov->conf.id, err);
		return stream_problem(f, FAIL_REPLY, 502, "The provider sent an invalid event.");
	}
	errm = lg_json_find(m, n, "error");
	if (error_event || (errm && (errm->type == LG_JSON_OBJECT || errm->type == LG_JSON_STRING))) {
		int status = error_of(m, n, 502, msg, sizeof msg);

		return stream_problem(f, FAIL_STATUS, status,
				      msg[0] ? msg : "The provider sent an error event.");
	}
	usage = lg_json_find(m, n, "usage");
	choices = lg_json_find(m, n, "choices");
	read_usage(f, usage);
	/* The usage-only chunk: the gateway sends its own at the end. */
	if (empty_array(choices) && usage && usage->type == LG_JSON_OBJECT)
		return 0;
	chars = choices_chars(choices);
	f->completion_chars += chars;
	if (chars && !f->first_token_ns)
		f->first_token_ns = lg_now_ns();
	first = !f->started;
	if (first && start_client_stream(f) < 0)
		return -1;
	editor_init(&ed, data, len, n);
	editor_set(&ed, data, m, n, "model", LIT("\"model\":"), f->client_model_tok);
	editor_set(&ed, data, m, n, "id", LIT("\"id\":"), f->rid_tok);
	if (first)
		add_reply_members(f, &ed, data, m, n);
	if (buf_str(&f->out, "data: ") < 0 || editor_apply(&ed, &f->out, data, len) < 0 ||
	    buf_str(&f->out, "\n\n") < 0)
		return stream_problem(f, FAIL_REPLY, 502, "Out of memory relaying the stream.");
	return 0;
}

static int dispatch_event(struct fwd *f)
{
	bool error_event = strcmp(f->ev_type, "error") == 0;
	int rc = 0;

	if (f->ev_has_data)
		rc = relay_event(f, f->ev.p, f->ev.len, error_event);
	f->ev.len = 0;
	f->ev_has_data = false;
	f->ev_type[0] = '\0';
	return rc;
}

/* One line of the stream, without its end of line. Fields other than
 * data and event (id, retry, comments, unknown names) are ignored, as the
 * server-sent events standard says. */
static int sse_line(struct fwd *f, const char *line, size_t len)
{
	const char *colon, *value;
	size_t flen, vlen;

	if (len == 0)
		return dispatch_event(f);
	if (line[0] == ':')
		return 0;
	colon = memchr(line, ':', len);
	flen = colon ? (size_t)(colon - line) : len;
	value = colon ? colon + 1 : line + len;
	vlen = (size_t)(line + len - value);
	if (vlen && *value == ' ') {
		value++;
		vlen--;
	}
	if (flen == 4 && memcmp(line, "data", 4) == 0) {
		if (f->ev.len + vlen + 1 > EVENT_MAX)
			return stream_problem(f, FAIL_REPLY, 502,
					      "An event from the provider exceeded 16 MiB.");
		if ((f->ev_has_data && buf_add(&f->ev, "\n", 1) < 0) ||
		    buf_add(&f->ev, value, vlen) < 0)
			return stream_problem(f, FAIL_REPLY, 502, "Out of memory reading the stream.");
		f->ev_has_data = true;
	} else if (flen == 5 && memcmp(line, "event", 5) == 0) {
		snprintf(f->ev_type, sizeof f->ev_type, "%.*s", (int)vlen, value);
	}
	return 0;
}

/* Parses what arrived: complete lines are handled now, a partial one is
 * kept for the next piece. 0 to go on, 1 to pause, -1 to stop. */
static int sse_feed(struct fwd *f, const char *data, size_t len)
{
	int rc = 0;

	if (buf_add(&f->in, data, len) < 0)
		return stream_problem(f, FAIL_REPLY, 502, "Out of memory reading the stream.");
	while (f->pos < f->in.len) {
		char *line = f->in.p + f->pos;
		size_t avail = f->in.len - f->pos, llen;
		char *nl = memchr(line + f->scan, '\n', avail - f->scan);

		if (!nl) {
			f->scan = avail;
			if (avail > EVENT_MAX)
				return stream_problem(f, FAIL_REPLY, 502,
						      "An event from the provider exceeded 16 MiB.");
			break;
		}
		llen = (size_t)(nl - line);
		f->pos += llen + 1;
		f->scan = 0;
		if (llen && line[llen - 1] == '\r')
			llen--;
		rc = sse_line(f, line, llen);
		if (rc < 0)
			return -1;
	}
	if (f->pos) {
		memmove(f->in.p, f->in.p + f->pos, f->in.len - f->pos);
		f->in.len -= f->pos;
		f->pos = 0;
	}
	if (flush_events(f) < 0)
		return -1;
	if (f->want_pause) {
		f->paused = true;
		return 1;
	}
	return 0;
}

/* The upstream ended cleanly: a last event without its blank line. */
static int sse_flush(struct fwd *f)
{
	if (f->pos < f->in.len) {
		size_t llen = f->in.len - f->pos;
		const char *line = f->in.p + f->pos;

		if (llen && line[llen - 1] == '\r')
			llen--;
		f->pos = f->in.len;
		if (sse_line(f, line, llen) < 0)
			return -1;
	}
	if (dispatch_event(f) < 0)
		return -1;
	return flush_events(f);
}

/* ---- the upstream's callbacks ---- */

/* A 429's Retry-After in seconds (the HTTP-date form is not used by model
 * servers), or 0. */
static uint32_t retry_after_ms(const struct upstream *up)
{
	const char *v = up->fetch ? lg_fetch_header(up->fetch, "Retry-After") : NULL;
	char *end;
	unsigned long secs;

	if (!v)
		return 0;
	secs = strtoul(v, &end, 10);
	if (end == v || secs > 3600)
		return 0;
	return (uint32_t)secs * 1000;
}

static int up_head(void *arg, int status, const char *ctype)
{
	struct upstream *up = arg;
	struct fwd *f = up->f;

	if (!f)
		return -1;
	f->status = status;
	f->retry_after_ms = status == 429 ? retry_after_ms(up) : 0;
	snprintf(f->ctype, sizeof f->ctype, "%s", ctype ? ctype : "");
	f->sse = f->stream && status >= 200 && status < 300 &&
		 strncasecmp(f->ctype, "text/event-stream", 17) == 0;
	return 0;
}

static int up_data(void *arg, const char *data, size_t len)
{
	struct upstream *up = arg;
	struct fwd *f = up->f;
	size_t room;

	if (!f)
		return -1;
	if (f->sse)
		return sse_feed(f, data, len);
	/* An error body (or a reply that is not a stream): its start. */
	room = f->in.len < ERROR_BODY_MAX ? ERROR_BODY_MAX - f->in.len : 0;
	return buf_add(&f->in, data, len < room ? len : room) < 0 ? -1 : 0;
}

static void release_slot(struct fwd *f)
{
	if (f->holds_slot) {
		f->holds_slot = false;
		lg_provider_release(f->prov->state);
	}
}

static bool retryable(const struct fwd *f)
{
	return f->fail == FAIL_TRANSPORT ||
	       (f->fail == FAIL_STATUS && (f->fail_status >= 500 || f->fail_status == 429));
}

static void report_outcome(struct fwd *f, bool ok)
{
	if (f->prov->state && !f->client_gone)
		lg_provider_report(f->prov->state, ok, now_ms());
}

static enum failure transport_kind(enum lg_fetch_result result)
{
	switch (result) {
	case LG_FETCH_ECONNECT:
	case LG_FETCH_ETIMEOUT:
	case LG_FETCH_ERESET:
	case LG_FETCH_EOTHER:
		return FAIL_TRANSPORT;
	default:
		return FAIL_REPLY;
	}
}

/* A 2xx reply to a stream request that is not a stream: an error object
 * (some servers answer errors with 200) or nothing usable. */
static void stream_not_sse(struct fwd *f)
{
	struct lg_json_member *m;
	enum lg_json_type type;
	char err[160], msg[DETAIL_MAX + 1];
	size_t n;

	if (f->in.len && scan_object(f, f->in.p, f->in.len, f->in.len, &m, &n, &type, err,
				     sizeof err) == 0 && type == LG_JSON_OBJECT &&
	    lg_json_find(m, n, "error")) {
		int status = error_of(m, n, 502, msg, sizeof msg);

		fail_msg(f, FAIL_STATUS, status, msg[0] ? msg : "The provider failed.");
		return;
	}
	fail_msg(f, FAIL_REPLY, 502, "The provider did not answer with a stream.");
}

static void stream_done(struct fwd *f, enum lg_fetch_result result, const char *error)
{
	if (f->fail == FAIL_NONE && !f->stream_broken && result == LG_FETCH_OK && f->sse)
		(void)sse_flush(f);
	if (f->started) {
		/* After the first byte: the stream ends here, well or not. */
		if (!f->stream_broken && result != LG_FETCH_OK && !f->client_gone) {
			set_error(f, "%s", error ? error : "the upstream stream failed");
			stream_error_event(f, 502, result == LG_FETCH_ETIMEOUT
					   ? "The provider stopped sending (timeout)."
					   : "The provider's stream broke off.");
		}
		report_outcome(f, !f->stream_broken);
		finish(f);
		return;
	}
	if (f->fail == FAIL_NONE) {
		if (result != LG_FETCH_OK)
			fail_attempt(f, transport_kind(result), 0, error, error ? strlen(error) : 0);
		else if (f->status < 200 || f->status >= 300)
			fail_with_body(f, f->status, f->in.p, f->in.len);
		else if (!f->sse)
			stream_not_sse(f);
		else if (!f->done_seen && !f->usage_known)
			fail_msg(f, FAIL_REPLY, 502, "The provider's stream ended without an "
				     "event.");
	}
	if (f->fail != FAIL_NONE) {
		attempt_failed(f);
		return;
	}
	/* An empty but well-formed stream. */
	report_outcome(f, true);
	if (start_client_stream(f) < 0)
		set_error(f, "the client closed the connection");
	finish(f);
}

/* A whole 2xx reply: kept, with the rewrite of id, model and usage
 * prepared; it is written after COMPLETE (answer()). */
static void reply_ok(struct fwd *f, struct lg_str body)
{
	const struct lg_provider_entry *impl = f->prov->impl;
	struct lg_json_member *m;
	const struct lg_json_member *errm;
	enum lg_json_type type;
	char err[192], msg[DETAIL_MAX + 1], hex[33];
	unsigned char rnd[16];
	struct lg_str out;
	size_t n;

	if (impl->ops->convert) {
		if (impl->ops->convert(impl->ud, f->req, &f->prov->conf, f->ep->id, body, &out) < 0) {
			fail_msg(f, FAIL_REPLY, 502, "The provider's reply could not be "
				     "converted.");
			attempt_failed(f);
			return;
		}
		body = out;
	}
	f->in.len = 0;
	if (buf_add(&f->in, body.ptr, body.len) < 0) {
		fail_msg(f, FAIL_REPLY, 502, "Out of memory for the reply.");
		attempt_failed(f);
		return;
	}
	if (scan_object(f, f->in.p, f->in.len, f->in.len, &m, &n, &type, err,
			sizeof err) < 0 || type != LG_JSON_OBJECT) {
		/* A transcription as text (response_format): passed through. */
		if (f->ep->multipart && strncasecmp(f->ctype, "application/json", 16) != 0) {
			f->reply_ok = true;
			f->reply_status = f->status;
			report_outcome(f, true);
			finish(f);
			return;
		}
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "provider %lld sent an invalid reply: %s",
		       (long long)f->prov->conf.id, err);
		fail_msg(f, FAIL_REPLY, 502, "The provider sent an invalid reply.");
		attempt_failed(f);
		return;
	}
	errm = lg_json_find(m, n, "error");
	if (errm && (errm->type == LG_JSON_OBJECT || errm->type == LG_JSON_STRING)) {
		int status = error_of(m, n, 502, msg, sizeof msg);

		if (!msg[0])
			snprintf(msg, sizeof msg, "The provider failed.");
		fail_attempt(f, FAIL_STATUS, status, msg, strlen(msg));
		attempt_failed(f);
		return;
	}
	if (!read_usage(f, lg_json_find(m, n, "usage")))
		f->completion_chars = choices_chars(lg_json_find(m, n, "choices"));
	f->reply_ok = true;
	f->reply_json = true;
	f->reply_status = f->status;
	editor_init(&f->red, f->in.p, f->in.len, n);
	editor_set(&f->red, f->in.p, m, n, "model", LIT("\"model\":"), f->client_model_tok);
	if (!lg_json_find(m, n, "id")) {
		char *id;

		randombytes_buf(rnd, sizeof rnd);
		sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
		id = lg_req_printf(f->req, "\"request-%s\"", hex);
		if (id)
			editor_set(&f->red, f->in.p, m, n, "id", LIT("\"id\":"),
				   (struct lg_str){ id, strlen(id) });
	}
	add_reply_members(f, &f->red, f->in.p, m, n);
	/* The usage object is filled in by answer(). */
	f->usage_edit = editor_set(&f->red, f->in.p, m, n, "usage", LIT("\"usage\":"),
				   (struct lg_str){ "", 0 });
	report_outcome(f, true);
	finish(f);
}

static void reply_done(struct fwd *f, enum lg_fetch_result result, int status,
		       struct lg_str body, const char *error)
{
	if (result != LG_FETCH_OK) {
		fail_attempt(f, transport_kind(result), 0, error, error ? strlen(error) : 0);
		if (result == LG_FETCH_ETOOLARGE)
			lg_log(LG_LOG_WARN, COMPONENT, rid(f), "provider %lld: %s",
			       (long long)f->prov->conf.id, error ? error : "reply too large");
		attempt_failed(f);
		return;
	}
	f->status = status;
	if (status < 200 || status >= 300) {
		fail_with_body(f, status, body.ptr, body.len);
		attempt_failed(f);
		return;
	}
	reply_ok(f, body);
}

static void up_done(void *arg, enum lg_fetch_result result, int status, struct lg_str body,
		    const char *error)
{
	struct upstream *up = arg;
	struct fwd *f = up->f;

	free(up);
	if (!f)
		return; /* detached: the request finished without it */
	f->up = NULL;
	lg_host_set_current_request(rid(f));
	if (status)
		f->status = status;
	if (!f->started)    /* a stream's reply time is its first event */
		f->replied_ns = lg_now_ns();
	/* The provider is free again as soon as its reply is in. */
	release_slot(f);
	if (f->stream)
		stream_done(f, result, error);
	else
		reply_done(f, result, status, body, error);
	lg_host_set_current_request(NULL);
}

static const struct lg_fetch_handlers stream_handlers = {
	.size = sizeof(struct lg_fetch_handlers),
	.on_head = up_head,
	.on_data = up_data,
	.on_done = up_done,
};

static const struct lg_fetch_handlers buffered_handlers = {
	.size = sizeof(struct lg_fetch_handlers),
	.on_head = up_head,
	.on_done = up_done,
};

/* ---- failures, backoff and retries ---- */

static void final_failure(struct fwd *f)
{
	switch (f->fail) {
	case FAIL_STATUS:
		f->reply_status = f->fail_status;
		break;
	case FAIL_REPLY:
		f->reply_status = 502;
		break;
	default:
		f->reply_status = 503;
		break;
	}
	if (!f->error[0])
		set_error(f, "%s", f->fail_detail ? f->fail_detail : "the upstream call failed");
	finish(f);
}

static void backoff_fired(evutil_socket_t fd, short what, void *arg)
{
	struct fwd *f = arg;

	(void)fd;
	(void)what;
	event_free(f->timer);
	f->timer = NULL;
	lg_host_set_current_request(rid(f));
	select_provider(f);
	lg_host_set_current_request(NULL);
}

/* Full jitter: a random delay in [0, min(cap, base * 2^n)]. */
static uint32_t backoff_ms(int retry)
{
	uint32_t ceiling = BACKOFF_BASE_MS << (retry < 4 ? retry : 4);

	if (ceiling > BACKOFF_CAP_MS)
		ceiling = BACKOFF_CAP_MS;
	return rng_below(ceiling + 1);
}

static void attempt_failed(struct fwd *f)
{
	uint32_t delay;
	struct timeval tv;

	release_slot(f);
	report_outcome(f, f->fail == FAIL_STATUS && !retryable(f));
	/* An upstream's own message is not logged: it may quote a key. */
	if (f->fail == FAIL_STATUS)
		set_error(f, "upstream status %d", f->fail_status);
	else
		set_error(f, "%s", f->fail_detail ? f->fail_detail : "upstream failure");
	lg_log(LG_LOG_WARN, COMPONENT, rid(f), "attempt %d on provider %lld (%s) failed: %s",
	       f->attempts, (long long)f->prov->conf.id, f->prov->conf.type, f->error);
	if (!retryable(f) || f->attempts >= MAX_ATTEMPTS || f->client_gone) {
		final_failure(f);
		return;
	}
	delay = backoff_ms(f->attempts - 1);
	/* An upstream that asks for a short pause gets it; one that asks for
	 * longer is not retried (the 429 and its message reach the client). */
	if (f->retry_after_ms > RETRY_AFTER_MAX_MS) {
		final_failure(f);
		return;
	}
	if (f->retry_after_ms > delay)
		delay = f->retry_after_ms;
	tv = (struct timeval){ .tv_sec = delay / 1000, .tv_usec = (suseconds_t)(delay % 1000) * 1000 };
	f->timer = evtimer_new(lg_loop_base(lg_loop_current()), backoff_fired, f);
	if (!f->timer || evtimer_add(f->timer, &tv) != 0) {
		if (f->timer)
			event_free(f->timer);
		f->timer = NULL;
		final_failure(f);
		return;
	}
	f->state = FWD_BACKOFF;
}

/* ---- one attempt ---- */

static const char *provider_url(const struct lg_model_provider *p)
{
	const char *url = p->conf.url;

	if (!url || !*url)
		url = p->impl->ops->default_url;
	return url;
}

/* The client's body with "model" set to the provider's name and, for a
 * stream, stream_options.include_usage asked for when the client did not
 * say. Everything else passes through untouched. Built in the request's
 * memory, once per upstream model name. */
static struct lg_str upstream_body(struct fwd *f)
{
	struct lg_req *req = f->req;
	const char *body = f->body.ptr, *name = f->prov->conf.model_name;
	struct editor ed = { .n = 0 };
	struct lg_str model;
	size_t size;
	char *mem;

	if (f->upbody.ptr && strcmp(f->upbody_model, name) == 0)
		return f->upbody;
	model = f->ep->multipart ? (struct lg_str){ name, strlen(name) }
				 : req_json_token(req, name);
	if (!model.ptr)
		return (struct lg_str){ NULL, 0 };
	if (f->model_at != SIZE_MAX)
		ed.e[ed.n++] = (struct edit){ .at = f->model_at, .del = f->model_len,
					      .part = { model } };
	else    /* a body set by call_set_body() without one */
		ed.e[ed.n++] = (struct edit){ .at = f->body_close, .part = {
			f->body_members ? LIT(",\"model\":") : LIT("\"model\":"), model } };
	if (f->stream) {
		struct lg_json_member im;
		struct lg_json_iter it;

		if (!f->has_stream_options) {
			ed.e[ed.n++] = (struct edit){ .at = f->body_close, .part = {
				LIT(",\"stream_options\":{\"include_usage\":true}") } };
		} else if (body[f->opts_at] != '{') {
			ed.e[ed.n++] = (struct edit){ .at = f->opts_at, .del = f->opts_len,
				.part = { LIT("{\"include_usage\":true}") } };
		} else if (!lg_json_get(body + f->opts_at, f->opts_len, "include_usage", &im)) {
			bool empty = !lg_json_iter_init(&it, body + f->opts_at, f->opts_len) ||
				     !lg_json_iter_next(&it, &im);

			ed.e[ed.n++] = (struct edit){ .at = f->opts_at + 1, .part = {
				empty ? LIT("\"include_usage\":true") : LIT("\"include_usage\":true,") } };
		}
	}
	size = editor_size(&ed, f->body.len);
	mem = lg_req_alloc(req, size + 1);
	if (!mem)
		return (struct lg_str){ NULL, 0 };
	editor_copy(&ed, mem, body, f->body.len);
	f->upbody = (struct lg_str){ mem, size };
	f->upbody_model = name;
	return f->upbody;
}

static const char *const *upstream_headers(struct fwd *f)
{
	struct lg_req *req = f->req;
	const char **h = lg_req_alloc(req, 6 * sizeof *h);
	size_t n = 0;

	if (!h)
		return NULL;
	h[n++] = f->ep->multipart ? lg_req_printf(req, "Content-Type: %s", f->content_type)
				  : "Content-Type: application/json";
	h[n++] = f->stream ? "Accept: text/event-stream" : "Accept: application/json";
	if (f->prov->conf.key && *f->prov->conf.key)
		h[n++] = lg_req_printf(req, "Authorization: Bearer %s", f->prov->conf.key);
	h[n++] = lg_req_printf(req, "X-Request-Id: %s", rid(f));
	for (size_t i = 0; i < n; i++)
		if (!h[i])
			return NULL;
	h[n] = NULL;
	return h;
}

/* Resets what one attempt leaves behind. */
static void attempt_reset(struct fwd *f)
{
	f->fail = FAIL_NONE;
	f->fail_status = 0;
	free(f->fail_detail);
	f->fail_detail = NULL;
	f->status = 0;
	f->ctype[0] = '\0';
	f->sse = false;
	f->in.len = 0;
	f->pos = f->scan = 0;
	f->ev.len = 0;
	f->ev_has_data = false;
	f->ev_type[0] = '\0';
	f->want_pause = f->paused = false;
	f->done_seen = false;
	f->usage_known = false;
	f->completion_chars = 0;
	f->first_token_ns = 0;
	f->replied_ns = 0;
}

static void start_attempt(struct fwd *f)
{
	const struct lg_model_provider *p = f->prov;
	const struct lg_provider_entry *impl = p->impl;
	struct lg_req *req = f->req;
	struct lg_upstream_call *uc = lg_req_alloc(req, sizeof *uc);
	const char *base = provider_url(p);
	struct upstream *up;
	size_t blen;
	int rc;

	attempt_reset(f);
	f->attempts++;
	f->attempt_ns = lg_now_ns();
	f->state = FWD_UPSTREAM;
	if (!uc || !base) {
		fail_msg(f, FAIL_REPLY, 502, "The provider has no URL.");
		attempt_failed(f);
		return;
	}
	blen = strlen(base);
	while (blen && base[blen - 1] == '/')
		blen--;
	*uc = (struct lg_upstream_call){
		.size = sizeof *uc, .endpoint = f->ep->id, .stream = f->stream,
		.request = {
			.size = sizeof uc->request, .method = "POST",
			.url = lg_req_printf(req, "%.*s%s", (int)blen, base, f->ep->path),
			.headers = upstream_headers(f),
			.body = upstream_body(f),
			.connect_timeout_ms = p->connect_timeout_ms,
			.first_byte_timeout_ms = p->first_byte_timeout_ms,
			.idle_timeout_ms = p->idle_timeout_ms,
			.total_timeout_ms = p->conf.timeout_ms,
			.max_response_bytes = f->stream ? 0 : REPLY_MAX,
		},
	};
	if (!uc->request.url || !uc->request.headers || !uc->request.body.ptr) {
		fail_msg(f, FAIL_TRANSPORT, 0, "out of memory");
		attempt_failed(f);
		return;
	}
	if (impl->ops->prepare) {
		rc = impl->ops->prepare(impl->ud, req, &p->conf, uc);
		if (rc < 0) {
			fail_msg(f, FAIL_REPLY, 502, "The provider type could not prepare the "
				     "request.");
			attempt_failed(f);
			return;
		}
	}
	up = calloc(1, sizeof *up);
	if (!up) {
		fail_msg(f, FAIL_TRANSPORT, 0, "out of memory");
		attempt_failed(f);
		return;
	}
	*up = (struct upstream){ .f = f, .impl = impl };
	f->up = up;
	if (impl->ops->serve) {
		rc = impl->ops->serve(impl->ud, req, &p->conf, uc,
				      f->stream ? &stream_handlers : &buffered_handlers, up,
				      &up->handle);
	} else {
		struct lg_fetcher *fetcher = lg_loop_fetcher(lg_loop_current());

		up->fetch = fetcher ? lg_fetch_start(fetcher, &uc->request, f->stream
						     ? &stream_handlers : &buffered_handlers, up)
				    : NULL;
		rc = up->fetch ? 0 : -EIO;
	}
	if (rc < 0) {
		f->up = NULL;
		free(up);
		fail_msg(f, FAIL_TRANSPORT, 0, "the upstream call could not start");
		attempt_failed(f);
	}
}

/* ---- choosing a provider ---- */

static bool serves(const struct fwd *f, const struct lg_model_provider *p)
{
	return p->impl && p->impl->ops && (p->impl->ops->endpoints & LG_ENDPOINT_BIT(f->ep->id));
}

/* Orders @n providers of f->order from @from: shuffled, and for least_busy
 * then sorted by requests in flight (stable, so ties stay random: a
 * provider with nothing in flight comes first, else one of the least busy). */
static void order_group(struct fwd *f, size_t from, size_t n)
{
	const struct lg_model *m = f->model;
	size_t *o = f->order + from;
	int *busy = f->busy + from;

	for (size_t i = n; i > 1; i--) {
		size_t j = rng_below((uint32_t)i), t = o[i - 1];

		o[i - 1] = o[j];
		o[j] = t;
	}
	if (m->strategy != LG_STRATEGY_LEAST_BUSY)
		return;
	for (size_t i = 0; i < n; i++) {
		const struct lg_provider_state *s = m->providers[o[i]].state;

		busy[i] = s ? lg_provider_inflight(s) : 0;
	}
	for (size_t i = 1; i < n; i++) {
		for (size_t j = i; j > 0 && busy[j] < busy[j - 1]; j--) {
			int tb = busy[j];
			size_t to = o[j];

			busy[j] = busy[j - 1];
			o[j] = o[j - 1];
			busy[j - 1] = tb;
			o[j - 1] = to;
		}
	}
}

/* The providers that serve this endpoint, in the order to try them: those
 * not tried yet by this request first (failover), then the others. */
static size_t candidates(struct fwd *f)
{
	const struct lg_model *m = f->model;
	size_t fresh = 0, n;

	for (size_t i = 0; i < m->nproviders; i++)
		if (serves(f, &m->providers[i]) && !f->tried[i])
			f->order[fresh++] = i;
	n = fresh;
	for (size_t i = 0; i < m->nproviders; i++)
		if (serves(f, &m->providers[i]) && f->tried[i])
			f->order[n++] = i;
	order_group(f, 0, fresh);
	order_group(f, fresh, n - fresh);
	return n;
}

static void use_provider(struct fwd *f, size_t i)
{
	const struct lg_model_provider *p = &f->model->providers[i];

	f->prov = p;
	f->tried[i] = true;
	f->call.provider_id = p->conf.id;
	f->call.provider_type = p->conf.type;
	f->call.provider_model = p->conf.model_name;
	f->call.hosting_zone = p->hosting_zone;
	f->call.total_params = p->total_params;
	f->call.active_params = p->active_params;
}

static void slot_ready(void *arg, bool got)
{
	struct fwd *f = arg;

	f->wait = NULL;
	lg_host_set_current_request(rid(f));
	if (!got) {
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "no slot of provider %lld within the wait",
		       (long long)f->prov->conf.id);
		f->fail = FAIL_BUSY;
		set_error(f, "no free provider slot in time");
		final_failure(f);
	} else {
		f->holds_slot = true;
		start_attempt(f);
	}
	lg_host_set_current_request(NULL);
}

static void select_provider(struct fwd *f)
{
	uint64_t now = now_ms();
	size_t n = candidates(f);
	const struct lg_model_provider *wait_on = NULL;
	size_t wait_idx = 0;
	uint32_t wait_ms;

	attempt_reset(f);
	for (size_t k = 0; k < n; k++) {
		const struct lg_model_provider *p = &f->model->providers[f->order[k]];

		if (p->state && !lg_provider_breaker_allows(p->state, now))
			continue;
		if (!p->state || lg_provider_try_acquire(p->state, p->max_concurrency)) {
			use_provider(f, f->order[k]);
			f->holds_slot = p->state != NULL;
			start_attempt(f);
			return;
		}
		if (!wait_on) {
			wait_on = p;
			wait_idx = f->order[k];
		}
	}
	if (!wait_on) {
		f->fail = FAIL_BUSY;
		set_error(f, n ? "every provider's circuit breaker is open"
			  : "no provider of the model serves this endpoint");
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "model %s: %s", f->model->name, f->error);
		final_failure(f);
		return;
	}
	use_provider(f, wait_idx);
	wait_ms = wait_on->first_byte_timeout_ms ? wait_on->first_byte_timeout_ms : SLOT_WAIT_MS;
	f->wait = lg_provider_wait(wait_on->state, wait_on->max_concurrency, lg_loop_current(),
				   wait_ms, slot_ready, f);
	if (!f->wait) {
		f->fail = FAIL_BUSY;
		set_error(f, "cannot wait for a provider slot");
		final_failure(f);
		return;
	}
	f->state = FWD_WAITING;
}

/* ---- the end: COMPLETE, then the answer ---- */

/* Spec §6 cost, and for text generation the energy and carbon estimate
 * (docs/impacts.md). The latency goes in seconds: OpenGateLLM's extra
 * division by 1000 is not copied. A call that never reached a provider
 * has no parameter counts, hence no impacts. */
static void set_cost_and_impacts(struct lg_call *c)
{
	struct lg_impacts im = { 0, 0 };

	c->cost = lg_call_cost(c->prompt_tokens, c->completion_tokens, c->cost_prompt_tokens,
			       c->cost_completion_tokens);
	if (lg_impacts_apply(c->model_type)) {
		struct lg_llm_usage u = {
			.active_params = c->active_params, .total_params = c->total_params,
			.completion_tokens = c->completion_tokens,
			.latency_s = c->latency_ms / 1000.0, .zone = c->hosting_zone,
		};

		im = lg_llm_impacts(&u);
	}
	c->kwh = im.kwh;
	c->kgco2eq = im.kgco2eq;
}

static void fill_call(struct fwd *f)
{
	struct lg_call *c = &f->call;
	uint64_t now = lg_now_ns();

	if (f->hook_answered)
		c->status = 0;
	else if (f->started)
		c->status = f->status;
	else if (f->client_gone)
		c->status = 499;
	else
		c->status = f->reply_status;
	if (f->reply_ok && f->usage_known) {
		c->prompt_tokens = f->prompt_tokens;
		c->completion_tokens = f->completion_tokens;
		c->total_tokens = f->total_tokens;
	} else if (f->reply_ok) {
		c->prompt_tokens = tokens_of_chars(f->prompt_chars);
		c->completion_tokens = tokens_of_chars(f->completion_chars);
		c->total_tokens = c->prompt_tokens + c->completion_tokens;
		c->usage_estimated = true;
	}
	c->ttft_ms = f->first_token_ns ? ms_between(f->req->start_ns, f->first_token_ns) : -1;
	c->latency_ms = ms_between(f->req->start_ns, now);
	set_cost_and_impacts(c);
	c->client_gone = f->client_gone;
	if (f->client_gone && !f->error[0])
		set_error(f, "the client closed the connection");
	c->error = f->error[0] ? f->error : NULL;
}

/* The end of a stream that went well: the usage event, then [DONE]. */
static void stream_trailer(struct fwd *f)
{
	struct buf b = { 0 };

	if (buf_str(&b, "data: {\"id\":") == 0 && buf_add(&b, f->rid_tok.ptr, f->rid_tok.len) == 0 &&
	    buf_printf(&b, ",\"object\":\"%s\",\"created\":%lld,\"model\":", f->ep->chunk_object,
		       (long long)time(NULL)) == 0 &&
	    buf_add(&b, f->client_model_tok.ptr, f->client_model_tok.len) == 0 &&
	    buf_str(&b, ",\"choices\":[],\"usage\":") == 0 && usage_json(f, &b) == 0 &&
	    buf_str(&b, "}\n\ndata: [DONE]\n\n") == 0)
		(void)client_write(f, b.p, b.len);
	buf_free(&b);
}

static void answer_reply(struct fwd *f)
{
	struct lg_req *req = f->req;
	struct buf usage = { 0 }, out = { 0 };

	add_server_timing(f);
	req->answered = true;
	if (!f->reply_json) {
		out_reply(req, f->reply_status, f->ctype[0] ? f->ctype : "text/plain", f->in.p,
			  f->in.len);
		return;
	}
	if (usage_json(f, &usage) == 0) {
		struct edit *e = &f->red.e[f->usage_edit];

		/* Replaced in place: the value alone; else ",", the key, the value. */
		e->part[e->del ? 0 : 2] = (struct lg_str){ usage.p, usage.len };
	}
	if (!usage.p || editor_apply(&f->red, &out, f->in.p, f->in.len) < 0)
		out_error(req, 503, "Out of memory, please try again later.");
	else
		out_reply(req, f->reply_status, "application/json", out.p, out.len);
	buf_free(&usage);
	buf_free(&out);
}

static void answer_failure(struct fwd *f)
{
	struct lg_req *req = f->req;
	const char *msg = f->fail_detail;

	add_server_timing(f);
	req->answered = true;
	if (f->reply_status == 503 && (f->fail == FAIL_TRANSPORT || f->fail == FAIL_BUSY ||
				       f->fail == FAIL_NONE)) {
		if (out_header(req, "Retry-After", "10") < 0)
			lg_log(LG_LOG_WARN, COMPONENT, rid(f), "cannot add Retry-After");
		msg = BUSY_MESSAGE;
	}
	out_error(req, f->reply_status, msg ? msg : BUSY_MESSAGE);
}

/* Sends what is left of the answer; the request may end right after. */
static void answer(struct fwd *f)
{
	struct lg_req *req = f->req;

	if (f->hook_answered)
		return;
	if (f->started) {
		if (!f->stream_broken && !f->client_gone)
			stream_trailer(f);
		req->streaming = false;
		lg_exchange_stream_end(req->ex);
		return;
	}
	if (req->answered)
		return;
	if (f->client_gone) {
		/* Discarded, but it ends the request. */
		req->answered = true;
		out_error(req, 499, "The client closed the request.");
		return;
	}
	if (f->reply_ok)
		answer_reply(f);
	else
		answer_failure(f);
}

static void release_all(struct fwd *f)
{
	release_slot(f);
	buf_free(&f->ev);
	buf_free(&f->out);
	free(f->members);
	f->members = NULL;
	f->members_cap = 0;
}

static void icall_engine_done(struct icall *ic);

static void after_complete(struct lg_req *req, enum lg_hook_result result)
{
	struct fwd *f = fwd_of(req);

	(void)result;
	answer(f);
	buf_free(&f->in);
	free(f->fail_detail);
	f->fail_detail = NULL;
	/* The call's strings point into the view: it goes last. */
	lg_models_view_put(f->view);
	f->view = NULL;
	f->state = FWD_DONE;
	if (icall_of(req))
		icall_engine_done(icall_of(req));
}

/* Exactly once per call: COMPLETE hooks, then the answer. */
static void finish(struct fwd *f)
{
	if (f->state == FWD_FINISHING || f->state == FWD_DONE)
		return;
	f->state = FWD_FINISHING;
	fill_call(f);
	release_all(f);
	lg_req_run_phase(f->req, LG_PHASE_COMPLETE, after_complete);
}

/* ---- the client left ---- */

static void detach_upstream(struct fwd *f)
{
	struct upstream *up = f->up;

	if (!up)
		return;
	f->up = NULL;
	up->f = NULL;
	/* The transfer's last callback frees @up, maybe from in here. */
	if (up->fetch)
		lg_fetch_cancel(up->fetch);
	else if (up->impl->ops->cancel)
		up->impl->ops->cancel(up->impl->ud, up->handle);
}

static void client_gone(struct lg_req *req, void *arg)
{
	struct fwd *f = arg;

	(void)req;
	f->client_gone = true;
	switch (f->state) {
	case FWD_HOOKS:
		return; /* the phase's end sees it */
	case FWD_WAITING:
		lg_provider_wait_cancel(f->wait);
		f->wait = NULL;
		break;
	case FWD_BACKOFF:
		event_free(f->timer);
		f->timer = NULL;
		break;
	case FWD_UPSTREAM:
		detach_upstream(f);
		break;
	default:
		return;
	}
	lg_log(LG_LOG_INFO, COMPONENT, rid(f), "the client left: upstream call cancelled");
	finish(f);
}

/* As host->on_close(), for the core (no owning plugin). */
static int watch_close(struct lg_req *req, lg_close_fn fn, void *arg)
{
	if (req->nclose == req->close_cap) {
		size_t cap = req->close_cap ? req->close_cap * 2 : 4;
		struct lg_close_cb *v = lg_req_alloc(req, cap * sizeof *v);

		if (!v)
			return -ENOMEM;
		if (req->nclose)
			memcpy(v, req->closes, req->nclose * sizeof *v);
		req->closes = v;
		req->close_cap = cap;
	}
	req->closes[req->nclose++] = (struct lg_close_cb){ .fn = fn, .arg = arg, .owner = NULL };
	return 0;
}

/* ---- the pipeline ---- */

static void after_pre_upstream(struct lg_req *req, enum lg_hook_result result)
{
	struct fwd *f = fwd_of(req);

	if (result == LG_HOOK_DONE) {
		f->hook_answered = true;
		set_error(f, "answered by a PRE_UPSTREAM hook");
		finish(f);
		return;
	}
	if (f->client_gone) {
		finish(f);
		return;
	}
	select_provider(f);
}

static void after_authorize(struct lg_req *req, enum lg_hook_result result)
{
	struct fwd *f = fwd_of(req);

	f->authorized_ns = lg_now_ns();
	if (result == LG_HOOK_DONE) {
		f->hook_answered = true;
		set_error(f, "answered by an AUTHORIZE hook");
		finish(f);
		return;
	}
	if (f->client_gone) {
		finish(f);
		return;
	}
	lg_req_run_phase(req, LG_PHASE_PRE_UPSTREAM, after_pre_upstream);
}

static void start_call(struct fwd *f)
{
	const struct lg_model *m = f->model;
	struct lg_call *c = &f->call;
	int64_t max_tokens = c->max_tokens;

	*c = (struct lg_call){
		.size = sizeof *c, .request_id = rid(f), .endpoint = f->ep->path,
		.model = f->client_model, .model_id = m->id, .model_name = m->name,
		.model_type = m->type, .cost_prompt_tokens = m->cost_prompt_tokens,
		.cost_completion_tokens = m->cost_completion_tokens,
		.max_tokens = max_tokens, .stream = f->stream, .ttft_ms = -1,
	};
	f->req->call = c;
	f->state = FWD_HOOKS;
	f->authorize_ns = lg_now_ns();
	lg_req_run_phase(f->req, LG_PHASE_AUTHORIZE, after_authorize);
}

static void resolve_model(struct fwd *f)
{
	struct lg_req *req = f->req;
	const struct lg_model *m;

	f->view = lg_models_view_get(req->rt->models);
	m = f->view ? lg_models_find(f->view, f->client_model) : NULL;
	/* Unknown, without providers or not for this caller: one answer, so
	 * that nobody learns which models exist beyond their own. */
	if (!m || m->nproviders == 0 ||
	    !lg_registry_model_allowed(req->rt->registry, req->has_principal ? &req->principal :
				       NULL, m->id)) {
		lg_models_view_put(f->view);
		answer_error(req, 404, "Model %.256s not found.", f->client_model);
		return;
	}
	if (strcmp(m->type, f->ep->model_type) != 0) {
		lg_models_view_put(f->view);
		answer_error(req, 422, "Model has wrong type. Expected: %s. Actual: %s.",
			     f->ep->model_type, m->type);
		return;
	}
	f->model = m;
	f->tried = lg_req_alloc(req, m->nproviders * sizeof *f->tried);
	f->order = lg_req_alloc(req, m->nproviders * sizeof *f->order);
	f->busy = lg_req_alloc(req, m->nproviders * sizeof *f->busy);
	f->client_model_tok = req_json_token(req, f->client_model);
	f->rid_tok = req_json_token(req, rid(f));
	if (!f->tried || !f->order || !f->busy || !f->client_model_tok.ptr || !f->rid_tok.ptr ||
	    watch_close(req, client_gone, f) < 0) {
		lg_models_view_put(f->view);
		answer_error(req, 503, "Out of memory, please try again later.");
		return;
	}
	/* A client that left while an AUTH hook was pending was notified before
	 * this watch existed. */
	if (!icall_of(req) && lg_exchange_client_gone(req->ex))
		f->client_gone = true;
	start_call(f);
}

/* A client's call, or a plugin's (@body is then its own). */
static void forward(struct lg_req *req, const struct endpoint *ep, struct lg_str body)
{
	struct fwd *f = lg_req_alloc(req, sizeof *f);
	int rc;

	if (!f) {
		answer_error(req, 503, "Out of memory, please try again later.");
		return;
	}
	f->req = req;
	f->rt = req->rt;
	f->ep = ep;
	f->handler_ns = lg_now_ns();
	f->body = body;
	f->call.max_tokens = -1;
	rc = f->ep->multipart ? read_multipart_body(f) : read_json_body(f);
	if (rc == 0)
		resolve_model(f);
	if (!req->call) {
		/* Refused before the call: finish() will not run. */
		free(f->members);
		f->members = NULL;
	}
}

static void handle(struct lg_req *req, void *ud)
{
	forward(req, ud, lg_exchange_body(req->ex));
}

/* ---- what PRE_UPSTREAM and AUTHORIZE hooks change ---- */

/* The forwarding state of @req while its hooks of @phase (or of either
 * when 0) run, else NULL. */
static struct fwd *in_hooks(struct lg_req *req, enum lg_phase phase)
{
	struct fwd *f;

	if (!req || !req->call)
		return NULL;
	f = fwd_of(req);
	if (f->state != FWD_HOOKS || (phase && req->phase != phase))
		return NULL;
	if (req->phase != LG_PHASE_AUTHORIZE && req->phase != LG_PHASE_PRE_UPSTREAM)
		return NULL;
	return f;
}

int lg_forward_set_body(struct lg_req *req, struct lg_str body)
{
	struct fwd *f = in_hooks(req, LG_PHASE_PRE_UPSTREAM);
	struct lg_json_member *m;
	enum lg_json_type type;
	char err[192], *copy;
	size_t n;

	if (!f || f->ep->multipart || !body.ptr)
		return -EINVAL;
	copy = lg_req_alloc(req, body.len + 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, body.ptr, body.len);
	if (scan_object(f, copy, body.len, f->rt->cfg->max_body_bytes, &m, &n, &type, err,
			sizeof err) < 0 || type != LG_JSON_OBJECT) {
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "call_set_body: not a JSON object: %s",
		       type == LG_JSON_OBJECT ? err : "another type");
		return -EINVAL;
	}
	/* The reply is relayed as the client asked: the body may not change it. */
	if (f->ep->streams && lg_json_is_true(lg_json_find(m, n, "stream")) != f->stream) {
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "call_set_body: \"stream\" differs from "
		       "the client's: refused");
		return -EINVAL;
	}
	f->body = (struct lg_str){ copy, body.len };
	f->upbody = (struct lg_str){ NULL, 0 };
	note_members(f, m, n);
	return 0;
}

/* A member name that is JSON as it is: no quote, backslash or control. */
static bool plain_name(const char *name)
{
	size_t len = name ? strlen(name) : 0;

	if (len == 0 || len > REPLY_MEMBER_NAME_MAX)
		return false;
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\' || *p == 0x7f)
			return false;
	/* The gateway owns these. */
	return strcmp(name, "id") != 0 && strcmp(name, "model") != 0 &&
	       strcmp(name, "usage") != 0;
}

int lg_forward_reply_member(struct lg_req *req, const char *name, struct lg_str json)
{
	struct fwd *f = in_hooks(req, 0);
	const struct lg_core_config *cfg = req ? req->rt->cfg : NULL;
	struct lg_json_limits lim;
	enum lg_json_type type;
	struct reply_member *rm = NULL;
	char err[160], *value, *key;
	size_t n;

	if (!f || !plain_name(name) || !json.ptr)
		return -EINVAL;
	lim = (struct lg_json_limits){ .max_depth = cfg->json_max_depth,
				       .max_items = cfg->json_max_items,
				       .max_string = cfg->max_body_bytes };
	if (lg_json_scan(json.ptr, json.len, &lim, NULL, 0, &n, &type, err, sizeof err) < 0) {
		lg_log(LG_LOG_WARN, COMPONENT, rid(f), "call_reply_member %s: %s", name, err);
		return -EINVAL;
	}
	for (size_t i = 0; i < f->nadded && !rm; i++)
		if (strcmp(f->added[i].name, name) == 0)
			rm = &f->added[i];
	if (!rm && f->nadded == REPLY_MEMBERS_MAX)
		return -ENOSPC;
	value = lg_req_alloc(req, json.len + 1);
	key = lg_req_printf(req, "\"%s\":", name);
	if (!value || !key)
		return -ENOMEM;
	memcpy(value, json.ptr, json.len);
	if (!rm) {
		rm = &f->added[f->nadded++];
		rm->name = lg_req_strdup(req, name);
		if (!rm->name) {
			f->nadded--;
			return -ENOMEM;
		}
	}
	rm->key_lit = (struct lg_str){ key, strlen(key) };
	rm->value = (struct lg_str){ value, json.len };
	return 0;
}

/* ---- calls made by plugins ---- */

static void icall_free(struct icall *ic)
{
	if (ic->ev)
		event_free(ic->ev);
	free(ic->reply);
	lg_req_arena_free(&ic->req);
	free(ic);
}

static void icall_deliver(struct icall *ic)
{
	lg_host_set_current_request(ic->id);
	lg_log(LG_LOG_INFO, "access", ic->id, "plugin \"POST %s\" %d %zu %.2fms",
	       ic->info.endpoint, ic->status, ic->reply_len,
	       ms_between(ic->req.start_ns, lg_now_ns()));
	ic->delivered = true;
	ic->done(ic->arg, ic->status, (struct lg_str){ ic->reply ? ic->reply : "",
						       ic->reply_len }, ic->error);
	lg_host_set_current_request(NULL);
	/* A COMPLETE hook may still be pending: the request ends after it. */
	if (ic->engine_done)
		icall_free(ic);
}

/* The engine will not touch the request again. */
static void icall_engine_done(struct icall *ic)
{
	ic->engine_done = true;
	if (!ic->answered) {
		/* A hook said DONE without answering. */
		lg_log(LG_LOG_ERROR, COMPONENT, ic->id, "a hook ended the call without an answer");
		lg_forward_internal_error(&ic->req, 500, "An unexpected error occurred");
	}
	if (ic->delivered)
		icall_free(ic);
}

static void icall_step(evutil_socket_t fd, short what, void *arg)
{
	struct icall *ic = arg;

	(void)fd;
	(void)what;
	if (ic->started) {
		icall_deliver(ic);
		return;
	}
	ic->started = true;
	lg_host_set_current_request(ic->id);
	forward(&ic->req, ic->ep, ic->info.body);
	if (!ic->req.call)
		icall_engine_done(ic);  /* refused before the call */
	lg_host_set_current_request(NULL);
}

/* Runs icall_step() from the loop: never from inside model_call(), and
 * the answer never from inside the engine. */
static void icall_arm(struct icall *ic)
{
	static const struct timeval now = { 0, 0 };

	if (evtimer_add(ic->ev, &now) != 0)
		lg_log(LG_LOG_ERROR, COMPONENT, ic->id, "cannot schedule the call's next step");
}

static const struct endpoint *endpoint_of(const char *path)
{
	for (size_t i = 0; path && i < LG_COUNT(endpoints); i++)
		if (strcmp(endpoints[i].path, path) == 0)
			return &endpoints[i];
	return NULL;
}

static int icall_principal(struct icall *ic, const struct lg_principal *who)
{
	struct lg_req *req = &ic->req;

	if (!who)
		return 0;
	if (who->size < sizeof *who)
		return -EINVAL;
	req->principal = *who;
	req->principal.user_name = who->user_name ? lg_req_strdup(req, who->user_name) : NULL;
	req->principal.key_name = who->key_name ? lg_req_strdup(req, who->key_name) : NULL;
	req->has_principal = true;
	if ((who->user_name && !req->principal.user_name) ||
	    (who->key_name && !req->principal.key_name))
		return -ENOMEM;
	return 0;
}

int lg_forward_model_call(struct lg_plugin *self, const struct lg_model_request *rq,
			  lg_model_done_fn done, void *arg)
{
	struct lg_loop *loop = lg_loop_current();
	const struct endpoint *ep = rq && rq->size >= sizeof *rq ? endpoint_of(rq->endpoint) : NULL;
	unsigned char rnd[8];
	char hex[17], *body;
	static const struct timeval now = { 0, 0 };
	struct icall *ic;
	int rc = -ENOMEM;

	if (!loop || !ep || ep->multipart || !done || !rq->body.ptr)
		return -EINVAL;
	if (atomic_load(&self->rt->closing))
		return -ESHUTDOWN;
	ic = calloc(1, sizeof *ic);
	if (!ic)
		return -ENOMEM;
	randombytes_buf(rnd, sizeof rnd);
	sodium_bin2hex(hex, sizeof hex, rnd, sizeof rnd);
	snprintf(ic->id, sizeof ic->id, "%.40s-%s", self->name, hex);
	ic->req.rt = self->rt;
	ic->req.start_ns = lg_now_ns();
	ic->req.match.entry = &internal_route;
	ic->ep = ep;
	ic->done = done;
	ic->arg = arg;
	body = lg_req_alloc(&ic->req, rq->body.len + 1);
	ic->ev = evtimer_new(lg_loop_base(loop), icall_step, ic);
	if (!body || !ic->ev)
		goto fail;
	memcpy(body, rq->body.ptr, rq->body.len);
	ic->info = (struct lg_internal_req){ .id = ic->id, .endpoint = ep->path,
					     .body = { body, rq->body.len } };
	rc = icall_principal(ic, rq->who);
	if (rc < 0)
		goto fail;
	if (evtimer_add(ic->ev, &now) != 0) {
		rc = -EIO;
		goto fail;
	}
	return 0;
fail:
	icall_free(ic);
	return rc;
}

int lg_forward_register_routes(struct lg_runtime *rt, char *err, size_t errlen)
{
	size_t upload = TRANSCRIPTION_MAX_BODY;

	if (rt->cfg && rt->cfg->max_body_bytes > upload)
		upload = rt->cfg->max_body_bytes;
	for (size_t i = 0; i < LG_COUNT(endpoints); i++) {
		const struct endpoint *ep = &endpoints[i];
		struct lg_route r = {
			.size = sizeof r, .method = "POST", .path = ep->path,
			.policy = LG_POLICY_KEY, .max_body = ep->multipart ? upload : 0,
			.fn = handle,
		};

		if (lg_router_add(rt->registry->router, &r, (void *)ep, NULL, err, errlen) < 0)
			return -1;
	}
	return 0;
}
