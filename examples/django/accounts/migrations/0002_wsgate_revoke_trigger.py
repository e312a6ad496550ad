"""Installs wsgate's live-revocation triggers for accounts_member (PostgreSQL
only): the output of

    WSGATE__AUTH__DJANGO_USER_TABLE=accounts_member \
    WSGATE__AUTH__DJANGO_USER_PK=member_id \
    WSGATE__AUTH__DJANGO_USER_ACTIVE=active \
    wsgate django trigger-sql > accounts/migrations/wsgate_revoke_trigger.sql

(market/migrations/0001 installs the auth_user version instead when the
default user model is in use).
"""

from pathlib import Path

from django.db import migrations

SQL = Path(__file__).with_name("wsgate_revoke_trigger.sql")


def install(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite: no LISTEN/NOTIFY; revoke through wsgate's API instead
    schema_editor.execute(SQL.read_text(), params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        "DROP TRIGGER IF EXISTS wsgate_authtoken_deleted ON authtoken_token;"
        'DROP TRIGGER IF EXISTS wsgate_auth_user_deactivated ON "accounts_member";'
        "DROP FUNCTION IF EXISTS wsgate_notify_django_token_deleted();"
        "DROP FUNCTION IF EXISTS wsgate_notify_django_user_deactivated();",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("authtoken", "0004_alter_tokenproxy_options"),
    ]
    operations = [migrations.RunPython(install, uninstall)]
