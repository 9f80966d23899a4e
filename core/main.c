/* SPDX-License-Identifier: Apache-2.0 */
/* llmgate: the command line, start-up, signals and shutdown. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>
#include <sodium.h>

#include "balancer.h"
#include "config.h"
#include "fetch.h"
#include "forward.h"
#include "lg_build.h"
#include "loader.h"
#include "log.h"
#include "loop.h"
#include "migrate.h"
#include "models.h"
#include "notify.h"
#include "pg.h"
#include "runtime.h"
#include "server.h"
#include "workpool.h"

#define EXIT_CONFIG 2

extern const struct lg_migration lg_core_migrations[];

struct options {
	const char *config;
	const char *plugin_dirs[16];
	size_t nplugin_dirs;
	const char *command;       /* serve, check, version, config-reference, migrate */
	const char *subcommand;    /* migrate status */
	bool markdown;
	bool dry_run;
};

/* Start-up and shutdown state of the serving process. */
struct app {
	struct lg_runtime rt;
	struct options opt;
	char **search_path;
	struct lg_fetcher *main_fetcher;
	struct event *sig_term, *sig_int, *sig_hup;
	struct event *drain_timer;
	uint64_t drain_deadline_ns;
	pthread_t startup_thread;
	bool startup_running;
	/* the service manager ($NOTIFY_SOCKET), or NULL */
	struct lg_notifier *notifier;
	bool announced_ready;   /* READY=1 sent; main loop only */
	int exit_code;
	char startup_err[1024];
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: llmgate [--config FILE] [--plugin-dir DIR]... [COMMAND]\n"
		"\n"
		"Commands:\n"
		"  serve                      run the gateway (the default)\n"
		"  --check                    validate the configuration and plugins, then exit\n"
		"  --version                  print the version and the plugin ABI\n"
		"  config-reference [--markdown]  print every configuration key\n"
		"  migrate [--dry-run]        apply pending database migrations and exit\n"
		"  migrate status             list applied and pending migrations\n"
		"\n"
		"Options:\n"
		"  -c, --config FILE          configuration file (default: $CONFIG_FILE, else ./config.yml)\n"
		"  -p, --plugin-dir DIR       where plugins are found (repeatable; default:\n"
		"                             $LLMGATE_PLUGIN_PATH, else %s)\n"
		"  -h, --help                 this help\n", LG_PLUGIN_DIR);
}

static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "plugin-dir", required_argument, NULL, 'p' },
		{ "check", no_argument, NULL, 'C' },
		{ "version", no_argument, NULL, 'V' },
		{ "markdown", no_argument, NULL, 'm' },
		{ "dry-run", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	o->command = "serve";
	while ((c = getopt_long(argc, argv, "c:p:hV", longopts, NULL)) != -1) {
		switch (c) {
		case 'c': o->config = optarg; break;
		case 'p':
			if (o->nplugin_dirs + 1 >= LG_COUNT(o->plugin_dirs)) {
				fprintf(stderr, "llmgate: too many --plugin-dir\n");
				return -1;
			}
			o->plugin_dirs[o->nplugin_dirs++] = optarg;
			break;
		case 'C': o->command = "check"; break;
		case 'V': o->command = "version"; break;
		case 'm': o->markdown = true; break;
		case 'n': o->dry_run = true; break;
		case 'h': usage(stdout); exit(0);
		default: usage(stderr); return -1;
		}
	}
	if (optind < argc)
		o->command = argv[optind++];
	if (optind < argc)
		o->subcommand = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "llmgate: unexpected argument \"%s\"\n", argv[optind]);
		return -1;
	}
	if (!o->config)
		o->config = getenv("CONFIG_FILE") && *getenv("CONFIG_FILE") ? getenv("CONFIG_FILE")
									      : "config.yml";
	return 0;
}

/* ---- configuration and plugins ---- */

static int load_config(struct app *app)
{
	struct lg_config_doc *doc;
	char err[1024];
	enum lg_log_level level;

	if (lg_config_load(app->opt.config, &doc, err, sizeof err) < 0 ||
	    lg_core_config_build(doc, &app->rt.cfg, err, sizeof err) < 0) {
		fprintf(stderr, "llmgate: %s\n", err);
		return -1;
	}
	if (lg_log_parse_level(app->rt.cfg->log_level, &level) == 0)
		lg_log_set_level(level);
	return 0;
}

static int load_plugins(struct app *app)
{
	char err[1024];

	app->search_path = lg_plugin_search_path(app->opt.plugin_dirs);
	app->rt.registry = lg_registry_new();
	if (!app->search_path || !app->rt.registry) {
		fprintf(stderr, "llmgate: out of memory\n");
		return -1;
	}
	if (lg_plugins_load(&app->rt, app->search_path, err, sizeof err) < 0) {
		lg_error("core", "%s", err);
		return -1;
	}
	return 0;
}

static void pg_config(const struct lg_core_config *c, struct lg_pg_config *pc)
{
	*pc = (struct lg_pg_config){
		.url = c->pg_url,
		.pool_size = c->pg_pool_size,
		.connect_retry_ms = c->pg_connect_retry_ms,
		.command_timeout_ms = c->pg_command_timeout_ms,
		.server_settings = (const char *const *)c->pg_server_settings,
		.application_name = "llmgate",
	};
}

static size_t count_migrations(const struct lg_migration *m)
{
	size_t n = 0;

	while (m && m[n].version != 0)
		n++;
	return n;
}

/* The core's migrations, then each plugin's in dependency order. */
static struct lg_migration_set *migration_sets(const struct lg_runtime *rt, size_t *n)
{
	struct lg_migration_set *sets = calloc(rt->nplugins + 1, sizeof *sets);

	if (!sets)
		return NULL;
	sets[0] = (struct lg_migration_set){ "core", lg_core_migrations,
					     count_migrations(lg_core_migrations) };
	*n = 1;
	for (size_t i = 0; i < rt->nplugins; i++) {
		const struct lg_plugin *p = rt->plugins[i];
		size_t count = count_migrations(p->info->migrations);

		if (count)
			sets[(*n)++] = (struct lg_migration_set){ p->name, p->info->migrations, count };
	}
	return sets;
}

static int run_migrations(const struct lg_runtime *rt, enum lg_migrate_mode mode, FILE *out,
			  char *err, size_t errlen)
{
	struct lg_pg_config pc;
	struct lg_migration_set *sets;
	size_t nsets = 0;
	PGconn *conn;
	int rc;

	pg_config(rt->cfg, &pc);
	sets = migration_sets(rt, &nsets);
	if (!sets) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	conn = lg_pg_connect_one(&pc, err, errlen);
	if (!conn) {
		free(sets);
		return -1;
	}
	rc = lg_migrate(conn, sets, nsets, mode, out, err, errlen);
	PQfinish(conn);
	free(sets);
	return rc;
}

/* ---- one-shot commands ---- */

static int cmd_version(void)
{
	printf("llmgate %s (plugin ABI %d.%d, libevent %s, libcurl %s, libpq %d)\n", LG_VERSION,
	       LG_ABI_MAJOR, LG_ABI_MINOR, event_get_version(),
	       curl_version_info(CURLVERSION_NOW)->version, PQlibVersion());
	return 0;
}

static int cmd_check(struct app *app)
{
	char err[1024];

	if (load_config(app) < 0)
		return EXIT_CONFIG;
	if (load_plugins(app) < 0)
		return EXIT_CONFIG;
	/* init() only registers, so it is safe to run here: it finds route
	 * collisions and plugin-specific configuration errors. */
	if (lg_plugins_init(&app->rt, err, sizeof err) < 0) {
		lg_error("core", "%s", err);
		return EXIT_CONFIG;
	}
	if (lg_models_check_config(&app->rt, app->rt.cfg->models, app->opt.config, err,
				   sizeof err) < 0) {
		lg_plugins_fini(&app->rt);
		lg_error("core", "%s", err);
		return EXIT_CONFIG;
	}
	lg_plugins_fini(&app->rt);
	printf("%s: configuration OK (%zu plugin%s", app->opt.config, app->rt.nplugins,
	       app->rt.nplugins == 1 ? "" : "s");
	for (size_t i = 0; i < app->rt.nplugins; i++)
		printf("%s%s %s", i ? ", " : ": ", app->rt.plugins[i]->name,
		       app->rt.plugins[i]->info->version ? app->rt.plugins[i]->info->version : "");
	printf(")\n");
	return 0;
}

static int cmd_migrate(struct app *app)
{
	enum lg_migrate_mode mode = LG_MIGRATE_APPLY;
	char err[1024];
	int n;

	if (app->opt.subcommand && strcmp(app->opt.subcommand, "status") == 0) {
		mode = LG_MIGRATE_STATUS;
	} else if (app->opt.subcommand) {
		fprintf(stderr, "llmgate: unknown migrate command \"%s\" (status, or none)\n",
			app->opt.subcommand);
		return EXIT_CONFIG;
	} else if (app->opt.dry_run) {
		mode = LG_MIGRATE_DRY_RUN;
	}
	if (load_config(app) < 0 || load_plugins(app) < 0)
		return EXIT_CONFIG;
	n = run_migrations(&app->rt, mode, stdout, err, sizeof err);
	if (n < 0) {
		lg_error("core", "migrate: %s", err);
		return 1;
	}
	if (mode == LG_MIGRATE_APPLY)
		printf("%d migration%s applied\n", n, n == 1 ? "" : "s");
	else if (mode == LG_MIGRATE_DRY_RUN)
		printf("%d migration%s pending\n", n, n == 1 ? "" : "s");
	return 0;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Every plugin found in the search path, in name order. */
static void print_plugin_references(char *const *search_path, bool markdown)
{
	struct lg_plugin *seen[256];
	size_t nseen = 0;

	for (char *const *d = search_path; *d; d++) {
		char path[4096], err[1024];
		char *names[256];
		size_t nnames = 0;
		DIR *dir = opendir(*d);
		struct dirent *de;

		if (!dir)
			continue;
		while ((de = readdir(dir)) && nnames < LG_COUNT(names)) {
			size_t len = strlen(de->d_name);

			if (len > 3 && strcmp(de->d_name + len - 3, ".so") == 0)
				names[nnames++] = strndup(de->d_name, len - 3);
		}
		closedir(dir);
		qsort(names, nnames, sizeof *names, name_cmp);
		for (size_t i = 0; i < nnames; i++) {
			struct lg_plugin *p;

			if (!names[i])
				continue;
			snprintf(path, sizeof path, "%s/%s.so", *d, names[i]);
			if (nseen < LG_COUNT(seen) &&
			    lg_plugin_open(path, names[i], seen, nseen, &p, err, sizeof err) == 0) {
				char section[128];

				snprintf(section, sizeof section, "plugins.%s", p->name);
				printf("\n%sPlugin %s%s%s: %s\n", markdown ? "" : "# ",
				       markdown ? "`" : "", p->name, markdown ? "`" : "",
				       p->info->description ? p->info->description : "");
				lg_settings_print_reference(stdout, section, p->info->settings,
							    p->info->settings ? p->info->n_settings : 0,
							    markdown);
				seen[nseen++] = p;
			}
			free(names[i]);
		}
	}
	for (size_t i = 0; i < nseen; i++)
		lg_plugin_close(seen[i]);
}

static int cmd_config_reference(struct app *app)
{
	app->search_path = lg_plugin_search_path(app->opt.plugin_dirs);
	if (!app->search_path)
		return 1;
	if (app->opt.markdown)
		printf("# Configuration reference\n\n"
		       "Generated by `llmgate config-reference --markdown`; do not edit by hand.\n"
		       "`${VAR}` and `${VAR:-default}` are replaced by environment variables before\n"
		       "the file is read. Durations take `ms`, `s`, `m`, `h` (a plain number is\n"
		       "seconds); sizes take `k`, `M`, `G` (powers of 1024).\n\n");
	lg_core_config_print_reference(stdout, app->opt.markdown);
	lg_models_print_reference(stdout, app->opt.markdown);
	print_plugin_references(app->search_path, app->opt.markdown);
	return 0;
}

/* ---- serving ---- */

static void begin_shutdown(struct app *app, const char *why);

/* The database part of start-up runs on its own thread: connecting may
 * retry for a while, and the workers answer /health and /ready (503)
 * meanwhile. */
static void *startup_main(void *arg)
{
	struct app *app = arg;
	struct lg_pg_config pc;
	struct lg_pg *pg;
	int n;

	pg_config(app->rt.cfg, &pc);
	lg_notifier_status(app->notifier, "Waiting for PostgreSQL");
	/* The pool retries an unreachable database for connect_retry. */
	pg = lg_pg_start(&pc, app->startup_err, sizeof app->startup_err);
	if (!pg)
		return NULL;
	lg_notifier_status(app->notifier, "Applying database migrations");
	n = run_migrations(&app->rt, LG_MIGRATE_APPLY, NULL, app->startup_err,
			   sizeof app->startup_err);
	if (n < 0) {
		lg_pg_stop(pg);
		return NULL;
	}
	if (n > 0)
		lg_info("core", "%d migration%s applied", n, n == 1 ? "" : "s");
	atomic_store(&app->rt.pg, pg);
	return NULL;
}

static void on_notify(const char *channel, const char *payload, void *arg)
{
	const struct lg_listen_entry *e = arg;

	e->fn(channel, payload, e->arg);
}

/* Back on the main loop once the database is up (or not). */
static void startup_done(void *arg)
{
	struct app *app = arg;
	struct lg_registry *reg = app->rt.registry;
	struct lg_pg *pg = atomic_load(&app->rt.pg);
	char err[1024];

	/* Teardown may have joined the thread already (shutdown during
	 * start-up); then this message runs as the main loop is freed. */
	if (!app->startup_running)
		return;
	pthread_join(app->startup_thread, NULL);
	app->startup_running = false;
	if (atomic_load(&app->rt.draining))
		return;
	if (!pg) {
		lg_error("core", "%s", app->startup_err);
		app->exit_code = 1;
		begin_shutdown(app, "start-up failed");
		return;
	}
	for (size_t i = 0; i < reg->nlistens; i++) {
		if (lg_pg_listen(pg, app->rt.main_loop, reg->listens[i].channel, on_notify,
				 &reg->listens[i]) < 0) {
			lg_error("core", "cannot LISTEN on %s", reg->listens[i].channel);
			app->exit_code = 1;
			begin_shutdown(app, "start-up failed");
			return;
		}
	}
	if (lg_models_start(app->rt.models, err, sizeof err) < 0 ||
	    lg_plugins_start(&app->rt, err, sizeof err) < 0) {
		lg_error("core", "%s", err);
		app->exit_code = 1;
		begin_shutdown(app, "start-up failed");
		return;
	}
	atomic_store(&app->rt.ready, true);
	lg_info("core", "ready: llmgate %s with %zu plugin%s", LG_VERSION, app->rt.nplugins,
		app->rt.nplugins == 1 ? "" : "s");
	lg_notifier_ready(app->notifier, "Serving (llmgate %s, %zu plugin%s)", LG_VERSION,
			  app->rt.nplugins, app->rt.nplugins == 1 ? "" : "s");
	app->announced_ready = true;
}

static void *startup_thread_main(void *arg)
{
	struct app *app = arg;

	startup_main(app);
	if (lg_loop_post(app->rt.main_loop, startup_done, app) != 0)
		lg_error("core", "cannot report start-up to the main loop");
	return NULL;
}

static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
	struct app *app = arg;
	size_t busy = lg_server_busy(&app->rt);

	(void)fd;
	(void)what;
	if (busy == 0 && !app->startup_running) {
		lg_loop_stop(app->rt.main_loop);
		return;
	}
	if (lg_now_ns() >= app->drain_deadline_ns) {
		lg_warn("core", "drain deadline reached with %zu request%s in flight: closing them",
			busy, busy == 1 ? "" : "s");
		lg_loop_stop(app->rt.main_loop);
	}
}

static void begin_shutdown(struct app *app, const char *why)
{
	struct timeval tick = { 0, 20 * 1000 };

	if (atomic_exchange(&app->rt.draining, true))
		return;
	lg_info("core", "%s: no longer accepting; draining for up to %u ms", why,
		app->rt.cfg->drain_timeout_ms);
	lg_notifier_stopping(app->notifier, "Draining (%s)", why);
	lg_server_stop_accepting(&app->rt);
	app->drain_deadline_ns = lg_now_ns() + (uint64_t)app->rt.cfg->drain_timeout_ms * 1000000u;
	app->drain_timer = event_new(lg_loop_base(app->rt.main_loop), -1, EV_PERSIST, drain_tick,
				     app);
	if (!app->drain_timer || event_add(app->drain_timer, &tick) != 0) {
		lg_error("core", "cannot start the drain timer: stopping now");
		lg_loop_stop(app->rt.main_loop);
	}
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	begin_shutdown(arg, sig == SIGINT ? "SIGINT" : "SIGTERM");
}

/* Validates the whole new configuration and applies what can change
 * while serving. -1 with @err when it is refused (the old one stays). */
static int reload_config(struct app *app, char *err, size_t errlen)
{
	struct lg_config_doc *doc;
	struct lg_core_config *cfg;
	enum lg_log_level level;

	if (lg_config_load(app->opt.config, &doc, err, errlen) < 0 ||
	    lg_core_config_build(doc, &cfg, err, errlen) < 0)
		return -1;
	if (lg_models_check_config(&app->rt, cfg->models, app->opt.config, err, errlen) < 0 ||
	    (atomic_load(&app->rt.ready) &&
	     lg_models_reload(app->rt.models, cfg, err, errlen) < 0)) {
		lg_core_config_free(cfg);
		return -1;
	}
	if (lg_log_parse_level(cfg->log_level, &level) == 0)
		lg_log_set_level(level);
	lg_core_config_free(cfg);
	return 0;
}

/* SIGHUP: validate the whole new configuration; keep the old one if it is
 * wrong. Settings that need a restart say so. The service manager hears
 * RELOADING=1, then READY=1 once the reload is applied or refused; before
 * the first READY=1 and while draining it hears nothing (READY=1 would
 * announce a gateway that does not serve). */
static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	struct app *app = arg;
	bool tell = app->announced_ready && !atomic_load(&app->rt.draining);
	char err[1024];

	(void)sig;
	(void)what;
	if (tell)
		lg_notifier_reloading(app->notifier);
	if (reload_config(app, err, sizeof err) < 0) {
		lg_error("core", "reload refused, the running configuration stays: %s", err);
		if (tell)
			lg_notifier_ready(app->notifier, "Serving; reload refused: %s", err);
		return;
	}
	lg_info("core", "reload: %s is valid (models and log level applied; other server and "
		"plugin settings take effect on restart)", app->opt.config);
	if (tell)
		lg_notifier_ready(app->notifier, "Serving; configuration reloaded");
}

static int add_signal(struct app *app, struct event **ev, int sig, event_callback_fn fn)
{
	*ev = evsignal_new(lg_loop_base(app->rt.main_loop), sig, fn, app);
	return *ev && event_add(*ev, NULL) == 0 ? 0 : -1;
}

static int serve_setup(struct app *app, char *err, size_t errlen)
{
	struct lg_fetch_defaults fd = { 5000, 120000, 60000, 600000, 64u << 20 };

	app->rt.main_loop = lg_loop_new("main");
	app->rt.workpool = lg_workpool_new(2);
	if (!app->rt.main_loop || !app->rt.workpool) {
		snprintf(err, errlen, "cannot create the main loop or the work pool");
		return -1;
	}
	lg_loop_bind_thread(app->rt.main_loop);
	app->main_fetcher = lg_fetcher_new(lg_loop_base(app->rt.main_loop), &fd);
	if (!app->main_fetcher) {
		snprintf(err, errlen, "cannot create the HTTP client");
		return -1;
	}
	lg_loop_set_fetcher(app->rt.main_loop, app->main_fetcher);
	if (add_signal(app, &app->sig_term, SIGTERM, on_signal) < 0 ||
	    add_signal(app, &app->sig_int, SIGINT, on_signal) < 0 ||
	    add_signal(app, &app->sig_hup, SIGHUP, on_reload) < 0) {
		snprintf(err, errlen, "cannot install signal handlers");
		return -1;
	}
	app->rt.balancer = lg_balancer_new();
	app->rt.models = lg_models_new(&app->rt);
	if (!app->rt.balancer || !app->rt.models) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (lg_server_prepare(&app->rt, err, errlen) < 0 ||
	    lg_models_register_routes(app->rt.models, err, errlen) < 0 ||
	    lg_forward_register_routes(&app->rt, err, errlen) < 0)
		return -1;
	if (lg_plugins_init(&app->rt, err, errlen) < 0)
		return -1;
	if (lg_models_check_config(&app->rt, app->rt.cfg->models, app->opt.config, err,
				   errlen) < 0)
		return -1;
	if (lg_server_start(&app->rt, err, errlen) < 0)
		return -1;
	if (pthread_create(&app->startup_thread, NULL, startup_thread_main, app) != 0) {
		snprintf(err, errlen, "cannot start the start-up thread");
		return -1;
	}
	app->startup_running = true;
	return 0;
}

static void serve_teardown(struct app *app)
{
	struct lg_pg *pg;

	if (app->startup_running) {
		/* It ends within dependencies.postgres.connect_retry. */
		pthread_join(app->startup_thread, NULL);
		app->startup_running = false;
	}
	if (app->rt.models)
		lg_models_stop(app->rt.models);
	/* Requests still open past the drain deadline end first, while plugins,
	 * the database and the pool still serve their COMPLETE hooks. */
	lg_server_close_exchanges(&app->rt);
	lg_plugins_stop(&app->rt);
	/* From here on plugins get -ESHUTDOWN for new database and pool work;
	 * once every worker has synchronised, none is still inside such a call.
	 * Work and queries already queued finish, and their completions run on
	 * the workers, which are still serving. */
	atomic_store(&app->rt.closing, true);
	lg_server_sync(&app->rt);
	if (app->rt.workpool)
		lg_workpool_free(app->rt.workpool);
	app->rt.workpool = NULL;
	pg = atomic_exchange(&app->rt.pg, NULL);
	if (pg)
		lg_pg_stop(pg);
	lg_server_free(&app->rt);
	/* Database results and work completions posted to the main loop
	 * belong to plugins: they run before the plugins are finalised. */
	lg_loop_run_posted(app->rt.main_loop);
	lg_models_free(app->rt.models);
	app->rt.models = NULL;
	lg_plugins_fini(&app->rt);
	lg_balancer_free(app->rt.balancer);
	app->rt.balancer = NULL;
	if (app->main_fetcher)
		lg_fetcher_free(app->main_fetcher);
	if (app->drain_timer)
		event_free(app->drain_timer);
	if (app->sig_term)
		event_free(app->sig_term);
	if (app->sig_int)
		event_free(app->sig_int);
	if (app->sig_hup)
		event_free(app->sig_hup);
	lg_loop_free(app->rt.main_loop);
	/* The start-up thread, the last other user, is joined. */
	lg_notifier_free(app->notifier);
	app->notifier = NULL;
}

static int cmd_serve(struct app *app)
{
	char err[1024];

	if (load_config(app) < 0)
		return EXIT_CONFIG;
	if (load_plugins(app) < 0)
		return EXIT_CONFIG;
	app->notifier = lg_notifier_from_env();
	if (serve_setup(app, err, sizeof err) < 0) {
		lg_error("core", "%s", err);
		app->exit_code = 1;
	} else if (lg_loop_run(app->rt.main_loop) < 0) {
		lg_error("core", "main loop failed");
		app->exit_code = 1;
	}
	serve_teardown(app);
	if (app->exit_code == 0)
		lg_info("core", "stopped");
	return app->exit_code;
}

static int global_init(void)
{
	/* Ignored so a client that leaves mid-write is an error, not a death. */
	if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
		return -1;
	if (sodium_init() < 0 || lg_loop_global_init() < 0 || lg_fetch_global_init() < 0)
		return -1;
	/* Seeds jansson's hash function before any thread parses JSON. */
	json_object_seed(0);
	return 0;
}

int main(int argc, char **argv)
{
	struct app app = { 0 };
	int rc;

	if (parse_options(argc, argv, &app.opt) < 0)
		return EXIT_CONFIG;
	if (strcmp(app.opt.command, "version") == 0)
		return cmd_version();
	if (global_init() < 0) {
		fprintf(stderr, "llmgate: cannot initialise libraries\n");
		return 1;
	}
	if (strcmp(app.opt.command, "serve") == 0)
		rc = cmd_serve(&app);
	else if (strcmp(app.opt.command, "check") == 0)
		rc = cmd_check(&app);
	else if (strcmp(app.opt.command, "migrate") == 0)
		rc = cmd_migrate(&app);
	else if (strcmp(app.opt.command, "config-reference") == 0)
		rc = cmd_config_reference(&app);
	else {
		fprintf(stderr, "llmgate: unknown command \"%s\"\n", app.opt.command);
		usage(stderr);
		rc = EXIT_CONFIG;
	}
	lg_plugins_free(&app.rt);
	lg_registry_free(app.rt.registry);
	lg_strv_free(app.search_path);
	lg_core_config_free(app.rt.cfg);
	lg_fetch_global_cleanup();
	return rc;
}
