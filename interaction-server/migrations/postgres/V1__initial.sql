-- interaction-server's first schema on PostgreSQL. A released migration is never edited: a change
-- is a new file, V2__….sql.

-- The head of the log. Its row lock orders the writers of every replica.
CREATE TABLE log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sequence BIGINT NOT NULL
);
INSERT INTO log_head (id, sequence) VALUES (1, 0);

-- The log. `body` is the encoded Event; the other columns let a replay filter without decoding.
CREATE TABLE events (
    sequence BIGINT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind TEXT NOT NULL,
    interaction_id TEXT,
    reporting BOOLEAN NOT NULL,
    recipients TEXT NOT NULL,
    submitter TEXT,
    body BYTEA NOT NULL
);

-- Outcomes of successful mutating requests, kept at least 24 hours (AIP-155).
CREATE TABLE requests (
    tenant TEXT NOT NULL,
    subject TEXT NOT NULL,
    method TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint BYTEA NOT NULL,
    response BYTEA NOT NULL,
    created_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, subject, method, request_id)
);
CREATE INDEX requests_created ON requests (created_us);

-- The current row of each interaction; `version` is compared and set by every transition. Ids
-- compare in byte order ("C"), as on SQLite: UUIDv7 text, so pages of a list come in time order.
CREATE TABLE interactions (
    id TEXT COLLATE "C" PRIMARY KEY,
    tenant TEXT NOT NULL,
    state SMALLINT NOT NULL,
    queue TEXT NOT NULL,
    owner TEXT NOT NULL,
    invitee TEXT NOT NULL,
    submitter TEXT NOT NULL,
    queued_seq BIGINT NOT NULL,
    version BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE INDEX interactions_live ON interactions (state) WHERE state <> 5;
CREATE INDEX interactions_tenant ON interactions (tenant, id);

-- Each agent's media states and what it holds (its load per media); `version` is the sequence of
-- the last event that changed the row, compared and set by every transition that changes it.
CREATE TABLE agents (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    body BYTEA NOT NULL,
    PRIMARY KEY (tenant, agent_id)
);
