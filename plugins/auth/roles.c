/* SPDX-License-Identifier: Apache-2.0 */
/* Roles, their permissions and their limits per model, read in one query
 * (PostgreSQL builds the JSON) into an immutable snapshot. Readers take a
 * reference without any lock; a reload publishes a new snapshot, waits
 * until every worker has left the get() that may have loaded the old one
 * (host->sync_workers), then drops the old one's reference: it goes when
 * its last reader lets go. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "auth.h"

static const char roles_sql[] =
	"SELECT COALESCE(json_agg(json_build_object("
	"'id', r.id, "
	"'permissions', (SELECT COALESCE(json_agg(p.permission), '[]'::json) "
	"FROM permission p WHERE p.role_id = r.id), "
	"'limits', (SELECT COALESCE(json_agg(json_build_array(l.model_id, l.type, l.value) "
	"ORDER BY l.model_id), '[]'::json) FROM role_limit l WHERE l.role_id = r.id)"
	") ORDER BY r.id), '[]'::json) FROM role r";

static const char *const permission_names[] = {
	"admin", "read_metric", "provide_models", "create_public_collection",
};
static const uint32_t permission_bits[] = {
	LG_PERM_ADMIN, LG_PERM_READ_METRIC, LG_PERM_PROVIDE_MODELS,
	LG_PERM_CREATE_PUBLIC_COLLECTION,
};
static const char *const limit_names[AUTH_LIMIT_TYPES] = { "tpm", "tpd", "rpm", "rpd" };

static void roles_free(struct auth_roles *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->nroles; i++)
		free(r->roles[i].limits);
	free(r->roles);
	free(r);
}

static struct auth_roles *roles_empty(void)
{
	struct auth_roles *r = calloc(1, sizeof *r);

	if (r)
		atomic_init(&r->refs, 1);
	return r;
}

static uint32_t parse_permissions(const json_t *list)
{
	uint32_t bits = 0;
	size_t i;
	const json_t *v;

	json_array_foreach(list, i, v) {
		const char *name = json_string_value(v);

		for (size_t k = 0; name && k < LG_COUNT(permission_names); k++)
			if (strcmp(name, permission_names[k]) == 0)
				bits |= permission_bits[k];
	}
	return bits;
}

static int limit_type(const char *name)
{
	for (int t = 0; name && t < AUTH_LIMIT_TYPES; t++)
		if (strcmp(name, limit_names[t]) == 0)
			return t;
	return -1;
}

/* [[model_id, type, value], ...] sorted by model_id -> one auth_limits per
 * model. */
static int parse_limits(const json_t *list, struct auth_role *role)
{
	size_t n = json_array_size(list), i;
	const json_t *row;

	role->limits = n ? calloc(n, sizeof *role->limits) : NULL;
	if (n && !role->limits)
		return -ENOMEM;
	json_array_foreach(list, i, row) {
		int64_t model = json_integer_value(json_array_get(row, 0));
		int type = limit_type(json_string_value(json_array_get(row, 1)));
		const json_t *value = json_array_get(row, 2);
		struct auth_limits *l;

		if (type < 0 || !json_is_integer(json_array_get(row, 0)))
			return -EINVAL;
		if (!role->nlimits || role->limits[role->nlimits - 1].model_id != model) {
			l = &role->limits[role->nlimits++];
			l->model_id = model;
			for (int t = 0; t < AUTH_LIMIT_TYPES; t++)
				l->value[t] = AUTH_LIMIT_UNSET;
		}
		l = &role->limits[role->nlimits - 1];
		l->value[type] = json_is_integer(value) ? json_integer_value(value)
							: AUTH_LIMIT_NONE;
	}
	return 0;
}

static struct auth_roles *roles_parse(const char *text, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *root = json_loads(text, 0, &jerr);
	struct auth_roles *r = NULL;
	size_t i;
	const json_t *v;

	if (!json_is_array(root)) {
		snprintf(err, errlen, "roles: unexpected reply from the database");
		goto out;
	}
	r = roles_empty();
	if (!r || (json_array_size(root) &&
		   !(r->roles = calloc(json_array_size(root), sizeof *r->roles)))) {
		snprintf(err, errlen, "roles: out of memory");
		goto fail;
	}
	json_array_foreach(root, i, v) {
		struct auth_role *role = &r->roles[r->nroles++];

		role->id = json_integer_value(json_object_get(v, "id"));
		role->permissions = parse_permissions(json_object_get(v, "permissions"));
		if (parse_limits(json_object_get(v, "limits"), role) != 0) {
			snprintf(err, errlen, "roles: cannot read the limits of role %lld",
				 (long long)role->id);
			goto fail;
		}
	}
	goto out;
fail:
	roles_free(r);
	r = NULL;
out:
	json_decref(root);
	return r;
}

/* Swaps in @r and lets go of the snapshot it replaces. */
static void roles_publish(struct auth *a, struct auth_roles *r)
{
	struct auth_roles *old;

	old = atomic_exchange_explicit(&a->roles, r, memory_order_acq_rel);
	a->host->sync_workers(a->self);
	auth_roles_put(old);
}

int auth_roles_init(struct auth *a)
{
	struct auth_roles *r = roles_empty();

	atomic_store(&a->roles, r);
	return r ? 0 : -ENOMEM;
}

struct auth_roles *auth_roles_get(struct auth *a)
{
	struct auth_roles *r;

	r = atomic_load_explicit(&a->roles, memory_order_acquire);
	atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
	return r;
}

void auth_roles_put(struct auth_roles *r)
{
	if (r && atomic_fetch_sub(&r->refs, 1) == 1)
		roles_free(r);
}

const struct auth_role *auth_roles_find(const struct auth_roles *r, int64_t role_id)
{
	size_t lo = 0, hi = r->nroles;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (r->roles[mid].id == role_id)
			return &r->roles[mid];
		if (r->roles[mid].id < role_id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

const struct auth_limits *auth_role_limits(const struct auth_role *role, int64_t model_id)
{
	size_t lo = 0, hi = role->nlimits;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (role->limits[mid].model_id == model_id)
			return &role->limits[mid];
		if (role->limits[mid].model_id < model_id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int auth_roles_load_sync(struct auth *a, char *err, size_t errlen)
{
	PGresult *res = NULL;
	struct auth_roles *r;
	int rc;

	rc = a->host->db_query_sync(a->self, roles_sql, 0, NULL, &res, err, errlen);
	if (rc < 0)
		return rc;
	r = PQntuples(res) == 1 ? roles_parse(PQgetvalue(res, 0, 0), err, errlen) : NULL;
	if (PQntuples(res) != 1)
		snprintf(err, errlen, "roles: unexpected reply from the database");
	PQclear(res);
	if (!r)
		return -EIO;
	roles_publish(a, r);
	return 0;
}

static void reload_done(const PGresult *res, const char *error, void *arg)
{
	struct auth *a = arg;
	struct auth_roles *r = NULL;
	char err[256] = "";

	a->roles_reloading = false;
	if (a->stopping)
		return;
	if (error)
		a->host->log(a->self, LG_LOG_WARN, "roles not reloaded: %s", error);
	else if (PQntuples(res) == 1 &&
		 (r = roles_parse(PQgetvalue(res, 0, 0), err, sizeof err)) != NULL)
		roles_publish(a, r);
	else
		a->host->log(a->self, LG_LOG_ERROR, "roles not reloaded: %s", err);
	/* A change announced while this query ran may not be in its answer. */
	if (a->roles_reload_again) {
		a->roles_reload_again = false;
		auth_roles_reload(a);
	}
}

void auth_roles_reload(struct auth *a)
{
	if (a->stopping)
		return;
	if (a->roles_reloading) {
		a->roles_reload_again = true;
		return;
	}
	if (a->host->db_query(a->self, roles_sql, 0, NULL, reload_done, a) < 0) {
		a->host->log(a->self, LG_LOG_WARN, "roles not reloaded: the database is unavailable");
		return;
	}
	a->roles_reloading = true;
}

bool auth_model_access(const struct lg_principal *who, int64_t model_id, void *ud)
{
	struct auth *a = ud;
	struct auth_roles *r = auth_roles_get(a);
	const struct auth_role *role = auth_roles_find(r, who->role_id);
	const struct auth_limits *l = role ? auth_role_limits(role, model_id) : NULL;
	bool ok = l != NULL;

	for (int t = 0; ok && t < AUTH_LIMIT_TYPES; t++)
		if (l->value[t] == 0)
			ok = false;
	auth_roles_put(r);
	return ok;
}

void auth_roles_free_all(struct auth *a)
{
	auth_roles_put(atomic_exchange(&a->roles, NULL));
}
