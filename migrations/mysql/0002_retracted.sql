-- Retracted messages stay in the archive, marked (audit), and replay omits
-- them (DESIGN §3.9). `msg_id` finds a message by its id; rows archived
-- before this migration have none (NULL) and are found by their body.
-- Applied once per database by the migrator (its `_sqlx_migrations` table is
-- the guard, taken under the migration lock), so it works on a table that
-- already holds rows.
ALTER TABLE live_messages
  ADD COLUMN retracted TINYINT NOT NULL DEFAULT 0,
  ADD COLUMN msg_id VARCHAR(64) NULL,
  ADD KEY live_messages_msg (msg_id);
