/* SPDX-License-Identifier: Apache-2.0 */
/* Runs a harness over files, without libFuzzer: every file named, and every
 * regular file in every directory named (in name order), is one input.
 * Each input is copied into a buffer of its exact size, so that a read past
 * its end is caught by AddressSanitizer in the sanitize build. A harness
 * reports a failure by aborting; this driver fails when a file cannot be
 * read or when there was no input at all (an empty corpus tests nothing). */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

/* Harnesses without set-up do not define it. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int read_whole(const char *path, uint8_t **out, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t cap = 0, n = 0;
	int ret = -1;

	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return -1;
	}
	for (;;) {
		size_t got;

		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 4096;
			uint8_t *p = realloc(buf, ncap);

			if (!p)
				goto out;
			buf = p;
			cap = ncap;
		}
		got = fread(buf + n, 1, cap - n, f);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		fprintf(stderr, "%s: read error\n", path);
		goto out;
	}
	/* Exact size: one byte past the input is outside the allocation. */
	*out = malloc(n ? n : 1);
	if (!*out)
		goto out;
	memcpy(*out, buf, n);
	*len = n;
	ret = 0;
out:
	free(buf);
	fclose(f);
	return ret;
}

static int run_file(const char *path, size_t *count)
{
	uint8_t *data;
	size_t len;

	if (read_whole(path, &data, &len) < 0)
		return -1;
	printf("input %s (%zu bytes)\n", path, len);
	fflush(stdout);
	LLVMFuzzerTestOneInput(data, len);
	free(data);
	(*count)++;
	return 0;
}

static int only_visible(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

static int run_dir(const char *dir, size_t *count)
{
	struct dirent **names;
	int n = scandir(dir, &names, only_visible, alphasort);
	int ret = 0;

	if (n < 0) {
		fprintf(stderr, "%s: %s\n", dir, strerror(errno));
		return -1;
	}
	for (int i = 0; i < n; i++) {
		char path[4096];
		struct stat st;

		if (ret == 0 && (size_t)snprintf(path, sizeof path, "%s/%s", dir,
						 names[i]->d_name) < sizeof path &&
		    stat(path, &st) == 0 && S_ISREG(st.st_mode) && run_file(path, count) < 0)
			ret = -1;
		free(names[i]);
	}
	free(names);
	return ret;
}

int main(int argc, char **argv)
{
	size_t count = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);
	for (int i = 1; i < argc; i++) {
		struct stat st;
		int rc;

		if (stat(argv[i], &st) != 0) {
			fprintf(stderr, "%s: %s\n", argv[i], strerror(errno));
			return 1;
		}
		rc = S_ISDIR(st.st_mode) ? run_dir(argv[i], &count) : run_file(argv[i], &count);
		if (rc < 0)
			return 1;
	}
	printf("%zu inputs replayed\n", count);
	return count ? 0 : 1;
}
