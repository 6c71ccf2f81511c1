from django.apps import AppConfig


class FeedbackConfig(AppConfig):
    name = "feedback"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from conversations.services.embedding_kinds import EmbeddableKind, embedding_kind_register
        from feedback.models import KnowledgeEmbedding, KnowledgeEntry

        # Knowledge entries are embedded by the message pipeline (queue, cache, worker, switch):
        # their question, since a new question is compared with the questions entries answer.
        embedding_kind_register(
            EmbeddableKind(
                name="knowledge",
                items=KnowledgeEntry,
                vectors=KnowledgeEmbedding,
                text_sql="t.question",
                index_prefix="kb",
                mutable_text=True,
            )
        )
