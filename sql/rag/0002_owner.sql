-- rag: the owner's name as the collection shows it (spec §10.1 "owner"),
-- taken from the principal at creation: the AUTH plugin may be any, so its
-- tables are not joined.
ALTER TABLE collection ADD COLUMN owner TEXT NOT NULL DEFAULT '';
