/* SPDX-License-Identifier: Apache-2.0 */
/* rag: each collection's embeddings in memory, for exact cosine search.
 *
 * A collection's vectors are one contiguous array of unit-length floats
 * (cosine similarity is then a dot product) with their chunk and document
 * ids: a snapshot, immutable once made, loaded from PostgreSQL on the work
 * pool on first use and shared by reference between workers.
 *
 * The snapshots in memory are listed in a map (sorted by collection id)
 * that is itself immutable: workers load the map's pointer and take a
 * reference on a snapshot, with no lock. Changes (a load, a collection
 * forgotten on NOTIFY, an eviction) build a new map under a mutex that
 * only writers take, swap the pointer, and drop the old map after
 * host->sync_workers() on the work pool, when no worker can still be
 * reading it. Memory is bounded by the vectors_max_bytes setting: the least
 * recently used collections go first.
 *
 * A load that started before its collection was forgotten may hold stale
 * rows: it answers the search that asked for it but is not kept. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rag.h"

#define VEC_DEFAULT_MAX_BYTES (1024ull << 20)
#define VEC_PAGE_ROWS 4096      /* rows per query while loading (load_sql) */
#define VEC_MAX_DIM 65536

struct snap {
	struct rag_snap pub;    /* first: a struct rag_snap * is a struct snap * */
	atomic_uint refs;
	atomic_uint_fast64_t last_used;
	size_t bytes;
	float *vectors;
	int64_t *chunk_ids, *document_ids;
};

struct vec_map {
	size_t n;
	uint64_t bytes;
	struct snap *snaps[];   /* sorted by collection id; one reference each */
};

struct rag_vectors {
	struct rag *r;
	_Atomic(struct vec_map *) map;
	uint64_t max_bytes;
	atomic_uint_fast64_t clock;
	pthread_mutex_t lock;   /* writers only: map changes, the lists below */
	size_t loads;           /* loads in flight */
	int64_t *forgotten;     /* collections forgotten while loads were in flight */
	size_t nforgotten, capforgotten;
};

struct vec_load {
	struct rag *r;
	int64_t collection_id;
	size_t forgotten_at;    /* v->nforgotten when the load started */
	struct snap *snap;      /* the result, or NULL */
	char error[256];
	rag_vectors_fn done;
	void *arg;
};

/* ---- snapshots ---- */

static void snap_free(struct snap *s)
{
	if (!s)
		return;
	free(s->vectors);
	free(s->chunk_ids);
	free(s->document_ids);
	free(s);
}

static void snap_ref(struct snap *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void rag_snap_release(struct rag_snap *pub)
{
	struct snap *s = (struct snap *)pub;

	if (s && atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1)
		snap_free(s);
}

static int snap_reserve(struct snap *s, size_t *cap, size_t need, size_t dim)
{
	size_t ncap = *cap ? *cap : 1024;
	float *v;
	int64_t *c, *d;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	v = realloc(s->vectors, ncap * dim * sizeof *v);
	if (!v)
		return -ENOMEM;
	s->vectors = v;
	c = realloc(s->chunk_ids, ncap * sizeof *c);
	if (!c)
		return -ENOMEM;
	s->chunk_ids = c;
	d = realloc(s->document_ids, ncap * sizeof *d);
	if (!d)
		return -ENOMEM;
	s->document_ids = d;
	*cap = ncap;
	return 0;
}

/* The number of elements of a PostgreSQL array literal "{a,b,...}". */
static size_t pg_array_len(const char *text)
{
	size_t n = 1;

	if (strcmp(text, "{}") == 0)
		return 0;
	for (const char *p = text; *p; p++)
		n += *p == ',';
	return n;
}

/* "{0.1,-0.2,...}" into @out (@dim floats), scaled to length 1. */
static int parse_vector(const char *text, float *out, size_t dim)
{
	const char *p = text;
	double norm = 0;

	if (*p++ != '{')
		return -EINVAL;
	for (size_t i = 0; i < dim; i++) {
		char *end;
		float f = strtof(p, &end);

		if (end == p || f != f || f > 3.4e38f || f < -3.4e38f || (*end != ',' && *end != '}'))
			return -EINVAL;
		out[i] = f;
		norm += (double)f * f;
		p = end + 1;
	}
	norm = sqrt(norm);
	if (norm > 0)
		for (size_t i = 0; i < dim; i++)
			out[i] = (float)(out[i] / norm);
	return 0;
}

/* Appends the rows of one page (id, document_id, embedding); *@last_id
 * is the last chunk id read. */
static int load_rows(struct snap *s, size_t *cap, const PGresult *res, int64_t *last_id,
		     char *why, size_t whylen)
{
	int rows = PQntuples(res);

	for (int i = 0; i < rows; i++) {
		const char *emb = PQgetvalue(res, i, 2);
		size_t dim = pg_array_len(emb);

		*last_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
		if (dim == 0 || dim > VEC_MAX_DIM)
			continue;
		if (s->pub.dim == 0)
			s->pub.dim = dim;
		if (dim != s->pub.dim) {
			snprintf(why, whylen, "Collection %" PRId64 " holds embeddings of different "
				 "dimensions (%zu and %zu): its documents must be embedded again.",
				 s->pub.collection_id, s->pub.dim, dim);
			return -EINVAL;
		}
		if (snap_reserve(s, cap, s->pub.n + 1, dim) < 0) {
			snprintf(why, whylen, "out of memory");
			return -ENOMEM;
		}
		if (parse_vector(emb, s->vectors + s->pub.n * dim, dim) < 0)
			continue;
		s->chunk_ids[s->pub.n] = *last_id;
		s->document_ids[s->pub.n] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		s->pub.n++;
	}
	return rows;
}

static const char load_sql[] =
	"SELECT id, document_id, embedding::text FROM chunk "
	"WHERE collection_id = $1::bigint AND id > $2::bigint AND embedding IS NOT NULL "
	"ORDER BY id LIMIT 4096";

/* Work pool: the whole collection, a page at a time (a page of 4096
 * vectors of 1024 floats is some 40 MB of text; the whole collection at
 * once would be far more). */
static void load_work(void *arg)
{
	struct vec_load *ld = arg;
	const struct lg_host *h = ld->r->host;
	struct snap *s = calloc(1, sizeof *s);
	char cid[24], after[24], err[256];
	int64_t last_id = 0;
	size_t cap = 0;
	int rows;

	if (!s) {
		snprintf(ld->error, sizeof ld->error, "out of memory");
		return;
	}
	s->pub.collection_id = ld->collection_id;
	snprintf(cid, sizeof cid, "%" PRId64, ld->collection_id);
	do {
		const char *params[] = { cid, after };
		PGresult *res = NULL;

		snprintf(after, sizeof after, "%" PRId64, last_id);
		if (h->db_query_sync(ld->r->self, load_sql, 2, params, &res, err, sizeof err) < 0 ||
		    !res) {
			h->log(ld->r->self, LG_LOG_ERROR, "loading the vectors of collection %s: %s",
			       cid, err);
			snprintf(ld->error, sizeof ld->error,
				 "The database is not available, please try again later.");
			goto fail;
		}
		rows = load_rows(s, &cap, res, &last_id, ld->error, sizeof ld->error);
		PQclear(res);
		if (rows < 0)
			goto fail;
	} while (rows == VEC_PAGE_ROWS);
	s->bytes = sizeof *s + cap * (s->pub.dim * sizeof(float) + 2 * sizeof(int64_t));
	s->pub.vectors = s->vectors;
	s->pub.chunk_ids = s->chunk_ids;
	s->pub.document_ids = s->document_ids;
	atomic_init(&s->refs, 1);
	ld->snap = s;
	return;
fail:
	snap_free(s);
}

/* ---- the map ---- */

static struct snap *map_find(const struct vec_map *m, int64_t id)
{
	size_t lo = 0, hi = m ? m->n : 0;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int64_t at = m->snaps[mid]->pub.collection_id;

		if (at == id)
			return m->snaps[mid];
		if (at < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static void map_free(struct vec_map *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n; i++)
		rag_snap_release(&m->snaps[i]->pub);
	free(m);
}

struct retire {
	struct rag *r;
	struct vec_map *map;
};

static void retire_work(void *arg)
{
	struct retire *rt = arg;

	rt->r->host->sync_workers(rt->r->self);
	map_free(rt->map);
	rt->map = NULL;
}

static void retire_done(void *arg)
{
	free(arg);
}

/* After a swap: the old map goes once no worker can be reading it. */
static void map_retire(struct rag *r, struct vec_map *old)
{
	struct retire *rt;

	if (!old)
		return;
	rt = malloc(sizeof *rt);
	if (rt) {
		*rt = (struct retire){ .r = r, .map = old };
		if (r->host->work_submit(r->self, retire_work, retire_done, rt) == 0)
			return;
		free(rt);
	}
	/* Freeing it now could pull it from under a worker: keep it. */
	r->host->log(r->self, LG_LOG_ERROR, "rag vectors: an old map is kept (%zu collections)",
		     old->n);
}

/* A copy of @m without @drop and with @add (either may be NULL), each
 * member referenced once more. Caller holds v->lock. */
static struct vec_map *map_edit(const struct vec_map *m, const struct snap *drop,
				struct snap *add)
{
	size_t n = m ? m->n : 0, k = 0;
	struct vec_map *out = malloc(sizeof *out + (n + 1) * sizeof out->snaps[0]);

	if (!out)
		return NULL;
	out->bytes = 0;
	for (size_t i = 0; i < n; i++) {
		struct snap *s = m->snaps[i];

		if (s == drop)
			continue;
		if (add && add->pub.collection_id < s->pub.collection_id) {
			out->snaps[k++] = add;
			add = NULL;
		}
		out->snaps[k++] = s;
	}
	if (add)
		out->snaps[k++] = add;
	out->n = k;
	for (size_t i = 0; i < k; i++) {
		snap_ref(out->snaps[i]);
		out->bytes += out->snaps[i]->bytes;
	}
	return out;
}

static void map_publish(struct rag_vectors *v, struct vec_map *next)
{
	struct vec_map *old = atomic_exchange_explicit(&v->map, next, memory_order_acq_rel);

	map_retire(v->r, old);
}

/* The least recently used member other than @keep, or NULL. */
static struct snap *map_lru(const struct vec_map *m, const struct snap *keep)
{
	struct snap *lru = NULL;
	uint_fast64_t at = UINT_FAST64_MAX;

	for (size_t i = 0; m && i < m->n; i++) {
		uint_fast64_t t = atomic_load_explicit(&m->snaps[i]->last_used,
						       memory_order_relaxed);

		if (m->snaps[i] != keep && t < at) {
			lru = m->snaps[i];
			at = t;
		}
	}
	return lru;
}

/* Keeps @s in memory, evicting the least recently used collections to make
 * room. Caller holds v->lock. */
static void vectors_keep(struct rag_vectors *v, struct snap *s)
{
	struct vec_map *cur = atomic_load_explicit(&v->map, memory_order_acquire);
	struct snap *old = map_find(cur, s->pub.collection_id);
	struct vec_map *next = map_edit(cur, old, s);

	while (next && next->bytes > v->max_bytes) {
		struct snap *lru = map_lru(next, s);
		struct vec_map *smaller = map_edit(next, lru ? lru : s, NULL);

		map_free(next);
		next = smaller;
		if (!lru) {
			v->r->host->log(v->r->self, LG_LOG_WARN,
					"collection %" PRId64 ": %zu bytes of vectors do not fit in "
					"vectors_max_bytes; loaded at each search",
					s->pub.collection_id, s->bytes);
			break;
		}
		v->r->host->log(v->r->self, LG_LOG_INFO,
				"collection %" PRId64 ": vectors evicted from memory",
				lru->pub.collection_id);
	}
	if (next)
		map_publish(v, next);
}

/* ---- loads ---- */

static bool forgotten_since(const struct rag_vectors *v, int64_t id, size_t since)
{
	for (size_t i = since; i < v->nforgotten; i++)
		if (v->forgotten[i] == id || v->forgotten[i] == 0)
			return true;
	return false;
}

static void load_done(void *arg)
{
	struct vec_load *ld = arg;
	struct rag_vectors *v = ld->r->vectors;

	pthread_mutex_lock(&v->lock);
	if (ld->snap) {
		atomic_store_explicit(&ld->snap->last_used,
				      atomic_fetch_add(&v->clock, 1), memory_order_relaxed);
		if (!forgotten_since(v, ld->collection_id, ld->forgotten_at))
			vectors_keep(v, ld->snap);
	}
	if (--v->loads == 0)
		v->nforgotten = 0;
	pthread_mutex_unlock(&v->lock);
	ld->done(ld->arg, ld->snap ? &ld->snap->pub : NULL, ld->error);
	free(ld);
}

int rag_vectors_get(struct rag *r, int64_t collection_id, struct rag_snap **out,
		    rag_vectors_fn done, void *arg)
{
	struct rag_vectors *v = r->vectors;
	struct snap *s;
	struct vec_load *ld;
	int rc;

	if (!v)
		return -ENODEV;
	s = map_find(atomic_load_explicit(&v->map, memory_order_acquire), collection_id);
	if (s) {
		/* The map holds a reference until a grace period after it is
		 * replaced, and this worker is inside its callback: safe. */
		snap_ref(s);
		atomic_store_explicit(&s->last_used, atomic_fetch_add(&v->clock, 1),
				      memory_order_relaxed);
		*out = &s->pub;
		return 1;
	}
	ld = calloc(1, sizeof *ld);
	if (!ld)
		return -ENOMEM;
	*ld = (struct vec_load){ .r = r, .collection_id = collection_id, .done = done,
				 .arg = arg };
	pthread_mutex_lock(&v->lock);
	ld->forgotten_at = v->nforgotten;
	v->loads++;
	pthread_mutex_unlock(&v->lock);
	rc = r->host->work_submit(r->self, load_work, load_done, ld);
	if (rc < 0) {
		pthread_mutex_lock(&v->lock);
		if (--v->loads == 0)
			v->nforgotten = 0;
		pthread_mutex_unlock(&v->lock);
		free(ld);
		return rc;
	}
	return 0;
}

/* ---- forgetting ---- */

static void remember_forgotten(struct rag_vectors *v, int64_t id)
{
	if (v->nforgotten == v->capforgotten) {
		size_t cap = v->capforgotten ? v->capforgotten * 2 : 16;
		int64_t *f = realloc(v->forgotten, cap * sizeof *f);

		if (!f) {
			/* Without the list, no load in flight may be kept. */
			v->r->host->log(v->r->self, LG_LOG_ERROR, "rag vectors: out of memory");
			return;
		}
		v->forgotten = f;
		v->capforgotten = cap;
	}
	v->forgotten[v->nforgotten++] = id;
}

void rag_vectors_forget(struct rag *r, int64_t collection_id)
{
	struct rag_vectors *v = r->vectors;
	struct vec_map *cur;
	struct snap *s;

	if (!v)
		return;
	pthread_mutex_lock(&v->lock);
	if (v->loads)
		remember_forgotten(v, collection_id);
	cur = atomic_load_explicit(&v->map, memory_order_acquire);
	s = map_find(cur, collection_id);
	if (s) {
		struct vec_map *next = map_edit(cur, s, NULL);

		if (next)
			map_publish(v, next);
		else
			r->host->log(r->self, LG_LOG_ERROR, "rag vectors: out of memory; "
				     "collection %" PRId64 " may be stale", collection_id);
	}
	pthread_mutex_unlock(&v->lock);
}

/* Every collection: NOTIFYs may have been missed. Loads in flight are not
 * kept either (0 stands for all in the forgotten list). */
static void vectors_forget_all(struct rag *r)
{
	struct rag_vectors *v = r->vectors;
	struct vec_map *empty;

	if (!v)
		return;
	pthread_mutex_lock(&v->lock);
	if (v->loads)
		remember_forgotten(v, 0);
	empty = calloc(1, sizeof *empty);
	if (empty)
		map_publish(v, empty);
	else
		r->host->log(r->self, LG_LOG_ERROR, "rag vectors: out of memory; vectors may be stale");
	pthread_mutex_unlock(&v->lock);
}

void rag_vectors_notify(const char *channel, const char *payload, void *arg)
{
	struct rag *r = arg;
	const char *prefix = "collection:";
	char *end;
	long long id;

	(void)channel;
	if (!payload || !*payload) {
		vectors_forget_all(r);
		return;
	}
	if (strncmp(payload, prefix, strlen(prefix)) != 0)
		return;
	errno = 0;
	id = strtoll(payload + strlen(prefix), &end, 10);
	if (errno || *end || id <= 0)
		return;
	rag_vectors_forget(r, id);
}

/* ---- start and stop ---- */

int rag_vectors_start(struct rag *r)
{
	struct rag_vectors *v;
	uint64_t max = VEC_DEFAULT_MAX_BYTES;

	if (r->vectors)
		return 0;
	/* Until the setting is in the table, the default holds. */
	if (r->host->cfg_u64(r->self, "vectors_max_bytes", &max) < 0)
		max = VEC_DEFAULT_MAX_BYTES;
	v = calloc(1, sizeof *v);
	if (!v)
		return -ENOMEM;
	v->r = r;
	v->max_bytes = max;
	atomic_init(&v->map, NULL);
	atomic_init(&v->clock, 1);
	if (pthread_mutex_init(&v->lock, NULL) != 0) {
		free(v);
		return -ENOMEM;
	}
	r->vectors = v;
	return 0;
}

/* After the workers and the work pool have stopped. */
void rag_vectors_stop(struct rag *r)
{
	struct rag_vectors *v = r->vectors;

	if (!v)
		return;
	map_free(atomic_load(&v->map));
	pthread_mutex_destroy(&v->lock);
	free(v->forgotten);
	free(v);
	r->vectors = NULL;
}
