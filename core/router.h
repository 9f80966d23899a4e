/* SPDX-License-Identifier: Apache-2.0 */
/* The route table: method + exact path pattern -> handler and policy.
 * Filled while plugins run init(), read-only once the server starts, so
 * workers read it without locks. */
#ifndef LG_ROUTER_H
#define LG_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include <llmgate/http.h>

#define LG_ROUTE_MAX_PARAMS 8

struct lg_plugin;
struct lg_router;

struct lg_route_entry {
	struct lg_route route;       /* method and path point into owned copies */
	void *ud;
	struct lg_plugin *owner;     /* NULL for the core's own routes */
	char **segs;                 /* the path split on '/' */
	char **pnames;               /* per segment: the parameter's bare name, or NULL */
	size_t nsegs;
	bool has_params;
	bool rest;                   /* the last segment is "{name...}" */
};

struct lg_route_match {
	const struct lg_route_entry *entry;
	size_t nparams;
	const char *names[LG_ROUTE_MAX_PARAMS];
	const char *values[LG_ROUTE_MAX_PARAMS]; /* point into the caller's buffer */
};

struct lg_router *lg_router_new(void);
void lg_router_free(struct lg_router *r);

/* -EINVAL (bad method or pattern, with @err) or -EEXIST (taken, with @err). */
int lg_router_add(struct lg_router *r, const struct lg_route *route, void *ud,
		  struct lg_plugin *owner, char *err, size_t errlen);

/* 0 and @m filled; -ENOENT: no route has this path; -EPERM: the path exists
 * for other methods (405), their names written to @allow.
 * Parameter values are written into @buf. */
int lg_router_match(const struct lg_router *r, const char *method, const char *path,
		    struct lg_route_match *m, char *buf, size_t buflen,
		    char *allow, size_t allowlen);

/* Calls @fn for every route, in registration order. */
void lg_router_each(const struct lg_router *r,
		    void (*fn)(const struct lg_route_entry *e, void *arg), void *arg);

#endif
