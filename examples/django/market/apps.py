from django.apps import AppConfig


class MarketConfig(AppConfig):
    name = "market"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Connects the logout handler that revokes session-minted tokens.
        from . import wstoken  # noqa: F401
