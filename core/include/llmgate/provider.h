/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: provider types
 *
 * A provider plugin registers one struct lg_provider_ops per provider type
 * it implements ("openai", "vllm", "tei", "mock"...). Models in config.yml
 * and the admin API name a type for each of their providers; the host
 * routes forwarded calls to it.
 *
 * The host does the OpenAI-compatible work once for every type: it builds
 * the upstream request (base URL + standard path, "Authorization: Bearer"
 * when the provider has a key, the client's body with "model" replaced by
 * the provider's model name), sends it, relays replies and server-sent
 * events, reads usage, and rewrites "model" and "id". A provider type only
 * says what differs: which endpoints it serves, how to adapt the request,
 * how to convert a reply that is not OpenAI-shaped, or how to answer
 * without the network at all.
 */
#ifndef LLMGATE_PROVIDER_H
#define LLMGATE_PROVIDER_H

#include <stdint.h>

#include <llmgate/http.h>

#ifdef __cplusplus
extern "C" {
#endif

/** enum lg_endpoint - the forwarded endpoints. */
enum lg_endpoint {
	LG_ENDPOINT_CHAT = 1,        /* POST /v1/chat/completions */
	LG_ENDPOINT_COMPLETIONS,     /* POST /v1/completions */
	LG_ENDPOINT_EMBEDDINGS,      /* POST /v1/embeddings */
	LG_ENDPOINT_RERANK,          /* POST /v1/rerank */
	LG_ENDPOINT_TRANSCRIPTION,   /* POST /v1/audio/transcriptions (multipart) */
	LG_ENDPOINT_OCR,             /* POST /v1/ocr */
	LG_ENDPOINT_COUNT_           /* not an endpoint */
};

#define LG_ENDPOINT_BIT(e) (1u << (e))

/**
 * struct lg_provider_conf - one configured provider (an upstream
 * deployment of a model), as the provider type sees it.
 * Ownership: the host's, valid during the call it is passed to.
 */
struct lg_provider_conf {
	uint32_t size;
	int64_t id;
	const char *type;
	const char *url;             /* base URL without a trailing '/' and without /v1 */
	const char *key;             /* API key, or NULL; never log it */
	const char *model_name;      /* the model's name on the upstream */
	uint32_t timeout_ms;
};

/**
 * struct lg_upstream_call - one call about to go upstream, prepared by the
 * host with the OpenAI-compatible defaults, which prepare() may change.
 * @endpoint:  what the client called.
 * @stream:    the client asked for server-sent events.
 * @request:   method, URL, headers and body that will be sent. To change a
 *             string or the body, point at memory from host->req_alloc().
 *
 * Ownership: the host's.
 */
struct lg_upstream_call {
	uint32_t size;
	enum lg_endpoint endpoint;
	bool stream;
	struct lg_fetch_request request;
};

/**
 * struct lg_provider_ops - a provider type.
 * @size:         sizeof(struct lg_provider_ops).
 * @type:         the type name used in config.yml, [a-z][a-z0-9_]*.
 * @model_types:  NULL-terminated model types it can serve
 *                ("text-generation", "text-embeddings-inference",
 *                "text-classification", "automatic-speech-recognition",
 *                "image-to-text").
 * @endpoints:    LG_ENDPOINT_BIT() of each endpoint it serves.
 * @default_url:  base URL when a provider sets none, or NULL (then required).
 * @models_path:  where the probe lists models ("/v1/models"; TEI "/info").
 * @prepare:      optional; adapt @call (path, headers, body) for this type.
 *                Return 0, or a negative errno to fail the call (502).
 * @convert:      optional; turn a whole 2xx reply into the OpenAI shape
 *                (e.g. TEI's rerank list). Write the result into @out with
 *                memory from host->req_alloc(). Return 0 or a negative errno.
 * @serve:        optional; answer the call without the network. When set,
 *                the host calls it instead of sending @call, and it reports
 *                through @h exactly as an outbound fetch would (on_head,
 *                on_data pieces, then on_done exactly once, on this thread,
 *                never from inside serve() itself). Return 0, or a negative
 *                errno (then @h is not called).
 * @cancel:       with @serve: stop a served call (the client left); on_done
 *                must still follow (with LG_FETCH_ECANCELED).
 *
 * Thread: all callbacks run on the request's worker.
 * Ownership: static data of the plugin, valid until fini().
 */
struct lg_provider_ops {
	uint32_t size;
	const char *type;
	const char *const *model_types;
	uint32_t endpoints;
	const char *default_url;
	const char *models_path;
	int (*prepare)(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
		       struct lg_upstream_call *call);
	int (*convert)(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
		       enum lg_endpoint endpoint, struct lg_str in, struct lg_str *out);
	int (*serve)(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
		     const struct lg_upstream_call *call, const struct lg_fetch_handlers *h,
		     void *arg, void **handle);
	void (*cancel)(void *ud, void *handle);
	/* 1.1+ members go below, never above */
};

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_PROVIDER_H */
