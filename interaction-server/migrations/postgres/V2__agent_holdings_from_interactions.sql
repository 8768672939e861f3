-- An agent's row no longer says what it holds (its `interaction_ids` and loads): the interactions'
-- rows do, so an interaction changing hands rewrites no agent. Reads find an agent's holdings
-- through these two indexes; the first also finds the live state at start, as
-- `interactions_live` did.
DROP INDEX interactions_live;
CREATE INDEX interactions_owned ON interactions (tenant, owner) WHERE state <> 5;
CREATE INDEX interactions_invited ON interactions (tenant, invitee) WHERE state <> 5 AND invitee <> '';
