-- Grants for the outbox pruning job (`flask --app webapp mail prune`, strongroom-outbox-prune.timer,
-- with STRONGROOM_OUTBOX_PRUNE_DATABASE_URL pointing at this user). Run after grants.sql, as the
-- database owner, with the app's database selected:
--
--   mariadb strongroom < webapp/db/grants-prune.sql
--
-- Create the user first (password set separately, never in a file):
--   CREATE USER 'strongroom_prune'@'localhost' IDENTIFIED BY '...';
--
-- The web app may never delete an alert (grants.sql gives it no DELETE): an intruder in the app cannot
-- erase the alerts it raised. This user deletes sent outbox rows past their retention and can do
-- nothing else: it reads only the two columns the DELETE's WHERE needs, and no other table (its audit
-- record goes through the web app's own user). tests/webapp/test_outbox_prune.py checks both.

GRANT SELECT (id, sent_at), DELETE ON outbox TO 'strongroom_prune'@'localhost';
