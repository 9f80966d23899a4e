/* SPDX-License-Identifier: Apache-2.0 */
/* config.yml: read, ${VAR} / ${VAR:-default} substitution, YAML parsed into
 * a tree that keeps line numbers, then validated against settings tables
 * (the core's and each plugin's). Every error names file, line and key. */
#ifndef LG_CONFIG_H
#define LG_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <llmgate/plugin.h>

/* ---- the YAML tree ---- */

enum lg_node_kind {
	LG_NODE_NULL,     /* ~, null or an empty value */
	LG_NODE_SCALAR,
	LG_NODE_SEQ,
	LG_NODE_MAP,
};

struct lg_node {
	enum lg_node_kind kind;
	int line;                 /* 1-based line in the file */
	char *scalar;             /* SCALAR: the text */
	bool quoted;              /* SCALAR: was quoted (so "true" is a string) */
	size_t n;                 /* SEQ: items; MAP: pairs */
	struct lg_node **items;   /* SEQ items, or MAP values */
	char **keys;              /* MAP keys (duplicates are refused) */
	int *key_lines;           /* MAP: the line of each key */
};

struct lg_config_doc {
	char *path;               /* as given */
	struct lg_node *root;     /* a MAP (an empty file is an empty MAP) */
};

/* Reads @path, substitutes ${VAR} and ${VAR:-default} (an unset variable
 * without default is an error), parses YAML (anchors and aliases refused,
 * one document, duplicate keys refused). @err gets "FILE:LINE: message". */
int lg_config_load(const char *path, struct lg_config_doc **out, char *err, size_t errlen);
/* The same from a string (tests); @name stands for the file name. */
int lg_config_parse(const char *name, const char *text, size_t len,
		    struct lg_config_doc **out, char *err, size_t errlen);
void lg_config_doc_free(struct lg_config_doc *doc);

/* The value of @key in a MAP node, or NULL (also when @map is not a MAP). */
const struct lg_node *lg_node_get(const struct lg_node *map, const char *key);

/* ---- settings: a table of lg_setting bound to a MAP node ---- */

struct lg_settings;

/* Validates @map (NULL or LG_NODE_NULL: empty) against @table: unknown
 * keys, wrong types, values out of bounds and missing required keys are
 * errors "FILE:LINE: SECTION.KEY: message" where SECTION is @section
 * ("plugins.auth"). Defaults fill what is absent. */
int lg_settings_bind(const char *file, const char *section, const struct lg_node *map,
		     const struct lg_setting *table, size_t n, struct lg_settings **out,
		     char *err, size_t errlen);
void lg_settings_free(struct lg_settings *s);

/* As the host's cfg_* (see <llmgate/host.h>): 0, -ENOENT (no value, no
 * default) or -EINVAL (not in the table, or another type). */
int lg_settings_str(const struct lg_settings *s, const char *key, const char **out);
int lg_settings_int(const struct lg_settings *s, const char *key, int64_t *out);
int lg_settings_double(const struct lg_settings *s, const char *key, double *out);
int lg_settings_bool(const struct lg_settings *s, const char *key, bool *out);
int lg_settings_strings(const struct lg_settings *s, const char *key,
			const char *const **out, size_t *n);
int lg_settings_u64(const struct lg_settings *s, const char *key, uint64_t *out);

/* Prints a table as reference documentation: a Markdown table when
 * @markdown, else plain text. Secrets' defaults are shown as <redacted>. */
void lg_settings_print_reference(FILE *out, const char *section,
				 const struct lg_setting *table, size_t n, bool markdown);

/* ---- the core's own configuration ---- */

struct lg_plugin_decl {
	char *name;                     /* the key under plugins: */
	const struct lg_node *block;    /* its settings (borrowed from the doc) */
	int line;
};

struct lg_core_config {
	struct lg_config_doc *doc;      /* owned */
	/* server: */
	char **listen;                  /* "127.0.0.1:8080", "[::1]:8080" */
	size_t n_listen;
	int workers;                    /* resolved: "auto" = online CPUs */
	size_t max_header_bytes, max_headers, max_body_bytes;
	uint32_t header_timeout_ms, body_timeout_ms, idle_timeout_ms, write_timeout_ms;
	uint32_t drain_timeout_ms;
	size_t max_connections;
	int json_max_depth;
	size_t json_max_items;
	char *log_level;
	/* dependencies.postgres: */
	char *pg_url;
	int pg_pool_size;
	uint32_t pg_connect_retry_ms;
	uint32_t pg_command_timeout_ms;
	char **pg_server_settings;      /* NULL-terminated name, value, ... */
	/* settings: */
	bool monitoring_postgres_enabled;
	bool monitoring_prometheus_enabled;
	/* plugins: (in file order) */
	struct lg_plugin_decl *plugins;
	size_t n_plugins;
	/* models: (validated by the model registry) */
	const struct lg_node *models;
};

/* Validates the core's sections of @doc and takes ownership of it (also on
 * failure). Unknown top-level keys are errors. */
int lg_core_config_build(struct lg_config_doc *doc, struct lg_core_config **out,
			 char *err, size_t errlen);
void lg_core_config_free(struct lg_core_config *cfg);

/* Prints the core's settings reference (all sections). */
void lg_core_config_print_reference(FILE *out, bool markdown);

#endif
