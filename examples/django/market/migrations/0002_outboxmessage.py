"""The unmanaged OutboxMessage model: Django records it, wsgate's own
migration creates the table (see market/models.py)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("market", "0001_wsgate_revoke_trigger"),
    ]
    operations = [
        migrations.CreateModel(
            name="OutboxMessage",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("group", models.TextField(db_column="group")),
                ("data", models.JSONField()),
            ],
            options={"db_table": "wsgate_outbox", "managed": False},
        ),
    ]
