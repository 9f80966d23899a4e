/* SPDX-License-Identifier: Apache-2.0 */
/* A host loop: an event base plus a mailbox that other threads post to.
 * Workers and the main thread each run one; database results and work-pool
 * completions come back to the loop that asked, through its mailbox. */
#ifndef LG_LOOP_H
#define LG_LOOP_H

#include <event2/event.h>

struct lg_loop;

typedef void (*lg_loop_fn)(void *arg);

/* Makes libevent thread-aware; call once in main() before any loop. */
int lg_loop_global_init(void);

/* A new loop with its own event base. NULL on failure. */
struct lg_loop *lg_loop_new(const char *name);
/* Runs what is still posted, then frees. Thread: the owner, loop stopped. */
void lg_loop_free(struct lg_loop *loop);

struct event_base *lg_loop_base(struct lg_loop *loop);
const char *lg_loop_name(struct lg_loop *loop);

/* Marks @loop as the calling thread's loop (lg_loop_current()). */
void lg_loop_bind_thread(struct lg_loop *loop);
struct lg_loop *lg_loop_current(void);

/* The outbound HTTP client of this loop (set by its owner), or NULL. */
struct lg_fetcher;
void lg_loop_set_fetcher(struct lg_loop *loop, struct lg_fetcher *f);
struct lg_fetcher *lg_loop_fetcher(struct lg_loop *loop);

/* Runs what is posted to @loop now, on the calling thread (the owner,
 * with the loop stopped): at shutdown, before what the callbacks use is
 * freed. */
void lg_loop_run_posted(struct lg_loop *loop);

/* Runs @fn(@arg) on @loop's thread soon. Thread: any. 0 or -ENOMEM. */
int lg_loop_post(struct lg_loop *loop, lg_loop_fn fn, void *arg);

/* Waits until @loop has run everything posted before this call. Thread:
 * any but @loop's own; @loop must be running. 0, or -1 if it cannot post. */
int lg_loop_sync(struct lg_loop *loop);

/* Runs the loop until lg_loop_stop(). Thread: the owner. */
int lg_loop_run(struct lg_loop *loop);
/* Makes lg_loop_run() return. Thread: any. */
void lg_loop_stop(struct lg_loop *loop);

#endif
