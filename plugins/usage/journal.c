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
#define SEG_SUFFIX ".jsonl"
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

static void seg_name(char *buf, size_t len, uint64_t seq)
{
	snprintf(buf, len, SEG_PREFIX "%020" PRIu64 SEG_SUFFIX, seq);
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

static bool parse_seg_name(const char *name, uint64_t *seq)
{
	size_t len = strlen(name), plen = strlen(SEG_PREFIX), slen = strlen(SEG_SUFFIX);
	char *end;

	if (len <= plen + slen || strncmp(name, SEG_PREFIX, plen) != 0 ||
	    strcmp(name + len - slen, SEG_SUFFIX) != 0)
		return false;
	errno = 0;
	*seq = strtoull(name + plen, &end, 10);
	return errno == 0 && end == name + len - slen;
}

static int scan_segments(struct journal *j)
{
	DIR *d = fdopendir(dup(j->dir_fd));
	struct dirent *e;
	struct stat st;
	uint64_t seq;
	int rc = 0;

	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		if (!parse_seg_name(e->d_name, &seq))
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
	char name[SEG_NAME_MAX];
	int rc;

	seg_name(name, sizeof name, j->next_seq);
	j->fd = openat(j->dir_fd, name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
	if (j->fd < 0)
		return -errno;
	rc = seg_push(j, j->next_seq, 0);
	if (rc < 0) {
		close(j->fd);
		j->fd = -1;
		unlinkat(j->dir_fd, name, 0);
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
static char *format_lines(char *const *lines, size_t n, size_t *len)
{
	size_t total = 0, off = 0;
	char *buf;

	for (size_t i = 0; i < n; i++)
		total += HASH_HEX + 2 + strlen(lines[i]);
	buf = malloc(total + 1);
	if (!buf)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		size_t l = strlen(lines[i]);

		hash_hex(lines[i], l, buf + off);
		off += HASH_HEX;
		buf[off++] = ' ';
		memcpy(buf + off, lines[i], l);
		off += l;
		buf[off++] = '\n';
	}
	*len = off;
	return buf;
}

int journal_append(struct journal *j, char *const *lines, size_t n)
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
	buf = format_lines(lines, n, &len);
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

static int batch_add(struct journal_batch *b, size_t *cap, const char *json, size_t len)
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
	copy = strndup(json, len);
	if (!copy)
		return -ENOMEM;
	b->lines[b->n++] = copy;
	return 0;
}

static int split_lines(char *buf, size_t len, struct journal_batch *b)
{
	size_t cap = 0;
	char *p = buf, *end = buf + len;

	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t l = nl ? (size_t)(nl - p) : (size_t)(end - p);
		int rc;

		/* A line without its newline was torn by a crash mid-write. */
		if (nl && line_valid(p, l)) {
			rc = batch_add(b, &cap, p + HASH_HEX + 1, l - HASH_HEX - 1);
			if (rc < 0)
				return rc;
		} else if (l > 0) {
			b->skipped++;
		}
		p += l + 1;
	}
	return 0;
}

int journal_read_oldest(struct journal *j, struct journal_batch *out)
{
	char name[SEG_NAME_MAX];
	char *buf = NULL;
	size_t len = 0;
	int rc;

	memset(out, 0, sizeof *out);
	if (j->nsegs == 0)
		return -ENOENT;
	if (j->nsegs == 1 && j->fd >= 0)
		close_segment(j);
	out->seq = j->segs[0];
	seg_name(name, sizeof name, out->seq);
	rc = read_file(j->dir_fd, name, &buf, &len);
	if (rc < 0)
		return rc;
	rc = split_lines(buf, len, out);
	free(buf);
	if (rc < 0)
		journal_batch_free(out);
	return rc;
}

int journal_drop(struct journal *j, uint64_t seq)
{
	char name[SEG_NAME_MAX];

	if (j->nsegs == 0 || j->segs[0] != seq)
		return -ENOENT;
	if (j->nsegs == 1 && j->fd >= 0)
		close_segment(j);
	seg_name(name, sizeof name, seq);
	if (unlinkat(j->dir_fd, name, 0) < 0 && errno != ENOENT)
		return -errno;
	j->bytes -= j->sizes[0];
	memmove(j->segs, j->segs + 1, (j->nsegs - 1) * sizeof *j->segs);
	memmove(j->sizes, j->sizes + 1, (j->nsegs - 1) * sizeof *j->sizes);
	j->nsegs--;
	if (fsync(j->dir_fd) < 0)
		return -errno;
	return 0;
}

void journal_batch_free(struct journal_batch *b)
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
