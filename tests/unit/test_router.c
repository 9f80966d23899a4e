/* SPDX-License-Identifier: Apache-2.0 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "router.h"

static void handler(struct lg_req *req, void *ud)
{
	(void)req;
	(void)ud;
}

static struct lg_route route(const char *method, const char *path)
{
	return (struct lg_route){ sizeof(struct lg_route), method, path, LG_POLICY_KEY, 0, handler };
}

static int add(struct lg_router *r, const char *method, const char *path)
{
	struct lg_route rt = route(method, path);
	char err[256];

	return lg_router_add(r, &rt, NULL, NULL, err, sizeof err);
}

static int match(struct lg_router *r, const char *method, const char *path,
		 struct lg_route_match *m, char *allow)
{
	static char buf[512];

	return lg_router_match(r, method, path, m, buf, sizeof buf, allow, 64);
}

static void exact_and_params(void **state)
{
	struct lg_router *r = lg_router_new();
	struct lg_route_match m;
	char allow[64];

	(void)state;
	assert_int_equal(add(r, "GET", "/v1/models"), 0);
	assert_int_equal(add(r, "GET", "/v1/models/{model...}"), 0);
	assert_int_equal(add(r, "GET", "/v1/collections/{id}"), 0);
	assert_int_equal(add(r, "DELETE", "/v1/collections/{id}"), 0);
	assert_int_equal(add(r, "GET", "/v1/documents/{id}/chunks/{chunk}"), 0);

	assert_int_equal(match(r, "GET", "/v1/models", &m, allow), 0);
	assert_string_equal(m.entry->route.path, "/v1/models");
	assert_int_equal(m.nparams, 0);

	/* A model name may contain '/'. */
	assert_int_equal(match(r, "GET", "/v1/models/BAAI/bge-m3", &m, allow), 0);
	assert_string_equal(m.entry->route.path, "/v1/models/{model...}");
	assert_int_equal(m.nparams, 1);
	assert_string_equal(m.names[0], "model");
	assert_string_equal(m.values[0], "BAAI/bge-m3");

	assert_int_equal(match(r, "GET", "/v1/documents/12/chunks/3", &m, allow), 0);
	assert_int_equal(m.nparams, 2);
	assert_string_equal(m.names[0], "id");
	assert_string_equal(m.values[0], "12");
	assert_string_equal(m.names[1], "chunk");
	assert_string_equal(m.values[1], "3");

	/* HEAD is served by the GET route. */
	assert_int_equal(match(r, "HEAD", "/v1/collections/5", &m, allow), 0);
	lg_router_free(r);
}

static void not_found_and_method(void **state)
{
	struct lg_router *r = lg_router_new();
	struct lg_route_match m;
	char allow[64];

	(void)state;
	assert_int_equal(add(r, "GET", "/v1/collections/{id}"), 0);
	assert_int_equal(add(r, "DELETE", "/v1/collections/{id}"), 0);
	assert_int_equal(match(r, "GET", "/v1/collections", &m, allow), -ENOENT);
	assert_int_equal(match(r, "GET", "/v1/collections/", &m, allow), -ENOENT);
	assert_int_equal(match(r, "GET", "/v1/collections/5/", &m, allow), -ENOENT);
	assert_int_equal(match(r, "GET", "/v1/collections/5/x", &m, allow), -ENOENT);
	assert_int_equal(match(r, "GET", "/v1//5", &m, allow), -ENOENT);
	assert_int_equal(match(r, "GET", "relative", &m, allow), -ENOENT);
	assert_int_equal(match(r, "POST", "/v1/collections/5", &m, allow), -EPERM);
	assert_string_equal(allow, "GET, DELETE");
	assert_null(m.entry);
	lg_router_free(r);
}

static void refusals(void **state)
{
	struct lg_router *r = lg_router_new();
	struct lg_route bad = route("GET", "/x");
	char err[256];

	(void)state;
	assert_int_equal(add(r, "GET", "/v1/keys/{id}"), 0);
	/* Same shape, other parameter name: still the same paths. */
	assert_int_equal(add(r, "GET", "/v1/keys/{key}"), -EEXIST);
	assert_int_equal(add(r, "POST", "/v1/keys/{key}"), 0);
	assert_int_equal(add(r, "BREW", "/coffee"), -EINVAL);
	assert_int_equal(add(r, "GET", "no-slash"), -EINVAL);
	assert_int_equal(add(r, "GET", "/a?b"), -EINVAL);
	assert_int_equal(add(r, "GET", "/a//b"), -EINVAL);
	assert_int_equal(add(r, "GET", "/a/{rest...}/b"), -EINVAL);
	assert_int_equal(add(r, "GET", "/a/x{id}"), -EINVAL);
	bad.policy = 0;
	assert_int_equal(lg_router_add(r, &bad, NULL, NULL, err, sizeof err), -EINVAL);
	assert_non_null(strstr(err, "policy"));
	bad = route("GET", "/x");
	bad.fn = NULL;
	assert_int_equal(lg_router_add(r, &bad, NULL, NULL, err, sizeof err), -EINVAL);
	lg_router_free(r);
}

static void param_overflow(void **state)
{
	struct lg_router *r = lg_router_new();
	struct lg_route_match m;
	char small[4];

	(void)state;
	assert_int_equal(add(r, "GET", "/a/{id}"), 0);
	/* A value that does not fit the caller's buffer is no match, not an overflow. */
	assert_int_equal(lg_router_match(r, "GET", "/a/123456", &m, small, sizeof small, NULL, 0),
			 -ENOENT);
	lg_router_free(r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(exact_and_params),
		cmocka_unit_test(not_found_and_method),
		cmocka_unit_test(refusals),
		cmocka_unit_test(param_overflow),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
