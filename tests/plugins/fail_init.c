/* SPDX-License-Identifier: Apache-2.0 */
/* init() fails: the server must not start and must not call its fini(). */
#include <errno.h>

#include <llmgate/host.h>

static int fail_init(struct lg_plugin *self, const struct lg_host *host)
{
	host->set_error(self, "the frobnicator is missing");
	return -ENOENT;
}

static void fail_fini(struct lg_plugin *self, const struct lg_host *host)
{
	host->log(self, LG_LOG_ERROR, "fail_init: fini called");
}

LG_PLUGIN(.name = "fail_init", .version = "0.0.1", .init = fail_init, .fini = fail_fini);
