/* SPDX-License-Identifier: Apache-2.0 */
/* What the provider plugins share: their state, registering a type, memory
 * tied to a request, JSON bodies and base64. Header-only (static inline), so
 * that each plugin stays one self-contained shared module that calls only
 * the host vtable, libc and jansson. */
#ifndef LLMGATE_PROVIDER_COMMON_H
#define LLMGATE_PROVIDER_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <llmgate/host.h>
#include <llmgate/provider.h>

/* The state of a provider plugin, handed to every op as @ud. A plugin that
 * needs more embeds it as the first member of its own struct. */
struct lgp_ctx {
	const struct lg_host *host;
	struct lg_plugin *self;
};

/* A zeroed state of @size bytes (at least sizeof(struct lgp_ctx)).
 * Ownership: the caller's until lgp_provider_add() succeeds. */
static inline void *lgp_state_new(struct lg_plugin *self, const struct lg_host *host, size_t size)
{
	struct lgp_ctx *ctx = calloc(1, size);

	if (!ctx) {
		host->set_error(self, "out of memory");
		return NULL;
	}
	ctx->host = host;
	ctx->self = self;
	return ctx;
}

/* Registers @ops with @ctx as its ud and makes @ctx the plugin's state,
 * which lgp_fini() frees. On failure the error is set and @ctx is still
 * the caller's. Thread: init. */
static inline int lgp_provider_add(struct lgp_ctx *ctx, const struct lg_provider_ops *ops)
{
	int rc = ctx->host->provider_add(ctx->self, ops, ctx);

	if (rc < 0) {
		ctx->host->set_error(ctx->self, "cannot register provider type \"%s\": %s",
				     ops->type, strerror(-rc));
		return rc;
	}
	ctx->host->set_data(ctx->self, ctx);
	return 0;
}

/* init() of a type that needs no settings. */
static inline int lgp_init(struct lg_plugin *self, const struct lg_host *host,
			   const struct lg_provider_ops *ops)
{
	struct lgp_ctx *ctx = lgp_state_new(self, host, sizeof *ctx);
	int rc;

	if (!ctx)
		return -ENOMEM;
	rc = lgp_provider_add(ctx, ops);
	if (rc < 0)
		free(ctx);
	return rc;
}

/* fini(): runs only when init() succeeded, so the state is there. */
static inline void lgp_fini(struct lg_plugin *self, const struct lg_host *host)
{
	free(host->get_data(self));
}

/* "@a@b" in memory of the request, NUL-terminated, or NULL. */
static inline char *lgp_req_concat(const struct lgp_ctx *ctx, struct lg_req *req,
				   const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = ctx->host->req_alloc(req, la + lb + 1);

	if (!s)
		return NULL;
	memcpy(s, a, la);
	memcpy(s + la, b, lb + 1);
	return s;
}

/* Points @call at @path of the provider's base URL (POST stays). */
static inline int lgp_set_path(const struct lgp_ctx *ctx, struct lg_req *req,
			       const struct lg_provider_conf *p, struct lg_upstream_call *call,
			       const char *path)
{
	char *url;

	if (!p->url)
		return -EINVAL;
	url = lgp_req_concat(ctx, req, p->url, path);
	if (!url)
		return -ENOMEM;
	call->request.url = url;
	return 0;
}

/* @s parsed as a JSON object, or NULL when it is not one.
 * Ownership: the caller's (json_decref). */
static inline json_t *lgp_json_object(struct lg_str s)
{
	json_t *v;

	if (!s.ptr)
		return NULL;
	v = json_loadb(s.ptr, s.len, JSON_REJECT_DUPLICATES, NULL);
	if (v && !json_is_object(v)) {
		json_decref(v);
		v = NULL;
	}
	return v;
}

/* Serialises @v into memory of the request: sized first, then written in
 * place, so there is no intermediate copy. */
static inline int lgp_json_dump_req(const struct lgp_ctx *ctx, struct lg_req *req,
				    const json_t *v, struct lg_str *out)
{
	size_t n = json_dumpb(v, NULL, 0, JSON_COMPACT);
	char *buf;

	if (n == 0)
		return -EINVAL;
	buf = ctx->host->req_alloc(req, n);
	if (!buf)
		return -ENOMEM;
	if (json_dumpb(v, buf, n, JSON_COMPACT) != n)
		return -EINVAL;
	*out = (struct lg_str){ .ptr = buf, .len = n };
	return 0;
}

/* ---- base64 (RFC 4648, with padding) ---- */

static inline size_t lgp_base64_len(size_t n)
{
	return (n + 2) / 3 * 4;
}

/* Writes lgp_base64_len(@n) characters to @out (no NUL). */
static inline void lgp_base64_encode(const void *in, size_t n, char *out)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = in;
	size_t i;

	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];

		*out++ = alphabet[v >> 18 & 63];
		*out++ = alphabet[v >> 12 & 63];
		*out++ = alphabet[v >> 6 & 63];
		*out++ = alphabet[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);

		*out++ = alphabet[v >> 18 & 63];
		*out++ = alphabet[v >> 12 & 63];
		*out++ = i + 1 < n ? alphabet[v >> 6 & 63] : '=';
		*out++ = '=';
	}
}

#endif /* LLMGATE_PROVIDER_COMMON_H */
