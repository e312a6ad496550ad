"""A custom user model (AUTH_USER_MODEL = "accounts.User"), installed only
with EXAMPLE_CUSTOM_USER=1.

Its table and columns are deliberately not auth_user's, to show the wsgate
settings a custom model needs:

    [auth]
    store = "django"
    django_user_table = "accounts_member"
    django_user_pk = "member_id"
    django_user_active = "active"

and the trigger SQL `wsgate django trigger-sql` prints for them (shipped in
migrations/wsgate_revoke_trigger.sql, installed by migration 0002).
"""

from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    id = models.BigAutoField(primary_key=True, db_column="member_id")
    is_active = models.BooleanField(default=True, db_column="active")

    class Meta(AbstractUser.Meta):
        db_table = "accounts_member"
        swappable = "AUTH_USER_MODEL"
