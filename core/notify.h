/* SPDX-License-Identifier: Apache-2.0 */
/* Readiness and state reports to the service manager (systemd's
 * Type=notify): READY=1 once the gateway serves, RELOADING=1 and READY=1
 * around a SIGHUP reload, STOPPING=1 when the drain starts, and STATUS=
 * lines on the way. Without $NOTIFY_SOCKET every call does nothing. */
#ifndef LG_NOTIFY_H
#define LG_NOTIFY_H

#include <llmgate/host.h>

struct lg_notifier;

/* The notifier of $NOTIFY_SOCKET, or NULL when it is unset (not run by a
 * service manager) or cannot be used (logged once). Thread: main, before
 * other threads use it. */
struct lg_notifier *lg_notifier_from_env(void);
void lg_notifier_free(struct lg_notifier *n);

/* Each sends one datagram; @n may be NULL (nothing happens). A failure is
 * logged the first time only and never stops the gateway.
 * Thread: any (one sendto() per message, no shared buffer). */

/* READY=1 with a STATUS= line. */
void lg_notifier_ready(struct lg_notifier *n, const char *fmt, ...) LG_PRINTF(2, 3);
/* A STATUS= line alone. */
void lg_notifier_status(struct lg_notifier *n, const char *fmt, ...) LG_PRINTF(2, 3);
/* RELOADING=1 with MONOTONIC_USEC= (the time the reload began). */
void lg_notifier_reloading(struct lg_notifier *n);
/* STOPPING=1 with a STATUS= line. */
void lg_notifier_stopping(struct lg_notifier *n, const char *fmt, ...) LG_PRINTF(2, 3);

#endif
