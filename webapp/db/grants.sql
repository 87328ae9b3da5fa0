-- Production grants for the web app's database user. Run AFTER `flask --app webapp db upgrade`
-- (MariaDB refuses table-level grants on tables that do not exist yet), as the database owner,
-- with the app's database selected:
--
--   mariadb strongroom < webapp/db/grants.sql
--
-- The user must already exist (its password is set separately so it never lands in a file):
--   CREATE USER 'strongroom'@'localhost' IDENTIFIED BY '...';
-- With skip-name-resolve, 'strongroom'@'localhost' can only log in over the Unix socket.
--
-- Privileges add up and cannot be subtracted: a database-wide GRANT (ON strongroom.*) would let the
-- app UPDATE and DELETE audit rows whatever this file says. So every grant here is per table, and
-- the tests check that the user holds nothing database-wide.

-- The audit trail: append and read, never change.
GRANT SELECT, INSERT ON audit_log TO 'strongroom'@'localhost';
-- The chain head is locked (SELECT ... FOR UPDATE) and advanced on every append.
GRANT SELECT, UPDATE ON audit_head TO 'strongroom'@'localhost';
-- Users are disabled, never deleted: their audit records keep naming them.
GRANT SELECT, INSERT, UPDATE ON users TO 'strongroom'@'localhost';
GRANT SELECT, INSERT ON password_history TO 'strongroom'@'localhost';
GRANT SELECT, INSERT, UPDATE ON cert_bindings TO 'strongroom'@'localhost';
-- Ended sessions are kept as evidence (ended_at, end_reason): no DELETE.
GRANT SELECT, INSERT, UPDATE ON sessions TO 'strongroom'@'localhost';
-- The mailer marks events sent and requests count coalesced events (UPDATE); neither deletes them.
-- Only the prune job deletes, as its own user (grants-prune.sql): an intruder in the app cannot erase
-- the alerts it raised.
GRANT SELECT, INSERT, UPDATE ON outbox TO 'strongroom'@'localhost';
-- The app may read the schema revision, never move it: migrations run as the database owner.
GRANT SELECT ON alembic_version TO 'strongroom'@'localhost';
-- Customer records, cards and items are edited and retired (UPDATE), never deleted (migration 0005).
GRANT SELECT, INSERT, UPDATE ON customer_records TO 'strongroom'@'localhost';
-- A card's number, brand, last four and record never change after it is stored (a new number is a new
-- card): the app may UPDATE only what an edit or a retire writes. Rewrap runs as its own user
-- (grants-keys.sql).
GRANT SELECT, INSERT ON cards TO 'strongroom'@'localhost';
GRANT UPDATE (name_ct, expiry_ct, updated_at, updated_by, retired_at, retired_by)
    ON cards TO 'strongroom'@'localhost';
GRANT SELECT, INSERT, UPDATE ON items TO 'strongroom'@'localhost';
-- A step-up token is spent by UPDATE (atomically, once); spent tokens stay as evidence.
GRANT SELECT, INSERT, UPDATE ON stepup_tokens TO 'strongroom'@'localhost';
-- Request budget counters (webapp/budgets.py): one row per scope and window length, reset in place
-- when a window starts (INSERT ... ON DUPLICATE KEY UPDATE needs INSERT and UPDATE): no DELETE.
GRANT SELECT, INSERT, UPDATE ON request_counters TO 'strongroom'@'localhost';
-- What each Idempotency-Key of a service account did (webapp/api/idempotency.py): an expired key's
-- row is reused in place (UPDATE), never deleted.
GRANT SELECT, INSERT, UPDATE ON api_idempotency TO 'strongroom'@'localhost';
-- Bulk import jobs (webapp/records/bulk.py): created once per file and actor, the checkpoint moved
-- (UPDATE) with each committed batch; kept as evidence, never deleted.
GRANT SELECT, INSERT, UPDATE ON import_jobs TO 'strongroom'@'localhost';
