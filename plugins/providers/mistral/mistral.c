/* SPDX-License-Identifier: Apache-2.0 */
/* The "mistral" provider type: La Plateforme (api.mistral.ai) and Mistral's
 * self-hosted inference, as OpenGateLLM adapts them.
 *
 * Chat: Mistral's schema refuses fields it does not know, so prepare()
 * rebuilds the body from the fields Mistral's chat completion accepts:
 *   model messages temperature top_p max_tokens stream stop random_seed
 *   response_format tools tool_choice presence_penalty frequency_penalty
 *   n prediction parallel_tool_calls prompt_mode safe_prompt
 * with two renames: "seed" becomes "random_seed" and
 * "max_completion_tokens" becomes "max_tokens" (unless the client set the
 * Mistral name itself). Every other field is dropped, notably
 * stream_options (Mistral sends the usage in the last event by itself),
 * user, logit_bias, logprobs, top_logprobs, service_tier, store,
 * metadata, modalities, audio, reasoning_effort, web_search_options and
 * the legacy functions/function_call. Null values are dropped too:
 * Mistral applies its own defaults.
 *
 * Transcription: Mistral has no /v1/audio/transcriptions in OpenGateLLM's
 * adapter. prepare() turns the multipart upload into a chat completion:
 * one user message with the file as a base64 "input_audio" part and a text
 * part, the client's prompt or "Transcribe this audio in this language:
 * <language, default en>"; the client's temperature is kept. convert()
 * turns the chat reply back into {"text", "usage"}. The reply is JSON
 * whatever response_format asked for.
 *
 * Embeddings and OCR (/v1/ocr) are the host's defaults. */
#include <stdio.h>
#include <strings.h>

#include "../common/provider_common.h"

#define MISTRAL_MAX_BOUNDARY 70 /* RFC 2046 */
#define MISTRAL_MAX_FIELD 4096  /* prompt, language, temperature */

static const char *const mistral_model_types[] = {
	"text-generation", "text-embeddings-inference", "automatic-speech-recognition",
	"image-to-text", NULL,
};

/* The chat fields Mistral accepts, and the OpenAI names it has its own for. */
static const char *const mistral_chat_fields[] = {
	"model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
	"random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
	"frequency_penalty", "n", "prediction", "parallel_tool_calls", "prompt_mode",
	"safe_prompt",
};

static const struct {
	const char *openai, *mistral;
} mistral_renames[] = {
	{ "seed", "random_seed" },
	{ "max_completion_tokens", "max_tokens" },
};

/* ==== chat ==== */

static int mistral_copy_field(json_t *out, const char *key, json_t *value)
{
	if (!value || json_is_null(value) || json_object_get(out, key))
		return 0;
	return json_object_set(out, key, value) < 0 ? -ENOMEM : 0;
}

static int mistral_prepare_chat(struct lgp_ctx *ctx, struct lg_req *req,
				struct lg_upstream_call *call)
{
	json_t *in = lgp_json_object(call->request.body), *out = json_object();
	int rc = in && out ? 0 : -EINVAL;
	size_t i;

	if (!out)
		rc = -ENOMEM;
	for (i = 0; rc == 0 && i < LG_COUNT(mistral_chat_fields); i++)
		rc = mistral_copy_field(out, mistral_chat_fields[i],
					json_object_get(in, mistral_chat_fields[i]));
	for (i = 0; rc == 0 && i < LG_COUNT(mistral_renames); i++)
		rc = mistral_copy_field(out, mistral_renames[i].mistral,
					json_object_get(in, mistral_renames[i].openai));
	if (rc == 0)
		rc = lgp_json_dump_req(ctx, req, out, &call->request.body);
	json_decref(out);
	json_decref(in);
	return rc;
}

/* ==== multipart/form-data ==== */

struct mistral_part {
	struct lg_str name, filename, data;
};

static bool mistral_is_header(const char *line, const char *name)
{
	size_t n = strlen(name);

	return strncasecmp(line, name, n) == 0 && line[n] == ':';
}

/* The value of header @name in a NULL-terminated list, or NULL. */
static const char *mistral_header(const char *const *headers, const char *name)
{
	for (; headers && *headers; headers++) {
		if (mistral_is_header(*headers, name)) {
			const char *v = *headers + strlen(name) + 1;

			while (*v == ' ' || *v == '\t')
				v++;
			return v;
		}
	}
	return NULL;
}

/* Parameter @key of a header value ("form-data; name=\"file\"; ..."):
 * quoted or a token. Returns false when absent. */
static bool mistral_param(const char *s, const char *end, const char *key, struct lg_str *out)
{
	size_t klen = strlen(key);

	while (s < end) {
		const char *semi = memchr(s, ';', (size_t)(end - s));
		const char *stop = semi ? semi : end;

		while (s < stop && (*s == ' ' || *s == '\t'))
			s++;
		if ((size_t)(stop - s) > klen && strncasecmp(s, key, klen) == 0 && s[klen] == '=') {
			const char *v = s + klen + 1;

			if (v < end && *v == '"') {
				const char *q = memchr(v + 1, '"', (size_t)(end - v - 1));

				if (!q)
					return false;
				*out = (struct lg_str){ .ptr = v + 1, .len = (size_t)(q - v - 1) };
			} else {
				const char *e = v;

				while (e < stop && *e != ' ' && *e != '\t')
					e++;
				*out = (struct lg_str){ .ptr = v, .len = (size_t)(e - v) };
			}
			return true;
		}
		s = semi ? semi + 1 : end;
	}
	return false;
}

/* Reads the Content-Disposition of one part's header block. */
static int mistral_part_headers(const char *h, const char *end, struct mistral_part *part)
{
	while (h < end) {
		const char *eol = memchr(h, '\n', (size_t)(end - h));
		const char *stop = eol ? eol : end;

		if (stop > h && stop[-1] == '\r')
			stop--;
		if (stop - h > 20 && strncasecmp(h, "Content-Disposition:", 20) == 0) {
			if (!mistral_param(h + 20, stop, "name", &part->name))
				return -EINVAL;
			mistral_param(h + 20, stop, "filename", &part->filename);
		}
		h = eol ? eol + 1 : end;
	}
	return part->name.ptr ? 0 : -EINVAL;
}

/* The next part after *@pos, which points just past a delimiter line's
 * "--boundary". Returns 1 with a part, 0 at the closing delimiter, or a
 * negative errno for a malformed body. */
static int mistral_next_part(struct lg_str body, const char *delim, size_t dlen, size_t *pos,
			     struct mistral_part *part)
{
	const char *s = body.ptr + *pos, *end = body.ptr + body.len, *head_end, *next;

	if (end - s >= 2 && s[0] == '-' && s[1] == '-')
		return 0;
	s = memchr(s, '\n', (size_t)(end - s));
	if (!s)
		return -EINVAL;
	s++;
	head_end = memmem(s, (size_t)(end - s), "\r\n\r\n", 4);
	if (!head_end)
		return -EINVAL;
	*part = (struct mistral_part){ 0 };
	if (mistral_part_headers(s, head_end, part) < 0)
		return -EINVAL;
	s = head_end + 4;
	next = memmem(s, (size_t)(end - s), delim, dlen);
	if (!next)
		return -EINVAL;
	part->data = (struct lg_str){ .ptr = s, .len = (size_t)(next - s) };
	*pos = (size_t)(next + dlen - body.ptr);
	return 1;
}

/* The upload's fields that the chat request needs. */
struct mistral_upload {
	struct lg_str file, prompt, language, temperature;
};

static bool mistral_name_is(struct lg_str name, const char *want)
{
	return name.len == strlen(want) && memcmp(name.ptr, want, name.len) == 0;
}

/* "\r\n--" + boundary, from the Content-Type of the body being sent. */
static int mistral_delimiter(const char *ctype, char *delim, size_t size, size_t *len)
{
	struct lg_str b;

	if (!ctype || strncasecmp(ctype, "multipart/form-data", 19) != 0 ||
	    !mistral_param(ctype + 19, ctype + strlen(ctype), "boundary", &b) || b.len == 0 ||
	    b.len > MISTRAL_MAX_BOUNDARY)
		return -EINVAL;
	*len = (size_t)snprintf(delim, size, "\r\n--%.*s", (int)b.len, b.ptr);
	return 0;
}

static int mistral_read_upload(struct lg_str body, const char *ctype, struct mistral_upload *up)
{
	char delim[MISTRAL_MAX_BOUNDARY + 5];
	struct mistral_part part;
	size_t dlen, pos;
	const char *first;
	int rc = mistral_delimiter(ctype, delim, sizeof delim, &dlen);

	if (rc < 0 || !body.ptr)
		return -EINVAL;
	/* The first delimiter may open the body, without the CRLF before it. */
	first = memmem(body.ptr, body.len, delim + 2, dlen - 2);
	if (!first)
		return -EINVAL;
	pos = (size_t)(first - body.ptr) + dlen - 2;
	while ((rc = mistral_next_part(body, delim, dlen, &pos, &part)) > 0) {
		if (mistral_name_is(part.name, "file") && part.filename.ptr)
			up->file = part.data;
		else if (mistral_name_is(part.name, "prompt"))
			up->prompt = part.data;
		else if (mistral_name_is(part.name, "language"))
			up->language = part.data;
		else if (mistral_name_is(part.name, "temperature"))
			up->temperature = part.data;
	}
	if (rc < 0 || !up->file.ptr || up->prompt.len > MISTRAL_MAX_FIELD ||
	    up->language.len > MISTRAL_MAX_FIELD || up->temperature.len > 64)
		return -EINVAL;
	return 0;
}

/* ==== transcription as a chat completion ==== */

/* The chat body without the audio: its "input_audio" is "" for now. */
static json_t *mistral_audio_chat(const struct lg_provider_conf *p,
				  const struct mistral_upload *up)
{
	char text[MISTRAL_MAX_FIELD + 64], num[72];
	json_t *body;

	if (up->prompt.len)
		snprintf(text, sizeof text, "%.*s", (int)up->prompt.len, up->prompt.ptr);
	else
		snprintf(text, sizeof text, "Transcribe this audio in this language: %.*s",
			 up->language.len ? (int)up->language.len : 2,
			 up->language.len ? up->language.ptr : "en");
	body = json_pack("{s:s, s:[{s:s, s:[{s:s, s:s}, {s:s, s:s}]}]}",
			 "model", p->model_name ? p->model_name : "",
			 "messages", "role", "user", "content",
			 "type", "input_audio", "input_audio", "",
			 "type", "text", "text", text);
	if (body && up->temperature.len) {
		char *end;
		double t;

		snprintf(num, sizeof num, "%.*s", (int)up->temperature.len, up->temperature.ptr);
		t = strtod(num, &end);
		if (end == num || *end || json_object_set_new(body, "temperature", json_real(t)) < 0) {
			json_decref(body);
			body = NULL;
		}
	}
	return body;
}

/* Splices the base64 audio into the dumped body: jansson keeps insertion
 * order and escapes every quote inside strings, so the first
 * "input_audio":"" is the placeholder. The audio is written once, in
 * place, however large the upload. */
static int mistral_splice_audio(struct lgp_ctx *ctx, struct lg_req *req, const json_t *chat,
				struct lg_str audio, struct lg_str *out)
{
	static const char mark[] = "\"input_audio\":\"\"";
	size_t n = json_dumpb(chat, NULL, 0, JSON_COMPACT), b64 = lgp_base64_len(audio.len);
	char *dump = n ? malloc(n) : NULL, *at, *buf;
	size_t head;
	int rc = -ENOMEM;

	if (!dump || json_dumpb(chat, dump, n, JSON_COMPACT) != n)
		goto out;
	rc = -EINVAL;
	at = memmem(dump, n, mark, sizeof mark - 1);
	if (!at)
		goto out;
	rc = -ENOMEM;
	buf = ctx->host->req_alloc(req, n + b64);
	if (!buf)
		goto out;
	head = (size_t)(at - dump) + sizeof mark - 2; /* up to the opening quote */
	memcpy(buf, dump, head);
	lgp_base64_encode(audio.ptr, audio.len, buf + head);
	memcpy(buf + head + b64, dump + head, n - head);
	*out = (struct lg_str){ .ptr = buf, .len = n + b64 };
	rc = 0;
out:
	free(dump);
	return rc;
}

static const char *const *mistral_json_headers(struct lgp_ctx *ctx, struct lg_req *req,
					       const char *const *headers)
{
	size_t n = 0, j = 0;
	const char **out;

	while (headers && headers[n])
		n++;
	out = ctx->host->req_alloc(req, (n + 2) * sizeof *out);
	if (!out)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if (!mistral_is_header(headers[i], "Content-Type") &&
		    !mistral_is_header(headers[i], "Content-Length"))
			out[j++] = headers[i];
	out[j++] = "Content-Type: application/json";
	out[j] = NULL;
	return out;
}

static int mistral_prepare_transcription(struct lgp_ctx *ctx, struct lg_req *req,
					 const struct lg_provider_conf *p,
					 struct lg_upstream_call *call)
{
	const char *ctype = mistral_header(call->request.headers, "Content-Type");
	struct mistral_upload up = { 0 };
	const char *const *headers;
	json_t *chat = NULL;
	int rc;

	if (!ctype)
		ctype = ctx->host->req_header(req, "Content-Type");
	rc = mistral_read_upload(call->request.body, ctype, &up);
	if (rc < 0) {
		ctx->host->log(ctx->self, LG_LOG_DEBUG,
			       "transcription: not a multipart upload with a file part");
		return rc;
	}
	chat = mistral_audio_chat(p, &up);
	rc = chat ? mistral_splice_audio(ctx, req, chat, up.file, &call->request.body) : -EINVAL;
	json_decref(chat);
	if (rc < 0)
		return rc;
	headers = mistral_json_headers(ctx, req, call->request.headers);
	if (!headers)
		return -ENOMEM;
	call->request.headers = headers;
	call->stream = false;
	return lgp_set_path(ctx, req, p, call, "/v1/chat/completions");
}

static int mistral_prepare(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
			   struct lg_upstream_call *call)
{
	switch (call->endpoint) {
	case LG_ENDPOINT_CHAT:
		return mistral_prepare_chat(ud, req, call);
	case LG_ENDPOINT_TRANSCRIPTION:
		return mistral_prepare_transcription(ud, req, p, call);
	default:
		return 0;
	}
}

/* The assistant's text: a string, or the "text" of each content chunk
 * joined. Ownership: the caller's (json_decref). */
static json_t *mistral_reply_text(const json_t *reply)
{
	json_t *msg = json_object_get(json_array_get(json_object_get(reply, "choices"), 0),
				      "message");
	json_t *content = json_object_get(msg, "content"), *chunk, *text = NULL;
	size_t i, len = 0;
	char *buf;

	if (json_is_string(content))
		return json_incref(content);
	if (!json_is_array(content))
		return NULL;
	json_array_foreach(content, i, chunk)
		len += json_string_length(json_object_get(chunk, "text"));
	buf = malloc(len + 1);
	if (!buf)
		return NULL;
	len = 0;
	json_array_foreach(content, i, chunk) {
		json_t *t = json_object_get(chunk, "text");

		memcpy(buf + len, json_string_value(t) ? json_string_value(t) : "",
		       json_string_length(t));
		len += json_string_length(t);
	}
	text = json_stringn(buf, len);
	free(buf);
	return text;
}

static int mistral_convert(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
			   enum lg_endpoint endpoint, struct lg_str in, struct lg_str *out)
{
	json_t *reply, *text = NULL, *obj = NULL, *v;
	int rc = -EPROTO;

	if (endpoint != LG_ENDPOINT_TRANSCRIPTION) {
		*out = in;
		return 0;
	}
	reply = lgp_json_object(in);
	text = mistral_reply_text(reply);
	if (!text)
		goto out;
	rc = -ENOMEM;
	obj = json_pack("{s:O}", "text", text);
	if (!obj)
		goto out;
	rc = 0;
	if ((v = json_object_get(reply, "id")) && json_object_set(obj, "id", v) < 0)
		rc = -ENOMEM;
	if ((v = json_object_get(reply, "usage")) && json_object_set(obj, "usage", v) < 0)
		rc = -ENOMEM;
	if (rc == 0)
		rc = lgp_json_dump_req(ud, req, obj, out);
out:
	if (rc == -EPROTO)
		((struct lgp_ctx *)ud)->host->log(((struct lgp_ctx *)ud)->self, LG_LOG_WARN,
						  "transcription: the chat reply has no text");
	json_decref(obj);
	json_decref(text);
	json_decref(reply);
	return rc;
}

static const struct lg_provider_ops mistral_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "mistral",
	.model_types = mistral_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_CHAT) | LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_TRANSCRIPTION) | LG_ENDPOINT_BIT(LG_ENDPOINT_OCR),
	.default_url = "https://api.mistral.ai",
	.models_path = "/v1/models",
	.prepare = mistral_prepare,
	.convert = mistral_convert,
};

static int mistral_init(struct lg_plugin *self, const struct lg_host *host)
{
	return lgp_init(self, host, &mistral_ops);
}

LG_PLUGIN(.name = "mistral", .version = "1.0.0",
	  .description = "provider type mistral: Mistral AI's API",
	  .init = mistral_init, .fini = lgp_fini);
