"""The knowledge base: entries, their version history, their vectors and the lookup counters
(docs/knowledge.md).

Besides the tables: a GIN index for full-text search over question and answer (the expression
``feedback/retrieval.py`` queries with), and the per-space HNSW index of the vectors for the spaces
that already exist (a space created later gets it from ``embedding_space_index``).
"""

import convo.ids
import django.contrib.postgres.fields
import django.db.models.deletion
import django.db.models.functions.datetime
import pgvector.django.vector
from django.conf import settings
from django.db import migrations, models
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

TEXT_INDEX = "knowledge_text_search"


def index_existing_spaces(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    space_model = apps.get_model("conversations", "EmbeddingSpace")
    for space in space_model.objects.filter(state__in=["active", "building"]):
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS kb_hnsw_space_{int(space.pk)} ON feedback_knowledgeembedding "
            f"USING hnsw ((embedding::vector({int(space.dimensions)})) vector_cosine_ops) "
            f"WITH (m = {int(settings.EMBEDDING_HNSW_M)}, "
            f"ef_construction = {int(settings.EMBEDDING_HNSW_EF_CONSTRUCTION)}) WHERE space_id = {int(space.pk)}"
        )


class Migration(migrations.Migration):

    dependencies = [
        ('conversations', '0006_embeddingspace_config'),
        ('feedback', '0001_initial'),
    ]

    operations = [
        migrations.CreateModel(
            name='KnowledgeEntry',
            fields=[
                ('embedding_state', models.CharField(choices=[('pending', 'Pending'), ('processing', 'Processing'), ('done', 'Done'), ('failed', 'Failed'), ('skipped', 'Skipped')], default='pending', editable=False, max_length=12)),
                ('embedding_attempts', models.PositiveSmallIntegerField(db_default=0, default=0, editable=False)),
                ('embedding_claimed_at', models.DateTimeField(blank=True, editable=False, null=True)),
                ('embedding_error', models.TextField(blank=True, db_default='', default='', editable=False)),
                ('id', models.UUIDField(default=convo.ids.uuid7, editable=False, primary_key=True, serialize=False)),
                ('key', models.CharField(blank=True, default='', max_length=200)),
                ('question', models.TextField()),
                ('answer', models.TextField()),
                ('tags', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=50), blank=True, default=list, size=None)),
                ('source', models.CharField(choices=[('manual', 'Manual'), ('import', 'Import'), ('correction', 'Correction'), ('low_rating', 'Low Rating'), ('answered_cluster', 'Answered Cluster')], default='manual', max_length=20)),
                ('active', models.BooleanField(default=True)),
                ('version', models.PositiveIntegerField(default=1)),
                ('updated_by', models.CharField(blank=True, default='', max_length=200)),
                ('created_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), editable=False)),
                ('updated_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), editable=False)),
                ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='conversations.tenant')),
            ],
            options={
                'verbose_name_plural': 'knowledge entries',
            },
        ),
        migrations.CreateModel(
            name='KnowledgeEmbedding',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('embedding', pgvector.django.vector.VectorField()),
                ('created_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), editable=False)),
                ('space', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='conversations.embeddingspace')),
                ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='conversations.tenant')),
                ('item', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='embeddings', to='feedback.knowledgeentry')),
            ],
        ),
        migrations.AddField(
            model_name='learningitem',
            name='entry',
            field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='learning_items', to='feedback.knowledgeentry'),
        ),
        migrations.CreateModel(
            name='KnowledgeEntryVersion',
            fields=[
                ('id', models.BigAutoField(primary_key=True, serialize=False)),
                ('version', models.PositiveIntegerField()),
                ('question', models.TextField()),
                ('answer', models.TextField()),
                ('tags', django.contrib.postgres.fields.ArrayField(base_field=models.CharField(max_length=50), blank=True, default=list, size=None)),
                ('active', models.BooleanField()),
                ('changed_by', models.CharField(blank=True, default='', max_length=200)),
                ('change', models.CharField(blank=True, default='', max_length=200)),
                ('created_at', models.DateTimeField(db_default=django.db.models.functions.datetime.Now(), editable=False)),
                ('entry', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='versions', to='feedback.knowledgeentry')),
                ('learning_item', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='feedback.learningitem')),
            ],
        ),
        migrations.CreateModel(
            name='KnowledgeLookupDay',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('day', models.DateField()),
                ('answered', models.PositiveIntegerField(default=0)),
                ('suggested', models.PositiveIntegerField(default=0)),
                ('unmatched', models.PositiveIntegerField(default=0)),
                ('tenant', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='+', to='conversations.tenant')),
            ],
        ),
        migrations.AddIndex(
            model_name='knowledgeentry',
            index=models.Index(fields=['tenant', '-updated_at', '-id'], name='knowledge_tenant_updated'),
        ),
        migrations.AddIndex(
            model_name='knowledgeentry',
            index=models.Index(fields=['tenant', 'source'], name='knowledge_tenant_source'),
        ),
        migrations.AddIndex(
            model_name='knowledgeentry',
            index=models.Index(condition=models.Q(('embedding_state', 'pending')), fields=['created_at'], name='kb_embedding_pending'),
        ),
        migrations.AddIndex(
            model_name='knowledgeentry',
            index=models.Index(condition=models.Q(('embedding_state', 'processing')), fields=['embedding_claimed_at'], name='kb_embedding_claimed'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeentry',
            constraint=models.UniqueConstraint(condition=models.Q(('key', ''), _negated=True), fields=('tenant', 'key'), name='knowledge_unique_key'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeentry',
            constraint=models.CheckConstraint(condition=models.Q(('question', ''), _negated=True), name='knowledge_question_present'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeentry',
            constraint=models.CheckConstraint(condition=models.Q(('answer', ''), _negated=True), name='knowledge_answer_present'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeentry',
            constraint=models.CheckConstraint(condition=models.Q(('source__in', ['manual', 'import', 'correction', 'low_rating', 'answered_cluster'])), name='knowledge_source_valid'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeentry',
            constraint=models.CheckConstraint(condition=models.Q(('embedding_state__in', ['pending', 'processing', 'done', 'failed', 'skipped'])), name='knowledge_embedding_state_valid'),
        ),
        migrations.AddIndex(
            model_name='knowledgeembedding',
            index=models.Index(fields=['tenant', 'space'], name='kb_embedding_tenant_space'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeembedding',
            constraint=models.UniqueConstraint(fields=('item', 'space'), name='kb_embedding_once_per_space'),
        ),
        migrations.AddConstraint(
            model_name='knowledgeentryversion',
            constraint=models.UniqueConstraint(fields=('entry', 'version'), name='knowledge_version_once'),
        ),
        migrations.AddConstraint(
            model_name='knowledgelookupday',
            constraint=models.UniqueConstraint(fields=('tenant', 'day'), name='knowledge_lookup_day_once'),
        ),
        migrations.RunSQL(
            f"CREATE INDEX IF NOT EXISTS {TEXT_INDEX} ON feedback_knowledgeentry "
            "USING gin (to_tsvector('simple'::regconfig, question || ' ' || answer))",
            f"DROP INDEX IF EXISTS {TEXT_INDEX}",
        ),
        migrations.RunPython(index_existing_spaces, migrations.RunPython.noop),
    ]
