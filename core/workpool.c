/* SPDX-License-Identifier: Apache-2.0 */
#include "workpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "log.h"

struct job {
	struct job *next;
	struct lg_loop *reply_to;
	lg_work_fn work;
	lg_done_fn done;
	void *arg;
};

struct lg_workpool {
	pthread_mutex_t lock;
	pthread_cond_t more;
	struct job *head, *tail;
	bool closing;
	int nthreads;
	pthread_t *threads;
};

static struct job *next_job(struct lg_workpool *wp)
{
	struct job *j;

	pthread_mutex_lock(&wp->lock);
	while (!wp->head && !wp->closing)
		pthread_cond_wait(&wp->more, &wp->lock);
	j = wp->head;
	if (j) {
		wp->head = j->next;
		if (!wp->head)
			wp->tail = NULL;
	}
	pthread_mutex_unlock(&wp->lock);
	return j;
}

static void run_done(void *arg)
{
	struct job *j = arg;

	j->done(j->arg);
	free(j);
}

static void *worker_main(void *arg)
{
	struct lg_workpool *wp = arg;
	struct job *j;

	while ((j = next_job(wp)) != NULL) {
		j->work(j->arg);
		if (!j->done) {
			free(j);
			continue;
		}
		if (lg_loop_post(j->reply_to, run_done, j) != 0) {
			/* Without memory to post, run the completion here rather
			 * than lose it; completions are written to tolerate it. */
			lg_error("work", "cannot post a completion: running it on the pool thread");
			run_done(j);
		}
	}
	return NULL;
}

struct lg_workpool *lg_workpool_new(int threads)
{
	struct lg_workpool *wp = calloc(1, sizeof *wp);

	if (!wp)
		return NULL;
	wp->threads = calloc((size_t)threads, sizeof *wp->threads);
	if (!wp->threads || pthread_mutex_init(&wp->lock, NULL) != 0) {
		free(wp->threads);
		free(wp);
		return NULL;
	}
	if (pthread_cond_init(&wp->more, NULL) != 0) {
		pthread_mutex_destroy(&wp->lock);
		free(wp->threads);
		free(wp);
		return NULL;
	}
	for (int i = 0; i < threads; i++) {
		if (pthread_create(&wp->threads[i], NULL, worker_main, wp) != 0) {
			lg_error("work", "cannot start work-pool thread %d", i);
			break;
		}
		wp->nthreads++;
	}
	if (wp->nthreads == 0) {
		lg_workpool_free(wp);
		return NULL;
	}
	return wp;
}

int lg_workpool_submit(struct lg_workpool *wp, struct lg_loop *reply_to,
		       lg_work_fn work, lg_done_fn done, void *arg)
{
	struct job *j;

	if (done && !reply_to)
		return -EINVAL;
	j = malloc(sizeof *j);
	if (!j)
		return -ENOMEM;
	*j = (struct job){ .reply_to = reply_to, .work = work, .done = done, .arg = arg };
	pthread_mutex_lock(&wp->lock);
	if (wp->closing) {
		pthread_mutex_unlock(&wp->lock);
		free(j);
		return -ESHUTDOWN;
	}
	if (wp->tail)
		wp->tail->next = j;
	else
		wp->head = j;
	wp->tail = j;
	pthread_cond_signal(&wp->more);
	pthread_mutex_unlock(&wp->lock);
	return 0;
}

void lg_workpool_free(struct lg_workpool *wp)
{
	if (!wp)
		return;
	pthread_mutex_lock(&wp->lock);
	wp->closing = true;
	pthread_cond_broadcast(&wp->more);
	pthread_mutex_unlock(&wp->lock);
	for (int i = 0; i < wp->nthreads; i++)
		pthread_join(wp->threads[i], NULL);
	pthread_cond_destroy(&wp->more);
	pthread_mutex_destroy(&wp->lock);
	free(wp->threads);
	free(wp);
}
