/* SPDX-License-Identifier: Apache-2.0 */
#include "router.h"

#include <llmgate/plugin.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct lg_router {
	struct lg_route_entry *v;
	size_t n, cap;
};

static const char *const known_methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD" };

struct lg_router *lg_router_new(void)
{
	return calloc(1, sizeof(struct lg_router));
}

static void entry_free(struct lg_route_entry *e)
{
	for (size_t i = 0; i < e->nsegs; i++) {
		free(e->segs[i]);
		if (e->pnames)
			free(e->pnames[i]);
	}
	free(e->segs);
	free(e->pnames);
	free((char *)e->route.method);
	free((char *)e->route.path);
}

void lg_router_free(struct lg_router *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		entry_free(&r->v[i]);
	free(r->v);
	free(r);
}

static bool method_known(const char *m)
{
	for (size_t i = 0; i < LG_COUNT(known_methods); i++)
		if (strcmp(m, known_methods[i]) == 0)
			return true;
	return false;
}

static bool is_param(const char *seg)
{
	size_t n = strlen(seg);

	return n >= 3 && seg[0] == '{' && seg[n - 1] == '}';
}

static bool is_rest_param(const char *seg)
{
	size_t n = strlen(seg);

	return is_param(seg) && n >= 6 && memcmp(seg + n - 4, "...}", 4) == 0;
}

/* Splits "/a/{b}/c" into "a", "{b}", "c". "/" alone gives no segment. */
static int split_path(const char *path, char ***out, size_t *n)
{
	char **segs = NULL;
	size_t count = 0;
	const char *p = path + 1;

	*out = NULL;
	*n = 0;
	while (*p) {
		const char *slash = strchr(p, '/');
		size_t len = slash ? (size_t)(slash - p) : strlen(p);
		char **grown = realloc(segs, (count + 1) * sizeof *segs);

		if (!grown)
			goto fail;
		segs = grown;
		segs[count] = strndup(p, len);
		if (!segs[count])
			goto fail;
		count++;
		p += len;
		if (*p == '/')
			p++;
	}
	*out = segs;
	*n = count;
	return 0;
fail:
	for (size_t i = 0; i < count; i++)
		free(segs[i]);
	free(segs);
	return -ENOMEM;
}

static int check_pattern(char **segs, size_t n, char *err, size_t errlen, const char *path)
{
	size_t params = 0;

	for (size_t i = 0; i < n; i++) {
		if (segs[i][0] == '\0') {
			snprintf(err, errlen, "route %s: empty path segment", path);
			return -EINVAL;
		}
		if (is_param(segs[i])) {
			params++;
			if (is_rest_param(segs[i]) && i != n - 1) {
				snprintf(err, errlen, "route %s: {name...} must be the last segment", path);
				return -EINVAL;
			}
		} else if (strpbrk(segs[i], "{}")) {
			snprintf(err, errlen, "route %s: a parameter must be a whole segment", path);
			return -EINVAL;
		}
	}
	if (params > LG_ROUTE_MAX_PARAMS) {
		snprintf(err, errlen, "route %s: more than %d parameters", path, LG_ROUTE_MAX_PARAMS);
		return -EINVAL;
	}
	return 0;
}

/* "{id}" -> "id", "{model...}" -> "model"; literal segments get NULL. */
static int param_names(struct lg_route_entry *e)
{
	e->pnames = calloc(e->nsegs ? e->nsegs : 1, sizeof *e->pnames);
	if (!e->pnames)
		return -ENOMEM;
	for (size_t i = 0; i < e->nsegs; i++) {
		const char *seg = e->segs[i];
		size_t len;

		if (!is_param(seg))
			continue;
		len = strlen(seg) - 2 - (is_rest_param(seg) ? 3 : 0);
		e->pnames[i] = strndup(seg + 1, len);
		if (!e->pnames[i])
			return -ENOMEM;
		e->has_params = true;
	}
	return 0;
}

/* Two patterns collide when they would match the same paths. */
static bool same_shape(const struct lg_route_entry *a, char **segs, size_t n, bool rest)
{
	if (a->nsegs != n || a->rest != rest)
		return false;
	for (size_t i = 0; i < n; i++) {
		bool pa = is_param(a->segs[i]), pb = is_param(segs[i]);

		if (pa != pb || (!pa && strcmp(a->segs[i], segs[i]) != 0))
			return false;
	}
	return true;
}

int lg_router_add(struct lg_router *r, const struct lg_route *route, void *ud,
		  struct lg_plugin *owner, char *err, size_t errlen)
{
	struct lg_route_entry e = { 0 };
	int rc;

	if (!route || !route->method || !route->path || !route->fn) {
		snprintf(err, errlen, "route: method, path and handler are required");
		return -EINVAL;
	}
	if (!method_known(route->method)) {
		snprintf(err, errlen, "route %s %s: unknown method", route->method, route->path);
		return -EINVAL;
	}
	if (route->path[0] != '/' || strpbrk(route->path, "?#% \t")) {
		snprintf(err, errlen, "route %s: the path must start with '/' and hold no '?#%%' or blanks",
			 route->path);
		return -EINVAL;
	}
	if (route->policy < LG_POLICY_PUBLIC || route->policy > LG_POLICY_ADMIN) {
		snprintf(err, errlen, "route %s %s: no valid policy (public, key or admin)",
			 route->method, route->path);
		return -EINVAL;
	}
	rc = split_path(route->path, &e.segs, &e.nsegs);
	if (rc < 0) {
		snprintf(err, errlen, "out of memory");
		return rc;
	}
	rc = check_pattern(e.segs, e.nsegs, err, errlen, route->path);
	if (rc < 0)
		goto fail;
	e.rest = e.nsegs > 0 && is_rest_param(e.segs[e.nsegs - 1]);
	rc = param_names(&e);
	if (rc < 0)
		goto fail;
	for (size_t i = 0; i < r->n; i++) {
		if (strcmp(r->v[i].route.method, route->method) == 0 &&
		    same_shape(&r->v[i], e.segs, e.nsegs, e.rest)) {
			snprintf(err, errlen, "route %s %s is already registered (as %s)",
				 route->method, route->path, r->v[i].route.path);
			rc = -EEXIST;
			goto fail;
		}
	}
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 32;
		struct lg_route_entry *v = realloc(r->v, cap * sizeof *v);

		if (!v) {
			rc = -ENOMEM;
			goto fail;
		}
		r->v = v;
		r->cap = cap;
	}
	e.route = *route;
	e.route.method = strdup(route->method);
	e.route.path = strdup(route->path);
	if (!e.route.method || !e.route.path) {
		rc = -ENOMEM;
		goto fail;
	}
	e.ud = ud;
	e.owner = owner;
	r->v[r->n++] = e;
	return 0;
fail:
	entry_free(&e);
	return rc;
}

/* Matches @path against @e, copying parameter values into @buf. */
static bool match_entry(const struct lg_route_entry *e, const char *path,
			struct lg_route_match *m, char *buf, size_t buflen)
{
	const char *p = path + 1;
	size_t used = 0;

	m->nparams = 0;
	for (size_t i = 0; i < e->nsegs; i++) {
		const char *seg = e->segs[i];
		bool last = i == e->nsegs - 1;
		size_t len;

		if (*p == '\0')
			return false;
		len = (last && e->rest) ? strlen(p) : strcspn(p, "/");
		if (len == 0)
			return false;
		if (is_param(seg)) {
			if (used + len + 1 > buflen)
				return false;
			memcpy(buf + used, p, len);
			buf[used + len] = '\0';
			m->names[m->nparams] = e->pnames[i];
			m->values[m->nparams++] = buf + used;
			used += len + 1;
		} else if (strlen(seg) != len || memcmp(seg, p, len) != 0) {
			return false;
		}
		p += len;
		if (*p == '/')
			p++;
		else if (*p != '\0')
			return false;
	}
	/* A trailing slash is a different path. */
	return *p == '\0' && !(p > path + 1 && p[-1] == '/');
}

int lg_router_match(const struct lg_router *r, const char *method, const char *path,
		    struct lg_route_match *m, char *buf, size_t buflen,
		    char *allow, size_t allowlen)
{
	size_t allow_used = 0;
	bool path_known = false;
	/* HEAD is served by the GET route (the httpd sends no body). */
	const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;

	if (allow && allowlen)
		allow[0] = '\0';
	if (path[0] != '/')
		return -ENOENT;
	/* Routes without parameters first: "/v1/models/x" exact beats "{model...}". */
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < r->n; i++) {
			const struct lg_route_entry *e = &r->v[i];

			if (e->has_params != (pass == 1))
				continue;
			if (!match_entry(e, path, m, buf, buflen))
				continue;
			if (strcmp(e->route.method, want) == 0) {
				m->entry = e;
				return 0;
			}
			path_known = true;
			if (allow && allow_used + strlen(e->route.method) + 3 < allowlen &&
			    !strstr(allow, e->route.method)) {
				allow_used += (size_t)snprintf(allow + allow_used, allowlen - allow_used,
							       "%s%s", allow_used ? ", " : "",
							       e->route.method);
			}
		}
	}
	m->entry = NULL;
	m->nparams = 0;
	return path_known ? -EPERM : -ENOENT;
}

void lg_router_each(const struct lg_router *r,
		    void (*fn)(const struct lg_route_entry *e, void *arg), void *arg)
{
	for (size_t i = 0; i < r->n; i++)
		fn(&r->v[i], arg);
}
