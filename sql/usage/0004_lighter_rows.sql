-- Less work for PostgreSQL per row loaded, the ledger's main cost under
-- load (docs/usage.md, "What the ledger costs").

-- The surrogate key drew nextval() for every row and nothing reads it:
-- record_id, unique by construction, orders rows that share a timestamp.
ALTER TABLE usage DROP COLUMN id;

-- Calls of users outside any organization (and of the master key) need no
-- entry here: the organization queries ask for one organization, which
-- implies NOT NULL, so the planner still uses this index for them.
DROP INDEX usage_organization_created;
CREATE INDEX usage_organization_created ON usage (organization_id, created)
	WHERE organization_id IS NOT NULL;
