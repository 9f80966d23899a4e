/* SPDX-License-Identifier: Apache-2.0 */
/* The usage plugin's own interfaces between its files:
 *   usage.c      the ledger (queue, batched inserts, journal) and lifecycle
 *   record.c     one call as the ledger's record (a tuple of binary COPY)
 *   queries.c    GET /v1/usage and GET /v1/me/usage
 *   metrics.c    GET /metrics and the per-worker counters behind it
 *   retention.c  monthly partitions ahead, old ones dropped
 *   journal.c    the on-disk journal (journal.h)
 */
#ifndef LLMGATE_USAGE_USAGE_H
#define LLMGATE_USAGE_USAGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llmgate/host.h>

#include "journal.h"

/* Whether the running host's struct lg_call has member @m (1.1 added
 * cost, kwh and kgco2eq). */
#define CALL_HAS(c, m) ((c)->size >= offsetof(struct lg_call, m) + sizeof((c)->m))

struct usage_metrics;   /* metrics.c */
struct flight;          /* usage.c: one INSERT on its way */
struct producer;        /* usage.c: one worker's records on their way */

/* The plugin's state: one per process, owned by the plugin (set_data).
 * Settings are read in init() and never change. Threads: the COMPLETE hook
 * runs on every worker (queue, metrics shards); the flusher, journal and
 * partition timer on the main loop; routes on workers. Counters that
 * routes read from another thread are atomics. */
struct usage {
	const struct lg_host *host;
	struct lg_plugin *self;

	/* settings */
	bool enabled;                   /* the ledger */
	bool metrics_enabled;           /* GET /metrics */
	const char *journal_dir;
	uint64_t flush_interval_ms, retry_interval_ms, segment_size;
	uint64_t journal_max_size, lock_timeout_ms, maintenance_interval_ms;
	int64_t retention_days;
	size_t batch_size, queue_max;
	char lock_timeout_text[24];     /* the SQL parameter: milliseconds */

	/* filled by the COMPLETE hook on every worker: each appends to a
	 * producer of its own, the flusher moves their records to the ring */
	pthread_mutex_t lock;           /* the ring, the producer list */
	struct producer *producers;
	struct usage_record **ring;     /* main thread's; read by metrics */
	size_t head, count;
	atomic_size_t queued;           /* taken in, not yet out of the ring */
	atomic_uint_fast64_t dropped;   /* queue full */
	struct usage_metrics *metrics;

	/* main thread only */
	struct lg_timer *timer;
	struct journal *journal;
	struct flight *inflight;
	char *batch_buf;                /* batch_buf()'s, reused */
	size_t batch_cap;
	struct journal_segment replay;    /* the segment being replayed */
	size_t replay_next;
	bool replaying;
	bool db_down;
	bool stopping;
	uint64_t last_flush_ms, retry_at_ms;
	uint64_t dropped_logged, alarm_logged_ms;
	struct lg_timer *maint_timer;
	bool maint_running;

	/* written on the main thread, read by GET /metrics on workers */
	atomic_uint_fast64_t dropped_journal_full;
	atomic_uint_fast64_t dropped_journal_error;
	atomic_uint_fast64_t rows_inserted;
	atomic_uint_fast64_t rows_journaled;
	atomic_uint_fast64_t journal_bytes;
	atomic_uint_fast64_t journal_segments;
	atomic_bool journal_full;
	atomic_bool db_up;
};

/* What GET /metrics shows of the ledger. */
struct ledger_stats {
	bool enabled;
	uint64_t queue_depth, queue_max;
	uint64_t journal_bytes, journal_max, journal_segments;
	bool journal_full, db_up;
	uint64_t dropped_queue_full, dropped_journal_full, dropped_journal_error;
	uint64_t rows_inserted, rows_journaled;
};

/* record.c: the call's cost as in its reply (computed from the model's
 * prices on a 1.0 host), 0 if not finite. Thread: any. */
double usage_call_cost(const struct lg_call *c);
/* One record: a tuple of COPY's binary format, @len bytes. */
struct usage_record {
	uint32_t len;
	char data[];
};

/* record.c: the COPY statement the ledger loads records with (binary
 * format, columns in the order usage_record_new() writes them), and what
 * its data starts and ends with around the records. */
#define USAGE_COPY_HEADER_LEN 19
#define USAGE_COPY_TRAILER_LEN 2
extern const char usage_copy_sql[];
extern const char usage_copy_header[USAGE_COPY_HEADER_LEN];
extern const char usage_copy_trailer[USAGE_COPY_TRAILER_LEN];
/* record.c: the call as one record, with a new record id and the current
 * time; NULL when out of memory. Ownership: the caller's (free()).
 * Thread: any. */
struct usage_record *usage_record_new(const struct lg_call *c, const char *method,
				      const struct lg_principal *who);
/* usage.c: a snapshot of the ledger's counters. Thread: any. */
void usage_ledger_stats(struct usage *u, struct ledger_stats *out);

/* queries.c: registers GET /v1/usage and GET /v1/me/usage. Thread: init. */
int usage_queries_init(struct usage *u);

/* metrics.c */
/* usage_metrics_new() - the counters and GET /metrics. Thread: init. */
int usage_metrics_init(struct usage *u);
/* usage_metrics_record() - count one finished call in the calling worker's
 * shard. Thread: the request's worker. */
void usage_metrics_record(struct usage_metrics *m, const struct lg_call *c);
void usage_metrics_free(struct usage_metrics *m);

/* retention.c */
/* usage_partitions_now() - create this month's and the next month's
 * partitions and, with retention_days, drop those past it. Blocking.
 * Thread: main (start) or the work pool. */
void usage_partitions_now(struct usage *u);
/* usage_partitions_timer() - the same every maintenance_interval, on the
 * work pool. Thread: main. */
int usage_partitions_timer(struct usage *u);
void usage_partitions_stop(struct usage *u);

#endif
