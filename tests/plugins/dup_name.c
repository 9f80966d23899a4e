/* SPDX-License-Identifier: Apache-2.0 */
/* Declares the name of another plugin ("good"): refused as a duplicate. */
#include <llmgate/host.h>

LG_PLUGIN(.name = "good", .version = "0.0.1");
