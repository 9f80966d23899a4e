/* SPDX-License-Identifier: Apache-2.0 */
/* Passwords: Argon2id (crypto_pwhash_str, interactive limits: about 40 ms
 * and 64 MiB each) on the host's work pool, never on a loop. At most
 * `concurrency` hashes run at once, which bounds the memory they take; the
 * others wait in arrival order. A job that waited is started again on the
 * loop that asked for it (event_base_once), since a work item's completion
 * runs on the loop that submitted it.
 *
 * The login limiter counts the attempts of each account within the current
 * minute. An attempt is counted as soon as it is allowed, so that many
 * concurrent tries cannot pass the limit before the first one fails; a
 * successful login clears the account's count. The table is fixed-size,
 * indexed by a keyed SipHash of the address (random key per process). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "auth.h"

#define ATTEMPT_SETS 1024       /* a power of two */
#define ATTEMPT_WAYS 4
#define ATTEMPT_WINDOW_S 60

enum pw_kind { PW_HASH, PW_VERIFY };

struct pw_job {
	struct auth *a;
	struct event_base *base;        /* the loop that asked */
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

struct auth_passwords *auth_passwords_new(unsigned concurrency, unsigned attempts_per_minute)
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

static void job_start_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	job_submit_here(arg);
}

static void job_start(struct pw_job *j)
{
	const struct timeval now = { 0, 0 };
	struct auth *a;

	if (j->a->host->loop() == j->base) {
		job_submit_here(j);
		return;
	}
	if (event_base_once(j->base, -1, EV_TIMEOUT, job_start_cb, j, &now) == 0)
		return;
	/* The loop is gone (shutting down): nobody waits for the answer. */
	a = j->a;
	a->host->log(a->self, LG_LOG_ERROR, "password hashing: cannot wake a loop");
	job_free(j);
	slot_release(a->passwords);
}

/* Starts @j now, or queues it behind the others. */
static int job_enqueue(struct pw_job *j)
{
	struct auth_passwords *p = j->a->passwords;
	bool now;

	if (!j->base) {
		job_free(j);
		return -EINVAL;
	}
	pthread_mutex_lock(&p->lock);
	now = p->running < p->concurrency;
	if (now) {
		p->running++;
	} else if (p->tail) {
		p->tail->next = j;
		p->tail = j;
	} else {
		p->head = p->tail = j;
	}
	pthread_mutex_unlock(&p->lock);
	if (now)
		job_submit_here(j);
	return 0;
}

static struct pw_job *job_new(struct auth *a, enum pw_kind kind, const char *password)
{
	struct pw_job *j = calloc(1, sizeof *j);

	if (!j)
		return NULL;
	j->password = strdup(password);
	if (!j->password) {
		free(j);
		return NULL;
	}
	j->a = a;
	j->kind = kind;
	j->base = a->host->loop();
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

/* ---- login attempts ---- */

static uint64_t account_tag(const struct auth_passwords *p, const char *email)
{
	unsigned char h[crypto_shorthash_BYTES];
	uint64_t tag;

	crypto_shorthash(h, (const unsigned char *)email, strlen(email), p->tag_key);
	memcpy(&tag, h, sizeof tag);
	return tag ? tag : 1;
}

/* The account's slot, claiming the stalest one of its set if it has none.
 * Called with the lock held. */
static struct attempt *attempt_slot(struct auth_passwords *p, const char *email, int64_t now)
{
	uint64_t tag = account_tag(p, email);
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

bool auth_login_allowed(struct auth *a, const char *email)
{
	struct auth_passwords *p = a->passwords;
	struct attempt *s;
	bool ok;

	pthread_mutex_lock(&p->lock);
	s = attempt_slot(p, email, auth_now());
	ok = s->count < p->attempts_per_minute;
	if (ok)
		s->count++;
	pthread_mutex_unlock(&p->lock);
	return ok;
}

int64_t auth_login_retry_after(struct auth *a, const char *email)
{
	struct auth_passwords *p = a->passwords;
	int64_t now = auth_now(), wait;

	pthread_mutex_lock(&p->lock);
	wait = attempt_slot(p, email, now)->window + ATTEMPT_WINDOW_S - now;
	pthread_mutex_unlock(&p->lock);
	return wait > 0 ? wait : 1;
}

void auth_login_failed(struct auth *a, const char *email)
{
	/* Counted by auth_login_allowed() already. */
	(void)a;
	(void)email;
}

void auth_login_succeeded(struct auth *a, const char *email)
{
	struct auth_passwords *p = a->passwords;

	pthread_mutex_lock(&p->lock);
	attempt_slot(p, email, auth_now())->count = 0;
	pthread_mutex_unlock(&p->lock);
}
