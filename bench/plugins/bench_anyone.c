/* SPDX-License-Identifier: Apache-2.0 */
/* bench_anyone: the least an AUTH hook can do, for benchmarks only.
 *
 * Every request is taken as one fixed caller without looking at its
 * headers, so that `bench/run.sh --without auth` still reaches the
 * forwarding path (without any AUTH hook, key routes answer 401) and the
 * difference between the two rows is what the auth plugin costs. Never
 * load it in a real deployment: it lets everybody in. */
#include <errno.h>
#include <stdlib.h>

#include <llmgate/host.h>

struct anyone {
	const struct lg_host *host;
};

static enum lg_hook_result accept_anyone(struct lg_req *req, void *ud)
{
	const struct anyone *a = ud;
	const struct lg_principal who = {
		.size = sizeof who, .user_name = "bench", .key_name = "bench",
	};

	return a->host->req_set_principal(req, &who) == 0 ? LG_HOOK_OK : LG_HOOK_DECLINE;
}

static int anyone_init(struct lg_plugin *self, const struct lg_host *host)
{
	struct anyone *a = calloc(1, sizeof *a);
	int rc;

	if (!a)
		return -ENOMEM;
	a->host = host;
	rc = host->hook_add(self, LG_PHASE_AUTH, accept_anyone, 100, a);
	if (rc < 0) {
		host->set_error(self, "cannot add the authentication hook");
		free(a);
		return rc;
	}
	host->set_data(self, a);
	return 0;
}

static void anyone_fini(struct lg_plugin *self, const struct lg_host *host)
{
	free(host->get_data(self));
}

LG_PLUGIN(.name = "bench_anyone", .version = "1.0.0",
	  .description = "benchmarks only: every request is one fixed caller, unchecked",
	  .init = anyone_init, .fini = anyone_fini);
