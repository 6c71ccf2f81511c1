"""A GIN index for full-text search over message text (text and hybrid search modes).

An expression index rather than a stored tsvector column: nothing is added to the ingest INSERT,
and the search query uses exactly this expression. ``simple`` configuration: no stemming and no
stop words, so it works for any language; a deployment that serves one language can replace it.
``fastupdate`` (on by default) buffers new entries, keeping the cost off the ingest path.
"""

from django.db import migrations

INDEX = "msg_text_search"


class Migration(migrations.Migration):
    dependencies = [("conversations", "0004_session_constraint_message")]

    operations = [
        migrations.RunSQL(
            f"CREATE INDEX IF NOT EXISTS {INDEX} ON conversations_message "
            "USING gin (to_tsvector('simple'::regconfig, text))",
            f"DROP INDEX IF EXISTS {INDEX}",
        ),
    ]
