/* SPDX-License-Identifier: Apache-2.0 */
/* The "openai" provider type: the OpenAI API and any server that speaks it.
 * Everything it serves is the host's OpenAI-compatible default (standard
 * path, "Authorization: Bearer", "model" replaced), so it only declares
 * what it serves. Rerank and OCR are not part of the OpenAI API. */
#include "../common/provider_common.h"

static const char *const openai_model_types[] = {
	"text-generation", "text-embeddings-inference", "automatic-speech-recognition", NULL,
};

static const struct lg_provider_ops openai_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "openai",
	.model_types = openai_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_CHAT) | LG_ENDPOINT_BIT(LG_ENDPOINT_COMPLETIONS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_TRANSCRIPTION),
	.default_url = "https://api.openai.com",
	.models_path = "/v1/models",
};

static int openai_init(struct lg_plugin *self, const struct lg_host *host)
{
	return lgp_init(self, host, &openai_ops);
}

LG_PLUGIN(.name = "openai", .version = "1.0.0",
	  .description = "provider type openai: the OpenAI API and compatible servers",
	  .init = openai_init, .fini = lgp_fini);
