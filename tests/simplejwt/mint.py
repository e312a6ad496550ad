# Mints access tokens with the real DRF SimpleJWT for tests/jwt.rs: HS256 with
# JWT_SECRET, the `user_id` claim. With PG_NAME, also runs Django's migrations
# for rest_framework_simplejwt.token_blacklist in that PostgreSQL database and
# blacklists one token's jti the way the app does (OutstandingToken +
# BlacklistedToken). Prints the tokens as one JSON object.
import datetime, json, os
import django
from django.conf import settings

db = os.environ.get("PG_NAME")
apps = ["django.contrib.contenttypes", "django.contrib.auth", "rest_framework_simplejwt"]
databases = {}
if db:
    apps.append("rest_framework_simplejwt.token_blacklist")
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": db,
                             "USER": "postgres", "HOST": "127.0.0.1", "PORT": "5432"}}
settings.configure(
    SECRET_KEY="not-used-" * 6, USE_TZ=True, INSTALLED_APPS=apps, DATABASES=databases,
    SIMPLE_JWT={"SIGNING_KEY": os.environ["JWT_SECRET"], "ALGORITHM": "HS256",
                "ACCESS_TOKEN_LIFETIME": datetime.timedelta(minutes=5)},
)
django.setup()
from rest_framework_simplejwt.tokens import AccessToken

def access(user_id):
    token = AccessToken()
    token["user_id"] = user_id  # what AccessToken.for_user(user) sets (USER_ID_CLAIM)
    return token

out = {"access": str(access(42))}
if db:
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
    listed = access(43)
    expires = datetime.datetime.fromtimestamp(listed["exp"], tz=datetime.timezone.utc)
    row = OutstandingToken.objects.create(jti=listed["jti"], token=str(listed), expires_at=expires)
    BlacklistedToken.objects.create(token=row)
    out["blacklisted"] = str(listed)
    out["kept"] = str(access(44))
print(json.dumps(out))
