/* SPDX-License-Identifier: Apache-2.0 */
/* config.yml parsing (core/config.h) on arbitrary bytes: lg_config_parse,
 * then lg_core_config_build on the result (which takes ownership of it),
 * then each plugin block bound against a settings table with every
 * setting type, as the loader does for a plugin's own table.
 *
 * Properties: no crash, no leak, no read out of bounds; a refusal always
 * has a message that names the file; an accepted document is a tree whose
 * maps have no duplicate keys and whose nodes have line numbers; a built
 * configuration holds values within the documented bounds. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"

#define NAME "fuzz.yml"

/* The environment ${VAR} references resolve against: one set, one empty,
 * one with a line break (refused), and everything else unset (refused
 * without a default). Set once, before the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	lg_log_set_level(LG_LOG_ERROR);
	if (setenv("LG_FUZZ_SET", "value", 1) != 0 || setenv("LG_FUZZ_EMPTY", "", 1) != 0 ||
	    setenv("LG_FUZZ_NEWLINE", "a\nb: c", 1) != 0 ||
	    setenv("LG_FUZZ_YAML", "{x: [1, 2]}", 1) != 0)
		abort();
	if (unsetenv("LG_FUZZ_UNSET") != 0)
		abort();
	return 0;
}

static const struct lg_setting plugin_table[] = {
	{ "name", LG_SETTING_STRING, "x", 0, 64, 0, "a string" },
	{ "master_key", LG_SETTING_STRING, NULL, 0, 4096, LG_SETTING_SECRET, "a secret" },
	{ "count", LG_SETTING_INT, "3", -100, 1000000, 0, "an integer" },
	{ "ratio", LG_SETTING_DOUBLE, "0.5", 0, 1, 0, "a number" },
	{ "enabled", LG_SETTING_BOOL, "true", 0, 0, 0, "a boolean" },
	{ "tags", LG_SETTING_STRINGS, NULL, 0, 0, 0, "strings" },
	{ "timeout", LG_SETTING_DURATION, "30s", 100, 86400000.0, 0, "a duration" },
	{ "size", LG_SETTING_SIZE, "64k", 1, 1 << 30, 0, "a size" },
};

#define N_SETTINGS (sizeof plugin_table / sizeof plugin_table[0])

static void check_error(int rc, const char *err)
{
	FUZZ_CHECK(rc < 0);
	FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', 512));
}

static void check_tree(const struct lg_node *node, int depth)
{
	FUZZ_CHECK(node && node->line >= 1 && depth <= 200);
	switch (node->kind) {
	case LG_NODE_NULL:
		break;
	case LG_NODE_SCALAR:
		FUZZ_CHECK(node->scalar != NULL);
		break;
	case LG_NODE_SEQ:
		for (size_t i = 0; i < node->n; i++)
			check_tree(node->items[i], depth + 1);
		break;
	case LG_NODE_MAP:
		for (size_t i = 0; i < node->n; i++) {
			FUZZ_CHECK(node->keys[i] && node->key_lines[i] >= 1);
			/* Pairwise only for small maps: the point is the check,
			 * not quadratic time on a fuzzed 10k-key map. */
			for (size_t j = 0; j < i && node->n <= 64; j++)
				FUZZ_CHECK(strcmp(node->keys[i], node->keys[j]) != 0);
			FUZZ_CHECK(lg_node_get(node, node->keys[i]) != NULL);
			check_tree(node->items[i], depth + 1);
		}
		break;
	default:
		FUZZ_CHECK(!"unknown node kind");
	}
}

static void read_settings(const struct lg_settings *s)
{
	const char *const *v;
	const char *str;
	int64_t i;
	uint64_t u;
	double d;
	bool b;
	size_t n;
	int rc;

	rc = lg_settings_str(s, "name", &str);
	FUZZ_CHECK(rc == 0 && strlen(str) <= 64);
	rc = lg_settings_str(s, "master_key", &str);
	FUZZ_CHECK(rc == 0 || rc == -ENOENT);
	rc = lg_settings_int(s, "count", &i);
	FUZZ_CHECK(rc == 0 && i >= -100 && i <= 1000000);
	rc = lg_settings_double(s, "ratio", &d);
	FUZZ_CHECK(rc == 0 && d >= 0 && d <= 1);
	FUZZ_CHECK(lg_settings_bool(s, "enabled", &b) == 0);
	rc = lg_settings_strings(s, "tags", &v, &n);
	FUZZ_CHECK(rc == 0 || rc == -ENOENT);
	for (size_t k = 0; rc == 0 && k < n; k++)
		FUZZ_CHECK(v[k] != NULL);
	rc = lg_settings_u64(s, "timeout", &u);
	FUZZ_CHECK(rc == 0 && u >= 100 && u <= 86400000u);
	rc = lg_settings_u64(s, "size", &u);
	FUZZ_CHECK(rc == 0 && u >= 1 && u <= (1u << 30));
	/* Wrong type and unknown key are refused, not guessed. */
	FUZZ_CHECK(lg_settings_bool(s, "count", &b) == -EINVAL);
	FUZZ_CHECK(lg_settings_str(s, "no_such_key", &str) == -EINVAL);
}

static void bind_plugins(const struct lg_core_config *cfg)
{
	for (size_t i = 0; i < cfg->n_plugins; i++) {
		struct lg_settings *s = NULL;
		char err[512] = "";
		int rc;

		FUZZ_CHECK(cfg->plugins[i].name != NULL);
		rc = lg_settings_bind(NAME, "plugins.x", cfg->plugins[i].block, plugin_table,
				      N_SETTINGS, &s, err, sizeof err);
		if (rc == 0) {
			FUZZ_CHECK(s != NULL);
			read_settings(s);
			lg_settings_free(s);
		} else {
			check_error(rc, err);
		}
	}
}

static void check_config(const struct lg_core_config *cfg)
{
	FUZZ_CHECK(cfg->n_listen >= 1 && cfg->listen);
	for (size_t i = 0; i < cfg->n_listen; i++)
		FUZZ_CHECK(cfg->listen[i] != NULL);
	FUZZ_CHECK(cfg->workers >= 1 && cfg->workers <= 256);
	FUZZ_CHECK(cfg->max_headers >= 1 && cfg->max_headers <= 1000);
	FUZZ_CHECK(cfg->max_header_bytes >= 1024 && cfg->max_header_bytes <= (1u << 20));
	FUZZ_CHECK(cfg->json_max_depth >= 1 && cfg->json_max_depth <= 1000);
	FUZZ_CHECK(cfg->log_level != NULL);
	FUZZ_CHECK(cfg->pg_url != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lg_config_doc *doc = NULL;
	struct lg_core_config *cfg = NULL;
	char err[512];
	int rc;

	memset(err, 0, sizeof err);
	rc = lg_config_parse(NAME, (const char *)data, size, &doc, err, sizeof err);
	if (rc != 0) {
		check_error(rc, err);
		FUZZ_CHECK(doc == NULL);
		FUZZ_CHECK(strncmp(err, NAME, strlen(NAME)) == 0);
		return 0;
	}
	FUZZ_CHECK(doc && doc->root && doc->root->kind == LG_NODE_MAP);
	check_tree(doc->root, 0);
	memset(err, 0, sizeof err);
	rc = lg_core_config_build(doc, &cfg, err, sizeof err);
	if (rc != 0) {
		check_error(rc, err);
		FUZZ_CHECK(cfg == NULL);
		return 0;
	}
	FUZZ_CHECK(cfg != NULL);
	check_config(cfg);
	bind_plugins(cfg);
	lg_core_config_free(cfg);
	return 0;
}
