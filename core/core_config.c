/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The core's own sections of config.yml: server, dependencies, settings,
 * plugins and models. Plain keys are settings tables (so the reference
 * documentation comes from the same place as the checks); what a table
 * cannot say (listen addresses, "auto" workers, the PostgreSQL URL scheme,
 * connect_args) is checked here by hand.
 *
 * Unknown keys are errors at every level, also under dependencies (an
 * OpenGateLLM config's redis or elasticsearch block is refused: llmgate
 * does not use them, and silently ignoring a block hides typos).
 */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

#define MAX_WORKERS 256
#define PLUGIN_NAME_MAX 64

#define HOUR_MS 3600000.0
#define DAY_MS 86400000.0

static const char *const top_level_keys[] = {
	"server", "plugins", "dependencies", "settings", "models",
};

static const struct lg_setting server_table[] = {
	{ "listen", LG_SETTING_STRINGS, "127.0.0.1:8080", 0, 0, 0,
	  "Addresses to listen on, each host:port or [v6]:port; port 0 picks a free port" },
	{ "workers", LG_SETTING_STRING, "auto", 0, 0, 0,
	  "Worker threads: \"auto\" (one per online CPU) or a number from 1 to 256" },
	{ "max_header_bytes", LG_SETTING_SIZE, "16k", 1024, 1 << 20, 0,
	  "Largest request line plus headers" },
	{ "max_headers", LG_SETTING_INT, "100", 1, 1000, 0,
	  "Most header fields in one request" },
	{ "max_body_bytes", LG_SETTING_SIZE, "4M", 1024, 1 << 30, 0,
	  "Largest request body" },
	{ "header_timeout", LG_SETTING_DURATION, "10s", 100, DAY_MS, 0,
	  "Time allowed to receive the request line and headers" },
	{ "body_timeout", LG_SETTING_DURATION, "60s", 100, DAY_MS, 0,
	  "Time allowed to receive the request body" },
	{ "idle_timeout", LG_SETTING_DURATION, "15s", 100, DAY_MS, 0,
	  "How long an idle keep-alive connection stays open" },
	{ "write_timeout", LG_SETTING_DURATION, "60s", 100, DAY_MS, 0,
	  "Time allowed for a client to accept each part of a response" },
	{ "drain_timeout", LG_SETTING_DURATION, "30s", 0, HOUR_MS, 0,
	  "On shutdown, how long in-flight requests may take to finish" },
	{ "max_connections", LG_SETTING_INT, "1024", 1, 1000000, 0,
	  "Most open client connections per worker" },
	{ "json_max_depth", LG_SETTING_INT, "64", 1, 1000, 0,
	  "Deepest nesting accepted in a JSON request body" },
	{ "json_max_items", LG_SETTING_INT, "10000", 1, 10000000, 0,
	  "Most members of one JSON object or elements of one array in a request body" },
	{ "log_level", LG_SETTING_STRING, "info", 0, 0, 0,
	  "error, warn, info or debug" },
};

/* connect_args is a map and is checked by hand (see bind_connect_args). */
static const struct lg_setting postgres_table[] = {
	{ "url", LG_SETTING_STRING, NULL, 0, 0, LG_SETTING_REQUIRED | LG_SETTING_SECRET,
	  "postgresql://USER:PASSWORD@HOST:PORT/DB (postgres:// and OpenGateLLM's "
	  "postgresql+asyncpg:// are accepted)" },
	{ "pool_size", LG_SETTING_INT, "5", 1, 200, 0,
	  "Connections to PostgreSQL" },
	{ "connect_retry", LG_SETTING_DURATION, "30s", 0, DAY_MS, 0,
	  "How long start-up keeps retrying an unreachable database" },
	{ "command_timeout", LG_SETTING_DURATION, "0", 0, DAY_MS, 0,
	  "Longest a query may run, client side; 0 means no limit" },
};

static const char *const postgres_bespoke_keys[] = { "connect_args", NULL };

/* More keys come from other modules: add a row here and a field in
 * struct lg_core_config, read in build_settings(). */
static const struct lg_setting settings_table[] = {
	{ "monitoring_postgres_enabled", LG_SETTING_BOOL, "true", 0, 0, 0,
	  "Record each request's usage in PostgreSQL (the usage plugin's ledger)" },
	{ "monitoring_prometheus_enabled", LG_SETTING_BOOL, "true", 0, 0, 0,
	  "Serve GET /metrics (the usage plugin)" },
};

static int out_of_memory(const struct lg_core_config *cfg, char *err, size_t errlen)
{
	lg_errf(err, errlen, "%s: out of memory", cfg->doc->path);
	return -ENOMEM;
}

/* A getter failing on a key of our own table is a bug here, not in the file. */
static int internal_error(const char *section, const char *key, char *err, size_t errlen)
{
	lg_errf(err, errlen, "%s.%s: internal error: no value after validation", section, key);
	return -EINVAL;
}

static const char *kind_name(const struct lg_node *node)
{
	switch (node->kind) {
	case LG_NODE_SEQ:
		return "a list";
	case LG_NODE_MAP:
		return "a map";
	case LG_NODE_NULL:
		return "nothing";
	default:
		return "a single value";
	}
}

static bool is_empty(const struct lg_node *node)
{
	return !node || node->kind == LG_NODE_NULL;
}

/* Binds @map without the keys in @skip (handled by hand): a shallow view
 * of the map whose children stay borrowed. */
static int bind_except(const char *file, const char *section, const struct lg_node *map,
		       const char *const *skip, const struct lg_setting *table, size_t n,
		       struct lg_settings **out, char *err, size_t errlen)
{
	struct lg_node view;
	int r;

	if (!map || map->kind != LG_NODE_MAP)
		return lg_settings_bind(file, section, map, table, n, out, err, errlen);
	view = *map;
	view.n = 0;
	view.keys = calloc(map->n + 1, sizeof *view.keys);
	view.items = calloc(map->n + 1, sizeof *view.items);
	view.key_lines = calloc(map->n + 1, sizeof *view.key_lines);
	if (!view.keys || !view.items || !view.key_lines) {
		lg_errf(err, errlen, "%s: out of memory", file);
		r = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < map->n; i++) {
		bool skipped = false;

		for (const char *const *s = skip; *s; s++)
			skipped |= strcmp(map->keys[i], *s) == 0;
		if (skipped)
			continue;
		view.keys[view.n] = map->keys[i];
		view.items[view.n] = map->items[i];
		view.key_lines[view.n++] = map->key_lines[i];
	}
	r = lg_settings_bind(file, section, &view, table, n, out, err, errlen);
out:
	free(view.keys);
	free(view.items);
	free(view.key_lines);
	return r;
}

/* ---- server ---- */

static bool valid_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '-' || c == '_';
}

/* "host:port" or "[v6]:port", port 0..65535. @why says what is wrong. */
static int check_listen(const char *addr, char *why, size_t whylen)
{
	const char *port, *close;
	char v6[64];
	struct in6_addr a6;
	unsigned long p;

	if (addr[0] == '[') {
		close = strchr(addr, ']');
		if (!close) {
			snprintf(why, whylen, "the closing ']' is missing");
			return -1;
		}
		if ((size_t)(close - addr - 1) >= sizeof v6) {
			snprintf(why, whylen, "the IPv6 address is too long");
			return -1;
		}
		memcpy(v6, addr + 1, (size_t)(close - addr - 1));
		v6[close - addr - 1] = '\0';
		if (inet_pton(AF_INET6, v6, &a6) != 1) {
			snprintf(why, whylen, "'%s' is not an IPv6 address", v6);
			return -1;
		}
		if (close[1] != ':') {
			snprintf(why, whylen, "the port is missing");
			return -1;
		}
		port = close + 2;
	} else {
		const char *colon = strrchr(addr, ':');

		if (!colon) {
			snprintf(why, whylen, "the port is missing");
			return -1;
		}
		if (memchr(addr, ':', (size_t)(colon - addr))) {
			snprintf(why, whylen, "an IPv6 address goes in brackets, as [::1]:8080");
			return -1;
		}
		if (colon == addr) {
			snprintf(why, whylen,
				 "the host is missing (0.0.0.0 listens on every IPv4 address)");
			return -1;
		}
		for (const char *h = addr; h < colon; h++) {
			if (!valid_host_char(*h)) {
				snprintf(why, whylen, "the host has an invalid character '%c'", *h);
				return -1;
			}
		}
		port = colon + 1;
	}
	if (!*port || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port) ||
	    (p = strtoul(port, NULL, 10)) > 65535) {
		snprintf(why, whylen, "the port must be a number from 0 to 65535");
		return -1;
	}
	return 0;
}

/* The line of item @i of a STRINGS value (a list or a single scalar). */
static int item_line(const struct lg_node *node, size_t i)
{
	if (!node)
		return 0;
	if (node->kind == LG_NODE_SEQ && i < node->n)
		return node->items[i]->line;
	return node->line;
}

static int build_listen(struct lg_core_config *cfg, const struct lg_node *server,
			const struct lg_settings *s, char *err, size_t errlen)
{
	const struct lg_node *node = lg_node_get(server, "listen");
	const char *file = cfg->doc->path;
	const char *const *addrs;
	char why[128];
	size_t n;

	if (lg_settings_strings(s, "listen", &addrs, &n) != 0)
		return internal_error("server", "listen", err, errlen);
	if (n == 0) {
		lg_errf(err, errlen, "%s:%d: server.listen: at least one address is needed",
			file, item_line(node, 0));
		return -EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		if (check_listen(addrs[i], why, sizeof why) < 0) {
			lg_errf(err, errlen,
				"%s:%d: server.listen: '%s' is not host:port or [v6]:port: %s",
				file, item_line(node, i), addrs[i], why);
			return -EINVAL;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(addrs[i], addrs[j]) == 0) {
				lg_errf(err, errlen, "%s:%d: server.listen: '%s' is listed twice",
					file, item_line(node, i), addrs[i]);
				return -EINVAL;
			}
		}
	}
	cfg->listen = calloc(n + 1, sizeof *cfg->listen);
	if (!cfg->listen)
		return out_of_memory(cfg, err, errlen);
	for (size_t i = 0; i < n; i++) {
		cfg->listen[i] = strdup(addrs[i]);
		if (!cfg->listen[i])
			return out_of_memory(cfg, err, errlen);
		cfg->n_listen = i + 1;
	}
	return 0;
}

static int online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	return n > MAX_WORKERS ? MAX_WORKERS : (int)n;
}

static int build_workers(struct lg_core_config *cfg, const struct lg_node *server,
			 const struct lg_settings *s, char *err, size_t errlen)
{
	const struct lg_node *node = lg_node_get(server, "workers");
	const char *text;
	char *end;
	long n;

	if (lg_settings_str(s, "workers", &text) != 0)
		return internal_error("server", "workers", err, errlen);
	if (strcasecmp(text, "auto") == 0) {
		cfg->workers = online_cpus();
		return 0;
	}
	errno = 0;
	n = strtol(text, &end, 10);
	if (text[0] < '0' || text[0] > '9' || *end || errno || n < 1 || n > MAX_WORKERS) {
		lg_errf(err, errlen, "%s:%d: server.workers: expected \"auto\" or an integer from "
			"1 to %d, got '%s'", cfg->doc->path, node ? node->line : 0, MAX_WORKERS,
			text);
		return -EINVAL;
	}
	cfg->workers = (int)n;
	return 0;
}

static int build_log_level(struct lg_core_config *cfg, const struct lg_node *server,
			   const struct lg_settings *s, char *err, size_t errlen)
{
	static const char *const names[] = {
		[LG_LOG_ERROR] = "error", [LG_LOG_WARN] = "warn",
		[LG_LOG_INFO] = "info", [LG_LOG_DEBUG] = "debug",
	};
	const struct lg_node *node = lg_node_get(server, "log_level");
	enum lg_log_level level;
	const char *text;

	if (lg_settings_str(s, "log_level", &text) != 0)
		return internal_error("server", "log_level", err, errlen);
	/* Case-insensitive, and "warning", as OpenGateLLM's INFO/WARNING. */
	if (lg_log_parse_level(text, &level) != 0 || (size_t)level >= LG_COUNT(names)) {
		lg_errf(err, errlen, "%s:%d: server.log_level: expected error, warn, info or "
			"debug, got '%s'", cfg->doc->path, node ? node->line : 0, text);
		return -EINVAL;
	}
	cfg->log_level = strdup(names[level]);
	return cfg->log_level ? 0 : out_of_memory(cfg, err, errlen);
}

static int build_server_numbers(struct lg_core_config *cfg, const struct lg_settings *s,
				char *err, size_t errlen)
{
	uint64_t hdr_bytes, body_bytes, hdr_to, body_to, idle_to, write_to, drain_to;
	int64_t max_headers, max_conns, depth, items;

	if (lg_settings_u64(s, "max_header_bytes", &hdr_bytes) ||
	    lg_settings_u64(s, "max_body_bytes", &body_bytes) ||
	    lg_settings_u64(s, "header_timeout", &hdr_to) ||
	    lg_settings_u64(s, "body_timeout", &body_to) ||
	    lg_settings_u64(s, "idle_timeout", &idle_to) ||
	    lg_settings_u64(s, "write_timeout", &write_to) ||
	    lg_settings_u64(s, "drain_timeout", &drain_to) ||
	    lg_settings_int(s, "max_headers", &max_headers) ||
	    lg_settings_int(s, "max_connections", &max_conns) ||
	    lg_settings_int(s, "json_max_depth", &depth) ||
	    lg_settings_int(s, "json_max_items", &items))
		return internal_error("server", "(numbers)", err, errlen);
	/* The tables' bounds keep every value within its field. */
	cfg->max_header_bytes = (size_t)hdr_bytes;
	cfg->max_body_bytes = (size_t)body_bytes;
	cfg->header_timeout_ms = (uint32_t)hdr_to;
	cfg->body_timeout_ms = (uint32_t)body_to;
	cfg->idle_timeout_ms = (uint32_t)idle_to;
	cfg->write_timeout_ms = (uint32_t)write_to;
	cfg->drain_timeout_ms = (uint32_t)drain_to;
	cfg->max_headers = (size_t)max_headers;
	cfg->max_connections = (size_t)max_conns;
	cfg->json_max_depth = (int)depth;
	cfg->json_max_items = (size_t)items;
	return 0;
}

static int build_server(struct lg_core_config *cfg, char *err, size_t errlen)
{
	const struct lg_node *server = lg_node_get(cfg->doc->root, "server");
	struct lg_settings *s = NULL;
	int r;

	r = lg_settings_bind(cfg->doc->path, "server", server, server_table,
			     LG_COUNT(server_table), &s, err, errlen);
	if (r)
		return r;
	r = build_listen(cfg, server, s, err, errlen);
	if (!r)
		r = build_workers(cfg, server, s, err, errlen);
	if (!r)
		r = build_log_level(cfg, server, s, err, errlen);
	if (!r)
		r = build_server_numbers(cfg, s, err, errlen);
	lg_settings_free(s);
	return r;
}

/* ---- dependencies ---- */

static bool valid_pg_setting_name(const char *name)
{
	if (!((*name >= 'a' && *name <= 'z') || *name == '_'))
		return false;
	for (name++; *name; name++)
		if (!((*name >= 'a' && *name <= 'z') || (*name >= '0' && *name <= '9') ||
		      *name == '_' || *name == '.'))
			return false;
	return true;
}

static int check_server_settings(const char *file, const struct lg_node *ss, char *err,
				 size_t errlen)
{
	static const char section[] = "dependencies.postgres.connect_args.server_settings";

	if (ss->kind != LG_NODE_MAP) {
		lg_errf(err, errlen, "%s:%d: %s: expected a map of PostgreSQL setting name to "
			"value (statement_timeout: \"30s\"), got %s", file, ss->line, section,
			kind_name(ss));
		return -EINVAL;
	}
	for (size_t i = 0; i < ss->n; i++) {
		const struct lg_node *v = ss->items[i];

		if (!valid_pg_setting_name(ss->keys[i])) {
			lg_errf(err, errlen, "%s:%d: %s.%s: invalid PostgreSQL setting name "
				"(lower-case letters, digits, '_' and '.')", file,
				ss->key_lines[i], section, ss->keys[i]);
			return -EINVAL;
		}
		if (v->kind != LG_NODE_SCALAR) {
			lg_errf(err, errlen, "%s:%d: %s.%s: expected a single value, got %s",
				file, v->line, section, ss->keys[i], kind_name(v));
			return -EINVAL;
		}
	}
	return 0;
}

/* Only server_settings is honoured; other asyncpg arguments are refused
 * rather than silently dropped. */
static int build_connect_args(struct lg_core_config *cfg, const struct lg_node *pg,
			      char *err, size_t errlen)
{
	const struct lg_node *args = lg_node_get(pg, "connect_args");
	const struct lg_node *ss = NULL;
	const char *file = cfg->doc->path;
	size_t n = 0;
	int r;

	if (!is_empty(args) && args->kind != LG_NODE_MAP) {
		lg_errf(err, errlen, "%s:%d: dependencies.postgres.connect_args: expected a map "
			"(server_settings: ...), got %s", file, args->line, kind_name(args));
		return -EINVAL;
	}
	for (size_t i = 0; args && i < args->n; i++) {
		if (strcmp(args->keys[i], "server_settings") != 0) {
			lg_errf(err, errlen, "%s:%d: dependencies.postgres.connect_args.%s: "
				"unknown key (known: server_settings)", file, args->key_lines[i],
				args->keys[i]);
			return -EINVAL;
		}
	}
	ss = lg_node_get(args, "server_settings");
	if (!is_empty(ss)) {
		r = check_server_settings(file, ss, err, errlen);
		if (r)
			return r;
		n = ss->n;
	}
	cfg->pg_server_settings = calloc(2 * n + 1, sizeof *cfg->pg_server_settings);
	if (!cfg->pg_server_settings)
		return out_of_memory(cfg, err, errlen);
	for (size_t i = 0; i < n; i++) {
		cfg->pg_server_settings[2 * i] = strdup(ss->keys[i]);
		if (!cfg->pg_server_settings[2 * i])
			return out_of_memory(cfg, err, errlen);
		cfg->pg_server_settings[2 * i + 1] = strdup(ss->items[i]->scalar);
		if (!cfg->pg_server_settings[2 * i + 1])
			return out_of_memory(cfg, err, errlen);
	}
	return 0;
}

/* libpq takes postgresql:// and postgres://; OpenGateLLM's SQLAlchemy
 * spelling postgresql+asyncpg:// is rewritten. The URL holds a password:
 * it never appears in a message. */
static int build_pg_url(struct lg_core_config *cfg, const struct lg_node *pg, const char *url,
			char *err, size_t errlen)
{
	static const char asyncpg[] = "postgresql+asyncpg://";
	const struct lg_node *node = lg_node_get(pg, "url");

	if (strncmp(url, asyncpg, strlen(asyncpg)) == 0) {
		if (asprintf(&cfg->pg_url, "postgresql://%s", url + strlen(asyncpg)) < 0) {
			cfg->pg_url = NULL;
			return out_of_memory(cfg, err, errlen);
		}
		return 0;
	}
	if (strncmp(url, "postgresql://", 13) != 0 && strncmp(url, "postgres://", 11) != 0) {
		lg_errf(err, errlen, "%s:%d: dependencies.postgres.url: expected a URL starting "
			"with postgresql:// (or postgres://, postgresql+asyncpg://); the value is "
			"not shown because it may hold a password", cfg->doc->path,
			node ? node->line : 0);
		return -EINVAL;
	}
	cfg->pg_url = strdup(url);
	return cfg->pg_url ? 0 : out_of_memory(cfg, err, errlen);
}

static int build_postgres(struct lg_core_config *cfg, const struct lg_node *pg, char *err,
			  size_t errlen)
{
	static const char section[] = "dependencies.postgres";
	struct lg_settings *s = NULL;
	uint64_t retry, timeout;
	const char *url;
	int64_t pool;
	int r;

	r = bind_except(cfg->doc->path, section, pg, postgres_bespoke_keys, postgres_table,
			LG_COUNT(postgres_table), &s, err, errlen);
	if (r)
		return r;
	if (lg_settings_str(s, "url", &url) || lg_settings_int(s, "pool_size", &pool) ||
	    lg_settings_u64(s, "connect_retry", &retry) ||
	    lg_settings_u64(s, "command_timeout", &timeout)) {
		r = internal_error(section, "(values)", err, errlen);
		goto out;
	}
	cfg->pg_pool_size = (int)pool;
	cfg->pg_connect_retry_ms = (uint32_t)retry;
	cfg->pg_command_timeout_ms = (uint32_t)timeout;
	r = build_pg_url(cfg, pg, url, err, errlen);
	if (!r)
		r = build_connect_args(cfg, pg, err, errlen);
out:
	lg_settings_free(s);
	return r;
}

static int build_dependencies(struct lg_core_config *cfg, char *err, size_t errlen)
{
	const struct lg_node *deps = lg_node_get(cfg->doc->root, "dependencies");
	const char *file = cfg->doc->path;

	if (!is_empty(deps) && deps->kind != LG_NODE_MAP) {
		lg_errf(err, errlen, "%s:%d: dependencies: expected a map (postgres: ...), got %s",
			file, deps->line, kind_name(deps));
		return -EINVAL;
	}
	for (size_t i = 0; deps && i < deps->n; i++) {
		if (strcmp(deps->keys[i], "postgres") == 0)
			continue;
		lg_errf(err, errlen, "%s:%d: dependencies.%s: not used by llmgate, which needs "
			"only postgres (remove this block)", file, deps->key_lines[i],
			deps->keys[i]);
		return -EINVAL;
	}
	return build_postgres(cfg, lg_node_get(deps, "postgres"), err, errlen);
}

/* ---- settings ---- */

static int build_settings(struct lg_core_config *cfg, char *err, size_t errlen)
{
	const struct lg_node *node = lg_node_get(cfg->doc->root, "settings");
	struct lg_settings *s = NULL;
	int r;

	r = lg_settings_bind(cfg->doc->path, "settings", node, settings_table,
			     LG_COUNT(settings_table), &s, err, errlen);
	if (r)
		return r;
	if (lg_settings_bool(s, "monitoring_postgres_enabled", &cfg->monitoring_postgres_enabled))
		r = internal_error("settings", "monitoring_postgres_enabled", err, errlen);
	else if (lg_settings_bool(s, "monitoring_prometheus_enabled",
				  &cfg->monitoring_prometheus_enabled))
		r = internal_error("settings", "monitoring_prometheus_enabled", err, errlen);
	lg_settings_free(s);
	return r;
}

/* ---- plugins and models ---- */

/* [a-z][a-z0-9_]*: the name is also a file name, so no '/', no "..". */
static bool valid_plugin_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > PLUGIN_NAME_MAX || !(name[0] >= 'a' && name[0] <= 'z'))
		return false;
	for (size_t i = 1; i < len; i++)
		if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9') ||
		      name[i] == '_'))
			return false;
	return true;
}

static int build_plugins(struct lg_core_config *cfg, char *err, size_t errlen)
{
	const struct lg_node *plugins = lg_node_get(cfg->doc->root, "plugins");
	const char *file = cfg->doc->path;

	if (is_empty(plugins))
		return 0;
	if (plugins->kind != LG_NODE_MAP) {
		lg_errf(err, errlen, "%s:%d: plugins: expected a map of plugin name to its "
			"settings (auth: {...}), got %s", file, plugins->line, kind_name(plugins));
		return -EINVAL;
	}
	for (size_t i = 0; i < plugins->n; i++) {
		const struct lg_node *block = plugins->items[i];

		if (!valid_plugin_name(plugins->keys[i])) {
			lg_errf(err, errlen, "%s:%d: plugins.%.64s: invalid plugin name "
				"(lower-case letters, digits and '_', starting with a letter)",
				file, plugins->key_lines[i], plugins->keys[i]);
			return -EINVAL;
		}
		if (block->kind != LG_NODE_MAP && block->kind != LG_NODE_NULL) {
			lg_errf(err, errlen, "%s:%d: plugins.%s: expected a map of settings (or "
				"nothing, or {}), got %s", file, block->line, plugins->keys[i],
				kind_name(block));
			return -EINVAL;
		}
	}
	cfg->plugins = calloc(plugins->n, sizeof *cfg->plugins);
	if (!cfg->plugins)
		return out_of_memory(cfg, err, errlen);
	for (size_t i = 0; i < plugins->n; i++) {
		struct lg_plugin_decl *d = &cfg->plugins[i];

		d->name = strdup(plugins->keys[i]);
		if (!d->name)
			return out_of_memory(cfg, err, errlen);
		d->block = plugins->items[i];
		d->line = plugins->key_lines[i];
		cfg->n_plugins = i + 1;
	}
	return 0;
}

static int build_models(struct lg_core_config *cfg, char *err, size_t errlen)
{
	const struct lg_node *models = lg_node_get(cfg->doc->root, "models");

	if (is_empty(models))
		return 0;
	if (models->kind != LG_NODE_SEQ) {
		lg_errf(err, errlen, "%s:%d: models: expected a list of models (- name: ...), "
			"got %s", cfg->doc->path, models->line, kind_name(models));
		return -EINVAL;
	}
	cfg->models = models;
	return 0;
}

/* ---- the whole ---- */

static int check_top_level(const struct lg_config_doc *doc, char *err, size_t errlen)
{
	const struct lg_node *root = doc->root;

	for (size_t i = 0; i < root->n; i++) {
		bool known = false;

		for (size_t k = 0; k < LG_COUNT(top_level_keys); k++)
			known |= strcmp(root->keys[i], top_level_keys[k]) == 0;
		if (known)
			continue;
		lg_errf(err, errlen, "%s:%d: unknown top-level key '%s' (known: server, plugins, "
			"dependencies, settings, models)", doc->path, root->key_lines[i],
			root->keys[i]);
		return -EINVAL;
	}
	return 0;
}

int lg_core_config_build(struct lg_config_doc *doc, struct lg_core_config **out,
			 char *err, size_t errlen)
{
	struct lg_core_config *cfg;
	int r;

	*out = NULL;
	if (!doc || !doc->root || doc->root->kind != LG_NODE_MAP) {
		lg_errf(err, errlen, "%s: not a parsed configuration", doc ? doc->path : "?");
		lg_config_doc_free(doc);
		return -EINVAL;
	}
	cfg = calloc(1, sizeof *cfg);
	if (!cfg) {
		lg_errf(err, errlen, "%s: out of memory", doc->path);
		lg_config_doc_free(doc);
		return -ENOMEM;
	}
	cfg->doc = doc;
	r = check_top_level(doc, err, errlen);
	if (!r)
		r = build_server(cfg, err, errlen);
	if (!r)
		r = build_dependencies(cfg, err, errlen);
	if (!r)
		r = build_settings(cfg, err, errlen);
	if (!r)
		r = build_plugins(cfg, err, errlen);
	if (!r)
		r = build_models(cfg, err, errlen);
	if (r) {
		lg_core_config_free(cfg);
		return r;
	}
	*out = cfg;
	return 0;
}

static void free_strv(char **v)
{
	for (size_t i = 0; v && v[i]; i++)
		free(v[i]);
	free(v);
}

void lg_core_config_free(struct lg_core_config *cfg)
{
	if (!cfg)
		return;
	free_strv(cfg->listen);
	free(cfg->log_level);
	free(cfg->pg_url);
	free_strv(cfg->pg_server_settings);
	for (size_t i = 0; i < cfg->n_plugins; i++)
		free(cfg->plugins[i].name);
	free(cfg->plugins);
	lg_config_doc_free(cfg->doc);
	free(cfg);
}

/* ---- reference ---- */

struct prose {
	const char *section;
	const char *text;
};

static const struct prose server_settings_prose = {
	"dependencies.postgres.connect_args.server_settings",
	"A map of PostgreSQL setting name to value, set on every connection of the pool "
	"(as asyncpg's connect_args.server_settings in OpenGateLLM), for example "
	"statement_timeout: \"30s\" or application_name: llmgate. Names are lower-case "
	"letters, digits, '_' and '.'. No other key is accepted under connect_args.",
};

static const struct prose dependencies_prose = {
	"dependencies",
	"Only postgres is used. The redis, elasticsearch, sentry and other blocks of an "
	"OpenGateLLM configuration are refused: remove them.",
};

static const struct prose plugins_prose = {
	"plugins",
	"A map of plugin name to that plugin's settings (a map, or nothing for the "
	"defaults). Each name loads <name>.so from the plugin directory; names are "
	"lower-case letters, digits and '_', starting with a letter. Each plugin documents "
	"its own keys.",
};

static const struct prose models_prose = {
	"models",
	"A list of models in OpenGateLLM's format (name, type, aliases, "
	"load_balancing_strategy, costs, providers), reconciled into the model registry at "
	"start and on reload.",
};

static void print_prose(FILE *out, const struct prose *p, bool markdown)
{
	if (markdown)
		fprintf(out, "### %s\n\n%s\n\n", p->section, p->text);
	else
		fprintf(out, "%s\n    %s\n\n", p->section, p->text);
}

void lg_core_config_print_reference(FILE *out, bool markdown)
{
	lg_settings_print_reference(out, "server", server_table, LG_COUNT(server_table),
				    markdown);
	print_prose(out, &dependencies_prose, markdown);
	lg_settings_print_reference(out, "dependencies.postgres", postgres_table,
				    LG_COUNT(postgres_table), markdown);
	print_prose(out, &server_settings_prose, markdown);
	lg_settings_print_reference(out, "settings", settings_table, LG_COUNT(settings_table),
				    markdown);
	print_prose(out, &plugins_prose, markdown);
	print_prose(out, &models_prose, markdown);
}
