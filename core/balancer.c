/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Live provider state shared by every worker.
 *
 * The table of states is a small hash map under one mutex, touched only
 * when a registry view takes or drops a reference; requests reach a state
 * through the pointer the view holds, never through the map.
 *
 * Concurrency cap: the in-flight count is an atomic; taking a slot is a
 * compare-exchange loop against the cap, so uncapped and uncontended
 * providers never take a lock. Waiters queue in FIFO order under the
 * state's mutex. A release with waiters hands its slot straight to the
 * oldest one (the count does not change), so a newcomer cannot overtake
 * the queue. The race between a release that sees no waiter and a waiter
 * that is about to queue is closed from both sides: the waiter re-checks
 * the count after it queued, and the release re-checks for waiters after
 * it decremented (sequentially consistent atomics: one of them sees the
 * other).
 *
 * A waiter's life: QUEUED (in the FIFO) -> GRANTED (a slot is held for it
 * and a wake-up is posted to its loop) or DONE (timed out or cancelled
 * while queued). Every state change happens under the state's mutex, so
 * a timeout or a cancel racing with a hand-off sees exactly one outcome:
 * the slot is either never given, or given and then delivered (or given
 * back when the waiter was cancelled in the meantime).
 *
 * Circuit breaker (lock-free): BREAKER_THRESHOLD consecutive failures
 * open it for BREAKER_OPEN_MS; then one trial request is let through
 * (half-open); its success closes the breaker, its failure opens it again.
 * A trial whose outcome is never reported (the client left) expires after
 * BREAKER_OPEN_MS so the provider is not skipped forever.
 */
#include "balancer.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/queue.h>

#include <event2/event.h>

#include "log.h"

#define COMPONENT "balancer"

#define BUCKETS 64
#define BREAKER_THRESHOLD 5
#define BREAKER_OPEN_MS 10000u

enum wait_phase {
	WAIT_QUEUED,
	WAIT_GRANTED,
	WAIT_DONE,
};

struct lg_provider_wait {
	TAILQ_ENTRY(lg_provider_wait) link;
	struct lg_provider_state *s;
	struct lg_loop *loop;
	struct event *timer;
	void (*ready)(void *arg, bool got);
	void *arg;
	int cap;
	enum wait_phase phase;          /* under s->lock */
	bool canceled;                  /* on the waiter's loop only */
};

TAILQ_HEAD(wait_list, lg_provider_wait);

struct lg_provider_state {
	struct lg_balancer *b;
	struct lg_provider_state *next; /* bucket chain, under b->lock */
	int64_t id;
	long refs;                      /* under b->lock */
	atomic_int inflight;
	atomic_int nwaiting;
	pthread_mutex_t lock;           /* the waiter queue */
	struct wait_list waiters;
	/* breaker */
	atomic_int failures;            /* consecutive */
	atomic_uint_fast64_t open_until_ms; /* 0: closed */
	atomic_uint_fast64_t trial_at_ms;   /* 0: no half-open trial in flight */
};

struct lg_balancer {
	pthread_mutex_t lock;
	struct lg_provider_state *buckets[BUCKETS];
};

/* ---- the table ---- */

struct lg_balancer *lg_balancer_new(void)
{
	struct lg_balancer *b = calloc(1, sizeof *b);

	if (!b)
		return NULL;
	if (pthread_mutex_init(&b->lock, NULL) != 0) {
		free(b);
		return NULL;
	}
	return b;
}

static void state_free(struct lg_provider_state *s)
{
	pthread_mutex_destroy(&s->lock);
	free(s);
}

void lg_balancer_free(struct lg_balancer *b)
{
	if (!b)
		return;
	for (size_t i = 0; i < BUCKETS; i++) {
		while (b->buckets[i]) {
			struct lg_provider_state *s = b->buckets[i];

			b->buckets[i] = s->next;
			state_free(s);
		}
	}
	pthread_mutex_destroy(&b->lock);
	free(b);
}

static size_t bucket_of(int64_t id)
{
	/* Fibonacci hashing: ids are small and sequential. */
	return (size_t)(((uint64_t)id * 0x9E3779B97F4A7C15ull) >> 58) % BUCKETS;
}

static struct lg_provider_state *state_new(struct lg_balancer *b, int64_t id)
{
	struct lg_provider_state *s = calloc(1, sizeof *s);

	if (!s)
		return NULL;
	if (pthread_mutex_init(&s->lock, NULL) != 0) {
		free(s);
		return NULL;
	}
	s->b = b;
	s->id = id;
	TAILQ_INIT(&s->waiters);
	atomic_init(&s->inflight, 0);
	atomic_init(&s->nwaiting, 0);
	atomic_init(&s->failures, 0);
	atomic_init(&s->open_until_ms, 0);
	atomic_init(&s->trial_at_ms, 0);
	return s;
}

struct lg_provider_state *lg_provider_state_ref(struct lg_balancer *b, int64_t id)
{
	size_t i = bucket_of(id);
	struct lg_provider_state *s;

	pthread_mutex_lock(&b->lock);
	for (s = b->buckets[i]; s; s = s->next)
		if (s->id == id)
			break;
	if (!s) {
		s = state_new(b, id);
		if (s) {
			s->next = b->buckets[i];
			b->buckets[i] = s;
		}
	}
	if (s)
		s->refs++;
	pthread_mutex_unlock(&b->lock);
	return s;
}

/* Another reference to a state the caller already holds one of. */
static void state_ref_again(struct lg_provider_state *s)
{
	pthread_mutex_lock(&s->b->lock);
	s->refs++;
	pthread_mutex_unlock(&s->b->lock);
}

void lg_provider_state_unref(struct lg_balancer *b, struct lg_provider_state *s)
{
	struct lg_provider_state **pp;

	if (!s)
		return;
	pthread_mutex_lock(&b->lock);
	if (--s->refs > 0) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	for (pp = &b->buckets[bucket_of(s->id)]; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	}
	pthread_mutex_unlock(&b->lock);
	/* Waiters hold references, so none is queued here. */
	state_free(s);
}

/* ---- in flight and the cap ---- */

int lg_provider_inflight(const struct lg_provider_state *s)
{
	return atomic_load(&((struct lg_provider_state *)s)->inflight);
}

bool lg_provider_try_acquire(struct lg_provider_state *s, int cap)
{
	int cur;

	if (cap <= 0) {
		atomic_fetch_add(&s->inflight, 1);
		return true;
	}
	cur = atomic_load(&s->inflight);
	do {
		if (cur >= cap)
			return false;
	} while (!atomic_compare_exchange_weak(&s->inflight, &cur, cur + 1));
	return true;
}

static void wait_granted(void *arg);

/* Gives @w the slot it now holds: its wake-up runs on its loop. Under
 * s->lock, with @w already out of the queue. False if the wake-up cannot
 * be posted (out of memory): @w is queued again at the front and the
 * caller still owns the slot. */
static bool grant_locked(struct lg_provider_state *s, struct lg_provider_wait *w)
{
	w->phase = WAIT_GRANTED;
	if (lg_loop_post(w->loop, wait_granted, w) == 0)
		return true;
	lg_error(COMPONENT, "provider %lld: cannot wake a waiter (out of memory)",
		 (long long)s->id);
	w->phase = WAIT_QUEUED;
	TAILQ_INSERT_HEAD(&s->waiters, w, link);
	atomic_fetch_add(&s->nwaiting, 1);
	return false;
}

static struct lg_provider_wait *pop_locked(struct lg_provider_state *s)
{
	struct lg_provider_wait *w = TAILQ_FIRST(&s->waiters);

	if (w) {
		TAILQ_REMOVE(&s->waiters, w, link);
		atomic_fetch_sub(&s->nwaiting, 1);
	}
	return w;
}

/* Takes free slots for the oldest waiters while there are some. */
static void dispatch_locked(struct lg_provider_state *s)
{
	struct lg_provider_wait *w;

	while ((w = TAILQ_FIRST(&s->waiters)) && lg_provider_try_acquire(s, w->cap)) {
		(void)pop_locked(s);
		if (!grant_locked(s, w)) {
			atomic_fetch_sub(&s->inflight, 1);
			return;
		}
	}
}

void lg_provider_release(struct lg_provider_state *s)
{
	struct lg_provider_wait *w;

	if (atomic_load(&s->nwaiting) > 0) {
		pthread_mutex_lock(&s->lock);
		w = pop_locked(s);
		if (w && grant_locked(s, w)) {
			/* The slot changed hands: the count stays. */
			pthread_mutex_unlock(&s->lock);
			return;
		}
		pthread_mutex_unlock(&s->lock);
	}
	atomic_fetch_sub(&s->inflight, 1);
	/* A waiter may have queued after the check above and before the
	 * decrement: it saw the slot taken, so give it the slot now. */
	if (atomic_load(&s->nwaiting) > 0) {
		pthread_mutex_lock(&s->lock);
		dispatch_locked(s);
		pthread_mutex_unlock(&s->lock);
	}
}

/* ---- waiting for a slot ---- */

static void wait_free(struct lg_provider_wait *w)
{
	struct lg_provider_state *s = w->s;

	if (w->timer)
		event_free(w->timer);
	free(w);
	lg_provider_state_unref(s->b, s);
}

/* On the waiter's loop: the slot is ours (or to give back). */
static void wait_granted(void *arg)
{
	struct lg_provider_wait *w = arg;

	if (w->canceled)
		lg_provider_release(w->s);
	else
		w->ready(w->arg, true);
	wait_free(w);
}

/* On the waiter's loop: the deadline passed. */
static void wait_timed_out(evutil_socket_t fd, short what, void *arg)
{
	struct lg_provider_wait *w = arg;
	struct lg_provider_state *s = w->s;
	bool expired = false;

	(void)fd;
	(void)what;
	pthread_mutex_lock(&s->lock);
	if (w->phase == WAIT_QUEUED) {
		TAILQ_REMOVE(&s->waiters, w, link);
		atomic_fetch_sub(&s->nwaiting, 1);
		w->phase = WAIT_DONE;
		expired = true;
	}
	pthread_mutex_unlock(&s->lock);
	/* Otherwise a slot was handed over just now: wait_granted delivers it. */
	if (expired) {
		w->ready(w->arg, false);
		wait_free(w);
	}
}

/* Thread: @loop's own (the timer and the wake-up run there, and must not
 * run before this returns). */
struct lg_provider_wait *lg_provider_wait(struct lg_provider_state *s, int cap,
					  struct lg_loop *loop, uint32_t timeout_ms,
					  void (*ready)(void *arg, bool got), void *arg)
{
	struct timeval tv = { .tv_sec = (time_t)(timeout_ms / 1000),
			      .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000 };
	struct lg_provider_wait *w = calloc(1, sizeof *w);

	if (!w)
		return NULL;
	*w = (struct lg_provider_wait){ .s = s, .loop = loop, .ready = ready, .arg = arg,
					.cap = cap, .phase = WAIT_QUEUED };
	w->timer = evtimer_new(lg_loop_base(loop), wait_timed_out, w);
	if (!w->timer || evtimer_add(w->timer, &tv) != 0) {
		if (w->timer)
			event_free(w->timer);
		free(w);
		return NULL;
	}
	state_ref_again(s);
	pthread_mutex_lock(&s->lock);
	TAILQ_INSERT_TAIL(&s->waiters, w, link);
	atomic_fetch_add(&s->nwaiting, 1);
	/* A slot freed before we queued is taken now (see the file comment). */
	dispatch_locked(s);
	pthread_mutex_unlock(&s->lock);
	return w;
}

void lg_provider_wait_cancel(struct lg_provider_wait *w)
{
	struct lg_provider_state *s;
	bool queued = false;

	if (!w)
		return;
	s = w->s;
	pthread_mutex_lock(&s->lock);
	if (w->phase == WAIT_QUEUED) {
		TAILQ_REMOVE(&s->waiters, w, link);
		atomic_fetch_sub(&s->nwaiting, 1);
		w->phase = WAIT_DONE;
		queued = true;
	}
	pthread_mutex_unlock(&s->lock);
	if (queued)
		wait_free(w);
	else
		w->canceled = true; /* granted: wait_granted gives the slot back */
}

/* ---- the circuit breaker ---- */

bool lg_provider_breaker_allows(struct lg_provider_state *s, uint64_t now_ms)
{
	uint_fast64_t until = atomic_load(&s->open_until_ms);
	uint_fast64_t trial;

	if (until == 0)
		return true;
	if (now_ms < until)
		return false;
	/* Half-open: one trial at a time. */
	trial = atomic_load(&s->trial_at_ms);
	if (trial != 0 && now_ms - trial < BREAKER_OPEN_MS)
		return false;
	return atomic_compare_exchange_strong(&s->trial_at_ms, &trial, now_ms ? now_ms : 1);
}

void lg_provider_report(struct lg_provider_state *s, bool ok, uint64_t now_ms)
{
	uint_fast64_t until;
	int failures;

	if (ok) {
		atomic_store(&s->failures, 0);
		if (atomic_load(&s->open_until_ms) != 0) {
			atomic_store(&s->open_until_ms, 0);
			atomic_store(&s->trial_at_ms, 0);
			lg_info(COMPONENT, "provider %lld: circuit breaker closed", (long long)s->id);
		}
		return;
	}
	failures = atomic_fetch_add(&s->failures, 1) + 1;
	until = atomic_load(&s->open_until_ms);
	if (until != 0) {
		/* A failure while half-open (the trial's): open again. */
		if (now_ms >= until) {
			atomic_store(&s->open_until_ms, now_ms + BREAKER_OPEN_MS);
			atomic_store(&s->trial_at_ms, 0);
		}
		return;
	}
	if (failures >= BREAKER_THRESHOLD &&
	    atomic_compare_exchange_strong(&s->open_until_ms, &until, now_ms + BREAKER_OPEN_MS)) {
		atomic_store(&s->trial_at_ms, 0);
		lg_warn(COMPONENT, "provider %lld: circuit breaker open for %u ms after %d failures",
			(long long)s->id, BREAKER_OPEN_MS, failures);
	}
}

const char *lg_provider_breaker_state(const struct lg_provider_state *s, uint64_t now_ms)
{
	uint_fast64_t until = atomic_load(&((struct lg_provider_state *)s)->open_until_ms);

	if (until == 0)
		return "closed";
	return now_ms < until ? "open" : "half-open";
}
