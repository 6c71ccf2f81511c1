"""Drop the foreign-key indexes of the vector tables that other indexes already cover.

``item_id`` lookups use the unique ``(item, space)`` constraints, and ``space_id`` lookups on
message vectors use ``msg_embedding_space_conv``; each dropped index was one more write for every
vector the worker stores. Only the indexes go: Django's own AlterField would also drop and re-add
the foreign keys, re-checking every row of what can be the largest tables.

Message vectors are no longer deleted by a cascade of their own ``conversation`` (no index leads
with it): deleting a conversation deletes them through its messages. That is Python-side only.
"""

import django.db.models.deletion
from django.db import migrations, models

# (table, index, column) of each index dropped.
INDEXES = [
    ("conversations_conversationembedding", "conversations_conversationembedding_item_id_ae77226a", "item_id"),
    ("conversations_messageembedding", "conversations_messageembedding_item_id_10e5430c", "item_id"),
    ("conversations_messageembedding", "conversations_messageembedding_space_id_ac78bbcf", "space_id"),
]
DROP = [f"DROP INDEX IF EXISTS {index}" for _, index, _ in INDEXES]
RECREATE = [f"CREATE INDEX IF NOT EXISTS {index} ON {table} ({column})" for table, index, column in INDEXES]


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0007_messageembedding_conversation"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(DROP, RECREATE)],
            state_operations=[
                migrations.AlterField(
                    model_name="conversationembedding",
                    name="item",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="embeddings",
                        to="conversations.conversation",
                    ),
                ),
                migrations.AlterField(
                    model_name="messageembedding",
                    name="item",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="embeddings",
                        to="conversations.message",
                    ),
                ),
                migrations.AlterField(
                    model_name="messageembedding",
                    name="space",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="conversations.embeddingspace",
                    ),
                ),
                # Deleted through their messages instead (models.py); no change in the database.
                migrations.AlterField(
                    model_name="messageembedding",
                    name="conversation",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        related_name="+",
                        to="conversations.conversation",
                    ),
                ),
            ],
        )
    ]
