/* SPDX-License-Identifier: Apache-2.0 */
/* API keys: "sk-" and 48 characters of unpadded URL-safe base64 holding
 * 256 random bits and a 32-bit tag, the first 4 bytes of BLAKE2b keyed
 * with the server secret over the random bytes (personalised, so that it
 * is never the same function as the stored hash). The tag lets the server
 * refuse a made-up key without asking its cache or PostgreSQL: a flood of
 * random keys costs one hash each, no query. Only a keyed BLAKE2b hash of
 * a whole key is ever stored, so a copy of the database does not give
 * working keys without the server's secret. Pure functions, safe on any
 * thread. */
#include <errno.h>
#include <string.h>

#include "auth.h"

#define PREFIX_LEN (sizeof AUTH_KEY_PREFIX - 1)
#define KEY_BODY_LEN (AUTH_KEY_LEN - PREFIX_LEN)
#define KEY_RAW_BYTES (AUTH_KEY_RANDOM_BYTES + AUTH_KEY_TAG_BYTES)
#define MASK_SIDE 8
/* BLAKE2b's personalisation: 16 bytes exactly */
static const unsigned char tag_person[crypto_generichash_blake2b_PERSONALBYTES] =
	"llmgate:key-tag1";

_Static_assert(KEY_RAW_BYTES % 3 == 0, "the base64 of a key has no partial group");
_Static_assert(KEY_BODY_LEN == 48, "a key is sk- and 48 characters");

/* The tag of @random: the first bytes of its keyed, personalised BLAKE2b. */
static int key_tag(const unsigned char secret[AUTH_SECRET_BYTES],
		   const unsigned char random[AUTH_KEY_RANDOM_BYTES],
		   unsigned char tag[AUTH_KEY_TAG_BYTES])
{
	unsigned char full[crypto_generichash_blake2b_BYTES];
	int rc;

	rc = crypto_generichash_blake2b_salt_personal(full, sizeof full, random,
						      AUTH_KEY_RANDOM_BYTES, secret,
						      AUTH_SECRET_BYTES, NULL, tag_person);
	memcpy(tag, full, AUTH_KEY_TAG_BYTES);
	sodium_memzero(full, sizeof full);
	return rc;
}

int auth_key_new(const unsigned char secret[AUTH_SECRET_BYTES], char out[AUTH_KEY_LEN + 1])
{
	unsigned char raw[KEY_RAW_BYTES];
	char *b64 = out + PREFIX_LEN;
	int rc = -EIO;

	randombytes_buf(raw, AUTH_KEY_RANDOM_BYTES);
	memcpy(out, AUTH_KEY_PREFIX, PREFIX_LEN);
	if (key_tag(secret, raw, raw + AUTH_KEY_RANDOM_BYTES) != 0 ||
	    !sodium_bin2base64(b64, KEY_BODY_LEN + 1, raw, sizeof raw,
			       sodium_base64_VARIANT_URLSAFE_NO_PADDING)) {
		sodium_memzero(out, AUTH_KEY_LEN + 1);
		goto out;
	}
	out[AUTH_KEY_LEN] = '\0';
	rc = 0;
out:
	sodium_memzero(raw, sizeof raw);
	return rc;
}

/* Whether @c is in the URL-safe base64 alphabet. */
static bool b64_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '-' || c == '_';
}

bool auth_key_well_formed(const char *key, size_t len)
{
	if (len != AUTH_KEY_LEN || memcmp(key, AUTH_KEY_PREFIX, PREFIX_LEN) != 0)
		return false;
	for (size_t i = PREFIX_LEN; i < len; i++)
		if (!b64_char((unsigned char)key[i]))
			return false;
	return true;
}

bool auth_key_authentic(const unsigned char secret[AUTH_SECRET_BYTES], const char *key,
			size_t len)
{
	unsigned char raw[KEY_RAW_BYTES], tag[AUTH_KEY_TAG_BYTES];
	size_t raw_len = 0;
	bool ok = false;

	if (!auth_key_well_formed(key, len))
		return false;
	if (sodium_base642bin(raw, sizeof raw, key + PREFIX_LEN, KEY_BODY_LEN, NULL, &raw_len,
			      NULL, sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 ||
	    raw_len != sizeof raw)
		goto out;
	if (key_tag(secret, raw, tag) != 0)
		goto out;
	ok = sodium_memcmp(tag, raw + AUTH_KEY_RANDOM_BYTES, AUTH_KEY_TAG_BYTES) == 0;
out:
	sodium_memzero(raw, sizeof raw);
	sodium_memzero(tag, sizeof tag);
	return ok;
}

void auth_key_hash(const unsigned char secret[AUTH_SECRET_BYTES], const char *key, size_t len,
		   unsigned char out[AUTH_HASH_BYTES])
{
	if (crypto_generichash(out, AUTH_HASH_BYTES, (const unsigned char *)key, len, secret,
			       AUTH_SECRET_BYTES) != 0)
		randombytes_buf(out, AUTH_HASH_BYTES);  /* fail closed: matches nothing */
}

void auth_key_mask(const char *key, char out[AUTH_MASKED_LEN + 1])
{
	size_t len = strlen(key);

	if (len < 2 * MASK_SIDE) {
		memcpy(out, "...", 4);
		return;
	}
	memcpy(out, key, MASK_SIDE);
	memcpy(out + MASK_SIDE, "...", 3);
	memcpy(out + MASK_SIDE + 3, key + len - MASK_SIDE, MASK_SIDE);
	out[AUTH_MASKED_LEN] = '\0';
}

void auth_hash_bytea(const unsigned char hash[AUTH_HASH_BYTES], char out[AUTH_HASH_HEX_LEN + 1])
{
	out[0] = '\\';
	out[1] = 'x';
	sodium_bin2hex(out + 2, AUTH_HASH_HEX_LEN - 1, hash, AUTH_HASH_BYTES);
}
