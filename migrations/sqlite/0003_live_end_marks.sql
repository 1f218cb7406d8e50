-- Live-end markers the archiver has seen (docs/replay.md, "Archiver"): a
-- live is archived once every copy of its marker (one per ingest partition)
-- is here, i.e. everything acknowledged before its end was archived.
CREATE TABLE IF NOT EXISTS live_end_marks (
  live_id TEXT NOT NULL,
  part INTEGER NOT NULL,
  PRIMARY KEY (live_id, part)
);

-- The archiver asks which lives of a batch's rooms are open or recent.
CREATE INDEX IF NOT EXISTS lives_room_end ON lives (room, ended_at);
