/* SPDX-License-Identifier: Apache-2.0 */
/* Live state of each provider, shared by every worker and kept across
 * registry snapshots: requests in flight (for least_busy and the
 * concurrency cap), an event-driven wait queue for a capped provider, and a
 * circuit breaker. Keyed by provider id. */
#ifndef LG_BALANCER_H
#define LG_BALANCER_H

#include <stdbool.h>
#include <stdint.h>

#include "loop.h"

struct lg_balancer;
struct lg_provider_state;

struct lg_balancer *lg_balancer_new(void);
void lg_balancer_free(struct lg_balancer *b);

/* The state of provider @id, created on first use; each ref is released
 * with lg_provider_state_unref(). Thread: any. */
struct lg_provider_state *lg_provider_state_ref(struct lg_balancer *b, int64_t id);
void lg_provider_state_unref(struct lg_balancer *b, struct lg_provider_state *s);

/* Requests in flight on the provider (all workers). Thread: any. */
int lg_provider_inflight(const struct lg_provider_state *s);

/* Takes a slot if the provider is under @cap (0: uncapped). Thread: any. */
bool lg_provider_try_acquire(struct lg_provider_state *s, int cap);
/* Gives a slot back and wakes the oldest waiter, if any. Thread: any. */
void lg_provider_release(struct lg_provider_state *s);

/* Waits for a slot without polling: @ready(arg, true) runs on @loop once a
 * slot was taken for the caller, or @ready(arg, false) after @timeout_ms.
 * Exactly one call of @ready. lg_provider_wait_cancel() before it ran
 * removes the wait (no call). Returns a handle, or NULL on failure. */
struct lg_provider_wait *lg_provider_wait(struct lg_provider_state *s, int cap,
					  struct lg_loop *loop, uint32_t timeout_ms,
					  void (*ready)(void *arg, bool got), void *arg);
void lg_provider_wait_cancel(struct lg_provider_wait *w);

/* Circuit breaker: after @threshold consecutive failures the provider is
 * skipped for @open_ms, then one trial request is let through (half-open);
 * a success closes it again. Thread: any. */
bool lg_provider_breaker_allows(struct lg_provider_state *s, uint64_t now_ms);
void lg_provider_report(struct lg_provider_state *s, bool ok, uint64_t now_ms);
/* "closed", "open" or "half-open", for /health/models and logs. */
const char *lg_provider_breaker_state(const struct lg_provider_state *s, uint64_t now_ms);

#endif
