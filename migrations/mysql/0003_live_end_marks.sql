-- Live-end markers the archiver has seen (docs/replay.md, "Archiver"): a
-- live is archived once every copy of its marker (one per ingest partition)
-- is here, i.e. everything acknowledged before its end was archived.
CREATE TABLE IF NOT EXISTS live_end_marks (
  live_id VARCHAR(64) NOT NULL,
  part INT NOT NULL,
  PRIMARY KEY (live_id, part)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The archiver asks which lives of a batch's rooms are open or recent.
ALTER TABLE lives ADD KEY lives_room_end (room, ended_at);
