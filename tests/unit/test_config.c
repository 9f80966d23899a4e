/* SPDX-License-Identifier: Apache-2.0 */
/* config.yml: ${VAR} substitution, the YAML subset, line numbers, loading
 * real files, and the core's own sections. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#define UNSET "LG_TEST_CFG_UNSET"

/* The shipped config.example.yml, found from this file's path: meson
 * compiles it by a path relative to the build directory, where tests run. */
static char *example_config_path(void)
{
	static const char tail[] = "tests/unit/test_config.c";
	const char *file = __FILE__;
	size_t n = strlen(file);
	char *path;

	assert_true(n >= strlen(tail));
	assert_string_equal(file + n - strlen(tail), tail);
	if (asprintf(&path, "%.*sconfig.example.yml", (int)(n - strlen(tail)), file) < 0)
		fail_msg("out of memory");
	return path;
}

static int setup_env(void **state)
{
	(void)state;
	if (setenv("LG_TEST_CFG_HOST", "db.example", 1) != 0 ||
	    setenv("LG_TEST_CFG_EMPTY", "", 1) != 0 ||
	    setenv("LG_TEST_CFG_PASSWORD", "pa ss#word", 1) != 0 ||
	    setenv("LG_TEST_CFG_LONG", "a-rather-long-value-that-is-longer-than-its-reference", 1) ||
	    setenv("LG_TEST_CFG_MULTI", "line1\nline2", 1) != 0 || unsetenv(UNSET) != 0)
		return -1;
	return 0;
}

static struct lg_config_doc *parse(const char *text)
{
	struct lg_config_doc *doc = NULL;
	char err[512] = "";

	if (lg_config_parse("t.yml", text, strlen(text), &doc, err, sizeof err) != 0)
		fail_msg("parse failed: %s", err);
	assert_non_null(doc);
	assert_non_null(doc->root);
	assert_int_equal(doc->root->kind, LG_NODE_MAP);
	return doc;
}

static void expect_parse_error(const char *text, const char *expected)
{
	struct lg_config_doc *doc = (void *)1;
	char err[512] = "";

	assert_int_equal(lg_config_parse("t.yml", text, strlen(text), &doc, err, sizeof err),
			 -EINVAL);
	assert_null(doc);
	assert_string_equal(err, expected);
}

/* The text of the scalar at @key of the root map. */
static const char *scalar_at(const struct lg_config_doc *doc, const char *key)
{
	const struct lg_node *n = lg_node_get(doc->root, key);

	assert_non_null(n);
	assert_int_equal(n->kind, LG_NODE_SCALAR);
	return n->scalar;
}

/* ---- substitution ---- */

static void test_subst_set(void **state)
{
	struct lg_config_doc *doc;

	(void)state;
	doc = parse("url: postgresql://u@${LG_TEST_CFG_HOST}:5432/db\n"
		    "d: ${LG_TEST_CFG_HOST:-unused}\n");
	assert_string_equal(scalar_at(doc, "url"), "postgresql://u@db.example:5432/db");
	assert_string_equal(scalar_at(doc, "d"), "db.example");
	lg_config_doc_free(doc);
}

static void test_subst_default(void **state)
{
	struct lg_config_doc *doc;

	(void)state;
	doc = parse("a: ${" UNSET ":-fallback}\n"
		    "b: ${LG_TEST_CFG_EMPTY:-used when empty}\n"
		    "c: x${" UNSET ":-a b:c}y\n"
		    "e: '${LG_TEST_CFG_EMPTY}'\n");
	assert_string_equal(scalar_at(doc, "a"), "fallback");
	assert_string_equal(scalar_at(doc, "b"), "used when empty");
	assert_string_equal(scalar_at(doc, "c"), "xa b:cy");
	/* Set but empty, without a default: the empty text. */
	assert_string_equal(scalar_at(doc, "e"), "");
	lg_config_doc_free(doc);
}

static void test_subst_empty_default(void **state)
{
	struct lg_config_doc *doc;

	(void)state;
	doc = parse("a: x${" UNSET ":-}y\nb: ${" UNSET ":-}\nc: \"${" UNSET ":-}\"\n");
	assert_string_equal(scalar_at(doc, "a"), "xy");
	/* Plain and empty: no value. Quoted: an empty string. */
	assert_int_equal(lg_node_get(doc->root, "b")->kind, LG_NODE_NULL);
	assert_string_equal(scalar_at(doc, "c"), "");
	lg_config_doc_free(doc);
}

static void test_subst_unset_error(void **state)
{
	(void)state;
	expect_parse_error("a: 1\nb: 2\nurl: ${" UNSET "}\n",
			   "t.yml:3: environment variable " UNSET " is not set "
			   "(use ${" UNSET ":-default})");
	/* Inside a quoted scalar too, and on the right line. */
	expect_parse_error("a:\n  b: \"x ${" UNSET "} y\"\n",
			   "t.yml:2: environment variable " UNSET " is not set "
			   "(use ${" UNSET ":-default})");
}

static void test_subst_literal(void **state)
{
	struct lg_config_doc *doc;

	(void)state;
	doc = parse("a: $${" UNSET "}\nb: \"$${X:-y}\"\nc: cost $5 and $$x\nd: $\n");
	assert_string_equal(scalar_at(doc, "a"), "${" UNSET "}");
	assert_string_equal(scalar_at(doc, "b"), "${X:-y}");
	assert_string_equal(scalar_at(doc, "c"), "cost $5 and $$x");
	assert_string_equal(scalar_at(doc, "d"), "$");
	lg_config_doc_free(doc);
}

static void test_subst_quoted_and_plain(void **state)
{
	struct lg_config_doc *doc;
	const struct lg_node *n;

	(void)state;
	doc = parse("dq: \"pre ${LG_TEST_CFG_HOST} post\"\n"
		    "sq: 'x${LG_TEST_CFG_HOST}'\n"
		    "pl: plain${LG_TEST_CFG_HOST}\n"
		    "pw: \"${LG_TEST_CFG_PASSWORD}\"\n"
		    "list: [${LG_TEST_CFG_HOST}, \"${LG_TEST_CFG_HOST}\"]\n");
	n = lg_node_get(doc->root, "dq");
	assert_string_equal(n->scalar, "pre db.example post");
	assert_true(n->quoted);
	n = lg_node_get(doc->root, "sq");
	assert_string_equal(n->scalar, "xdb.example");
	assert_true(n->quoted);
	n = lg_node_get(doc->root, "pl");
	assert_string_equal(n->scalar, "plaindb.example");
	assert_false(n->quoted);
	/* Quoting keeps a '#' in a value from starting a comment. */
	assert_string_equal(scalar_at(doc, "pw"), "pa ss#word");
	n = lg_node_get(doc->root, "list");
	assert_int_equal(n->kind, LG_NODE_SEQ);
	assert_int_equal(n->n, 2);
	assert_string_equal(n->items[0]->scalar, "db.example");
	assert_string_equal(n->items[1]->scalar, "db.example");
	lg_config_doc_free(doc);
}

static void test_subst_comments(void **state)
{
	struct lg_config_doc *doc;

	(void)state;
	/* Comment lines are not substituted, as in OpenGateLLM. */
	doc = parse("# uses ${" UNSET "} and ${BROKEN\n  # ${" UNSET "}\na: 1\n");
	assert_string_equal(scalar_at(doc, "a"), "1");
	lg_config_doc_free(doc);
}

static void test_subst_malformed(void **state)
{
	(void)state;
	expect_parse_error("a: 1\nb: ${1X}\n",
			   "t.yml:2: column 4: malformed variable reference: expected ${NAME} or "
			   "${NAME:-default} (write $${ for a literal ${)");
	expect_parse_error("a: ${X\n",
			   "t.yml:1: column 4: malformed variable reference: expected ${NAME} or "
			   "${NAME:-default} (write $${ for a literal ${)");
	expect_parse_error("a: x ${X:=y}\n",
			   "t.yml:1: column 6: malformed variable reference: expected ${NAME} or "
			   "${NAME:-default} (write $${ for a literal ${)");
	/* A default does not run over the end of its line. */
	expect_parse_error("a: ${X:-abc\n}\n",
			   "t.yml:1: column 4: malformed variable reference: expected ${NAME} or "
			   "${NAME:-default} (write $${ for a literal ${)");
}

static void test_subst_multiline_value(void **state)
{
	(void)state;
	expect_parse_error("a: 1\nb: ${LG_TEST_CFG_MULTI}\n",
			   "t.yml:2: environment variable LG_TEST_CFG_MULTI contains a line break; "
			   "multi-line values are not substituted (line numbers would no longer "
			   "match the file)");
}

static void test_subst_keeps_line_numbers(void **state)
{
	(void)state;
	expect_parse_error("a: ${LG_TEST_CFG_LONG} ${" UNSET ":-x}\nb: 1\nc:\n  d: 1\n  d: 2\n",
			   "t.yml:5: duplicate key 'd' (first at line 4)");
	expect_parse_error("a: ${LG_TEST_CFG_LONG}\nb: [1,\nc: }\n",
			   "t.yml:3: did not find expected node content "
			   "(while parsing a flow node at line 3)");
}

/* ---- the YAML subset ---- */

static void test_yaml_syntax_errors(void **state)
{
	(void)state;
	expect_parse_error("a: [1, 2\nb: 3\n",
			   "t.yml:2: did not find expected ',' or ']' "
			   "(while parsing a flow sequence at line 1)");
	expect_parse_error("a: 1\n b: 2\n", "t.yml:2: mapping values are not allowed in this "
			   "context");
	expect_parse_error("server:\n\tlisten: x\n",
			   "t.yml:2: found character that cannot start any token "
			   "(while scanning for the next token at line 2)");
	expect_parse_error("a: 1\nb: \xff\n", "t.yml:2: invalid leading UTF-8 octet");
	expect_parse_error("a: \"x\\0y\"\n", "t.yml:1: a value contains a NUL character");
}

static void test_duplicate_keys(void **state)
{
	(void)state;
	expect_parse_error("a: 1\nb: 2\na: 3\n", "t.yml:3: duplicate key 'a' (first at line 1)");
	expect_parse_error("s:\n  x: 1\n  y: 2\n  x: 3\n  y: 4\n",
			   "t.yml:4: duplicate key 'x' (first at line 2)");
	expect_parse_error("s: {k: 1, j: 2,\n    k: 3}\n",
			   "t.yml:2: duplicate key 'k' (first at line 1)");
	/* A quoted key is the same key. */
	expect_parse_error("a: 1\n'a': 2\n", "t.yml:2: duplicate key 'a' (first at line 1)");
}

static void test_duplicate_keys_big_map(void **state)
{
	size_t cap = 600 * 16, len = 0;
	char *text = malloc(cap);

	(void)state;
	assert_non_null(text);
	for (int i = 0; i < 500; i++)
		len += (size_t)snprintf(text + len, cap - len, "k%03d: %d\n", i, i);
	len += (size_t)snprintf(text + len, cap - len, "k250: again\nk100: again\n");
	expect_parse_error(text, "t.yml:501: duplicate key 'k250' (first at line 251)");
	free(text);
}

static void test_anchors_and_aliases(void **state)
{
	(void)state;
	expect_parse_error("a: &x 1\nb: *x\n", "t.yml:1: anchors and aliases (&x) are not "
			   "supported; repeat the value instead");
	expect_parse_error("a: 1\nb: *x\n", "t.yml:2: anchors and aliases (*x) are not "
			   "supported; repeat the value instead");
	expect_parse_error("base: &b {x: 1}\n", "t.yml:1: anchors and aliases (&b) are not "
			   "supported; repeat the value instead");
	expect_parse_error("a: 1\nl: &l [1]\n", "t.yml:2: anchors and aliases (&l) are not "
			   "supported; repeat the value instead");
	expect_parse_error("a: 1\n<<: *m\n", "t.yml:2: anchors and aliases (*m) are not "
			   "supported; repeat the value instead");
}

static void test_tags(void **state)
{
	static const char supported[] = " is not supported here (only !!str, !!int, !!float, "
					"!!bool and !!null on values, !!seq on lists, !!map on maps)";
	struct lg_config_doc *doc;
	const struct lg_node *n;
	char expected[256];

	(void)state;
	doc = parse("s: !!str true\ni: !!int 5\nn: !!null ~\nl: !!seq [1]\nm: !!map {a: 1}\n"
		    "x: ! plain\n");
	n = lg_node_get(doc->root, "s");
	assert_int_equal(n->kind, LG_NODE_SCALAR);
	assert_true(n->quoted);
	assert_false(lg_node_get(doc->root, "i")->quoted);
	assert_int_equal(lg_node_get(doc->root, "n")->kind, LG_NODE_NULL);
	assert_int_equal(lg_node_get(doc->root, "l")->kind, LG_NODE_SEQ);
	assert_int_equal(lg_node_get(doc->root, "m")->kind, LG_NODE_MAP);
	lg_config_doc_free(doc);
	snprintf(expected, sizeof expected, "t.yml:2: tag !custom%s", supported);
	expect_parse_error("a: 1\nb: !custom x\n", expected);
	snprintf(expected, sizeof expected, "t.yml:1: tag !!binary%s", supported);
	expect_parse_error("b: !!binary aGk=\n", expected);
	snprintf(expected, sizeof expected, "t.yml:1: tag !!map%s", supported);
	expect_parse_error("b: !!map [1]\n", expected);
	snprintf(expected, sizeof expected, "t.yml:1: tag !!set%s", supported);
	expect_parse_error("b: !!set {a}\n", expected);
	expect_parse_error("b: !!null x\n", "t.yml:1: 'x' tagged !!null is not a null value");
}

static void test_multiple_documents(void **state)
{
	(void)state;
	expect_parse_error("a: 1\n---\nb: 2\n",
			   "t.yml:2: a second YAML document ('---'); a config file holds one");
	expect_parse_error("---\na: 1\n...\n---\n",
			   "t.yml:4: a second YAML document ('---'); a config file holds one");
}

static void test_empty_documents(void **state)
{
	static const char *const empties[] = {
		"", "---\n", "---", "# only a comment\n\n", "\n\n\n", "~\n", "--- ~\n...\n",
	};

	(void)state;
	for (size_t i = 0; i < LG_COUNT(empties); i++) {
		struct lg_config_doc *doc = parse(empties[i]);

		assert_int_equal(doc->root->n, 0);
		assert_null(lg_node_get(doc->root, "server"));
		assert_string_equal(doc->path, "t.yml");
		lg_config_doc_free(doc);
	}
}

static void test_root_not_a_map(void **state)
{
	(void)state;
	expect_parse_error("- a\n- b\n", "t.yml:1: the top level must be a map of sections "
			   "(server:, plugins:, ...), not a list");
	expect_parse_error("\n\nhello\n", "t.yml:3: the top level must be a map of sections "
			   "(server:, plugins:, ...), not a single value");
}

static void test_keys_must_be_scalars(void **state)
{
	(void)state;
	expect_parse_error("a: 1\n? [x, y]\n: z\n", "t.yml:2: a key must be a plain name, not a "
			   "list");
	expect_parse_error("? {x: 1}\n: z\n", "t.yml:1: a key must be a plain name, not a map");
	expect_parse_error("a: 1\n'': 2\n", "t.yml:2: empty key");
}

static void test_nulls_and_scalars(void **state)
{
	static const char *const nulls[] = { "a", "b", "c", "d", "e" };
	struct lg_config_doc *doc;
	const struct lg_node *n;

	(void)state;
	doc = parse("a: ~\nb: null\nc: Null\nd: NULL\ne:\nf: ''\ng: \"null\"\nh: nUll\n"
		    "i: '~'\nj: |\n  true\nk: 0x10\n");
	for (size_t i = 0; i < LG_COUNT(nulls); i++) {
		n = lg_node_get(doc->root, nulls[i]);
		assert_non_null(n);
		assert_int_equal(n->kind, LG_NODE_NULL);
		assert_null(n->scalar);
	}
	n = lg_node_get(doc->root, "f");
	assert_int_equal(n->kind, LG_NODE_SCALAR);
	assert_string_equal(n->scalar, "");
	assert_true(n->quoted);
	n = lg_node_get(doc->root, "g");
	assert_string_equal(n->scalar, "null");
	assert_true(n->quoted);
	n = lg_node_get(doc->root, "h");
	assert_int_equal(n->kind, LG_NODE_SCALAR);
	assert_false(n->quoted);
	assert_string_equal(scalar_at(doc, "i"), "~");
	n = lg_node_get(doc->root, "j");
	assert_string_equal(n->scalar, "true\n");
	assert_true(n->quoted);
	assert_string_equal(scalar_at(doc, "k"), "0x10");
	lg_config_doc_free(doc);
}

static void test_tree_and_lines(void **state)
{
	struct lg_config_doc *doc;
	const struct lg_node *plugins, *auth, *list;

	(void)state;
	doc = parse("# header\n"
		    "plugins:\n"
		    "  auth:\n"
		    "    port: 1\n"
		    "  usage:\n"
		    "  rag: {}\n"
		    "list:\n"
		    "  - one\n"
		    "  -\n"
		    "  - [2, 3]\n");
	assert_int_equal(doc->root->n, 2);
	assert_string_equal(doc->root->keys[0], "plugins");
	assert_int_equal(doc->root->key_lines[0], 2);
	assert_string_equal(doc->root->keys[1], "list");
	assert_int_equal(doc->root->key_lines[1], 7);
	plugins = lg_node_get(doc->root, "plugins");
	assert_int_equal(plugins->kind, LG_NODE_MAP);
	assert_int_equal(plugins->n, 3);
	assert_string_equal(plugins->keys[1], "usage");
	assert_int_equal(plugins->key_lines[1], 5);
	assert_int_equal(plugins->items[1]->kind, LG_NODE_NULL);
	assert_int_equal(plugins->items[1]->line, 5);
	assert_int_equal(plugins->items[2]->kind, LG_NODE_MAP);
	assert_int_equal(plugins->items[2]->n, 0);
	auth = lg_node_get(plugins, "auth");
	assert_int_equal(auth->kind, LG_NODE_MAP);
	assert_int_equal(lg_node_get(auth, "port")->line, 4);
	assert_string_equal(lg_node_get(auth, "port")->scalar, "1");
	list = lg_node_get(doc->root, "list");
	assert_int_equal(list->kind, LG_NODE_SEQ);
	assert_int_equal(list->n, 3);
	assert_int_equal(list->items[0]->line, 8);
	assert_int_equal(list->items[1]->kind, LG_NODE_NULL);
	assert_int_equal(list->items[1]->line, 9);
	assert_int_equal(list->items[2]->kind, LG_NODE_SEQ);
	assert_int_equal(list->items[2]->line, 10);
	assert_string_equal(list->items[2]->items[1]->scalar, "3");
	/* lg_node_get on what is not a map, or a key that is not there. */
	assert_null(lg_node_get(list, "one"));
	assert_null(lg_node_get(NULL, "one"));
	assert_null(lg_node_get(auth, "nope"));
	lg_config_doc_free(doc);
}

static void test_nesting_limit(void **state)
{
	char text[400];
	size_t len = 0;

	(void)state;
	len += (size_t)snprintf(text, sizeof text, "a: ");
	for (int i = 0; i < 100; i++)
		text[len++] = '[';
	for (int i = 0; i < 100; i++)
		text[len++] = ']';
	text[len++] = '\n';
	text[len] = '\0';
	expect_parse_error(text, "t.yml:1: nested deeper than 64 levels");
}

/* ---- files ---- */

static char *write_temp(const char *content, size_t len)
{
	char *path = strdup("/tmp/lg-test-config-XXXXXX");
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, len), (ssize_t)len);
	assert_int_equal(close(fd), 0);
	return path;
}

static void test_load_file(void **state)
{
	static const char text[] = "server:\n  listen: [\"127.0.0.1:0\"]\n"
				   "dependencies:\n  postgres:\n"
				   "    url: postgresql://u@${LG_TEST_CFG_HOST}/db\n";
	struct lg_config_doc *doc = NULL;
	char err[512] = "", *path;

	(void)state;
	path = write_temp(text, strlen(text));
	assert_int_equal(lg_config_load(path, &doc, err, sizeof err), 0);
	assert_string_equal(doc->path, path);
	assert_string_equal(lg_node_get(lg_node_get(lg_node_get(doc->root, "dependencies"),
						    "postgres"), "url")->scalar,
			    "postgresql://u@db.example/db");
	lg_config_doc_free(doc);
	assert_int_equal(unlink(path), 0);
	free(path);
}

static void test_load_errors(void **state)
{
	static const char bad[] = "a: 1\nb:\n  c: 2\n  c: 3\n";
	struct lg_config_doc *doc = (void *)1;
	char err[512] = "", expected[600], *path;

	(void)state;
	path = write_temp(bad, strlen(bad));
	assert_int_equal(lg_config_load(path, &doc, err, sizeof err), -EINVAL);
	assert_null(doc);
	snprintf(expected, sizeof expected, "%s:4: duplicate key 'c' (first at line 3)", path);
	assert_string_equal(err, expected);
	assert_int_equal(unlink(path), 0);
	/* Now it is gone. */
	assert_int_equal(lg_config_load(path, &doc, err, sizeof err), -ENOENT);
	snprintf(expected, sizeof expected, "%s: cannot open: No such file or directory", path);
	assert_string_equal(err, expected);
	free(path);
	assert_int_equal(lg_config_load("/tmp", &doc, err, sizeof err), -EISDIR);
	assert_string_equal(err, "/tmp: cannot read: Is a directory");
}

static void test_load_too_large(void **state)
{
	size_t len = (4u << 20) + 10;
	char *big = malloc(len), *path, expected[600];
	struct lg_config_doc *doc = NULL;
	char err[512] = "";

	(void)state;
	assert_non_null(big);
	memset(big, '#', len);
	for (size_t i = 79; i < len; i += 80)
		big[i] = '\n';
	path = write_temp(big, len);
	free(big);
	assert_int_equal(lg_config_load(path, &doc, err, sizeof err), -EFBIG);
	assert_null(doc);
	snprintf(expected, sizeof expected, "%s: larger than 4 MiB, refusing to read it", path);
	assert_string_equal(err, expected);
	assert_int_equal(unlink(path), 0);
	free(path);
}

/* ---- the core's sections ---- */

static const char complete[] =
	"server:\n"
	"  listen: [\"0.0.0.0:8080\", \"[::1]:9090\", \"localhost:0\"]\n"
	"  workers: 3\n"
	"  max_header_bytes: 32k\n"
	"  max_headers: 50\n"
	"  max_body_bytes: 8M\n"
	"  header_timeout: 5s\n"
	"  body_timeout: 2m\n"
	"  idle_timeout: 30\n"
	"  write_timeout: 1500ms\n"
	"  drain_timeout: 0\n"
	"  max_connections: 2048\n"
	"  json_max_depth: 32\n"
	"  log_level: DEBUG\n"
	"plugins:\n"
	"  zeta: {}\n"
	"  auth: { master_key: \"${" UNSET ":-changeme}\" }\n"
	"  mid:\n"
	"dependencies:\n"
	"  postgres:\n"
	"    url: postgresql+asyncpg://u:secret@${LG_TEST_CFG_HOST}:5432/db\n"
	"    pool_size: 12\n"
	"    connect_retry: 1m\n"
	"    command_timeout: 10\n"
	"    connect_args:\n"
	"      server_settings:\n"
	"        statement_timeout: \"30s\"\n"
	"        application_name: llmgate\n"
	"        pg_trgm.similarity_threshold: 0.3\n"
	"settings:\n"
	"  monitoring_postgres_enabled: off\n"
	"models:\n"
	"  - name: my-model\n"
	"    type: text-generation\n";

static const char minimal[] =
	"dependencies:\n  postgres:\n    url: postgresql://localhost/db\n";

static struct lg_core_config *core_ok(const char *text)
{
	struct lg_core_config *cfg = NULL;
	char err[512] = "";

	if (lg_core_config_build(parse(text), &cfg, err, sizeof err) != 0)
		fail_msg("build failed: %s", err);
	assert_non_null(cfg);
	return cfg;
}

static void expect_core_error(const char *text, const char *expected)
{
	struct lg_core_config *cfg = (void *)1;
	char err[512] = "";

	/* The document is handed over also on failure (ASan sees a leak). */
	assert_int_equal(lg_core_config_build(parse(text), &cfg, err, sizeof err), -EINVAL);
	assert_null(cfg);
	assert_string_equal(err, expected);
}

/* @section with @body, plus a valid postgres section. */
static void expect_core_error_with_pg(const char *body, const char *expected)
{
	char *text;

	if (asprintf(&text, "%s%s", minimal, body) < 0)
		fail_msg("out of memory");
	expect_core_error(text, expected);
	free(text);
}

static void test_core_complete(void **state)
{
	struct lg_core_config *cfg;
	const struct lg_node *m;

	(void)state;
	cfg = core_ok(complete);
	assert_int_equal(cfg->n_listen, 3);
	assert_string_equal(cfg->listen[0], "0.0.0.0:8080");
	assert_string_equal(cfg->listen[1], "[::1]:9090");
	assert_string_equal(cfg->listen[2], "localhost:0");
	assert_null(cfg->listen[3]);
	assert_int_equal(cfg->workers, 3);
	assert_int_equal(cfg->max_header_bytes, 32768);
	assert_int_equal(cfg->max_headers, 50);
	assert_int_equal(cfg->max_body_bytes, 8u << 20);
	assert_int_equal(cfg->header_timeout_ms, 5000);
	assert_int_equal(cfg->body_timeout_ms, 120000);
	assert_int_equal(cfg->idle_timeout_ms, 30000);
	assert_int_equal(cfg->write_timeout_ms, 1500);
	assert_int_equal(cfg->drain_timeout_ms, 0);
	assert_int_equal(cfg->max_connections, 2048);
	assert_int_equal(cfg->json_max_depth, 32);
	assert_string_equal(cfg->log_level, "debug");
	/* The SQLAlchemy spelling becomes one libpq understands. */
	assert_string_equal(cfg->pg_url, "postgresql://u:secret@db.example:5432/db");
	assert_int_equal(cfg->pg_pool_size, 12);
	assert_int_equal(cfg->pg_connect_retry_ms, 60000);
	assert_int_equal(cfg->pg_command_timeout_ms, 10000);
	assert_string_equal(cfg->pg_server_settings[0], "statement_timeout");
	assert_string_equal(cfg->pg_server_settings[1], "30s");
	assert_string_equal(cfg->pg_server_settings[2], "application_name");
	assert_string_equal(cfg->pg_server_settings[3], "llmgate");
	assert_string_equal(cfg->pg_server_settings[4], "pg_trgm.similarity_threshold");
	assert_string_equal(cfg->pg_server_settings[5], "0.3");
	assert_null(cfg->pg_server_settings[6]);
	assert_false(cfg->monitoring_postgres_enabled);
	/* Plugins in file order, blocks borrowed from the document. */
	assert_int_equal(cfg->n_plugins, 3);
	assert_string_equal(cfg->plugins[0].name, "zeta");
	assert_string_equal(cfg->plugins[1].name, "auth");
	assert_string_equal(cfg->plugins[2].name, "mid");
	assert_int_equal(cfg->plugins[0].line, 16);
	assert_int_equal(cfg->plugins[1].line, 17);
	assert_int_equal(cfg->plugins[2].line, 18);
	assert_int_equal(cfg->plugins[0].block->kind, LG_NODE_MAP);
	assert_string_equal(lg_node_get(cfg->plugins[1].block, "master_key")->scalar, "changeme");
	assert_int_equal(cfg->plugins[2].block->kind, LG_NODE_NULL);
	m = cfg->models;
	assert_non_null(m);
	assert_int_equal(m->kind, LG_NODE_SEQ);
	assert_int_equal(m->n, 1);
	assert_string_equal(lg_node_get(m->items[0], "name")->scalar, "my-model");
	lg_core_config_free(cfg);
}

static void test_core_defaults(void **state)
{
	struct lg_core_config *cfg;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);

	(void)state;
	cfg = core_ok(minimal);
	assert_int_equal(cfg->n_listen, 1);
	assert_string_equal(cfg->listen[0], "127.0.0.1:8080");
	assert_int_equal(cfg->workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus);
	assert_int_equal(cfg->max_header_bytes, 16384);
	assert_int_equal(cfg->max_headers, 100);
	assert_int_equal(cfg->max_body_bytes, 4u << 20);
	assert_int_equal(cfg->header_timeout_ms, 10000);
	assert_int_equal(cfg->body_timeout_ms, 60000);
	assert_int_equal(cfg->idle_timeout_ms, 15000);
	assert_int_equal(cfg->write_timeout_ms, 60000);
	assert_int_equal(cfg->drain_timeout_ms, 30000);
	assert_int_equal(cfg->max_connections, 1024);
	assert_int_equal(cfg->json_max_depth, 64);
	assert_string_equal(cfg->log_level, "info");
	assert_string_equal(cfg->pg_url, "postgresql://localhost/db");
	assert_int_equal(cfg->pg_pool_size, 5);
	assert_int_equal(cfg->pg_connect_retry_ms, 30000);
	assert_int_equal(cfg->pg_command_timeout_ms, 0);
	assert_non_null(cfg->pg_server_settings);
	assert_null(cfg->pg_server_settings[0]);
	assert_true(cfg->monitoring_postgres_enabled);
	assert_int_equal(cfg->n_plugins, 0);
	assert_null(cfg->models);
	lg_core_config_free(cfg);
}

static void test_core_workers(void **state)
{
	struct lg_core_config *cfg;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	char *text;

	(void)state;
	if (asprintf(&text, "%sserver: {workers: auto}\n", minimal) < 0)
		fail_msg("out of memory");
	cfg = core_ok(text);
	free(text);
	assert_true(cpus >= 1);
	assert_int_equal(cfg->workers, cpus > 256 ? 256 : cpus);
	lg_core_config_free(cfg);
	if (asprintf(&text, "%sserver: {workers: 256}\n", minimal) < 0)
		fail_msg("out of memory");
	cfg = core_ok(text);
	free(text);
	assert_int_equal(cfg->workers, 256);
	lg_core_config_free(cfg);
	expect_core_error_with_pg("server:\n  workers: 0\n", "t.yml:5: server.workers: "
				  "expected \"auto\" or an integer from 1 to 256, got '0'");
	expect_core_error_with_pg("server:\n  workers: 257\n", "t.yml:5: server.workers: "
				  "expected \"auto\" or an integer from 1 to 256, got '257'");
	expect_core_error_with_pg("server:\n  workers: many\n", "t.yml:5: server.workers: "
				  "expected \"auto\" or an integer from 1 to 256, got 'many'");
	expect_core_error_with_pg("server:\n  workers: -2\n", "t.yml:5: server.workers: "
				  "expected \"auto\" or an integer from 1 to 256, got '-2'");
}

static void test_core_listen(void **state)
{
	static const struct { const char *addr, *why; } bad[] = {
		{ "127.0.0.1", "the port is missing" },
		{ "::1:8080", "an IPv6 address goes in brackets, as [::1]:8080" },
		{ "[::1:8080", "the closing ']' is missing" },
		{ "[zz]:80", "'zz' is not an IPv6 address" },
		{ "[::1]8080", "the port is missing" },
		{ "[::1]", "the port is missing" },
		{ "host:99999", "the port must be a number from 0 to 65535" },
		{ "host:65536", "the port must be a number from 0 to 65535" },
		{ "host:", "the port must be a number from 0 to 65535" },
		{ "host:80a", "the port must be a number from 0 to 65535" },
		{ "host:-1", "the port must be a number from 0 to 65535" },
		{ ":8080", "the host is missing (0.0.0.0 listens on every IPv4 address)" },
		{ "ho st:80", "the host has an invalid character ' '" },
		{ "a/b:80", "the host has an invalid character '/'" },
	};
	struct lg_core_config *cfg;
	char body[256], expected[512];

	(void)state;
	for (size_t i = 0; i < LG_COUNT(bad); i++) {
		/* The bad address is the second item, on line 7. */
		snprintf(body, sizeof body, "server:\n  listen:\n    - 127.0.0.1:1\n    - \"%s\"\n",
			 bad[i].addr);
		snprintf(expected, sizeof expected, "t.yml:7: server.listen: '%s' is not host:port "
			 "or [v6]:port: %s", bad[i].addr, bad[i].why);
		expect_core_error_with_pg(body, expected);
	}
	expect_core_error_with_pg("server:\n  listen: []\n",
				  "t.yml:5: server.listen: at least one address is needed");
	expect_core_error_with_pg("server:\n  listen: [\"a:1\", \"a:1\"]\n",
				  "t.yml:5: server.listen: 'a:1' is listed twice");
	/* A single string is a list of one. */
	cfg = core_ok("server: {listen: \"[::]:0\"}\n"
		      "dependencies: {postgres: {url: \"postgres://h/db\"}}\n");
	assert_int_equal(cfg->n_listen, 1);
	assert_string_equal(cfg->listen[0], "[::]:0");
	assert_string_equal(cfg->pg_url, "postgres://h/db");
	lg_core_config_free(cfg);
}

static void test_core_server_values(void **state)
{
	(void)state;
	expect_core_error_with_pg("server:\n  max_headers: 0\n",
				  "t.yml:5: server.max_headers: 0 is out of range [1, 1000]");
	expect_core_error_with_pg("server:\n  max_body_bytes: 2G\n",
				  "t.yml:5: server.max_body_bytes: 2G is out of range [1k, 1G]");
	expect_core_error_with_pg("server:\n  header_timeout: 2d\n",
				  "t.yml:5: server.header_timeout: expected a duration such as 250ms, "
				  "30s, 5m or 1h (a plain number is seconds), got '2d'");
	expect_core_error_with_pg("server:\n  log_level: verbose\n",
				  "t.yml:5: server.log_level: expected error, warn, info or debug, "
				  "got 'verbose'");
	expect_core_error_with_pg("server:\n  port: 8080\n",
				  "t.yml:5: server.port: unknown key (known: listen, workers, "
				  "max_header_bytes, max_headers, max_body_bytes, header_timeout, "
				  "body_timeout, idle_timeout, write_timeout, drain_timeout, "
				  "max_connections, json_max_depth, json_max_items, log_level)");
	expect_core_error_with_pg("server:\n  - listen\n",
				  "t.yml:5: server: expected a map of settings (key: value), got a list");
}

static void test_core_log_level_spellings(void **state)
{
	static const struct { const char *in, *out; } cases[] = {
		{ "error", "error" }, { "WARNING", "warn" }, { "Warn", "warn" },
		{ "INFO", "info" }, { "debug", "debug" },
	};

	(void)state;
	for (size_t i = 0; i < LG_COUNT(cases); i++) {
		struct lg_core_config *cfg;
		char *text;

		if (asprintf(&text, "%sserver: {log_level: %s}\n", minimal, cases[i].in) < 0)
			fail_msg("out of memory");
		cfg = core_ok(text);
		assert_string_equal(cfg->log_level, cases[i].out);
		lg_core_config_free(cfg);
		free(text);
	}
}

static void test_core_postgres(void **state)
{
	struct lg_core_config *cfg = NULL;
	char err[512];

	(void)state;
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    pool_size: 500\n",
			  "t.yml:4: dependencies.postgres.pool_size: 500 is out of range [1, 200]");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    pool_size: 0\n",
			  "t.yml:4: dependencies.postgres.pool_size: 0 is out of range [1, 200]");
	expect_core_error("server: {}\n", "t.yml:0: dependencies.postgres.url: required");
	expect_core_error("dependencies:\n  postgres:\n    pool_size: 2\n",
			  "t.yml:3: dependencies.postgres.url: required");
	expect_core_error("dependencies:\n  postgres:\n    url:\n",
			  "t.yml:3: dependencies.postgres.url: required, but the value is empty");
	expect_core_error("dependencies:\n  postgres:\n    url: mysql://u:hunter2@h/db\n",
			  "t.yml:3: dependencies.postgres.url: expected a URL starting with "
			  "postgresql:// (or postgres://, postgresql+asyncpg://); the value is not "
			  "shown because it may hold a password");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "  redis:\n    url: redis://localhost:6379\n",
			  "t.yml:4: dependencies.redis: not used by llmgate, which needs only "
			  "postgres (remove this block)");
	expect_core_error("dependencies: [postgres]\n",
			  "t.yml:1: dependencies: expected a map (postgres: ...), got a list");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    echo: true\n",
			  "t.yml:4: dependencies.postgres.echo: unknown key (known: url, pool_size, "
			  "connect_retry, command_timeout)");
	/* The URL is secret: a type error does not show it either. */
	assert_int_equal(lg_core_config_build(parse("dependencies:\n  postgres:\n"
						    "    url: [\"postgresql://u:hunter2@h\"]\n"),
					      &cfg, err, sizeof err), -EINVAL);
	assert_null(strstr(err, "hunter2"));
	assert_string_equal(err, "t.yml:3: dependencies.postgres.url: expected a single value, "
			    "got a list");
}

static void test_core_server_settings(void **state)
{
	struct lg_core_config *cfg;

	(void)state;
	cfg = core_ok("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
		      "    connect_args:\n      server_settings: {}\n");
	assert_non_null(cfg->pg_server_settings);
	assert_null(cfg->pg_server_settings[0]);
	lg_core_config_free(cfg);
	cfg = core_ok("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
		      "    connect_args:\n      server_settings:\n        _x.y_1: 1\n");
	assert_string_equal(cfg->pg_server_settings[0], "_x.y_1");
	assert_string_equal(cfg->pg_server_settings[1], "1");
	assert_null(cfg->pg_server_settings[2]);
	lg_core_config_free(cfg);
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    connect_args:\n      server_settings:\n        TimeZone: UTC\n",
			  "t.yml:6: dependencies.postgres.connect_args.server_settings.TimeZone: "
			  "invalid PostgreSQL setting name (lower-case letters, digits, '_' and '.')");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    connect_args:\n      server_settings:\n        search_path: [a, b]\n",
			  "t.yml:6: dependencies.postgres.connect_args.server_settings.search_path: "
			  "expected a single value, got a list");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    connect_args:\n      server_settings:\n        work_mem:\n",
			  "t.yml:6: dependencies.postgres.connect_args.server_settings.work_mem: "
			  "expected a single value, got nothing");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    connect_args:\n      server_settings: [a]\n",
			  "t.yml:5: dependencies.postgres.connect_args.server_settings: expected a "
			  "map of PostgreSQL setting name to value (statement_timeout: \"30s\"), got "
			  "a list");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    connect_args:\n      ssl: true\n",
			  "t.yml:5: dependencies.postgres.connect_args.ssl: unknown key (known: "
			  "server_settings)");
	expect_core_error("dependencies:\n  postgres:\n    url: postgresql://h/db\n"
			  "    connect_args: on\n",
			  "t.yml:4: dependencies.postgres.connect_args: expected a map "
			  "(server_settings: ...), got a single value");
}

static void test_core_unknown_top_level(void **state)
{
	(void)state;
	expect_core_error_with_pg("playground:\n  x: 1\n",
				  "t.yml:4: unknown top-level key 'playground' (known: server, "
				  "plugins, dependencies, settings, models)");
	expect_core_error_with_pg("settings:\n  app_title: x\n",
				  "t.yml:5: settings.app_title: unknown key (known: "
				  "monitoring_postgres_enabled, monitoring_prometheus_enabled)");
	expect_core_error_with_pg("settings:\n  monitoring_postgres_enabled: maybe\n",
				  "t.yml:5: settings.monitoring_postgres_enabled: expected true or "
				  "false (or yes/no, on/off), got 'maybe'");
}

static void test_core_plugins(void **state)
{
	static const char *const bad_names[] = { "Auth", "1st", "_x", "a-b", "a/b", "../x", "a.b",
						 "x..y", "a b" };
	char body[128], expected[400];

	(void)state;
	for (size_t i = 0; i < LG_COUNT(bad_names); i++) {
		snprintf(body, sizeof body, "plugins:\n  ok: {}\n  \"%s\": {}\n", bad_names[i]);
		snprintf(expected, sizeof expected, "t.yml:6: plugins.%s: invalid plugin name "
			 "(lower-case letters, digits and '_', starting with a letter)",
			 bad_names[i]);
		expect_core_error_with_pg(body, expected);
	}
	expect_core_error_with_pg("plugins:\n  auth: [a]\n", "t.yml:5: plugins.auth: expected a "
				  "map of settings (or nothing, or {}), got a list");
	expect_core_error_with_pg("plugins:\n  auth: yes\n", "t.yml:5: plugins.auth: expected a "
				  "map of settings (or nothing, or {}), got a single value");
	expect_core_error_with_pg("plugins: [auth, usage]\n", "t.yml:4: plugins: expected a map "
				  "of plugin name to its settings (auth: {...}), got a list");
	expect_parse_error("plugins:\n  auth: {}\n  auth: {}\n",
			   "t.yml:3: duplicate key 'auth' (first at line 2)");
}

static void test_core_plugin_order(void **state)
{
	static const char *const names[] = { "usage", "auth", "openai", "a1_b", "mock" };
	struct lg_core_config *cfg;

	(void)state;
	cfg = core_ok("plugins:\n  usage: {anything: [1, 2]}\n  auth:\n  openai: {}\n"
		      "  a1_b: {x: y}\n  mock: {}\n"
		      "dependencies: {postgres: {url: \"postgresql://h\"}}\n");
	assert_int_equal(cfg->n_plugins, LG_COUNT(names));
	for (size_t i = 0; i < LG_COUNT(names); i++) {
		assert_string_equal(cfg->plugins[i].name, names[i]);
		assert_int_equal(cfg->plugins[i].line, (int)i + 2);
	}
	assert_string_equal(lg_node_get(cfg->plugins[3].block, "x")->scalar, "y");
	lg_core_config_free(cfg);
	/* "plugins:" with nothing is no plugin. */
	cfg = core_ok("plugins:\ndependencies: {postgres: {url: \"postgresql://h\"}}\n");
	assert_int_equal(cfg->n_plugins, 0);
	lg_core_config_free(cfg);
}

static void test_core_models(void **state)
{
	struct lg_core_config *cfg;

	(void)state;
	expect_core_error_with_pg("models:\n  my-model:\n    type: x\n",
				  "t.yml:5: models: expected a list of models (- name: ...), got a map");
	expect_core_error_with_pg("models: my-model\n",
				  "t.yml:4: models: expected a list of models (- name: ...), got a "
				  "single value");
	cfg = core_ok("models: []\ndependencies: {postgres: {url: \"postgresql://h\"}}\n");
	assert_non_null(cfg->models);
	assert_int_equal(cfg->models->n, 0);
	lg_core_config_free(cfg);
	cfg = core_ok("models:\ndependencies: {postgres: {url: \"postgresql://h\"}}\n");
	assert_null(cfg->models);
	lg_core_config_free(cfg);
}

static void test_core_example_file(void **state)
{
	struct lg_core_config *cfg = NULL;
	struct lg_config_doc *doc = NULL;
	char err[512] = "", *path = example_config_path();

	(void)state;
	/* The shipped example loads with a bare environment. */
	if (lg_config_load(path, &doc, err, sizeof err) != 0)
		fail_msg("%s", err);
	free(path);
	assert_int_equal(lg_core_config_build(doc, &cfg, err, sizeof err), 0);
	assert_int_equal(cfg->n_plugins, 4);
	assert_string_equal(cfg->plugins[0].name, "auth");
	assert_string_equal(cfg->plugins[1].name, "usage");
	assert_string_equal(cfg->plugins[2].name, "openai");
	assert_string_equal(cfg->plugins[3].name, "mock");
	assert_non_null(cfg->models);
	lg_core_config_free(cfg);
}

static char *core_reference(bool markdown)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	assert_non_null(f);
	lg_core_config_print_reference(f, markdown);
	assert_int_equal(fclose(f), 0);
	return buf;
}

static void test_core_reference(void **state)
{
	static const char *const headings[] = {
		"### server\n", "### dependencies\n", "### dependencies.postgres\n",
		"### dependencies.postgres.connect_args.server_settings\n", "### settings\n",
		"### plugins\n", "### models\n",
	};
	char *md, *txt;

	(void)state;
	md = core_reference(true);
	for (size_t i = 0; i < LG_COUNT(headings); i++)
		assert_non_null(strstr(md, headings[i]));
	assert_non_null(strstr(md, "| `listen` | list of strings | `127.0.0.1:8080` |"));
	assert_non_null(strstr(md, "| `max_body_bytes` | size | `4M` | [1k, 1G] |"));
	assert_non_null(strstr(md, "| `url` | string | *required* |"));
	assert_non_null(strstr(md, "| `pool_size` | integer | `5` | [1, 200] |"));
	assert_non_null(strstr(md, "| `monitoring_postgres_enabled` | boolean | `true` |"));
	assert_non_null(strstr(md, "statement_timeout"));
	free(md);
	txt = core_reference(false);
	assert_non_null(strstr(txt, "server.workers (string)\n    default: auto\n"));
	assert_non_null(strstr(txt, "dependencies.postgres.url (string)\n    default: required\n"));
	assert_null(strstr(txt, "###"));
	free(txt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_subst_set),
		cmocka_unit_test(test_subst_default),
		cmocka_unit_test(test_subst_empty_default),
		cmocka_unit_test(test_subst_unset_error),
		cmocka_unit_test(test_subst_literal),
		cmocka_unit_test(test_subst_quoted_and_plain),
		cmocka_unit_test(test_subst_comments),
		cmocka_unit_test(test_subst_malformed),
		cmocka_unit_test(test_subst_multiline_value),
		cmocka_unit_test(test_subst_keeps_line_numbers),
		cmocka_unit_test(test_yaml_syntax_errors),
		cmocka_unit_test(test_duplicate_keys),
		cmocka_unit_test(test_duplicate_keys_big_map),
		cmocka_unit_test(test_anchors_and_aliases),
		cmocka_unit_test(test_tags),
		cmocka_unit_test(test_multiple_documents),
		cmocka_unit_test(test_empty_documents),
		cmocka_unit_test(test_root_not_a_map),
		cmocka_unit_test(test_keys_must_be_scalars),
		cmocka_unit_test(test_nulls_and_scalars),
		cmocka_unit_test(test_tree_and_lines),
		cmocka_unit_test(test_nesting_limit),
		cmocka_unit_test(test_load_file),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_load_too_large),
		cmocka_unit_test(test_core_complete),
		cmocka_unit_test(test_core_defaults),
		cmocka_unit_test(test_core_workers),
		cmocka_unit_test(test_core_listen),
		cmocka_unit_test(test_core_server_values),
		cmocka_unit_test(test_core_log_level_spellings),
		cmocka_unit_test(test_core_postgres),
		cmocka_unit_test(test_core_server_settings),
		cmocka_unit_test(test_core_unknown_top_level),
		cmocka_unit_test(test_core_plugins),
		cmocka_unit_test(test_core_plugin_order),
		cmocka_unit_test(test_core_models),
		cmocka_unit_test(test_core_example_file),
		cmocka_unit_test(test_core_reference),
	};

	return cmocka_run_group_tests(tests, setup_env, NULL);
}
