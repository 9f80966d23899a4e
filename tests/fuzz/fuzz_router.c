/* SPDX-License-Identifier: Apache-2.0 */
/* lg_router_match (core/router.h) of an arbitrary method and path against
 * a fixed table of realistic routes.
 *
 * Input: "METHOD PATH" (split at the first space; without one the whole
 * input is a GET path). The path ends at the first NUL, as the httpd's
 * decoded path does. An input whose first line starts with '+' first
 * registers "+METHOD PATTERN" as one more route (so the pattern checks of
 * lg_router_add are fuzzed too), and the rest is the request.
 *
 * Properties: no crash, no write outside the parameter and Allow buffers
 * (both allocated at their exact size); a match is real: the route's
 * method is the request's (HEAD served by GET), and substituting the
 * parameters into the route's pattern gives back the path exactly; a
 * parameter is never empty and holds no '/' unless it is the "{name...}"
 * one; -EPERM comes with a non-empty Allow list of known methods. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include <llmgate/http.h>

#include "fuzz.h"
#include "router.h"

#define PARAM_BUF 96            /* small: long segments overflow it */
#define ALLOW_BUF 24            /* small: truncation of the Allow list */

static void no_handler(struct lg_req *req, void *ud)
{
	(void)req;
	(void)ud;
}

static const struct { const char *method, *path; } table[] = {
	{ "GET", "/health" },
	{ "GET", "/metrics" },
	{ "GET", "/v1/models" },
	{ "GET", "/v1/models/{model...}" },
	{ "DELETE", "/v1/models/{model...}" },
	{ "POST", "/v1/chat/completions" },
	{ "POST", "/v1/completions" },
	{ "POST", "/v1/embeddings" },
	{ "POST", "/v1/rerank" },
	{ "POST", "/v1/audio/transcriptions" },
	{ "POST", "/v1/ocr" },
	{ "GET", "/v1/collections" },
	{ "POST", "/v1/collections" },
	{ "GET", "/v1/collections/{collection}" },
	{ "PATCH", "/v1/collections/{collection}" },
	{ "DELETE", "/v1/collections/{collection}" },
	{ "POST", "/v1/documents" },
	{ "GET", "/v1/documents/{document}" },
	{ "DELETE", "/v1/documents/{document}" },
	{ "GET", "/v1/documents/{document}/chunks/{chunk}" },
	{ "GET", "/v1/admin/keys" },
	{ "POST", "/v1/admin/keys" },
	{ "DELETE", "/v1/admin/keys/{key}" },
	{ "GET", "/v1/admin/users/{user}/keys/{key}" },
	{ "PUT", "/v1/admin/providers/{provider}/models/{model...}" },
};

#define N_ROUTES (sizeof table / sizeof table[0])

static int add_route(struct lg_router *r, const char *method, const char *path)
{
	struct lg_route rt = {
		.size = sizeof rt, .method = method, .path = path,
		.policy = LG_POLICY_KEY, .fn = no_handler,
	};
	char err[256];

	return lg_router_add(r, &rt, NULL, NULL, err, sizeof err);
}

static struct lg_router *make_router(void)
{
	struct lg_router *r = lg_router_new();

	FUZZ_CHECK(r != NULL);
	for (size_t i = 0; i < N_ROUTES; i++)
		FUZZ_CHECK(add_route(r, table[i].method, table[i].path) == 0);
	return r;
}

/* Splits "METHOD PATH" at the first space. Both are malloc'ed. */
static void split_request(const char *s, char **method, char **path)
{
	const char *sp = strchr(s, ' ');

	*method = strndup(sp ? s : "GET", sp ? (size_t)(sp - s) : 3);
	*path = strdup(sp ? sp + 1 : s);
	FUZZ_CHECK(*method && *path);
}

/* Rebuilds the path from the route's pattern and the parameters. */
static void check_match(const struct lg_route_match *m, const char *method, const char *path)
{
	const struct lg_route_entry *e = m->entry;
	const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
	const char *p = path;
	size_t param = 0;

	FUZZ_CHECK(e && strcmp(e->route.method, want) == 0);
	FUZZ_CHECK(m->nparams <= LG_ROUTE_MAX_PARAMS);
	for (size_t i = 0; i < e->nsegs; i++) {
		FUZZ_CHECK(*p == '/');
		p++;
		if (e->pnames[i]) {
			const char *v = m->values[param];
			size_t n = strlen(v);
			bool rest = e->rest && i == e->nsegs - 1;

			FUZZ_CHECK(param < m->nparams && strcmp(m->names[param], e->pnames[i]) == 0);
			FUZZ_CHECK(n > 0 && (rest || !strchr(v, '/')));
			FUZZ_CHECK(strncmp(p, v, n) == 0);
			p += n;
			param++;
		} else {
			size_t n = strlen(e->segs[i]);

			FUZZ_CHECK(strncmp(p, e->segs[i], n) == 0);
			p += n;
		}
	}
	FUZZ_CHECK(param == m->nparams);
	/* "/" is the route with no segment; otherwise nothing may remain. */
	FUZZ_CHECK(*p == '\0' || (e->nsegs == 0 && strcmp(p, "/") == 0));
}

static void check_allow(const char *allow)
{
	static const char *const methods[] = { "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD" };
	const char *p = allow;

	FUZZ_CHECK(strlen(allow) < ALLOW_BUF);
	while (*p) {
		size_t n = strcspn(p, ",");
		bool known = false;

		for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
			known |= strlen(methods[i]) == n && strncmp(p, methods[i], n) == 0;
		FUZZ_CHECK(known);
		p += n;
		if (*p) {
			FUZZ_CHECK(p[1] == ' ');
			p += 2;
		}
	}
}

static void match_one(const struct lg_router *r, const char *method, const char *path)
{
	char *buf = malloc(PARAM_BUF), *allow = malloc(ALLOW_BUF);
	struct lg_route_match m;
	int rc;

	FUZZ_CHECK(buf && allow);
	memset(&m, 0xa5, sizeof m);
	rc = lg_router_match(r, method, path, &m, buf, PARAM_BUF, allow, ALLOW_BUF);
	if (rc == 0) {
		check_match(&m, method, path);
	} else {
		FUZZ_CHECK(rc == -ENOENT || rc == -EPERM);
		check_allow(allow);
		FUZZ_CHECK(rc == -ENOENT || (path[0] == '/' && allow[0] != '\0'));
	}
	/* Without an Allow buffer the answer is the same. */
	FUZZ_CHECK(lg_router_match(r, method, path, &m, buf, PARAM_BUF, NULL, 0) == rc);
	free(buf);
	free(allow);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lg_router *r = make_router();
	/* Not strndup: the input is not NUL-terminated, and strict string
	 * checks (ASan) read a strndup source up to its NUL. */
	char *text = malloc(size + 1), *req = text, *method, *path;

	FUZZ_CHECK(text != NULL);
	memcpy(text, data, size);
	text[size] = '\0';
	if (text[0] == '+') {
		char *nl = strchr(text, '\n'), *pm, *pp;

		if (nl) {
			*nl = '\0';
			req = nl + 1;
		} else {
			req = text + strlen(text);
		}
		split_request(text + 1, &pm, &pp);
		/* Either taken, or refused with a reason; never half-added. */
		(void)add_route(r, pm, pp);
		free(pm);
		free(pp);
	}
	split_request(req, &method, &path);
	match_one(r, method, path);
	free(method);
	free(path);
	free(text);
	lg_router_free(r);
	return 0;
}
