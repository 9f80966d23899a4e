/* SPDX-License-Identifier: Apache-2.0 */
/* The "mock" provider type: answers every call itself, without the network,
 * so that the embedded default runs offline and tests are deterministic.
 *
 * - chat: "This is a mock reply to: <the last user message, first 200
 *   characters>", cut to max_tokens (or max_completion_tokens) words, in
 *   the chat.completion shape; with "stream": true, chat.completion.chunk
 *   events word by word, a usage chunk when stream_options.include_usage,
 *   then "data: [DONE]".
 * - completions: the same with "This is a mock completion of: <prompt>"
 *   (the first prompt when it is a list) in the text_completion shape.
 * - embeddings: feature hashing. Each word (lowercased; words are runs of
 *   letters, digits and non-ASCII bytes) adds +1 or -1 (another bit of its
 *   hash) to one of `dimension` coordinates, then the vector is scaled to
 *   length 1: texts that share words are close. Input: a string, a list of
 *   strings, a list of token ids, or a list of such lists (a token id is a
 *   word). "dimensions" in the request overrides the setting;
 *   encoding_format "float" or "base64" (little-endian float32).
 * - rerank: the share of the query's distinct words found in each
 *   document, in [0, 1], highest first (ties: lower index), cut to top_n.
 * - transcription: {"text": <setting transcription>}; ocr: one page.
 * - usage: a "token" is a word as above.
 *
 * Every piece of a reply (the whole body, or one server-sent event) is
 * delivered from a host timer, `stream_delay` apart (0: on the next turn
 * of the loop), never from inside serve() or cancel(). A bad request body
 * gets what an upstream would answer: 400 with an OpenAI error object.
 * Served calls cannot be paused: on_data returning 1 is taken as "go on"
 * (a mock reply is a few kilobytes). */
#include <math.h>
#include <stdio.h>
#include <time.h>

#include "../common/provider_common.h"

#define MOCK_QUOTE_CHARS 200    /* of the user's message quoted in a reply */
#define MOCK_MAX_WORDS 128      /* of a reply: the quote has at most 100 */
#define MOCK_MIN_DIMENSION 2
#define MOCK_MAX_DIMENSION 8192
#define MOCK_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(9))

struct mock {
	struct lgp_ctx ctx;             /* first: the ud of every op */
	uint64_t stream_delay_ms;
	int64_t dimension;
	const char *transcription;
};

/* A growing byte buffer. */
struct mock_buf {
	char *p;
	size_t len, cap;
};

/* A whole reply, cut into the pieces delivered one per timer tick. */
struct mock_reply {
	int status;
	const char *content_type;
	struct mock_buf body;
	size_t *ends;           /* end offset of each piece */
	size_t npieces, cap;
};

/* One served call; its own allocation, freed right after on_done. */
struct mock_call {
	struct mock *m;
	struct lg_fetch_handlers h;
	void *arg;
	struct mock_reply r;
	size_t next;            /* the next piece to deliver */
	struct lg_timer *timer; /* the pending tick, or NULL */
	bool head_sent;
	bool cancelled;
};

/* What one chat or completion reply says, for both of its shapes. */
struct mock_gen {
	bool chat;
	const char *model;
	char id[96];
	json_int_t created;
	char text[1024];                /* the whole reply */
	struct lg_str words[MOCK_MAX_WORDS];
	size_t nwords;
	const char *finish_reason;
	json_int_t prompt_tokens;
};

static const struct lg_setting mock_settings[] = {
	{ "stream_delay", LG_SETTING_DURATION, "0", 0, 60000, 0,
	  "pause before each piece of a mock reply (0: the next turn of the loop)" },
	{ "dimension", LG_SETTING_INT, "256", MOCK_MIN_DIMENSION, MOCK_MAX_DIMENSION, 0,
	  "size of mock embedding vectors" },
	{ "transcription", LG_SETTING_STRING, "This is a mock transcription.", 0, 4096, 0,
	  "text of every mock transcription" },
};

static const char *const mock_model_types[] = {
	"text-generation", "text-embeddings-inference", "text-classification",
	"automatic-speech-recognition", "image-to-text", NULL,
};

/* ==== buffers and replies ==== */

/* Room for @n more bytes and a NUL. */
static int mock_buf_reserve(struct mock_buf *b, size_t n)
{
	size_t cap = b->cap ? b->cap : 256;
	char *p;

	if (b->len + n + 1 <= b->cap)
		return 0;
	while (cap < b->len + n + 1)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int mock_buf_add(struct mock_buf *b, const void *data, size_t n)
{
	if (mock_buf_reserve(b, n) < 0)
		return -ENOMEM;
	if (n)
		memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

/* Serialises @v at the end of @b: sized first, then written in place. */
static int mock_buf_add_json(struct mock_buf *b, const json_t *v)
{
	size_t n = json_dumpb(v, NULL, 0, MOCK_JSON_FLAGS);

	if (n == 0)
		return -EINVAL;
	if (mock_buf_reserve(b, n) < 0)
		return -ENOMEM;
	if (json_dumpb(v, b->p + b->len, n, MOCK_JSON_FLAGS) != n)
		return -EINVAL;
	b->len += n;
	b->p[b->len] = '\0';
	return 0;
}

/* Ends the current piece of @r at the body's current length. */
static int mock_piece_end(struct mock_reply *r)
{
	if (r->npieces == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		size_t *ends = realloc(r->ends, cap * sizeof *ends);

		if (!ends)
			return -ENOMEM;
		r->ends = ends;
		r->cap = cap;
	}
	r->ends[r->npieces++] = r->body.len;
	return 0;
}

static void mock_reply_clear(struct mock_reply *r)
{
	free(r->body.p);
	free(r->ends);
	*r = (struct mock_reply){ 0 };
}

/* A JSON reply in one piece; takes the reference to @v (NULL: the
 * caller ran out of memory building it). */
static int mock_reply_json_new(struct mock_reply *r, int status, json_t *v)
{
	int rc = v ? mock_buf_add_json(&r->body, v) : -ENOMEM;

	json_decref(v);
	if (rc < 0)
		return rc;
	r->status = status;
	r->content_type = "application/json";
	return mock_piece_end(r);
}

/* What an OpenAI-compatible upstream answers to a body it refuses. */
static int mock_bad_request(struct mock_reply *r, const char *msg)
{
	return mock_reply_json_new(r, 400, json_pack("{s:{s:s, s:s, s:n, s:n}}", "error",
						     "message", msg,
						     "type", "invalid_request_error",
						     "param", "code"));
}

/* One server-sent event "data: <json>\n\n" as its own piece. */
static int mock_event(struct mock_reply *r, json_t *v)
{
	int rc = v ? 0 : -ENOMEM;

	if (rc == 0)
		rc = mock_buf_add(&r->body, "data: ", 6);
	if (rc == 0)
		rc = mock_buf_add_json(&r->body, v);
	if (rc == 0)
		rc = mock_buf_add(&r->body, "\n\n", 2);
	json_decref(v);
	return rc < 0 ? rc : mock_piece_end(r);
}

static const char *mock_req_id(const struct mock *m, struct lg_req *req)
{
	const char *id = m->ctx.host->req_id(req);

	return id ? id : "0";
}

/* ==== words ==== */

/* ASCII on purpose: words must not depend on the process's locale. */
static bool mock_word_char(unsigned char c)
{
	return c >= 0x80 || (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
}

static unsigned char mock_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c | 0x20) : c;
}

static bool mock_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* The next word of @s from *@pos; false at the end. */
static bool mock_next_word(const char *s, size_t len, size_t *pos, struct lg_str *w)
{
	size_t i = *pos, start;

	while (i < len && !mock_word_char((unsigned char)s[i]))
		i++;
	if (i == len) {
		*pos = i;
		return false;
	}
	start = i;
	while (i < len && mock_word_char((unsigned char)s[i]))
		i++;
	*w = (struct lg_str){ .ptr = s + start, .len = i - start };
	*pos = i;
	return true;
}

static size_t mock_count_words(const char *s, size_t len)
{
	struct lg_str w;
	size_t pos = 0, n = 0;

	while (mock_next_word(s, len, &pos, &w))
		n++;
	return n;
}

/* FNV-1a over the lowercased word, then splitmix64's finaliser so that
 * every bit of the result depends on every byte. */
static uint64_t mock_hash_word(struct lg_str w)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < w.len; i++) {
		h ^= mock_lower((unsigned char)w.ptr[i]);
		h *= 0x100000001b3ull;
	}
	h ^= h >> 30;
	h *= 0xbf58476d1ce4e5b9ull;
	h ^= h >> 27;
	h *= 0x94d049bb133111ebull;
	return h ^ (h >> 31);
}

/* ==== request fields ==== */

/* Appends the text of a message content: a string, or the "text" of each
 * part, separated by spaces. */
static int mock_content_text(const json_t *content, struct mock_buf *out)
{
	const json_t *part;
	size_t i;
	int rc = 0;

	if (json_is_string(content))
		return mock_buf_add(out, json_string_value(content), json_string_length(content));
	json_array_foreach(content, i, part) {
		const json_t *t = json_object_get(part, "text");

		if (!json_is_string(t))
			continue;
		if (out->len)
			rc = mock_buf_add(out, " ", 1);
		if (rc == 0)
			rc = mock_buf_add(out, json_string_value(t), json_string_length(t));
		if (rc < 0)
			break;
	}
	return rc;
}

/* The prefix of @s holding at most @max characters (UTF-8 code points). */
static size_t mock_utf8_prefix(const char *s, size_t len, size_t max)
{
	size_t i = 0, chars = 0;

	while (i < len && chars < max) {
		i++;
		while (i < len && ((unsigned char)s[i] & 0xc0) == 0x80)
			i++;
		chars++;
	}
	return i;
}

/* max_tokens, else max_completion_tokens, when >= 0; else -1. */
static json_int_t mock_max_tokens(const json_t *body)
{
	const json_t *v = json_object_get(body, "max_tokens");

	if (!json_is_integer(v))
		v = json_object_get(body, "max_completion_tokens");
	return json_is_integer(v) && json_integer_value(v) >= 0 ? json_integer_value(v) : -1;
}

static bool mock_include_usage(const json_t *body)
{
	return json_is_true(json_object_get(json_object_get(body, "stream_options"),
					    "include_usage"));
}

/* ==== chat and completions ==== */

/* Fills the reply text and its words from a prefix and the quoted text. */
static void mock_gen_text(struct mock_gen *g, const char *prefix, const char *quote, size_t len,
			  json_int_t max_words)
{
	size_t pos = 0, n = 0;
	int w = snprintf(g->text, sizeof g->text, "%s %.*s", prefix,
			 (int)mock_utf8_prefix(quote, len, MOCK_QUOTE_CHARS), quote);
	size_t tlen = w < 0 ? 0 : (size_t)w < sizeof g->text ? (size_t)w : sizeof g->text - 1;

	g->finish_reason = "stop";
	/* Words of the reply are separated by white space, so that the
	 * streamed pieces join back into the text. */
	while (pos < tlen && n < MOCK_MAX_WORDS) {
		size_t start;

		while (pos < tlen && mock_space(g->text[pos]))
			pos++;
		if (pos == tlen)
			break;
		start = pos;
		while (pos < tlen && !mock_space(g->text[pos]))
			pos++;
		if (max_words >= 0 && (json_int_t)n == max_words) {
			g->finish_reason = "length";
			break;
		}
		g->words[n++] = (struct lg_str){ .ptr = g->text + start, .len = pos - start };
	}
	g->nwords = n;
}

/* The reply as one string, words joined by single spaces. */
static int mock_gen_content(const struct mock_gen *g, struct mock_buf *out)
{
	int rc = mock_buf_add(out, "", 0);

	for (size_t i = 0; rc == 0 && i < g->nwords; i++) {
		if (i)
			rc = mock_buf_add(out, " ", 1);
		if (rc == 0)
			rc = mock_buf_add(out, g->words[i].ptr, g->words[i].len);
	}
	return rc;
}

static json_t *mock_usage(json_int_t prompt, json_int_t completion)
{
	return json_pack("{s:I, s:I, s:I}", "prompt_tokens", prompt, "completion_tokens",
			 completion, "total_tokens", prompt + completion);
}

/* The non-stream reply. */
static int mock_gen_whole(const struct mock_gen *g, struct mock_reply *r)
{
	struct mock_buf content = { 0 };
	json_t *choice = NULL, *usage = mock_usage(g->prompt_tokens, (json_int_t)g->nwords);
	int rc = mock_gen_content(g, &content);

	if (rc < 0)
		goto out;
	if (g->chat)
		choice = json_pack("{s:i, s:{s:s, s:s}, s:s}", "index", 0, "message", "role",
				   "assistant", "content", content.p, "finish_reason",
				   g->finish_reason);
	else
		choice = json_pack("{s:s, s:i, s:n, s:s}", "text", content.p, "index", 0,
				   "logprobs", "finish_reason", g->finish_reason);
	rc = mock_reply_json_new(r, 200,
				 choice && usage ?
				 json_pack("{s:s, s:s, s:I, s:s, s:[O], s:O}", "id", g->id,
					   "object", g->chat ? "chat.completion" : "text_completion",
					   "created", g->created, "model", g->model,
					   "choices", choice, "usage", usage) : NULL);
out:
	json_decref(usage);
	json_decref(choice);
	free(content.p);
	return rc;
}

/* One chunk of a stream; @choice (stolen) NULL means "choices": []. */
static json_t *mock_chunk(const struct mock_gen *g, json_t *choice)
{
	json_t *chunk = json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", g->id, "object",
				  g->chat ? "chat.completion.chunk" : "text_completion",
				  "created", g->created, "model", g->model, "choices");

	if (chunk && choice && json_array_append(json_object_get(chunk, "choices"), choice) < 0) {
		json_decref(chunk);
		chunk = NULL;
	}
	json_decref(choice);
	return chunk;
}

/* The choice of one streamed piece of text, or of the last one when
 * @finish is set. */
static json_t *mock_delta(const struct mock_gen *g, const char *text, size_t len,
			  const char *finish)
{
	json_t *choice;
	int rc = 0;

	if (g->chat)
		choice = json_pack("{s:i, s:{}}", "index", 0, "delta");
	else
		choice = json_pack("{s:s%, s:i, s:n}", "text", text, len, "index", 0, "logprobs");
	if (!choice)
		return NULL;
	if (g->chat && !finish)
		rc = json_object_set_new(json_object_get(choice, "delta"), "content",
					 json_stringn(text, len));
	if (rc == 0)
		rc = json_object_set_new(choice, "finish_reason",
					 finish ? json_string(finish) : json_null());
	if (rc < 0) {
		json_decref(choice);
		choice = NULL;
	}
	return choice;
}

/* The stream: a role chunk (chat), one chunk per word, a finish chunk,
 * the usage chunk when asked, then [DONE]. */
static int mock_gen_stream(const struct mock_gen *g, bool include_usage, struct mock_reply *r)
{
	char piece[1040];
	int rc = 0;

	r->status = 200;
	r->content_type = "text/event-stream";
	if (g->chat)
		rc = mock_event(r, mock_chunk(g, json_pack("{s:i, s:{s:s, s:s}, s:n}", "index", 0,
							   "delta", "role", "assistant", "content",
							   "", "finish_reason")));
	for (size_t i = 0; rc == 0 && i < g->nwords; i++) {
		int n = snprintf(piece, sizeof piece, "%s%.*s", i ? " " : "",
				 (int)g->words[i].len, g->words[i].ptr);

		rc = mock_event(r, mock_chunk(g, mock_delta(g, piece, (size_t)n, NULL)));
	}
	if (rc == 0)
		rc = mock_event(r, mock_chunk(g, mock_delta(g, "", 0, g->finish_reason)));
	if (rc == 0 && include_usage) {
		json_t *chunk = mock_chunk(g, NULL);

		if (chunk && json_object_set_new(chunk, "usage",
						 mock_usage(g->prompt_tokens,
							    (json_int_t)g->nwords)) < 0) {
			json_decref(chunk);
			chunk = NULL;
		}
		rc = mock_event(r, chunk);
	}
	if (rc == 0)
		rc = mock_buf_add(&r->body, "data: [DONE]\n\n", 14);
	return rc < 0 ? rc : mock_piece_end(r);
}

static void mock_gen_init(struct mock_gen *g, struct mock *m, struct lg_req *req,
			  const struct lg_provider_conf *p, const json_t *body, bool chat)
{
	const json_t *model = json_object_get(body, "model");

	g->chat = chat;
	g->model = p->model_name ? p->model_name :
		   json_is_string(model) ? json_string_value(model) : "mock";
	snprintf(g->id, sizeof g->id, "%s-mock-%s", chat ? "chatcmpl" : "cmpl", mock_req_id(m, req));
	g->created = (json_int_t)time(NULL);
}

/* The words of every message count as the prompt; the last user message
 * is quoted. */
static int mock_chat(struct mock *m, struct lg_req *req, const struct lg_provider_conf *p,
		     const json_t *body, struct mock_reply *r)
{
	const json_t *messages = json_object_get(body, "messages"), *msg, *last = NULL;
	struct mock_buf all = { 0 }, quote = { 0 };
	struct mock_gen *g;
	size_t i;
	int rc = 0;

	if (!json_is_array(messages) || json_array_size(messages) == 0)
		return mock_bad_request(r, "messages: a non-empty list is required");
	g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	json_array_foreach(messages, i, msg) {
		const json_t *role = json_object_get(msg, "role");

		if (json_is_string(role) && strcmp(json_string_value(role), "user") == 0)
			last = msg;
		rc = mock_buf_add(&all, " ", 1);
		if (rc == 0)
			rc = mock_content_text(json_object_get(msg, "content"), &all);
		if (rc < 0)
			goto out;
	}
	rc = mock_buf_add(&quote, "", 0);
	if (rc == 0 && last)
		rc = mock_content_text(json_object_get(last, "content"), &quote);
	if (rc < 0)
		goto out;
	mock_gen_init(g, m, req, p, body, true);
	g->prompt_tokens = (json_int_t)mock_count_words(all.p, all.len);
	mock_gen_text(g, "This is a mock reply to:", quote.p, quote.len, mock_max_tokens(body));
	if (json_is_true(json_object_get(body, "stream")))
		rc = mock_gen_stream(g, mock_include_usage(body), r);
	else
		rc = mock_gen_whole(g, r);
out:
	free(all.p);
	free(quote.p);
	free(g);
	return rc;
}

static int mock_completion(struct mock *m, struct lg_req *req,
			   const struct lg_provider_conf *p, const json_t *body,
			   struct mock_reply *r)
{
	const json_t *prompt = json_object_get(body, "prompt");
	struct mock_gen *g;
	int rc;

	if (json_is_array(prompt))
		prompt = json_array_get(prompt, 0);
	if (!json_is_string(prompt))
		return mock_bad_request(r, "prompt: a string or a list of strings is required");
	g = calloc(1, sizeof *g);
	if (!g)
		return -ENOMEM;
	mock_gen_init(g, m, req, p, body, false);
	g->prompt_tokens = (json_int_t)mock_count_words(json_string_value(prompt),
							json_string_length(prompt));
	mock_gen_text(g, "This is a mock completion of:", json_string_value(prompt),
		      json_string_length(prompt), mock_max_tokens(body));
	if (json_is_true(json_object_get(body, "stream")))
		rc = mock_gen_stream(g, mock_include_usage(body), r);
	else
		rc = mock_gen_whole(g, r);
	free(g);
	return rc;
}

/* ==== embeddings ==== */

static void mock_feature_add(double *vec, size_t dim, uint64_t h)
{
	vec[h % dim] += (h >> 63) ? -1.0 : 1.0;
}

/* Hashes the words of one input (a string or a list of token ids) into
 * @vec; returns the number of words, or -1 when @input is neither. */
static long mock_embed_input(const json_t *input, double *vec, size_t dim)
{
	const json_t *tok;
	struct lg_str w;
	size_t i, pos = 0;
	long n = 0;

	if (json_is_string(input)) {
		while (mock_next_word(json_string_value(input), json_string_length(input), &pos,
				      &w)) {
			mock_feature_add(vec, dim, mock_hash_word(w));
			n++;
		}
		return n;
	}
	if (!json_is_array(input) || json_array_size(input) == 0)
		return -1;
	json_array_foreach(input, i, tok) {
		char word[24];

		if (!json_is_integer(tok))
			return -1;
		w.len = (size_t)snprintf(word, sizeof word, "%" JSON_INTEGER_FORMAT,
					 json_integer_value(tok));
		w.ptr = word;
		mock_feature_add(vec, dim, mock_hash_word(w));
		n++;
	}
	return n;
}

static void mock_normalise(double *vec, size_t dim)
{
	double sum = 0;

	for (size_t i = 0; i < dim; i++)
		sum += vec[i] * vec[i];
	if (sum == 0)
		return;
	sum = sqrt(sum);
	for (size_t i = 0; i < dim; i++)
		vec[i] /= sum;
}

/* The vector as a JSON list, or as base64 of little-endian float32. */
static json_t *mock_vector_json(const double *vec, size_t dim, bool base64)
{
	json_t *out;

	if (base64) {
		unsigned char *raw = malloc(dim * 4);
		char *b64 = malloc(lgp_base64_len(dim * 4));

		out = NULL;
		if (raw && b64) {
			for (size_t i = 0; i < dim; i++) {
				float f = (float)vec[i];
				uint32_t u;

				memcpy(&u, &f, sizeof u);
				for (int k = 0; k < 4; k++)
					raw[i * 4 + (size_t)k] = (unsigned char)(u >> (8 * k));
			}
			lgp_base64_encode(raw, dim * 4, b64);
			out = json_stringn(b64, lgp_base64_len(dim * 4));
		}
		free(raw);
		free(b64);
		return out;
	}
	out = json_array();
	for (size_t i = 0; out && i < dim; i++) {
		if (json_array_append_new(out, json_real(vec[i])) < 0) {
			json_decref(out);
			out = NULL;
		}
	}
	return out;
}

/* The inputs as a list: one string or one list of token ids is a list of
 * one. */
static bool mock_single_input(const json_t *input)
{
	return json_is_string(input) || json_is_integer(json_array_get(input, 0));
}

/* The request's "dimensions" (2..8192), else the setting; 0 when invalid. */
static size_t mock_dimension(const struct mock *m, const json_t *body)
{
	const json_t *d = json_object_get(body, "dimensions");

	if (!d || json_is_null(d))
		return (size_t)m->dimension;
	if (!json_is_integer(d) || json_integer_value(d) < MOCK_MIN_DIMENSION ||
	    json_integer_value(d) > MOCK_MAX_DIMENSION)
		return 0;
	return (size_t)json_integer_value(d);
}

static int mock_embedding_append(json_t *data, const double *vec, size_t dim, bool base64,
				 size_t index)
{
	json_t *v = mock_vector_json(vec, dim, base64);
	int rc = v ? json_array_append_new(data, json_pack("{s:s, s:O, s:I}", "object",
							   "embedding", "embedding", v,
							   "index", (json_int_t)index)) : -1;

	json_decref(v);
	return rc < 0 ? -ENOMEM : 0;
}

static int mock_embeddings_data(const json_t *input, size_t dim, bool base64, json_t *data,
				json_int_t *words)
{
	size_t n = mock_single_input(input) ? 1 : json_array_size(input);
	double *vec = malloc(dim * sizeof *vec);
	int rc = vec ? 0 : -ENOMEM;

	for (size_t i = 0; rc == 0 && i < n; i++) {
		const json_t *one = mock_single_input(input) ? input : json_array_get(input, i);
		long w;

		memset(vec, 0, dim * sizeof *vec);
		w = mock_embed_input(one, vec, dim);
		if (w < 0) {
			rc = -EINVAL;
			break;
		}
		*words += w;
		mock_normalise(vec, dim);
		rc = mock_embedding_append(data, vec, dim, base64, i);
	}
	free(vec);
	return rc;
}

static int mock_embeddings(struct mock *m, struct lg_req *req,
			   const struct lg_provider_conf *p, const json_t *body,
			   struct mock_reply *r)
{
	const json_t *input = json_object_get(body, "input");
	const json_t *format = json_object_get(body, "encoding_format");
	const char *fmt = json_is_string(format) ? json_string_value(format) : "float";
	size_t dim = mock_dimension(m, body);
	json_int_t words = 0;
	json_t *data;
	char id[96];
	int rc;

	if (!dim)
		return mock_bad_request(r, "dimensions: an integer from 2 to 8192");
	if (strcmp(fmt, "float") != 0 && strcmp(fmt, "base64") != 0)
		return mock_bad_request(r, "encoding_format: float or base64");
	if (!json_is_string(input) && (!json_is_array(input) || json_array_size(input) == 0))
		return mock_bad_request(r, "input: a string, a list of strings or of token ids");
	data = json_array();
	if (!data)
		return -ENOMEM;
	rc = mock_embeddings_data(input, dim, strcmp(fmt, "base64") == 0, data, &words);
	if (rc == -EINVAL) {
		rc = mock_bad_request(r, "input: a string, a list of strings or of token ids");
	} else if (rc == 0) {
		snprintf(id, sizeof id, "embd-mock-%s", mock_req_id(m, req));
		rc = mock_reply_json_new(r, 200,
					 json_pack("{s:s, s:s, s:O, s:s, s:{s:I, s:I}}",
						   "object", "list", "id", id, "data", data,
						   "model", p->model_name ? p->model_name : "mock",
						   "usage", "prompt_tokens", words,
						   "total_tokens", words));
	}
	json_decref(data);
	return rc;
}

/* ==== rerank ==== */

static int mock_u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

/* The distinct word hashes of @s, sorted. Ownership: *@out is the caller's. */
static int mock_word_set(const char *s, size_t len, uint64_t **out, size_t *n)
{
	size_t cap = mock_count_words(s, len), pos = 0, k = 0;
	uint64_t *set = malloc((cap ? cap : 1) * sizeof *set);
	struct lg_str w;

	if (!set)
		return -ENOMEM;
	while (mock_next_word(s, len, &pos, &w))
		set[k++] = mock_hash_word(w);
	qsort(set, k, sizeof *set, mock_u64_cmp);
	*n = 0;
	for (size_t i = 0; i < k; i++)
		if (*n == 0 || set[*n - 1] != set[i])
			set[(*n)++] = set[i];
	*out = set;
	return 0;
}

struct mock_score {
	size_t index;
	double score;
};

static int mock_score_cmp(const void *a, const void *b)
{
	const struct mock_score *x = a, *y = b;

	if (x->score != y->score)
		return x->score > y->score ? -1 : 1;
	return (x->index > y->index) - (x->index < y->index);
}

/* The share of the query's words that @doc holds. */
static int mock_overlap(const uint64_t *q, size_t nq, const json_t *doc, double *score)
{
	uint64_t *d;
	size_t nd, hits = 0;

	if (mock_word_set(json_string_value(doc), json_string_length(doc), &d, &nd) < 0)
		return -ENOMEM;
	for (size_t i = 0; i < nq; i++)
		if (bsearch(&q[i], d, nd, sizeof *d, mock_u64_cmp))
			hits++;
	free(d);
	*score = nq ? (double)hits / (double)nq : 0.0;
	return 0;
}

static const json_t *mock_document_text(const json_t *doc)
{
	if (json_is_object(doc))
		doc = json_object_get(doc, "text");
	return json_is_string(doc) ? doc : NULL;
}

static json_t *mock_results_json(const struct mock_score *s, size_t n)
{
	json_t *results = json_array();

	for (size_t i = 0; results && i < n; i++) {
		if (json_array_append_new(results, json_pack("{s:I, s:f}", "index",
							     (json_int_t)s[i].index,
							     "relevance_score", s[i].score)) < 0) {
			json_decref(results);
			results = NULL;
		}
	}
	return results;
}

/* Scores every document; counts the words of the documents into @words. */
static int mock_scores(const json_t *query, const json_t *docs, struct mock_score *s,
		       json_int_t *words)
{
	uint64_t *q = NULL;
	size_t nq = 0;
	int rc = mock_word_set(json_string_value(query), json_string_length(query), &q, &nq);

	for (size_t i = 0; rc == 0 && i < json_array_size(docs); i++) {
		const json_t *doc = mock_document_text(json_array_get(docs, i));

		if (!doc) {
			rc = -EINVAL;
			break;
		}
		s[i].index = i;
		rc = mock_overlap(q, nq, doc, &s[i].score);
		*words += (json_int_t)mock_count_words(json_string_value(doc),
						       json_string_length(doc));
	}
	free(q);
	return rc;
}

static int mock_rerank(struct mock *m, struct lg_req *req, const struct lg_provider_conf *p,
		       const json_t *body, struct mock_reply *r)
{
	const json_t *query = json_object_get(body, "query");
	const json_t *docs = json_object_get(body, "documents");
	const json_t *top = json_object_get(body, "top_n");
	size_t n = json_array_size(docs);
	json_int_t words;
	struct mock_score *s;
	json_t *results = NULL, *usage = NULL;
	char id[96];
	int rc;

	if (!json_is_string(query) || !json_is_array(docs) || n == 0)
		return mock_bad_request(r, "query (a string) and documents (a list) are required");
	if (top && !json_is_null(top) && (!json_is_integer(top) || json_integer_value(top) < 1))
		return mock_bad_request(r, "top_n: an integer >= 1, or null");
	s = calloc(n, sizeof *s);
	if (!s)
		return -ENOMEM;
	words = (json_int_t)mock_count_words(json_string_value(query), json_string_length(query));
	rc = mock_scores(query, docs, s, &words);
	if (rc == -EINVAL) {
		rc = mock_bad_request(r, "documents: a list of strings");
		goto out;
	}
	if (rc < 0)
		goto out;
	qsort(s, n, sizeof *s, mock_score_cmp);
	if (json_is_integer(top) && (uint64_t)json_integer_value(top) < n)
		n = (size_t)json_integer_value(top);
	results = mock_results_json(s, n);
	usage = mock_usage(words, 0);
	snprintf(id, sizeof id, "rerank-mock-%s", mock_req_id(m, req));
	rc = mock_reply_json_new(r, 200,
				 results && usage ?
				 json_pack("{s:s, s:s, s:s, s:O, s:O}", "object", "list", "id", id,
					   "model", p->model_name ? p->model_name : "mock",
					   "results", results, "usage", usage) : NULL);
out:
	json_decref(usage);
	json_decref(results);
	free(s);
	return rc;
}

/* ==== transcription and OCR ==== */

static int mock_transcription(struct mock *m, struct mock_reply *r)
{
	return mock_reply_json_new(r, 200, json_pack("{s:s}", "text", m->transcription));
}

static int mock_ocr(struct mock *m, struct lg_req *req, const struct lg_provider_conf *p,
		    struct mock_reply *r)
{
	char id[96];

	snprintf(id, sizeof id, "ocr-mock-%s", mock_req_id(m, req));
	return mock_reply_json_new(r, 200,
				   json_pack("{s:s, s:s, s:[{s:i, s:s, s:[], s:n}], s:{s:i}}",
					     "id", id, "model",
					     p->model_name ? p->model_name : "mock", "pages",
					     "index", 0, "markdown", "This is a mock OCR page.",
					     "images", "dimensions", "usage_info",
					     "pages_processed", 1));
}

/* ==== serving ==== */

static int mock_build_reply(struct mock *m, struct lg_req *req, const struct lg_provider_conf *p,
			    const struct lg_upstream_call *call, struct mock_reply *r)
{
	json_t *body;
	int rc;

	/* The upload is multipart and the reply does not depend on it. */
	if (call->endpoint == LG_ENDPOINT_TRANSCRIPTION)
		return mock_transcription(m, r);
	body = lgp_json_object(call->request.body);
	if (!body)
		return mock_bad_request(r, "The request body is not a JSON object.");
	switch (call->endpoint) {
	case LG_ENDPOINT_CHAT:
		rc = mock_chat(m, req, p, body, r);
		break;
	case LG_ENDPOINT_COMPLETIONS:
		rc = mock_completion(m, req, p, body, r);
		break;
	case LG_ENDPOINT_EMBEDDINGS:
		rc = mock_embeddings(m, req, p, body, r);
		break;
	case LG_ENDPOINT_RERANK:
		rc = mock_rerank(m, req, p, body, r);
		break;
	case LG_ENDPOINT_OCR:
		rc = mock_ocr(m, req, p, r);
		break;
	default:
		rc = -ENOTSUP;
		break;
	}
	json_decref(body);
	return rc;
}

static void mock_tick(void *arg);

static bool mock_schedule(struct mock_call *c, uint64_t ms)
{
	const struct lgp_ctx *ctx = &c->m->ctx;

	c->timer = ctx->host->timer_start(ctx->self, ms, false, mock_tick, c);
	return c->timer != NULL;
}

static void mock_call_free(struct mock_call *c)
{
	c->m->ctx.host->timer_stop(c->timer);
	mock_reply_clear(&c->r);
	free(c);
}

/* The last callback of a call: on_done, then the call is gone. */
static void mock_finish(struct mock_call *c, enum lg_fetch_result result, const char *error)
{
	struct lg_str body = { 0 };
	int status = c->head_sent ? c->r.status : 0;

	if (result == LG_FETCH_OK) {
		error = NULL;
		if (!c->h.on_data)
			body = (struct lg_str){ .ptr = c->r.body.p, .len = c->r.body.len };
	}
	c->h.on_done(c->arg, result, status, body, error);
	mock_call_free(c);
}

/* cancel() ran inside a callback of this tick: its timer finishes the
 * call, or, if it could not start one, this tick does. */
static void mock_after_cancel(struct mock_call *c)
{
	if (!c->timer)
		mock_finish(c, LG_FETCH_ECANCELED, "canceled");
}

/* Delivers the next piece; the head goes with the first one. */
static void mock_tick(void *arg)
{
	struct mock_call *c = arg;
	size_t start;
	int rc = 0;

	c->timer = NULL; /* a one-shot timer is freed before it fires */
	if (c->cancelled) {
		mock_finish(c, LG_FETCH_ECANCELED, "canceled");
		return;
	}
	if (!c->head_sent) {
		c->head_sent = true;
		if (c->h.on_head)
			rc = c->h.on_head(c->arg, c->r.status, c->r.content_type);
	}
	if (rc >= 0 && !c->cancelled && c->h.on_data) {
		start = c->next ? c->r.ends[c->next - 1] : 0;
		rc = c->h.on_data(c->arg, c->r.body.p + start, c->r.ends[c->next] - start);
	}
	if (c->cancelled) {
		mock_after_cancel(c);
	} else if (rc < 0) {
		mock_finish(c, LG_FETCH_ECANCELED, "canceled by the receiver");
	} else if (++c->next == c->r.npieces) {
		mock_finish(c, LG_FETCH_OK, NULL);
	} else if (!mock_schedule(c, c->m->stream_delay_ms)) {
		c->m->ctx.host->log(c->m->ctx.self, LG_LOG_ERROR, "cannot start a timer");
		mock_finish(c, LG_FETCH_EOTHER, "cannot start a timer");
	}
}

static int mock_serve(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
		      const struct lg_upstream_call *call, const struct lg_fetch_handlers *h,
		      void *arg, void **handle)
{
	struct mock *m = ud;
	struct mock_call *c;
	int rc;

	if (!h || h->size < offsetof(struct lg_fetch_handlers, on_done) + sizeof h->on_done ||
	    !h->on_done || !handle)
		return -EINVAL;
	c = calloc(1, sizeof *c);
	if (!c)
		return -ENOMEM;
	c->m = m;
	memcpy(&c->h, h, h->size < sizeof c->h ? h->size : sizeof c->h);
	c->arg = arg;
	rc = mock_build_reply(m, req, p, call, &c->r);
	if (rc == 0 && c->r.npieces == 0)
		rc = -EINVAL;
	if (rc == 0 && !mock_schedule(c, m->stream_delay_ms))
		rc = -ENOMEM;
	if (rc < 0) {
		mock_call_free(c);
		return rc;
	}
	*handle = c;
	return 0;
}

/* Stops the pending tick and ends the call with ECANCELED from a new
 * zero-delay timer. If that timer cannot start, the pending tick (or the
 * tick that is running, when cancel() is called from one of its
 * callbacks) ends the call instead. */
static void mock_cancel(void *ud, void *handle)
{
	struct mock *m = ud;
	struct mock_call *c = handle;
	struct lg_timer *t;

	if (!c || c->cancelled)
		return;
	c->cancelled = true;
	t = m->ctx.host->timer_start(m->ctx.self, 0, false, mock_tick, c);
	if (!t) {
		m->ctx.host->log(m->ctx.self, LG_LOG_WARN,
				 "cancel: cannot start a timer; the call ends at its next step");
		return;
	}
	m->ctx.host->timer_stop(c->timer);
	c->timer = t;
}

static const struct lg_provider_ops mock_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "mock",
	.model_types = mock_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_CHAT) | LG_ENDPOINT_BIT(LG_ENDPOINT_COMPLETIONS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) | LG_ENDPOINT_BIT(LG_ENDPOINT_RERANK) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_TRANSCRIPTION) | LG_ENDPOINT_BIT(LG_ENDPOINT_OCR),
	/* Never contacted: the mock serves every call itself. ".invalid" is a
	 * reserved name that resolves nowhere, so a provider needs no url. */
	.default_url = "http://mock.invalid",
	.models_path = "/v1/models",
	.serve = mock_serve,
	.cancel = mock_cancel,
};

static int mock_init(struct lg_plugin *self, const struct lg_host *host)
{
	struct mock *m = lgp_state_new(self, host, sizeof *m);
	int rc;

	if (!m)
		return -ENOMEM;
	rc = host->cfg_u64(self, "stream_delay", &m->stream_delay_ms);
	if (rc == 0)
		rc = host->cfg_int(self, "dimension", &m->dimension);
	if (rc == 0)
		rc = host->cfg_str(self, "transcription", &m->transcription);
	if (rc < 0) {
		host->set_error(self, "cannot read the settings: %s", strerror(-rc));
		free(m);
		return rc;
	}
	rc = lgp_provider_add(&m->ctx, &mock_ops);
	if (rc < 0)
		free(m);
	return rc;
}

LG_PLUGIN(.name = "mock", .version = "1.0.0",
	  .description = "provider type mock: answers without the network (tests, offline default)",
	  .settings = mock_settings, .n_settings = LG_COUNT(mock_settings),
	  .init = mock_init, .fini = lgp_fini);
