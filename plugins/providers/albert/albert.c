/* SPDX-License-Identifier: Apache-2.0 */
/* The "albert" provider type: the Albert API (an OpenGateLLM deployment)
 * as the upstream. It is OpenAI-compatible on every forwarded endpoint,
 * rerank (/v1/rerank) and OCR (/v1/ocr) included, so the host's defaults
 * serve it unchanged and it serves every model type. */
#include "../common/provider_common.h"

static const char *const albert_model_types[] = {
	"text-generation", "text-embeddings-inference", "text-classification",
	"automatic-speech-recognition", "image-to-text", NULL,
};

static const struct lg_provider_ops albert_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "albert",
	.model_types = albert_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_CHAT) | LG_ENDPOINT_BIT(LG_ENDPOINT_COMPLETIONS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) | LG_ENDPOINT_BIT(LG_ENDPOINT_RERANK) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_TRANSCRIPTION) | LG_ENDPOINT_BIT(LG_ENDPOINT_OCR),
	.default_url = "https://albert.api.etalab.gouv.fr",
	.models_path = "/v1/models",
};

static int albert_init(struct lg_plugin *self, const struct lg_host *host)
{
	return lgp_init(self, host, &albert_ops);
}

LG_PLUGIN(.name = "albert", .version = "1.0.0",
	  .description = "provider type albert: the Albert API (OpenGateLLM) upstream",
	  .init = albert_init, .fini = lgp_fini);
