/* SPDX-License-Identifier: Apache-2.0 */
/* multipart/form-data bodies (RFC 7578): the parts of an upload, read in
 * one pass without copying their data. Used by /v1/audio/transcriptions
 * and by host->req_form(). */
#ifndef LG_MULTIPART_H
#define LG_MULTIPART_H

#include <stddef.h>

#include <llmgate/http.h>

#define LG_MULTIPART_MAX_PARTS 64        /* parts of one body */
#define LG_MULTIPART_MAX_HEAD 8192       /* the header block of one part */

struct lg_req;

/* Reads @body, sent with @content_type, into an array of parts in the
 * request's memory: names, file names and content types are copied and
 * NUL-terminated; each part's data points into @body, which must outlive
 * them. Parts without a name are skipped. Returns 0, or -1 with a message
 * for the client (a 400) in @err. Thread: the request's worker. */
int lg_multipart_parse(struct lg_req *req, const char *content_type, struct lg_str body,
		       struct lg_form_part **parts, size_t *n, char *err, size_t errlen);

#endif
