/* SPDX-License-Identifier: Apache-2.0 */
/* auth: identifies callers. This first part accepts the master key of the
 * configuration as an all-powerful key (as OpenGateLLM 0.4 did); users,
 * roles and API keys stored in PostgreSQL build on it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sodium.h>

#include <llmgate/host.h>

#define MASTER_KEY_MIN 24   /* characters, beyond loopback */

struct auth {
	const struct lg_host *host;
	struct lg_plugin *self;
	unsigned char master_hash[crypto_generichash_BYTES];
	bool has_master;
};

static const struct lg_setting auth_settings[] = {
	{ "master_key", LG_SETTING_STRING, NULL, 0, 4096, LG_SETTING_SECRET,
	  "a key with every right (admin); leave it unset to disable it" },
};

/* Keys are compared through their hashes, in constant time, so neither the
 * length nor the content of the master key leaks through timing. */
static void key_hash(const char *key, size_t len, unsigned char out[crypto_generichash_BYTES])
{
	crypto_generichash(out, crypto_generichash_BYTES, (const unsigned char *)key, len, NULL, 0);
}

static enum lg_hook_result authenticate(struct lg_req *req, void *ud)
{
	struct auth *a = ud;
	const char *authz = a->host->req_header(req, "Authorization");
	unsigned char h[crypto_generichash_BYTES];
	struct lg_principal who = {
		.size = sizeof who, .user_name = "master", .key_name = "master",
		.permissions = LG_PERM_ADMIN | LG_PERM_READ_METRIC | LG_PERM_PROVIDE_MODELS |
			       LG_PERM_CREATE_PUBLIC_COLLECTION,
	};

	if (!a->has_master || !authz || strncasecmp(authz, "Bearer ", 7) != 0)
		return LG_HOOK_DECLINE;
	key_hash(authz + 7, strlen(authz + 7), h);
	if (sodium_memcmp(h, a->master_hash, sizeof h) != 0)
		return LG_HOOK_DECLINE;
	return a->host->req_set_principal(req, &who) == 0 ? LG_HOOK_OK : LG_HOOK_DECLINE;
}

static int auth_init(struct lg_plugin *self, const struct lg_host *host)
{
	struct auth *a;
	const char *master = NULL;
	int rc;

	if (sodium_init() < 0) {
		host->set_error(self, "libsodium cannot initialise");
		return -EIO;
	}
	a = calloc(1, sizeof *a);
	if (!a)
		return -ENOMEM;
	a->host = host;
	a->self = self;
	if (host->cfg_str(self, "master_key", &master) == 0 && master && *master) {
		/* A guessable key is tolerable on loopback (the embedded default),
		 * never where others can reach the server. */
		if (host->server_exposed(self) &&
		    (strcmp(master, "changeme") == 0 || strlen(master) < MASTER_KEY_MIN)) {
			host->set_error(self, "master_key is the default or shorter than %d "
					"characters, and server.listen reaches beyond loopback: set a "
					"long random master_key", MASTER_KEY_MIN);
			free(a);
			return -EPERM;
		}
		key_hash(master, strlen(master), a->master_hash);
		a->has_master = true;
	}
	rc = host->hook_add(self, LG_PHASE_AUTH, authenticate, 100, a);
	if (rc < 0) {
		host->set_error(self, "cannot add the authentication hook");
		free(a);
		return rc;
	}
	host->set_data(self, a);
	return 0;
}

static void auth_fini(struct lg_plugin *self, const struct lg_host *host)
{
	struct auth *a = host->get_data(self);

	sodium_memzero(a->master_hash, sizeof a->master_hash);
	free(a);
}

LG_PLUGIN(.name = "auth", .version = "0.1.0",
	  .description = "authentication: the master key (users, roles and API keys follow)",
	  .settings = auth_settings, .n_settings = LG_COUNT(auth_settings),
	  .init = auth_init, .fini = auth_fini);
