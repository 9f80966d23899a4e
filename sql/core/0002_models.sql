-- The model registry: models (OpenGateLLM's routers), their aliases and
-- their providers (OpenGateLLM's providers, here model_client).
--
-- Names and aliases share one namespace: a name is either a model's name or
-- one alias, never both and never twice. UNIQUE constraints cover each table;
-- the constraint trigger model_namespace covers the pair, under an advisory
-- lock per name so that two instances cannot take the same name at once.
-- Deferrable checks run at the end of each statement, so one statement may
-- replace a model's aliases (delete and insert the same value).

CREATE TABLE model (
    id                      BIGSERIAL PRIMARY KEY,
    name                    TEXT NOT NULL
        CONSTRAINT model_name_key UNIQUE
        CONSTRAINT model_name_length CHECK (char_length(name) BETWEEN 1 AND 64),
    type                    TEXT NOT NULL
        CONSTRAINT model_type_check CHECK (type IN ('text-generation',
            'text-embeddings-inference', 'text-classification',
            'automatic-speech-recognition', 'image-to-text')),
    load_balancing_strategy TEXT NOT NULL DEFAULT 'shuffle'
        CONSTRAINT model_strategy_check CHECK (load_balancing_strategy IN ('shuffle', 'least_busy')),
    -- per million tokens; '< Infinity' also refuses NaN
    cost_prompt_tokens      DOUBLE PRECISION NOT NULL DEFAULT 0
        CHECK (cost_prompt_tokens >= 0 AND cost_prompt_tokens < 'Infinity'),
    cost_completion_tokens  DOUBLE PRECISION NOT NULL DEFAULT 0
        CHECK (cost_completion_tokens >= 0 AND cost_completion_tokens < 'Infinity'),
    -- the capabilities its providers share (probed through the admin API)
    max_context_length      BIGINT NULL CHECK (max_context_length > 0),
    vector_size             BIGINT NULL CHECK (vector_size > 0),
    -- the owner; users belong to the auth plugin, hence no foreign key
    user_id                 BIGINT NULL,
    -- declared in config.yml: reconciled at start and on reload, read-only
    -- through the admin API
    from_config             BOOLEAN NOT NULL DEFAULT false,
    created                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated                 TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE model_alias (
    id        BIGSERIAL PRIMARY KEY,
    model_id  BIGINT NOT NULL REFERENCES model (id) ON DELETE CASCADE,
    value     TEXT NOT NULL
        CONSTRAINT model_alias_length CHECK (char_length(value) BETWEEN 1 AND 64),
    CONSTRAINT model_alias_value_key UNIQUE (value) DEFERRABLE INITIALLY IMMEDIATE
);
CREATE INDEX model_alias_model_id_idx ON model_alias (model_id);

CREATE TABLE model_client (
    id                    BIGSERIAL PRIMARY KEY,
    model_id              BIGINT NOT NULL REFERENCES model (id) ON DELETE CASCADE,
    user_id               BIGINT NULL,
    type                  TEXT NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]*$'),
    url                   TEXT NOT NULL CHECK (url ~ '^https?://'),
    key                   TEXT NULL,
    model_name            TEXT NOT NULL CHECK (char_length(model_name) >= 1),
    timeout               INTEGER NOT NULL DEFAULT 300 CHECK (timeout BETWEEN 1 AND 3600), -- seconds, whole call
    connect_timeout_ms    INTEGER NULL CHECK (connect_timeout_ms > 0),    -- NULL: the server's default
    first_byte_timeout_ms INTEGER NULL CHECK (first_byte_timeout_ms > 0),
    idle_timeout_ms       INTEGER NULL CHECK (idle_timeout_ms > 0),
    max_concurrency       INTEGER NULL CHECK (max_concurrency >= 0),      -- OpenGateLLM's qos_limit; NULL: uncapped
    model_hosting_zone    TEXT NULL CHECK (model_hosting_zone ~ '^[A-Z]{3}$'), -- ISO 3166-1 alpha-3 or WOR
    model_total_params    DOUBLE PRECISION NOT NULL DEFAULT 0             -- billions
        CHECK (model_total_params >= 0 AND model_total_params < 'Infinity'),
    model_active_params   DOUBLE PRECISION NOT NULL DEFAULT 0
        CHECK (model_active_params >= 0 AND model_active_params < 'Infinity'),
    max_context_length    BIGINT NULL CHECK (max_context_length > 0),     -- probed
    vector_size           BIGINT NULL CHECK (vector_size > 0),            -- probed (embeddings)
    created               TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated               TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT model_client_unique UNIQUE (model_id, url, model_name)
);

COMMENT ON COLUMN model_client.timeout IS 'seconds: the whole upstream call';
COMMENT ON COLUMN model_client.connect_timeout_ms IS 'milliseconds; NULL: the server default';
COMMENT ON COLUMN model_client.first_byte_timeout_ms IS 'milliseconds; NULL: the server default';
COMMENT ON COLUMN model_client.idle_timeout_ms IS 'milliseconds; NULL: the server default';

-- updated follows every change of a row.
CREATE FUNCTION model_touch_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER model_touch BEFORE UPDATE ON model
    FOR EACH ROW EXECUTE FUNCTION model_touch_updated();
CREATE TRIGGER model_client_touch BEFORE UPDATE ON model_client
    FOR EACH ROW EXECUTE FUNCTION model_touch_updated();

-- One namespace for names and aliases. The advisory lock (key space 'lgm')
-- makes a concurrent transaction that takes the same name wait for this
-- one, then see its row.
CREATE FUNCTION model_namespace_check() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v TEXT;
BEGIN
    IF TG_TABLE_NAME = 'model' THEN
        v := NEW.name;
    ELSE
        v := NEW.value;
    END IF;
    PERFORM pg_advisory_xact_lock(7104365, hashtext(v));
    IF (SELECT count(*) FROM model WHERE name = v) +
       (SELECT count(*) FROM model_alias WHERE value = v) > 1 THEN
        RAISE EXCEPTION 'model_namespace: "%" is already the name or an alias of a model', v
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER model_namespace
    AFTER INSERT OR UPDATE OF name ON model
    DEFERRABLE INITIALLY IMMEDIATE
    FOR EACH ROW EXECUTE FUNCTION model_namespace_check();
CREATE CONSTRAINT TRIGGER model_alias_namespace
    AFTER INSERT OR UPDATE OF value ON model_alias
    DEFERRABLE INITIALLY IMMEDIATE
    FOR EACH ROW EXECUTE FUNCTION model_namespace_check();
