/* SPDX-License-Identifier: Apache-2.0 */
/* The "vllm" provider type: a vLLM OpenAI-compatible server.
 *
 * Chat, completions, embeddings and transcription are the host's defaults.
 * Rerank goes to the host's default path, /v1/rerank, which vLLM serves
 * with the same request ({model, query, documents, top_n}). OpenGateLLM
 * reads /v2/rerank(s); vLLM serves /rerank, /v1/rerank and /v2/rerank
 * alike, and /v1/rerank keeps the one path every type shares.
 *
 * vLLM's rerank reply counts only "usage.total_tokens"; convert() copies it
 * into prompt_tokens (completion_tokens 0) and adds "object": "list", so
 * that the reply has the OpenGateLLM shape and its usage is accounted.
 * The health probe reads /metrics itself; the models list is /v1/models. */
#include "../common/provider_common.h"

static const char *const vllm_model_types[] = {
	"text-generation", "text-embeddings-inference", "text-classification",
	"automatic-speech-recognition", NULL,
};

/* Completes the usage object of a rerank reply in place. */
static int vllm_rerank_usage(json_t *reply)
{
	json_t *usage = json_object_get(reply, "usage");
	json_t *total = json_object_get(usage, "total_tokens");

	if (!json_is_object(usage) || json_object_get(usage, "prompt_tokens") ||
	    !json_is_integer(total))
		return 0;
	if (json_object_set(usage, "prompt_tokens", total) < 0 ||
	    json_object_set_new(usage, "completion_tokens", json_integer(0)) < 0)
		return -ENOMEM;
	return 0;
}

static int vllm_convert(void *ud, struct lg_req *req, const struct lg_provider_conf *p,
			enum lg_endpoint endpoint, struct lg_str in, struct lg_str *out)
{
	json_t *reply;
	int rc;

	if (endpoint != LG_ENDPOINT_RERANK) {
		*out = in;
		return 0;
	}
	reply = lgp_json_object(in);
	if (!reply)
		return -EPROTO;
	rc = vllm_rerank_usage(reply);
	if (rc == 0 && !json_object_get(reply, "object") &&
	    json_object_set_new(reply, "object", json_string("list")) < 0)
		rc = -ENOMEM;
	if (rc == 0)
		rc = lgp_json_dump_req(ud, req, reply, out);
	json_decref(reply);
	return rc;
}

static const struct lg_provider_ops vllm_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "vllm",
	.model_types = vllm_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_CHAT) | LG_ENDPOINT_BIT(LG_ENDPOINT_COMPLETIONS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) | LG_ENDPOINT_BIT(LG_ENDPOINT_RERANK) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_TRANSCRIPTION),
	.models_path = "/v1/models",
	.convert = vllm_convert,
};

static int vllm_init(struct lg_plugin *self, const struct lg_host *host)
{
	return lgp_init(self, host, &vllm_ops);
}

LG_PLUGIN(.name = "vllm", .version = "1.0.0",
	  .description = "provider type vllm: a vLLM OpenAI-compatible server",
	  .init = vllm_init, .fini = lgp_fini);
