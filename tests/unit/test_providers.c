/* SPDX-License-Identifier: Apache-2.0 */
/* The provider plugins, each loaded from the build's plugin directory with
 * dlopen into a fake host (fake_host.c) and driven through its ops:
 * registration, the request adapters (TEI rerank, Mistral chat and
 * transcription, vLLM rerank usage) and the mock's served replies on a
 * real event loop. */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <event2/event.h>
#include <jansson.h>

#include "fake_host.h"

#ifndef LG_BUILD_PLUGIN_DIR
#error "LG_BUILD_PLUGIN_DIR must name the build's plugin directory"
#endif

#define MAX_PIECES 512

#define ALL_TYPES "text-generation,text-embeddings-inference,text-classification," \
		  "automatic-speech-recognition,image-to-text"

/* ==== fixture ==== */

struct fx {
	struct fake_host *fh;
	const struct lg_provider_ops *ops;
	void *ud;
	struct lg_req *req;
	struct lg_provider_conf conf;
};

/* Loads plugin @name with "key", "value" settings pairs, NULL-ended. */
static void fx_load(struct fx *fx, const char *name, ...)
{
	const char *key;
	va_list ap;

	memset(fx, 0, sizeof *fx);
	fx->fh = fake_host_new();
	assert_non_null(fx->fh);
	va_start(ap, name);
	while ((key = va_arg(ap, const char *)))
		assert_int_equal(fake_host_set(fx->fh, key, va_arg(ap, const char *)), 0);
	va_end(ap);
	assert_int_equal(fake_host_load_named(fx->fh, LG_BUILD_PLUGIN_DIR, name), 0);
	assert_int_equal(fake_host_nproviders(fx->fh), 1);
	fx->ops = fake_host_provider(fx->fh, 0, &fx->ud);
	fx->conf = (struct lg_provider_conf){
		.size = sizeof fx->conf, .id = 1, .type = fx->ops->type,
		.url = fx->ops->default_url ? fx->ops->default_url : "http://127.0.0.1:9",
		.model_name = "upstream-model", .timeout_ms = 300000,
	};
}

static void fx_free(struct fx *fx)
{
	fake_req_free(fx->req);
	fake_host_free(fx->fh);
}

/* A forwarded call as the host prepares it: POST url + standard path. */
static struct lg_upstream_call fx_call(struct fx *fx, enum lg_endpoint ep, const char *path,
				       const char *body, const char *const *headers)
{
	static char url[512];

	fake_req_free(fx->req);
	fx->req = fake_req_new(fx->fh, path, body, body ? strlen(body) : 0);
	assert_non_null(fx->req);
	snprintf(url, sizeof url, "%s%s", fx->conf.url, path);
	return (struct lg_upstream_call){
		.size = sizeof(struct lg_upstream_call), .endpoint = ep,
		.request = { .size = sizeof(struct lg_fetch_request), .method = "POST",
			     .url = url, .headers = headers,
			     .body = { body, body ? strlen(body) : 0 } },
	};
}

static json_t *parse(const char *s, size_t len)
{
	json_error_t err;
	json_t *v = json_loadb(s, len, 0, &err);

	if (!v)
		fail_msg("not JSON (%s): %.*s", err.text, (int)len, s);
	return v;
}

static json_t *parse_str(struct lg_str s)
{
	return parse(s.ptr, s.len);
}

static void assert_json_eq(const json_t *got, const char *want_text)
{
	json_t *want = parse(want_text, strlen(want_text));

	if (!json_equal(got, want)) {
		char *g = json_dumps(got, JSON_SORT_KEYS), *w = json_dumps(want, JSON_SORT_KEYS);

		fprintf(stderr, "got:  %s\nwant: %s\n", g, w);
		free(g);
		free(w);
		fail();
	}
	json_decref(want);
}

/* ==== registration ==== */

struct expected_type {
	const char *name;
	const char *model_types; /* comma-separated */
	uint32_t endpoints;
	const char *default_url;
	const char *models_path;
	bool prepare, convert, serve;
};

#define EP(e) LG_ENDPOINT_BIT(LG_ENDPOINT_##e)

static const struct expected_type expected_types[] = {
	{ "openai", "text-generation,text-embeddings-inference,automatic-speech-recognition",
	  EP(CHAT) | EP(COMPLETIONS) | EP(EMBEDDINGS) | EP(TRANSCRIPTION),
	  "https://api.openai.com", "/v1/models", false, false, false },
	{ "vllm", "text-generation,text-embeddings-inference,text-classification,"
		  "automatic-speech-recognition",
	  EP(CHAT) | EP(COMPLETIONS) | EP(EMBEDDINGS) | EP(RERANK) | EP(TRANSCRIPTION),
	  NULL, "/v1/models", false, true, false },
	{ "tei", "text-embeddings-inference,text-classification", EP(EMBEDDINGS) | EP(RERANK),
	  NULL, "/info", true, true, false },
	{ "albert", ALL_TYPES,
	  EP(CHAT) | EP(COMPLETIONS) | EP(EMBEDDINGS) | EP(RERANK) | EP(TRANSCRIPTION) | EP(OCR),
	  "https://albert.api.etalab.gouv.fr", "/v1/models", false, false, false },
	{ "mistral", "text-generation,text-embeddings-inference,automatic-speech-recognition,"
		     "image-to-text",
	  EP(CHAT) | EP(EMBEDDINGS) | EP(TRANSCRIPTION) | EP(OCR),
	  "https://api.mistral.ai", "/v1/models", true, true, false },
	{ "mock", ALL_TYPES,
	  EP(CHAT) | EP(COMPLETIONS) | EP(EMBEDDINGS) | EP(RERANK) | EP(TRANSCRIPTION) | EP(OCR),
	  "http://mock.invalid", "/v1/models", false, false, true },
};

/* The NULL-terminated list joined by commas. */
static void join_types(const char *const *types, char *out, size_t size)
{
	size_t n = 0;

	out[0] = '\0';
	for (; types && *types; types++)
		n += (size_t)snprintf(out + n, size - n, "%s%s", n ? "," : "", *types);
}

static void test_each_plugin_registers_its_type(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof expected_types / sizeof expected_types[0]; i++) {
		const struct expected_type *e = &expected_types[i];
		struct fx fx;
		char types[512];

		fx_load(&fx, e->name, NULL);
		assert_string_equal(fake_host_info(fx.fh)->name, e->name);
		assert_int_equal(fx.ops->size, sizeof(struct lg_provider_ops));
		assert_string_equal(fx.ops->type, e->name);
		join_types(fx.ops->model_types, types, sizeof types);
		assert_string_equal(types, e->model_types);
		assert_int_equal(fx.ops->endpoints, e->endpoints);
		if (e->default_url)
			assert_string_equal(fx.ops->default_url, e->default_url);
		else
			assert_null(fx.ops->default_url);
		assert_string_equal(fx.ops->models_path, e->models_path);
		assert_int_equal(fx.ops->prepare != NULL, e->prepare);
		assert_int_equal(fx.ops->convert != NULL, e->convert);
		assert_int_equal(fx.ops->serve != NULL, e->serve);
		assert_int_equal(fx.ops->cancel != NULL, e->serve);
		assert_non_null(fx.ud);
		assert_int_equal(fake_host_logs(fx.fh, LG_LOG_ERROR), 0);
		fx_free(&fx);
	}
}

static void test_mock_settings_are_bounded(void **state)
{
	struct fake_host *fh;

	(void)state;
	fh = fake_host_new();
	assert_int_equal(fake_host_set(fh, "dimension", "1"), 0);
	assert_int_equal(fake_host_load_named(fh, LG_BUILD_PLUGIN_DIR, "mock"), -EINVAL);
	fake_host_free(fh);
	fh = fake_host_new();
	assert_int_equal(fake_host_set(fh, "dimension", "8193"), 0);
	assert_int_equal(fake_host_load_named(fh, LG_BUILD_PLUGIN_DIR, "mock"), -EINVAL);
	fake_host_free(fh);
	fh = fake_host_new();
	assert_int_equal(fake_host_set(fh, "no_such_key", "1"), 0);
	assert_int_equal(fake_host_load_named(fh, LG_BUILD_PLUGIN_DIR, "mock"), -EINVAL);
	fake_host_free(fh);
}

/* ==== TEI ==== */

static const char tei_rerank_body[] =
	"{\"model\":\"upstream-model\",\"query\":\"what is deep learning\","
	"\"documents\":[\"Deep learning is a kind of machine learning.\",\"Paris\","
	"{\"text\":\"Neural networks learn.\"}],\"top_n\":2}";

static void test_tei_prepare_builds_rerank_body(void **state)
{
	static const char *const headers[] = { "Authorization: Bearer k", NULL };
	struct lg_upstream_call call;
	struct fx fx;
	json_t *body;

	(void)state;
	fx_load(&fx, "tei", NULL);
	fx.conf.url = "http://tei.local:8080";
	call = fx_call(&fx, LG_ENDPOINT_RERANK, "/v1/rerank", tei_rerank_body, headers);
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	assert_string_equal(call.request.url, "http://tei.local:8080/rerank");
	assert_string_equal(call.request.method, "POST");
	assert_ptr_equal(call.request.headers, headers);
	body = parse_str(call.request.body);
	assert_json_eq(body, "{\"query\":\"what is deep learning\","
			     "\"texts\":[\"Deep learning is a kind of machine learning.\","
			     "\"Paris\",\"Neural networks learn.\"],"
			     "\"raw_scores\":false,\"return_text\":false,\"truncate\":false,"
			     "\"truncation_direction\":\"right\"}");
	json_decref(body);

	/* Embeddings are TEI's OpenAI-compatible route: untouched. */
	call = fx_call(&fx, LG_ENDPOINT_EMBEDDINGS, "/v1/embeddings",
		       "{\"model\":\"m\",\"input\":\"x\"}", headers);
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	assert_string_equal(call.request.url, "http://tei.local:8080/v1/embeddings");
	assert_memory_equal(call.request.body.ptr, "{\"model\":\"m\",\"input\":\"x\"}",
			    call.request.body.len);
	fx_free(&fx);
}

static void test_tei_prepare_refuses_bad_bodies(void **state)
{
	static const char *const bad[] = {
		"{\"query\":\"q\"}",
		"{\"query\":\"q\",\"documents\":[]}",
		"{\"query\":1,\"documents\":[\"a\"]}",
		"{\"query\":\"q\",\"documents\":[\"a\",2]}",
		"{\"query\":\"q\",\"documents\":[\"a\"],\"top_n\":0}",
		"{\"query\":\"q\",\"documents\":[\"a\"],\"top_n\":\"2\"}",
		"[1]",
		"not json",
	};
	struct fx fx;

	(void)state;
	fx_load(&fx, "tei", NULL);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct lg_upstream_call call = fx_call(&fx, LG_ENDPOINT_RERANK, "/v1/rerank",
						       bad[i], NULL);

		assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), -EINVAL);
	}
	fx_free(&fx);
}

static void test_tei_convert_sorts_and_cuts(void **state)
{
	static const char reply[] =
		"[{\"index\":0,\"score\":0.25},{\"index\":2,\"score\":0.875},"
		"{\"index\":1,\"score\":0.0078125}]";
	struct lg_upstream_call call;
	struct lg_str out = { 0 };
	struct fx fx;
	json_t *obj;
	char want[512];

	(void)state;
	fx_load(&fx, "tei", NULL);
	call = fx_call(&fx, LG_ENDPOINT_RERANK, "/v1/rerank", tei_rerank_body, NULL);
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_RERANK,
					 (struct lg_str){ reply, strlen(reply) }, &out), 0);
	obj = parse_str(out);
	snprintf(want, sizeof want,
		 "{\"object\":\"list\",\"id\":\"%s\",\"model\":\"upstream-model\","
		 "\"results\":[{\"index\":2,\"relevance_score\":0.875},"
		 "{\"index\":0,\"relevance_score\":0.25}]}",
		 fake_host_vtable(fx.fh)->req_id(fx.req));
	/* No usage: TEI gives none, the host estimates it and says so. */
	assert_json_eq(obj, want);
	json_decref(obj);
	fx_free(&fx);
}

static void test_tei_convert_without_top_n_and_errors(void **state)
{
	static const char body[] = "{\"query\":\"q\",\"documents\":[\"a\",\"b\",\"c\"]}";
	static const char tie[] = "[{\"index\":2,\"score\":0.5},{\"index\":0,\"score\":0.5},"
				  "{\"index\":1,\"score\":0.75}]";
	static const char *const bad[] = {
		"{\"index\":0}", "[{\"index\":3,\"score\":1}]", "[{\"index\":-1,\"score\":1}]",
		"[{\"index\":0,\"score\":\"high\"}]", "[{\"score\":1}]", "nope",
	};
	struct lg_upstream_call call;
	struct lg_str out = { 0 }, in;
	struct fx fx;
	json_t *obj;

	(void)state;
	fx_load(&fx, "tei", NULL);
	call = fx_call(&fx, LG_ENDPOINT_RERANK, "/v1/rerank", body, NULL);
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_RERANK,
					 (struct lg_str){ tie, strlen(tie) }, &out), 0);
	obj = parse_str(out);
	/* Every result, ties in the documents' order. */
	assert_json_eq(json_object_get(obj, "results"),
		       "[{\"index\":1,\"relevance_score\":0.75},"
		       "{\"index\":0,\"relevance_score\":0.5},"
		       "{\"index\":2,\"relevance_score\":0.5}]");
	json_decref(obj);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_RERANK,
						 (struct lg_str){ bad[i], strlen(bad[i]) }, &out),
				 -EPROTO);
	/* Other endpoints pass through as they are. */
	in = (struct lg_str){ "{\"data\":[]}", 11 };
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_EMBEDDINGS, in,
					 &out), 0);
	assert_ptr_equal(out.ptr, in.ptr);
	assert_int_equal(out.len, in.len);
	fx_free(&fx);
}

/* ==== vLLM ==== */

static void test_vllm_rerank_usage(void **state)
{
	static const char reply[] =
		"{\"id\":\"rerank-1\",\"model\":\"bge\",\"usage\":{\"total_tokens\":56},"
		"\"results\":[{\"index\":1,\"document\":{\"text\":\"b\"},\"relevance_score\":0.9}]}";
	struct lg_str out = { 0 };
	struct fx fx;
	json_t *obj;

	(void)state;
	fx_load(&fx, "vllm", NULL);
	(void)fx_call(&fx, LG_ENDPOINT_RERANK, "/v1/rerank", "{}", NULL);
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_RERANK,
					 (struct lg_str){ reply, strlen(reply) }, &out), 0);
	obj = parse_str(out);
	assert_json_eq(obj, "{\"id\":\"rerank-1\",\"model\":\"bge\",\"object\":\"list\","
			    "\"usage\":{\"total_tokens\":56,\"prompt_tokens\":56,"
			    "\"completion_tokens\":0},"
			    "\"results\":[{\"index\":1,\"document\":{\"text\":\"b\"},"
			    "\"relevance_score\":0.9}]}");
	json_decref(obj);
	fx_free(&fx);
}

/* ==== Mistral ==== */

static void test_mistral_prepare_chat(void **state)
{
	static const char body[] =
		"{\"model\":\"upstream-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
		"\"seed\":42,\"stream\":true,\"stream_options\":{\"include_usage\":true},"
		"\"max_completion_tokens\":10,\"user\":\"u1\",\"temperature\":0.5,"
		"\"logit_bias\":{\"50256\":-100},\"top_p\":null,\"tools\":[{\"type\":\"function\","
		"\"function\":{\"name\":\"f\"}}],\"safe_prompt\":true}";
	struct lg_upstream_call call;
	struct fx fx;
	json_t *obj;

	(void)state;
	fx_load(&fx, "mistral", NULL);
	call = fx_call(&fx, LG_ENDPOINT_CHAT, "/v1/chat/completions", body, NULL);
	call.stream = true;
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	assert_string_equal(call.request.url, "https://api.mistral.ai/v1/chat/completions");
	assert_true(call.stream);
	obj = parse_str(call.request.body);
	assert_json_eq(obj, "{\"model\":\"upstream-model\","
			    "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
			    "\"random_seed\":42,\"stream\":true,\"max_tokens\":10,"
			    "\"temperature\":0.5,\"tools\":[{\"type\":\"function\","
			    "\"function\":{\"name\":\"f\"}}],\"safe_prompt\":true}");
	json_decref(obj);

	/* Mistral's own names win over the OpenAI ones. */
	call = fx_call(&fx, LG_ENDPOINT_CHAT, "/v1/chat/completions",
		       "{\"model\":\"m\",\"messages\":[],\"seed\":1,\"random_seed\":2,"
		       "\"max_tokens\":5,\"max_completion_tokens\":6}", NULL);
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	obj = parse_str(call.request.body);
	assert_json_eq(obj, "{\"model\":\"m\",\"messages\":[],\"random_seed\":2,"
			    "\"max_tokens\":5}");
	json_decref(obj);

	call = fx_call(&fx, LG_ENDPOINT_CHAT, "/v1/chat/completions", "[]", NULL);
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), -EINVAL);
	fx_free(&fx);
}

static int b64_value(char c)
{
	static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const char *p = c ? strchr(a, c) : NULL;

	return p ? (int)(p - a) : -1;
}

/* Decodes padded base64; returns the length, or -1. */
static long b64_decode(const char *s, unsigned char *out, size_t size)
{
	size_t n = strlen(s), k = 0;

	if (n % 4)
		return -1;
	for (size_t i = 0; i < n; i += 4) {
		int v[4];

		for (int j = 0; j < 4; j++)
			v[j] = s[i + (size_t)j] == '=' ? 0 : b64_value(s[i + (size_t)j]);
		size_t bytes = s[i + 2] == '=' ? 1 : s[i + 3] == '=' ? 2 : 3;

		if (v[0] < 0 || v[1] < 0 || v[2] < 0 || v[3] < 0 || k + bytes > size)
			return -1;
		out[k++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
		if (bytes > 1)
			out[k++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
		if (bytes > 2)
			out[k++] = (unsigned char)((v[2] & 3) << 6 | v[3]);
	}
	return (long)k;
}

/* A multipart upload: the audio holds CR, LF, NUL and dashes. */
static size_t multipart(char *buf, size_t size, const char *boundary, const unsigned char *audio,
			size_t alen, const char *prompt, const char *language)
{
	size_t n = (size_t)snprintf(buf, size,
				    "--%s\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n"
				    "my-asr\r\n"
				    "--%s\r\nContent-Disposition: form-data; name=\"file\"; "
				    "filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n",
				    boundary, boundary);

	memcpy(buf + n, audio, alen);
	n += alen;
	n += (size_t)snprintf(buf + n, size - n, "\r\n--%s\r\nContent-Disposition: form-data; "
				 "name=\"temperature\"\r\n\r\n0.25\r\n", boundary);
	if (prompt)
		n += (size_t)snprintf(buf + n, size - n, "--%s\r\nContent-Disposition: form-data; "
					 "name=\"prompt\"\r\n\r\n%s\r\n", boundary, prompt);
	if (language)
		n += (size_t)snprintf(buf + n, size - n, "--%s\r\nContent-Disposition: form-data; "
					 "name=language\r\n\r\n%s\r\n", boundary, language);
	n += (size_t)snprintf(buf + n, size - n, "--%s--\r\n", boundary);
	return n;
}

static void check_audio_chat(struct lg_upstream_call *call, const unsigned char *audio,
			     size_t alen, const char *text)
{
	json_t *obj = parse_str(call->request.body), *content;
	unsigned char decoded[256];
	bool json_type = false, multipart_type = false, authz = false;

	assert_string_equal(call->request.url, "https://api.mistral.ai/v1/chat/completions");
	for (const char *const *h = call->request.headers; *h; h++) {
		json_type |= strcmp(*h, "Content-Type: application/json") == 0;
		multipart_type |= strstr(*h, "multipart") != NULL;
		authz |= strcmp(*h, "Authorization: Bearer k") == 0;
	}
	assert_true(json_type);
	assert_false(multipart_type);
	assert_true(authz);
	assert_false(call->stream);
	assert_string_equal(json_string_value(json_object_get(obj, "model")), "upstream-model");
	assert_true(fabs(json_number_value(json_object_get(obj, "temperature")) - 0.25) < 1e-9);
	content = json_object_get(json_array_get(json_object_get(obj, "messages"), 0), "content");
	assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(
		obj, "messages"), 0), "role")), "user");
	assert_int_equal(json_array_size(content), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(content, 0), "type")),
			    "input_audio");
	assert_int_equal(b64_decode(json_string_value(json_object_get(json_array_get(content, 0),
								      "input_audio")),
				    decoded, sizeof decoded), (long)alen);
	assert_memory_equal(decoded, audio, alen);
	assert_string_equal(json_string_value(json_object_get(json_array_get(content, 1), "type")),
			    "text");
	assert_string_equal(json_string_value(json_object_get(json_array_get(content, 1), "text")),
			    text);
	json_decref(obj);
}

static void test_mistral_prepare_transcription(void **state)
{
	static const unsigned char audio[] = "RIFF\r\n\0\x01--not-the-boundary\r\n\xff\xfe";
	static const char *const headers[] = {
		"Authorization: Bearer k",
		"Content-Type: multipart/form-data; boundary=\"----llmgate-XyZ\"", NULL,
	};
	static char body[2048];
	struct lg_upstream_call call;
	size_t n;
	struct fx fx;

	(void)state;
	fx_load(&fx, "mistral", NULL);
	n = multipart(body, sizeof body, "----llmgate-XyZ", audio, sizeof audio, NULL, "fr");
	call = fx_call(&fx, LG_ENDPOINT_TRANSCRIPTION, "/v1/audio/transcriptions", NULL, headers);
	call.request.body = (struct lg_str){ body, n };
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	check_audio_chat(&call, audio, sizeof audio, "Transcribe this audio in this language: fr");

	/* The client's prompt is the text; the boundary comes from the
	 * client's header when the call has none. */
	n = multipart(body, sizeof body, "b0und", audio, 5, "Transcris \"ceci\"", NULL);
	call = fx_call(&fx, LG_ENDPOINT_TRANSCRIPTION, "/v1/audio/transcriptions", NULL, headers);
	call.request.headers = (const char *const[]){ "Authorization: Bearer k", NULL };
	assert_int_equal(fake_req_header(fx.req, "content-type",
					 "multipart/form-data; charset=utf-8; boundary=b0und"), 0);
	call.request.body = (struct lg_str){ body, n };
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), 0);
	check_audio_chat(&call, audio, 5, "Transcris \"ceci\"");

	/* No file part, or no boundary: refused. */
	n = (size_t)snprintf(body, sizeof body, "--b0und\r\nContent-Disposition: form-data; "
			     "name=\"model\"\r\n\r\nx\r\n--b0und--\r\n");
	call = fx_call(&fx, LG_ENDPOINT_TRANSCRIPTION, "/v1/audio/transcriptions", NULL, headers);
	call.request.headers = (const char *const[]){
		"Content-Type: multipart/form-data; boundary=b0und", NULL };
	call.request.body = (struct lg_str){ body, n };
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), -EINVAL);
	call.request.headers = (const char *const[]){ "Content-Type: multipart/form-data", NULL };
	assert_int_equal(fx.ops->prepare(fx.ud, fx.req, &fx.conf, &call), -EINVAL);
	fx_free(&fx);
}

static void test_mistral_convert_transcription(void **state)
{
	static const char reply[] =
		"{\"id\":\"cmpl-9\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"
		"\"message\":{\"role\":\"assistant\",\"content\":\"Bonjour à tous.\"},"
		"\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":120,"
		"\"completion_tokens\":5,\"total_tokens\":125}}";
	static const char chunks[] =
		"{\"choices\":[{\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"Bon\"},"
		"{\"type\":\"thinking\"},{\"type\":\"text\",\"text\":\"jour\"}]}}]}";
	struct lg_str out = { 0 }, in;
	struct fx fx;
	json_t *obj;

	(void)state;
	fx_load(&fx, "mistral", NULL);
	(void)fx_call(&fx, LG_ENDPOINT_TRANSCRIPTION, "/v1/audio/transcriptions", NULL, NULL);
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_TRANSCRIPTION,
					 (struct lg_str){ reply, strlen(reply) }, &out), 0);
	obj = parse_str(out);
	assert_json_eq(obj, "{\"id\":\"cmpl-9\",\"text\":\"Bonjour à tous.\","
			    "\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":5,"
			    "\"total_tokens\":125}}");
	json_decref(obj);
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_TRANSCRIPTION,
					 (struct lg_str){ chunks, strlen(chunks) }, &out), 0);
	obj = parse_str(out);
	assert_json_eq(obj, "{\"text\":\"Bonjour\"}");
	json_decref(obj);
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_TRANSCRIPTION,
					 (struct lg_str){ "{}", 2 }, &out), -EPROTO);
	in = (struct lg_str){ reply, strlen(reply) };
	assert_int_equal(fx.ops->convert(fx.ud, fx.req, &fx.conf, LG_ENDPOINT_CHAT, in, &out), 0);
	assert_ptr_equal(out.ptr, in.ptr);
	fx_free(&fx);
}

/* ==== the mock: serving on the loop ==== */

/* What the handlers of one served call saw. */
struct rec {
	struct fx *fx;
	void *handle;
	int heads, dones;
	int head_status;
	char head_type[64];
	char *pieces[MAX_PIECES];
	size_t npieces;
	enum lg_fetch_result result;
	int status;
	char *done_body;
	size_t done_len;
	bool done_error;
	int data_rc;            /* what on_data returns */
	size_t cancel_at;       /* cancel() from inside on_data at this piece (1-based) */
};

static int rec_head(void *arg, int status, const char *content_type)
{
	struct rec *r = arg;

	assert_int_equal(r->dones, 0);
	r->heads++;
	r->head_status = status;
	snprintf(r->head_type, sizeof r->head_type, "%s", content_type);
	return 0;
}

static int rec_data(void *arg, const char *data, size_t len)
{
	struct rec *r = arg;

	assert_int_equal(r->heads, 1);
	assert_int_equal(r->dones, 0);
	assert_true(r->npieces < MAX_PIECES);
	r->pieces[r->npieces] = strndup(data, len);
	assert_non_null(r->pieces[r->npieces]);
	r->npieces++;
	if (r->cancel_at && r->npieces == r->cancel_at) {
		r->fx->ops->cancel(r->fx->ud, r->handle);
		assert_int_equal(r->dones, 0); /* never from inside cancel() */
	}
	return r->data_rc;
}

static void rec_done(void *arg, enum lg_fetch_result result, int status, struct lg_str body,
		     const char *error)
{
	struct rec *r = arg;

	r->dones++;
	r->result = result;
	r->status = status;
	r->done_error = error != NULL;
	free(r->done_body);
	r->done_body = body.ptr ? strndup(body.ptr, body.len) : NULL;
	r->done_len = body.len;
}

static void rec_clear(struct rec *r)
{
	for (size_t i = 0; i < r->npieces; i++)
		free(r->pieces[i]);
	free(r->done_body);
	memset(r, 0, sizeof *r);
}

static const struct lg_fetch_handlers streaming_handlers = {
	.size = sizeof(struct lg_fetch_handlers),
	.on_head = rec_head, .on_data = rec_data, .on_done = rec_done,
};

static const struct lg_fetch_handlers buffered_handlers = {
	.size = sizeof(struct lg_fetch_handlers), .on_head = rec_head, .on_done = rec_done,
};

/* Serves @body; nothing may arrive before the loop runs. */
static void mock_start(struct fx *fx, struct rec *r, enum lg_endpoint ep, const char *body,
		       const struct lg_fetch_handlers *h)
{
	struct lg_upstream_call call = fx_call(fx, ep, "/v1/x", body, NULL);

	memset(r, 0, sizeof *r);
	r->fx = fx;
	call.stream = body && strstr(body, "\"stream\":true");
	assert_int_equal(fx->ops->serve(fx->ud, fx->req, &fx->conf, &call, h, r, &r->handle), 0);
	assert_non_null(r->handle);
	assert_int_equal(r->heads + (int)r->npieces + r->dones, 0);
}

static void run_loop(struct fx *fx)
{
	assert_int_equal(event_base_dispatch(fake_host_base(fx->fh)), 1); /* no events left */
	assert_int_equal(fake_host_live_timers(fx->fh), 0);
}

/* Serves @body to the end and returns the reply as JSON. */
static json_t *mock_whole(struct fx *fx, enum lg_endpoint ep, const char *body, int status)
{
	struct rec r;
	json_t *obj;

	mock_start(fx, &r, ep, body, &buffered_handlers);
	run_loop(fx);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_OK);
	assert_false(r.done_error);
	assert_int_equal(r.status, status);
	assert_int_equal(r.head_status, status);
	assert_string_equal(r.head_type, "application/json");
	obj = parse(r.done_body, r.done_len);
	rec_clear(&r);
	return obj;
}

static const char *chat_text(const json_t *reply)
{
	return json_string_value(json_object_get(json_object_get(json_array_get(
		json_object_get(reply, "choices"), 0), "message"), "content"));
}

static json_int_t usage_of(const json_t *reply, const char *key)
{
	return json_integer_value(json_object_get(json_object_get(reply, "usage"), key));
}

static void test_mock_chat_reply(void **state)
{
	static const char body[] =
		"{\"model\":\"upstream-model\",\"messages\":[{\"role\":\"system\",\"content\":"
		"\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hello there, gateway!\"},"
		"{\"role\":\"assistant\",\"content\":\"Hi.\"},{\"role\":\"user\",\"content\":"
		"[{\"type\":\"text\",\"text\":\"What is\"},{\"type\":\"image_url\"},"
		"{\"type\":\"text\",\"text\":\"llmgate?\"}]}]}";
	struct fx fx;
	json_t *a, *b;

	(void)state;
	fx_load(&fx, "mock", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_CHAT, body, 200);
	assert_string_equal(json_string_value(json_object_get(a, "object")), "chat.completion");
	assert_string_equal(json_string_value(json_object_get(a, "model")), "upstream-model");
	assert_non_null(json_string_value(json_object_get(a, "id")));
	assert_true(json_is_integer(json_object_get(a, "created")));
	assert_string_equal(chat_text(a), "This is a mock reply to: What is llmgate?");
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(
		json_object_get(a, "choices"), 0), "message"), "role")), "assistant");
	assert_string_equal(json_string_value(json_object_get(json_array_get(
		json_object_get(a, "choices"), 0), "finish_reason")), "stop");
	/* Be brief / Hello there gateway / Hi / What is llmgate: 9 words. */
	assert_int_equal(usage_of(a, "prompt_tokens"), 9);
	assert_int_equal(usage_of(a, "completion_tokens"), 9);
	assert_int_equal(usage_of(a, "total_tokens"), 18);

	/* Deterministic: the same body, the same choices and usage. */
	b = mock_whole(&fx, LG_ENDPOINT_CHAT, body, 200);
	assert_true(json_equal(json_object_get(a, "choices"), json_object_get(b, "choices")));
	assert_true(json_equal(json_object_get(a, "usage"), json_object_get(b, "usage")));
	json_decref(a);
	json_decref(b);
	fx_free(&fx);
}

static void test_mock_chat_limits(void **state)
{
	char body[2048], big[801];
	struct fx fx;
	json_t *a;
	const char *text;

	(void)state;
	fx_load(&fx, "mock", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_CHAT,
		       "{\"messages\":[{\"role\":\"user\",\"content\":\"one two three\"}],"
		       "\"max_tokens\":3}", 200);
	assert_string_equal(chat_text(a), "This is a");
	assert_string_equal(json_string_value(json_object_get(json_array_get(
		json_object_get(a, "choices"), 0), "finish_reason")), "length");
	assert_int_equal(usage_of(a, "completion_tokens"), 3);
	json_decref(a);

	/* The quote stops at 200 characters, multi-byte ones included. */
	for (size_t i = 0; i < 400; i += 2)
		memcpy(big + i, "\xc3\xa9", 2); /* 200 x "é" */
	memcpy(big + 400, "TAIL", 5);
	snprintf(body, sizeof body, "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}],"
		 "\"max_completion_tokens\":100}", big);
	a = mock_whole(&fx, LG_ENDPOINT_CHAT, body, 200);
	text = chat_text(a);
	assert_non_null(text);
	assert_null(strstr(text, "TAIL"));
	assert_int_equal(strlen(text), strlen("This is a mock reply to: ") + 400);
	json_decref(a);

	a = mock_whole(&fx, LG_ENDPOINT_CHAT, "{\"messages\":\"hi\"}", 400);
	assert_string_equal(json_string_value(json_object_get(json_object_get(a, "error"), "type")),
			    "invalid_request_error");
	json_decref(a);
	a = mock_whole(&fx, LG_ENDPOINT_CHAT, "not json", 400);
	assert_non_null(json_object_get(a, "error"));
	json_decref(a);
	fx_free(&fx);
}

/* The JSON of one "data: {...}\n\n" piece; NULL for [DONE]. */
static json_t *sse_json(const char *piece)
{
	size_t len = strlen(piece);

	assert_true(len > 8);
	assert_memory_equal(piece, "data: ", 6);
	assert_memory_equal(piece + len - 2, "\n\n", 2);
	assert_null(memchr(piece, '\n', len - 2)); /* one event per piece */
	if (strcmp(piece, "data: [DONE]\n\n") == 0)
		return NULL;
	return parse(piece + 6, len - 8);
}

static void test_mock_chat_stream(void **state)
{
	static const char body[] =
		"{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
		"\"messages\":[{\"role\":\"user\",\"content\":\"tell me a story\"}]}";
	struct lg_upstream_call call;
	char content[512] = "";
	struct rec r;
	struct fx fx;
	json_t *ev;
	size_t i, words = 10; /* This is a mock reply to: tell me a story */

	(void)state;
	fx_load(&fx, "mock", NULL);
	mock_start(&fx, &r, LG_ENDPOINT_CHAT, body, &streaming_handlers);
	/* One event per turn of the loop: driven by timers. */
	assert_int_equal(event_base_loop(fake_host_base(fx.fh), EVLOOP_ONCE), 0);
	assert_int_equal(r.heads, 1);
	assert_int_equal(r.head_status, 200);
	assert_string_equal(r.head_type, "text/event-stream");
	assert_int_equal(r.npieces, 1);
	assert_int_equal(event_base_loop(fake_host_base(fx.fh), EVLOOP_ONCE), 0);
	assert_int_equal(r.npieces, 2);
	run_loop(&fx);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_OK);
	assert_int_equal(r.status, 200);
	assert_null(r.done_body);
	/* role, 10 words, finish, usage, [DONE] */
	assert_int_equal(r.npieces, 1 + words + 1 + 1 + 1);
	ev = sse_json(r.pieces[0]);
	assert_string_equal(json_string_value(json_object_get(ev, "object")),
			    "chat.completion.chunk");
	assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(
		json_object_get(ev, "choices"), 0), "delta"), "role")), "assistant");
	json_decref(ev);
	for (i = 1; i <= words; i++) {
		json_t *choice;

		ev = sse_json(r.pieces[i]);
		choice = json_array_get(json_object_get(ev, "choices"), 0);
		assert_true(json_is_null(json_object_get(choice, "finish_reason")));
		strcat(content, json_string_value(json_object_get(json_object_get(choice, "delta"),
								  "content")));
		json_decref(ev);
	}
	assert_string_equal(content, "This is a mock reply to: tell me a story");
	ev = sse_json(r.pieces[words + 1]);
	assert_string_equal(json_string_value(json_object_get(json_array_get(
		json_object_get(ev, "choices"), 0), "finish_reason")), "stop");
	json_decref(ev);
	ev = sse_json(r.pieces[words + 2]);
	assert_int_equal(json_array_size(json_object_get(ev, "choices")), 0);
	assert_int_equal(usage_of(ev, "prompt_tokens"), 4);
	assert_int_equal(usage_of(ev, "completion_tokens"), (json_int_t)words);
	assert_int_equal(usage_of(ev, "total_tokens"), (json_int_t)words + 4);
	json_decref(ev);
	assert_null(sse_json(r.pieces[words + 3]));
	rec_clear(&r);

	/* Without include_usage: no usage chunk. */
	call = fx_call(&fx, LG_ENDPOINT_CHAT, "/v1/chat/completions",
		       "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
		       NULL);
	memset(&r, 0, sizeof r);
	assert_int_equal(fx.ops->serve(fx.ud, fx.req, &fx.conf, &call, &streaming_handlers, &r,
				       &r.handle), 0);
	run_loop(&fx);
	assert_int_equal(r.npieces, 1 + 7 + 1 + 1);
	for (i = 0; i + 1 < r.npieces; i++) {
		ev = sse_json(r.pieces[i]);
		assert_null(json_object_get(ev, "usage"));
		json_decref(ev);
	}
	rec_clear(&r);
	fx_free(&fx);
}

static void test_mock_stream_buffered(void **state)
{
	struct fx fx;
	struct rec r;

	(void)state;
	fx_load(&fx, "mock", NULL);
	/* Without on_data the whole stream comes with on_done. */
	mock_start(&fx, &r, LG_ENDPOINT_CHAT,
		   "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"a b\"}]}",
		   &buffered_handlers);
	run_loop(&fx);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_OK);
	assert_non_null(r.done_body);
	assert_non_null(strstr(r.done_body, "\"content\":\" b\""));
	assert_int_equal(strcmp(r.done_body + r.done_len - 14, "data: [DONE]\n\n"), 0);
	rec_clear(&r);
	fx_free(&fx);
}

static void test_mock_cancel_mid_stream(void **state)
{
	static const char body[] =
		"{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"one two three four\"}]}";
	struct fx fx;
	struct rec r;

	(void)state;
	fx_load(&fx, "mock", NULL);
	mock_start(&fx, &r, LG_ENDPOINT_CHAT, body, &streaming_handlers);
	assert_int_equal(event_base_loop(fake_host_base(fx.fh), EVLOOP_ONCE), 0);
	assert_int_equal(event_base_loop(fake_host_base(fx.fh), EVLOOP_ONCE), 0);
	assert_int_equal(r.npieces, 2);
	fx.ops->cancel(fx.ud, r.handle);
	assert_int_equal(r.dones, 0); /* later, from the loop */
	fx.ops->cancel(fx.ud, r.handle); /* twice is harmless */
	run_loop(&fx);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_ECANCELED);
	assert_int_equal(r.npieces, 2);
	assert_true(r.done_error);
	assert_null(r.done_body);
	rec_clear(&r);

	/* cancel() from inside on_data: no further data, on_done once. */
	mock_start(&fx, &r, LG_ENDPOINT_CHAT, body, &streaming_handlers);
	r.cancel_at = 3;
	run_loop(&fx);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_ECANCELED);
	assert_int_equal(r.npieces, 3);
	rec_clear(&r);

	/* on_data refusing the data ends the call the same way. */
	mock_start(&fx, &r, LG_ENDPOINT_CHAT, body, &streaming_handlers);
	r.data_rc = -1;
	run_loop(&fx);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_ECANCELED);
	assert_int_equal(r.npieces, 1);
	rec_clear(&r);
	fx_free(&fx);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_mock_stream_delay_and_prompt_cancel(void **state)
{
	struct fx fx;
	struct rec r;
	double t0;

	(void)state;
	fx_load(&fx, "mock", "stream_delay", "30s", NULL);
	mock_start(&fx, &r, LG_ENDPOINT_CHAT,
		   "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
		   &streaming_handlers);
	/* Nothing is due for 30 s. */
	assert_int_equal(event_base_loop(fake_host_base(fx.fh), EVLOOP_NONBLOCK), 0);
	assert_int_equal(r.heads + (int)r.npieces + r.dones, 0);
	assert_int_equal(fake_host_live_timers(fx.fh), 1);
	/* Cancelling does not wait for the pending piece. */
	t0 = now_s();
	fx.ops->cancel(fx.ud, r.handle);
	run_loop(&fx);
	assert_true(now_s() - t0 < 5.0);
	assert_int_equal(r.dones, 1);
	assert_int_equal(r.result, LG_FETCH_ECANCELED);
	assert_int_equal(r.status, 0); /* no head was sent */
	assert_int_equal(r.heads + (int)r.npieces, 0);
	rec_clear(&r);
	fx_free(&fx);
}

static void test_mock_completions(void **state)
{
	struct fx fx;
	struct rec r;
	json_t *a, *ev;
	char text[256] = "";

	(void)state;
	fx_load(&fx, "mock", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_COMPLETIONS, "{\"prompt\":[\"Once upon\",\"x\"]}", 200);
	assert_string_equal(json_string_value(json_object_get(a, "object")), "text_completion");
	assert_string_equal(json_string_value(json_object_get(json_array_get(
		json_object_get(a, "choices"), 0), "text")),
			    "This is a mock completion of: Once upon");
	assert_int_equal(usage_of(a, "prompt_tokens"), 2);
	assert_int_equal(usage_of(a, "completion_tokens"), 8);
	json_decref(a);

	mock_start(&fx, &r, LG_ENDPOINT_COMPLETIONS,
		   "{\"prompt\":\"Once\",\"stream\":true,\"max_tokens\":2,"
		   "\"stream_options\":{\"include_usage\":true}}", &streaming_handlers);
	run_loop(&fx);
	assert_int_equal(r.result, LG_FETCH_OK);
	assert_int_equal(r.npieces, 2 + 1 + 1 + 1); /* words, finish, usage, [DONE] */
	for (size_t i = 0; i < 3; i++) {
		ev = sse_json(r.pieces[i]);
		assert_string_equal(json_string_value(json_object_get(ev, "object")),
				    "text_completion");
		strcat(text, json_string_value(json_object_get(json_array_get(
			json_object_get(ev, "choices"), 0), "text")));
		json_decref(ev);
	}
	assert_string_equal(text, "This is");
	ev = sse_json(r.pieces[2]);
	assert_string_equal(json_string_value(json_object_get(json_array_get(
		json_object_get(ev, "choices"), 0), "finish_reason")), "length");
	json_decref(ev);
	ev = sse_json(r.pieces[3]);
	assert_int_equal(usage_of(ev, "completion_tokens"), 2);
	json_decref(ev);
	rec_clear(&r);
	fx_free(&fx);
}

/* ==== the mock: embeddings, rerank, transcription, OCR ==== */

static double *vector_of(const json_t *reply, size_t i, size_t *dim)
{
	const json_t *emb = json_object_get(json_array_get(json_object_get(reply, "data"), i),
					    "embedding");
	double *v;

	assert_true(json_is_array(emb));
	*dim = json_array_size(emb);
	v = calloc(*dim, sizeof *v);
	assert_non_null(v);
	for (size_t k = 0; k < *dim; k++)
		v[k] = json_number_value(json_array_get(emb, k));
	return v;
}

static double dot(const double *a, const double *b, size_t n)
{
	double s = 0;

	for (size_t i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

static void test_mock_embeddings(void **state)
{
	static const char body[] =
		"{\"model\":\"e\",\"input\":[\"The cat sat on the mat.\","
		"\"the CAT sat on a mat\",\"Quantum chromodynamics describes quarks\","
		"\"The cat sat on the mat.\"]}";
	struct fx fx;
	json_t *a;
	double *v[4];
	size_t dim;

	(void)state;
	fx_load(&fx, "mock", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS, body, 200);
	assert_string_equal(json_string_value(json_object_get(a, "object")), "list");
	assert_int_equal(json_array_size(json_object_get(a, "data")), 4);
	for (size_t i = 0; i < 4; i++) {
		const json_t *item = json_array_get(json_object_get(a, "data"), i);

		assert_string_equal(json_string_value(json_object_get(item, "object")),
				    "embedding");
		assert_int_equal(json_integer_value(json_object_get(item, "index")), (json_int_t)i);
		v[i] = vector_of(a, i, &dim);
		assert_int_equal(dim, 256);
		assert_true(fabs(dot(v[i], v[i], dim) - 1.0) < 1e-6);
	}
	assert_memory_equal(v[0], v[3], dim * sizeof(double));
	/* Shared words make texts close; unrelated ones are far apart. */
	assert_true(dot(v[0], v[1], dim) > 0.5);
	assert_true(dot(v[0], v[1], dim) > dot(v[0], v[2], dim) + 0.3);
	assert_int_equal(usage_of(a, "prompt_tokens"), 6 + 6 + 4 + 6);
	assert_int_equal(usage_of(a, "total_tokens"), 22);
	for (size_t i = 0; i < 4; i++)
		free(v[i]);
	json_decref(a);

	/* "dimensions" in the request, one string, token ids. */
	a = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS, "{\"input\":\"hello\",\"dimensions\":32}", 200);
	v[0] = vector_of(a, 0, &dim);
	assert_int_equal(dim, 32);
	free(v[0]);
	json_decref(a);
	a = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS, "{\"input\":[[1,2,3],[4]]}", 200);
	assert_int_equal(json_array_size(json_object_get(a, "data")), 2);
	assert_int_equal(usage_of(a, "prompt_tokens"), 4);
	json_decref(a);
	a = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS, "{\"input\":[1,2,3]}", 200);
	assert_int_equal(json_array_size(json_object_get(a, "data")), 1);
	json_decref(a);

	/* Refused like an upstream would. */
	static const char *const bad[] = {
		"{\"input\":[]}", "{\"input\":3}", "{\"input\":[\"a\",1]}",
		"{\"input\":\"a\",\"dimensions\":1}", "{\"input\":\"a\",\"encoding_format\":\"int8\"}",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		a = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS, bad[i], 400);
		assert_non_null(json_object_get(a, "error"));
		json_decref(a);
	}
	fx_free(&fx);
}

static void test_mock_embeddings_dimension_and_base64(void **state)
{
	struct fx fx;
	json_t *a, *b;
	double *v;
	size_t dim;
	unsigned char raw[64 * 4];

	(void)state;
	fx_load(&fx, "mock", "dimension", "64", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS, "{\"input\":\"large language models\"}", 200);
	v = vector_of(a, 0, &dim);
	assert_int_equal(dim, 64);
	b = mock_whole(&fx, LG_ENDPOINT_EMBEDDINGS,
		       "{\"input\":\"large language models\",\"encoding_format\":\"base64\"}", 200);
	assert_int_equal(b64_decode(json_string_value(json_object_get(json_array_get(
		json_object_get(b, "data"), 0), "embedding")), raw, sizeof raw), 64 * 4);
	for (size_t i = 0; i < dim; i++) {
		uint32_t u = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
			     (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
		float f;

		memcpy(&f, &u, sizeof f);
		assert_true(fabs((double)f - v[i]) < 1e-6);
	}
	free(v);
	json_decref(a);
	json_decref(b);
	fx_free(&fx);
}

static void test_mock_rerank(void **state)
{
	static const char body[] =
		"{\"model\":\"r\",\"query\":\"black cat on a mat\",\"documents\":["
		"\"Dogs bark loudly.\",\"A black cat sleeps on the mat.\",\"The cat.\","
		"{\"text\":\"black mat\"}]}";
	struct fx fx;
	json_t *a, *results;

	(void)state;
	fx_load(&fx, "mock", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_RERANK, body, 200);
	assert_string_equal(json_string_value(json_object_get(a, "object")), "list");
	results = json_object_get(a, "results");
	/* query words: black cat on a mat (5) */
	assert_json_eq(results, "[{\"index\":1,\"relevance_score\":1.0},"
				"{\"index\":3,\"relevance_score\":0.4},"
				"{\"index\":2,\"relevance_score\":0.2},"
				"{\"index\":0,\"relevance_score\":0.0}]");
	assert_int_equal(usage_of(a, "prompt_tokens"), 5 + 3 + 7 + 2 + 2);
	json_decref(a);

	a = mock_whole(&fx, LG_ENDPOINT_RERANK,
		       "{\"query\":\"cat\",\"documents\":[\"dog\",\"cat\",\"cat cat\"],\"top_n\":2}",
		       200);
	assert_json_eq(json_object_get(a, "results"), "[{\"index\":1,\"relevance_score\":1.0},"
						      "{\"index\":2,\"relevance_score\":1.0}]");
	json_decref(a);
	a = mock_whole(&fx, LG_ENDPOINT_RERANK, "{\"query\":\"cat\",\"documents\":[]}", 400);
	json_decref(a);
	a = mock_whole(&fx, LG_ENDPOINT_RERANK,
		       "{\"query\":\"cat\",\"documents\":[\"a\"],\"top_n\":0}", 400);
	json_decref(a);
	fx_free(&fx);
}

static void test_mock_transcription_and_ocr(void **state)
{
	static const char upload[] = "--b\r\nContent-Disposition: form-data; name=\"file\"; "
				     "filename=\"a.wav\"\r\n\r\nRIFF\r\n--b--\r\n";
	struct fx fx;
	json_t *a;

	(void)state;
	fx_load(&fx, "mock", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_TRANSCRIPTION, upload, 200);
	assert_json_eq(a, "{\"text\":\"This is a mock transcription.\"}");
	json_decref(a);
	a = mock_whole(&fx, LG_ENDPOINT_OCR,
		       "{\"document\":{\"type\":\"document_url\",\"document_url\":\"x\"}}", 200);
	assert_string_equal(json_string_value(json_object_get(json_array_get(
		json_object_get(a, "pages"), 0), "markdown")), "This is a mock OCR page.");
	json_decref(a);
	fx_free(&fx);

	fx_load(&fx, "mock", "transcription", "Bonjour.", NULL);
	a = mock_whole(&fx, LG_ENDPOINT_TRANSCRIPTION, upload, 200);
	assert_json_eq(a, "{\"text\":\"Bonjour.\"}");
	json_decref(a);
	fx_free(&fx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_each_plugin_registers_its_type),
		cmocka_unit_test(test_mock_settings_are_bounded),
		cmocka_unit_test(test_tei_prepare_builds_rerank_body),
		cmocka_unit_test(test_tei_prepare_refuses_bad_bodies),
		cmocka_unit_test(test_tei_convert_sorts_and_cuts),
		cmocka_unit_test(test_tei_convert_without_top_n_and_errors),
		cmocka_unit_test(test_vllm_rerank_usage),
		cmocka_unit_test(test_mistral_prepare_chat),
		cmocka_unit_test(test_mistral_prepare_transcription),
		cmocka_unit_test(test_mistral_convert_transcription),
		cmocka_unit_test(test_mock_chat_reply),
		cmocka_unit_test(test_mock_chat_limits),
		cmocka_unit_test(test_mock_chat_stream),
		cmocka_unit_test(test_mock_stream_buffered),
		cmocka_unit_test(test_mock_cancel_mid_stream),
		cmocka_unit_test(test_mock_stream_delay_and_prompt_cancel),
		cmocka_unit_test(test_mock_completions),
		cmocka_unit_test(test_mock_embeddings),
		cmocka_unit_test(test_mock_embeddings_dimension_and_base64),
		cmocka_unit_test(test_mock_rerank),
		cmocka_unit_test(test_mock_transcription_and_ocr),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
