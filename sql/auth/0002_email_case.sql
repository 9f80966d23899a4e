-- Emails are unique whatever their case, as logins compare them
-- (lower(email) = lower($1)), and a user has one playground key, which
-- each login replaces.

-- Two users whose emails differ only in case would make the index below
-- fail with an obscure message: say which ones, so that an operator can
-- rename one and start again.
DO $$
DECLARE
    clash TEXT;
BEGIN
    SELECT string_agg(ids, '; ') INTO clash FROM (
        SELECT string_agg(id::text, ', ' ORDER BY id) AS ids FROM "user"
        GROUP BY lower(email) HAVING count(*) > 1) AS d;
    IF clash IS NOT NULL THEN
        RAISE EXCEPTION 'users whose emails differ only in case (ids %): change the email '
            'of all but one of each before upgrading', clash;
    END IF;
END $$;

-- user_email_key stays: it is the arbiter of the bootstrap admin's upsert.
CREATE UNIQUE INDEX user_email_lower_key ON "user" (lower(email));

-- Logins made a new playground key each time: keep the newest per user.
DELETE FROM token t USING token n
WHERE t.name = '_system_playground_key' AND n.name = '_system_playground_key'
  AND n.user_id = t.user_id AND n.id > t.id;
CREATE UNIQUE INDEX token_playground_key ON token (user_id)
    WHERE name = '_system_playground_key';
