-- rag: collections of documents cut into chunks, searched by full text
-- (PostgreSQL's own ranking) and by embeddings (cosine similarity, computed
-- by llmgate over vectors it holds in memory per collection).
-- Owners are users of the auth plugin (user_id; 0 is the master key).

CREATE TABLE collection (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT NULL,
    visibility   TEXT NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'public')),
    created      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX collection_user_idx ON collection (user_id, id);
CREATE INDEX collection_public_idx ON collection (id) WHERE visibility = 'public';

CREATE TABLE document (
    id             BIGSERIAL PRIMARY KEY,
    collection_id  BIGINT NOT NULL REFERENCES collection (id) ON DELETE CASCADE,
    name           TEXT NOT NULL,
    size           BIGINT NOT NULL DEFAULT 0,     -- bytes of the uploaded file
    created        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX document_collection_idx ON document (collection_id, id);

-- position: the chunk's rank in its document (0, 1, ...). language: the
-- text search configuration its vector was made with. embedding: float4
-- values, as many as the embeddings model's dimensions, or NULL until made.
CREATE TABLE chunk (
    id             BIGSERIAL PRIMARY KEY,
    collection_id  BIGINT NOT NULL REFERENCES collection (id) ON DELETE CASCADE,
    document_id    BIGINT NOT NULL REFERENCES document (id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    content        TEXT NOT NULL,
    metadata       JSONB NULL,
    language       REGCONFIG NOT NULL DEFAULT 'english',
    tsv            TSVECTOR NOT NULL,
    embedding      REAL[] NULL,
    created        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT chunk_position_key UNIQUE (document_id, position)
);
CREATE INDEX chunk_collection_idx ON chunk (collection_id, id);
CREATE INDEX chunk_tsv_idx ON chunk USING GIN (tsv);

CREATE FUNCTION rag_touch_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END $$;
CREATE TRIGGER collection_touch BEFORE UPDATE ON collection
    FOR EACH ROW EXECUTE FUNCTION rag_touch_updated();

-- Other instances keep their in-memory vectors in step: "collection:<id>"
-- whenever a collection's chunks change (or it goes).
CREATE FUNCTION rag_notify_chunks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('llmgate_rag', 'collection:' || COALESCE(NEW.collection_id, OLD.collection_id));
    RETURN NULL;
END $$;
CREATE TRIGGER chunk_notify AFTER INSERT OR UPDATE OR DELETE ON chunk
    FOR EACH ROW EXECUTE FUNCTION rag_notify_chunks();
CREATE FUNCTION rag_notify_collection() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('llmgate_rag', 'collection:' || OLD.id);
    RETURN NULL;
END $$;
CREATE TRIGGER collection_notify AFTER DELETE ON collection
    FOR EACH ROW EXECUTE FUNCTION rag_notify_collection();
