/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Outbound HTTP on one loop: a libcurl multi handle driven by the loop's
 * event base through the socket and timer callbacks.
 *
 * Rules that keep re-entrancy simple:
 * - on_head and on_data only ever run inside a curl call (socket_action or
 *   curl_easy_pause); f->in_curl counts those calls.
 * - on_done never runs inside a curl call, and never inside lg_fetch_start,
 *   lg_fetch_cancel or lg_fetch_pause: it runs from a loop callback (curl's
 *   completion, our deadline timer or the deferred event), or from
 *   lg_fetcher_free. So an lg_fetch stays valid for the whole of any curl
 *   call, and a caller may touch its own state after cancel or pause.
 * - Cancel and resume are queued and carried out by a zero-delay event; a
 *   start made inside a curl callback is queued the same way, because curl
 *   refuses curl_multi_add_handle from its callbacks.
 * - Once a transfer is cancelled or refused, its callbacks tell curl to
 *   stop and the user's on_head/on_data are not called again.
 */
#include "fetch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include <curl/curl.h>

#include "log.h"

#define FETCH_MAX_IDLE_CONNS 1024 /* idle upstream connections kept per loop */
#define COMPONENT "fetch"

/* Idle lg_fetch objects (each with its easy handle) kept per fetcher. */
#define FETCH_POOL_MAX 32
/* A pooled body buffer larger than this is freed rather than kept. */
#define FETCH_KEEP_BUF (64 * 1024)
#define FETCH_MIN_BUF 4096
#define FETCH_MAX_RESERVE (1024 * 1024)

static const struct lg_fetch_defaults builtin_defaults = {
	.connect_timeout_ms = 5000,
	.first_byte_timeout_ms = 120000,
	.idle_timeout_ms = 60000,
	.total_timeout_ms = 600000,
	.max_response_bytes = 64 * 1024 * 1024,
};

enum fetch_phase {
	PHASE_WAIT_FIRST_BYTE,  /* deadline = first byte */
	PHASE_RECEIVING,        /* deadline = idle */
};

/* One socket curl asked us to watch. */
struct sock_watch {
	LIST_ENTRY(sock_watch) link;
	struct lg_fetcher *f;
	struct event *ev;
	int what;               /* CURL_POLL_* currently watched */
};

struct lg_fetch {
	TAILQ_ENTRY(lg_fetch) link;     /* f->active or f->pool */
	TAILQ_ENTRY(lg_fetch) qlink;    /* f->queue while queued */
	struct lg_fetcher *f;
	CURL *easy;                     /* kept across reuse */
	struct event *deadline;         /* first byte / idle; kept across reuse */
	struct curl_slist *headers;

	struct lg_fetch_handlers h;
	void *arg;

	uint32_t first_byte_ms, idle_ms, total_ms, connect_ms;
	size_t max_bytes;               /* SIZE_MAX: no limit */
	uint64_t started_ms, last_activity_ms;
	enum fetch_phase phase;

	int status;
	char *ctype;                    /* ctype_small, ctype_heap or "" */
	char *ctype_heap;
	char ctype_small[128];

	char *buf;                      /* buffered body (on_data NULL), NUL-terminated */
	size_t len, cap;
	size_t received;                /* body bytes accepted so far */
	size_t skip;                    /* bytes curl will hand us again after a pause */

	enum lg_fetch_result abort;     /* != OK: stop with this result */
	bool in_multi, queued, add_pending, resume_pending;
	bool head_done, paused, curl_paused, done;

	char msg[CURL_ERROR_SIZE];      /* our own error text */
	char errbuf[CURL_ERROR_SIZE];   /* CURLOPT_ERRORBUFFER */
};

TAILQ_HEAD(fetch_list, lg_fetch);

struct lg_fetcher {
	struct event_base *base;
	CURLM *multi;
	struct event *timer;            /* curl's timeout */
	struct event *deferred;         /* runs f->queue */
	struct lg_fetch_defaults def;
	struct fetch_list active;
	struct fetch_list queue;
	struct fetch_list pool;
	LIST_HEAD(, sock_watch) socks;
	size_t n_active, n_pool;
	int in_curl;
	bool closing;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static struct timeval ms_to_tv(uint64_t ms)
{
	struct timeval tv = {
		.tv_sec = (time_t)(ms / 1000),
		.tv_usec = (suseconds_t)(ms % 1000) * 1000,
	};

	return tv;
}

/* ---- global ---- */

int lg_fetch_global_init(void)
{
	const curl_version_info_data *info;
	CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);

	if (rc != CURLE_OK) {
		lg_error(COMPONENT, "curl_global_init: %s", curl_easy_strerror(rc));
		return -1;
	}
	info = curl_version_info(CURLVERSION_NOW);
	if (!info) {
		lg_error(COMPONENT, "curl_version_info failed");
		goto fail;
	}
	/* CURLOPT_PROTOCOLS_STR appeared in 7.85. */
	if (info->version_num < 0x075500) {
		lg_error(COMPONENT, "libcurl %s is too old (7.85 or later needed)", info->version);
		goto fail;
	}
	/* A synchronous resolver would block the worker's loop. */
	if (!(info->features & CURL_VERSION_ASYNCHDNS)) {
		lg_error(COMPONENT, "libcurl %s resolves names synchronously", info->version);
		goto fail;
	}
	if (!(info->features & CURL_VERSION_SSL)) {
		lg_error(COMPONENT, "libcurl %s has no TLS support", info->version);
		goto fail;
	}
	return 0;
fail:
	curl_global_cleanup();
	return -1;
}

void lg_fetch_global_cleanup(void)
{
	curl_global_cleanup();
}

/* ---- the deferred queue ---- */

static void kick(struct lg_fetcher *f)
{
	event_active(f->deferred, EV_TIMEOUT, 0);
}

static void enqueue(struct lg_fetch *fe)
{
	if (!fe->queued) {
		TAILQ_INSERT_TAIL(&fe->f->queue, fe, qlink);
		fe->queued = true;
	}
	kick(fe->f);
}

static void dequeue(struct lg_fetch *fe)
{
	if (fe->queued) {
		TAILQ_REMOVE(&fe->f->queue, fe, qlink);
		fe->queued = false;
	}
}

/* Records why the transfer must stop; the first reason wins. */
static void LG_PRINTF(3, 4) set_abort(struct lg_fetch *fe, enum lg_fetch_result result,
				      const char *fmt, ...)
{
	va_list ap;

	if (fe->abort != LG_FETCH_OK)
		return;
	fe->abort = result;
	va_start(ap, fmt);
	vsnprintf(fe->msg, sizeof fe->msg, fmt, ap);
	va_end(ap);
}

/* ---- the lg_fetch objects and their pool ---- */

static void fetch_destroy(struct lg_fetch *fe)
{
	curl_easy_cleanup(fe->easy);
	event_free(fe->deadline);
	free(fe->buf);
	free(fe);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg);

static struct lg_fetch *fetch_get(struct lg_fetcher *f)
{
	struct lg_fetch *fe = TAILQ_FIRST(&f->pool);

	if (fe) {
		TAILQ_REMOVE(&f->pool, fe, link);
		f->n_pool--;
		return fe;
	}
	fe = calloc(1, sizeof *fe);
	if (!fe)
		return NULL;
	fe->f = f;
	fe->easy = curl_easy_init();
	if (!fe->easy)
		goto fail;
	fe->deadline = evtimer_new(f->base, on_deadline, fe);
	if (!fe->deadline)
		goto fail_easy;
	return fe;
fail_easy:
	curl_easy_cleanup(fe->easy);
fail:
	free(fe);
	return NULL;
}

/* Back to the pool once the easy handle has left the multi handle. */
static void fetch_put(struct lg_fetcher *f, struct lg_fetch *fe)
{
	CURL *easy = fe->easy;
	struct event *deadline = fe->deadline;
	char *buf = fe->buf;
	size_t cap = fe->cap;

	curl_slist_free_all(fe->headers);
	free(fe->ctype_heap);
	if (f->closing || f->n_pool >= FETCH_POOL_MAX) {
		fetch_destroy(fe);
		return;
	}
	if (cap > FETCH_KEEP_BUF) {
		free(buf);
		buf = NULL;
		cap = 0;
	}
	/* Forgets the options, keeps the handle's caches. */
	curl_easy_reset(easy);
	memset(fe, 0, sizeof *fe);
	fe->f = f;
	fe->easy = easy;
	fe->deadline = deadline;
	fe->buf = buf;
	fe->cap = cap;
	TAILQ_INSERT_HEAD(&f->pool, fe, link);
	f->n_pool++;
}

/* ---- finishing ---- */

/* The one place a transfer ends. Never called inside a curl call. */
static void finish(struct lg_fetch *fe, enum lg_fetch_result result, const char *error)
{
	struct lg_fetcher *f = fe->f;
	struct lg_str body = { NULL, 0 };
	int status = fe->head_done ? fe->status : 0;
	CURLMcode mrc;

	fe->done = true;
	if (event_del(fe->deadline) != 0)
		lg_error(COMPONENT, "event_del failed");
	dequeue(fe);
	if (fe->in_multi) {
		mrc = curl_multi_remove_handle(f->multi, fe->easy);
		if (mrc != CURLM_OK)
			lg_error(COMPONENT, "curl_multi_remove_handle: %s", curl_multi_strerror(mrc));
		fe->in_multi = false;
	}
	TAILQ_REMOVE(&f->active, fe, link);
	f->n_active--;
	if (result == LG_FETCH_OK && !fe->h.on_data) {
		body.ptr = fe->buf ? fe->buf : "";
		body.len = fe->len;
	}
	fe->h.on_done(fe->arg, result, status, body, result == LG_FETCH_OK ? NULL : error);
	fetch_put(f, fe);
}

static enum lg_fetch_result map_curl_code(CURLcode code)
{
	switch (code) {
	case CURLE_OK:
		return LG_FETCH_OK;
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_ENGINE_NOTFOUND:
	case CURLE_SSL_ENGINE_SETFAILED:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CIPHER:
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_ENGINE_INITFAILED:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_SHUTDOWN_FAILED:
	case CURLE_SSL_CRL_BADFILE:
	case CURLE_SSL_ISSUER_ERROR:
	case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
	case CURLE_SSL_INVALIDCERTSTATUS:
	case CURLE_SSL_CLIENTCERT:
		return LG_FETCH_ECONNECT;
	case CURLE_OPERATION_TIMEDOUT:
		return LG_FETCH_ETIMEOUT;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
		return LG_FETCH_ERESET;
	case CURLE_FILESIZE_EXCEEDED:
		return LG_FETCH_ETOOLARGE;
	default:
		return LG_FETCH_EOTHER;
	}
}

/* Whether curl's connect deadline rather than its total one fired: the
 * connection was not up and the connect deadline is the earlier one. */
static bool timed_out_connecting(struct lg_fetch *fe)
{
	curl_off_t connect_us = 0;

	if (fe->phase == PHASE_RECEIVING || fe->connect_ms >= fe->total_ms)
		return false;
	if (curl_easy_getinfo(fe->easy, CURLINFO_CONNECT_TIME_T, &connect_us) != CURLE_OK)
		return false;
	return connect_us == 0;
}

/* curl says the transfer ended with @code. */
static void finish_curl(struct lg_fetch *fe, CURLcode code)
{
	enum lg_fetch_result result = map_curl_code(code);

	if (fe->abort != LG_FETCH_OK) {
		finish(fe, fe->abort, fe->msg);
		return;
	}
	switch (result) {
	case LG_FETCH_OK:
		if (!fe->head_done) {
			/* A reply without a header block (refused by curl
			 * already, but be sure callers get a status). */
			long code_l = 0;

			if (curl_easy_getinfo(fe->easy, CURLINFO_RESPONSE_CODE, &code_l) == CURLE_OK)
				fe->status = (int)code_l;
			fe->head_done = true;
		}
		finish(fe, LG_FETCH_OK, NULL);
		return;
	case LG_FETCH_ETIMEOUT:
		/* curl runs two of our four deadlines; say which one. */
		if (timed_out_connecting(fe))
			snprintf(fe->msg, sizeof fe->msg, "connect timeout after %u ms", fe->connect_ms);
		else
			snprintf(fe->msg, sizeof fe->msg, "total timeout after %u ms", fe->total_ms);
		break;
	case LG_FETCH_ETOOLARGE:
		snprintf(fe->msg, sizeof fe->msg, "response larger than %zu bytes", fe->max_bytes);
		break;
	default:
		snprintf(fe->msg, sizeof fe->msg, "%s",
			 fe->errbuf[0] ? fe->errbuf : curl_easy_strerror(code));
		break;
	}
	finish(fe, result, fe->msg);
}

/* Ends what curl reports as done. Never inside a curl call. */
static void collect_done(struct lg_fetcher *f)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(f->multi, &left))) {
		char *priv = NULL;
		CURLcode code = msg->data.result;

		if (msg->msg != CURLMSG_DONE)
			continue;
		if (curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv) != CURLE_OK ||
		    !priv) {
			lg_error(COMPONENT, "a finished transfer has no owner");
			continue;
		}
		finish_curl((struct lg_fetch *)priv, code);
	}
}

/* ---- driving curl from the loop ---- */

static void drive(struct lg_fetcher *f, curl_socket_t fd, int flags)
{
	CURLMcode mrc;
	int running;

	f->in_curl++;
	mrc = curl_multi_socket_action(f->multi, fd, flags, &running);
	f->in_curl--;
	if (mrc != CURLM_OK)
		lg_error(COMPONENT, "curl_multi_socket_action: %s", curl_multi_strerror(mrc));
	collect_done(f);
}

static void on_socket_event(evutil_socket_t fd, short events, void *arg)
{
	/* The watch may be freed inside drive(): take the fetcher first. */
	struct lg_fetcher *f = ((struct sock_watch *)arg)->f;
	int flags = 0;

	if (events & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (events & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	drive(f, fd, flags);
}

static void on_curl_timer_event(evutil_socket_t fd, short events, void *arg)
{
	drive(arg, CURL_SOCKET_TIMEOUT, 0);
}

static void sock_watch_free(struct sock_watch *w)
{
	LIST_REMOVE(w, link);
	event_free(w->ev);
	free(w);
}

static struct sock_watch *sock_watch_new(struct lg_fetcher *f, curl_socket_t fd)
{
	struct sock_watch *w = calloc(1, sizeof *w);

	if (!w)
		return NULL;
	w->f = f;
	w->ev = event_new(f->base, fd, 0, on_socket_event, w);
	if (!w->ev) {
		free(w);
		return NULL;
	}
	LIST_INSERT_HEAD(&f->socks, w, link);
	if (curl_multi_assign(f->multi, fd, w) != CURLM_OK) {
		sock_watch_free(w);
		return NULL;
	}
	return w;
}

/* CURLMOPT_SOCKETFUNCTION: watch @fd for what curl wants. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	struct lg_fetcher *f = userp;
	struct sock_watch *w = socketp;
	short events = EV_PERSIST;

	if (what == CURL_POLL_REMOVE) {
		if (w)
			sock_watch_free(w);
		return 0;
	}
	if (!w) {
		w = sock_watch_new(f, fd);
		if (!w) {
			lg_error(COMPONENT, "cannot watch a socket: out of memory");
			return -1;
		}
	} else if (w->what == what) {
		return 0;
	}
	if (event_del(w->ev) != 0)
		goto fail;
	w->what = what;
	if (what & CURL_POLL_IN)
		events |= EV_READ;
	if (what & CURL_POLL_OUT)
		events |= EV_WRITE;
	if (!(events & (EV_READ | EV_WRITE)))
		return 0;
	if (event_assign(w->ev, f->base, fd, events, on_socket_event, w) != 0 ||
	    event_add(w->ev, NULL) != 0)
		goto fail;
	return 0;
fail:
	lg_error(COMPONENT, "cannot watch a socket: libevent refused");
	return -1;
}

/* CURLMOPT_TIMERFUNCTION: one timer for the whole multi handle. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct lg_fetcher *f = userp;
	struct timeval tv;

	if (timeout_ms < 0)
		return event_del(f->timer) == 0 ? 0 : -1;
	/* 0 means "as soon as possible": the next loop iteration, never
	 * from inside this callback. */
	tv = ms_to_tv((uint64_t)timeout_ms);
	if (evtimer_add(f->timer, &tv) != 0) {
		lg_error(COMPONENT, "evtimer_add failed");
		return -1;
	}
	return 0;
}

/* ---- our own deadlines: first byte and idle ---- */

static int arm_deadline(struct lg_fetch *fe, uint64_t ms)
{
	struct timeval tv = ms_to_tv(ms);

	if (evtimer_add(fe->deadline, &tv) != 0) {
		lg_error(COMPONENT, "evtimer_add failed");
		return -1;
	}
	return 0;
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct lg_fetch *fe = arg;
	uint64_t idle;

	if (fe->done)
		return;
	if (fe->phase == PHASE_WAIT_FIRST_BYTE) {
		snprintf(fe->msg, sizeof fe->msg, "first byte timeout after %u ms",
			 fe->first_byte_ms);
		finish(fe, LG_FETCH_ETIMEOUT, fe->msg);
		return;
	}
	/* The receiver holds the transfer: not the upstream's idleness.
	 * Resuming re-arms the timer. */
	if (fe->paused || fe->curl_paused)
		return;
	/* Activity only stamps a time; the timer re-arms itself lazily
	 * instead of on every piece of data. */
	idle = now_ms() - fe->last_activity_ms;
	if (idle < fe->idle_ms) {
		if (arm_deadline(fe, fe->idle_ms - idle) == 0)
			return;
	}
	snprintf(fe->msg, sizeof fe->msg, "idle timeout after %u ms", fe->idle_ms);
	finish(fe, LG_FETCH_ETIMEOUT, fe->msg);
}

/* Something arrived: the first byte ends the first-byte deadline and
 * starts the idle one. Returns false if the timer cannot be set. */
static bool note_activity(struct lg_fetch *fe)
{
	fe->last_activity_ms = now_ms();
	if (fe->phase == PHASE_RECEIVING)
		return true;
	fe->phase = PHASE_RECEIVING;
	if (arm_deadline(fe, fe->idle_ms) != 0) {
		set_abort(fe, LG_FETCH_EOTHER, "cannot set the idle timer");
		return false;
	}
	return true;
}

/* ---- curl's data callbacks (inside curl calls) ---- */

static int parse_status(const char *line, size_t len)
{
	const char *p = memchr(line, ' ', len);
	const char *end = line + len;
	int status = 0;

	if (!p)
		return 0;
	p++;
	for (int i = 0; i < 3; i++, p++) {
		if (p >= end || *p < '0' || *p > '9')
			return 0;
		status = status * 10 + (*p - '0');
	}
	return status;
}

static bool header_named(const char *line, size_t len, const char *name, size_t name_len)
{
	return len > name_len && line[name_len] == ':' && strncasecmp(line, name, name_len) == 0;
}

static int save_content_type(struct lg_fetch *fe, const char *v, size_t n)
{
	char *dst = fe->ctype_small;

	free(fe->ctype_heap);
	fe->ctype_heap = NULL;
	fe->ctype = NULL;
	if (n >= sizeof fe->ctype_small) {
		dst = malloc(n + 1);
		if (!dst)
			return -1;
		fe->ctype_heap = dst;
	}
	memcpy(dst, v, n);
	dst[n] = '\0';
	fe->ctype = dst;
	return 0;
}

static int content_type_header(struct lg_fetch *fe, const char *line, size_t len)
{
	const char *v = line + sizeof "content-type:" - 1;
	const char *end = line + len;

	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' ||
			   end[-1] == '\t'))
		end--;
	return save_content_type(fe, v, (size_t)(end - v));
}

/* Reserves room for a buffered body whose length the reply announced,
 * up to FETCH_MAX_RESERVE: an announcement alone does not get memory. */
static void reserve_body(struct lg_fetch *fe)
{
	curl_off_t cl = -1;
	size_t want;
	char *nbuf;

	if (curl_easy_getinfo(fe->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) != CURLE_OK ||
	    cl <= 0 || (uint64_t)cl > fe->max_bytes)
		return;
	want = (uint64_t)cl < FETCH_MAX_RESERVE ? (size_t)cl + 1 : FETCH_MAX_RESERVE;
	if (want <= fe->cap)
		return;
	nbuf = realloc(fe->buf, want);
	if (!nbuf)
		return; /* the write callback grows it or fails */
	fe->buf = nbuf;
	fe->cap = want;
}

/* The final header block is complete. Returns false to stop the transfer. */
static bool head_complete(struct lg_fetch *fe)
{
	int r;

	fe->head_done = true;
	if (!fe->h.on_data)
		reserve_body(fe);
	if (!fe->h.on_head)
		return true;
	r = fe->h.on_head(fe->arg, fe->status, fe->ctype ? fe->ctype : "");
	if (r < 0)
		set_abort(fe, LG_FETCH_ECANCELED, "canceled by the receiver");
	return fe->abort == LG_FETCH_OK;
}

/* CURLOPT_HEADERFUNCTION: one whole header line at a time. */
static size_t on_curl_header(char *line, size_t size, size_t nitems, void *arg)
{
	struct lg_fetch *fe = arg;
	size_t len = size * nitems;

	if (fe->abort != LG_FETCH_OK)
		return CURL_WRITEFUNC_ERROR;
	if (fe->head_done)
		return len; /* trailers */
	if (!note_activity(fe))
		return CURL_WRITEFUNC_ERROR;
	if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
		/* A new block: an interim (1xx) one or the final one. */
		fe->status = parse_status(line, len);
		fe->ctype = NULL;
		return len;
	}
	if ((len == 2 && line[0] == '\r' && line[1] == '\n') || (len == 1 && line[0] == '\n')) {
		if (fe->status >= 100 && fe->status < 200) {
			fe->status = 0;
			return len;
		}
		return head_complete(fe) ? len : CURL_WRITEFUNC_ERROR;
	}
	if (header_named(line, len, "content-type", sizeof "content-type" - 1) &&
	    content_type_header(fe, line, len) != 0) {
		set_abort(fe, LG_FETCH_EOTHER, "out of memory");
		return CURL_WRITEFUNC_ERROR;
	}
	return len;
}

static bool buffer_body(struct lg_fetch *fe, const char *data, size_t n)
{
	if (fe->cap - fe->len <= n) {
		size_t want = fe->cap ? fe->cap * 2 : FETCH_MIN_BUF;
		char *nbuf;

		if (want < fe->len + n + 1)
			want = fe->len + n + 1;
		if (fe->max_bytes != SIZE_MAX && want > fe->max_bytes + 1)
			want = fe->max_bytes + 1;
		nbuf = realloc(fe->buf, want);
		if (!nbuf)
			return false;
		fe->buf = nbuf;
		fe->cap = want;
	}
	memcpy(fe->buf + fe->len, data, n);
	fe->len += n;
	fe->buf[fe->len] = '\0';
	return true;
}

/* CURLOPT_WRITEFUNCTION: a piece of the body. */
static size_t on_curl_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct lg_fetch *fe = arg;
	size_t len = size * nmemb;
	size_t skip, n;
	int r;

	if (fe->abort != LG_FETCH_OK)
		return CURL_WRITEFUNC_ERROR;
	if (fe->paused) {
		/* Paused from outside this callback: curl keeps the piece
		 * and hands it over again when resumed. */
		fe->curl_paused = true;
		return CURL_WRITEFUNC_PAUSE;
	}
	/* After a pause curl repeats what the receiver already took. */
	skip = fe->skip < len ? fe->skip : len;
	fe->skip -= skip;
	n = len - skip;
	if (n == 0)
		return len;
	if (!note_activity(fe))
		return CURL_WRITEFUNC_ERROR;
	if (n > fe->max_bytes - fe->received) {
		set_abort(fe, LG_FETCH_ETOOLARGE, "response larger than %zu bytes", fe->max_bytes);
		return CURL_WRITEFUNC_ERROR;
	}
	fe->received += n;
	if (!fe->h.on_data) {
		if (buffer_body(fe, data + skip, n))
			return len;
		set_abort(fe, LG_FETCH_EOTHER, "out of memory for the response body");
		return CURL_WRITEFUNC_ERROR;
	}
	r = fe->h.on_data(fe->arg, data + skip, n);
	if (r < 0)
		set_abort(fe, LG_FETCH_ECANCELED, "canceled by the receiver");
	if (fe->abort != LG_FETCH_OK)
		return CURL_WRITEFUNC_ERROR;
	if (r == 1 || fe->paused) {
		/* The receiver took this piece; curl will offer all of it
		 * again on resume, so skip it then. */
		fe->paused = true;
		fe->curl_paused = true;
		fe->skip = len;
		return CURL_WRITEFUNC_PAUSE;
	}
	return len;
}

/* ---- setting a transfer up ---- */

static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool valid_method(const char *m)
{
	size_t n = 0;

	for (; m[n]; n++)
		if (!is_tchar((unsigned char)m[n]))
			return false;
	return n > 0 && n <= 32;
}

/* "Name: value" with a token name and no CR or LF anywhere (no injection). */
static bool valid_header(const char *h)
{
	const char *colon = strchr(h, ':');

	if (!colon || colon == h || strpbrk(h, "\r\n"))
		return false;
	for (const char *p = h; p < colon; p++)
		if (!is_tchar((unsigned char)*p))
			return false;
	return true;
}

static bool append_header(struct lg_fetch *fe, const char *h)
{
	struct curl_slist *n = curl_slist_append(fe->headers, h);

	if (!n)
		return false;
	fe->headers = n;
	return true;
}

static bool header_is(const char *h, const char *name)
{
	return header_named(h, strlen(h), name, strlen(name));
}

/* The framing of the request is curl's, from the body we were given: a
 * caller's copy of a client's Content-Length or Transfer-Encoding must not
 * disagree with it (request smuggling), nor an Expect make us wait. */
static bool framing_header(const char *h)
{
	return header_is(h, "Content-Length") || header_is(h, "Transfer-Encoding") ||
	       header_is(h, "Expect");
}

static int build_headers(struct lg_fetch *fe, const char *const *headers, bool has_body)
{
	bool has_ctype = false;

	for (size_t i = 0; headers && headers[i]; i++) {
		if (!valid_header(headers[i])) {
			lg_warn(COMPONENT, "refused an outbound request header with bad characters");
			return -1;
		}
		if (framing_header(headers[i]))
			continue;
		if (header_is(headers[i], "Content-Type"))
			has_ctype = true;
		if (!append_header(fe, headers[i]))
			return -1;
	}
	/* No 100-continue round trip; and no made-up form content type
	 * when the caller gave none. */
	if (!append_header(fe, "Expect:"))
		return -1;
	if (has_body && !has_ctype && !append_header(fe, "Content-Type:"))
		return -1;
	return 0;
}

#define SETOPT(easy, opt, val)                                                        \
	do {                                                                          \
		CURLcode rc_ = curl_easy_setopt(easy, opt, val);                      \
		if (rc_ != CURLE_OK) {                                                \
			lg_error(COMPONENT, "curl_easy_setopt(%s): %s", #opt,         \
				 curl_easy_strerror(rc_));                            \
			return -1;                                                    \
		}                                                                     \
	} while (0)

/* POST, PUT and PATCH always send a body (maybe empty, with
 * Content-Length: 0); other methods only when given one. HEAD never. */
static bool sends_body(const char *method, size_t body_len)
{
	if (strcmp(method, "HEAD") == 0)
		return false;
	return body_len > 0 || strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
	       strcmp(method, "PATCH") == 0;
}

static int set_method_and_body(struct lg_fetch *fe, const char *method, struct lg_str body)
{
	CURL *e = fe->easy;

	if (strcmp(method, "HEAD") == 0) {
		SETOPT(e, CURLOPT_NOBODY, 1L);
		return 0;
	}
	if (sends_body(method, body.len)) {
		/* The size first: the body may hold NUL bytes. */
		SETOPT(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body.len);
		SETOPT(e, CURLOPT_COPYPOSTFIELDS, body.len ? body.ptr : "");
		if (strcmp(method, "POST") != 0)
			SETOPT(e, CURLOPT_CUSTOMREQUEST, method);
		return 0;
	}
	if (strcmp(method, "GET") != 0)
		SETOPT(e, CURLOPT_CUSTOMREQUEST, method);
	return 0;
}

static int set_options(struct lg_fetch *fe, const struct lg_fetch_request *rq,
		       const char *method)
{
	CURL *e = fe->easy;

	SETOPT(e, CURLOPT_PRIVATE, (char *)fe);
	SETOPT(e, CURLOPT_URL, rq->url);
	/* "" skips the proxy environment lookups on every transfer. */
	SETOPT(e, CURLOPT_PROXY, "");
	/* With no proxy, also skip reading no_proxy from the environment. */
	SETOPT(e, CURLOPT_NOPROXY, "*");
	SETOPT(e, CURLOPT_NOSIGNAL, 1L);
	/* A transfer ended while its name is still being resolved leaves the
	 * resolver thread to clean up after itself, instead of curl joining
	 * it (which would block the loop until getaddrinfo returns). */
	SETOPT(e, CURLOPT_QUICK_EXIT, 1L);
	SETOPT(e, CURLOPT_FOLLOWLOCATION, 0L);
	SETOPT(e, CURLOPT_PROTOCOLS_STR, "http,https");
	SETOPT(e, CURLOPT_TCP_NODELAY, 1L);
	SETOPT(e, CURLOPT_TCP_KEEPALIVE, 1L);
	/* Bytes are relayed as they come: never ask for compression. */
	SETOPT(e, CURLOPT_ACCEPT_ENCODING, (char *)NULL);
	SETOPT(e, CURLOPT_ERRORBUFFER, fe->errbuf);
	SETOPT(e, CURLOPT_HEADERFUNCTION, on_curl_header);
	SETOPT(e, CURLOPT_HEADERDATA, fe);
	SETOPT(e, CURLOPT_WRITEFUNCTION, on_curl_body);
	SETOPT(e, CURLOPT_WRITEDATA, fe);
	SETOPT(e, CURLOPT_CONNECTTIMEOUT_MS, (long)fe->connect_ms);
	SETOPT(e, CURLOPT_TIMEOUT_MS, (long)fe->total_ms);
	SETOPT(e, CURLOPT_HTTPHEADER, fe->headers);
	if (fe->max_bytes != SIZE_MAX)
		/* Refuses an announced Content-Length at once. */
		SETOPT(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)fe->max_bytes);
	return set_method_and_body(fe, method, rq->body);
}

static uint32_t pick(uint32_t asked, uint32_t dflt)
{
	return asked ? asked : dflt;
}

static int fetch_setup(struct lg_fetch *fe, const struct lg_fetch_request *rq)
{
	const struct lg_fetch_defaults *d = &fe->f->def;
	const char *method = rq->method ? rq->method : "GET";

	if (!valid_method(method)) {
		lg_warn(COMPONENT, "refused an outbound request with a bad method");
		return -1;
	}
	fe->connect_ms = pick(rq->connect_timeout_ms, d->connect_timeout_ms);
	fe->first_byte_ms = pick(rq->first_byte_timeout_ms, d->first_byte_timeout_ms);
	fe->idle_ms = pick(rq->idle_timeout_ms, d->idle_timeout_ms);
	fe->total_ms = pick(rq->total_timeout_ms, d->total_timeout_ms);
	/* The default cap protects buffered bodies; a stream is bounded
	 * only when the request asks. */
	if (rq->max_response_bytes)
		fe->max_bytes = rq->max_response_bytes;
	else
		fe->max_bytes = fe->h.on_data ? SIZE_MAX : d->max_response_bytes;
	if (build_headers(fe, rq->headers, sends_body(method, rq->body.len)) != 0)
		return -1;
	return set_options(fe, rq, method);
}

static int multi_add(struct lg_fetch *fe)
{
	CURLMcode mrc = curl_multi_add_handle(fe->f->multi, fe->easy);

	if (mrc != CURLM_OK) {
		lg_error(COMPONENT, "curl_multi_add_handle: %s", curl_multi_strerror(mrc));
		return -1;
	}
	fe->in_multi = true;
	return 0;
}

/* Copies a struct that may be older (smaller) than ours; missing members are 0. */
static bool copy_sized(void *dst, size_t dst_size, const void *src, uint32_t src_size,
		       size_t min_size)
{
	memset(dst, 0, dst_size);
	if (!src || src_size < min_size)
		return false;
	memcpy(dst, src, src_size < dst_size ? src_size : dst_size);
	return true;
}

struct lg_fetch *lg_fetch_start(struct lg_fetcher *f, const struct lg_fetch_request *rq_in,
				const struct lg_fetch_handlers *h_in, void *arg)
{
	struct lg_fetch_request rq;
	struct lg_fetch_handlers h;
	struct lg_fetch *fe;

	if (!f || f->closing)
		return NULL;
	if (!copy_sized(&rq, sizeof rq, rq_in, rq_in ? rq_in->size : 0,
			offsetof(struct lg_fetch_request, url) + sizeof rq.url) ||
	    !copy_sized(&h, sizeof h, h_in, h_in ? h_in->size : 0,
			offsetof(struct lg_fetch_handlers, on_done) + sizeof h.on_done) ||
	    !rq.url || !h.on_done || (rq.body.len && !rq.body.ptr))
		return NULL;
	fe = fetch_get(f);
	if (!fe)
		return NULL;
	fe->h = h;
	fe->arg = arg;
	if (fetch_setup(fe, &rq) != 0)
		goto fail;
	fe->started_ms = now_ms();
	fe->last_activity_ms = fe->started_ms;
	fe->phase = PHASE_WAIT_FIRST_BYTE;
	if (arm_deadline(fe, fe->first_byte_ms) != 0)
		goto fail;
	if (f->in_curl) {
		/* curl refuses new handles from inside its callbacks. */
		fe->add_pending = true;
		enqueue(fe);
	} else if (multi_add(fe) != 0) {
		goto fail_deadline;
	}
	TAILQ_INSERT_TAIL(&f->active, fe, link);
	f->n_active++;
	return fe;
fail_deadline:
	if (event_del(fe->deadline) != 0)
		lg_error(COMPONENT, "event_del failed");
fail:
	fetch_put(f, fe);
	return NULL;
}

void lg_fetch_cancel(struct lg_fetch *fe)
{
	if (!fe || fe->done)
		return;
	set_abort(fe, LG_FETCH_ECANCELED, "canceled");
	enqueue(fe);
}

void lg_fetch_pause(struct lg_fetch *fe, bool paused)
{
	if (!fe || fe->done)
		return;
	if (paused) {
		/* The next piece is refused with CURL_WRITEFUNC_PAUSE. */
		fe->paused = true;
		return;
	}
	fe->paused = false;
	if (fe->phase == PHASE_RECEIVING) {
		fe->last_activity_ms = now_ms();
		if (arm_deadline(fe, fe->idle_ms) != 0) {
			set_abort(fe, LG_FETCH_EOTHER, "cannot set the idle timer");
			enqueue(fe);
			return;
		}
	}
	if (fe->curl_paused) {
		fe->resume_pending = true;
		enqueue(fe);
	}
}

/* Un-pauses curl. Its write callback may run from inside curl_easy_pause. */
static void resume_now(struct lg_fetch *fe)
{
	struct lg_fetcher *f = fe->f;
	CURLcode rc;

	if (!fe->curl_paused || fe->paused)
		return;
	fe->curl_paused = false;
	f->in_curl++;
	rc = curl_easy_pause(fe->easy, CURLPAUSE_CONT);
	f->in_curl--;
	if (rc != CURLE_OK) {
		/* Usually our own callback refused (the reason is set already). */
		set_abort(fe, LG_FETCH_EOTHER, "%s", curl_easy_strerror(rc));
		enqueue(fe);
	}
}

/* The zero-delay event: carries out queued cancels, starts and resumes. */
static void on_deferred(evutil_socket_t fd, short what, void *arg)
{
	struct lg_fetcher *f = arg;
	struct lg_fetch *fe;

	while ((fe = TAILQ_FIRST(&f->queue))) {
		dequeue(fe);
		if (fe->abort != LG_FETCH_OK) {
			finish(fe, fe->abort, fe->msg);
			continue;
		}
		if (fe->add_pending) {
			fe->add_pending = false;
			if (multi_add(fe) != 0) {
				snprintf(fe->msg, sizeof fe->msg, "cannot start the transfer");
				finish(fe, LG_FETCH_EOTHER, fe->msg);
				continue;
			}
		}
		if (fe->resume_pending) {
			fe->resume_pending = false;
			resume_now(fe);
		}
	}
	/* A resume may have let a transfer end. */
	collect_done(f);
}

/* ---- the fetcher ---- */

static void apply_defaults(struct lg_fetch_defaults *out, const struct lg_fetch_defaults *d)
{
	const struct lg_fetch_defaults *b = &builtin_defaults;

	*out = *b;
	if (!d)
		return;
	out->connect_timeout_ms = pick(d->connect_timeout_ms, b->connect_timeout_ms);
	out->first_byte_timeout_ms = pick(d->first_byte_timeout_ms, b->first_byte_timeout_ms);
	out->idle_timeout_ms = pick(d->idle_timeout_ms, b->idle_timeout_ms);
	out->total_timeout_ms = pick(d->total_timeout_ms, b->total_timeout_ms);
	if (d->max_response_bytes)
		out->max_response_bytes = d->max_response_bytes;
}

static int multi_setup(struct lg_fetcher *f)
{
	if (curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
	    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f) != CURLM_OK ||
	    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
	    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f) != CURLM_OK ||
	    /* curl's default cache holds few idle connections; under load a
	     * new upstream connection per call costs more than the call. */
	    curl_multi_setopt(f->multi, CURLMOPT_MAXCONNECTS, (long)FETCH_MAX_IDLE_CONNS) != CURLM_OK) {
		lg_error(COMPONENT, "curl_multi_setopt failed");
		return -1;
	}
	return 0;
}

struct lg_fetcher *lg_fetcher_new(struct event_base *base, const struct lg_fetch_defaults *d)
{
	struct lg_fetcher *f;

	if (!base)
		return NULL;
	f = calloc(1, sizeof *f);
	if (!f)
		return NULL;
	f->base = base;
	apply_defaults(&f->def, d);
	TAILQ_INIT(&f->active);
	TAILQ_INIT(&f->queue);
	TAILQ_INIT(&f->pool);
	LIST_INIT(&f->socks);
	f->timer = evtimer_new(base, on_curl_timer_event, f);
	if (!f->timer)
		goto fail;
	f->deferred = event_new(base, -1, 0, on_deferred, f);
	if (!f->deferred)
		goto fail_timer;
	f->multi = curl_multi_init();
	if (!f->multi) {
		lg_error(COMPONENT, "curl_multi_init failed");
		goto fail_deferred;
	}
	if (multi_setup(f) != 0)
		goto fail_multi;
	return f;
fail_multi:
	curl_multi_cleanup(f->multi);
fail_deferred:
	event_free(f->deferred);
fail_timer:
	event_free(f->timer);
fail:
	free(f);
	return NULL;
}

void lg_fetcher_free(struct lg_fetcher *f)
{
	struct lg_fetch *fe;
	struct sock_watch *w;
	CURLMcode mrc;

	if (!f)
		return;
	if (f->in_curl)
		lg_error(COMPONENT, "lg_fetcher_free called from a fetch callback");
	/* No new transfer from the on_done calls below. */
	f->closing = true;
	while ((fe = TAILQ_FIRST(&f->active))) {
		set_abort(fe, LG_FETCH_ECANCELED, "canceled: the fetcher is closing");
		finish(fe, fe->abort, fe->msg);
	}
	while ((fe = TAILQ_FIRST(&f->pool))) {
		TAILQ_REMOVE(&f->pool, fe, link);
		fetch_destroy(fe);
	}
	f->n_pool = 0;
	/* Closes the cached connections; curl may call our callbacks. */
	mrc = curl_multi_cleanup(f->multi);
	if (mrc != CURLM_OK)
		lg_error(COMPONENT, "curl_multi_cleanup: %s", curl_multi_strerror(mrc));
	while ((w = LIST_FIRST(&f->socks)))
		sock_watch_free(w);
	event_free(f->deferred);
	event_free(f->timer);
	free(f);
}

size_t lg_fetcher_active(const struct lg_fetcher *f)
{
	return f ? f->n_active : 0;
}

const char *lg_fetch_header(struct lg_fetch *fe, const char *name)
{
	struct curl_header *h = NULL;

	if (!fe || fe->status == 0)
		return NULL;
	/* -1: the last request of the transfer (no redirects are followed). */
	if (curl_easy_header(fe->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
		return NULL;
	return h->value;
}
