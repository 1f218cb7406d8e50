-- Archive of ended lives (replay, DESIGN §3.8). SQLite.
CREATE TABLE IF NOT EXISTS lives (
  id TEXT NOT NULL PRIMARY KEY,
  room TEXT NOT NULL,
  started_at INTEGER NOT NULL,
  ended_at INTEGER NULL,
  archived_through_seq INTEGER NOT NULL DEFAULT 0,
  archived_at INTEGER NULL
);
CREATE INDEX IF NOT EXISTS lives_room ON lives (room, started_at);
CREATE INDEX IF NOT EXISTS lives_pending ON lives (archived_at, ended_at);

CREATE TABLE IF NOT EXISTS live_messages (
  live_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  offset_ms INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (live_id, seq)
);
CREATE INDEX IF NOT EXISTS live_messages_offset ON live_messages (live_id, offset_ms, seq);
