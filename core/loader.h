/* SPDX-License-Identifier: Apache-2.0 */
/* Finding, opening, checking, ordering and running plugins. Every refusal
 * is one line that names the file, both values and the fix. */
#ifndef LG_LOADER_H
#define LG_LOADER_H

#include <stddef.h>

#include "runtime.h"

/* The directories searched for <name>.so: @explicit_dirs if any (from
 * --plugin-dir), else $LLMGATE_PLUGIN_PATH (colon-separated), else the
 * installed plugin directory. Returns a NULL-terminated malloc'ed array of
 * malloc'ed strings (lg_strv_free). */
char **lg_plugin_search_path(const char *const *explicit_dirs);
void lg_strv_free(char **v);

/* Opens and checks one plugin file; @expect_name NULL skips the name check.
 * @loaded/@nloaded are the plugins already loaded, for the duplicate check. */
int lg_plugin_open(const char *path, const char *expect_name, struct lg_plugin *const *loaded,
		   size_t nloaded, struct lg_plugin **out, char *err, size_t errlen);
void lg_plugin_close(struct lg_plugin *p);

/* Loads the plugins of rt->cfg: finds, opens and checks each, orders them by
 * `requires`, and validates each block against its settings table. */
int lg_plugins_load(struct lg_runtime *rt, char *const *search_path, char *err, size_t errlen);
/* init() in dependency order; on a failure the ones already initialised get
 * fini() in reverse order. Ends the registration window. */
int lg_plugins_init(struct lg_runtime *rt, char *err, size_t errlen);
int lg_plugins_start(struct lg_runtime *rt, char *err, size_t errlen);
void lg_plugins_stop(struct lg_runtime *rt);
void lg_plugins_fini(struct lg_runtime *rt);
void lg_plugins_free(struct lg_runtime *rt);

#endif
