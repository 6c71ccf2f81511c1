"""Copy each message's conversation onto its vectors, so per-user search skips the messages.

Three steps so that a database with vectors migrates: the column arrives nullable, is filled from
the messages in one statement, then becomes NOT NULL. Reversing drops the column. On a large
table the fill rewrites every vector row once; run it in a quiet hour (docs/scaling.md).
"""

import django.db.models.deletion
from django.db import migrations, models

# Immediate constraints: a deferred foreign-key check still pending would make the ALTER that
# follows in this transaction fail ("pending trigger events").
FILL = """
SET CONSTRAINTS ALL IMMEDIATE;
UPDATE conversations_messageembedding AS e
   SET conversation_id = m.conversation_id
  FROM conversations_message AS m
 WHERE m.id = e.item_id AND e.conversation_id IS NULL
"""


class Migration(migrations.Migration):

    dependencies = [
        ("conversations", "0006_embeddingspace_config"),
    ]

    operations = [
        migrations.AddField(
            model_name="messageembedding",
            name="conversation",
            field=models.ForeignKey(
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="conversations.conversation",
            ),
        ),
        migrations.RunSQL(FILL, reverse_sql=migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="messageembedding",
            name="conversation",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="+",
                to="conversations.conversation",
            ),
        ),
        migrations.AddIndex(
            model_name="messageembedding",
            index=models.Index(fields=["space", "conversation"], name="msg_embedding_space_conv"),
        ),
    ]
