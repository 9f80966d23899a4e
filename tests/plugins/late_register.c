/* SPDX-License-Identifier: Apache-2.0 */
/* Tries to register a route and a hook in start(), after the window. */
#include <string.h>

#include <llmgate/host.h>

static const struct lg_host *late_host;

static void late_route(struct lg_req *req, void *ud)
{
	(void)ud;
	late_host->reply(req, 200, "text/plain", "late", 4);
}

static enum lg_hook_result late_hook(struct lg_req *req, void *ud)
{
	(void)req;
	(void)ud;
	return LG_HOOK_DECLINE;
}

static int late_init(struct lg_plugin *self, const struct lg_host *host)
{
	late_host = host;
	(void)self;
	return 0;
}

static int late_start(struct lg_plugin *self, const struct lg_host *host)
{
	static const struct lg_route route = {
		sizeof(struct lg_route), "GET", "/late", LG_POLICY_PUBLIC, 0, late_route,
	};
	int r1 = host->route_add(self, &route, NULL);
	int r2 = host->hook_add(self, LG_PHASE_AUTH, late_hook, 0, NULL);

	host->log(self, LG_LOG_INFO, "late_register: route_add=%d hook_add=%d", r1, r2);
	return 0;
}

LG_PLUGIN(.name = "late_register", .version = "0.0.1", .init = late_init, .start = late_start);
