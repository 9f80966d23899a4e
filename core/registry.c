/* SPDX-License-Identifier: Apache-2.0 */
/* What plugins register during init(): routes, hooks, provider types and
 * LISTEN channels. */
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

struct lg_registry *lg_registry_new(void)
{
	struct lg_registry *reg = calloc(1, sizeof *reg);

	if (!reg)
		return NULL;
	reg->router = lg_router_new();
	if (!reg->router) {
		free(reg);
		return NULL;
	}
	return reg;
}

void lg_registry_free(struct lg_registry *reg)
{
	if (!reg)
		return;
	lg_router_free(reg->router);
	for (int p = 0; p < LG_PHASE_COUNT_; p++)
		free(reg->hooks[p]);
	free(reg->providers);
	for (size_t i = 0; i < reg->nlistens; i++)
		free(reg->listens[i].channel);
	free(reg->listens);
	free(reg->access);
	free(reg);
}

static int hook_cmp(const void *a, const void *b)
{
	const struct lg_hook_entry *x = a, *y = b;

	if (x->priority != y->priority)
		return x->priority < y->priority ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

void lg_registry_freeze(struct lg_registry *reg)
{
	for (int p = 0; p < LG_PHASE_COUNT_; p++)
		if (reg->nhooks[p] > 1)
			qsort(reg->hooks[p], reg->nhooks[p], sizeof(struct lg_hook_entry), hook_cmp);
	reg->frozen = true;
}

const struct lg_provider_entry *lg_registry_provider(const struct lg_registry *reg,
						     const char *type)
{
	for (size_t i = 0; i < reg->nproviders; i++)
		if (strcmp(reg->providers[i].ops->type, type) == 0)
			return &reg->providers[i];
	return NULL;
}

bool lg_registry_model_allowed(const struct lg_registry *reg, const struct lg_principal *who,
			       int64_t model_id)
{
	if (!who || (who->permissions & LG_PERM_ADMIN))
		return true;
	for (size_t i = 0; i < reg->naccess; i++)
		if (!reg->access[i].fn(who, model_id, reg->access[i].ud))
			return false;
	return true;
}
