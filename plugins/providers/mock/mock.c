/* SPDX-License-Identifier: Apache-2.0 */
/* The mock provider: a provider type that needs no network, so that the
 * embedded default runs offline. */
#include <llmgate/host.h>
#include <llmgate/provider.h>

static const char *const mock_model_types[] = {
	"text-generation", "text-embeddings-inference", "text-classification",
	"automatic-speech-recognition", "image-to-text", NULL,
};

static const struct lg_provider_ops mock_ops = {
	.size = sizeof(struct lg_provider_ops),
	.type = "mock",
	.model_types = mock_model_types,
	.endpoints = LG_ENDPOINT_BIT(LG_ENDPOINT_CHAT) | LG_ENDPOINT_BIT(LG_ENDPOINT_COMPLETIONS) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_EMBEDDINGS) | LG_ENDPOINT_BIT(LG_ENDPOINT_RERANK) |
		     LG_ENDPOINT_BIT(LG_ENDPOINT_TRANSCRIPTION),
	.models_path = "/v1/models",
};

static int mock_init(struct lg_plugin *self, const struct lg_host *host)
{
	int rc = host->provider_add(self, &mock_ops, NULL);

	if (rc < 0)
		host->set_error(self, "cannot register provider type \"mock\"");
	return rc;
}

LG_PLUGIN(.name = "mock", .version = "0.1.0",
	  .description = "offline provider for tests and the embedded default",
	  .init = mock_init);
