/* SPDX-License-Identifier: Apache-2.0 */
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* Written once by main() before any thread starts, read-only afterwards. */
static enum lg_log_level log_level = LG_LOG_INFO;

static const char *const level_names[] = {
	[LG_LOG_ERROR] = "error",
	[LG_LOG_WARN] = "warn",
	[LG_LOG_INFO] = "info",
	[LG_LOG_DEBUG] = "debug",
};

void lg_log_set_level(enum lg_log_level level) { log_level = level; }
enum lg_log_level lg_log_get_level(void) { return log_level; }

int lg_log_parse_level(const char *name, enum lg_log_level *out)
{
	for (size_t i = 0; i < LG_COUNT(level_names); i++) {
		if (strcasecmp(name, level_names[i]) == 0) {
			*out = (enum lg_log_level)i;
			return 0;
		}
	}
	if (strcasecmp(name, "warning") == 0) {
		*out = LG_LOG_WARN;
		return 0;
	}
	return -1;
}

void lg_logv(enum lg_log_level level, const char *component, const char *request_id,
	     const char *fmt, va_list ap)
{
	char line[4096];
	struct timespec ts;
	struct tm tm;
	size_t n;
	int r;

	if (level > log_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
	r = snprintf(line + n, sizeof line - n, ".%03ldZ %s [%s]%s%s ", ts.tv_nsec / 1000000L,
		     level_names[level], component ? component : "core",
		     request_id ? " rid=" : "", request_id ? request_id : "");
	if (r > 0)
		n += (size_t)r < sizeof line - n ? (size_t)r : sizeof line - n - 1;
	r = vsnprintf(line + n, sizeof line - n, fmt, ap);
	if (r > 0)
		n += (size_t)r < sizeof line - n ? (size_t)r : sizeof line - n - 1;
	/* One line per event: fold any newline a message carries. */
	for (size_t i = 0; i < n; i++)
		if (line[i] == '\n' || line[i] == '\r')
			line[i] = ' ';
	if (n >= sizeof line - 1)
		n = sizeof line - 2;
	line[n++] = '\n';
	/* A single write keeps lines from different threads whole. */
	if (write(STDERR_FILENO, line, n) < 0)
		return;
}

void lg_log(enum lg_log_level level, const char *component, const char *request_id,
	    const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	lg_logv(level, component, request_id, fmt, ap);
	va_end(ap);
}

void lg_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}
