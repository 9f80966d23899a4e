/* SPDX-License-Identifier: Apache-2.0 */
/* A fake llmgate host for plugin unit tests: it loads one plugin .so with
 * dlopen, hands it a struct lg_host whose members record what the plugin
 * does, and lets the test drive the plugin's ops without the server.
 *
 * Implemented: log, set_error, cfg_* (the plugin's settings table with its
 * defaults, and overrides set before loading), set_data/get_data,
 * provider_add (captures the ops; -EBUSY outside init), loop, timer_start,
 * timer_stop (on the fake host's own event_base), req_method, req_path,
 * req_header, req_body, req_id, req_alloc (a per-request arena),
 * req_set_data/req_get_data, and the reply functions (reply, reply_error,
 * reply_header, stream_start/write/end) as recorders. Every other member
 * is NULL: a plugin that calls one crashes the test, loudly.
 *
 * One fake host per thread at a time: loop() takes no argument, so the
 * fake host of the calling thread is kept in a thread-local pointer. */
#ifndef LG_TEST_FAKE_HOST_H
#define LG_TEST_FAKE_HOST_H

#include <stdbool.h>
#include <stddef.h>

#include <llmgate/host.h>
#include <llmgate/provider.h>

#define FAKE_HOST_MAX_PROVIDERS 8

struct fake_host;

/* A new fake host with its own event_base, or NULL. */
struct fake_host *fake_host_new(void);
/* Calls the plugin's fini() (if init succeeded), unloads it, stops the
 * timers still running and frees everything. NULL is ignored. */
void fake_host_free(struct fake_host *fh);

/* Sets a setting of the plugin's block as it would be written in YAML
 * ("30s", "512"); before fake_host_load(). Returns 0 or -ENOMEM. */
int fake_host_set(struct fake_host *fh, const char *key, const char *value);

/* Loads @path and runs init(): 0, or a negative errno (a bad descriptor,
 * an override that is not in the settings table or out of its range:
 * -EINVAL; init's own error). The reason is in fake_host_error(). */
int fake_host_load(struct fake_host *fh, const char *path);
/* Loads <dir>/<name>.so. */
int fake_host_load_named(struct fake_host *fh, const char *dir, const char *name);

struct event_base *fake_host_base(struct fake_host *fh);
/* The vtable the plugin was given (to call e.g. req_id() from a test). */
const struct lg_host *fake_host_vtable(struct fake_host *fh);
const struct lg_plugin_info *fake_host_info(struct fake_host *fh);
struct lg_plugin *fake_host_plugin(struct fake_host *fh);
/* The last set_error() or load error, or "". */
const char *fake_host_error(struct fake_host *fh);
/* Log lines at @level so far (each is also printed to stderr). */
int fake_host_logs(struct fake_host *fh, enum lg_log_level level);
/* Timers started and not yet fired (one-shot) or stopped. */
int fake_host_live_timers(struct fake_host *fh);

/* The provider types registered in init(), with their ud. */
size_t fake_host_nproviders(struct fake_host *fh);
const struct lg_provider_ops *fake_host_provider(struct fake_host *fh, size_t i, void **ud);

/* ---- requests ---- */

/* A POST request to @path with @body (copied; may be NULL) and an id. */
struct lg_req *fake_req_new(struct fake_host *fh, const char *path, const char *body,
			    size_t len);
/* Adds a request header ("Content-Type", "..."). Returns 0 or -ENOMEM. */
int fake_req_header(struct lg_req *req, const char *name, const char *value);
/* Frees the request and everything req_alloc() gave for it. */
void fake_req_free(struct lg_req *req);
/* Bytes handed out by req_alloc() for @req. */
size_t fake_req_allocated(struct lg_req *req);

/* What the plugin answered through the reply functions. */
struct fake_reply {
	int status;             /* 0 until it answered */
	char content_type[128];
	char *body;             /* NUL-terminated; reply, reply_error or the stream */
	size_t len;
	int replies;            /* reply() + reply_error() + stream_start() calls */
	bool stream_ended;
};
const struct fake_reply *fake_req_reply(struct lg_req *req);

#endif /* LG_TEST_FAKE_HOST_H */
