/* SPDX-License-Identifier: Apache-2.0 */
/* API keys: "sk-" and 43 characters of unpadded URL-safe base64 holding
 * 256 random bits. Only a keyed BLAKE2b hash of a key is ever stored, so a
 * copy of the database does not give working keys without the server's
 * secret. Pure functions, safe on any thread. */
#include <errno.h>
#include <string.h>

#include "auth.h"

#define KEY_BODY_LEN (AUTH_KEY_LEN - (sizeof AUTH_KEY_PREFIX - 1))
#define MASK_SIDE 8

int auth_key_new(char out[AUTH_KEY_LEN + 1])
{
	unsigned char raw[AUTH_KEY_RANDOM_BYTES];
	char *b64 = out + sizeof AUTH_KEY_PREFIX - 1;

	randombytes_buf(raw, sizeof raw);
	memcpy(out, AUTH_KEY_PREFIX, sizeof AUTH_KEY_PREFIX - 1);
	if (!sodium_bin2base64(b64, KEY_BODY_LEN + 1, raw, sizeof raw,
			       sodium_base64_VARIANT_URLSAFE_NO_PADDING)) {
		sodium_memzero(raw, sizeof raw);
		sodium_memzero(out, AUTH_KEY_LEN + 1);
		return -EIO;
	}
	sodium_memzero(raw, sizeof raw);
	out[AUTH_KEY_LEN] = '\0';
	return 0;
}

/* The 6-bit value of a URL-safe base64 character, or -1. */
static int b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

bool auth_key_well_formed(const char *key, size_t len)
{
	const size_t prefix = sizeof AUTH_KEY_PREFIX - 1;

	if (len != AUTH_KEY_LEN || memcmp(key, AUTH_KEY_PREFIX, prefix) != 0)
		return false;
	for (size_t i = prefix; i < len; i++)
		if (b64_value((unsigned char)key[i]) < 0)
			return false;
	/* 43 characters carry 258 bits for 256: the last two must be zero,
	 * as the encoder writes them. */
	return (b64_value((unsigned char)key[len - 1]) & 3) == 0;
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
