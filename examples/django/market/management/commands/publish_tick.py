from django.core.management.base import BaseCommand, CommandError

from market import publish


class Command(BaseCommand):
    help = "Pushes a market tick to group market.<SYMBOL> through wsgate."

    def add_arguments(self, parser):
        parser.add_argument("symbol")
        parser.add_argument("price", type=float)
        parser.add_argument(
            "--via",
            choices=["http", "redis", "channels"],
            default="http",
            help="wsgate's API (default), a Redis PUBLISH of the envelope, "
            "or channel_layer.group_send (needs compat.channels_redis)",
        )

    def handle(self, symbol, price, via, **options):
        group = f"market.{symbol}"
        data = {"symbol": symbol, "price": price}
        try:
            if via == "http":
                publish.publish_http(group, data)
            elif via == "redis":
                publish.publish_redis(group, data)
            else:
                publish.publish_channels(group, data)
        except Exception as e:  # a clean one-line error for the shell
            raise CommandError(f"publish via {via} failed: {e}") from e
        self.stdout.write(f"published to {group} via {via}")
