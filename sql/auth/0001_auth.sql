-- auth: organizations, roles with permissions and per-model limits, users,
-- API keys, and the counters that keep rate limits in step across instances.
-- Names follow OpenGateLLM's schema; "limit" is role_limit here, since LIMIT
-- is an SQL keyword. Every change that a cache may hold (keys, users, roles)
-- is announced on the llmgate_auth channel by the triggers at the end, so
-- that every instance forgets it, whoever made the change.

CREATE TABLE organization (
    id       BIGSERIAL PRIMARY KEY,
    name     TEXT NOT NULL,
    created  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT organization_name_key UNIQUE (name)
);

CREATE TABLE role (
    id       BIGSERIAL PRIMARY KEY,
    name     TEXT NOT NULL,
    created  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT role_name_key UNIQUE (name)
);

CREATE TABLE permission (
    id          BIGSERIAL PRIMARY KEY,
    role_id     BIGINT NOT NULL REFERENCES role (id) ON DELETE CASCADE,
    permission  TEXT NOT NULL CHECK (permission IN
                ('admin', 'read_metric', 'provide_models', 'create_public_collection')),
    created     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT permission_role_key UNIQUE (role_id, permission)
);

-- A role reaches a model only through its limit rows (spec §5.2): none, or
-- one with value 0, means no access; NULL means unlimited for that type.
CREATE TABLE role_limit (
    id        BIGSERIAL PRIMARY KEY,
    role_id   BIGINT NOT NULL REFERENCES role (id) ON DELETE CASCADE,
    model_id  BIGINT NOT NULL REFERENCES model (id) ON DELETE CASCADE,
    type      TEXT NOT NULL CHECK (type IN ('tpm', 'tpd', 'rpm', 'rpd')),
    value     BIGINT NULL CHECK (value >= 0),
    created   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT role_limit_key UNIQUE (role_id, model_id, type)
);
CREATE INDEX role_limit_model_idx ON role_limit (model_id);

CREATE TABLE "user" (
    id               BIGSERIAL PRIMARY KEY,
    email            TEXT NOT NULL,
    password         TEXT NULL,             -- Argon2id ($argon2id$...), NULL: no login
    name             TEXT NULL,
    sub              TEXT NULL,
    iss              TEXT NULL,
    role_id          BIGINT NOT NULL REFERENCES role (id) ON DELETE RESTRICT,
    organization_id  BIGINT NOT NULL REFERENCES organization (id) ON DELETE RESTRICT,
    budget           NUMERIC(20, 6) NULL CHECK (budget >= 0),  -- NULL: unlimited
    expires          TIMESTAMPTZ NULL,
    priority         INTEGER NOT NULL DEFAULT 0 CHECK (priority >= 0),
    created          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT user_email_key UNIQUE (email),
    CONSTRAINT user_sub_iss_key UNIQUE (sub, iss)
);
CREATE INDEX user_role_idx ON "user" (role_id);
CREATE INDEX user_organization_idx ON "user" (organization_id);

-- API keys. Only the keyed BLAKE2b hash of a key is stored, and its masked
-- form for listings; the key itself is shown once, at creation.
CREATE TABLE token (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES "user" (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    hash        BYTEA NOT NULL,
    masked      TEXT NOT NULL,
    expires     TIMESTAMPTZ NULL,
    revoked     BOOLEAN NOT NULL DEFAULT false,
    revoked_at  TIMESTAMPTZ NULL,
    created     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT token_hash_key UNIQUE (hash)
);
CREATE INDEX token_user_idx ON token (user_id, id);

-- Requests and tokens admitted per user, model and window, summed over
-- instances. Lost on a crash by design (UNLOGGED): the windows are short.
CREATE UNLOGGED TABLE rate_counter (
    user_id       BIGINT NOT NULL,
    model_id      BIGINT NOT NULL,
    type          TEXT NOT NULL CHECK (type IN ('tpm', 'tpd', 'rpm', 'rpd')),
    window_start  TIMESTAMPTZ NOT NULL,
    count         BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, model_id, type, window_start)
);
CREATE INDEX rate_counter_window_idx ON rate_counter (window_start);

INSERT INTO organization (name) VALUES ('default');

CREATE FUNCTION auth_touch_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END $$;
CREATE TRIGGER organization_touch BEFORE UPDATE ON organization
    FOR EACH ROW EXECUTE FUNCTION auth_touch_updated();
CREATE TRIGGER role_touch BEFORE UPDATE ON role
    FOR EACH ROW EXECUTE FUNCTION auth_touch_updated();
CREATE TRIGGER user_touch BEFORE UPDATE ON "user"
    FOR EACH ROW EXECUTE FUNCTION auth_touch_updated();

-- Cache invalidation: "key:<id>", "user:<id>" or "roles".
CREATE FUNCTION auth_notify_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('llmgate_auth', 'key:' || COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END $$;
CREATE TRIGGER token_notify AFTER UPDATE OR DELETE ON token
    FOR EACH ROW EXECUTE FUNCTION auth_notify_key();

CREATE FUNCTION auth_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('llmgate_auth', 'user:' || COALESCE(NEW.id, OLD.id));
    RETURN NULL;
END $$;
-- Budget charges change only the amount, many times a second: they must not
-- flush caches, which hold only whether a budget applies.
CREATE TRIGGER user_notify AFTER UPDATE ON "user"
    FOR EACH ROW WHEN (OLD.email IS DISTINCT FROM NEW.email
                       OR OLD.name IS DISTINCT FROM NEW.name
                       OR OLD.role_id IS DISTINCT FROM NEW.role_id
                       OR OLD.organization_id IS DISTINCT FROM NEW.organization_id
                       OR OLD.expires IS DISTINCT FROM NEW.expires
                       OR (OLD.budget IS NULL) <> (NEW.budget IS NULL))
    EXECUTE FUNCTION auth_notify_user();
CREATE TRIGGER user_notify_delete AFTER DELETE ON "user"
    FOR EACH ROW EXECUTE FUNCTION auth_notify_user();

CREATE FUNCTION auth_notify_roles() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('llmgate_auth', 'roles');
    RETURN NULL;
END $$;
CREATE TRIGGER role_notify AFTER INSERT OR UPDATE OR DELETE ON role
    FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_roles();
CREATE TRIGGER permission_notify AFTER INSERT OR UPDATE OR DELETE ON permission
    FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_roles();
CREATE TRIGGER role_limit_notify AFTER INSERT OR UPDATE OR DELETE ON role_limit
    FOR EACH STATEMENT EXECUTE FUNCTION auth_notify_roles();
