/* SPDX-License-Identifier: Apache-2.0 */
/* Passwords: Argon2id (crypto_pwhash_str, interactive limits: about 40 ms
 * and 64 MiB each) on the host's work pool, never on a loop. At most
 * `concurrency` hashes run at once, which bounds the memory they take; the
 * others wait in arrival order, at most `queue_max` of them: beyond, the
 * caller is told to come back later (-EBUSY, 503) rather than queue without
 * bound. A job that waited is started again on the loop that asked for it,
 * since a work item's completion runs on the loop that submitted it: each
 * job carries an event of that loop, made when it is queued, which any
 * thread can activate without allocating (event_active cannot fail). So a
 * job that was accepted always ends with its done callback.
 *
 * The attempt limiter counts the password checks of each account within
 * the current minute: logins and changes of one's own password alike. An
 * account is its user id, or for an email that names no user, the email in
 * lower case (as the database compares them). An attempt is counted as
 * soon as it is allowed, so that many concurrent tries cannot pass the
 * limit before the first one fails; a successful check clears the count.
 * The table is fixed-size, indexed by a keyed SipHash of the account
 * (random key per process). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "../common/api.h"

#include "auth.h"

#define ATTEMPT_SETS 1024       /* a power of two */
#define ATTEMPT_WAYS 4
#define ATTEMPT_WINDOW_S 60
#define EMAIL_BYTES_MAX (4 * 254) /* the longest email, 254 characters of UTF-8 */
#define BUSY_RETRY_AFTER "1"    /* seconds: a full queue drains in about one */
#define MSG_BUSY "The server is busy, please try again later."

enum pw_kind { PW_HASH, PW_VERIFY };

struct pw_job {
	struct auth *a;
	struct event_base *base;        /* the loop that asked */
	struct event *wake;             /* of that loop: starts a job that waited */
	enum pw_kind kind;
	char *password;                 /* wiped and freed with the job */
	char encoded[crypto_pwhash_STRBYTES];
	bool has_encoded;               /* verify: a real hash, not the dummy */
	bool ok;
	void (*hash_done)(void *arg, const char *encoded);
	void (*verify_done)(void *arg, bool ok);
	void *arg;
	struct pw_job *next;
};

struct attempt {
	uint64_t tag;                   /* 0: free */
	int64_t window;                 /* start, Unix seconds */
	unsigned count;
};

struct auth_passwords {
	pthread_mutex_t lock;
	unsigned concurrency, running;
	unsigned queue_max, waiting;
	struct pw_job *head, *tail;     /* waiting, oldest first */
	unsigned attempts_per_minute;
	unsigned char tag_key[crypto_shorthash_KEYBYTES];
	struct attempt attempts[ATTEMPT_SETS][ATTEMPT_WAYS];
	/* checked against when the account does not exist, so that the
	 * answer takes as long as for one that does */
	char dummy[crypto_pwhash_STRBYTES];
};

static int hash_interactive(const char *password, char out[crypto_pwhash_STRBYTES])
{
	if (crypto_pwhash_str(out, password, strlen(password), crypto_pwhash_OPSLIMIT_INTERACTIVE,
			      crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0)
		return -ENOMEM;
	return 0;
}

int auth_password_hash_sync(const char *password, char out[crypto_pwhash_STRBYTES])
{
	return hash_interactive(password, out);
}

struct auth_passwords *auth_passwords_new(unsigned concurrency, unsigned queue_max,
					  unsigned attempts_per_minute)
{
	struct auth_passwords *p = calloc(1, sizeof *p);
	unsigned char filler[24];
	char text[sizeof filler * 2 + 1];

	if (!p)
		return NULL;
	if (pthread_mutex_init(&p->lock, NULL) != 0) {
		free(p);
		return NULL;
	}
	p->concurrency = concurrency ? concurrency : 1;
	p->queue_max = queue_max;
	p->attempts_per_minute = attempts_per_minute;
	crypto_shorthash_keygen(p->tag_key);
	randombytes_buf(filler, sizeof filler);
	sodium_bin2hex(text, sizeof text, filler, sizeof filler);
	if (hash_interactive(text, p->dummy) != 0) {
		pthread_mutex_destroy(&p->lock);
		free(p);
		return NULL;
	}
	return p;
}

static void job_free(struct pw_job *j)
{
	if (j->password) {
		sodium_memzero(j->password, strlen(j->password));
		free(j->password);
	}
	sodium_memzero(j->encoded, sizeof j->encoded);
	/* Never pending here (its callback ran, or it was never activated),
	 * and at fini its loop is gone: only its memory is freed. */
	free(j->wake);
	free(j);
}

void auth_passwords_free(struct auth_passwords *p)
{
	if (!p)
		return;
	while (p->head) {
		struct pw_job *j = p->head;

		p->head = j->next;
		job_free(j);
	}
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* ---- the work ---- */

static void pw_work(void *arg)
{
	struct pw_job *j = arg;
	struct auth_passwords *p = j->a->passwords;
	const char *against;
	bool matched;

	if (j->kind == PW_HASH) {
		j->ok = hash_interactive(j->password, j->encoded) == 0;
		return;
	}
	/* Unknown accounts are checked against the dummy hash: the same cost. */
	against = j->has_encoded ? j->encoded : p->dummy;
	matched = crypto_pwhash_str_verify(against, j->password, strlen(j->password)) == 0;
	j->ok = matched && j->has_encoded;
}

static void job_start(struct pw_job *j);

/* The slot of a finished job goes to the oldest waiting one, if any. */
static void slot_release(struct auth_passwords *p)
{
	struct pw_job *next;

	pthread_mutex_lock(&p->lock);
	next = p->head;
	if (next) {
		p->head = next->next;
		if (!p->head)
			p->tail = NULL;
		p->waiting--;
	} else {
		p->running--;
	}
	pthread_mutex_unlock(&p->lock);
	if (next)
		job_start(next);
}

static void job_finish(struct pw_job *j)
{
	if (j->kind == PW_HASH)
		j->hash_done(j->arg, j->ok ? j->encoded : NULL);
	else
		j->verify_done(j->arg, j->ok);
}

static void pw_done(void *arg)
{
	struct pw_job *j = arg;
	struct auth_passwords *p = j->a->passwords;

	job_finish(j);
	job_free(j);
	slot_release(p);
}

/* On the job's own loop: hand it to the work pool. */
static void job_submit_here(struct pw_job *j)
{
	struct auth *a = j->a;

	if (a->host->work_submit(a->self, pw_work, pw_done, j) == 0)
		return;
	a->host->log(a->self, LG_LOG_ERROR, "password hashing: the work pool refused a job");
	j->ok = false;
	pw_done(j);
}

static void job_wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	job_submit_here(arg);
}

/* Runs @j on its own loop: now if this is it, else through its event,
 * whose activation cannot fail. */
static void job_start(struct pw_job *j)
{
	if (j->a->host->loop() == j->base)
		job_submit_here(j);
	else
		event_active(j->wake, EV_TIMEOUT, 1);
}

/* Starts @j now, or queues it behind the others; -EBUSY (and @j freed)
 * when queue_max jobs wait already. */
static int job_enqueue(struct pw_job *j)
{
	struct auth_passwords *p = j->a->passwords;
	bool now, full = false;

	pthread_mutex_lock(&p->lock);
	now = p->running < p->concurrency;
	if (now) {
		p->running++;
	} else if (p->waiting >= p->queue_max) {
		full = true;
	} else {
		if (p->tail)
			p->tail->next = j;
		else
			p->head = j;
		p->tail = j;
		p->waiting++;
	}
	pthread_mutex_unlock(&p->lock);
	if (full) {
		job_free(j);
		return -EBUSY;
	}
	if (now)
		job_submit_here(j);
	return 0;
}

static struct pw_job *job_new(struct auth *a, enum pw_kind kind, const char *password)
{
	struct pw_job *j = calloc(1, sizeof *j);

	if (!j)
		return NULL;
	j->a = a;
	j->kind = kind;
	j->base = a->host->loop();
	j->password = strdup(password);
	j->wake = malloc(event_get_struct_event_size());
	if (!j->base || !j->password || !j->wake ||
	    event_assign(j->wake, j->base, -1, 0, job_wake_cb, j) != 0) {
		job_free(j);
		return NULL;
	}
	return j;
}

int auth_password_hash(struct auth *a, const char *password,
		       void (*done)(void *arg, const char *encoded), void *arg)
{
	struct pw_job *j = job_new(a, PW_HASH, password);

	if (!j)
		return -ENOMEM;
	j->hash_done = done;
	j->arg = arg;
	return job_enqueue(j);
}

int auth_password_verify(struct auth *a, const char *encoded, const char *password,
			 void (*done)(void *arg, bool ok), void *arg)
{
	struct pw_job *j = job_new(a, PW_VERIFY, password);

	if (!j)
		return -ENOMEM;
	if (encoded && strlen(encoded) < sizeof j->encoded) {
		strcpy(j->encoded, encoded);
		j->has_encoded = true;
	}
	j->verify_done = done;
	j->arg = arg;
	return job_enqueue(j);
}

/* ---- when the queue is full ---- */

int auth_password_refused(struct auth *a, struct lg_req *req, int rc)
{
	if (rc == -EBUSY) {
		(void)a->host->reply_header(req, "Retry-After", BUSY_RETRY_AFTER);
		a->host->reply_error(req, 503, MSG_BUSY);
	} else {
		a->host->reply_error(req, 500, API_INTERNAL_ERROR);
	}
	return rc;
}

/* ---- attempts ---- */

/* The account's tag: its user id, else its email in ASCII lower case (the
 * database compares lower(email); other letters are compared as they are,
 * which at worst gives an unknown email more tries). A leading byte keeps
 * the two kinds apart. */
static uint64_t account_tag(const struct auth_passwords *p, int64_t user_id, const char *email)
{
	unsigned char in[1 + EMAIL_BYTES_MAX], h[crypto_shorthash_BYTES];
	size_t n = 1;
	uint64_t tag;

	if (user_id > 0) {
		in[0] = 'u';
		memcpy(in + 1, &user_id, sizeof user_id);
		n += sizeof user_id;
	} else {
		in[0] = 'e';
		for (; email && email[n - 1] && n < sizeof in; n++) {
			unsigned char c = (unsigned char)email[n - 1];

			in[n] = c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
		}
	}
	crypto_shorthash(h, in, n, p->tag_key);
	sodium_memzero(in, n);
	memcpy(&tag, h, sizeof tag);
	return tag ? tag : 1;
}

/* The account's slot, claiming the stalest one of its set if it has none.
 * Called with the lock held. */
static struct attempt *attempt_slot(struct auth_passwords *p, uint64_t tag, int64_t now)
{
	struct attempt *set = p->attempts[tag & (ATTEMPT_SETS - 1)], *victim = &set[0];

	for (int i = 0; i < ATTEMPT_WAYS; i++) {
		if (set[i].tag == tag) {
			if (now - set[i].window >= ATTEMPT_WINDOW_S) {
				set[i].window = now;
				set[i].count = 0;
			}
			return &set[i];
		}
		if (set[i].window < victim->window)
			victim = &set[i];
	}
	*victim = (struct attempt){ .tag = tag, .window = now, .count = 0 };
	return victim;
}

bool auth_attempt_allowed(struct auth *a, int64_t user_id, const char *email)
{
	struct auth_passwords *p = a->passwords;
	uint64_t tag = account_tag(p, user_id, email);
	struct attempt *s;
	bool ok;

	pthread_mutex_lock(&p->lock);
	s = attempt_slot(p, tag, auth_now());
	ok = s->count < p->attempts_per_minute;
	if (ok)
		s->count++;
	pthread_mutex_unlock(&p->lock);
	return ok;
}

int64_t auth_attempt_retry_after(struct auth *a, int64_t user_id, const char *email)
{
	struct auth_passwords *p = a->passwords;
	uint64_t tag = account_tag(p, user_id, email);
	int64_t now = auth_now(), wait;

	pthread_mutex_lock(&p->lock);
	wait = attempt_slot(p, tag, now)->window + ATTEMPT_WINDOW_S - now;
	pthread_mutex_unlock(&p->lock);
	return wait > 0 ? wait : 1;
}

void auth_attempt_succeeded(struct auth *a, int64_t user_id, const char *email)
{
	struct auth_passwords *p = a->passwords;
	uint64_t tag = account_tag(p, user_id, email);

	pthread_mutex_lock(&p->lock);
	attempt_slot(p, tag, auth_now())->count = 0;
	pthread_mutex_unlock(&p->lock);
}

void auth_attempts_refused(struct auth *a, struct lg_req *req, int64_t user_id,
			   const char *email, const char *message)
{
	char wait[24];

	snprintf(wait, sizeof wait, "%lld", (long long)auth_attempt_retry_after(a, user_id, email));
	(void)a->host->reply_header(req, "Retry-After", wait);
	a->host->reply_error(req, 429, "%s", message);
}
