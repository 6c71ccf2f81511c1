from django.apps import AppConfig
from django.db.backends.signals import connection_created


class ConvoConfig(AppConfig):
    """The project package as an app, for its process-wide infrastructure hooks."""

    name = "convo"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from convo.slow_queries import slow_query_log_install

        # Every connection of every thread and process gets the slow-query wrapper (why a signal:
        # convo/slow_queries.py).
        connection_created.connect(slow_query_log_install, dispatch_uid="convo.slow_queries")
