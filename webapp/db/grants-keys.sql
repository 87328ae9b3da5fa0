-- Grants for the key-rotation maintenance user (`flask --app webapp keys rewrap|versions|retire` with
-- STRONGROOM_KEYS_DATABASE_URL pointing at it). Run after grants.sql, as the database owner, with the
-- app's database selected:
--
--   mariadb strongroom < webapp/db/grants-keys.sql
--
-- Create the user first (password set separately, never in a file):
--   CREATE USER 'strongroom_keys'@'localhost' IDENTIFIED BY '...';
--
-- The rewrap job replaces ciphertexts in place and keeps a resumable checkpoint; it reads nothing
-- else. Its UPDATE is limited to the encrypted columns: it cannot change a card's brand, last four
-- digits or record, nor touch the audit trail (its audit rows go through the web app's own user).
-- tests/webapp/keys/test_grants.py checks that every column in webapp.records.tables.ENCRYPTED_COLUMNS
-- is listed here, so a new encrypted column cannot be forgotten.

GRANT SELECT (id, pan_ct, name_ct, expiry_ct), UPDATE (pan_ct, name_ct, expiry_ct)
    ON cards TO 'strongroom_keys'@'localhost';
GRANT SELECT (id, value_ct), UPDATE (value_ct) ON items TO 'strongroom_keys'@'localhost';
GRANT SELECT, INSERT, UPDATE, DELETE ON key_rewrap_checkpoints TO 'strongroom_keys'@'localhost';
