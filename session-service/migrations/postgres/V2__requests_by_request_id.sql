-- Outcomes keyed by request id first, as on SQLite: ids that grow with time (UUIDv7) are added at
-- the right edge of the index, where a batch's look-ups and inserts share a few pages, instead of
-- each under its caller somewhere in an index that holds a day of requests. The key's columns are
-- identifiers, compared byte by byte (COLLATE "C") rather than by the database's locale. The
-- table holds about a day of outcomes, and the new key's index is built under the table's lock:
-- replicas of the previous build still running wait for it before their next commit.
ALTER TABLE requests
    DROP CONSTRAINT requests_pkey,
    ALTER COLUMN tenant TYPE TEXT COLLATE "C",
    ALTER COLUMN subject TYPE TEXT COLLATE "C",
    ALTER COLUMN method TYPE TEXT COLLATE "C",
    ALTER COLUMN request_id TYPE TEXT COLLATE "C",
    ADD PRIMARY KEY (request_id, tenant, subject, method);
