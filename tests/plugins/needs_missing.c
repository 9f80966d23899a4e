/* SPDX-License-Identifier: Apache-2.0 */
/* Requires a plugin that the configuration does not load. */
#include <llmgate/host.h>

static const char *const needs[] = { "good", "nonexistent", NULL };

LG_PLUGIN(.name = "needs_missing", .version = "0.0.1", .requires = needs);
