/* SPDX-License-Identifier: Apache-2.0 */
/* The auth plugin's pure parts: the key format and its tag, its keyed
 * hash and mask, and the key cache (hits, TTLs, unknown keys, eviction,
 * forgetting, and two threads at once). */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "../../plugins/auth/auth.h"

static const unsigned char secret_a[AUTH_SECRET_BYTES] = { 1, 2, 3 };
static const unsigned char secret_b[AUTH_SECRET_BYTES] = { 3, 2, 1 };

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

/* ---- keys ---- */

static void new_keys_are_well_formed_and_distinct(void **state)
{
	char a[AUTH_KEY_LEN + 1], b[AUTH_KEY_LEN + 1];

	(void)state;
	assert_int_equal(AUTH_KEY_LEN, 3 + 48);
	assert_int_equal(auth_key_new(secret_a, a), 0);
	assert_int_equal(auth_key_new(secret_a, b), 0);
	assert_int_equal(strlen(a), AUTH_KEY_LEN);
	assert_memory_equal(a, "sk-", 3);
	assert_true(auth_key_well_formed(a, strlen(a)));
	assert_true(auth_key_authentic(secret_a, a, strlen(a)));
	assert_true(auth_key_authentic(secret_a, b, strlen(b)));
	assert_string_not_equal(a, b);
	for (int i = 0; i < 200; i++) {
		assert_int_equal(auth_key_new(secret_a, a), 0);
		assert_true(auth_key_well_formed(a, strlen(a)));
		assert_true(auth_key_authentic(secret_a, a, strlen(a)));
	}
}

static void malformed_keys_are_refused(void **state)
{
	char key[AUTH_KEY_LEN + 2];
	char bad[AUTH_KEY_LEN + 1];

	(void)state;
	assert_int_equal(auth_key_new(secret_a, key), 0);
	assert_false(auth_key_well_formed("", 0));
	assert_false(auth_key_authentic(secret_a, "", 0));
	assert_false(auth_key_well_formed(key, AUTH_KEY_LEN - 1));      /* short */
	assert_false(auth_key_authentic(secret_a, key, AUTH_KEY_LEN - 1));
	memcpy(bad, key, sizeof bad);
	bad[0] = 'S';                                                  /* prefix */
	assert_false(auth_key_well_formed(bad, AUTH_KEY_LEN));
	assert_false(auth_key_authentic(secret_a, bad, AUTH_KEY_LEN));
	memcpy(bad, key, sizeof bad);
	bad[10] = '+';                                                 /* not URL-safe */
	assert_false(auth_key_well_formed(bad, AUTH_KEY_LEN));
	assert_false(auth_key_authentic(secret_a, bad, AUTH_KEY_LEN));
	bad[10] = '\'';
	assert_false(auth_key_well_formed(bad, AUTH_KEY_LEN));
	bad[10] = '=';
	assert_false(auth_key_well_formed(bad, AUTH_KEY_LEN));
	key[AUTH_KEY_LEN] = 'A';                                       /* long */
	key[AUTH_KEY_LEN + 1] = '\0';
	assert_false(auth_key_well_formed(key, AUTH_KEY_LEN + 1));
	assert_false(auth_key_authentic(secret_a, key, AUTH_KEY_LEN + 1));
}

/* The tag is what keeps made-up keys away from the cache and the database:
 * any change to a key, a key of another secret, or random characters are
 * refused by the key alone. */
static void only_the_secret_makes_authentic_keys(void **state)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	char key[AUTH_KEY_LEN + 1], bad[AUTH_KEY_LEN + 1];
	unsigned forged = 0;

	(void)state;
	assert_int_equal(auth_key_new(secret_a, key), 0);
	assert_false(auth_key_authentic(secret_b, key, AUTH_KEY_LEN));
	/* Each character of the body, changed to another one. */
	for (size_t i = 3; i < AUTH_KEY_LEN; i++) {
		memcpy(bad, key, sizeof bad);
		bad[i] = bad[i] == 'A' ? 'B' : 'A';
		assert_true(auth_key_well_formed(bad, AUTH_KEY_LEN));
		assert_false(auth_key_authentic(secret_a, bad, AUTH_KEY_LEN));
	}
	/* Random well-formed keys: one in 2^32 passes, so none of these. */
	for (int n = 0; n < 20000; n++) {
		memcpy(bad, "sk-", 3);
		for (size_t i = 3; i < AUTH_KEY_LEN; i++)
			bad[i] = alphabet[randombytes_uniform(64)];
		bad[AUTH_KEY_LEN] = '\0';
		assert_true(auth_key_well_formed(bad, AUTH_KEY_LEN));
		forged += auth_key_authentic(secret_a, bad, AUTH_KEY_LEN);
	}
	assert_int_equal(forged, 0);
}

/* The format, fixed for other implementations (docs/auth.md): random bytes
 * 0..31, tag = BLAKE2b-256(key = secret, personal = "llmgate:key-tag1")
 * of them, first 4 bytes; computed with Python's hashlib. */
static void key_format_known_answer(void **state)
{
	static const char key[] = "sk-AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9O5PBZ";

	(void)state;
	assert_int_equal(strlen(key), AUTH_KEY_LEN);
	assert_true(auth_key_authentic(secret_a, key, AUTH_KEY_LEN));
	assert_false(auth_key_authentic(secret_b, key, AUTH_KEY_LEN));
}

static void hash_depends_on_key_and_secret(void **state)
{
	char key[AUTH_KEY_LEN + 1], other[AUTH_KEY_LEN + 1];
	unsigned char h1[AUTH_HASH_BYTES], h2[AUTH_HASH_BYTES], h3[AUTH_HASH_BYTES];
	char hex[AUTH_HASH_HEX_LEN + 1];

	(void)state;
	assert_int_equal(auth_key_new(secret_a, key), 0);
	memcpy(other, key, sizeof other);
	other[20] = other[20] == 'A' ? 'B' : 'A';
	auth_key_hash(secret_a, key, AUTH_KEY_LEN, h1);
	auth_key_hash(secret_a, key, AUTH_KEY_LEN, h2);
	assert_memory_equal(h1, h2, AUTH_HASH_BYTES);
	auth_key_hash(secret_b, key, AUTH_KEY_LEN, h3);
	assert_memory_not_equal(h1, h3, AUTH_HASH_BYTES);
	auth_key_hash(secret_a, other, AUTH_KEY_LEN, h3);
	assert_memory_not_equal(h1, h3, AUTH_HASH_BYTES);
	auth_hash_bytea(h1, hex);
	assert_int_equal(strlen(hex), AUTH_HASH_HEX_LEN);
	assert_memory_equal(hex, "\\x", 2);
	assert_int_equal(strspn(hex + 2, "0123456789abcdef"), 64);
}

static void mask_shows_eight_and_eight(void **state)
{
	char key[AUTH_KEY_LEN + 1], masked[AUTH_MASKED_LEN + 1];

	(void)state;
	assert_int_equal(auth_key_new(secret_a, key), 0);
	auth_key_mask(key, masked);
	assert_int_equal(strlen(masked), AUTH_MASKED_LEN);
	assert_memory_equal(masked, key, 8);
	assert_memory_equal(masked + 8, "...", 3);
	assert_memory_equal(masked + 11, key + AUTH_KEY_LEN - 8, 8);
	auth_key_mask("short", masked);
	assert_string_equal(masked, "...");
}

/* ---- cache ---- */

static void hash_of(unsigned n, unsigned char out[AUTH_HASH_BYTES])
{
	char text[32];

	snprintf(text, sizeof text, "key-%u", n);
	auth_key_hash(secret_a, text, strlen(text), out);
}

static struct auth_ident ident_of(int64_t key_id, int64_t user_id)
{
	struct auth_ident id = { .key_id = key_id, .user_id = user_id, .role_id = 7,
				 .organization_id = 3 };

	snprintf(id.email, sizeof id.email, "user%lld@example.org", (long long)user_id);
	snprintf(id.key_name, sizeof id.key_name, "key %lld", (long long)key_id);
	return id;
}

static void cache_hit_then_stale(void **state)
{
	struct auth_cache *c = auth_cache_new(1000, 150, 100);
	unsigned char h[AUTH_HASH_BYTES];
	struct auth_ident in = ident_of(11, 5), out;

	(void)state;
	assert_non_null(c);
	hash_of(1, h);
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_MISS);
	auth_cache_put(c, h, &in);
	memset(&out, 0, sizeof out);
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_HIT);
	assert_int_equal(out.key_id, 11);
	assert_int_equal(out.user_id, 5);
	assert_string_equal(out.email, "user5@example.org");
	sleep_ms(400);
	memset(&out, 0, sizeof out);
	/* Kept past its TTL, so that it can serve while the database is down. */
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_STALE);
	assert_int_equal(out.key_id, 11);
	auth_cache_put(c, h, &in);
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_HIT);
	auth_cache_free(c);
}

static void cache_unknown_expires(void **state)
{
	struct auth_cache *c = auth_cache_new(1000, 10000, 150);
	unsigned char h[AUTH_HASH_BYTES];
	struct auth_ident out, in = ident_of(1, 1);

	(void)state;
	hash_of(2, h);
	auth_cache_put(c, h, NULL);
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_UNKNOWN);
	sleep_ms(400);
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_MISS);
	/* A key found later replaces the unknown entry. */
	auth_cache_put(c, h, NULL);
	auth_cache_put(c, h, &in);
	assert_int_equal(auth_cache_get(c, h, &out), AUTH_CACHE_HIT);
	auth_cache_free(c);
}

static void cache_forgets_key_user_all(void **state)
{
	struct auth_cache *c = auth_cache_new(1000, 10000, 10000);
	unsigned char h[4][AUTH_HASH_BYTES];
	struct auth_ident out, id;
	uint64_t gen;

	(void)state;
	for (unsigned i = 0; i < 4; i++) {
		hash_of(100 + i, h[i]);
		id = ident_of(100 + i, i < 2 ? 1 : 2);  /* keys 100, 101: user 1 */
		auth_cache_put(c, h[i], &id);
	}
	auth_cache_forget_key(c, 103);
	assert_int_equal(auth_cache_get(c, h[3], &out), AUTH_CACHE_MISS);
	assert_int_equal(auth_cache_get(c, h[2], &out), AUTH_CACHE_HIT);
	auth_cache_forget_user(c, 1);
	assert_int_equal(auth_cache_get(c, h[0], &out), AUTH_CACHE_MISS);
	assert_int_equal(auth_cache_get(c, h[1], &out), AUTH_CACHE_MISS);
	assert_int_equal(auth_cache_get(c, h[2], &out), AUTH_CACHE_HIT);
	/* A lookup that began before a forget does not put its answer back. */
	gen = auth_cache_generation(c);
	auth_cache_forget_key(c, 100);
	id = ident_of(100, 1);
	auth_cache_put_since(c, h[0], &id, gen);
	assert_int_equal(auth_cache_get(c, h[0], &out), AUTH_CACHE_MISS);
	auth_cache_put_since(c, h[0], &id, auth_cache_generation(c));
	assert_int_equal(auth_cache_get(c, h[0], &out), AUTH_CACHE_HIT);
	auth_cache_put(c, h[3], NULL);
	auth_cache_forget_all(c);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(auth_cache_get(c, h[i], &out), AUTH_CACHE_MISS);
	auth_cache_free(c);
}

/* After a gap in notifications: valid keys turn stale (still usable while
 * the database is down), unknown ones are forgotten. */
static void cache_expire_all_keeps_valid_keys_stale(void **state)
{
	struct auth_cache *c = auth_cache_new(1000, 60000, 60000);
	unsigned char valid[AUTH_HASH_BYTES], unknown[AUTH_HASH_BYTES];
	struct auth_ident out, id = ident_of(200, 3);

	(void)state;
	hash_of(200, valid);
	hash_of(201, unknown);
	auth_cache_put(c, valid, &id);
	auth_cache_put(c, unknown, NULL);
	assert_int_equal(auth_cache_get(c, valid, &out), AUTH_CACHE_HIT);
	assert_int_equal(auth_cache_get(c, unknown, &out), AUTH_CACHE_UNKNOWN);
	auth_cache_expire_all(c);
	memset(&out, 0, sizeof out);
	assert_int_equal(auth_cache_get(c, valid, &out), AUTH_CACHE_STALE);
	assert_int_equal(out.key_id, 200);
	assert_int_equal(auth_cache_get(c, unknown, &out), AUTH_CACHE_MISS);
	/* A fresh answer from the database makes it valid again. */
	auth_cache_put(c, valid, &id);
	assert_int_equal(auth_cache_get(c, valid, &out), AUTH_CACHE_HIT);
	auth_cache_free(c);
}

static void cache_capacity_is_bounded(void **state)
{
	const unsigned cap = 256, n = 5000;
	struct auth_cache *c = auth_cache_new(cap, 100000, 100000);
	unsigned char h[AUTH_HASH_BYTES];
	struct auth_ident out, id;
	unsigned valid = 0, unknown = 0, recent = 0;

	(void)state;
	for (unsigned i = 0; i < n; i++) {
		hash_of(i, h);
		id = ident_of(i + 1, 1);
		auth_cache_put(c, h, &id);
	}
	for (unsigned i = 0; i < n; i++) {
		hash_of(i, h);
		if (auth_cache_get(c, h, &out) == AUTH_CACHE_HIT) {
			valid++;
			recent += i >= n - 64;
		}
	}
	/* Striping rounds each stripe's share up: at most 64 * 4 = 256 here. */
	assert_true(valid <= cap);
	assert_true(valid >= cap / 2);
	assert_true(recent >= 48);      /* the oldest went first */
	/* A flood of unknown keys does not push valid keys out. */
	for (unsigned i = n; i < 4 * n; i++) {
		hash_of(i, h);
		auth_cache_put(c, h, NULL);
	}
	for (unsigned i = 0; i < 4 * n; i++) {
		hash_of(i, h);
		switch (auth_cache_get(c, h, &out)) {
		case AUTH_CACHE_HIT:
			valid -= i < n;
			break;
		case AUTH_CACHE_UNKNOWN:
			unknown++;
			break;
		default:
			break;
		}
	}
	assert_int_equal(valid, 0);     /* every valid key is still there */
	assert_true(unknown <= cap);
	auth_cache_free(c);
}

struct hammer {
	struct auth_cache *c;
	unsigned base;
	unsigned hits;
};

static void *hammer_run(void *arg)
{
	struct hammer *hm = arg;
	unsigned char h[AUTH_HASH_BYTES];
	struct auth_ident out, id;

	for (unsigned round = 0; round < 20000; round++) {
		unsigned k = hm->base + round % 500;

		hash_of(k, h);
		if (auth_cache_get(hm->c, h, &out) == AUTH_CACHE_HIT) {
			/* Never a torn entry: the ident matches its hash. */
			if (out.key_id != (int64_t)k + 1)
				return NULL;
			hm->hits++;
		} else {
			id = ident_of(k + 1, k % 7);
			auth_cache_put(hm->c, h, (round & 7) ? &id : NULL);
		}
		if (round % 1000 == 0)
			auth_cache_forget_user(hm->c, round % 7);
	}
	return hm;
}

static void cache_two_threads(void **state)
{
	struct auth_cache *c = auth_cache_new(600, 100000, 100000);
	struct hammer a = { .c = c, .base = 0 }, b = { .c = c, .base = 250 };
	pthread_t ta, tb;
	void *ra, *rb;

	(void)state;
	assert_int_equal(pthread_create(&ta, NULL, hammer_run, &a), 0);
	assert_int_equal(pthread_create(&tb, NULL, hammer_run, &b), 0);
	assert_int_equal(pthread_join(ta, &ra), 0);
	assert_int_equal(pthread_join(tb, &rb), 0);
	assert_ptr_equal(ra, &a);
	assert_ptr_equal(rb, &b);
	assert_true(a.hits > 1000 && b.hits > 1000);
	auth_cache_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(new_keys_are_well_formed_and_distinct),
		cmocka_unit_test(malformed_keys_are_refused),
		cmocka_unit_test(only_the_secret_makes_authentic_keys),
		cmocka_unit_test(key_format_known_answer),
		cmocka_unit_test(hash_depends_on_key_and_secret),
		cmocka_unit_test(mask_shows_eight_and_eight),
		cmocka_unit_test(cache_hit_then_stale),
		cmocka_unit_test(cache_unknown_expires),
		cmocka_unit_test(cache_forgets_key_user_all),
		cmocka_unit_test(cache_expire_all_keeps_valid_keys_stale),
		cmocka_unit_test(cache_capacity_is_bounded),
		cmocka_unit_test(cache_two_threads),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
