"""Drop the ``item_id`` index of knowledge vectors: the unique ``(item, space)`` constraint serves
its lookups (conversations 0008 explains why only the index goes)."""

import django.db.models.deletion
from django.db import migrations, models

INDEX = "feedback_knowledgeembedding_item_id_94926014"


class Migration(migrations.Migration):
    dependencies = [
        ("feedback", "0002_knowledge_base"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    f"DROP INDEX IF EXISTS {INDEX}",
                    f"CREATE INDEX IF NOT EXISTS {INDEX} ON feedback_knowledgeembedding (item_id)",
                )
            ],
            state_operations=[
                migrations.AlterField(
                    model_name="knowledgeembedding",
                    name="item",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="embeddings",
                        to="feedback.knowledgeentry",
                    ),
                ),
            ],
        )
    ]
