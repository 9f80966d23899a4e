/* SPDX-License-Identifier: Apache-2.0 */
/* multipart/form-data: the delimiter is "--" and the boundary; the body is
 * an optional preamble, then parts that each start with CRLF after a
 * delimiter, a header block ended by an empty line and the data, which
 * ends at the CRLF before the next delimiter; the last delimiter is
 * followed by "--". */
#include "multipart.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "runtime.h"

#define VALUE_MAX 1024          /* a name, file name or content type */

/* The delimiter ("--" and the boundary parameter of a multipart/form-data
 * content type) in the request's memory, or NULL. */
static char *delimiter(struct lg_req *req, const char *ctype)
{
	const char *p, *end;
	char *b;

	if (!ctype || strncasecmp(ctype, "multipart/form-data", 19) != 0)
		return NULL;
	for (p = ctype + 19; (p = strchr(p, ';')); ) {
		p++;
		while (*p == ' ' || *p == '\t')
			p++;
		if (strncasecmp(p, "boundary=", 9) != 0)
			continue;
		p += 9;
		if (*p == '"') {
			end = strchr(++p, '"');
			if (!end)
				return NULL;
		} else {
			end = p + strcspn(p, "; \t");
		}
		/* RFC 2046: 1 to 70 characters. */
		if (end == p || end - p > 70)
			return NULL;
		b = lg_req_alloc(req, (size_t)(end - p) + 3);
		if (!b)
			return NULL;
		b[0] = b[1] = '-';
		memcpy(b + 2, p, (size_t)(end - p));
		return b;
	}
	return NULL;
}

/* A copy of @len bytes at @s, NUL-terminated, or NULL. */
static char *copy_value(struct lg_req *req, const char *s, size_t len)
{
	char *out;

	if (len > VALUE_MAX)
		return NULL;
	out = lg_req_alloc(req, len + 1);
	if (out)
		memcpy(out, s, len);
	return out;
}

/* The value of parameter @key (e.g. "name") in a header line, quoted or
 * not; false if absent. A parameter counts only after ';' or a blank, so
 * that name= does not match filename=. */
static bool header_param(const char *line, const char *end, const char *key,
			 const char **v, size_t *vlen)
{
	size_t klen = strlen(key);

	for (const char *q = line + 1; q + klen + 1 <= end; q++) {
		const char *s, *e;

		if (strncasecmp(q, key, klen) != 0 || q[klen] != '=' ||
		    (q[-1] != ';' && q[-1] != ' ' && q[-1] != '\t'))
			continue;
		s = q + klen + 1;
		if (s < end && *s == '"') {
			s++;
			e = memchr(s, '"', (size_t)(end - s));
			if (!e)
				return false;
		} else {
			for (e = s; e < end && *e != ';' && *e != ' ' && *e != '\t'; e++)
				;
		}
		*v = s;
		*vlen = (size_t)(e - s);
		return true;
	}
	return false;
}

/* The header value after "name:" on a line, without surrounding blanks. */
static bool header_value(const char *line, const char *end, const char *name,
			 const char **v, size_t *vlen)
{
	size_t nlen = strlen(name);

	if ((size_t)(end - line) <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
		return false;
	line += nlen + 1;
	while (line < end && (*line == ' ' || *line == '\t'))
		line++;
	while (end > line && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	*v = line;
	*vlen = (size_t)(end - line);
	return true;
}

/* Fills @part from the header block @head (CRLF-separated lines). Returns
 * 1 for a part with a name, 0 for one without, -1 if malformed. */
static int read_head(struct lg_req *req, const char *head, size_t len, struct lg_form_part *part)
{
	const char *p = head, *end = head + len, *v;
	size_t vlen;

	if (memchr(head, '\0', len))
		return -1;
	*part = (struct lg_form_part){ 0 };
	while (p < end) {
		const char *eol = memchr(p, '\r', (size_t)(end - p));
		const char *line_end = eol ? eol : end;

		if (header_value(p, line_end, "content-disposition", &v, &vlen)) {
			const char *line = v - 1;

			if (header_param(line, line_end, "name", &v, &vlen) &&
			    !(part->name = copy_value(req, v, vlen)))
				return -1;
			if (header_param(line, line_end, "filename", &v, &vlen) &&
			    !(part->filename = copy_value(req, v, vlen)))
				return -1;
		} else if (header_value(p, line_end, "content-type", &v, &vlen)) {
			if (!(part->content_type = copy_value(req, v, vlen)))
				return -1;
		}
		p = line_end + 2;
	}
	return part->name ? 1 : 0;
}

/* Where the data that starts at @value ends: the CRLF before the next
 * delimiter; NULL if there is none. */
static const char *data_end(const char *value, const char *end, const char *delim, size_t dlen)
{
	for (const char *p = value; ; p++) {
		p = memmem(p, (size_t)(end - p), delim, dlen);
		if (!p)
			return NULL;
		if (p - value >= 2 && memcmp(p - 2, "\r\n", 2) == 0)
			return p - 2;
	}
}

int lg_multipart_parse(struct lg_req *req, const char *content_type, struct lg_str body,
		       struct lg_form_part **parts, size_t *n, char *err, size_t errlen)
{
	const char *start = body.ptr, *end = body.ptr + body.len, *p;
	const char *delim = delimiter(req, content_type);
	size_t dlen = delim ? strlen(delim) : 0, count = 0, seen = 0;
	struct lg_form_part *out;

	*parts = NULL;
	*n = 0;
	if (!delim) {
		snprintf(err, errlen, "The body must be multipart/form-data with a boundary of 1 "
			 "to 70 characters.");
		return -1;
	}
	out = lg_req_alloc(req, LG_MULTIPART_MAX_PARTS * sizeof *out);
	if (!out)
		goto malformed;
	p = start;
	if (body.len < dlen || memcmp(p, delim, dlen) != 0) {
		/* A preamble, then CRLF and the first delimiter. */
		p = memmem(start, body.len, delim, dlen);
		if (!p || p < start + 2 || memcmp(p - 2, "\r\n", 2) != 0)
			goto malformed;
	}
	for (;;) {
		const char *head, *head_end, *value, *value_end;
		size_t room;
		int rc;

		p += dlen;
		if (end - p >= 2 && memcmp(p, "--", 2) == 0)
			break;
		if (end - p < 2 || memcmp(p, "\r\n", 2) != 0)
			goto malformed;
		if (seen++ == LG_MULTIPART_MAX_PARTS) {
			snprintf(err, errlen, "The multipart/form-data body has more than %d parts.",
				 LG_MULTIPART_MAX_PARTS);
			return -1;
		}
		head = p + 2;
		room = (size_t)(end - head);
		if (head + 2 <= end && memcmp(head, "\r\n", 2) == 0) {
			head_end = head - 2;    /* a part without headers */
		} else {
			head_end = memmem(head, room < LG_MULTIPART_MAX_HEAD ? room
					  : LG_MULTIPART_MAX_HEAD, "\r\n\r\n", 4);
			if (!head_end)
				goto malformed;
		}
		value = head_end + 4;
		value_end = data_end(value, end, delim, dlen);
		if (!value_end)
			goto malformed;
		p = value_end + 2;
		rc = head_end > head ? read_head(req, head, (size_t)(head_end - head), &out[count]) : 0;
		if (rc < 0)
			goto malformed;
		if (rc == 0)
			continue;
		out[count++].data = (struct lg_str){ value, (size_t)(value_end - value) };
	}
	*parts = out;
	*n = count;
	return 0;
malformed:
	snprintf(err, errlen, "The multipart/form-data body is malformed.");
	return -1;
}
