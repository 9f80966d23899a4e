/* SPDX-License-Identifier: Apache-2.0 */
/* A fake llmgate host for plugin unit tests (see fake_host.h). */
#include "fake_host.h"

#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>

#include <event2/event.h>

struct lg_plugin {
	struct fake_host *fh;
	void *data;
};

struct lg_timer {
	LIST_ENTRY(lg_timer) link;
	struct fake_host *fh;
	struct event *ev;
	lg_timer_fn fn;
	void *arg;
	bool repeat;
};

struct fake_override {
	char *key;
	char *value;
	const char *list[2];    /* the value as a STRINGS list of one */
};

struct fake_host {
	struct lg_host vt;      /* what the plugin gets */
	struct event_base *base;
	struct lg_plugin plugin;
	void *dl;
	const struct lg_plugin_info *info;
	bool in_init;
	bool initialised;
	struct fake_override *ov;
	size_t nov;
	const struct lg_provider_ops *ops[FAKE_HOST_MAX_PROVIDERS];
	void *ud[FAKE_HOST_MAX_PROVIDERS];
	size_t nops;
	LIST_HEAD(, lg_timer) timers;
	int live_timers;
	int logs[LG_LOG_DEBUG + 1];
	char error[512];
	unsigned next_req;
};

struct fake_block {
	struct fake_block *next;
	max_align_t data[];
};

struct lg_req {
	struct fake_host *fh;
	struct fake_block *blocks;
	size_t allocated;
	char id[48];
	char *path;
	struct lg_str body;
	char **headers;         /* name, value, name, value... */
	size_t nheaders;
	void *data;
	struct fake_reply reply;
};

/* loop() has no argument: the fake host of the calling thread. */
static _Thread_local struct fake_host *current;

static void fake_errorf(struct fake_host *fh, const char *fmt, ...) LG_PRINTF(2, 3);

static void fake_errorf(struct fake_host *fh, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(fh->error, sizeof fh->error, fmt, ap);
	va_end(ap);
	fprintf(stderr, "fake-host: %s\n", fh->error);
}

/* ==== logging and errors ==== */

static void h_log(struct lg_plugin *self, enum lg_log_level level, const char *fmt, ...)
	LG_PRINTF(3, 4);

static void h_log(struct lg_plugin *self, enum lg_log_level level, const char *fmt, ...)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	va_list ap;

	if (level <= LG_LOG_DEBUG)
		self->fh->logs[level]++;
	fprintf(stderr, "fake-host [%s] %s: ", self->fh->info ? self->fh->info->name : "?",
		level <= LG_LOG_DEBUG ? names[level] : "?");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void h_set_error(struct lg_plugin *self, const char *fmt, ...) LG_PRINTF(2, 3);

static void h_set_error(struct lg_plugin *self, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(self->fh->error, sizeof self->fh->error, fmt, ap);
	va_end(ap);
	fprintf(stderr, "fake-host: set_error: %s\n", self->fh->error);
}

/* ==== settings ==== */

static const struct lg_setting *find_setting(const struct fake_host *fh, const char *key)
{
	for (size_t i = 0; fh->info && fh->info->settings && i < fh->info->n_settings; i++)
		if (strcmp(fh->info->settings[i].key, key) == 0)
			return &fh->info->settings[i];
	return NULL;
}

static const struct fake_override *find_override(const struct fake_host *fh, const char *key)
{
	for (size_t i = 0; i < fh->nov; i++)
		if (strcmp(fh->ov[i].key, key) == 0)
			return &fh->ov[i];
	return NULL;
}

static int parse_int(const char *s, int64_t *out)
{
	char *end;
	long long v;

	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_double(const char *s, double *out)
{
	char *end;

	errno = 0;
	*out = strtod(s, &end);
	return errno || end == s || *end || !isfinite(*out) ? -EINVAL : 0;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };

	for (size_t i = 0; i < 3; i++) {
		if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
			*out = strcasecmp(s, yes[i]) == 0;
			return 0;
		}
	}
	return -EINVAL;
}

/* A number and a unit from @units (factor of each), the bare number in
 * @bare units. */
static int parse_scaled(const char *s, const char *const *units, const double *factors,
			size_t n, double bare, uint64_t *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || v < 0 || !isfinite(v))
		return -EINVAL;
	if (*end == '\0') {
		*out = (uint64_t)(v * bare + 0.5);
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		if (strcmp(end, units[i]) == 0) {
			*out = (uint64_t)(v * factors[i] + 0.5);
			return 0;
		}
	}
	return -EINVAL;
}

static int parse_duration(const char *s, uint64_t *ms)
{
	static const char *const units[] = { "ms", "s", "m", "h" };
	static const double factors[] = { 1, 1000, 60000, 3600000 };

	return parse_scaled(s, units, factors, 4, 1000, ms);
}

static int parse_size(const char *s, uint64_t *bytes)
{
	static const char *const units[] = { "B", "k", "K", "KiB", "KB", "M", "MiB", "MB",
					     "G", "GiB", "GB" };
	static const double factors[] = { 1, 1024, 1024, 1024, 1024, 1048576, 1048576, 1048576,
					  1073741824.0, 1073741824.0, 1073741824.0 };

	return parse_scaled(s, units, factors, 11, 1, bytes);
}

static bool in_range(const struct lg_setting *st, double v)
{
	return (st->min == 0 && st->max == 0) || (v >= st->min && v <= st->max);
}

/* Parses @text as setting @st, checking its range; 0 or -EINVAL. */
static int check_value(const struct lg_setting *st, const char *text)
{
	int64_t i;
	double d;
	bool b;
	uint64_t u;

	switch (st->type) {
	case LG_SETTING_STRING:
		return in_range(st, (double)strlen(text)) ? 0 : -EINVAL;
	case LG_SETTING_INT:
		return parse_int(text, &i) == 0 && in_range(st, (double)i) ? 0 : -EINVAL;
	case LG_SETTING_DOUBLE:
		return parse_double(text, &d) == 0 && in_range(st, d) ? 0 : -EINVAL;
	case LG_SETTING_BOOL:
		return parse_bool(text, &b);
	case LG_SETTING_STRINGS:
		return 0;
	case LG_SETTING_DURATION:
		return parse_duration(text, &u) == 0 && in_range(st, (double)u) ? 0 : -EINVAL;
	case LG_SETTING_SIZE:
		return parse_size(text, &u) == 0 && in_range(st, (double)u) ? 0 : -EINVAL;
	}
	return -EINVAL;
}

/* The text of @key for a cfg_* call expecting @type. */
static int cfg_text(struct lg_plugin *self, const char *key, enum lg_setting_type type,
		    const char **text)
{
	const struct lg_setting *st = find_setting(self->fh, key);
	const struct fake_override *ov;

	if (!st || st->type != type)
		return -EINVAL;
	ov = find_override(self->fh, key);
	*text = ov ? ov->value : st->def;
	return *text ? 0 : -ENOENT;
}

static int h_cfg_str(struct lg_plugin *self, const char *key, const char **out)
{
	return cfg_text(self, key, LG_SETTING_STRING, out);
}

static int h_cfg_int(struct lg_plugin *self, const char *key, int64_t *out)
{
	const char *text;
	int rc = cfg_text(self, key, LG_SETTING_INT, &text);

	return rc < 0 ? rc : parse_int(text, out);
}

static int h_cfg_double(struct lg_plugin *self, const char *key, double *out)
{
	const char *text;
	int rc = cfg_text(self, key, LG_SETTING_DOUBLE, &text);

	return rc < 0 ? rc : parse_double(text, out);
}

static int h_cfg_bool(struct lg_plugin *self, const char *key, bool *out)
{
	const char *text;
	int rc = cfg_text(self, key, LG_SETTING_BOOL, &text);

	return rc < 0 ? rc : parse_bool(text, out);
}

/* A list of one: the override's value (a default list is not parsed). */
static int h_cfg_strings(struct lg_plugin *self, const char *key, const char *const **out,
			 size_t *n)
{
	const char *text;
	const struct fake_override *ov;
	int rc = cfg_text(self, key, LG_SETTING_STRINGS, &text);

	if (rc < 0)
		return rc;
	ov = find_override(self->fh, key);
	if (!ov)
		return -ENOENT;
	*out = ov->list;
	*n = 1;
	return 0;
}

static int h_cfg_u64(struct lg_plugin *self, const char *key, uint64_t *out)
{
	const struct lg_setting *st = find_setting(self->fh, key);
	const char *text;
	int rc;

	if (!st || (st->type != LG_SETTING_DURATION && st->type != LG_SETTING_SIZE))
		return -EINVAL;
	rc = cfg_text(self, key, st->type, &text);
	if (rc < 0)
		return rc;
	return st->type == LG_SETTING_DURATION ? parse_duration(text, out) : parse_size(text, out);
}

/* ==== state and registration ==== */

static void h_set_data(struct lg_plugin *self, void *data)
{
	self->data = data;
}

static void *h_get_data(struct lg_plugin *self)
{
	return self->data;
}

static int h_provider_add(struct lg_plugin *self, const struct lg_provider_ops *ops, void *ud)
{
	struct fake_host *fh = self->fh;

	if (!fh->in_init)
		return -EBUSY;
	if (!ops || ops->size < sizeof(struct lg_provider_ops) || !ops->type)
		return -EINVAL;
	for (size_t i = 0; i < fh->nops; i++)
		if (strcmp(fh->ops[i]->type, ops->type) == 0)
			return -EEXIST;
	if (fh->nops == FAKE_HOST_MAX_PROVIDERS)
		return -ENOMEM;
	fh->ops[fh->nops] = ops;
	fh->ud[fh->nops++] = ud;
	return 0;
}

/* ==== loop and timers ==== */

static struct event_base *h_loop(void)
{
	return current ? current->base : NULL;
}

static void timer_free(struct lg_timer *t)
{
	LIST_REMOVE(t, link);
	t->fh->live_timers--;
	event_free(t->ev);
	free(t);
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
	struct lg_timer *t = arg;
	lg_timer_fn fn = t->fn;
	void *fn_arg = t->arg;

	(void)fd;
	(void)what;
	if (!t->repeat)
		timer_free(t); /* as the real host: gone before the callback runs */
	fn(fn_arg);
}

static struct lg_timer *h_timer_start(struct lg_plugin *self, uint64_t ms, bool repeat,
				      lg_timer_fn fn, void *arg)
{
	struct fake_host *fh = self->fh;
	struct timeval tv = { .tv_sec = (time_t)(ms / 1000),
			      .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
	struct lg_timer *t;

	if (!fn || current != fh)
		return NULL;
	t = calloc(1, sizeof *t);
	if (!t)
		return NULL;
	*t = (struct lg_timer){ .fh = fh, .fn = fn, .arg = arg, .repeat = repeat };
	t->ev = event_new(fh->base, -1, repeat ? EV_PERSIST : 0, timer_fire, t);
	if (!t->ev || event_add(t->ev, &tv) != 0) {
		if (t->ev)
			event_free(t->ev);
		free(t);
		return NULL;
	}
	LIST_INSERT_HEAD(&fh->timers, t, link);
	fh->live_timers++;
	return t;
}

static void h_timer_stop(struct lg_timer *t)
{
	if (t)
		timer_free(t);
}

/* ==== requests ==== */

static const char *h_req_method(struct lg_req *req)
{
	(void)req;
	return "POST";
}

static const char *h_req_path(struct lg_req *req)
{
	return req->path;
}

static const char *h_req_header(struct lg_req *req, const char *name)
{
	for (size_t i = 0; i + 1 < req->nheaders * 2; i += 2)
		if (strcasecmp(req->headers[i], name) == 0)
			return req->headers[i + 1];
	return NULL;
}

static struct lg_str h_req_body(struct lg_req *req)
{
	return req->body;
}

static const char *h_req_id(struct lg_req *req)
{
	return req->id;
}

/* Each allocation is its own block, so ASan sees every overflow. */
static void *h_req_alloc(struct lg_req *req, size_t size)
{
	struct fake_block *b = calloc(1, sizeof *b + size);

	if (!b)
		return NULL;
	b->next = req->blocks;
	req->blocks = b;
	req->allocated += size;
	return b->data;
}

static void h_req_set_data(struct lg_req *req, struct lg_plugin *self, void *data)
{
	(void)self;
	req->data = data;
}

static void *h_req_get_data(struct lg_req *req, struct lg_plugin *self)
{
	(void)self;
	return req->data;
}

/* ==== replies, recorded ==== */

static void record_body(struct lg_req *req, const char *data, size_t len)
{
	char *p = realloc(req->reply.body, req->reply.len + len + 1);

	if (!p)
		abort(); /* a test host out of memory cannot report anything useful */
	memcpy(p + req->reply.len, data, len);
	req->reply.body = p;
	req->reply.len += len;
	p[req->reply.len] = '\0';
}

static void record_head(struct lg_req *req, int status, const char *content_type)
{
	req->reply.status = status;
	snprintf(req->reply.content_type, sizeof req->reply.content_type, "%s",
		 content_type ? content_type : "");
	req->reply.replies++;
}

static int h_reply_header(struct lg_req *req, const char *name, const char *value)
{
	(void)req;
	return strpbrk(name, "\r\n") || strpbrk(value, "\r\n") ? -EINVAL : 0;
}

static void h_reply(struct lg_req *req, int status, const char *content_type, const char *body,
		    size_t len)
{
	record_head(req, status, content_type);
	record_body(req, body ? body : "", body ? len : 0);
}

static void h_reply_error(struct lg_req *req, int status, const char *fmt, ...) LG_PRINTF(3, 4);

static void h_reply_error(struct lg_req *req, int status, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	record_head(req, status, "application/json");
	record_body(req, msg, strlen(msg));
}

static int h_stream_start(struct lg_req *req, int status, const char *content_type)
{
	record_head(req, status, content_type);
	return 0;
}

static long h_stream_write(struct lg_req *req, const char *data, size_t len)
{
	record_body(req, data, len);
	return 0;
}

static void h_stream_end(struct lg_req *req)
{
	req->reply.stream_ended = true;
}

static const struct lg_host fake_vtable = {
	.size = sizeof(struct lg_host),
	.abi_major = LG_ABI_MAJOR,
	.abi_minor = LG_ABI_MINOR,
	.log = h_log,
	.set_error = h_set_error,
	.cfg_str = h_cfg_str,
	.cfg_int = h_cfg_int,
	.cfg_double = h_cfg_double,
	.cfg_bool = h_cfg_bool,
	.cfg_strings = h_cfg_strings,
	.cfg_u64 = h_cfg_u64,
	.set_data = h_set_data,
	.get_data = h_get_data,
	.provider_add = h_provider_add,
	.loop = h_loop,
	.timer_start = h_timer_start,
	.timer_stop = h_timer_stop,
	.req_method = h_req_method,
	.req_path = h_req_path,
	.req_header = h_req_header,
	.req_body = h_req_body,
	.req_id = h_req_id,
	.req_alloc = h_req_alloc,
	.req_set_data = h_req_set_data,
	.req_get_data = h_req_get_data,
	.reply_header = h_reply_header,
	.reply = h_reply,
	.reply_error = h_reply_error,
	.stream_start = h_stream_start,
	.stream_write = h_stream_write,
	.stream_end = h_stream_end,
};

/* ==== the fake host itself ==== */

struct fake_host *fake_host_new(void)
{
	struct fake_host *fh;

	if (current)
		return NULL; /* one per thread */
	fh = calloc(1, sizeof *fh);
	if (!fh)
		return NULL;
	fh->vt = fake_vtable;
	fh->plugin.fh = fh;
	LIST_INIT(&fh->timers);
	fh->base = event_base_new();
	if (!fh->base) {
		free(fh);
		return NULL;
	}
	current = fh;
	return fh;
}

void fake_host_free(struct fake_host *fh)
{
	if (!fh)
		return;
	while (!LIST_EMPTY(&fh->timers))
		timer_free(LIST_FIRST(&fh->timers));
	if (fh->initialised && fh->info->fini)
		fh->info->fini(&fh->plugin, &fh->vt);
	if (fh->dl)
		dlclose(fh->dl);
	for (size_t i = 0; i < fh->nov; i++) {
		free(fh->ov[i].key);
		free(fh->ov[i].value);
	}
	free(fh->ov);
	event_base_free(fh->base);
	if (current == fh)
		current = NULL;
	free(fh);
}

int fake_host_set(struct fake_host *fh, const char *key, const char *value)
{
	struct fake_override *grown = realloc(fh->ov, (fh->nov + 1) * sizeof *grown);
	struct fake_override *ov;

	if (!grown)
		return -ENOMEM;
	fh->ov = grown;
	ov = &fh->ov[fh->nov];
	*ov = (struct fake_override){ .key = strdup(key), .value = strdup(value) };
	if (!ov->key || !ov->value) {
		free(ov->key);
		free(ov->value);
		return -ENOMEM;
	}
	ov->list[0] = ov->value;
	fh->nov++;
	return 0;
}

/* The checks of the real loader that matter to a plugin's author. */
static int check_descriptor(struct fake_host *fh, const char *path)
{
	const struct lg_plugin_info *info = fh->info;
	const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	size_t stem = strlen(base) > 3 ? strlen(base) - 3 : 0;

	if (!info || info->abi_major != LG_ABI_MAJOR || info->size < sizeof *info ||
	    info->abi_minor > LG_ABI_MINOR || !info->name || !info->init) {
		fake_errorf(fh, "%s: bad descriptor", path);
		return -EINVAL;
	}
	if (strlen(info->name) != stem || strncmp(info->name, base, stem) != 0) {
		fake_errorf(fh, "%s: the plugin is named \"%s\"", path, info->name);
		return -EINVAL;
	}
	for (size_t i = 0; i < fh->nov; i++) {
		const struct lg_setting *st = find_setting(fh, fh->ov[i].key);

		if (!st || check_value(st, fh->ov[i].value) < 0) {
			fake_errorf(fh, "%s: setting %s: %s", path, fh->ov[i].key,
				    st ? "bad value or out of range" : "unknown key");
			return -EINVAL;
		}
	}
	return 0;
}

int fake_host_load(struct fake_host *fh, const char *path)
{
	const struct lg_plugin_info *(*entry)(void);
	int rc;

	if (fh->dl)
		return -EBUSY;
	fh->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!fh->dl) {
		fake_errorf(fh, "dlopen: %s", dlerror());
		return -ENOENT;
	}
	*(void **)&entry = dlsym(fh->dl, LG_PLUGIN_SYMBOL);
	if (!entry) {
		fake_errorf(fh, "%s: no %s", path, LG_PLUGIN_SYMBOL);
		return -EINVAL;
	}
	fh->info = entry();
	rc = check_descriptor(fh, path);
	if (rc < 0)
		return rc;
	fh->in_init = true;
	rc = fh->info->init(&fh->plugin, &fh->vt);
	fh->in_init = false;
	fh->initialised = rc == 0;
	return rc;
}

int fake_host_load_named(struct fake_host *fh, const char *dir, const char *name)
{
	char path[4096];

	if ((size_t)snprintf(path, sizeof path, "%s/%s.so", dir, name) >= sizeof path)
		return -ENAMETOOLONG;
	return fake_host_load(fh, path);
}

struct event_base *fake_host_base(struct fake_host *fh)
{
	return fh->base;
}

const struct lg_host *fake_host_vtable(struct fake_host *fh)
{
	return &fh->vt;
}

const struct lg_plugin_info *fake_host_info(struct fake_host *fh)
{
	return fh->info;
}

struct lg_plugin *fake_host_plugin(struct fake_host *fh)
{
	return &fh->plugin;
}

const char *fake_host_error(struct fake_host *fh)
{
	return fh->error;
}

int fake_host_logs(struct fake_host *fh, enum lg_log_level level)
{
	return level <= LG_LOG_DEBUG ? fh->logs[level] : 0;
}

int fake_host_live_timers(struct fake_host *fh)
{
	return fh->live_timers;
}

size_t fake_host_nproviders(struct fake_host *fh)
{
	return fh->nops;
}

const struct lg_provider_ops *fake_host_provider(struct fake_host *fh, size_t i, void **ud)
{
	if (i >= fh->nops)
		return NULL;
	if (ud)
		*ud = fh->ud[i];
	return fh->ops[i];
}

struct lg_req *fake_req_new(struct fake_host *fh, const char *path, const char *body,
			    size_t len)
{
	struct lg_req *req = calloc(1, sizeof *req);
	char *copy;

	if (!req)
		return NULL;
	req->fh = fh;
	snprintf(req->id, sizeof req->id, "fake%08u", ++fh->next_req);
	req->path = strdup(path ? path : "/");
	copy = h_req_alloc(req, len + 1);
	if (!req->path || !copy) {
		fake_req_free(req);
		return NULL;
	}
	if (body)
		memcpy(copy, body, len);
	req->body = (struct lg_str){ .ptr = body ? copy : NULL, .len = body ? len : 0 };
	return req;
}

int fake_req_header(struct lg_req *req, const char *name, const char *value)
{
	char **grown = realloc(req->headers, (req->nheaders + 1) * 2 * sizeof *grown);
	char *n, *v;

	if (!grown)
		return -ENOMEM;
	req->headers = grown;
	n = strdup(name);
	v = strdup(value);
	if (!n || !v) {
		free(n);
		free(v);
		return -ENOMEM;
	}
	grown[req->nheaders * 2] = n;
	grown[req->nheaders * 2 + 1] = v;
	req->nheaders++;
	return 0;
}

void fake_req_free(struct lg_req *req)
{
	if (!req)
		return;
	while (req->blocks) {
		struct fake_block *next = req->blocks->next;

		free(req->blocks);
		req->blocks = next;
	}
	for (size_t i = 0; i < req->nheaders * 2; i++)
		free(req->headers[i]);
	free(req->headers);
	free(req->path);
	free(req->reply.body);
	free(req);
}

size_t fake_req_allocated(struct lg_req *req)
{
	return req->allocated;
}

const struct fake_reply *fake_req_reply(struct lg_req *req)
{
	return &req->reply;
}
