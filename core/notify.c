/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The service manager's notification protocol, spoken directly.
 *
 * systemd documents it as a stable interface (sd_notify(3), "Notes"): the
 * service sends newline-separated KEY=VALUE assignments in one datagram on
 * an AF_UNIX SOCK_DGRAM socket to the address in $NOTIFY_SOCKET, which is
 * a file system path, or an abstract name when it starts with '@' (the '@'
 * stands for the leading NUL byte). The manager learns the sender's PID
 * from the kernel's credentials, which name the process whatever thread
 * sends, so NotifyAccess=main accepts messages from any of our threads.
 *
 * Writing those few lines here keeps libsystemd out of the core: the
 * gateway links the same libraries with or without systemd, and the
 * protocol is also what other supervisors implement.
 */
#include "notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define NOTIFY_MAX_MESSAGE	1024
/* A manager that stops reading must not hang the main loop for long. */
#define NOTIFY_SEND_TIMEOUT_S	2

struct lg_notifier {
	int fd;
	struct sockaddr_un addr;
	socklen_t addrlen;
	atomic_bool failure_logged;
};

/* Fills @n's address from $NOTIFY_SOCKET's @value; -1 when unusable. */
static int parse_address(struct lg_notifier *n, const char *value)
{
	size_t len = strlen(value);

	n->addr.sun_family = AF_UNIX;
	if (value[0] == '@') {
		/* Abstract: no trailing NUL, the length says where it ends. */
		if (len < 2 || len > sizeof n->addr.sun_path)
			return -1;
		n->addr.sun_path[0] = '\0';
		memcpy(n->addr.sun_path + 1, value + 1, len - 1);
		n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
		return 0;
	}
	if (value[0] != '/' || len >= sizeof n->addr.sun_path)
		return -1;
	memcpy(n->addr.sun_path, value, len + 1);
	n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	return 0;
}

struct lg_notifier *lg_notifier_from_env(void)
{
	const char *value = getenv("NOTIFY_SOCKET");
	struct timeval timeout = { NOTIFY_SEND_TIMEOUT_S, 0 };
	struct lg_notifier *n;

	if (!value || !*value)
		return NULL;
	n = calloc(1, sizeof *n);
	if (!n) {
		lg_warn("core", "NOTIFY_SOCKET: out of memory; the service manager is not told "
			"of readiness");
		return NULL;
	}
	if (parse_address(n, value) < 0) {
		/* Other schemes (vsock:...) are for virtual machines, not a gateway. */
		lg_warn("core", "NOTIFY_SOCKET=%s is neither an absolute path nor an abstract "
			"'@' name; the service manager is not told of readiness", value);
		goto fail;
	}
	n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (n->fd < 0) {
		lg_warn("core", "NOTIFY_SOCKET: cannot create a socket: %s; the service manager "
			"is not told of readiness", strerror(errno));
		goto fail;
	}
	if (setsockopt(n->fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout) != 0)
		lg_warn("core", "NOTIFY_SOCKET: cannot set a send timeout: %s", strerror(errno));
	return n;
fail:
	free(n);
	return NULL;
}

void lg_notifier_free(struct lg_notifier *n)
{
	if (!n)
		return;
	if (close(n->fd) != 0)
		lg_debug("core", "NOTIFY_SOCKET: close: %s", strerror(errno));
	free(n);
}

static void send_message(struct lg_notifier *n, const char *msg, size_t len)
{
	ssize_t sent;

	do
		sent = sendto(n->fd, msg, len, MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
			      n->addrlen);
	while (sent < 0 && errno == EINTR);
	if (sent == (ssize_t)len)
		return;
	/* Once: a manager that went away would otherwise fill the log. */
	if (atomic_exchange(&n->failure_logged, true))
		return;
	if (sent < 0)
		lg_warn("core", "cannot notify the service manager: %s (further failures are "
			"not logged)", strerror(errno));
	else
		lg_warn("core", "cannot notify the service manager: short send (further failures "
			"are not logged)");
}

/* Appends "STATUS=<text>\n" to @buf at @len, the text on one line as the
 * protocol wants it. Returns the new length. */
static size_t append_status(char *buf, size_t len, size_t size, const char *fmt, va_list ap)
{
	int r;
	size_t start;

	r = snprintf(buf + len, size - len, "STATUS=");
	if (r < 0 || (size_t)r >= size - len)
		return len;
	start = len + (size_t)r;
	r = vsnprintf(buf + start, size - start, fmt, ap);
	if (r < 0)
		return len;
	len = (size_t)r < size - start ? start + (size_t)r : size - 1;
	for (size_t i = start; i < len; i++)
		if (buf[i] == '\n' || buf[i] == '\r')
			buf[i] = ' ';
	if (len < size - 1)
		buf[len++] = '\n';
	buf[len] = '\0';
	return len;
}

static void send_with_status(struct lg_notifier *n, const char *head, const char *fmt,
			     va_list ap)
{
	char buf[NOTIFY_MAX_MESSAGE];
	size_t len = strlen(head);

	memcpy(buf, head, len + 1);
	len = append_status(buf, len, sizeof buf, fmt, ap);
	send_message(n, buf, len);
}

void lg_notifier_ready(struct lg_notifier *n, const char *fmt, ...)
{
	va_list ap;

	if (!n)
		return;
	va_start(ap, fmt);
	send_with_status(n, "READY=1\n", fmt, ap);
	va_end(ap);
}

void lg_notifier_status(struct lg_notifier *n, const char *fmt, ...)
{
	va_list ap;

	if (!n)
		return;
	va_start(ap, fmt);
	send_with_status(n, "", fmt, ap);
	va_end(ap);
}

void lg_notifier_stopping(struct lg_notifier *n, const char *fmt, ...)
{
	va_list ap;

	if (!n)
		return;
	va_start(ap, fmt);
	send_with_status(n, "STOPPING=1\n", fmt, ap);
	va_end(ap);
}

void lg_notifier_reloading(struct lg_notifier *n)
{
	char buf[128];
	struct timespec ts;
	int r;

	if (!n)
		return;
	/* The manager needs it with RELOADING=1 to tell this reload from an
	 * earlier one. */
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
		lg_warn("core", "clock_gettime(CLOCK_MONOTONIC): %s", strerror(errno));
		return;
	}
	r = snprintf(buf, sizeof buf, "RELOADING=1\nSTATUS=Reloading the configuration\n"
		     "MONOTONIC_USEC=%llu\n",
		     (unsigned long long)ts.tv_sec * 1000000ull +
		     (unsigned long long)ts.tv_nsec / 1000ull);
	if (r < 0 || (size_t)r >= sizeof buf)
		return;
	send_message(n, buf, (size_t)r);
}
