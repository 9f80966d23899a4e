/* SPDX-License-Identifier: Apache-2.0 */
/* Placeholder until the registry lands: no models. */
#include <stdlib.h>

#include "models.h"

struct lg_models {
	struct lg_runtime *rt;
};

struct lg_models *lg_models_new(struct lg_runtime *rt)
{
	struct lg_models *m = calloc(1, sizeof *m);

	if (m)
		m->rt = rt;
	return m;
}

void lg_models_free(struct lg_models *m) { free(m); }
int lg_models_register_routes(struct lg_models *m, char *err, size_t errlen) { (void)m; (void)err; (void)errlen; return 0; }
int lg_models_check_config(const struct lg_runtime *rt, const struct lg_node *models, const char *file, char *err, size_t errlen) { (void)rt; (void)models; (void)file; (void)err; (void)errlen; return 0; }
int lg_models_start(struct lg_models *m, char *err, size_t errlen) { (void)m; (void)err; (void)errlen; return 0; }
int lg_models_reload(struct lg_models *m, const struct lg_core_config *cfg, char *err, size_t errlen) { (void)m; (void)cfg; (void)err; (void)errlen; return 0; }
void lg_models_stop(struct lg_models *m) { (void)m; }
struct lg_models_view *lg_models_view_get(struct lg_models *m) { (void)m; return NULL; }
void lg_models_view_put(struct lg_models_view *v) { (void)v; }
const struct lg_model *lg_models_find(const struct lg_models_view *v, const char *n) { (void)v; (void)n; return NULL; }
size_t lg_models_count(const struct lg_models_view *v) { (void)v; return 0; }
const struct lg_model *lg_models_at(const struct lg_models_view *v, size_t i) { (void)v; (void)i; return NULL; }
