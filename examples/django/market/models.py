"""wsgate's transactional outbox, seen from Django.

`wsgate_outbox` is created by wsgate's own PostgreSQL migration (a node with
`database.migrate`, or `wsgate migrate`), so the model is unmanaged: Django
never creates or alters the table. A row saved inside the transaction of a
business write is published by the wsgate nodes with `outbox.enabled` once
that transaction commits, and never if it rolls back (`market/publish.py`:
`publish_outbox`). PostgreSQL only.
"""

from django.db import models


class OutboxMessage(models.Model):
    id = models.BigAutoField(primary_key=True)
    # 1-128 characters of A-Z a-z 0-9 . _ : @ - (the table's CHECK refuses others).
    group = models.TextField(db_column="group")
    # Anything JSON can hold, at most 1 MiB.
    data = models.JSONField()

    class Meta:
        managed = False
        db_table = "wsgate_outbox"
