-- session-service's first schema on PostgreSQL (a schema or database of its own: interaction-server
-- has tables of the same names). A released migration is never edited: a change is a new file,
-- V2__….sql.

-- The head of the log. Its row lock orders the writers of every replica.
CREATE TABLE log_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sequence BIGINT NOT NULL
);
INSERT INTO log_head (id, sequence) VALUES (1, 0);

-- The log: session events, and the ones relayed from interaction-server to agents with a session.
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

-- Sessions in every state; `body` is the encoded Session, `version` is compared and set by every
-- change. An agent has one live (not disposed: state 3) session, whichever replica logged it in.
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    state SMALLINT NOT NULL,
    version BIGINT NOT NULL,
    body BYTEA NOT NULL
);
CREATE UNIQUE INDEX sessions_live_agent ON sessions (tenant, agent_id) WHERE state <> 3;

-- The mirror: what each agent owns or is invited to, and the media of live interactions.
CREATE TABLE holdings (
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    interaction_id TEXT NOT NULL,
    PRIMARY KEY (tenant, agent_id, interaction_id)
);
CREATE INDEX holdings_interaction ON holdings (interaction_id);
CREATE TABLE interaction_media (
    interaction_id TEXT PRIMARY KEY,
    media TEXT NOT NULL
);

-- The last interaction-server sequence relayed; moved only by the replica that relays.
CREATE TABLE relay (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    cursor BIGINT NOT NULL
);
INSERT INTO relay (id, cursor) VALUES (1, 0);

-- Where desktops are connected: a replica's row for a session says whether it has a Connect stream
-- of it open, and since when (or since when it has none). A row counts only while its replica holds
-- its presence lock, so the connection-lost grace of one replica sees the streams of the others.
CREATE TABLE connections (
    session_id TEXT NOT NULL,
    replica INTEGER NOT NULL,
    open BOOLEAN NOT NULL,
    since_us BIGINT NOT NULL,
    PRIMARY KEY (session_id, replica)
);
