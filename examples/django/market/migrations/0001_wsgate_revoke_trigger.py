"""Installs wsgate's live-revocation triggers (PostgreSQL only).

Deleting a token (djoser's /auth/token/logout/) or deactivating a user then
closes that user's wsgate sockets within a second; the SQL is
deploy/sql/django-revoke-trigger.sql of the wsgate repository, copied here
so that the project does not depend on the repository's layout.
"""

from pathlib import Path

from django.conf import settings
from django.db import migrations

SQL = Path(__file__).with_name("wsgate_revoke_trigger.sql")


def default_user_model():
    # A custom AUTH_USER_MODEL (accounts.User here) installs the triggers for
    # its own table: accounts/migrations/0002_wsgate_revoke_trigger.py.
    return settings.AUTH_USER_MODEL == "auth.User"


def install(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite: no LISTEN/NOTIFY; revoke through wsgate's API instead
    if not default_user_model():
        return
    # params=None: the file is sent as it is (several statements, no placeholders).
    schema_editor.execute(SQL.read_text(), params=None)


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql" or not default_user_model():
        return
    schema_editor.execute(
        "DROP TRIGGER IF EXISTS wsgate_authtoken_deleted ON authtoken_token;"
        "DROP TRIGGER IF EXISTS wsgate_auth_user_deactivated ON auth_user;"
        "DROP FUNCTION IF EXISTS wsgate_notify_django_token_deleted();"
        "DROP FUNCTION IF EXISTS wsgate_notify_django_user_deactivated();",
        params=None,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("authtoken", "0004_alter_tokenproxy_options"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations = [migrations.RunPython(install, uninstall)]
