/* SPDX-License-Identifier: Apache-2.0 */
#include "loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/thread.h>

#include "log.h"

struct mail {
	struct mail *next;
	lg_loop_fn fn;
	void *arg;
};

struct lg_loop {
	struct event_base *base;
	struct event *wake;        /* activated by lg_loop_post() */
	pthread_mutex_t lock;      /* guards head/tail/pending */
	struct mail *head, *tail;
	int pending;               /* the wake event is already active */
	struct lg_fetcher *fetcher;
	char name[32];
};

static _Thread_local struct lg_loop *current_loop;

int lg_loop_global_init(void)
{
	if (evthread_use_pthreads() != 0) {
		lg_error("core", "libevent: evthread_use_pthreads failed");
		return -1;
	}
	return 0;
}

/* Takes the whole queue under the lock, then runs it unlocked, in order. */
static void drain_mail(struct lg_loop *loop)
{
	struct mail *m;

	pthread_mutex_lock(&loop->lock);
	m = loop->head;
	loop->head = loop->tail = NULL;
	loop->pending = 0;
	pthread_mutex_unlock(&loop->lock);
	while (m) {
		struct mail *next = m->next;

		m->fn(m->arg);
		free(m);
		m = next;
	}
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	drain_mail(arg);
}

struct lg_loop *lg_loop_new(const char *name)
{
	struct lg_loop *loop = calloc(1, sizeof *loop);
	struct event_config *cfg = NULL;

	if (!loop)
		return NULL;
	snprintf(loop->name, sizeof loop->name, "%s", name);
	if (pthread_mutex_init(&loop->lock, NULL) != 0)
		goto fail_free;
	cfg = event_config_new();
	if (!cfg)
		goto fail_mutex;
	/* Cheaper epoll updates; a loop is never touched by two threads except
	 * through the thread-safe event_active() of the mailbox. */
	if (event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) != 0)
		goto fail_cfg;
	loop->base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	cfg = NULL;
	if (!loop->base)
		goto fail_mutex;
	loop->wake = event_new(loop->base, -1, 0, on_wake, loop);
	if (!loop->wake)
		goto fail_base;
	return loop;
fail_base:
	event_base_free(loop->base);
fail_cfg:
	if (cfg)
		event_config_free(cfg);
fail_mutex:
	pthread_mutex_destroy(&loop->lock);
fail_free:
	free(loop);
	return NULL;
}

void lg_loop_free(struct lg_loop *loop)
{
	if (!loop)
		return;
	drain_mail(loop);
	event_free(loop->wake);
	event_base_free(loop->base);
	pthread_mutex_destroy(&loop->lock);
	if (current_loop == loop)
		current_loop = NULL;
	free(loop);
}

void lg_loop_run_posted(struct lg_loop *loop)
{
	drain_mail(loop);
}

struct event_base *lg_loop_base(struct lg_loop *loop) { return loop->base; }
const char *lg_loop_name(struct lg_loop *loop) { return loop->name; }
void lg_loop_bind_thread(struct lg_loop *loop) { current_loop = loop; }
void lg_loop_set_fetcher(struct lg_loop *loop, struct lg_fetcher *f) { loop->fetcher = f; }
struct lg_fetcher *lg_loop_fetcher(struct lg_loop *loop) { return loop->fetcher; }
struct lg_loop *lg_loop_current(void) { return current_loop; }

int lg_loop_post(struct lg_loop *loop, lg_loop_fn fn, void *arg)
{
	struct mail *m = malloc(sizeof *m);
	int wake;

	if (!m)
		return -ENOMEM;
	m->next = NULL;
	m->fn = fn;
	m->arg = arg;
	pthread_mutex_lock(&loop->lock);
	if (loop->tail)
		loop->tail->next = m;
	else
		loop->head = m;
	loop->tail = m;
	wake = !loop->pending;
	loop->pending = 1;
	pthread_mutex_unlock(&loop->lock);
	/* One wake-up per batch of posts, not one per post. */
	if (wake)
		event_active(loop->wake, 0, 0);
	return 0;
}

int lg_loop_run(struct lg_loop *loop)
{
	lg_loop_bind_thread(loop);
	return event_base_loop(loop->base, EVLOOP_NO_EXIT_ON_EMPTY) < 0 ? -1 : 0;
}

void lg_loop_stop(struct lg_loop *loop)
{
	event_base_loopbreak(loop->base);
}

struct sync_point {
	pthread_mutex_t lock;
	pthread_cond_t done;
	bool reached;
};

static void reach(void *arg)
{
	struct sync_point *sp = arg;

	pthread_mutex_lock(&sp->lock);
	sp->reached = true;
	pthread_cond_signal(&sp->done);
	pthread_mutex_unlock(&sp->lock);
}

int lg_loop_sync(struct lg_loop *loop)
{
	struct sync_point sp = { .reached = false };

	if (pthread_mutex_init(&sp.lock, NULL) != 0)
		return -1;
	if (pthread_cond_init(&sp.done, NULL) != 0) {
		pthread_mutex_destroy(&sp.lock);
		return -1;
	}
	if (lg_loop_post(loop, reach, &sp) != 0) {
		pthread_cond_destroy(&sp.done);
		pthread_mutex_destroy(&sp.lock);
		return -1;
	}
	pthread_mutex_lock(&sp.lock);
	while (!sp.reached)
		pthread_cond_wait(&sp.done, &sp.lock);
	pthread_mutex_unlock(&sp.lock);
	pthread_cond_destroy(&sp.done);
	pthread_mutex_destroy(&sp.lock);
	return 0;
}
