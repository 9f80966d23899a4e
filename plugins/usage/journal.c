/* SPDX-License-Identifier: Apache-2.0 */
/* The usage journal (journal.h). Runs on the main thread only. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "journal.h"

#define HASH_BYTES 16
#define HASH_HEX (HASH_BYTES * 2)
#define SEG_PREFIX "usage-"
#define SEG_SUFFIX ".journal"
#define OLD_SUFFIX ".jsonl"     /* segments of llmgate 0.2: JSON records */
#define SEG_NAME_MAX 64

struct journal {
	char *dir;
	int dir_fd;
	uint64_t segment_size;
	uint64_t *segs;         /* sequence numbers, oldest first */
	uint64_t *sizes;        /* their sizes in bytes */
	size_t nsegs, cap;
	uint64_t bytes;         /* the sum of sizes */
	int fd;                 /* the segment being written (segs[nsegs-1]), or -1 */
	uint64_t written;       /* its size */
	uint64_t next_seq;
};

struct seg_name {
	char s[SEG_NAME_MAX];
};

static struct seg_name seg_name_of(uint64_t seq)
{
	struct seg_name n;

	snprintf(n.s, sizeof n.s, SEG_PREFIX "%020" PRIu64 SEG_SUFFIX, seq);
	return n;
}

static int seg_push(struct journal *j, uint64_t seq, uint64_t size)
{
	if (j->nsegs == j->cap) {
		size_t cap = j->cap ? j->cap * 2 : 16;
		uint64_t *s = realloc(j->segs, cap * sizeof *s);

		if (!s)
			return -ENOMEM;
		j->segs = s;
		s = realloc(j->sizes, cap * sizeof *s);
		if (!s)
			return -ENOMEM;
		j->sizes = s;
		j->cap = cap;
	}
	j->segs[j->nsegs] = seq;
	j->sizes[j->nsegs++] = size;
	j->bytes += size;
	return 0;
}

struct seg_entry {
	uint64_t seq, size;
};

static int cmp_seg(const void *a, const void *b)
{
	uint64_t x = ((const struct seg_entry *)a)->seq, y = ((const struct seg_entry *)b)->seq;

	return (x > y) - (x < y);
}

/* Sequence numbers and sizes are parallel arrays: sort them together. */
static int sort_segments(struct journal *j)
{
	struct seg_entry *e = malloc(j->nsegs * sizeof *e);

	if (!e)
		return -ENOMEM;
	for (size_t i = 0; i < j->nsegs; i++)
		e[i] = (struct seg_entry){ j->segs[i], j->sizes[i] };
	qsort(e, j->nsegs, sizeof *e, cmp_seg);
	for (size_t i = 0; i < j->nsegs; i++) {
		j->segs[i] = e[i].seq;
		j->sizes[i] = e[i].size;
	}
	free(e);
	return 0;
}

static bool parse_seg_name(const char *name, const char *suffix, uint64_t *seq)
{
	size_t len = strlen(name), plen = strlen(SEG_PREFIX), slen = strlen(suffix);
	char *end;

	if (len <= plen + slen || strncmp(name, SEG_PREFIX, plen) != 0 ||
	    strcmp(name + len - slen, suffix) != 0)
		return false;
	errno = 0;
	*seq = strtoull(name + plen, &end, 10);
	return errno == 0 && end == name + len - slen;
}

/* The directory's entries from the start: a dup of dir_fd shares its
 * offset with the reads before. Ownership: the caller's (closedir()). */
static DIR *open_dir(struct journal *j)
{
	int fd = dup(j->dir_fd);
	DIR *d;

	if (fd < 0)
		return NULL;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return NULL;
	}
	rewinddir(d);
	return d;
}

/* Segments of llmgate 0.2 take today's name (renamed once the directory
 * has been read: never while reading it): their lines are checked and
 * replayed the same way, and read for what they are (journal.h). */
static int rename_old_segments(struct journal *j)
{
	DIR *d = open_dir(j);
	struct dirent *e;
	uint64_t seq, *old = NULL, *grown;
	size_t n = 0, cap = 0;
	int rc = 0;

	if (!d)
		return -errno;
	while (rc == 0 && (e = readdir(d))) {
		if (!parse_seg_name(e->d_name, OLD_SUFFIX, &seq))
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			grown = realloc(old, cap * sizeof *old);
			if (!grown) {
				rc = -ENOMEM;
				break;
			}
			old = grown;
		}
		old[n++] = seq;
	}
	closedir(d);
	for (size_t i = 0; rc == 0 && i < n; i++) {
		char name[SEG_NAME_MAX];

		snprintf(name, sizeof name, SEG_PREFIX "%020" PRIu64 OLD_SUFFIX, old[i]);
		if (renameat2(j->dir_fd, name, j->dir_fd, seg_name_of(old[i]).s,
			      RENAME_NOREPLACE) < 0)
			rc = -errno;
	}
	if (rc == 0 && n > 0 && fsync(j->dir_fd) < 0)
		rc = -errno;
	free(old);
	return rc;
}

static int scan_segments(struct journal *j)
{
	DIR *d;
	struct dirent *e;
	struct stat st;
	uint64_t seq;
	int rc = rename_old_segments(j);

	if (rc < 0)
		return rc;
	d = open_dir(j);
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (!parse_seg_name(e->d_name, SEG_SUFFIX, &seq))
			continue;
		if (fstatat(j->dir_fd, e->d_name, &st, 0) < 0) {
			rc = -errno;
			break;
		}
		rc = seg_push(j, seq, (uint64_t)st.st_size);
		if (rc < 0)
			break;
		if (seq >= j->next_seq)
			j->next_seq = seq + 1;
	}
	closedir(d);
	if (rc == 0 && j->nsegs > 1)
		rc = sort_segments(j);
	return rc;
}

int journal_open(const char *dir, uint64_t segment_size, struct journal **out)
{
	struct journal *j = calloc(1, sizeof *j);
	int rc;

	if (!j)
		return -ENOMEM;
	j->fd = -1;
	j->dir_fd = -1;
	j->segment_size = segment_size;
	j->next_seq = 1;
	j->dir = strdup(dir);
	if (!j->dir) {
		rc = -ENOMEM;
		goto fail;
	}
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		rc = -errno;
		goto fail;
	}
	j->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j->dir_fd < 0) {
		rc = -errno;
		goto fail;
	}
	rc = scan_segments(j);
	if (rc < 0)
		goto fail;
	*out = j;
	return 0;
fail:
	journal_close(j);
	return rc;
}

static int open_new_segment(struct journal *j)
{
	struct seg_name name = seg_name_of(j->next_seq);
	int rc;

	j->fd = openat(j->dir_fd, name.s, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	if (j->fd < 0)
		return -errno;
	rc = seg_push(j, j->next_seq, 0);
	if (rc < 0) {
		close(j->fd);
		j->fd = -1;
		unlinkat(j->dir_fd, name.s, 0);
		return rc;
	}
	j->next_seq++;
	j->written = 0;
	/* The new name must survive a crash too. */
	if (fsync(j->dir_fd) < 0)
		return -errno;
	return 0;
}

/* After a failed write the file holds an unknown part of it: ask. */
static void resync_size(struct journal *j)
{
	struct stat st;
	uint64_t *size = &j->sizes[j->nsegs - 1];

	if (fstat(j->fd, &st) < 0)
		return;
	j->bytes = j->bytes - *size + (uint64_t)st.st_size;
	*size = (uint64_t)st.st_size;
}

static void close_segment(struct journal *j)
{
	if (j->fd >= 0)
		close(j->fd);
	j->fd = -1;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void hash_hex(const char *text, size_t len, char hex[HASH_HEX + 1])
{
	unsigned char h[HASH_BYTES];

	crypto_generichash(h, sizeof h, (const unsigned char *)text, len, NULL, 0);
	sodium_bin2hex(hex, HASH_HEX + 1, h, sizeof h);
}

/* One buffer per batch, so a batch is one write and one fsync. */
static char *format_lines(const char *prefix, char *const *lines, size_t n, size_t *len)
{
	size_t plen = strlen(prefix), total = 0, off = 0;
	char *buf;

	for (size_t i = 0; i < n; i++)
		total += HASH_HEX + 2 + plen + strlen(lines[i]);
	buf = malloc(total + 1);
	if (!buf)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(lines[i]);
		char *payload = buf + off + HASH_HEX + 1;

		memcpy(payload, prefix, plen);
		memcpy(payload + plen, lines[i], l);
		hash_hex(payload, plen + l, buf + off);
		buf[off + HASH_HEX] = ' ';
		off += HASH_HEX + 1 + plen + l;
		buf[off++] = '\n';
	}
	*len = off;
	return buf;
}

int journal_append(struct journal *j, const char *prefix, char *const *lines, size_t n)
{
	size_t len;
	char *buf;
	int rc;

	if (n == 0)
		return 0;
	if (j->fd >= 0 && j->written >= j->segment_size)
		close_segment(j);
	if (j->fd < 0) {
		rc = open_new_segment(j);
		if (rc < 0)
			return rc;
	}
	buf = format_lines(prefix, lines, n, &len);
	if (!buf)
		return -ENOMEM;
	rc = write_all(j->fd, buf, len);
	free(buf);
	if (rc == 0 && fdatasync(j->fd) < 0)
		rc = -errno;
	if (rc < 0) {
		/* A partial line is skipped on replay by its hash; start afresh. */
		resync_size(j);
		close_segment(j);
		return rc;
	}
	j->written += len;
	j->sizes[j->nsegs - 1] += len;
	j->bytes += len;
	return 0;
}

size_t journal_pending(const struct journal *j)
{
	return j->nsegs;
}

uint64_t journal_bytes(const struct journal *j)
{
	return j->bytes;
}

static int read_file(int dir_fd, const char *name, char **out, size_t *len)
{
	int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC);
	size_t cap = 65536, used = 0;
	char *buf = NULL, *nb;
	ssize_t n;
	int rc = 0;

	if (fd < 0)
		return -errno;
	for (;;) {
		if (!buf || used + 1 >= cap) {
			if (buf)
				cap *= 2;
			nb = realloc(buf, cap);
			if (!nb) {
				rc = -ENOMEM;
				goto out;
			}
			buf = nb;
		}
		n = read(fd, buf + used, cap - used - 1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = -errno;
			goto out;
		}
		if (n == 0)
			break;
		used += (size_t)n;
	}
	buf[used] = '\0';
	*out = buf;
	*len = used;
	buf = NULL;
out:
	free(buf);
	close(fd);
	return rc;
}

static bool line_valid(const char *line, size_t len)
{
	char hex[HASH_HEX + 1];

	if (len < HASH_HEX + 2 || line[HASH_HEX] != ' ')
		return false;
	hash_hex(line + HASH_HEX + 1, len - HASH_HEX - 1, hex);
	return sodium_memcmp(hex, line, HASH_HEX) == 0;
}

static int segment_add(struct journal_segment *b, size_t *cap, const char *payload,
		       size_t len)
{
	char *copy;

	if (b->n == *cap) {
		size_t ncap = *cap ? *cap * 2 : 64;
		char **nl = realloc(b->lines, ncap * sizeof *nl);

		if (!nl)
			return -ENOMEM;
		b->lines = nl;
		*cap = ncap;
	}
	copy = strndup(payload, len);
	if (!copy)
		return -ENOMEM;
	b->lines[b->n++] = copy;
	return 0;
}

static int split_lines(char *buf, size_t len, struct journal_segment *b)
{
	size_t cap = 0;
	char *p = buf, *end = buf + len;

	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		int rc;

		/* A line without its newline was torn by a crash mid-write. */
		if (nl && line_valid(p, l)) {
			rc = segment_add(b, &cap, p + HASH_HEX + 1, l - HASH_HEX - 1);
			if (rc < 0)
				return rc;
		} else if (l > 0) {
			b->skipped++;
		}
		p += l + 1;
	}
	return 0;
}

int journal_read_oldest(struct journal *j, struct journal_segment *out)
{
	char *buf = NULL;
	size_t len = 0;
	int rc;

	memset(out, 0, sizeof *out);
	if (j->nsegs == 0)
		return -ENOENT;
	if (j->nsegs == 1 && j->fd >= 0)
		close_segment(j);
	out->seq = j->segs[0];
	rc = read_file(j->dir_fd, seg_name_of(out->seq).s, &buf, &len);
	if (rc < 0)
		return rc;
	rc = split_lines(buf, len, out);
	free(buf);
	if (rc < 0)
		journal_segment_free(out);
	return rc;
}

int journal_drop(struct journal *j, uint64_t seq)
{
	if (j->nsegs == 0 || j->segs[0] != seq)
		return -ENOENT;
	if (j->nsegs == 1 && j->fd >= 0)
		close_segment(j);
	if (unlinkat(j->dir_fd, seg_name_of(seq).s, 0) < 0 && errno != ENOENT)
		return -errno;
	j->bytes -= j->sizes[0];
	memmove(j->segs, j->segs + 1, (j->nsegs - 1) * sizeof *j->segs);
	memmove(j->sizes, j->sizes + 1, (j->nsegs - 1) * sizeof *j->sizes);
	j->nsegs--;
	if (fsync(j->dir_fd) < 0)
		return -errno;
	return 0;
}

void journal_segment_free(struct journal_segment *b)
{
	for (size_t i = 0; i < b->n; i++)
		free(b->lines[i]);
	free(b->lines);
	memset(b, 0, sizeof *b);
}

void journal_close(struct journal *j)
{
	if (!j)
		return;
	close_segment(j);
	if (j->dir_fd >= 0)
		close(j->dir_fd);
	free(j->segs);
	free(j->sizes);
	free(j->dir);
	free(j);
}
