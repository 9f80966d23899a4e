/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: llmgate plugin descriptor
 *
 * A plugin is a shared object named <name>.so that exports exactly one
 * symbol, llmgate_plugin_v1(), returning a constant descriptor. The host
 * reads the descriptor before anything else runs, so it can check the ABI,
 * order plugins by their requirements and apply their migrations before
 * any init().
 *
 * Versioning rule: adding a member at the end of a public struct or a
 * function at the end of struct lg_host bumps LG_ABI_MINOR; changing or
 * removing anything bumps LG_ABI_MAJOR. A plugin built against minor M runs
 * on any host of the same major whose minor is >= M.
 *
 * ABI history:
 *   1.0  first release: descriptor, settings table, host vtable, routes,
 *        hooks, provider types, database, work pool, timers, HTTP client.
 *   1.1  host->model_access_add() (which models a caller may use),
 *        host->set_ready() (a plugin can fail /ready),
 *        host->sync_workers() (a grace period for lock-free snapshots),
 *        host->model_call() (a plugin calls a model of the registry),
 *        host->req_form() (multipart/form-data bodies),
 *        host->call_set_body(), host->call_reply_member() (PRE_UPSTREAM
 *        hooks rewrite the call and add to its reply);
 *        struct lg_call gains cost, kwh and kgco2eq.
 *   1.2  host->db_stats() (the PostgreSQL pool's state, for metrics),
 *        host->core_setting_bool() (the core's settings: section).
 *   1.3  host->db_copy(), host->db_copy_sync() (bulk loads with COPY, made
 *        exactly-once by a claim in the same transaction).
 */
#ifndef LLMGATE_PLUGIN_H
#define LLMGATE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <event2/event.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LG_ABI_MAJOR 1
#define LG_ABI_MINOR 3

#define LG_EXPORT __attribute__((visibility("default")))
#define LG_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))

struct lg_plugin;       /* opaque, owned by the host: one per loaded plugin */
struct lg_host;         /* the host vtable, see <llmgate/host.h> */

/**
 * struct lg_migration - one SQL migration of a plugin.
 * @version: 1, 2, 3... in order, no gaps; never reused or edited once released.
 * @name:    the slug of the file (0003_add_index.sql -> "add_index").
 * @sql:     the whole script, run in one transaction.
 *
 * Ownership: static data of the plugin. Usually generated from
 * sql/<plugin>/NNNN_slug.sql by llmgate-sql2c at build time.
 */
struct lg_migration {
	uint32_t version;
	const char *name;
	const char *sql;
};

/** enum lg_setting_type - the type of one configuration setting. */
enum lg_setting_type {
	LG_SETTING_STRING = 1,  /* a scalar string */
	LG_SETTING_INT,         /* a 64-bit integer within [min, max] */
	LG_SETTING_DOUBLE,      /* a number within [min, max] */
	LG_SETTING_BOOL,        /* true/false, yes/no, on/off */
	LG_SETTING_STRINGS,     /* a list of strings (or one string: a list of one) */
	LG_SETTING_DURATION,    /* milliseconds; "250ms", "30s", "5m", "1h" or a number of seconds */
	LG_SETTING_SIZE,        /* bytes; "512", "64k", "16M", "1G" (powers of 1024) */
};

/* Flags of a setting. */
#define LG_SETTING_SECRET   0x1u  /* never printed: logs and --check show "<redacted>" */
#define LG_SETTING_REQUIRED 0x2u  /* the plugin cannot run without it */

/**
 * struct lg_setting - one key of a plugin's configuration block.
 * @key:       the key under plugins.<name>; [a-z][a-z0-9_]* .
 * @type:      how the value is parsed and checked.
 * @def:       the default as it would be written in YAML, or NULL for none.
 * @min, @max: bounds for INT, DOUBLE, DURATION (ms), SIZE (bytes) and for
 *             the length of STRING; both 0 means unbounded.
 * @flags:     LG_SETTING_* flags.
 * @help:      one line for `llmgate config-reference`.
 *
 * The host validates the block against this table before init(): unknown
 * keys, wrong types and values out of range are refused with file and line.
 */
struct lg_setting {
	const char *key;
	enum lg_setting_type type;
	const char *def;
	double min, max;
	unsigned flags;
	const char *help;
};

/**
 * struct lg_plugin_info - what a plugin is and how it is run.
 * @abi_major, @abi_minor, @size, @libevent_version: filled by LG_PLUGIN().
 * @name:        [a-z][a-z0-9_]*, equal to the file stem.
 * @version:     the plugin's own version, free text.
 * @description: one line for `llmgate --check` and the docs.
 * @requires:    NULL-terminated list of plugin names that must be loaded and
 *               initialised first (their migrations run first too), or NULL.
 * @migrations:  the plugin's migrations in order, ended by an entry whose
 *               version is 0 (llmgate-sql2c writes it), or NULL.
 * @settings:    the plugin's configuration keys, or NULL for none.
 * @init:        registers routes, hooks and provider types and reads the
 *               config. The only moment registration is allowed. Returns 0 or
 *               a negative errno; on failure call host->set_error() first.
 *               Thread: main, before workers exist.
 * @start:       called once workers and the database pool run (timers,
 *               LISTEN, warm caches). Optional. Thread: main.
 * @stop:        stop producing work; in-flight requests still finish.
 *               Optional. Thread: main.
 * @fini:        free everything; only called if init() returned 0.
 *               Optional. Thread: main, after workers stopped.
 *
 * Every lifecycle function gets the same host vtable as init(), so the
 * plugin's state is one host->get_data(self) away.
 */
struct lg_plugin_info {
	uint16_t abi_major;
	uint16_t abi_minor;
	uint32_t size;
	uint32_t libevent_version;
	const char *name;
	const char *version;
	const char *description;
	const char *const *requires;
	const struct lg_migration *migrations;
	const struct lg_setting *settings;
	size_t n_settings;
	int (*init)(struct lg_plugin *self, const struct lg_host *host);
	int (*start)(struct lg_plugin *self, const struct lg_host *host);
	void (*stop)(struct lg_plugin *self, const struct lg_host *host);
	void (*fini)(struct lg_plugin *self, const struct lg_host *host);
	/* 1.1+ members go below, never above */
};

/** The name of the one exported function. The major is part of the name. */
#define LG_PLUGIN_SYMBOL "llmgate_plugin_v1"

/**
 * LG_PLUGIN() - define the descriptor; the last line of a plugin.
 *
 *   LG_PLUGIN(.name = "hello", .version = "1.0.0", .init = hello_init);
 */
#define LG_PLUGIN(...)                                                       \
	LG_EXPORT const struct lg_plugin_info *llmgate_plugin_v1(void);      \
	LG_EXPORT const struct lg_plugin_info *llmgate_plugin_v1(void)       \
	{                                                                    \
		static const struct lg_plugin_info info = {                  \
			.abi_major = LG_ABI_MAJOR,                           \
			.abi_minor = LG_ABI_MINOR,                           \
			.size = sizeof(struct lg_plugin_info),               \
			.libevent_version = LIBEVENT_VERSION_NUMBER,         \
			__VA_ARGS__                                          \
		};                                                           \
		return &info;                                                \
	}

#define LG_COUNT(a) (sizeof(a) / sizeof((a)[0]))

#ifdef __cplusplus
}
#endif
#endif /* LLMGATE_PLUGIN_H */
