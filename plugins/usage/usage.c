/* SPDX-License-Identifier: Apache-2.0 */
/* usage: the ledger of forwarded calls (DESIGN §9). The COMPLETE hook turns
 * each call into one JSON record and queues it, on the worker, without
 * waking anybody; a timer on the main loop sends the queue to PostgreSQL in
 * batches (one INSERT per batch). Batches the database does not take go to
 * an append-only journal on disk, replayed in order once inserts succeed
 * again. Every record carries its own random id, and inserts ignore ids
 * already stored, so a batch sent twice (a replay after a crash, a batch
 * both in flight and journaled at shutdown) is counted once. stop() flushes
 * what is left, so SIGTERM loses nothing.
 *
 * Setting enabled: false turns the ledger off (the plugin cannot read the
 * core's settings.monitoring_postgres_enabled; set both). */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>
#include <llmgate/host.h>

#include "journal.h"

#define RECORD_ID_BYTES 16
#define TICK_MS_MAX 50          /* how often the timer looks at the queue */
#define SQL_MAX 256

extern const struct lg_migration usage_migrations[];

static const char insert_sql[] =
	"INSERT INTO usage (record_id, request_id, created, endpoint, method, status, "
	"user_id, key_id, organization_id, user_name, key_name, model_id, model_name, "
	"provider_id, provider_model, prompt_tokens, completion_tokens, total_tokens, "
	"usage_estimated, latency_ms, ttft_ms, cost, client_gone, error) "
	"SELECT record_id, request_id, created, endpoint, method, status, "
	"user_id, key_id, organization_id, user_name, key_name, model_id, model_name, "
	"provider_id, provider_model, prompt_tokens, completion_tokens, total_tokens, "
	"usage_estimated, latency_ms, ttft_ms, cost, client_gone, error "
	"FROM json_populate_recordset(NULL::usage, $1::json) "
	"ON CONFLICT DO NOTHING";

enum flight_source { FROM_QUEUE, FROM_JOURNAL };

/* One INSERT on its way. Queue records are owned by the flight; journal
 * records are borrowed from usage.replay. */
struct flight {
	struct usage *u;
	enum flight_source src;
	char **lines;
	size_t n;
	bool orphaned;          /* stop() took over; the callback only frees it */
};

struct usage {
	const struct lg_host *host;
	struct lg_plugin *self;
	bool enabled;
	const char *journal_dir;
	uint64_t flush_interval_ms, retry_interval_ms, segment_size;
	size_t batch_size, queue_max;

	/* filled by the COMPLETE hook on every worker */
	pthread_mutex_t lock;
	char **ring;
	size_t head, count;
	uint64_t dropped;

	/* main thread only */
	struct lg_timer *timer;
	struct journal *journal;
	struct flight *inflight;
	struct journal_batch replay;    /* the segment being replayed */
	size_t replay_next;
	bool replaying;
	bool db_down;
	uint64_t last_flush_ms, retry_at_ms;
	uint64_t dropped_logged;
};

static const struct lg_setting usage_settings[] = {
	{ "enabled", LG_SETTING_BOOL, "true", 0, 0, 0,
	  "record usage in PostgreSQL; false mirrors settings.monitoring_postgres_enabled: false" },
	{ "journal_dir", LG_SETTING_STRING, NULL, 1, 4096, 0,
	  "directory of the journal that keeps records while PostgreSQL is unavailable "
	  "(required when enabled)" },
	{ "flush_interval", LG_SETTING_DURATION, "200ms", 10, 60000, 0,
	  "the longest a record waits in memory before its batch is sent" },
	{ "batch_size", LG_SETTING_INT, "500", 1, 5000, 0,
	  "records per INSERT; a queue this long is sent at once" },
	{ "queue_max", LG_SETTING_INT, "100000", 100, 10000000, 0,
	  "records kept in memory; beyond it new records are dropped and counted" },
	{ "retry_interval", LG_SETTING_DURATION, "1s", 50, 600000, 0,
	  "how often the journal is retried while PostgreSQL refuses it" },
	{ "segment_size", LG_SETTING_SIZE, "16M", 4096, 1073741824.0, 0,
	  "size after which the journal starts a new segment file" },
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- records (workers) ---- */

static void utc_now(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;
	char day[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%06ldZ", day, ts.tv_nsec / 1000);
}

static json_t *str_or_null(const char *s)
{
	return s ? json_string(s) : json_null();
}

static json_t *id_or_null(int64_t id)
{
	return id > 0 ? json_integer(id) : json_null();
}

/* Cost per OpenGateLLM: prices are per million tokens. */
static double call_cost(const struct lg_call *c)
{
	return (double)c->prompt_tokens * c->cost_prompt_tokens / 1e6 +
	       (double)c->completion_tokens * c->cost_completion_tokens / 1e6;
}

static char *record_json(const struct lg_call *c, const char *method,
			 const struct lg_principal *who)
{
	unsigned char rid[RECORD_ID_BYTES];
	char rid_hex[RECORD_ID_BYTES * 2 + 1], created[64];
	json_t *rec;
	char *text;

	randombytes_buf(rid, sizeof rid);
	sodium_bin2hex(rid_hex, sizeof rid_hex, rid, sizeof rid);
	utc_now(created, sizeof created);
	rec = json_pack("{s:s,s:o,s:s,s:o,s:o,s:i,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,"
			"s:I,s:I,s:I,s:b,s:f,s:o,s:f,s:b,s:o}",
			"record_id", rid_hex,
			"request_id", json_string(c->request_id ? c->request_id : ""),
			"created", created,
			"endpoint", json_string(c->endpoint ? c->endpoint : ""),
			"method", json_string(method ? method : ""),
			"status", c->status,
			"user_id", id_or_null(who ? who->user_id : 0),
			"key_id", id_or_null(who ? who->key_id : 0),
			"organization_id", id_or_null(who ? who->organization_id : 0),
			"user_name", str_or_null(who ? who->user_name : NULL),
			"key_name", str_or_null(who ? who->key_name : NULL),
			"model_id", id_or_null(c->model_id),
			"model_name", str_or_null(c->model_name),
			"provider_id", id_or_null(c->provider_id),
			"provider_model", str_or_null(c->provider_model),
			"prompt_tokens", (json_int_t)c->prompt_tokens,
			"completion_tokens", (json_int_t)c->completion_tokens,
			"total_tokens", (json_int_t)c->total_tokens,
			"usage_estimated", c->usage_estimated,
			"latency_ms", c->latency_ms,
			"ttft_ms", c->ttft_ms >= 0 ? json_real(c->ttft_ms) : json_null(),
			"cost", call_cost(c),
			"client_gone", c->client_gone,
			"error", str_or_null(c->error));
	if (!rec)
		return NULL;
	text = json_dumps(rec, JSON_COMPACT);
	json_decref(rec);
	return text;
}

/* Returns false when the queue is full (the record is then the caller's). */
static bool queue_push(struct usage *u, char *line)
{
	bool ok;

	pthread_mutex_lock(&u->lock);
	ok = u->count < u->queue_max;
	if (ok) {
		u->ring[(u->head + u->count) % u->queue_max] = line;
		u->count++;
	} else {
		u->dropped++;
	}
	pthread_mutex_unlock(&u->lock);
	return ok;
}

static enum lg_hook_result on_complete(struct lg_req *req, void *ud)
{
	struct usage *u = ud;
	const struct lg_call *c = u->host->req_call(req);
	char *line;

	if (!c)
		return LG_HOOK_OK;
	line = record_json(c, u->host->req_method(req), u->host->req_principal(req));
	if (!line) {
		u->host->log(u->self, LG_LOG_ERROR, "usage: cannot build the record");
		return LG_HOOK_OK;
	}
	if (!queue_push(u, line))
		free(line);
	return LG_HOOK_OK;
}

/* ---- the flusher (main loop) ---- */

static size_t queue_len(struct usage *u)
{
	size_t n;

	pthread_mutex_lock(&u->lock);
	n = u->count;
	pthread_mutex_unlock(&u->lock);
	return n;
}

/* Takes up to @max records, oldest first. Ownership: the caller's array. */
static char **queue_take(struct usage *u, size_t max, size_t *n)
{
	char **lines;
	size_t k;

	pthread_mutex_lock(&u->lock);
	k = u->count < max ? u->count : max;
	pthread_mutex_unlock(&u->lock);
	*n = 0;
	if (k == 0)
		return NULL;
	/* Only this thread takes, so at least k records are still there. */
	lines = malloc(k * sizeof *lines);
	if (!lines)
		return NULL;
	pthread_mutex_lock(&u->lock);
	for (size_t i = 0; i < k; i++) {
		lines[i] = u->ring[u->head];
		u->head = (u->head + 1) % u->queue_max;
	}
	u->count -= k;
	pthread_mutex_unlock(&u->lock);
	*n = k;
	return lines;
}

static void free_lines(char **lines, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(lines[i]);
	free(lines);
}

/* The batch as one JSON array: the single parameter of the INSERT. */
static char *batch_param(char *const *lines, size_t n)
{
	size_t total = 3, off = 0;
	char *buf;

	for (size_t i = 0; i < n; i++)
		total += strlen(lines[i]) + 1;
	buf = malloc(total);
	if (!buf)
		return NULL;
	buf[off++] = '[';
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(lines[i]);

		if (i)
			buf[off++] = ',';
		memcpy(buf + off, lines[i], l);
		off += l;
	}
	buf[off++] = ']';
	buf[off] = '\0';
	return buf;
}

static void log_dropped(struct usage *u)
{
	uint64_t dropped;

	pthread_mutex_lock(&u->lock);
	dropped = u->dropped;
	pthread_mutex_unlock(&u->lock);
	if (dropped != u->dropped_logged) {
		u->host->log(u->self, LG_LOG_ERROR, "usage: queue full (queue_max %zu): %llu "
			     "records lost so far", u->queue_max, (unsigned long long)dropped);
		u->dropped_logged = dropped;
	}
}

/* Last resort for records the database did not take. */
static void journal_or_lose(struct usage *u, char **lines, size_t n)
{
	int rc = journal_append(u->journal, lines, n);

	if (rc < 0)
		u->host->log(u->self, LG_LOG_ERROR, "usage: cannot write the journal in %s "
			     "(%s): %zu records lost", u->journal_dir, strerror(-rc), n);
}

static void note_db_down(struct usage *u, const char *error)
{
	if (!u->db_down)
		u->host->log(u->self, LG_LOG_WARN, "usage: PostgreSQL refused a batch, keeping "
			     "records in the journal until it is back: %s", error);
	u->db_down = true;
	u->retry_at_ms = now_ms() + u->retry_interval_ms;
}

static void note_db_up(struct usage *u)
{
	if (u->db_down)
		u->host->log(u->self, LG_LOG_INFO, "usage: PostgreSQL takes batches again");
	u->db_down = false;
}

static void replay_advance(struct usage *u, size_t n)
{
	int rc;

	u->replay_next += n;
	if (u->replay_next < u->replay.n)
		return;
	rc = journal_drop(u->journal, u->replay.seq);
	if (rc < 0)
		u->host->log(u->self, LG_LOG_ERROR, "usage: cannot delete a replayed journal "
			     "segment in %s: %s", u->journal_dir, strerror(-rc));
	journal_batch_free(&u->replay);
	u->replay_next = 0;
	u->replaying = false;
}

static void flight_free(struct flight *f)
{
	if (f->src == FROM_QUEUE)
		free_lines(f->lines, f->n);
	free(f);
}

static void on_inserted(const PGresult *res, const char *error, void *arg)
{
	struct flight *f = arg;
	struct usage *u;

	(void)res;
	/* stop() took over this batch, and the host may deliver its result
	 * after fini(): the plugin's state is gone, only the flight is left. */
	if (f->orphaned) {
		flight_free(f);
		return;
	}
	u = f->u;
	u->inflight = NULL;
	if (error) {
		note_db_down(u, error);
		if (f->src == FROM_QUEUE)
			journal_or_lose(u, f->lines, f->n);
	} else {
		note_db_up(u);
		if (f->src == FROM_JOURNAL)
			replay_advance(u, f->n);
	}
	flight_free(f);
}

/* Sends @lines; the flight owns them if they come from the queue. */
static int send_batch(struct usage *u, enum flight_source src, char **lines, size_t n)
{
	struct flight *f = calloc(1, sizeof *f);
	char *param = batch_param(lines, n);
	const char *params[1] = { param };
	int rc = -ENOMEM;

	if (!f || !param)
		goto fail;
	*f = (struct flight){ .u = u, .src = src, .lines = lines, .n = n };
	rc = u->host->db_query(u->self, insert_sql, 1, params, on_inserted, f);
	if (rc < 0)
		goto fail;
	free(param);
	u->inflight = f;
	return 0;
fail:
	free(param);
	free(f);
	return rc;
}

static void flush_queue(struct usage *u)
{
	size_t n;
	char **lines = queue_take(u, u->batch_size, &n);
	int rc;

	if (!lines)
		return;
	rc = send_batch(u, FROM_QUEUE, lines, n);
	if (rc < 0) {
		note_db_down(u, strerror(-rc));
		journal_or_lose(u, lines, n);
		free_lines(lines, n);
	}
}

/* While the journal holds records, new ones join it, so the order holds. */
static void queue_to_journal(struct usage *u)
{
	size_t n;
	char **lines;

	while ((lines = queue_take(u, u->batch_size, &n))) {
		journal_or_lose(u, lines, n);
		free_lines(lines, n);
	}
}

static void replay_chunk(struct usage *u)
{
	size_t n;
	int rc;

	if (!u->replaying) {
		rc = journal_read_oldest(u->journal, &u->replay);
		if (rc < 0) {
			u->host->log(u->self, LG_LOG_ERROR, "usage: cannot read the journal in "
				     "%s: %s", u->journal_dir, strerror(-rc));
			u->retry_at_ms = now_ms() + u->retry_interval_ms;
			return;
		}
		if (u->replay.skipped)
			u->host->log(u->self, LG_LOG_WARN, "usage: journal segment %llu: %zu "
				     "damaged records skipped",
				     (unsigned long long)u->replay.seq, u->replay.skipped);
		u->replaying = true;
		u->replay_next = 0;
		if (u->replay.n == 0) {
			replay_advance(u, 0);
			return;
		}
	}
	n = u->replay.n - u->replay_next;
	if (n > u->batch_size)
		n = u->batch_size;
	rc = send_batch(u, FROM_JOURNAL, u->replay.lines + u->replay_next, n);
	if (rc < 0)
		note_db_down(u, strerror(-rc));
}

static void on_tick(void *arg)
{
	struct usage *u = arg;
	uint64_t now = now_ms();
	size_t queued;

	log_dropped(u);
	if (u->inflight)
		return;
	queued = queue_len(u);
	if (u->replaying || journal_pending(u->journal) > 0) {
		if (queued > 0)
			queue_to_journal(u);
		if (now >= u->retry_at_ms)
			replay_chunk(u);
		return;
	}
	if (queued == 0 || (queued < u->batch_size && now - u->last_flush_ms < u->flush_interval_ms))
		return;
	u->last_flush_ms = now;
	flush_queue(u);
}

/* ---- lifecycle ---- */

static void month_start(int year, int month, char *buf, size_t len)
{
	snprintf(buf, len, "%04d-%02d-01 00:00:00+00", year + (month - 1) / 12,
		 (month - 1) % 12 + 1);
}

/* The current and next month get their partitions; anything else lands in
 * the default partition, so a failure here costs speed, not rows. */
static void create_partitions(struct usage *u)
{
	time_t t = time(NULL);
	struct tm tm;
	char from[40], to[40], sql[SQL_MAX], err[256];
	PGresult *res = NULL;

	gmtime_r(&t, &tm);
	for (int k = 0; k < 2; k++) {
		int year = tm.tm_year + 1900, month = tm.tm_mon + 1 + k;

		month_start(year, month, from, sizeof from);
		month_start(year, month + 1, to, sizeof to);
		snprintf(sql, sizeof sql, "CREATE TABLE IF NOT EXISTS usage_p%04d%02d PARTITION "
			 "OF usage FOR VALUES FROM ('%s') TO ('%s')",
			 year + (month - 1) / 12, (month - 1) % 12 + 1, from, to);
		if (u->host->db_query_sync(u->self, sql, 0, NULL, &res, err, sizeof err) < 0)
			u->host->log(u->self, LG_LOG_WARN, "usage: cannot create the partition "
				     "from %s (rows go to usage_default): %s", from, err);
		PQclear(res);
		res = NULL;
	}
}

static int usage_start(struct lg_plugin *self, const struct lg_host *host)
{
	struct usage *u = host->get_data(self);
	int rc;

	if (!u->enabled)
		return 0;
	rc = journal_open(u->journal_dir, u->segment_size, &u->journal);
	if (rc < 0) {
		host->set_error(self, "cannot open the journal directory %s: %s",
				u->journal_dir, strerror(-rc));
		return rc;
	}
	if (journal_pending(u->journal) > 0)
		host->log(self, LG_LOG_INFO, "usage: %zu journal segments to replay",
			  journal_pending(u->journal));
	create_partitions(u);
	u->last_flush_ms = now_ms();
	u->timer = host->timer_start(self, u->flush_interval_ms < TICK_MS_MAX ?
				     u->flush_interval_ms : TICK_MS_MAX, true, on_tick, u);
	if (!u->timer) {
		host->set_error(self, "cannot start the flush timer");
		return -ENOMEM;
	}
	return 0;
}

/* Inserts @lines now, or journals them. Thread: main. */
static void insert_sync(struct usage *u, char **lines, size_t n)
{
	char *param = batch_param(lines, n);
	const char *params[1] = { param };
	PGresult *res = NULL;
	char err[256] = "out of memory";

	if (param && u->host->db_query_sync(u->self, insert_sql, 1, params, &res, err,
					    sizeof err) == 0) {
		PQclear(res);
		free(param);
		return;
	}
	free(param);
	note_db_down(u, err);
	journal_or_lose(u, lines, n);
}

/* The queue, and a batch still in flight (sent again: inserts are
 * idempotent), reach the database or the journal before we return. */
static void usage_stop(struct lg_plugin *self, const struct lg_host *host)
{
	struct usage *u = host->get_data(self);
	struct flight *f = u->inflight;
	char **lines;
	size_t n;

	if (!u->enabled)
		return;
	host->timer_stop(u->timer);
	u->timer = NULL;
	if (f && f->src == FROM_QUEUE) {
		insert_sync(u, f->lines, f->n);
		free_lines(f->lines, f->n);
		f->lines = NULL;
		f->n = 0;
	}
	if (f) {
		f->orphaned = true;
		u->inflight = NULL;
	}
	/* Records behind a journal keep their order there; the next start
	 * replays them. */
	if (u->replaying || journal_pending(u->journal) > 0) {
		queue_to_journal(u);
		return;
	}
	while ((lines = queue_take(u, u->batch_size, &n))) {
		if (u->db_down)
			journal_or_lose(u, lines, n);
		else
			insert_sync(u, lines, n);
		free_lines(lines, n);
	}
	log_dropped(u);
}

static int read_settings(struct usage *u)
{
	const struct lg_host *h = u->host;
	int64_t batch, qmax;

	if (h->cfg_bool(u->self, "enabled", &u->enabled) < 0 ||
	    h->cfg_u64(u->self, "flush_interval", &u->flush_interval_ms) < 0 ||
	    h->cfg_u64(u->self, "retry_interval", &u->retry_interval_ms) < 0 ||
	    h->cfg_u64(u->self, "segment_size", &u->segment_size) < 0 ||
	    h->cfg_int(u->self, "batch_size", &batch) < 0 ||
	    h->cfg_int(u->self, "queue_max", &qmax) < 0) {
		h->set_error(u->self, "cannot read the settings");
		return -EINVAL;
	}
	u->batch_size = (size_t)batch;
	u->queue_max = (size_t)qmax;
	if (u->enabled && (h->cfg_str(u->self, "journal_dir", &u->journal_dir) < 0 ||
			   !u->journal_dir || !*u->journal_dir)) {
		h->set_error(u->self, "journal_dir is required (where records wait while "
			     "PostgreSQL is unavailable)");
		return -EINVAL;
	}
	return 0;
}

static void usage_free(struct usage *u)
{
	if (!u)
		return;
	if (u->ring) {
		for (size_t i = 0; i < u->count; i++)
			free(u->ring[(u->head + i) % u->queue_max]);
		free(u->ring);
	}
	journal_batch_free(&u->replay);
	journal_close(u->journal);
	pthread_mutex_destroy(&u->lock);
	free(u);
}

static int usage_init(struct lg_plugin *self, const struct lg_host *host)
{
	struct usage *u;
	int rc;

	if (sodium_init() < 0) {
		host->set_error(self, "libsodium cannot initialise");
		return -EIO;
	}
	u = calloc(1, sizeof *u);
	if (!u)
		return -ENOMEM;
	u->host = host;
	u->self = self;
	if (pthread_mutex_init(&u->lock, NULL) != 0) {
		free(u);
		return -ENOMEM;
	}
	rc = read_settings(u);
	if (rc < 0)
		goto fail;
	if (!u->enabled) {
		host->log(self, LG_LOG_INFO, "usage: disabled, no usage is recorded");
		host->set_data(self, u);
		return 0;
	}
	rc = -ENOMEM;
	u->ring = calloc(u->queue_max, sizeof *u->ring);
	if (!u->ring)
		goto fail;
	rc = host->hook_add(self, LG_PHASE_COMPLETE, on_complete, 1000, u);
	if (rc < 0) {
		host->set_error(self, "cannot add the COMPLETE hook");
		goto fail;
	}
	host->set_data(self, u);
	return 0;
fail:
	usage_free(u);
	return rc;
}

static void usage_fini(struct lg_plugin *self, const struct lg_host *host)
{
	struct usage *u = host->get_data(self);

	/* Records that arrived after stop() still reach the journal. */
	if (u->journal)
		queue_to_journal(u);
	usage_free(u);
}

LG_PLUGIN(.name = "usage", .version = "0.1.0",
	  .description = "usage ledger: one row per forwarded call, journaled while "
			 "PostgreSQL is unavailable",
	  .migrations = usage_migrations,
	  .settings = usage_settings, .n_settings = LG_COUNT(usage_settings),
	  .init = usage_init, .start = usage_start, .stop = usage_stop, .fini = usage_fini);
