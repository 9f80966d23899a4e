/* SPDX-License-Identifier: Apache-2.0 */
/* The libFuzzer entry points every harness defines. The same harness runs
 * under libFuzzer (fuzzing) and under fuzz_replay.c (its seed corpus as a
 * regression test in the normal suite). */
#ifndef LG_FUZZ_H
#define LG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* One input. Returns 0; a broken property aborts. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional one-time set-up, called once before the first input. */
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A property of the code under test does not hold: report and abort, so
 * that libFuzzer keeps the input and the replay test fails. */
#define FUZZ_CHECK(cond) do {                                                   \
	if (!(cond)) {                                                          \
		fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__, \
			#cond);                                                 \
		abort();                                                        \
	}                                                                       \
} while (0)

#endif
