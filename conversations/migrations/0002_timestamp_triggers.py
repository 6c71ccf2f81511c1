"""Database triggers that keep conversation timestamps right on every write path.

* ``updated_at`` is set on every UPDATE of a conversation, whoever issues it (ORM, admin, raw SQL).
* ``last_message_at`` follows the newest message of the conversation: a statement-level trigger
  with a transition table runs once per INSERT statement, not once per row, so a 1000-message
  batch costs one extra UPDATE per conversation it touches.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION convo_touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := statement_timestamp();
    RETURN NEW;
END $$;

CREATE TRIGGER conversation_touch_updated_at
    BEFORE UPDATE ON conversations_conversation
    FOR EACH ROW EXECUTE FUNCTION convo_touch_updated_at();

CREATE FUNCTION convo_bump_last_message_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE conversations_conversation AS c
       SET last_message_at = GREATEST(c.last_message_at, n.newest)
      FROM (SELECT conversation_id, max(COALESCE(sent_at, created_at)) AS newest
              FROM new_messages GROUP BY conversation_id) AS n
     WHERE c.id = n.conversation_id
       AND (c.last_message_at IS NULL OR c.last_message_at < n.newest);
    RETURN NULL;
END $$;

CREATE TRIGGER message_bump_last_message_at
    AFTER INSERT ON conversations_message
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION convo_bump_last_message_at();
"""

REVERSE = """
DROP TRIGGER IF EXISTS message_bump_last_message_at ON conversations_message;
DROP FUNCTION IF EXISTS convo_bump_last_message_at();
DROP TRIGGER IF EXISTS conversation_touch_updated_at ON conversations_conversation;
DROP FUNCTION IF EXISTS convo_touch_updated_at();
"""


class Migration(migrations.Migration):
    dependencies = [("conversations", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
