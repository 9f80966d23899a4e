-- The usage ledger: one row per forwarded call that resolved a model,
-- written by the usage plugin in batches. Partitioned by month on created;
-- the plugin creates the current and next month's partitions at start and
-- the default partition takes whatever falls outside them, so no insert
-- ever fails for want of a partition.
CREATE TABLE usage (
	id bigserial,
	record_id text NOT NULL,            -- unique per record, made by the plugin
	request_id text NOT NULL,           -- x-request-id (a client may reuse one)
	created timestamptz NOT NULL,
	endpoint text NOT NULL,
	method text NOT NULL,
	status int NOT NULL,
	user_id bigint,
	key_id bigint,
	organization_id bigint,
	user_name text,
	key_name text,
	model_id bigint,
	model_name text,
	provider_id bigint,
	provider_model text,
	prompt_tokens bigint NOT NULL DEFAULT 0,
	completion_tokens bigint NOT NULL DEFAULT 0,
	total_tokens bigint NOT NULL DEFAULT 0,
	usage_estimated boolean NOT NULL DEFAULT false,
	latency_ms double precision NOT NULL,
	ttft_ms double precision,
	cost double precision NOT NULL DEFAULT 0,
	client_gone boolean NOT NULL DEFAULT false,
	error text
) PARTITION BY RANGE (created);

CREATE TABLE usage_default PARTITION OF usage DEFAULT;

-- Inserts are idempotent on record_id (a journal replayed twice adds
-- nothing); PostgreSQL wants the partition key in a unique index.
CREATE UNIQUE INDEX usage_record_id ON usage (record_id, created);
CREATE INDEX usage_request_id ON usage (request_id, created);
CREATE INDEX usage_user_created ON usage (user_id, created);
