/* SPDX-License-Identifier: Apache-2.0 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "loop.h"
#include "workpool.h"

#define JOBS 200

struct job {
	pthread_t worker;
	pthread_t done_on;
	int value;
	atomic_int *done_count;
	struct lg_loop *loop;
};

static void work(void *arg)
{
	struct job *j = arg;

	j->worker = pthread_self();
	j->value = j->value * 2;
}

static void done(void *arg)
{
	struct job *j = arg;

	j->done_on = pthread_self();
	if (atomic_fetch_add(j->done_count, 1) + 1 == JOBS)
		lg_loop_stop(j->loop);
}

static void completions_return_to_the_loop(void **state)
{
	struct lg_loop *loop = lg_loop_new("test");
	struct lg_workpool *wp = lg_workpool_new(2);
	static struct job jobs[JOBS];
	atomic_int count = 0;

	(void)state;
	assert_non_null(loop);
	assert_non_null(wp);
	for (int i = 0; i < JOBS; i++) {
		jobs[i] = (struct job){ .value = i, .done_count = &count, .loop = loop };
		assert_int_equal(lg_workpool_submit(wp, loop, work, done, &jobs[i]), 0);
	}
	assert_int_equal(lg_loop_run(loop), 0);
	assert_int_equal(atomic_load(&count), JOBS);
	for (int i = 0; i < JOBS; i++) {
		assert_int_equal(jobs[i].value, 2 * i);
		/* The work ran on a pool thread, the completion on the loop's. */
		assert_false(pthread_equal(jobs[i].worker, pthread_self()));
		assert_true(pthread_equal(jobs[i].done_on, pthread_self()));
	}
	lg_workpool_free(wp);
	lg_loop_free(loop);
}

static void free_runs_queued_work(void **state)
{
	struct lg_workpool *wp = lg_workpool_new(1);
	static struct job jobs[50];

	(void)state;
	for (int i = 0; i < 50; i++) {
		jobs[i] = (struct job){ .value = i + 1 };
		assert_int_equal(lg_workpool_submit(wp, NULL, work, NULL, &jobs[i]), 0);
	}
	lg_workpool_free(wp);
	for (int i = 0; i < 50; i++)
		assert_int_equal(jobs[i].value, 2 * (i + 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(completions_return_to_the_loop),
		cmocka_unit_test(free_runs_queued_work),
	};

	if (lg_loop_global_init() != 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
