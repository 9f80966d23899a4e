/* SPDX-License-Identifier: Apache-2.0 */
/* usage: the ledger of forwarded calls (DESIGN §9). The COMPLETE hook turns
 * each call into one record, a tuple of binary COPY (record.c), and queues it,
 * on the worker, without waking anybody; a timer on the main loop sends the
 * queue to PostgreSQL in batches (one COPY per batch, host->db_copy()).
 * Batches the database does not take go to an append-only journal on disk,
 * replayed in order, batch by batch, once loads succeed again. Every batch
 * has a random id, kept with its records in the journal, that the COPY's
 * transaction claims in usage_batches first: a batch sent twice (a replay
 * after a crash, a batch both in flight and sent again at shutdown, a reply
 * lost after the commit) is counted once. stop() flushes what is left, so
 * SIGTERM loses nothing.
 *
 * The journal has a size cap (journal_max_size). Once it is reached, new
 * records wait in the queue; when that is full too they are dropped and
 * counted, an error is logged (at most every ALARM_EVERY_MS) and /ready
 * answers 503 until the journal shrinks.
 *
 * Setting enabled: false, or the core's settings.monitoring_postgres_enabled:
 * false, turns the ledger off. The COMPLETE hook
 * also feeds GET /metrics (metrics.c); queries.c serves the usage API and
 * retention.c keeps the monthly partitions. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>
#include <llmgate/host.h>

#include "journal.h"
#include "usage.h"

#define TICK_MS_MAX 50          /* how often the timer looks at the queue */
#define ALARM_EVERY_MS 10000    /* the most often "records are lost" is logged */
#define BATCH_BUF_KEEP (4u << 20)       /* the largest batch text kept for the next */
#define BATCH_ID_BYTES 16
#define BATCH_ID_HEX (BATCH_ID_BYTES * 2)

extern const struct lg_migration usage_migrations[];

/* sql/usage/0003: claims a batch (and sets the lock wait) in its COPY's
 * transaction: $1 the batch id, $2 its records, $3 the lock wait. */
static const char claim_sql[] = "SELECT usage_claim_batch($1, $2::int, $3)";
/* sql/usage/0002: records journaled as JSON by llmgate 0.2, idempotent on
 * record_id; $1 a JSON array, $2 the lock wait. */
static const char json_insert_sql[] = "SELECT usage_insert_batch($1::json, $2::text)";

enum flight_source { FROM_QUEUE, FROM_JOURNAL };

/* One batch on its way. Queue records (@recs) are owned by the flight;
 * journal lines (@lines) are borrowed from usage.replay: "<id> <record in
 * base64>", or JSON objects of 0.2 with no batch id (@id empty). */
struct flight {
	struct usage *u;
	enum flight_source src;
	char id[BATCH_ID_HEX + 1];
	struct usage_record **recs;
	char **lines;
	size_t n;
	bool orphaned;          /* stop() took over; the callback only frees it */
};

static const struct lg_setting usage_settings[] = {
	{ "enabled", LG_SETTING_BOOL, "true", 0, 0, 0,
	  "record usage in PostgreSQL (settings.monitoring_postgres_enabled: false also turns it off)" },
	{ "journal_dir", LG_SETTING_STRING, NULL, 1, 4096, 0,
	  "directory of the journal that keeps records while PostgreSQL is unavailable "
	  "(required when enabled)" },
	{ "flush_interval", LG_SETTING_DURATION, "200ms", 10, 60000, 0,
	  "the longest a record waits in memory before its batch is sent" },
	{ "batch_size", LG_SETTING_INT, "2000", 1, 5000, 0,
	  "records per batch (one COPY); a queue this long is sent at once" },
	{ "queue_max", LG_SETTING_INT, "100000", 100, 10000000, 0,
	  "records kept in memory; beyond it new records are dropped and counted" },
	{ "retry_interval", LG_SETTING_DURATION, "1s", 50, 600000, 0,
	  "how often the journal is retried while PostgreSQL refuses it" },
	{ "segment_size", LG_SETTING_SIZE, "16M", 4096, 1073741824.0, 0,
	  "size after which the journal starts a new segment file" },
	{ "journal_max_size", LG_SETTING_SIZE, "1G", 4096, 1099511627776.0, 0,
	  "the journal's cap: beyond it records wait in the queue, then are dropped and "
	  "counted, and /ready answers 503" },
	{ "lock_timeout", LG_SETTING_DURATION, "1s", 10, 600000, 0,
	  "how long a batch waits for a lock on usage (LOCK TABLE, a partition drop) "
	  "before its batch goes to the journal" },
	{ "retention_days", LG_SETTING_INT, "0", 0, 36500, 0,
	  "drop monthly partitions whose month ended more than this many days ago; 0 keeps "
	  "everything (OpenGateLLM's settings.usage_retention_days)" },
	{ "maintenance_interval", LG_SETTING_DURATION, "24h", 1000, 604800000.0, 0,
	  "how often the next month's partition is created and retention applied (also "
	  "once at start)" },
	{ "metrics", LG_SETTING_BOOL, "true", 0, 0, 0,
	  "serve GET /metrics (settings.monitoring_prometheus_enabled: false also turns it off)" },
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- records (workers) ---- */

/* One thread's records, appended back to back (each with its NUL) until
 * the flusher takes the buffer whole and hands an emptied one back. Records
 * handed from thread to thread one by one (a malloc on the worker, a free on
 * the main thread) cost several per cent of the gateway's requests per
 * second; here a worker allocates only when its buffer must grow and takes
 * no lock another worker takes. */
struct producer {
	struct usage *u;
	pthread_mutex_t lock;           /* this thread, and the flusher taking */
	char *buf;                      /* being filled */
	size_t len, cap, n;
	char *spare;                    /* emptied by the flusher, for the next take */
	size_t spare_cap;
	struct producer *next;          /* in u->producers */
};

/* The calling thread's producer. A process has one usage plugin, loaded
 * once, so one pointer per thread is enough. */
static _Thread_local struct producer *this_producer;

static struct producer *producer_of(struct usage *u)
{
	struct producer *p = this_producer;

	if (p && p->u == u)
		return p;
	p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	if (pthread_mutex_init(&p->lock, NULL) != 0) {
		free(p);
		return NULL;
	}
	p->u = u;
	pthread_mutex_lock(&u->lock);
	p->next = u->producers;
	u->producers = p;
	pthread_mutex_unlock(&u->lock);
	this_producer = p;
	return p;
}

/* Appends @rec as it is in memory: its length, then its bytes. */
static bool producer_append(struct producer *p, const struct usage_record *rec)
{
	size_t len = sizeof *rec + rec->len;
	bool ok = true;

	pthread_mutex_lock(&p->lock);
	if (p->len + len > p->cap) {
		size_t cap = p->cap ? p->cap : 64 * 1024;
		char *grown;

		while (cap < p->len + len)
			cap *= 2;
		grown = realloc(p->buf, cap);
		ok = grown != NULL;
		if (ok) {
			p->buf = grown;
			p->cap = cap;
		}
	}
	if (ok) {
		memcpy(p->buf + p->len, rec, len);
		p->len += len;
		p->n++;
	}
	pthread_mutex_unlock(&p->lock);
	return ok;
}

/* Takes @rec in (it stays the caller's). False when queue_max records
 * wait already, or out of memory: the record is then lost and counted. */
static bool queue_push(struct usage *u, const struct usage_record *rec)
{
	struct producer *p;

	if (atomic_fetch_add(&u->queued, 1) >= u->queue_max)
		goto lost;
	p = producer_of(u);
	if (p && producer_append(p, rec))
		return true;
lost:
	atomic_fetch_sub(&u->queued, 1);
	atomic_fetch_add(&u->dropped, 1);
	return false;
}

static enum lg_hook_result on_complete(struct lg_req *req, void *ud)
{
	struct usage *u = ud;
	const struct lg_call *c = u->host->req_call(req);
	struct usage_record *rec;

	if (!c)
		return LG_HOOK_OK;
	if (u->metrics)
		usage_metrics_record(u->metrics, c);
	if (!u->enabled)
		return LG_HOOK_OK;
	rec = usage_record_new(c, u->host->req_method(req), u->host->req_principal(req));
	if (!rec) {
		u->host->log(u->self, LG_LOG_ERROR, "usage: cannot build the record");
		return LG_HOOK_OK;
	}
	queue_push(u, rec);
	free(rec);
	return LG_HOOK_OK;
}

/* ---- the flusher (main loop) ---- */

/* Moves @p's records to the ring, each in memory of this thread's own. */
static void producer_drain(struct usage *u, struct producer *p)
{
	char *taken;
	size_t n, cap;

	pthread_mutex_lock(&p->lock);
	taken = p->buf;
	n = p->n;
	cap = p->cap;
	p->buf = p->spare;
	p->cap = p->spare_cap;
	p->spare = NULL;
	p->spare_cap = 0;
	p->len = p->n = 0;
	pthread_mutex_unlock(&p->lock);

	for (size_t off = 0, i = 0; i < n; i++) {
		uint32_t len;
		struct usage_record *rec;
		bool room;

		memcpy(&len, taken + off + offsetof(struct usage_record, len), sizeof len);
		rec = malloc(sizeof *rec + len);
		/* queued counted it and never passes queue_max, the ring's size:
		 * there is room, but a full ring must not be overwritten. */
		pthread_mutex_lock(&u->lock);
		room = rec && u->count < u->queue_max;
		if (room) {
			memcpy(rec, taken + off, sizeof *rec + len);
			u->ring[(u->head + u->count) % u->queue_max] = rec;
			u->count++;
		}
		pthread_mutex_unlock(&u->lock);
		if (!room) {
			free(rec);
			atomic_fetch_sub(&u->queued, 1);
			atomic_fetch_add(&u->dropped, 1);
		}
		off += sizeof *rec + len;
	}
	pthread_mutex_lock(&p->lock);
	if (!p->spare) {
		p->spare = taken;
		p->spare_cap = cap;
		taken = NULL;
	}
	pthread_mutex_unlock(&p->lock);
	free(taken);
}

/* The workers' records, into the ring. */
static void collect(struct usage *u)
{
	struct producer *p;

	pthread_mutex_lock(&u->lock);
	p = u->producers;
	pthread_mutex_unlock(&u->lock);
	/* Producers are only ever added at the head, and freed with u. */
	for (; p; p = p->next)
		producer_drain(u, p);
}

static size_t queue_len(struct usage *u)
{
	size_t n;

	pthread_mutex_lock(&u->lock);
	n = u->count;
	pthread_mutex_unlock(&u->lock);
	return n;
}

/* Takes up to @max records, oldest first. Ownership: the caller's array. */
static struct usage_record **queue_take(struct usage *u, size_t max, size_t *n)
{
	struct usage_record **lines;
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
	atomic_fetch_sub(&u->queued, k);
	pthread_mutex_unlock(&u->lock);
	*n = k;
	return lines;
}

static void free_records(struct usage_record **recs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(recs[i]);
	free(recs);
}

/* A fresh batch id: random, so that no two batches of any run share one. */
static void new_batch_id(char id[BATCH_ID_HEX + 1])
{
	unsigned char raw[BATCH_ID_BYTES];

	randombytes_buf(raw, sizeof raw);
	sodium_bin2hex(id, BATCH_ID_HEX + 1, raw, sizeof raw);
}

/* Room for @total bytes in the batch buffer, kept from batch to batch: a
 * new one of half a megabyte per batch cost page faults on every batch.
 * Thread: main. */
static char *batch_buf(struct usage *u, size_t total)
{
	char *buf;

	if (total > u->batch_cap) {
		buf = realloc(u->batch_buf, total);
		if (!buf)
			return NULL;
		u->batch_buf = buf;
		u->batch_cap = total;
	}
	return u->batch_buf;
}

/* The batch buffer with room for COPY's header, @records bytes of records
 * and the trailer; the header written, the records go after it. */
static char *copy_frame(struct usage *u, size_t records)
{
	char *buf = batch_buf(u, USAGE_COPY_HEADER_LEN + records + USAGE_COPY_TRAILER_LEN);

	if (buf)
		memcpy(buf, usage_copy_header, USAGE_COPY_HEADER_LEN);
	return buf;
}

/* Writes the trailer after @off bytes of @buf; the data's length. */
static size_t copy_frame_end(char *buf, size_t off)
{
	memcpy(buf + off, usage_copy_trailer, USAGE_COPY_TRAILER_LEN);
	return off + USAGE_COPY_TRAILER_LEN;
}

/* The COPY data of a batch of queued records. Ownership: the plugin's,
 * valid until the next batch. */
static char *copy_data(struct usage *u, struct usage_record *const *recs, size_t n,
		       size_t *len)
{
	size_t records = 0, off = USAGE_COPY_HEADER_LEN;
	char *buf;

	for (size_t i = 0; i < n; i++)
		records += recs[i]->len;
	buf = copy_frame(u, records);
	if (!buf)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		memcpy(buf + off, recs[i]->data, recs[i]->len);
		off += recs[i]->len;
	}
	*len = copy_frame_end(buf, off);
	return buf;
}

/* The journal line of a record: its bytes in base64 (lines are text).
 * Ownership: the caller's. */
static char *record_base64(const struct usage_record *rec)
{
	size_t len = sodium_base64_ENCODED_LEN(rec->len, sodium_base64_VARIANT_ORIGINAL);
	char *text = malloc(len);

	if (text)
		sodium_bin2base64(text, len, (const unsigned char *)rec->data, rec->len,
				  sodium_base64_VARIANT_ORIGINAL);
	return text;
}

/* Room enough for the bytes that @len characters of base64 encode. */
static size_t base64_room(size_t len)
{
	return len / 4 * 3 + 3;
}

/* Decodes a journal record, @b64, into @dst (@room bytes): false when it
 * is not one. Its length in *@bin. */
static bool record_from_base64(unsigned char *dst, size_t room, const char *b64, size_t *bin)
{
	size_t len = strlen(b64);

	return len > 0 && sodium_base642bin(dst, room, b64, len, NULL, bin, NULL,
					    sodium_base64_VARIANT_ORIGINAL) == 0;
}

/* The COPY data of a batch of journal lines ("<id> <base64>", checked by
 * drop_malformed()). NULL when out of memory. */
static char *copy_data_of_journal(struct usage *u, char *const *lines, size_t n, size_t *len)
{
	size_t records = 0, off = USAGE_COPY_HEADER_LEN, bin;
	char *buf;

	for (size_t i = 0; i < n; i++)
		records += base64_room(strlen(lines[i] + BATCH_ID_HEX + 1));
	buf = copy_frame(u, records);
	if (!buf)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		if (!record_from_base64((unsigned char *)buf + off,
					USAGE_COPY_HEADER_LEN + records - off,
					lines[i] + BATCH_ID_HEX + 1, &bin))
			return NULL;
		off += bin;
	}
	*len = copy_frame_end(buf, off);
	return buf;
}

/* Records of llmgate 0.2's journal as one JSON array. */
static char *json_array(struct usage *u, char *const *lines, size_t n)
{
	size_t total = 3, off = 0;
	char *buf;

	for (size_t i = 0; i < n; i++)
		total += strlen(lines[i]) + 1;
	buf = batch_buf(u, total);
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

/* Once the host has copied the batch: a buffer grown past what usual
 * batches need (records with long error messages) is not kept. */
static void batch_buf_done(struct usage *u)
{
	if (u->batch_cap > BATCH_BUF_KEEP) {
		free(u->batch_buf);
		u->batch_buf = NULL;
		u->batch_cap = 0;
	}
}

/* What db_copy() needs to load batch @id (@n records in @data, @len
 * bytes), claimed in the same transaction. @count, @params: storage of the
 * caller's that the result points to. */
static struct lg_db_copy batch_copy(struct usage *u, const char *id, const char *data,
				    size_t len, size_t n, char count[24],
				    const char *params[3])
{
	snprintf(count, 24, "%zu", n);
	params[0] = id;
	params[1] = count;
	params[2] = u->lock_timeout_text;
	return (struct lg_db_copy){ .size = sizeof(struct lg_db_copy), .nparams = 3,
				    .claim_sql = claim_sql, .params = params,
				    .copy_sql = usage_copy_sql, .data = data, .len = len };
}

static uint64_t queue_dropped(struct usage *u)
{
	return atomic_load(&u->dropped);
}

/* Lost records are an error worth shouting about, but at most every
 * ALARM_EVERY_MS so that the log stays readable; @now_anyway at stop. */
static void log_dropped(struct usage *u, bool now_anyway)
{
	uint64_t queue_full = queue_dropped(u);
	uint64_t journal_full = atomic_load(&u->dropped_journal_full);
	uint64_t journal_error = atomic_load(&u->dropped_journal_error);
	uint64_t dropped = queue_full + journal_full + journal_error, now = now_ms();

	if (dropped == u->dropped_logged)
		return;
	if (!now_anyway && u->alarm_logged_ms && now - u->alarm_logged_ms < ALARM_EVERY_MS)
		return;
	u->host->log(u->self, LG_LOG_ERROR, "usage: %" PRIu64 " usage records lost so far "
		     "(queue full: %" PRIu64 ", journal full: %" PRIu64 ", journal not writable: "
		     "%" PRIu64 "); queue %zu of %zu, journal %" PRIu64 " of %" PRIu64 " bytes",
		     dropped, queue_full, journal_full, journal_error, queue_len(u), u->queue_max,
		     u->journal ? journal_bytes(u->journal) : 0, u->journal_max_size);
	u->dropped_logged = dropped;
	u->alarm_logged_ms = now;
}

static void set_ready(struct usage *u, const char *why)
{
	if (LG_HOST_HAS(u->host, set_ready))
		u->host->set_ready(u->self, why);
}

static bool journal_at_cap(struct usage *u)
{
	return journal_bytes(u->journal) >= u->journal_max_size;
}

/* Publishes the journal's size for GET /metrics, and whether it is full
 * for /ready. Thread: main. */
static void journal_state(struct usage *u)
{
	bool full;

	if (!u->journal)
		return;
	full = journal_at_cap(u);
	atomic_store(&u->journal_bytes, journal_bytes(u->journal));
	atomic_store(&u->journal_segments, journal_pending(u->journal));
	if (full == atomic_load(&u->journal_full))
		return;
	atomic_store(&u->journal_full, full);
	if (full) {
		u->host->log(u->self, LG_LOG_ERROR, "usage: the journal in %s reached "
			     "journal_max_size (%" PRIu64 " bytes): new records wait in memory "
			     "(queue_max %zu), then are lost, until PostgreSQL takes the journal",
			     u->journal_dir, u->journal_max_size, u->queue_max);
		set_ready(u, "the usage journal is full (journal_max_size): usage records are "
			  "being lost");
	} else {
		u->host->log(u->self, LG_LOG_INFO, "usage: the journal is below journal_max_size "
			     "again");
		set_ready(u, NULL);
	}
}

static void free_strings(char **strings, size_t n)
{
	if (!strings)
		return;
	for (size_t i = 0; i < n; i++)
		free(strings[i]);
	free(strings);
}

/* @recs as journal lines, in *@out (the caller's: free_strings()). */
static int records_base64(struct usage_record *const *recs, size_t n, char ***out)
{
	char **lines = calloc(n ? n : 1, sizeof *lines);

	*out = lines;
	if (!lines)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		if (!(lines[i] = record_base64(recs[i])))
			return -ENOMEM;
	return 0;
}

/* Last resort for records the database did not take: batch @id keeps its
 * id in the journal. Thread: main. */
static void journal_or_lose(struct usage *u, const char *id, struct usage_record **recs,
			    size_t n)
{
	char prefix[BATCH_ID_HEX + 2];
	char **lines = NULL;
	uint64_t now;
	int rc;

	if (journal_at_cap(u)) {
		atomic_fetch_add(&u->dropped_journal_full, n);
		journal_state(u);
		log_dropped(u, false);
		return;
	}
	snprintf(prefix, sizeof prefix, "%s ", id);
	rc = records_base64(recs, n, &lines);
	if (rc == 0)
		rc = journal_append(u->journal, prefix, lines, n);
	free_strings(lines, n);
	if (rc == 0) {
		atomic_fetch_add(&u->rows_journaled, n);
		journal_state(u);
		return;
	}
	atomic_fetch_add(&u->dropped_journal_error, n);
	now = now_ms();
	if (!u->alarm_logged_ms || now - u->alarm_logged_ms >= ALARM_EVERY_MS)
		u->host->log(u->self, LG_LOG_ERROR, "usage: cannot write the journal in %s "
			     "(%s): %zu records lost", u->journal_dir, strerror(-rc), n);
	log_dropped(u, false);
}

static void note_db_down(struct usage *u, const char *error)
{
	if (!u->db_down)
		u->host->log(u->self, LG_LOG_WARN, "usage: PostgreSQL refused a batch, keeping "
			     "records in the journal until it is back: %s", error);
	u->db_down = true;
	atomic_store(&u->db_up, false);
	u->retry_at_ms = now_ms() + u->retry_interval_ms;
}

static void note_db_up(struct usage *u, const PGresult *res)
{
	if (u->db_down)
		u->host->log(u->self, LG_LOG_INFO, "usage: PostgreSQL takes batches again");
	u->db_down = false;
	atomic_store(&u->db_up, true);
	/* Rows really added: a batch sent twice adds nothing the second time
	 * (its claim's result, no row, comes back instead of the COPY's). JSON
	 * records of 0.2 come back as the count usage_insert_batch() returns. */
	if (!res)
		return;
	if (PQresultStatus(res) == PGRES_COMMAND_OK)
		/* libpq's prototype lacks the const it honours. */
		atomic_fetch_add(&u->rows_inserted,
				 strtoull(PQcmdTuples((PGresult *)res), NULL, 10));
	else if (PQntuples(res) == 1 && PQnfields(res) == 1 && !PQgetisnull(res, 0, 0))
		atomic_fetch_add(&u->rows_inserted, strtoull(PQgetvalue(res, 0, 0), NULL, 10));
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
	journal_segment_free(&u->replay);
	u->replay_next = 0;
	u->replaying = false;
	journal_state(u);
}

static void flight_free(struct flight *f)
{
	if (f->src == FROM_QUEUE)
		free_records(f->recs, f->n);
	free(f);
}

static void send_next(struct usage *u);

static void on_inserted(const PGresult *res, const char *error, void *arg)
{
	struct flight *f = arg;
	struct usage *u;

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
			journal_or_lose(u, f->id, f->recs, f->n);
	} else {
		note_db_up(u, res);
		if (f->src == FROM_JOURNAL)
			replay_advance(u, f->n);
	}
	flight_free(f);
	/* While PostgreSQL takes them, batches go back to back: one per tick
	 * would cap the ledger at batch_size records per tick, below the
	 * gateway's rate, and a journal could never catch up. */
	if (!error)
		send_next(u);
}

/* Loads JSON records of 0.2: with @f asynchronously (on_inserted), else
 * blocking into *@res. */
static int load_json(struct usage *u, char *const *lines, size_t n, struct flight *f,
		     PGresult **res, char *err, size_t errlen)
{
	const struct lg_host *h = u->host;
	const char *params[2] = { json_array(u, lines, n), u->lock_timeout_text };
	int rc;

	if (!params[0])
		rc = -ENOMEM;
	else if (f)
		rc = h->db_query(u->self, json_insert_sql, 2, params, on_inserted, f);
	else
		rc = h->db_query_sync(u->self, json_insert_sql, 2, params, res, err, errlen);
	batch_buf_done(u);
	return rc;
}

/* Loads batch @id (@n records in @data, @len bytes, NULL when it could not
 * be built) with its claim: with @f asynchronously (on_inserted), else
 * blocking into *@res. */
static int load_copy(struct usage *u, const char *id, const char *data, size_t len, size_t n,
		     struct flight *f, PGresult **res, char *err, size_t errlen)
{
	const struct lg_host *h = u->host;
	const char *params[3];
	char count[24];
	struct lg_db_copy copy = batch_copy(u, id, data, len, n, count, params);
	int rc;

	if (!data)
		rc = -ENOMEM;
	else if (f)
		rc = h->db_copy(u->self, &copy, on_inserted, f);
	else
		rc = h->db_copy_sync(u->self, &copy, res, err, errlen);
	batch_buf_done(u);
	return rc;
}

/* Sends @f's batch. */
static int send_flight(struct usage *u, struct flight *f)
{
	size_t len = 0;
	char *data;

	if (f->src == FROM_QUEUE) {
		data = copy_data(u, f->recs, f->n, &len);
	} else if (*f->id) {
		data = copy_data_of_journal(u, f->lines, f->n, &len);
	} else {
		return load_json(u, f->lines, f->n, f, NULL, NULL, 0);
	}
	return load_copy(u, f->id, data, len, f->n, f, NULL, NULL, 0);
}

/* Sends batch @id of @recs from the queue (the flight then owns them) or of
 * @lines from the journal (borrowed; an empty @id: JSON records of 0.2). */
static int send_batch(struct usage *u, enum flight_source src, const char *id,
		      struct usage_record **recs, char **lines, size_t n)
{
	struct flight *f = calloc(1, sizeof *f);
	int rc;

	if (!f)
		return -ENOMEM;
	*f = (struct flight){ .u = u, .src = src, .recs = recs, .lines = lines, .n = n };
	snprintf(f->id, sizeof f->id, "%s", id);
	rc = send_flight(u, f);
	if (rc < 0) {
		free(f);
		return rc;
	}
	u->inflight = f;
	return 0;
}

static void flush_queue(struct usage *u)
{
	char id[BATCH_ID_HEX + 1];
	size_t n;
	struct usage_record **recs = queue_take(u, u->batch_size, &n);
	int rc;

	if (!recs)
		return;
	new_batch_id(id);
	rc = send_batch(u, FROM_QUEUE, id, recs, NULL, n);
	if (rc < 0) {
		note_db_down(u, strerror(-rc));
		journal_or_lose(u, id, recs, n);
		free_records(recs, n);
	}
}

/* While the journal holds records, new ones join it, so the order holds.
 * At its cap they stay in the queue, which is the last buffer before
 * records are lost, unless @all (at stop: there is nowhere else). */
static void queue_to_journal(struct usage *u, bool all)
{
	char id[BATCH_ID_HEX + 1];
	size_t n;
	struct usage_record **recs;

	while ((all || !journal_at_cap(u)) && (recs = queue_take(u, u->batch_size, &n))) {
		new_batch_id(id);
		journal_or_lose(u, id, recs, n);
		free_records(recs, n);
	}
}

/* A journal record of 0.2: a JSON object, with no batch id. */
static bool is_json_record(const char *line)
{
	return line[0] == '{';
}

/* Whether @line is "<batch id> <record>", of batch @id if @id is given. */
static bool in_batch(const char *line, const char *id)
{
	size_t i;

	for (i = 0; i < BATCH_ID_HEX; i++)
		if (!((line[i] >= '0' && line[i] <= '9') || (line[i] >= 'a' && line[i] <= 'f')))
			return false;
	return line[BATCH_ID_HEX] == ' ' && (!id || memcmp(line, id, BATCH_ID_HEX) == 0);
}

/* Whether the record of journal line "<id> <base64>" decodes (out of
 * memory, it is taken as it is: building its batch will say so). */
static bool decodes(const char *line)
{
	const char *b64 = line + BATCH_ID_HEX + 1;
	size_t room = base64_room(strlen(b64)), bin;
	unsigned char *buf = malloc(room);
	bool ok;

	if (!buf)
		return true;
	ok = record_from_base64(buf, room, b64, &bin);
	free(buf);
	return ok;
}

/* Lines whose hash holds but that are neither form (none are written so)
 * are skipped as damaged, before the segment is replayed: a batch that
 * cannot be built would be retried for ever. */
static void drop_malformed(struct journal_segment *seg)
{
	size_t kept = 0;

	for (size_t i = 0; i < seg->n; i++) {
		if (is_json_record(seg->lines[i]) ||
		    (in_batch(seg->lines[i], NULL) && decodes(seg->lines[i]))) {
			seg->lines[kept++] = seg->lines[i];
		} else {
			free(seg->lines[i]);
			seg->skipped++;
		}
	}
	seg->n = kept;
}

/* The journal's next batch from replay_next: the lines of one batch id
 * (never split: one claim covers them all), or up to batch_size JSON
 * records of 0.2 (@id then empty). Its number of lines. */
static size_t replay_next_batch(struct usage *u, char id[BATCH_ID_HEX + 1])
{
	char *const *lines = u->replay.lines + u->replay_next;
	size_t left = u->replay.n - u->replay_next, k = 1;

	if (is_json_record(lines[0])) {
		id[0] = '\0';
		while (k < left && k < u->batch_size && is_json_record(lines[k]))
			k++;
		return k;
	}
	memcpy(id, lines[0], BATCH_ID_HEX);
	id[BATCH_ID_HEX] = '\0';
	while (k < left && in_batch(lines[k], id))
		k++;
	return k;
}

static bool replay_open(struct usage *u)
{
	int rc = journal_read_oldest(u->journal, &u->replay);

	if (rc < 0) {
		u->host->log(u->self, LG_LOG_ERROR, "usage: cannot read the journal in %s: %s",
			     u->journal_dir, strerror(-rc));
		u->retry_at_ms = now_ms() + u->retry_interval_ms;
		return false;
	}
	drop_malformed(&u->replay);
	if (u->replay.skipped)
		u->host->log(u->self, LG_LOG_WARN, "usage: journal segment %llu: %zu damaged "
			     "records skipped", (unsigned long long)u->replay.seq,
			     u->replay.skipped);
	u->replaying = true;
	u->replay_next = 0;
	return true;
}

static void replay_chunk(struct usage *u)
{
	char id[BATCH_ID_HEX + 1];
	size_t n;
	int rc;

	if (!u->replaying && !replay_open(u))
		return;
	if (u->replay.n == u->replay_next) {
		replay_advance(u, 0);   /* nothing valid in it */
		return;
	}
	n = replay_next_batch(u, id);
	rc = send_batch(u, FROM_JOURNAL, id, NULL, u->replay.lines + u->replay_next, n);
	if (rc < 0)
		note_db_down(u, strerror(-rc));
}

/* A batch's worth of records is queued, or the oldest has waited long
 * enough. */
static bool batch_due(struct usage *u, size_t queued, uint64_t now)
{
	return queued >= u->batch_size ||
	       (queued > 0 && now - u->last_flush_ms >= u->flush_interval_ms);
}

static void flush_or_replay(struct usage *u)
{
	uint64_t now = now_ms();
	size_t queued = queue_len(u);
	bool due = batch_due(u, queued, now);

	if (due)
		u->last_flush_ms = now;
	if (u->replaying || journal_pending(u->journal) > 0) {
		if (due)
			queue_to_journal(u, false);
		if (now >= u->retry_at_ms)
			replay_chunk(u);
	} else if (due) {
		flush_queue(u);
	}
}

/* What the timer does, and a batch's success at once: gather the workers'
 * records, then send a batch if one is due. */
static void send_next(struct usage *u)
{
	collect(u);
	if (!u->inflight)
		flush_or_replay(u);
}

static void on_tick(void *arg)
{
	struct usage *u = arg;

	send_next(u);
	journal_state(u);
	log_dropped(u, false);
}

void usage_ledger_stats(struct usage *u, struct ledger_stats *out)
{
	*out = (struct ledger_stats){ .enabled = u->enabled };
	if (!u->enabled)
		return;
	out->queue_depth = atomic_load(&u->queued);
	out->dropped_queue_full = atomic_load(&u->dropped);
	out->queue_max = u->queue_max;
	out->journal_bytes = atomic_load(&u->journal_bytes);
	out->journal_max = u->journal_max_size;
	out->journal_segments = atomic_load(&u->journal_segments);
	out->journal_full = atomic_load(&u->journal_full);
	out->db_up = atomic_load(&u->db_up);
	out->dropped_journal_full = atomic_load(&u->dropped_journal_full);
	out->dropped_journal_error = atomic_load(&u->dropped_journal_error);
	out->rows_inserted = atomic_load(&u->rows_inserted);
	out->rows_journaled = atomic_load(&u->rows_journaled);
}

/* ---- lifecycle ---- */

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
	/* A journal left over the cap by a previous run: not ready at once. */
	journal_state(u);
	usage_partitions_now(u);
	u->last_flush_ms = now_ms();
	u->timer = host->timer_start(self, u->flush_interval_ms < TICK_MS_MAX ?
				     u->flush_interval_ms : TICK_MS_MAX, true, on_tick, u);
	if (!u->timer) {
		host->set_error(self, "cannot start the flush timer");
		return -ENOMEM;
	}
	rc = usage_partitions_timer(u);
	if (rc < 0) {
		host->set_error(self, "cannot start the partition timer");
		return rc;
	}
	return 0;
}

/* Loads batch @id of queued @recs now, or journals them. Thread: main. */
static void insert_sync(struct usage *u, const char *id, struct usage_record **recs, size_t n)
{
	PGresult *res = NULL;
	char err[256] = "out of memory";
	size_t len = 0;
	char *data = copy_data(u, recs, n, &len);

	if (load_copy(u, id, data, len, n, NULL, &res, err, sizeof err) == 0) {
		note_db_up(u, res);
		PQclear(res);
		return;
	}
	note_db_down(u, err);
	journal_or_lose(u, id, recs, n);
}

/* The queue, and a batch still in flight (sent again: inserts are
 * idempotent), reach the database or the journal before we return. */
static void usage_stop(struct lg_plugin *self, const struct lg_host *host)
{
	struct usage *u = host->get_data(self);
	struct flight *f = u->inflight;
	struct usage_record **recs;
	size_t n;

	if (!u->enabled)
		return;
	u->stopping = true;
	usage_partitions_stop(u);
	host->timer_stop(u->timer);
	u->timer = NULL;
	collect(u);
	/* Under the same id: if the first try commits after all, its claim
	 * makes this one add nothing, and the other way round. */
	if (f && f->src == FROM_QUEUE) {
		insert_sync(u, f->id, f->recs, f->n);
		free_records(f->recs, f->n);
		f->recs = NULL;
		f->n = 0;
	}
	if (f) {
		f->orphaned = true;
		u->inflight = NULL;
	}
	/* Records behind a journal keep their order there; the next start
	 * replays them. */
	if (u->replaying || journal_pending(u->journal) > 0) {
		queue_to_journal(u, true);
	} else {
		while ((recs = queue_take(u, u->batch_size, &n))) {
			char id[BATCH_ID_HEX + 1];

			new_batch_id(id);
			if (u->db_down)
				journal_or_lose(u, id, recs, n);
			else
				insert_sync(u, id, recs, n);
			free_records(recs, n);
		}
	}
	journal_state(u);
	log_dropped(u, true);
}

/* The core's settings.monitoring_postgres_enabled and
 * monitoring_prometheus_enabled (OpenGateLLM's switches) turn the ledger and
 * the metrics off as the plugin's own enabled and metrics do. */
static void obey_core_settings(struct usage *u)
{
	const struct lg_host *h = u->host;
	bool on;

	if (!LG_HOST_HAS(h, core_setting_bool) || !h->core_setting_bool)
		return;
	if (h->core_setting_bool(u->self, "monitoring_postgres_enabled", &on) == 0 && !on)
		u->enabled = false;
	if (h->core_setting_bool(u->self, "monitoring_prometheus_enabled", &on) == 0 && !on)
		u->metrics_enabled = false;
}

static int read_settings(struct usage *u)
{
	const struct lg_host *h = u->host;
	int64_t batch, qmax;

	if (h->cfg_bool(u->self, "enabled", &u->enabled) < 0 ||
	    h->cfg_bool(u->self, "metrics", &u->metrics_enabled) < 0 ||
	    h->cfg_u64(u->self, "flush_interval", &u->flush_interval_ms) < 0 ||
	    h->cfg_u64(u->self, "retry_interval", &u->retry_interval_ms) < 0 ||
	    h->cfg_u64(u->self, "segment_size", &u->segment_size) < 0 ||
	    h->cfg_u64(u->self, "journal_max_size", &u->journal_max_size) < 0 ||
	    h->cfg_u64(u->self, "lock_timeout", &u->lock_timeout_ms) < 0 ||
	    h->cfg_u64(u->self, "maintenance_interval", &u->maintenance_interval_ms) < 0 ||
	    h->cfg_int(u->self, "retention_days", &u->retention_days) < 0 ||
	    h->cfg_int(u->self, "batch_size", &batch) < 0 ||
	    h->cfg_int(u->self, "queue_max", &qmax) < 0) {
		h->set_error(u->self, "cannot read the settings");
		return -EINVAL;
	}
	obey_core_settings(u);
	u->batch_size = (size_t)batch;
	u->queue_max = (size_t)qmax;
	snprintf(u->lock_timeout_text, sizeof u->lock_timeout_text, "%" PRIu64,
		 u->lock_timeout_ms);
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
	while (u->producers) {
		struct producer *p = u->producers;

		u->producers = p->next;
		pthread_mutex_destroy(&p->lock);
		free(p->buf);
		free(p->spare);
		free(p);
	}
	free(u->batch_buf);
	journal_segment_free(&u->replay);
	journal_close(u->journal);
	usage_metrics_free(u->metrics);
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
	atomic_init(&u->db_up, true);
	if (pthread_mutex_init(&u->lock, NULL) != 0) {
		free(u);
		return -ENOMEM;
	}
	rc = read_settings(u);
	if (rc < 0)
		goto fail;
	if (!u->enabled)
		host->log(self, LG_LOG_INFO, "usage: the ledger is disabled, no usage is recorded");
	rc = -ENOMEM;
	if (u->enabled && !(u->ring = calloc(u->queue_max, sizeof *u->ring)))
		goto fail;
	if (u->metrics_enabled) {
		rc = usage_metrics_init(u);
		if (rc < 0)
			goto fail;
	}
	if (u->enabled || u->metrics_enabled) {
		rc = host->hook_add(self, LG_PHASE_COMPLETE, on_complete, 1000, u);
		if (rc < 0) {
			host->set_error(self, "cannot add the COMPLETE hook");
			goto fail;
		}
	}
	rc = usage_queries_init(u);
	if (rc < 0)
		goto fail;
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
	if (u->journal) {
		queue_to_journal(u, true);
		log_dropped(u, true);
	}
	usage_free(u);
}

LG_PLUGIN(.name = "usage", .version = "0.2.0",
	  .description = "usage ledger: one row per forwarded call, journaled while "
			 "PostgreSQL is unavailable; usage queries and Prometheus metrics",
	  .migrations = usage_migrations,
	  .settings = usage_settings, .n_settings = LG_COUNT(usage_settings),
	  .init = usage_init, .start = usage_start, .stop = usage_stop, .fini = usage_fini);
