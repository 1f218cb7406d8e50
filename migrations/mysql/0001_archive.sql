-- Archive of ended lives (replay, DESIGN §3.8). MySQL / MariaDB.
CREATE TABLE IF NOT EXISTS lives (
  id VARCHAR(64) NOT NULL PRIMARY KEY,
  room VARCHAR(64) NOT NULL,
  started_at BIGINT NOT NULL,
  ended_at BIGINT NULL,
  archived_through_seq BIGINT NOT NULL DEFAULT 0,
  archived_at BIGINT NULL,
  KEY lives_room (room, started_at),
  KEY lives_pending (archived_at, ended_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS live_messages (
  live_id VARCHAR(64) NOT NULL,
  seq BIGINT NOT NULL,
  offset_ms BIGINT NOT NULL,
  ts BIGINT NOT NULL,
  body MEDIUMTEXT NOT NULL,
  PRIMARY KEY (live_id, seq),
  KEY live_messages_offset (live_id, offset_ms, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
