/* SPDX-License-Identifier: Apache-2.0 */
/* Outbound HTTP for one loop: a libcurl multi handle driven by the loop's
 * event base (socket and timer callbacks), never blocking it. Easy handles
 * are reused. No redirects are followed, no proxy is looked up, only http
 * and https are allowed. */
#ifndef LG_FETCH_H
#define LG_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <llmgate/http.h>

struct lg_fetcher;

struct lg_fetch_defaults {
	uint32_t connect_timeout_ms;     /* 5000 */
	uint32_t first_byte_timeout_ms;  /* 120000 */
	uint32_t idle_timeout_ms;        /* 60000 */
	uint32_t total_timeout_ms;       /* 600000 */
	size_t max_response_bytes;       /* buffered replies: 64 MiB */
};

/* Call once in main() before threads (curl_global_init). */
int lg_fetch_global_init(void);
void lg_fetch_global_cleanup(void);

struct lg_fetcher *lg_fetcher_new(struct event_base *base, const struct lg_fetch_defaults *d);
/* Cancels what runs (on_done with LG_FETCH_ECANCELED), then frees. */
void lg_fetcher_free(struct lg_fetcher *f);
/* Transfers in progress. */
size_t lg_fetcher_active(const struct lg_fetcher *f);

/* As host->fetch() in <llmgate/host.h>. Thread: the fetcher's loop. */
struct lg_fetch *lg_fetch_start(struct lg_fetcher *f, const struct lg_fetch_request *rq,
				const struct lg_fetch_handlers *h, void *arg);
void lg_fetch_cancel(struct lg_fetch *fetch);
/* A header of the reply (the last one of that name), valid from on_head
 * until on_done returns; NULL if absent or not arrived yet. */
const char *lg_fetch_header(struct lg_fetch *fetch, const char *name);
void lg_fetch_pause(struct lg_fetch *fetch, bool paused);

#endif
