/* SPDX-License-Identifier: Apache-2.0 */
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "balancer.h"
#include "loop.h"

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void stop_loop(void *arg)
{
	lg_loop_stop(arg);
}

/* ---- the table ---- */

static void states_are_shared_by_id(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct lg_provider_state *a1, *a2, *c;

	(void)state;
	assert_non_null(b);
	a1 = lg_provider_state_ref(b, 7);
	a2 = lg_provider_state_ref(b, 7);
	c = lg_provider_state_ref(b, 8);
	assert_non_null(a1);
	assert_ptr_equal(a1, a2);
	assert_ptr_not_equal(a1, c);
	assert_true(lg_provider_try_acquire(a1, 0));
	assert_int_equal(lg_provider_inflight(a2), 1);
	lg_provider_release(a2);
	lg_provider_state_unref(b, a1);
	/* Still referenced once: the same state, with its counters. */
	assert_true(lg_provider_try_acquire(a2, 1));
	assert_int_equal(lg_provider_inflight(lg_provider_state_ref(b, 7)), 1);
	lg_provider_state_unref(b, a2);
	lg_provider_release(a2);
	lg_provider_state_unref(b, a2);
	/* The last reference went: a new state starts from zero. */
	a1 = lg_provider_state_ref(b, 7);
	assert_int_equal(lg_provider_inflight(a1), 0);
	lg_provider_state_unref(b, a1);
	lg_provider_state_unref(b, c);
	/* The balancer frees states still referenced. */
	(void)lg_provider_state_ref(b, 99);
	lg_balancer_free(b);
}

/* ---- the cap under concurrent threads ---- */

#define CAP 3
#define CAP_THREADS 4
#define CAP_ROUNDS 100000

struct cap_run {
	struct lg_provider_state *s;
	atomic_int held;
	atomic_int max_held;
	atomic_long acquired;
	atomic_long refused;
};

static void *cap_thread(void *arg)
{
	struct cap_run *r = arg;

	for (int i = 0; i < CAP_ROUNDS; i++) {
		int now, max;

		if (!lg_provider_try_acquire(r->s, CAP)) {
			atomic_fetch_add(&r->refused, 1);
			continue;
		}
		atomic_fetch_add(&r->acquired, 1);
		now = atomic_fetch_add(&r->held, 1) + 1;
		max = atomic_load(&r->max_held);
		while (now > max && !atomic_compare_exchange_weak(&r->max_held, &max, now))
			;
		atomic_fetch_sub(&r->held, 1);
		lg_provider_release(r->s);
	}
	return NULL;
}

static void cap_is_honoured_across_threads(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct cap_run r = { .s = lg_provider_state_ref(b, 1) };
	pthread_t t[CAP_THREADS];

	(void)state;
	for (int i = 0; i < CAP_THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, cap_thread, &r), 0);
	for (int i = 0; i < CAP_THREADS; i++)
		pthread_join(t[i], NULL);
	assert_true(atomic_load(&r.max_held) <= CAP);
	assert_true(atomic_load(&r.max_held) >= 1);
	assert_int_equal(atomic_load(&r.acquired) + atomic_load(&r.refused),
			 (long)CAP_THREADS * CAP_ROUNDS);
	assert_int_equal(lg_provider_inflight(r.s), 0);
	/* Exactly the cap can be held at once. */
	for (int i = 0; i < CAP; i++)
		assert_true(lg_provider_try_acquire(r.s, CAP));
	assert_false(lg_provider_try_acquire(r.s, CAP));
	/* Uncapped: always. */
	assert_true(lg_provider_try_acquire(r.s, 0));
	assert_int_equal(lg_provider_inflight(r.s), CAP + 1);
	for (int i = 0; i <= CAP; i++)
		lg_provider_release(r.s);
	assert_int_equal(lg_provider_inflight(r.s), 0);
	lg_provider_state_unref(b, r.s);
	lg_balancer_free(b);
}

/* ---- FIFO hand-off ---- */

#define WAITERS 5

struct fifo_run {
	struct lg_loop *loop;
	struct lg_provider_state *s;
	int order[WAITERS];
	int n;
	int refused_newcomers;
	struct fifo_waiter {
		struct fifo_run *r;
		int index;
	} w[WAITERS];
};

static void fifo_ready(void *arg, bool got)
{
	struct fifo_waiter *w = arg;
	struct fifo_run *r = w->r;

	assert_true(got);
	r->order[r->n++] = w->index;
	/* The slot was handed over: the count did not drop, so a newcomer
	 * cannot take it ahead of the queue. */
	assert_int_equal(lg_provider_inflight(r->s), 1);
	if (!lg_provider_try_acquire(r->s, 1))
		r->refused_newcomers++;
	lg_provider_release(r->s);
	if (r->n == WAITERS)
		lg_loop_stop(r->loop);
}

static void fifo_first_release(void *arg)
{
	struct fifo_run *r = arg;

	lg_provider_release(r->s);
}

static void release_hands_off_in_fifo_order(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct fifo_run r = { .loop = lg_loop_new("test") };

	(void)state;
	assert_non_null(r.loop);
	r.s = lg_provider_state_ref(b, 2);
	assert_true(lg_provider_try_acquire(r.s, 1));
	for (int i = 0; i < WAITERS; i++) {
		r.w[i] = (struct fifo_waiter){ .r = &r, .index = i };
		assert_non_null(lg_provider_wait(r.s, 1, r.loop, 10000, fifo_ready, &r.w[i]));
	}
	assert_false(lg_provider_try_acquire(r.s, 1));
	assert_int_equal(lg_loop_post(r.loop, fifo_first_release, &r), 0);
	assert_int_equal(lg_loop_run(r.loop), 0);
	assert_int_equal(r.n, WAITERS);
	for (int i = 0; i < WAITERS; i++)
		assert_int_equal(r.order[i], i);
	assert_int_equal(r.refused_newcomers, WAITERS);
	assert_int_equal(lg_provider_inflight(r.s), 0);
	lg_provider_state_unref(b, r.s);
	lg_loop_free(r.loop);
	lg_balancer_free(b);
}

/* A waiter queued while the provider had room gets the slot at once. */
static void wait_with_room_is_granted(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct fifo_run r = { .loop = lg_loop_new("test") };

	(void)state;
	r.s = lg_provider_state_ref(b, 3);
	r.w[0] = (struct fifo_waiter){ .r = &r, .index = 0 };
	/* fifo_ready expects to hold the only slot, then releases it. */
	assert_non_null(lg_provider_wait(r.s, 1, r.loop, 10000, fifo_ready, &r.w[0]));
	assert_int_equal(lg_provider_inflight(r.s), 1);
	r.n = WAITERS - 1; /* stop after this one */
	assert_int_equal(lg_loop_run(r.loop), 0);
	assert_int_equal(r.order[WAITERS - 1], 0);
	assert_int_equal(lg_provider_inflight(r.s), 0);
	lg_provider_state_unref(b, r.s);
	lg_loop_free(r.loop);
	lg_balancer_free(b);
}

/* ---- timeout and cancel ---- */

struct once {
	struct lg_loop *loop;
	int calls;
	bool got;
	uint64_t at_ms;
};

static void once_ready(void *arg, bool got)
{
	struct once *o = arg;

	o->calls++;
	o->got = got;
	o->at_ms = mono_ms();
	lg_loop_stop(o->loop);
}

static void wait_times_out(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct lg_provider_state *s = lg_provider_state_ref(b, 4);
	struct once o = { .loop = lg_loop_new("test") };
	uint64_t start = mono_ms();

	(void)state;
	assert_true(lg_provider_try_acquire(s, 1));
	assert_non_null(lg_provider_wait(s, 1, o.loop, 100, once_ready, &o));
	assert_int_equal(lg_loop_run(o.loop), 0);
	assert_int_equal(o.calls, 1);
	assert_false(o.got);
	assert_true(o.at_ms - start >= 90);
	/* The holder keeps its slot; the expired waiter got none. */
	assert_int_equal(lg_provider_inflight(s), 1);
	lg_provider_release(s);
	assert_int_equal(lg_provider_inflight(s), 0);
	lg_provider_state_unref(b, s);
	lg_loop_free(o.loop);
	lg_balancer_free(b);
}

static void cancel_removes_the_wait(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct lg_provider_state *s = lg_provider_state_ref(b, 5);
	struct once o = { .loop = lg_loop_new("test") };
	struct lg_provider_wait *w;

	(void)state;
	assert_true(lg_provider_try_acquire(s, 1));
	w = lg_provider_wait(s, 1, o.loop, 50, once_ready, &o);
	assert_non_null(w);
	lg_provider_wait_cancel(w);
	lg_provider_release(s);
	assert_int_equal(lg_provider_inflight(s), 0);
	/* Past the cancelled deadline: nothing runs. */
	usleep(100 * 1000);
	assert_int_equal(lg_loop_post(o.loop, stop_loop, o.loop), 0);
	assert_int_equal(lg_loop_run(o.loop), 0);
	assert_int_equal(o.calls, 0);
	lg_provider_state_unref(b, s);
	lg_loop_free(o.loop);
	lg_balancer_free(b);
}

/* ---- races between another thread's release and this loop ---- */

#define RACE_ROUNDS 2000

struct race {
	struct lg_loop *loop;
	struct lg_provider_state *s;
	pthread_t releaser;
	sem_t go;
	atomic_bool quit;
	unsigned seed;
	int round;
	int readies, granted, expired;
	bool waiting_ready;
	bool use_timeout;
	long settle_spins;
};

static void *releaser_main(void *arg)
{
	struct race *r = arg;
	unsigned seed = 12345;

	for (;;) {
		while (sem_wait(&r->go) != 0)
			;
		if (atomic_load(&r->quit))
			return NULL;
		if (r->use_timeout)
			usleep((useconds_t)(rand_r(&seed) % 6000));
		else
			for (volatile int i = rand_r(&seed) % 2000; i > 0; i--)
				;
		lg_provider_release(r->s);
	}
}

static void race_ready(void *arg, bool got)
{
	struct race *r = arg;

	r->readies++;
	r->waiting_ready = false;
	if (got) {
		r->granted++;
		lg_provider_release(r->s);
	} else {
		r->expired++;
	}
}

static void race_step(void *arg);

static const struct timeval poll_tv = { 0, 100 };

static void race_poll(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	race_step(arg);
}

static void race_step(void *arg)
{
	struct race *r = arg;
	struct lg_provider_wait *w;

	/* Settle: the previous round's slot is back and its waiter done. Poll
	 * with a timer: reposting at once would starve the loop's timers. */
	if (lg_provider_inflight(r->s) != 0 || r->waiting_ready) {
		r->settle_spins++;
		assert_true(r->settle_spins < 10000000L);
		assert_int_equal(event_base_once(lg_loop_base(r->loop), -1, EV_TIMEOUT,
						 race_poll, r, &poll_tv), 0);
		return;
	}
	if (r->round == RACE_ROUNDS) {
		lg_loop_stop(r->loop);
		return;
	}
	r->round++;
	assert_true(lg_provider_try_acquire(r->s, 1));
	w = lg_provider_wait(r->s, 1, r->loop, r->use_timeout ? 3 : 60000, race_ready, r);
	assert_non_null(w);
	r->waiting_ready = r->use_timeout;
	assert_int_equal(sem_post(&r->go), 0);
	if (!r->use_timeout) {
		for (volatile int i = rand_r(&r->seed) % 2000; i > 0; i--)
			;
		lg_provider_wait_cancel(w);
	}
	assert_int_equal(lg_loop_post(r->loop, race_step, r), 0);
}

static void run_race(struct race *r)
{
	struct lg_balancer *b = lg_balancer_new();

	r->loop = lg_loop_new("test");
	r->s = lg_provider_state_ref(b, 6);
	r->seed = 42;
	atomic_init(&r->quit, false);
	assert_int_equal(sem_init(&r->go, 0, 0), 0);
	assert_int_equal(pthread_create(&r->releaser, NULL, releaser_main, r), 0);
	assert_int_equal(lg_loop_post(r->loop, race_step, r), 0);
	assert_int_equal(lg_loop_run(r->loop), 0);
	atomic_store(&r->quit, true);
	assert_int_equal(sem_post(&r->go), 0);
	pthread_join(r->releaser, NULL);
	sem_destroy(&r->go);
	assert_int_equal(r->round, RACE_ROUNDS);
	/* Neither lost nor counted twice: exactly the cap is free again. */
	assert_int_equal(lg_provider_inflight(r->s), 0);
	assert_true(lg_provider_try_acquire(r->s, 1));
	assert_false(lg_provider_try_acquire(r->s, 1));
	lg_provider_release(r->s);
	lg_provider_state_unref(b, r->s);
	lg_loop_free(r->loop);
	lg_balancer_free(b);
}

static void cancel_races_hand_off(void **state)
{
	struct race r = { .use_timeout = false };

	(void)state;
	run_race(&r);
	/* A cancelled wait never reports. */
	assert_int_equal(r.readies, 0);
}

static void timeout_races_hand_off(void **state)
{
	struct race r = { .use_timeout = true };

	(void)state;
	run_race(&r);
	/* Exactly one report per wait, whichever won. */
	assert_int_equal(r.readies, RACE_ROUNDS);
	assert_int_equal(r.granted + r.expired, RACE_ROUNDS);
	print_message("hand-offs %d, timeouts %d\n", r.granted, r.expired);
}

/* ---- the circuit breaker ---- */

static void breaker_opens_half_opens_and_closes(void **state)
{
	struct lg_balancer *b = lg_balancer_new();
	struct lg_provider_state *s = lg_provider_state_ref(b, 9);
	uint64_t t = 1000000;

	(void)state;
	assert_string_equal(lg_provider_breaker_state(s, t), "closed");
	/* A success resets the run of failures. */
	for (int i = 0; i < 4; i++)
		lg_provider_report(s, false, t);
	lg_provider_report(s, true, t);
	for (int i = 0; i < 4; i++)
		lg_provider_report(s, false, t);
	assert_true(lg_provider_breaker_allows(s, t));
	assert_string_equal(lg_provider_breaker_state(s, t), "closed");
	/* The fifth in a row opens it for 10 s. */
	lg_provider_report(s, false, t);
	assert_string_equal(lg_provider_breaker_state(s, t), "open");
	assert_false(lg_provider_breaker_allows(s, t));
	assert_false(lg_provider_breaker_allows(s, t + 9999));
	/* Half-open: one trial, not two. */
	t += 10000;
	assert_string_equal(lg_provider_breaker_state(s, t), "half-open");
	assert_true(lg_provider_breaker_allows(s, t));
	assert_false(lg_provider_breaker_allows(s, t + 1));
	/* The trial fails: open again for 10 s. */
	lg_provider_report(s, false, t + 5);
	assert_string_equal(lg_provider_breaker_state(s, t + 6), "open");
	assert_false(lg_provider_breaker_allows(s, t + 10004));
	t += 10005;
	assert_true(lg_provider_breaker_allows(s, t));
	/* A trial that never reports expires after the open period. */
	assert_false(lg_provider_breaker_allows(s, t + 9999));
	assert_true(lg_provider_breaker_allows(s, t + 10000));
	/* The trial succeeds: closed, everything allowed. */
	lg_provider_report(s, true, t + 10001);
	assert_string_equal(lg_provider_breaker_state(s, t + 10001), "closed");
	assert_true(lg_provider_breaker_allows(s, t + 10001));
	assert_true(lg_provider_breaker_allows(s, t + 10002));
	/* And it takes five failures again to open. */
	for (int i = 0; i < 4; i++)
		lg_provider_report(s, false, t + 10003);
	assert_true(lg_provider_breaker_allows(s, t + 10003));
	lg_provider_state_unref(b, s);
	lg_balancer_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(states_are_shared_by_id),
		cmocka_unit_test(cap_is_honoured_across_threads),
		cmocka_unit_test(release_hands_off_in_fifo_order),
		cmocka_unit_test(wait_with_room_is_granted),
		cmocka_unit_test(wait_times_out),
		cmocka_unit_test(cancel_removes_the_wait),
		cmocka_unit_test(cancel_races_hand_off),
		cmocka_unit_test(timeout_races_hand_off),
		cmocka_unit_test(breaker_opens_half_opens_and_closes),
	};

	if (lg_loop_global_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
