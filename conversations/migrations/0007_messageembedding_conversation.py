"""Copy each message's conversation onto its vectors, so per-user search skips the messages.

Three steps so that a database with vectors migrates: the column arrives nullable, is filled from
the messages, then becomes NOT NULL. The fill gives every vector row a new version; with the
spaces' HNSW indexes in place each of those would be inserted into the graph one by one (about a
millisecond a row), so the fill drops them first and builds them again afterwards in bulk, as
they were defined (docs/scaling.md, "Upgrading"). Reversing drops the column.
"""

from typing import Any

import django.db.models.deletion
from django.db import migrations, models

TABLE = "conversations_messageembedding"

FILL = f"""
UPDATE {TABLE} AS e
   SET conversation_id = m.conversation_id
  FROM conversations_message AS m
 WHERE m.id = e.item_id AND e.conversation_id IS NULL
"""


def fill(apps: Any, schema_editor: Any) -> None:
    with schema_editor.connection.cursor() as cursor:
        # A deferred foreign-key check still pending would make the ALTER that follows in this
        # transaction fail ("pending trigger events").
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        # The fill and the rebuild take as long as the table is big; DB_STATEMENT_TIMEOUT_MS is
        # for requests. SET LOCAL ends with the migration's transaction.
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = current_schema() AND tablename = %s AND indexdef ILIKE %s",
            [TABLE, "% USING hnsw %"],
        )
        hnsw = cursor.fetchall()
        for name, _ in hnsw:
            cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute(FILL)
        for _, definition in hnsw:
            cursor.execute(definition)


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
        migrations.RunPython(fill, migrations.RunPython.noop),
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
