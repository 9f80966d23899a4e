/* SPDX-License-Identifier: Apache-2.0 */
/* A small pool of threads for blocking or CPU-heavy work (password hashing,
 * document parsing); each job's completion runs back on the loop that
 * submitted it. */
#ifndef LG_WORKPOOL_H
#define LG_WORKPOOL_H

#include <llmgate/host.h>

#include "loop.h"

struct lg_workpool;

struct lg_workpool *lg_workpool_new(int threads);
/* @work runs on a pool thread, then @done (if not NULL) on @reply_to.
 * Thread: any. 0, -ENOMEM, or -ESHUTDOWN after lg_workpool_free began. */
int lg_workpool_submit(struct lg_workpool *wp, struct lg_loop *reply_to,
		       lg_work_fn work, lg_done_fn done, void *arg);
/* Runs what is queued, joins the threads, frees. */
void lg_workpool_free(struct lg_workpool *wp);

#endif
