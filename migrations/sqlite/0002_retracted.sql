-- Retracted messages stay in the archive, marked (audit), and replay omits
-- them (DESIGN §3.9). `msg_id` finds a message by its id; rows archived
-- before this migration have none (NULL) and are found by their body.
-- Applied once per database by the migrator (its `_sqlx_migrations` table is
-- the guard), so it works on a table that already holds rows.
ALTER TABLE live_messages ADD COLUMN retracted INTEGER NOT NULL DEFAULT 0;
ALTER TABLE live_messages ADD COLUMN msg_id TEXT NULL;
CREATE INDEX IF NOT EXISTS live_messages_msg ON live_messages (msg_id);
