/* SPDX-License-Identifier: Apache-2.0 */
/* rag: /v1/documents, their chunks, and /v1/parse-beta (spec §3.5, §10.2).
 *
 * An upload is read from the multipart body, parsed and cut into chunks on
 * the work pool (a PDF of megabytes must not hold a worker's loop), then
 * embedded through the registry, and only then stored: the document and
 * all its chunks in one statement. A file refused or an embedding that
 * fails therefore leaves nothing behind. Only a collection's owner adds or
 * deletes; whoever reads a collection reads its documents; everybody else
 * gets the 404 of a document that does not exist. The document's name is a
 * label, stored as given and never used as a path. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api.h"
#include "rag.h"

#define NAME_MAX_CHARS 255
#define SEPARATORS_MAX 64
#define CHUNKS_ADD_MAX 64
#define CHUNK_SIZE_MAX 100000   /* characters; a tsvector holds at most 1 MiB */
#define UPLOAD_MARGIN (1u << 20) /* multipart framing and fields beyond the file */
#define META_KEYS_MAX 8
#define META_TEXT_MAX 255
#define META_LIST_MAX 8
#define META_NUMBER_MAX 9999999999999999.0

#define NO_FORMS "File uploads are not available in this version of llmgate."

#define DOCUMENT_JSON \
	"json_build_object('object', 'document', 'id', d.id, 'name', d.name, " \
	"'collection_id', d.collection_id, 'created', extract(epoch FROM d.created)::bigint, " \
	"'chunks', (SELECT count(*) FROM chunk k WHERE k.document_id = d.id))"

#define CHUNK_JSON \
	"json_build_object('object', 'chunk', 'id', k.id, 'collection_id', k.collection_id, " \
	"'document_id', k.document_id, 'position', k.position, 'content', k.content, " \
	"'metadata', k.metadata, 'created', extract(epoch FROM k.created)::bigint)"

#define READABLE_DOCUMENT \
	"FROM document d JOIN collection c ON c.id = d.collection_id " \
	"WHERE d.id = $2::bigint AND " RAG_READABLE_SQL

/* One chunk row from jsonb q.e = {content, metadata, embedding?}. */
#define CHUNK_VALUES \
	"q.e->>'content', NULLIF(q.e->'metadata', 'null'::jsonb), $4::regconfig, " \
	"to_tsvector($4::regconfig, q.e->>'content'), " \
	"CASE WHEN q.e ? 'embedding' THEN ARRAY(SELECT x.v::real FROM " \
	"jsonb_array_elements_text(q.e->'embedding') WITH ORDINALITY AS x(v, n) " \
	"ORDER BY x.n) END"

/* $1 collection, $2 owner, $3 [{name, size, chunks: [...]}], $4 language.
 * Document ids are drawn first so that chunks can name them. */
static const char insert_documents_sql[] =
	"WITH c AS (SELECT id FROM collection WHERE id = $1::bigint AND user_id = $2::bigint "
	"FOR SHARE), "
	"src AS (SELECT s.e, nextval(pg_get_serial_sequence('document', 'id')) AS id "
	"FROM c, jsonb_array_elements($3::jsonb) WITH ORDINALITY AS s(e, o)), "
	"d AS (INSERT INTO document (id, collection_id, name, size) "
	"SELECT src.id, c.id, src.e->>'name', (src.e->>'size')::bigint FROM c, src RETURNING id), "
	"k AS (INSERT INTO chunk (collection_id, document_id, position, content, metadata, "
	"language, tsv, embedding) SELECT c.id, src.id, (q.o - 1)::int, " CHUNK_VALUES " "
	"FROM c, src, jsonb_array_elements(src.e->'chunks') WITH ORDINALITY AS q(e, o) "
	"RETURNING 1) "
	"SELECT json_build_object('id', min(d.id), 'ids', json_agg(d.id ORDER BY d.id), "
	"'chunks', (SELECT count(*) FROM k))::text FROM d HAVING count(*) > 0";

/* $1 owner, $2 document, $3 [{content, metadata, embedding?}], $4 language. */
static const char insert_chunks_sql[] =
	"WITH d AS (SELECT d.id, d.collection_id FROM document d "
	"JOIN collection c ON c.id = d.collection_id "
	"WHERE d.id = $2::bigint AND c.user_id = $1::bigint FOR UPDATE OF d), "
	"base AS (SELECT coalesce(max(position) + 1, 0) AS p FROM chunk "
	"WHERE document_id = (SELECT id FROM d)), "
	"k AS (INSERT INTO chunk (collection_id, document_id, position, content, metadata, "
	"language, tsv, embedding) SELECT d.collection_id, d.id, base.p + (q.o - 1)::int, "
	CHUNK_VALUES " FROM d, base, jsonb_array_elements($3::jsonb) WITH ORDINALITY AS q(e, o) "
	"RETURNING *) "
	"SELECT json_build_object('object', 'list', 'data', json_agg(" CHUNK_JSON
	" ORDER BY k.position))::text FROM k HAVING count(*) > 0";

static const char owned_collection_sql[] =
	"SELECT 1 FROM collection WHERE id = $2::bigint AND user_id = $1::bigint";
static const char owned_document_sql[] =
	"SELECT d.name FROM document d JOIN collection c ON c.id = d.collection_id "
	"WHERE d.id = $2::bigint AND c.user_id = $1::bigint";
static const char readable_document_sql[] = "SELECT 1 " READABLE_DOCUMENT;
static const char get_document_sql[] = "SELECT " DOCUMENT_JSON "::text " READABLE_DOCUMENT;
static const char delete_document_sql[] =
	"DELETE FROM document d USING collection c WHERE d.id = $2::bigint "
	"AND c.id = d.collection_id AND c.user_id = $1::bigint RETURNING d.collection_id";
static const char get_chunk_sql[] =
	"SELECT " CHUNK_JSON "::text FROM chunk k JOIN collection c ON c.id = k.collection_id "
	"WHERE k.document_id = $2::bigint AND k.id = $3::bigint AND " RAG_READABLE_SQL;
static const char delete_chunk_sql[] =
	"DELETE FROM chunk k USING collection c WHERE k.document_id = $2::bigint "
	"AND k.id = $3::bigint AND c.id = k.collection_id AND c.user_id = $1::bigint "
	"RETURNING k.collection_id";

static const char *const document_sort_by[] = { "id", "name", "created", NULL };
static const char *const document_sort_columns[] = { "d.id", "d.name", "d.created", NULL };
static const char *const chunk_sort_by[] = { "id", "position", "created", NULL };
static const char *const chunk_sort_columns[] = { "k.id", "k.position", "k.created", NULL };

/* ---- metadata (spec §10.2, 0.4.0 constraints) ---- */

static bool meta_scalar_ok(const json_t *v, const char *key, char *why, size_t whylen)
{
	size_t n;

	switch (json_typeof(v)) {
	case JSON_STRING:
		n = rag_utf8_chars(json_string_value(v), json_string_length(v));
		if (n >= 1 && n <= META_TEXT_MAX)
			return true;
		snprintf(why, whylen, "metadata: '%s' must be 1 to %d characters", key,
			 META_TEXT_MAX);
		return false;
	case JSON_INTEGER:
	case JSON_REAL:
		if (json_number_value(v) >= -META_NUMBER_MAX &&
		    json_number_value(v) <= META_NUMBER_MAX)
			return true;
		snprintf(why, whylen, "metadata: '%s' is out of range", key);
		return false;
	case JSON_TRUE:
	case JSON_FALSE:
	case JSON_NULL:
		return true;
	default:
		snprintf(why, whylen, "metadata: '%s' must be a string, a number, a boolean, "
			 "null or a list of those", key);
		return false;
	}
}

/* 1 to 8 keys of 1 to 255 characters; scalar values or short lists. */
static bool meta_ok(const json_t *meta, char *why, size_t whylen)
{
	const char *key;
	json_t *v, *item;
	size_t i, n;

	if (!json_is_object(meta)) {
		snprintf(why, whylen, "metadata: must be a JSON object");
		return false;
	}
	if (json_object_size(meta) < 1 || json_object_size(meta) > META_KEYS_MAX) {
		snprintf(why, whylen, "metadata: 1 to %d keys", META_KEYS_MAX);
		return false;
	}
	json_object_foreach((json_t *)meta, key, v) {
		n = rag_utf8_chars(key, strlen(key));
		if (n < 1 || n > META_TEXT_MAX) {
			snprintf(why, whylen, "metadata: keys must be 1 to %d characters",
				 META_TEXT_MAX);
			return false;
		}
		if (!json_is_array(v)) {
			if (!meta_scalar_ok(v, key, why, whylen))
				return false;
			continue;
		}
		if (json_array_size(v) > META_LIST_MAX) {
			snprintf(why, whylen, "metadata: '%s' holds at most %d items", key,
				 META_LIST_MAX);
			return false;
		}
		json_array_foreach(v, i, item)
			if (json_is_array(item) || !meta_scalar_ok(item, key, why, whylen))
				return false;
	}
	return true;
}

/* ---- the multipart form ---- */

struct upload_doc {
	char *name;
	int64_t size;
	json_t *metadata;               /* owned; with document_name */
	struct rag_chunks chunks;
};

struct upload {
	struct rag *r;
	struct lg_req *req;
	const struct lg_principal *who;
	const char *owner_text, *collection_text;
	/* the form */
	const struct lg_form_part *file;
	enum rag_format fmt;
	const char *name;
	json_t *metadata;               /* owned, or NULL */
	bool disable_chunking;
	struct rag_chunking chunking;
	const char *separators[SEPARATORS_MAX + 1];
	const char *page_range;         /* parse-beta */
	/* made on the work pool */
	int status;                     /* 0, or the HTTP status of the refusal */
	char why[512];
	struct rag_doc doc;
	struct upload_doc *docs;
	size_t ndocs, nchunks;
	const char **texts;             /* every chunk's text, while they are embedded */
	bool gone;                      /* the client left */
};

static void upload_free(struct upload *u)
{
	for (size_t i = 0; i < u->ndocs; i++) {
		free(u->docs[i].name);
		json_decref(u->docs[i].metadata);
		rag_chunks_free(&u->docs[i].chunks);
	}
	free(u->docs);
	u->docs = NULL;
	u->ndocs = 0;
	free(u->texts);
	u->texts = NULL;
	rag_doc_free(&u->doc);
	json_decref(u->metadata);
	u->metadata = NULL;
}

static void upload_fail(struct upload *u, int status, const char *why)
{
	upload_free(u);
	u->r->host->reply_error(u->req, status, "%s", why);
}

static void upload_closed(struct lg_req *req, void *arg)
{
	struct upload *u = arg;

	(void)req;
	u->gone = true;
}

/* A plain field's value as text in the request's memory; NUL refused. */
static const char *field_text(struct upload *u, const struct lg_form_part *p)
{
	if (memchr(p->data.ptr, '\0', p->data.len)) {
		u->r->host->reply_error(u->req, 422, "%s: must not contain NUL", p->name);
		return NULL;
	}
	return api_printf(u->r->host, u->req, "%.*s", (int)p->data.len, p->data.ptr);
}

static bool field_int(struct upload *u, const struct lg_form_part *p, int64_t min, int64_t max,
		      size_t *out)
{
	const char *s = field_text(u, p);
	char *end;
	long long v;

	if (!s)
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		u->r->host->reply_error(u->req, 422, "%s: expected an integer from %" PRId64
					" to %" PRId64, p->name, min, max);
		return false;
	}
	*out = (size_t)v;
	return true;
}

static bool field_bool(struct upload *u, const struct lg_form_part *p, bool *out)
{
	const char *s = field_text(u, p);

	if (!s)
		return false;
	if (!strcmp(s, "true") || !strcmp(s, "1") || !strcmp(s, "True")) {
		*out = true;
		return true;
	}
	if (!strcmp(s, "false") || !strcmp(s, "0") || !strcmp(s, "False") || !*s) {
		*out = false;
		return true;
	}
	u->r->host->reply_error(u->req, 422, "%s: expected true or false", p->name);
	return false;
}

static bool add_separator(struct upload *u, const char *s)
{
	if (u->chunking.nseparators >= SEPARATORS_MAX) {
		u->r->host->reply_error(u->req, 422, "separators: at most %d", SEPARATORS_MAX);
		return false;
	}
	u->separators[u->chunking.nseparators++] = s;
	return true;
}

/* "separators": one field per separator, or one field holding a JSON list. */
static bool field_separators(struct upload *u, const struct lg_form_part *p)
{
	const char *s = field_text(u, p);
	json_t *list, *item;
	size_t i;
	bool ok = true;

	if (!s)
		return false;
	if (s[0] != '[')
		return add_separator(u, s);
	list = json_loads(s, JSON_REJECT_DUPLICATES, NULL);
	if (!json_is_array(list)) {
		json_decref(list);
		u->r->host->reply_error(u->req, 422, "separators: not a JSON list of strings");
		return false;
	}
	json_array_foreach(list, i, item) {
		const char *copy = json_is_string(item) ?
			api_printf(u->r->host, u->req, "%s", json_string_value(item)) : NULL;

		if (!json_is_string(item))
			u->r->host->reply_error(u->req, 422, "separators: not a list of strings");
		if (!copy || !add_separator(u, copy)) {
			ok = false;
			break;
		}
	}
	json_decref(list);
	return ok;
}

static bool field_metadata(struct upload *u, const struct lg_form_part *p)
{
	const char *s = field_text(u, p);
	json_error_t jerr;

	if (!s)
		return false;
	json_decref(u->metadata);
	u->metadata = json_loads(s, JSON_REJECT_DUPLICATES, &jerr);
	if (!u->metadata) {
		u->r->host->reply_error(u->req, 422, "metadata: not valid JSON: %s", jerr.text);
		return false;
	}
	if (!meta_ok(u->metadata, u->why, sizeof u->why)) {
		u->r->host->reply_error(u->req, 422, "%s", u->why);
		return false;
	}
	return true;
}

static bool read_field(struct upload *u, const struct lg_form_part *p, int64_t *collection)
{
	struct rag_chunking *c = &u->chunking;
	size_t id;

	if (!strcmp(p->name, "file")) {
		u->file = p;
		return true;
	}
	if (!strcmp(p->name, "name"))
		return (u->name = field_text(u, p)) != NULL;
	if (!strcmp(p->name, "collection_id") || !strcmp(p->name, "collection")) {
		if (!field_int(u, p, 1, INT64_MAX, &id))
			return false;
		*collection = (int64_t)id;
		return true;
	}
	if (!strcmp(p->name, "chunk_size"))
		return field_int(u, p, 1, CHUNK_SIZE_MAX, &c->chunk_size);
	if (!strcmp(p->name, "chunk_overlap"))
		return field_int(u, p, 0, CHUNK_SIZE_MAX, &c->chunk_overlap);
	if (!strcmp(p->name, "chunk_min_size"))
		return field_int(u, p, 0, CHUNK_SIZE_MAX, &c->chunk_min_size);
	if (!strcmp(p->name, "is_separator_regex"))
		return field_bool(u, p, &c->is_separator_regex);
	if (!strcmp(p->name, "disable_chunking"))
		return field_bool(u, p, &u->disable_chunking);
	if (!strcmp(p->name, "separators"))
		return field_separators(u, p);
	if (!strcmp(p->name, "preset_separators"))
		return (c->preset = field_text(u, p)) != NULL;
	if (!strcmp(p->name, "metadata"))
		return field_metadata(u, p);
	if (!strcmp(p->name, "page_range"))
		return (u->page_range = field_text(u, p)) != NULL;
	return true;    /* unknown fields are allowed (spec §2), force_ocr among them */
}

/* The file's checks that need no parsing: size, type, name. */
static bool check_file(struct upload *u)
{
	const struct lg_host *h = u->r->host;
	const char *name = u->name ? u->name : u->file ? u->file->filename : NULL;
	size_t n;

	if (u->file && u->file->data.len > u->r->max_file_size) {
		h->reply_error(u->req, 413, "The file is too large (%zu bytes; at most %" PRIu64 ").",
			       u->file->data.len, u->r->max_file_size);
		return false;
	}
	if (u->file) {
		u->fmt = rag_format_of(u->file->filename, u->file->content_type);
		if (u->fmt == RAG_UNKNOWN) {
			h->reply_error(u->req, 415, "Unsupported file type: send plain text (.txt), "
				       "Markdown (.md), HTML (.html), PDF (.pdf) or a JSON list (.json).");
			return false;
		}
	}
	if (!name || !*name) {
		h->reply_error(u->req, 422, "name: field required when the file has no name");
		return false;
	}
	n = strlen(name);
	if (rag_utf8_valid(name, n) != n || rag_utf8_chars(name, n) > NAME_MAX_CHARS) {
		h->reply_error(u->req, 422, "name: 1 to %d characters of UTF-8 text",
			       NAME_MAX_CHARS);
		return false;
	}
	u->name = name;
	return true;
}

static bool read_form(struct upload *u, int64_t *collection)
{
	const struct lg_host *h = u->r->host;
	const struct lg_form_part *parts;
	size_t n;

	if (!LG_HOST_HAS(h, req_form) || !h->req_form) {
		h->reply_error(u->req, 503, NO_FORMS);
		return false;
	}
	if (h->req_form(u->req, &parts, &n) < 0)
		return false;
	u->chunking = (struct rag_chunking){
		.chunk_size = (size_t)u->r->chunk_size,
		.chunk_overlap = (size_t)u->r->chunk_overlap,
		.chunk_min_size = (size_t)u->r->chunk_min_size,
		.preset = u->r->preset_separators,
		.separators = u->separators,
	};
	for (size_t i = 0; i < n; i++)
		if (parts[i].name && !read_field(u, &parts[i], collection))
			return false;
	return check_file(u);
}

/* ---- parsing and chunking, on the work pool ---- */

/* The text to cut: the pages of a PDF one after the other. */
static char *joined_text(const struct rag_doc *doc, size_t from, size_t to, size_t *len)
{
	size_t n = 0, at = 0;
	char *text;

	for (size_t i = from; i < to; i++)
		n += doc->pages[i].len + 2;
	text = malloc(n + 1);
	if (!text)
		return NULL;
	for (size_t i = from; i < to; i++) {
		memcpy(text + at, doc->pages[i].text, doc->pages[i].len);
		at += doc->pages[i].len;
		if (i + 1 < to) {
			memcpy(text + at, "\n\n", 2);
			at += 2;
		}
	}
	text[at] = '\0';
	*len = at;
	return text;
}

static int one_chunk(const char *text, size_t len, struct rag_chunks *out)
{
	out->text = NULL;
	out->n = 0;
	while (len && (*text == ' ' || *text == '\n' || *text == '\t' || *text == '\r')) {
		text++;
		len--;
	}
	while (len && (text[len - 1] == ' ' || text[len - 1] == '\n' || text[len - 1] == '\t' ||
		       text[len - 1] == '\r'))
		len--;
	if (!len)
		return 0;
	out->text = malloc(sizeof *out->text);
	if (!out->text)
		return -ENOMEM;
	out->text[0] = strndup(text, len);
	if (!out->text[0]) {
		free(out->text);
		out->text = NULL;
		return -ENOMEM;
	}
	out->n = 1;
	return 0;
}

/* The document's metadata: the form's, the entry's over it, and its name. */
static int doc_metadata(struct upload *u, struct upload_doc *d, const char *entry)
{
	json_t *own = entry ? json_loads(entry, 0, NULL) : NULL;

	d->metadata = u->metadata ? json_deep_copy(u->metadata) : json_object();
	if (!d->metadata || (entry && !own)) {
		json_decref(own);
		return -ENOMEM;
	}
	if (own && json_object_update(d->metadata, own) < 0) {
		json_decref(own);
		return -ENOMEM;
	}
	json_decref(own);
	if (json_object_size(d->metadata) && !meta_ok(d->metadata, u->why, sizeof u->why))
		return -EINVAL;
	if (json_object_set_new(d->metadata, "document_name", json_string(d->name)) < 0)
		return -ENOMEM;
	return 0;
}

static int cut_doc(struct upload *u, struct upload_doc *d, size_t from, size_t to)
{
	size_t len;
	char *text = joined_text(&u->doc, from, to, &len);
	int rc;

	if (!text)
		return -ENOMEM;
	if (u->disable_chunking)
		rc = one_chunk(text, len, &d->chunks);
	else
		rc = rag_chunk(&u->chunking, text, len, &d->chunks, u->why, sizeof u->why);
	free(text);
	return rc;
}

static int make_docs(struct upload *u)
{
	bool list = u->fmt == RAG_JSON;
	size_t n = list ? u->doc.npages : 1;
	int rc = 0;

	u->docs = calloc(n, sizeof *u->docs);
	if (!u->docs)
		return -ENOMEM;
	for (size_t i = 0; i < n && rc == 0; i++) {
		struct upload_doc *d = &u->docs[u->ndocs++];
		const struct rag_page *p = &u->doc.pages[i];

		if (list && p->title)
			d->name = strdup(p->title);
		else if (list)
			rc = asprintf(&d->name, "%s #%zu", u->name, i + 1) < 0 ? -ENOMEM : 0;
		else
			d->name = strdup(u->name);
		if (rc < 0 || !d->name)
			return -ENOMEM;
		d->size = list ? (int64_t)p->len : (int64_t)u->file->data.len;
		rc = doc_metadata(u, d, list ? p->metadata : NULL);
		if (rc == 0)
			rc = cut_doc(u, d, list ? i : 0, list ? i + 1 : u->doc.npages);
		u->nchunks += d->chunks.n;
	}
	if (rc == 0 && u->nchunks == 0)
		rc = -ENODATA;
	return rc;
}

static void upload_work(void *arg)
{
	struct upload *u = arg;
	int rc;

	rc = rag_parse(u->fmt, u->file->data.ptr, u->file->data.len, &u->doc, u->why,
		       sizeof u->why);
	if (rc == 0)
		rc = make_docs(u);
	if (rc == -ENOMEM) {
		u->status = 500;
		snprintf(u->why, sizeof u->why, API_INTERNAL_ERROR);
	} else if (rc == -ENODATA) {
		u->status = 422;
		snprintf(u->why, sizeof u->why, "The file gives no chunk (all text is shorter "
			 "than chunk_min_size?).");
	} else if (rc < 0) {
		u->status = 422;
	}
}

/* ---- storing: embeddings, then one INSERT ---- */

static json_t *embedding_json(const float *v, size_t dim)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < dim; i++) {
		if (json_array_append_new(a, json_real(v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

/* {content, metadata, embedding?}: @vectors may be NULL. */
static json_t *chunk_json(const char *content, json_t *metadata, const float *vec, size_t dim)
{
	json_t *c = json_pack("{s:s, s:O?}", "content", content, "metadata", metadata);

	if (c && vec && json_object_set_new(c, "embedding", embedding_json(vec, dim)) < 0) {
		json_decref(c);
		return NULL;
	}
	return c;
}

static char *documents_json(struct upload *u, const float *vectors, size_t dim)
{
	json_t *docs = json_array(), *chunks, *d;
	size_t at = 0;
	char *text;

	for (size_t i = 0; docs && i < u->ndocs; i++) {
		chunks = json_array();
		d = json_pack("{s:s, s:I, s:o}", "name", u->docs[i].name, "size",
			      (json_int_t)u->docs[i].size, "chunks", chunks);
		if (!d || json_array_append_new(docs, d) < 0)
			goto fail;
		for (size_t k = 0; k < u->docs[i].chunks.n; k++, at++) {
			json_t *c = chunk_json(u->docs[i].chunks.text[k], u->docs[i].metadata,
					       vectors ? vectors + at * dim : NULL, dim);

			if (!c || json_array_append_new(chunks, c) < 0)
				goto fail;
		}
	}
	text = docs ? json_dumps(docs, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
	json_decref(docs);
	return text;
fail:
	json_decref(docs);
	return NULL;
}

static void stored(const PGresult *res, const char *error, void *arg)
{
	struct upload *u = arg;
	const struct lg_host *h = u->r->host;

	if (error && strstr(error, "too long for tsvector")) {
		h->reply_error(u->req, 422, "A chunk is too long for full-text indexing: lower "
			       "chunk_size.");
		return;
	}
	if (error) {
		api_db_failed(h, u->r->self, u->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) == 0) {
		h->reply_error(u->req, 404, "Collection %s not found.", u->collection_text);
		return;
	}
	rag_changed(u->r, strtoll(u->collection_text, NULL, 10));
	api_reply_raw(h, u->req, 201, PQgetvalue(res, 0, 0));
}

static void store(struct upload *u, const float *vectors, size_t dim)
{
	char *json = documents_json(u, vectors, dim);
	const char *params[4] = { u->collection_text, u->owner_text, json, u->r->language };

	upload_free(u);
	if (!json) {
		u->r->host->reply_error(u->req, 500, API_INTERNAL_ERROR);
		return;
	}
	if (u->gone)
		u->r->host->reply_error(u->req, 400, "The client closed the connection.");
	else
		api_query(u->r->host, u->r->self, u->req, insert_documents_sql, 4, params,
			  stored, u);
	free(json);
}

static void embedded(void *arg, int status, const char *error, const float *vectors,
		     size_t n, size_t dim)
{
	struct upload *u = arg;
	char why[600];

	if (status != 200 || n != u->nchunks) {
		snprintf(why, sizeof why, "The document was not stored: embedding its chunks "
			 "failed: %s", error ? error : "wrong number of vectors");
		upload_fail(u, status >= 400 && status != 200 ? status : 502, why);
		return;
	}
	store(u, vectors, dim);
}

static void upload_parsed(void *arg)
{
	struct upload *u = arg;
	size_t at = 0;

	if (u->status) {
		upload_fail(u, u->status, u->why);
		return;
	}
	if (u->gone) {
		store(u, NULL, 0);
		return;
	}
	/* rag_embed() borrows the texts until it calls back. */
	u->texts = malloc(u->nchunks * sizeof *u->texts);
	if (!u->texts) {
		upload_fail(u, 500, API_INTERNAL_ERROR);
		return;
	}
	for (size_t i = 0; i < u->ndocs; i++)
		for (size_t k = 0; k < u->docs[i].chunks.n; k++)
			u->texts[at++] = u->docs[i].chunks.text[k];
	if (rag_embed(u->r, u->who, u->texts, u->nchunks, embedded, u) < 0)
		upload_fail(u, 503, "The document was not stored: the embeddings model cannot "
			    "be called.");
}

/* The collection is the caller's: parse on the work pool. */
static void collection_checked(const PGresult *res, const char *error, void *arg)
{
	struct upload *u = arg;
	const struct lg_host *h = u->r->host;

	if (error) {
		upload_free(u);
		api_db_failed(h, u->r->self, u->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) == 0) {
		upload_free(u);
		h->reply_error(u->req, 404, "Collection %s not found.", u->collection_text);
		return;
	}
	if (!u->file) {         /* an empty document, filled through /chunks */
		u->docs = calloc(1, sizeof *u->docs);
		if (!u->docs || !(u->docs[0].name = strdup(u->name))) {
			upload_fail(u, 500, API_INTERNAL_ERROR);
			return;
		}
		u->ndocs = 1;
		store(u, NULL, 0);
		return;
	}
	if (h->work_submit(u->r->self, upload_work, upload_parsed, u) < 0)
		upload_fail(u, 503, "The server is busy, please try again later.");
}

static struct upload *upload_new(struct rag *r, struct lg_req *req)
{
	struct upload *u = r->host->req_alloc(req, sizeof *u);

	if (!u) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return NULL;
	}
	u->r = r;
	u->req = req;
	u->who = r->host->req_principal(req);
	u->owner_text = rag_user_text(r, req);
	return u->owner_text ? u : NULL;
}

static void route_upload(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	struct upload *u = upload_new(r, req);
	int64_t collection = 0;
	const char *params[2];

	if (!u)
		return;
	if (!read_form(u, &collection)) {
		upload_free(u);
		return;
	}
	if (collection <= 0) {
		upload_fail(u, 422, "collection_id: field required");
		return;
	}
	u->collection_text = api_id_text(r->host, req, collection);
	if (!u->collection_text) {
		upload_free(u);
		return;
	}
	r->host->on_close(req, r->self, upload_closed, u);
	params[0] = u->owner_text;
	params[1] = u->collection_text;
	if (!api_query(r->host, r->self, req, owned_collection_sql, 2, params,
		       collection_checked, u))
		upload_free(u);
}

/* ---- documents ---- */

static void route_documents(struct lg_req *req, void *ud)
{
	static const struct api_list list = {
		.from = "document d JOIN collection c ON c.id = d.collection_id", .alias = "d",
		.where = "(c.user_id = $3::bigint OR c.visibility = 'public') "
			 "AND ($4::bigint IS NULL OR d.collection_id = $4::bigint)",
		.object = DOCUMENT_JSON, .sort_by = document_sort_by,
		.sort_columns = document_sort_columns,
	};
	struct rag *r = ud;
	const char *filters[2] = { rag_user_text(r, req) };
	const char *name = r->host->req_query(req, "collection_id") ? "collection_id" : "collection";
	int64_t collection;

	if (!filters[0] || !api_query_int(r->host, req, name, 0, 0, INT64_MAX, &collection))
		return;
	if (collection > 0 && !(filters[1] = api_id_text(r->host, req, collection)))
		return;
	rag_list_reply(r, req, &list, filters, 2);
}

/* $1 the caller, $2 the path's document, $3 its chunk; and the 404s. */
struct path {
	const char *params[4];
	int64_t document, chunk;
	const char *doc_missing, *chunk_missing;
};

static bool read_path(struct rag *r, struct lg_req *req, struct path *p, bool chunk)
{
	const struct lg_host *h = r->host;

	p->params[0] = rag_user_text(r, req);
	if (!p->params[0] || !api_path_id(h, req, "document_id", &p->document))
		return false;
	p->params[1] = api_id_text(h, req, p->document);
	p->doc_missing = p->params[1] ? api_printf(h, req, "Document %s not found.",
						   p->params[1]) : NULL;
	if (!p->doc_missing || !chunk)
		return p->doc_missing != NULL;
	if (!api_path_id(h, req, "chunk_id", &p->chunk))
		return false;
	p->params[2] = api_id_text(h, req, p->chunk);
	p->chunk_missing = p->params[2] ? api_printf(h, req, "Chunk %s not found.",
						     p->params[2]) : NULL;
	return p->chunk_missing != NULL;
}

static void route_document_get(struct lg_req *req, void *ud)
{
	struct path p;

	if (read_path(ud, req, &p, false))
		rag_sql_reply(ud, req, 200, p.doc_missing, get_document_sql, 2, p.params);
}

static void route_document_delete(struct lg_req *req, void *ud)
{
	struct path p;

	if (read_path(ud, req, &p, false))
		rag_sql_empty(ud, req, p.doc_missing, RAG_CHANGED_FROM_ROW, delete_document_sql, 2,
			      p.params);
}

/* ---- chunks ---- */

struct chunk_list {
	struct rag *r;
	struct lg_req *req;
	const char *document;
	const char *not_found;
};

static void chunk_list_checked(const PGresult *res, const char *error, void *arg)
{
	static const struct api_list list = {
		.from = "chunk k", .alias = "k", .where = "k.document_id = $3::bigint",
		.object = CHUNK_JSON, .sort_by = chunk_sort_by, .sort_columns = chunk_sort_columns,
	};
	struct chunk_list *l = arg;

	if (error)
		api_db_failed(l->r->host, l->r->self, l->req, error, NULL, NULL);
	else if (PQntuples(res) == 0)
		l->r->host->reply_error(l->req, 404, "%s", l->not_found);
	else
		rag_list_reply(l->r, l->req, &list, &l->document, 1);
}

static void route_chunks(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	struct chunk_list *l = r->host->req_alloc(req, sizeof *l);
	struct path p;
	struct api_page page;

	if (!l) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	/* Bad paging is refused before the database is asked anything. */
	if (!read_path(r, req, &p, false) || !api_page(r->host, req, chunk_sort_by, &page))
		return;
	*l = (struct chunk_list){ .r = r, .req = req, .not_found = p.doc_missing,
				  .document = p.params[1] };
	api_query(r->host, r->self, req, readable_document_sql, 2, p.params, chunk_list_checked,
		  l);
}

static void route_chunk_get(struct lg_req *req, void *ud)
{
	struct path p;

	if (read_path(ud, req, &p, true))
		rag_sql_reply(ud, req, 200, p.chunk_missing, get_chunk_sql, 3, p.params);
}

static void route_chunk_delete(struct lg_req *req, void *ud)
{
	struct path p;

	if (read_path(ud, req, &p, true))
		rag_sql_empty(ud, req, p.chunk_missing, RAG_CHANGED_FROM_ROW, delete_chunk_sql, 3,
			      p.params);
}

struct chunk_add {
	struct rag *r;
	struct lg_req *req;
	struct path p;
	json_t *chunks;                 /* owned: [{content, metadata}] */
	const char **texts;             /* borrowed from chunks */
	size_t n;
};

static void chunk_add_free(struct chunk_add *a)
{
	json_decref(a->chunks);
	a->chunks = NULL;
	free(a->texts);
	a->texts = NULL;
}

static void chunk_add_fail(struct chunk_add *a, int status, const char *why)
{
	chunk_add_free(a);
	a->r->host->reply_error(a->req, status, "%s", why);
}

static void chunks_stored(const PGresult *res, const char *error, void *arg)
{
	struct chunk_add *a = arg;
	const char *const constraints[] = { "chunk_position_key", NULL };

	if (error && strstr(error, "too long for tsvector"))
		a->r->host->reply_error(a->req, 422, "A chunk is too long for full-text indexing.");
	else if (error)
		api_db_failed(a->r->host, a->r->self, a->req, error, constraints,
			      "Chunks were being added at the same time, please try again.");
	else if (PQntuples(res) == 0)
		a->r->host->reply_error(a->req, 404, "%s", a->p.doc_missing);
	else
		api_reply_raw(a->r->host, a->req, 201, PQgetvalue(res, 0, 0));
}

static void chunks_store(struct chunk_add *a, const float *vectors, size_t dim)
{
	const char *params[4] = { a->p.params[0], a->p.params[1], NULL, a->r->language };
	char *json;

	for (size_t i = 0; vectors && i < a->n; i++)
		if (json_object_set_new(json_array_get(a->chunks, i), "embedding",
					embedding_json(vectors + i * dim, dim)) < 0) {
			chunk_add_fail(a, 500, API_INTERNAL_ERROR);
			return;
		}
	json = json_dumps(a->chunks, JSON_COMPACT | JSON_REAL_PRECISION(9));
	chunk_add_free(a);
	if (!json) {
		a->r->host->reply_error(a->req, 500, API_INTERNAL_ERROR);
		return;
	}
	params[2] = json;
	api_query(a->r->host, a->r->self, a->req, insert_chunks_sql, 4, params, chunks_stored, a);
	free(json);
}

static void chunks_embedded(void *arg, int status, const char *error, const float *vectors,
			    size_t n, size_t dim)
{
	struct chunk_add *a = arg;
	char why[600];

	if (status != 200 || n != a->n) {
		snprintf(why, sizeof why, "The chunks were not stored: embedding them failed: %s",
			 error ? error : "wrong number of vectors");
		chunk_add_fail(a, status >= 400 ? status : 502, why);
		return;
	}
	chunks_store(a, vectors, dim);
}

static void chunk_document_checked(const PGresult *res, const char *error, void *arg)
{
	struct chunk_add *a = arg;
	json_t *meta;

	if (error) {
		chunk_add_free(a);
		api_db_failed(a->r->host, a->r->self, a->req, error, NULL, NULL);
		return;
	}
	if (PQntuples(res) == 0) {
		chunk_add_fail(a, 404, a->p.doc_missing);
		return;
	}
	/* Every chunk says which document it comes from, as uploads do. */
	for (size_t i = 0; i < a->n; i++) {
		meta = json_object_get(json_array_get(a->chunks, i), "metadata");
		if (json_object_set_new(meta, "document_name",
					json_string(PQgetvalue(res, 0, 0))) < 0) {
			chunk_add_fail(a, 500, API_INTERNAL_ERROR);
			return;
		}
	}
	if (rag_embed(a->r, a->r->host->req_principal(a->req), a->texts, a->n, chunks_embedded,
		      a) < 0)
		chunk_add_fail(a, 503, "The chunks were not stored: the embeddings model cannot "
			       "be called.");
}

/* {chunks: [{content, metadata?}]}, 1 to 64 of them, into a->chunks. */
static bool read_chunks(struct chunk_add *a, json_t *body)
{
	const struct lg_host *h = a->r->host;
	json_t *list = json_object_get(body, "chunks"), *item, *content, *meta;
	char why[300];
	size_t i;

	if (!json_is_array(list) || json_array_size(list) < 1 ||
	    json_array_size(list) > CHUNKS_ADD_MAX) {
		h->reply_error(a->req, 422, "chunks: a list of 1 to %d chunks", CHUNKS_ADD_MAX);
		return false;
	}
	a->n = json_array_size(list);
	a->chunks = json_array();
	a->texts = calloc(a->n, sizeof *a->texts);
	if (!a->chunks || !a->texts) {
		h->reply_error(a->req, 500, API_INTERNAL_ERROR);
		return false;
	}
	json_array_foreach(list, i, item) {
		content = json_object_get(item, "content");
		meta = json_object_get(item, "metadata");
		if (!json_is_string(content) || !rag_utf8_chars(json_string_value(content),
								json_string_length(content))) {
			h->reply_error(a->req, 422, "chunks[%zu].content: a non-empty string", i);
			return false;
		}
		if (meta && !json_is_null(meta) && !meta_ok(meta, why, sizeof why)) {
			h->reply_error(a->req, 422, "chunks[%zu].%s", i, why);
			return false;
		}
		meta = meta && !json_is_null(meta) ? json_deep_copy(meta) : json_object();
		if (json_array_append_new(a->chunks, json_pack("{s:O, s:o}", "content", content,
							       "metadata", meta)) < 0) {
			h->reply_error(a->req, 500, API_INTERNAL_ERROR);
			return false;
		}
		a->texts[i] = json_string_value(json_object_get(json_array_get(a->chunks, i),
								"content"));
	}
	return true;
}

static void route_chunks_add(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	struct chunk_add *a = r->host->req_alloc(req, sizeof *a);
	json_t *body;
	bool ok;

	if (!a) {
		r->host->reply_error(req, 500, API_INTERNAL_ERROR);
		return;
	}
	a->r = r;
	a->req = req;
	if (!read_path(r, req, &a->p, false))
		return;
	body = r->host->req_json(req);
	if (!body)
		return;
	ok = read_chunks(a, body);
	json_decref(body);
	if (!ok) {
		chunk_add_free(a);
		return;
	}
	if (!api_query(r->host, r->self, req, owned_document_sql, 2, a->p.params,
		       chunk_document_checked, a))
		chunk_add_free(a);
}

/* ---- /v1/parse-beta ---- */

/* Walks a page range such as "0,5-10,20" (0-based pages): whether it is
 * well-formed, and in *hit whether page @i is in it. */
static bool range_has(const char *range, long i, bool *hit)
{
	const char *s = range;
	char *end;
	long a, b;

	*hit = false;
	while (*s) {
		while (*s == ' ')
			s++;
		if (*s < '0' || *s > '9')
			return false;
		a = strtol(s, &end, 10);
		b = a;
		s = end;
		if (*s == '-') {
			if (s[1] < '0' || s[1] > '9')
				return false;
			b = strtol(s + 1, &end, 10);
			s = end;
			if (b < a)
				return false;
		}
		*hit = *hit || (i >= a && i <= b);
		while (*s == ' ')
			s++;
		if (*s == ',' && s[1])
			s++;
		else if (*s)
			return false;
	}
	return true;
}

static void parse_done(void *arg)
{
	struct upload *u = arg;
	const struct lg_host *h = u->r->host;
	json_t *data = json_array(), *root;
	bool hit;

	if (u->status) {
		json_decref(data);
		upload_fail(u, u->status, u->why);
		return;
	}
	for (size_t i = 0; data && i < u->doc.npages; i++) {
		if (u->page_range && *u->page_range &&
		    (!range_has(u->page_range, (long)i, &hit) || !hit))
			continue;
		if (json_array_append_new(data, json_pack("{s:s, s:s, s:[], s:{s:s, s:I}}",
							  "object", "documentPage", "content",
							  u->doc.pages[i].text, "images", "metadata",
							  "document_name", u->name, "page",
							  (json_int_t)i)) < 0)
			break;
	}
	root = data ? json_pack("{s:s, s:o}", "object", "list", "data", data) : NULL;
	upload_free(u);
	api_reply_json(h, u->req, 200, root);
}

static void parse_work(void *arg)
{
	struct upload *u = arg;

	if (rag_parse(u->fmt, u->file->data.ptr, u->file->data.len, &u->doc, u->why,
		      sizeof u->why) < 0)
		u->status = 422;
}

static void route_parse(struct lg_req *req, void *ud)
{
	struct rag *r = ud;
	struct upload *u = upload_new(r, req);
	int64_t collection = 0;
	bool hit;

	if (!u)
		return;
	if (!read_form(u, &collection)) {
		upload_free(u);
		return;
	}
	if (!u->file) {
		upload_fail(u, 422, "file: field required");
		return;
	}
	if (u->page_range && *u->page_range && !range_has(u->page_range, -1, &hit)) {
		upload_fail(u, 422, "page_range: pages and ranges such as \"0,5-10,20\"");
		return;
	}
	if (r->host->work_submit(r->self, parse_work, parse_done, u) < 0)
		upload_fail(u, 503, "The server is busy, please try again later.");
}

int rag_documents_register(struct rag *r)
{
	size_t upload = (size_t)r->max_file_size + UPLOAD_MARGIN;
	const struct rag_route routes[] = {
		{ "POST", "/v1/documents", route_upload, upload },
		{ "GET", "/v1/documents", route_documents, 0 },
		{ "GET", "/v1/documents/{document_id}", route_document_get, 0 },
		{ "DELETE", "/v1/documents/{document_id}", route_document_delete, 0 },
		{ "POST", "/v1/documents/{document_id}/chunks", route_chunks_add, 0 },
		{ "GET", "/v1/documents/{document_id}/chunks", route_chunks, 0 },
		{ "GET", "/v1/documents/{document_id}/chunks/{chunk_id}", route_chunk_get, 0 },
		{ "DELETE", "/v1/documents/{document_id}/chunks/{chunk_id}", route_chunk_delete,
		  0 },
		/* deprecated in 0.4 (spec §3.5), kept for old clients */
		{ "GET", "/v1/chunks/{document_id}", route_chunks, 0 },
		{ "GET", "/v1/chunks/{document_id}/{chunk_id}", route_chunk_get, 0 },
		{ "POST", "/v1/parse-beta", route_parse, upload },
	};

	return rag_routes_add(r, routes, LG_COUNT(routes));
}
