"""Cluster.revision: a number from one sequence, set by a trigger on every INSERT and UPDATE of a
cluster row, whoever issues it (the ORM, raw SQL, COPY). Every writer of a tenant's clusters holds
the tenant's clustering lock until it commits, so a tenant's revisions become visible in
increasing order, and a worker keeps an in-process copy of the tenant's clusters up to date by
reading the rows above the highest revision it has seen (clustering/services/matrix.py).

Rows that exist before this migration keep revision 0: a worker's first read of a tenant is a
full load, which includes them, and any later write gives them a new revision.
"""

from django.db import migrations, models

FORWARD = """
CREATE SEQUENCE clustering_cluster_revision AS bigint;

CREATE FUNCTION clustering_cluster_bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.revision := nextval('clustering_cluster_revision');
    RETURN NEW;
END $$;

CREATE TRIGGER cluster_bump_revision
    BEFORE INSERT OR UPDATE ON clustering_cluster
    FOR EACH ROW EXECUTE FUNCTION clustering_cluster_bump_revision();
"""

REVERSE = """
DROP TRIGGER IF EXISTS cluster_bump_revision ON clustering_cluster;
DROP FUNCTION IF EXISTS clustering_cluster_bump_revision();
DROP SEQUENCE IF EXISTS clustering_cluster_revision;
"""


class Migration(migrations.Migration):
    dependencies = [("clustering", "0001_clusters")]

    operations = [
        migrations.AddField(
            model_name="cluster",
            name="revision",
            field=models.BigIntegerField(db_default=0, editable=False),
        ),
        migrations.AddIndex(
            model_name="cluster",
            index=models.Index(fields=["tenant", "space", "revision"], name="cluster_space_revision"),
        ),
        migrations.RunSQL(FORWARD, REVERSE),
    ]
