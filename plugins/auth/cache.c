/* SPDX-License-Identifier: Apache-2.0 */
/* The key cache: what the database said about a key hash, shared by every
 * worker. It is split into stripes, each with its own mutex, hash table and
 * two LRU lists (valid keys, unknown keys), so two workers rarely wait for
 * each other and no lock covers the whole cache.
 *
 * Valid keys are fresh for ttl, then stale: a stale entry sends the caller
 * to the database but is kept, so that it can still be used while the
 * database is down. Unknown keys are remembered for negative_ttl, so a
 * flood of junk keys is answered from memory. Unknown keys never push a
 * valid one out: they take at most half of a stripe, and when the stripe is
 * full of valid keys an unknown one is simply not remembered.
 *
 * Every forget bumps a generation; a lookup that started before it cannot
 * put back what was forgotten (auth_cache_put_since). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"

#define STRIPES 64              /* a power of two */
#define STRIPE_MIN_CAPACITY 4

struct entry {
	unsigned char hash[AUTH_HASH_BYTES];
	uint64_t fresh_until_ms;        /* valid: then stale; unknown: then gone */
	struct auth_ident *ident;       /* NULL: an unknown key */
	struct entry *chain;            /* next in the bucket */
	struct entry *prev, *next;      /* LRU list, most recent first */
};

struct lru {
	struct entry *head, *tail;
	size_t n;
};

struct stripe {
	pthread_mutex_t lock;
	struct entry **buckets;
	size_t nbuckets;                /* a power of two */
	struct lru valid, unknown;
} __attribute__((aligned(64)));

struct auth_cache {
	struct stripe stripes[STRIPES];
	size_t stripe_capacity;
	uint64_t ttl_ms, negative_ttl_ms;
	atomic_uint_fast64_t generation;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* The hash is already uniform: its bytes pick the stripe and the bucket. */
static struct stripe *stripe_of(struct auth_cache *c, const unsigned char *hash)
{
	return &c->stripes[hash[0] & (STRIPES - 1)];
}

static size_t bucket_of(const struct stripe *s, const unsigned char *hash)
{
	uint64_t h;

	memcpy(&h, hash + 8, sizeof h);
	return (size_t)(h & (s->nbuckets - 1));
}

static void lru_unlink(struct lru *l, struct entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		l->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		l->tail = e->prev;
	e->prev = e->next = NULL;
	l->n--;
}

static void lru_push(struct lru *l, struct entry *e)
{
	e->prev = NULL;
	e->next = l->head;
	if (l->head)
		l->head->prev = e;
	else
		l->tail = e;
	l->head = e;
	l->n++;
}

static struct lru *lru_of(struct stripe *s, const struct entry *e)
{
	return e->ident ? &s->valid : &s->unknown;
}

static struct entry **find_slot(struct stripe *s, const unsigned char *hash)
{
	struct entry **p = &s->buckets[bucket_of(s, hash)];

	while (*p && memcmp((*p)->hash, hash, AUTH_HASH_BYTES) != 0)
		p = &(*p)->chain;
	return p;
}

static void entry_free(struct entry *e)
{
	free(e->ident);
	free(e);
}

/* Unlinks @e from its bucket and LRU list and frees it. */
static void remove_entry(struct stripe *s, struct entry *e)
{
	struct entry **p = find_slot(s, e->hash);

	*p = e->chain;
	lru_unlink(lru_of(s, e), e);
	entry_free(e);
}

struct auth_cache *auth_cache_new(size_t capacity, uint64_t ttl_ms, uint64_t negative_ttl_ms)
{
	struct auth_cache *c = calloc(1, sizeof *c);
	size_t per, nbuckets = 1;
	int i;

	if (!c)
		return NULL;
	per = (capacity + STRIPES - 1) / STRIPES;
	if (per < STRIPE_MIN_CAPACITY)
		per = STRIPE_MIN_CAPACITY;
	while (nbuckets < per)
		nbuckets <<= 1;
	c->stripe_capacity = per;
	c->ttl_ms = ttl_ms;
	c->negative_ttl_ms = negative_ttl_ms;
	atomic_init(&c->generation, 0);
	for (i = 0; i < STRIPES; i++) {
		struct stripe *s = &c->stripes[i];

		s->nbuckets = nbuckets;
		s->buckets = calloc(nbuckets, sizeof *s->buckets);
		if (!s->buckets || pthread_mutex_init(&s->lock, NULL) != 0) {
			free(s->buckets);
			s->buckets = NULL;
			goto fail;
		}
	}
	return c;
fail:
	while (--i >= 0) {
		pthread_mutex_destroy(&c->stripes[i].lock);
		free(c->stripes[i].buckets);
	}
	free(c);
	return NULL;
}

static void stripe_clear(struct stripe *s)
{
	struct lru *lists[] = { &s->valid, &s->unknown };

	for (size_t i = 0; i < 2; i++) {
		struct entry *e = lists[i]->head;

		while (e) {
			struct entry *next = e->next;

			entry_free(e);
			e = next;
		}
		lists[i]->head = lists[i]->tail = NULL;
		lists[i]->n = 0;
	}
	memset(s->buckets, 0, s->nbuckets * sizeof *s->buckets);
}

void auth_cache_free(struct auth_cache *c)
{
	if (!c)
		return;
	for (int i = 0; i < STRIPES; i++) {
		stripe_clear(&c->stripes[i]);
		pthread_mutex_destroy(&c->stripes[i].lock);
		free(c->stripes[i].buckets);
	}
	free(c);
}

enum auth_cache_result auth_cache_get(struct auth_cache *c,
				      const unsigned char hash[AUTH_HASH_BYTES],
				      struct auth_ident *out)
{
	struct stripe *s = stripe_of(c, hash);
	enum auth_cache_result r = AUTH_CACHE_MISS;
	uint64_t now = now_ms();
	struct entry *e;

	pthread_mutex_lock(&s->lock);
	e = *find_slot(s, hash);
	if (!e)
		goto out;
	if (!e->ident) {
		if (now < e->fresh_until_ms)
			r = AUTH_CACHE_UNKNOWN;
		else
			remove_entry(s, e);
		goto out;
	}
	*out = *e->ident;
	r = now < e->fresh_until_ms ? AUTH_CACHE_HIT : AUTH_CACHE_STALE;
	lru_unlink(&s->valid, e);
	lru_push(&s->valid, e);
out:
	pthread_mutex_unlock(&s->lock);
	return r;
}

/* Makes room for one more entry of the kind of @valid; false when an
 * unknown key should rather not be remembered. */
static bool make_room(struct auth_cache *c, struct stripe *s, bool valid)
{
	size_t cap = c->stripe_capacity;

	if (!valid && s->unknown.n >= cap / 2 && s->unknown.tail) {
		remove_entry(s, s->unknown.tail);
		return true;
	}
	if (s->valid.n + s->unknown.n < cap)
		return true;
	if (s->unknown.tail) {
		remove_entry(s, s->unknown.tail);
		return true;
	}
	if (!valid)
		return false;
	remove_entry(s, s->valid.tail);
	return true;
}

/* Replaces what the stripe knows of @hash. Called with the stripe locked. */
static void stripe_put(struct auth_cache *c, struct stripe *s, const unsigned char *hash,
		       struct auth_ident *ident)
{
	struct entry *e = *find_slot(s, hash);
	struct entry **slot;

	if (e)
		remove_entry(s, e);
	if (!make_room(c, s, ident != NULL) || !(e = calloc(1, sizeof *e))) {
		free(ident);
		return;
	}
	memcpy(e->hash, hash, AUTH_HASH_BYTES);
	e->ident = ident;
	e->fresh_until_ms = now_ms() + (ident ? c->ttl_ms : c->negative_ttl_ms);
	slot = find_slot(s, hash);
	e->chain = *slot;
	*slot = e;
	lru_push(lru_of(s, e), e);
}

uint64_t auth_cache_generation(struct auth_cache *c)
{
	return atomic_load(&c->generation);
}

void auth_cache_put_since(struct auth_cache *c, const unsigned char hash[AUTH_HASH_BYTES],
			  const struct auth_ident *ident, uint64_t generation)
{
	struct stripe *s = stripe_of(c, hash);
	struct auth_ident *copy = NULL;

	if (ident) {
		copy = malloc(sizeof *copy);
		if (!copy)
			return;
		*copy = *ident;
	}
	pthread_mutex_lock(&s->lock);
	/* A forget since the lookup began may concern this very key. */
	if (atomic_load(&c->generation) == generation)
		stripe_put(c, s, hash, copy);
	else
		free(copy);
	pthread_mutex_unlock(&s->lock);
}

void auth_cache_put(struct auth_cache *c, const unsigned char hash[AUTH_HASH_BYTES],
		    const struct auth_ident *ident)
{
	auth_cache_put_since(c, hash, ident, auth_cache_generation(c));
}

/* Drops the valid entries that @match selects, in every stripe. The
 * generation moves first, so a lookup in flight cannot put one back. */
static void forget_where(struct auth_cache *c, bool (*match)(const struct auth_ident *, int64_t),
			 int64_t id)
{
	atomic_fetch_add(&c->generation, 1);
	for (int i = 0; i < STRIPES; i++) {
		struct stripe *s = &c->stripes[i];
		struct entry *e;

		pthread_mutex_lock(&s->lock);
		e = s->valid.head;
		while (e) {
			struct entry *next = e->next;

			if (match(e->ident, id))
				remove_entry(s, e);
			e = next;
		}
		pthread_mutex_unlock(&s->lock);
	}
}

static bool key_is(const struct auth_ident *ident, int64_t id)
{
	return ident->key_id == id;
}

static bool user_is(const struct auth_ident *ident, int64_t id)
{
	return ident->user_id == id;
}

void auth_cache_forget_key(struct auth_cache *c, int64_t key_id)
{
	forget_where(c, key_is, key_id);
}

void auth_cache_forget_user(struct auth_cache *c, int64_t user_id)
{
	forget_where(c, user_is, user_id);
}

void auth_cache_expire_all(struct auth_cache *c)
{
	atomic_fetch_add(&c->generation, 1);
	for (int i = 0; i < STRIPES; i++) {
		struct stripe *s = &c->stripes[i];

		pthread_mutex_lock(&s->lock);
		while (s->unknown.head)
			remove_entry(s, s->unknown.head);
		for (struct entry *e = s->valid.head; e; e = e->next)
			e->fresh_until_ms = 0;
		pthread_mutex_unlock(&s->lock);
	}
}

void auth_cache_forget_all(struct auth_cache *c)
{
	atomic_fetch_add(&c->generation, 1);
	for (int i = 0; i < STRIPES; i++) {
		pthread_mutex_lock(&c->stripes[i].lock);
		stripe_clear(&c->stripes[i]);
		pthread_mutex_unlock(&c->stripes[i].lock);
	}
}
