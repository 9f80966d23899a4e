/* SPDX-License-Identifier: Apache-2.0 */
/* The usage journal: records the database did not take, kept on disk in
 * append-only segments (usage-<seq>.journal) until they are committed. One
 * line per record: "<hash> <payload>\n", the hash (BLAKE2b-128, hex)
 * covering the payload, so a torn or damaged line is recognised and skipped
 * on replay. The payload is the prefix given to journal_append() followed
 * by the record (usage.c: "<batch id> <binary COPY tuple in base64>");
 * segments written by
 * llmgate 0.2 (usage-<seq>.jsonl, renamed when the journal opens) hold
 * JSON objects instead. */
#ifndef LLMGATE_USAGE_JOURNAL_H
#define LLMGATE_USAGE_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct journal;

/* A segment read back: the payloads of its valid lines, in order.
 * Ownership: the caller's; free it with journal_segment_free(). */
struct journal_segment {
	char **lines;           /* payloads */
	size_t n;
	size_t skipped;         /* lines whose hash did not match */
	uint64_t seq;           /* the segment they came from */
};

/* journal_open() - use @dir (created if missing); finds the segments a
 * previous run left. Returns 0 or a negative errno. */
int journal_open(const char *dir, uint64_t segment_size, struct journal **out);
/* journal_append() - write @n records, each after @prefix, and fsync them.
 * Records contain no newline. 0 or -errno. */
int journal_append(struct journal *j, const char *prefix, char *const *lines, size_t n);
/* journal_pending() - segments waiting to be replayed. */
size_t journal_pending(const struct journal *j);
/* journal_bytes() - the size of every segment on disk together. */
uint64_t journal_bytes(const struct journal *j);
/* journal_read_oldest() - the oldest segment's records; the segment is
 * closed first if it is the one being written. 0, -ENOENT if none, -errno. */
int journal_read_oldest(struct journal *j, struct journal_segment *out);
/* journal_drop() - delete segment @seq once its records are committed. */
int journal_drop(struct journal *j, uint64_t seq);
void journal_segment_free(struct journal_segment *b);
void journal_close(struct journal *j);

#endif
