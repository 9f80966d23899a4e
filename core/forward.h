/* SPDX-License-Identifier: Apache-2.0 */
/* The forwarding engine: the OpenAI-compatible endpoints. It resolves the
 * model, runs the AUTHORIZE and PRE_UPSTREAM hooks, picks a provider
 * (strategy, concurrency cap, breaker, failover before the first byte),
 * has the provider type prepare the call, sends it (or lets the type serve
 * it), relays the reply or its server-sent events, reads usage, and runs
 * the COMPLETE hooks exactly once. */
#ifndef LG_FORWARD_H
#define LG_FORWARD_H

#include <stddef.h>

#include "runtime.h"

/* Registers POST /v1/chat/completions, /v1/completions, /v1/embeddings,
 * /v1/rerank, /v1/audio/transcriptions and /v1/ocr (policy: key).
 * Thread: main, before plugins' init(). */
int lg_forward_register_routes(struct lg_runtime *rt, char *err, size_t errlen);

#endif
