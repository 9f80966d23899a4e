/* SPDX-License-Identifier: Apache-2.0 */
#include "rag.h"

static int rag_init(struct lg_plugin *self, const struct lg_host *host)
{
	(void)self;
	(void)host;
	return 0;
}

LG_PLUGIN(.name = "rag", .version = "0.1.0", .description = "RAG collections (in progress)",
	  .init = rag_init);
