/* SPDX-License-Identifier: Apache-2.0 */
/* Its name differs from its file's: refused with the file name to use. */
#include <llmgate/host.h>

LG_PLUGIN(.name = "something_else", .version = "0.0.1");
