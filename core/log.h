/* SPDX-License-Identifier: Apache-2.0 */
/* One line per event on stderr: time, level, component, request id, message. */
#ifndef LG_LOG_H
#define LG_LOG_H

#include <stdarg.h>
#include <llmgate/host.h>

/* Lines above this level are dropped. Set once at start, before threads. */
void lg_log_set_level(enum lg_log_level level);
enum lg_log_level lg_log_get_level(void);
int lg_log_parse_level(const char *name, enum lg_log_level *out);

/* @component is "core", a core module ("http", "db") or a plugin name;
 * @request_id may be NULL. Thread: any (each line is one write(2)). */
void lg_log(enum lg_log_level level, const char *component, const char *request_id,
	    const char *fmt, ...) LG_PRINTF(4, 5);
void lg_logv(enum lg_log_level level, const char *component, const char *request_id,
	     const char *fmt, va_list ap) LG_PRINTF(4, 0);

/* Formats an error message into a caller's buffer (@err may be NULL).
 * Thread: any. */
void lg_errf(char *err, size_t errlen, const char *fmt, ...) LG_PRINTF(3, 4);

#define lg_error(comp, ...) lg_log(LG_LOG_ERROR, comp, NULL, __VA_ARGS__)
#define lg_warn(comp, ...)  lg_log(LG_LOG_WARN, comp, NULL, __VA_ARGS__)
#define lg_info(comp, ...)  lg_log(LG_LOG_INFO, comp, NULL, __VA_ARGS__)
#define lg_debug(comp, ...) lg_log(LG_LOG_DEBUG, comp, NULL, __VA_ARGS__)

#endif
