-- An agent's row no longer says what it holds (its `interaction_ids` and loads): the interactions'
-- rows do, so an interaction changing hands rewrites no agent. Reads find an agent's holdings
-- through these two indexes; the first also finds the live state at start, as
-- `interactions_live` did. On a large table an operator may build them beforehand with
-- CREATE INDEX CONCURRENTLY under these names: this migration then finds them in place.
CREATE INDEX IF NOT EXISTS interactions_owned ON interactions (tenant, owner) WHERE state <> 5;
CREATE INDEX IF NOT EXISTS interactions_invited ON interactions (tenant, invitee)
    WHERE state <> 5 AND invitee <> '';
DROP INDEX IF EXISTS interactions_live;
