/* SPDX-License-Identifier: Apache-2.0 */
#include "loader.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/event.h>

#include "lg_build.h"
#include "log.h"

void lg_strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

static int strv_push(char ***v, size_t *n, const char *s, size_t len)
{
	char **grown = realloc(*v, (*n + 2) * sizeof **v);

	if (!grown)
		return -ENOMEM;
	*v = grown;
	grown[*n] = strndup(s, len);
	if (!grown[*n])
		return -ENOMEM;
	grown[++*n] = NULL;
	return 0;
}

char **lg_plugin_search_path(const char *const *explicit_dirs)
{
	char **v = NULL;
	size_t n = 0;
	const char *env = getenv("LLMGATE_PLUGIN_PATH");

	if (explicit_dirs && explicit_dirs[0]) {
		for (const char *const *d = explicit_dirs; *d; d++)
			if (strv_push(&v, &n, *d, strlen(*d)) < 0)
				goto fail;
	} else if (env && *env) {
		for (const char *p = env; *p;) {
			size_t len = strcspn(p, ":");

			if (len > 0 && strv_push(&v, &n, p, len) < 0)
				goto fail;
			p += len;
			if (*p == ':')
				p++;
		}
	}
	if (n == 0 && strv_push(&v, &n, LG_PLUGIN_DIR, strlen(LG_PLUGIN_DIR)) < 0)
		goto fail;
	return v;
fail:
	lg_strv_free(v);
	return NULL;
}

/* The plugin name rule: [a-z][a-z0-9_]*, so no '/' and no "..". */
static bool plugin_name_ok(const char *s)
{
	if (!s || !(*s >= 'a' && *s <= 'z'))
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
			return false;
	return true;
}

/* The checks of plugin-abi-style §2.2, in order: major, size, minor, name,
 * duplicates, libevent. */
static int check_descriptor(const char *path, const struct lg_plugin_info *info,
			    const char *expect_name, struct lg_plugin *const *loaded,
			    size_t nloaded, char *err, size_t errlen)
{
	unsigned run_ev = event_get_version_number() >> 16, built_ev = info->libevent_version >> 16;
	size_t base_size = offsetof(struct lg_plugin_info, fini) + sizeof(info->fini);

	if (info->abi_major != LG_ABI_MAJOR) {
		snprintf(err, errlen, "%s: plugin ABI major is %u, this llmgate speaks %u: rebuild "
			 "the plugin against llmgate-plugin-%u", path, info->abi_major,
			 LG_ABI_MAJOR, LG_ABI_MAJOR);
		return -1;
	}
	if (info->size < base_size) {
		snprintf(err, errlen, "%s: plugin descriptor is %u bytes, ABI %u.0 needs at least "
			 "%zu: rebuild the plugin with LG_PLUGIN() from <llmgate/plugin.h>", path,
			 info->size, LG_ABI_MAJOR, base_size);
		return -1;
	}
	if (info->abi_minor > LG_ABI_MINOR) {
		snprintf(err, errlen, "%s: plugin needs ABI %u.%u, this llmgate has %u.%u: upgrade "
			 "llmgate or rebuild the plugin against this llmgate's SDK", path,
			 info->abi_major, info->abi_minor, LG_ABI_MAJOR, LG_ABI_MINOR);
		return -1;
	}
	if (!plugin_name_ok(info->name)) {
		snprintf(err, errlen, "%s: plugin name \"%s\" is invalid: use [a-z][a-z0-9_]*",
			 path, info->name ? info->name : "(null)");
		return -1;
	}
	for (size_t i = 0; i < nloaded; i++) {
		if (strcmp(loaded[i]->name, info->name) == 0) {
			snprintf(err, errlen, "%s: plugin name \"%s\" is already taken by %s: each "
				 "plugin needs its own name", path, info->name, loaded[i]->path);
			return -1;
		}
	}
	if (expect_name && strcmp(info->name, expect_name) != 0) {
		snprintf(err, errlen, "%s: plugin declares the name \"%s\" but is loaded as \"%s\": "
			 "name the file %s.so", path, info->name, expect_name, info->name);
		return -1;
	}
	if (run_ev != built_ev) {
		snprintf(err, errlen, "%s: plugin was built with libevent %u.%u, llmgate runs %u.%u: "
			 "rebuild the plugin", path, built_ev >> 8, built_ev & 0xff, run_ev >> 8,
			 run_ev & 0xff);
		return -1;
	}
	return 0;
}

int lg_plugin_open(const char *path, const char *expect_name, struct lg_plugin *const *loaded,
		   size_t nloaded, struct lg_plugin **out, char *err, size_t errlen)
{
	const struct lg_plugin_info *(*entry)(void);
	const struct lg_plugin_info *info;
	struct lg_plugin *p;
	struct stat st;
	void *dl;

	*out = NULL;
	if (stat(path, &st) != 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	/* Whoever can write the file can run code in the gateway. */
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		snprintf(err, errlen, "%s: refused: the file is group- or world-writable "
			 "(chmod go-w %s)", path, path);
		return -1;
	}
	dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		snprintf(err, errlen, "%s: cannot load: %s (check its libraries with ldd %s)",
			 path, dlerror(), path);
		return -1;
	}
	*(void **)&entry = dlsym(dl, LG_PLUGIN_SYMBOL);
	if (!entry) {
		snprintf(err, errlen, "%s: not an llmgate plugin: it exports no %s() (end the "
			 "plugin with LG_PLUGIN(...) from <llmgate/plugin.h>)", path, LG_PLUGIN_SYMBOL);
		goto fail;
	}
	info = entry();
	if (!info) {
		snprintf(err, errlen, "%s: %s() returned no descriptor", path, LG_PLUGIN_SYMBOL);
		goto fail;
	}
	if (check_descriptor(path, info, expect_name, loaded, nloaded, err, errlen) < 0)
		goto fail;
	p = calloc(1, sizeof *p);
	if (!p || !(p->name = strdup(info->name)) || !(p->path = strdup(path))) {
		if (p)
			free(p->name);
		free(p);
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	p->dl = dl;
	p->info = info;
	pthread_mutex_init(&p->ready_lock, NULL);
	*out = p;
	return 0;
fail:
	dlclose(dl);
	return -1;
}

/* Plugins stay mapped until exit, as in PostgreSQL: nothing they
 * registered can be unhooked safely, so there is no dlclose() here. */
void lg_plugin_close(struct lg_plugin *p)
{
	if (!p)
		return;
	lg_settings_free(p->settings);
	pthread_mutex_destroy(&p->ready_lock);
	free(p->name);
	free(p->path);
	free(p);
}

static int find_plugin_file(char *const *search_path, const char *name, char *out, size_t len)
{
	for (char *const *d = search_path; *d; d++) {
		struct stat st;

		snprintf(out, len, "%s/%s.so", *d, name);
		if (stat(out, &st) == 0)
			return 0;
	}
	return -1;
}

static size_t plugin_index(struct lg_plugin **v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i]->name, name) == 0)
			return i;
	return (size_t)-1;
}

/* Depth-first topological sort: each plugin after everything it requires,
 * otherwise in the order of the file. */
static int visit(struct lg_plugin **in, size_t n, size_t i, unsigned char *state,
		 struct lg_plugin **out, size_t *nout, const char *file, char *err, size_t errlen)
{
	const char *const *req = in[i]->info->requires;

	if (state[i] == 2)
		return 0;
	if (state[i] == 1) {
		snprintf(err, errlen, "%s: plugins: plugin \"%s\" is part of a `requires` cycle",
			 file, in[i]->name);
		return -1;
	}
	state[i] = 1;
	for (; req && *req; req++) {
		size_t j = plugin_index(in, n, *req);

		if (j == (size_t)-1) {
			snprintf(err, errlen, "%s: plugins: plugin \"%s\" requires \"%s\", which is "
				 "not loaded: add `%s: {}` under plugins:", file, in[i]->name, *req, *req);
			return -1;
		}
		if (visit(in, n, j, state, out, nout, file, err, errlen) < 0)
			return -1;
	}
	state[i] = 2;
	out[(*nout)++] = in[i];
	return 0;
}

static int order_plugins(struct lg_runtime *rt, char *err, size_t errlen)
{
	size_t n = rt->nplugins, nout = 0;
	struct lg_plugin **out = calloc(n + 1, sizeof *out);
	unsigned char *state = calloc(n + 1, 1);
	int rc = -1;

	if (!out || !state) {
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	for (size_t i = 0; i < n; i++)
		if (visit(rt->plugins, n, i, state, out, &nout, rt->cfg->doc->path, err, errlen) < 0)
			goto done;
	memcpy(rt->plugins, out, n * sizeof *out);
	for (size_t i = 0; i < n; i++)
		rt->plugins[i]->index = i;
	rc = 0;
done:
	free(out);
	free(state);
	return rc;
}

int lg_plugins_load(struct lg_runtime *rt, char *const *search_path, char *err, size_t errlen)
{
	const struct lg_core_config *cfg = rt->cfg;
	char path[4096], section[128];

	rt->plugins = calloc(cfg->n_plugins + 1, sizeof *rt->plugins);
	if (!rt->plugins) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (size_t i = 0; i < cfg->n_plugins; i++) {
		const struct lg_plugin_decl *d = &cfg->plugins[i];
		struct lg_plugin *p;

		if (!plugin_name_ok(d->name)) {
			snprintf(err, errlen, "%s:%d: plugins.%s: invalid plugin name: use "
				 "[a-z][a-z0-9_]*", cfg->doc->path, d->line, d->name);
			return -1;
		}
		if (find_plugin_file(search_path, d->name, path, sizeof path) < 0) {
			snprintf(err, errlen, "%s:%d: plugins.%s: no %s.so in the plugin path (%s%s): "
				 "install the plugin or pass --plugin-dir", cfg->doc->path, d->line,
				 d->name, d->name, search_path[0], search_path[1] ? ", ..." : "");
			return -1;
		}
		if (lg_plugin_open(path, d->name, rt->plugins, rt->nplugins, &p, err, errlen) < 0)
			return -1;
		p->rt = rt;
		rt->plugins[rt->nplugins++] = p;
		snprintf(section, sizeof section, "plugins.%s", d->name);
		if (lg_settings_bind(cfg->doc->path, section, d->block, p->info->settings,
				     p->info->settings ? p->info->n_settings : 0, &p->settings,
				     err, errlen) < 0)
			return -1;
	}
	return order_plugins(rt, err, errlen);
}

static void fini_reverse(struct lg_runtime *rt)
{
	for (size_t i = rt->nplugins; i-- > 0;) {
		struct lg_plugin *p = rt->plugins[i];

		if (p->initialized && p->info->fini)
			p->info->fini(p, &lg_host_api);
		p->initialized = false;
	}
}

int lg_plugins_init(struct lg_runtime *rt, char *err, size_t errlen)
{
	for (size_t i = 0; i < rt->nplugins; i++) {
		struct lg_plugin *p = rt->plugins[i];
		int rc = p->info->init ? p->info->init(p, &lg_host_api) : 0;

		if (rc != 0) {
			snprintf(err, errlen, "%s: plugin \"%s\" failed to initialise: %s", p->path,
				 p->name, p->error[0] ? p->error : strerror(rc < 0 ? -rc : EINVAL));
			fini_reverse(rt);
			lg_registry_freeze(rt->registry);
			return -1;
		}
		p->initialized = true;
		lg_debug("core", "plugin %s %s initialised", p->name, p->info->version);
	}
	lg_registry_freeze(rt->registry);
	return 0;
}

int lg_plugins_start(struct lg_runtime *rt, char *err, size_t errlen)
{
	for (size_t i = 0; i < rt->nplugins; i++) {
		struct lg_plugin *p = rt->plugins[i];
		int rc = p->info->start ? p->info->start(p, &lg_host_api) : 0;

		if (rc != 0) {
			snprintf(err, errlen, "%s: plugin \"%s\" failed to start: %s", p->path, p->name,
				 p->error[0] ? p->error : strerror(rc < 0 ? -rc : EINVAL));
			return -1;
		}
		p->started = true;
	}
	return 0;
}

void lg_plugins_stop(struct lg_runtime *rt)
{
	for (size_t i = rt->nplugins; i-- > 0;) {
		struct lg_plugin *p = rt->plugins[i];

		if (p->started && p->info->stop)
			p->info->stop(p, &lg_host_api);
		p->started = false;
	}
}

void lg_plugins_fini(struct lg_runtime *rt)
{
	fini_reverse(rt);
}

void lg_plugins_free(struct lg_runtime *rt)
{
	for (size_t i = 0; i < rt->nplugins; i++)
		lg_plugin_close(rt->plugins[i]);
	free(rt->plugins);
	rt->plugins = NULL;
	rt->nplugins = 0;
}
