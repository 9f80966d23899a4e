/* SPDX-License-Identifier: Apache-2.0 */
/**
 * DOC: the rag plugin's inner interfaces
 *
 * One struct rag per loaded plugin, made in init() and freed in fini();
 * every module takes it first. The modules and their rooms:
 *
 *   rag.c          settings, init/start/stop/fini, route and hook registration
 *   collections.c  /v1/collections; who may read or write a collection
 *   documents.c    /v1/documents, their chunks, /v1/parse-beta
 *   parse.c        text, Markdown, HTML, PDF and JSON lists into pages of text
 *   chunk.c        the recursive splitter (never cuts a UTF-8 character)
 *   embed.c        embeddings through the registry (host->model_call), batched
 *   vectors.c      per-collection vectors in memory, kept in step by NOTIFY
 *   search.c       POST /v1/search: semantic, lexical, hybrid
 *   chat.c         the chat "search" tool (PRE_UPSTREAM hook)
 *
 * Schema: sql/rag/0001_rag.sql (collection, document, chunk). Owners are
 * principals' user ids (0: the master key).
 */
#ifndef LLMGATE_RAG_H
#define LLMGATE_RAG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <llmgate/host.h>

#define RAG_NOTIFY_CHANNEL "llmgate_rag"
#define RAG_MAX_IDS 100                 /* collection_ids, document_ids */

struct rag;

/* ---- collections.c ---- */

int rag_collections_register(struct rag *r);

/**
 * rag_readable_sql - an SQL condition on a table aliased "c" (collection):
 * the collection can be read by the user whose id is parameter $1 (own or
 * public). Admins read only what they own or what is public, as others.
 */
#define RAG_READABLE_SQL "(c.user_id = $1::bigint OR c.visibility = 'public')"

/* ---- parse.c ---- */

/** struct rag_page - one page of parsed text (a PDF page; one for others). */
struct rag_page {
	char *text;             /* UTF-8, NUL-terminated; owned by the rag_doc */
	size_t len;
	int number;             /* 1-based */
	char *title;            /* JSON lists: the entry's title, or NULL */
	char *metadata;         /* JSON lists: its metadata (JSON text), or NULL */
};

struct rag_doc {
	struct rag_page *pages;
	size_t npages;
};

enum rag_format { RAG_TEXT, RAG_MARKDOWN, RAG_HTML, RAG_PDF, RAG_JSON, RAG_UNKNOWN };

/** rag_format_of() - from the file name's extension and the part's content type. */
enum rag_format rag_format_of(const char *filename, const char *content_type);
/** rag_parse() - @data as @fmt into pages; 0, or -EINVAL with a reason fit
 * for the client in @why (truncated or not a PDF, invalid UTF-8, empty...).
 * Thread: any (PDF parsing runs on the work pool). */
int rag_parse(enum rag_format fmt, const char *data, size_t len, struct rag_doc *out,
	      char *why, size_t whylen);
void rag_doc_free(struct rag_doc *d);
#define RAG_JSON_DOCS_MAX 1000  /* entries of one JSON list upload */

/* ---- chunk.c ---- */

struct rag_chunking {
	size_t chunk_size;              /* characters (code points) */
	size_t chunk_overlap;
	size_t chunk_min_size;
	const char *const *separators;  /* NULL-terminated; NULL: the preset's */
	size_t nseparators;
	const char *preset;             /* "markdown", "html", "text"... */
	bool is_separator_regex;
};

struct rag_chunks {
	char **text;                    /* owned, NUL-terminated UTF-8 */
	size_t n;
};

/** rag_chunk() - split @text; 0, or -EINVAL (bad parameters, @why says). */
int rag_chunk(const struct rag_chunking *c, const char *text, size_t len,
	      struct rag_chunks *out, char *why, size_t whylen);
void rag_chunks_free(struct rag_chunks *c);
/** rag_chunk_preset() - the separators (POSIX EREs, NULL-terminated) of a
 * preset, or NULL for an unknown name. */
const char *const *rag_chunk_preset(const char *name);
/** rag_utf8_valid() - the length of the longest well-formed UTF-8 prefix
 * of @s (@len when all of it is). */
size_t rag_utf8_valid(const char *s, size_t len);
/** rag_utf8_chars() - the code points of UTF-8 text. */
size_t rag_utf8_chars(const char *s, size_t len);

/* ---- embed.c ---- */

/**
 * rag_embed() - embed @n texts with the plugin's embeddings model, in
 * batches, through host->model_call on behalf of @who. @done runs once on
 * this loop with @n vectors of @dim floats each (contiguous, borrowed for
 * the call), or with status != 200 and a message for the client.
 */
typedef void (*rag_embed_fn)(void *arg, int status, const char *error, const float *vectors,
			     size_t n, size_t dim);
int rag_embed(struct rag *r, const struct lg_principal *who, const char *const *texts,
	      size_t n, rag_embed_fn done, void *arg);
/** rag_embed_usage() - rag_embed() that also reports the prompt tokens the
 * embeddings model counted (for a search reply's usage). */
typedef void (*rag_embed_usage_fn)(void *arg, int status, const char *error,
				   const float *vectors, size_t n, size_t dim,
				   int64_t prompt_tokens);
int rag_embed_usage(struct rag *r, const struct lg_principal *who, const char *const *texts,
		    size_t n, rag_embed_usage_fn done, void *arg);
/** rag_embed_available() - host->model_call exists and a model is set;
 * without it rag_embed() returns -ENOSYS (answer 503). */
bool rag_embed_available(const struct rag *r);
/** rag_embed_parse() - an embeddings reply's data[].embedding into *@out
 * (@n vectors in index order, allocated here when *@dim is 0 on entry;
 * the caller frees it); tokens are added to *@prompt_tokens. */
int rag_embed_parse(const char *body, size_t len, size_t n, float **out, size_t *dim,
		    int64_t *prompt_tokens, char *why, size_t whylen);

/* ---- vectors.c ---- */

int rag_vectors_start(struct rag *r);
void rag_vectors_stop(struct rag *r);
/** rag_vectors_forget() - a collection changed (NOTIFY or this instance). */
void rag_vectors_forget(struct rag *r, int64_t collection_id);
/** rag_vectors_notify() - an lg_notify_fn for RAG_NOTIFY_CHANNEL (@arg:
 * the struct rag): forgets the collection named "collection:<id>", or
 * every collection on an empty payload (the LISTEN connection came back). */
void rag_vectors_notify(const char *channel, const char *payload, void *arg);

/**
 * struct rag_snap - one collection's vectors, immutable once published:
 * @n rows of @dim floats, each of length 1 (cosine = dot product), with
 * their chunk and document ids. Shared by reference between workers.
 */
struct rag_snap {
	int64_t collection_id;
	size_t n, dim;
	const float *vectors;
	const int64_t *chunk_ids;
	const int64_t *document_ids;
};
/** rag_vectors_get() - a reference to the collection's vectors (release
 * it). Held in memory: 1 and *@out set, @done not called. Otherwise they
 * are loaded on the work pool: 0, and @done runs later on this loop with a
 * reference, or NULL and a message (the database failed, vectors of
 * several dimensions). Thread: loop. A negative errno: @done will not run. */
typedef void (*rag_vectors_fn)(void *arg, struct rag_snap *snap, const char *error);
int rag_vectors_get(struct rag *r, int64_t collection_id, struct rag_snap **out,
		    rag_vectors_fn done, void *arg);
void rag_snap_release(struct rag_snap *snap);

/* ---- search.c ---- */

enum rag_method { RAG_SEMANTIC = 0, RAG_LEXICAL, RAG_HYBRID };

struct rag_search_args {
	const char *query;
	int64_t collection_ids[RAG_MAX_IDS];
	size_t ncollections;
	int64_t document_ids[RAG_MAX_IDS];
	size_t ndocuments;
	const struct json_t *metadata_filters;  /* borrowed, or NULL */
	int64_t limit, offset, rff_k;
	double score_threshold;
	enum rag_method method;
};

/** rag_search() - run a search for @who; @done gets the JSON list of
 * {method, score, chunk} (borrowed) or an HTTP status and message. Used by
 * POST /v1/search and by the chat tool. */
typedef void (*rag_search_fn)(void *arg, int status, const char *error, const char *results_json);
int rag_search(struct rag *r, struct lg_req *req, const struct rag_search_args *args,
	       rag_search_fn done, void *arg);
/** rag_search_args_read() - the spec's search body (§10.4) into @out;
 * false once it has answered 422. */
bool rag_search_args_read(struct rag *r, struct lg_req *req, const struct json_t *body,
			  struct rag_search_args *out);
int rag_search_register(struct rag *r);

/* ---- chat.c ---- */

/** rag_chat_hook() - PRE_UPSTREAM: the "search" tool of spec §10.5. */
enum lg_hook_result rag_chat_hook(struct lg_req *req, void *ud);

/* ---- documents.c ---- */

int rag_documents_register(struct rag *r);

/* ---- rag.c ---- */

struct rag {
	const struct lg_host *host;
	struct lg_plugin *self;
	/* settings */
	const char *embeddings_model;   /* name or alias in the registry */
	const char *language;           /* text search configuration */
	uint64_t max_file_size;         /* bytes */
	int64_t embed_batch;            /* texts per embeddings call */
	/* chunking defaults (spec §10.2), for uploads that do not say */
	int64_t chunk_size, chunk_overlap, chunk_min_size;
	const char *preset_separators;
	/* vectors.c */
	struct rag_vectors *vectors;
};

/** rag_changed() - a collection's chunks changed or it went: the vectors
 * this instance holds for it are forgotten (others learn it by NOTIFY). */
void rag_changed(struct rag *r, int64_t collection_id);

/** struct rag_route, rag_routes_add() - register a table of routes, all
 * with @ud = the struct rag. */
struct rag_route {
	const char *method, *path;
	lg_route_fn fn;
	size_t max_body;                /* 0: server.max_body */
};
int rag_routes_add(struct rag *r, const struct rag_route *routes, size_t n);

/** rag_sql_reply() - run @sql and answer with its first column (JSON text)
 * with @status, or 404 @not_found when it returns no row. */
void rag_sql_reply(struct rag *r, struct lg_req *req, int status, const char *not_found,
		   const char *sql, int n, const char *const *params);

/** rag_sql_empty() - run @sql (an UPDATE or DELETE ... RETURNING) and
 * answer 204 when it returned a row, else 404 @not_found; with @changed > 0,
 * rag_changed() is told about that collection on success (with
 * RAG_CHANGED_FROM_ROW, about the collection the row names). */
#define RAG_CHANGED_FROM_ROW (-1)     /* the collection id is the row's first column */
void rag_sql_empty(struct rag *r, struct lg_req *req, const char *not_found, int64_t changed,
		   const char *sql, int n, const char *const *params);

struct api_list;         /* plugins/common/api.h */
/** rag_list_reply() - answer a list (struct api_list: every fragment is
 * constant SQL of the caller; @where uses $3, $4... for @filters). */
void rag_list_reply(struct rag *r, struct lg_req *req, const struct api_list *l,
		    const char *const *filters, int nfilters);

/** rag_user_text() - the caller's user id as text (0: the master key), or
 * NULL once it has answered (401 without a principal, 500). */
const char *rag_user_text(struct rag *r, struct lg_req *req);

#endif /* LLMGATE_RAG_H */
