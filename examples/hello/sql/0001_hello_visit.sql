-- One row per name greeted, with how many times.
CREATE TABLE hello_visit (
    name   TEXT PRIMARY KEY,
    visits BIGINT NOT NULL DEFAULT 0
);
