-- Grants for the purge of retired cards and items (`flask --app webapp records purge-retired`,
-- strongroom-purge-retired.timer, with STRONGROOM_PURGE_DATABASE_URL pointing at this user). Run
-- after grants.sql, as the database owner, with the app's database selected:
--
--   mariadb strongroom < webapp/db/grants-purge.sql
--
-- Create the user first (password set separately, never in a file):
--   CREATE USER 'strongroom_purge'@'localhost' IDENTIFIED BY '...';
--
-- The web app may never delete a card (grants.sql gives it no DELETE). This user deletes cards and
-- items retired past their retention and can do nothing else: it reads only the ids and retirement
-- times the DELETE's WHERE needs (never a stored value), and no other table (its audit record goes
-- through the web app's own user). tests/webapp/test_reveal_retired.py sets it up from this file.

GRANT SELECT (id, retired_at) ON customer_records TO 'strongroom_purge'@'localhost';
GRANT SELECT (id, record_id, retired_at), DELETE ON cards TO 'strongroom_purge'@'localhost';
GRANT SELECT (id, record_id, retired_at), DELETE ON items TO 'strongroom_purge'@'localhost';
