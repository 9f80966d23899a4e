/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: provider types
 *
 * A provider plugin registers one struct lg_provider_ops per provider type
 * it implements ("openai", "vllm", "mock"...). Models in config.yml and the
 * admin API name a type; the host routes forwarded calls to it.
 */
#ifndef LLMGATE_PROVIDER_H
#define LLMGATE_PROVIDER_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * struct lg_provider_ops - a provider type.
 * @size:        sizeof(struct lg_provider_ops).
 * @type:        the type name used in config.yml, [a-z][a-z0-9_]*.
 * @model_types: NULL-terminated model types it can serve
 *               ("text-generation", "text-embeddings-inference", ...).
 *
 * Ownership: static data of the plugin, valid until fini().
 */
struct lg_provider_ops {
	uint32_t size;
	const char *type;
	const char *const *model_types;
	/* 1.1+ members go below, never above */
};

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_PROVIDER_H */
