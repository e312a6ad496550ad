"""`wsgate.django` against a real node, with a minimal Django settings module
and two databases: SQLite (``default``) and the PostgreSQL database the
cargo test created (``pg``). A subscriber socket watches what is sent, and
when: nothing before the commit, nothing after a rollback."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import django
import pytest
from conftest import Node, Subscribers, unique_group
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, transaction
from django.test import override_settings

import wsgate
import wsgate.django as wsgate_django
from wsgate.django import get_client, publish_many_on_commit, publish_on_commit

ALIASES = ["default", "pg"]


class Rollback(Exception):
    pass


def _postgres(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parts.path.lstrip("/"),
        "USER": parts.username or "",
        "PASSWORD": parts.password or "",
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or ""),
    }


@pytest.fixture(scope="module", autouse=True)
def django_project(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    database_url = os.environ.get("WSGATE_TEST_DATABASE_URL")
    if not database_url:
        pytest.fail("WSGATE_TEST_DATABASE_URL is not set (see conftest.py)", pytrace=False)
    sqlite = Path(tmp_path_factory.mktemp("django")) / "db.sqlite3"
    if not settings.configured:
        settings.configure(
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(sqlite)},
                "pg": _postgres(database_url),
            },
            INSTALLED_APPS=[],
            USE_TZ=True,
            WSGATE_API_URL=node.api,
            WSGATE_API_KEY=node.key,
        )
        django.setup()
    for alias in ALIASES:
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE ticks (symbol varchar(16) NOT NULL)")
    yield
    for alias in ALIASES:
        connections[alias].close()


def rows(alias: str, symbol: str) -> int:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT count(*) FROM ticks WHERE symbol = %s", [symbol])
        (n,) = cursor.fetchone()
        return int(n)


def insert(alias: str, symbol: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("INSERT INTO ticks (symbol) VALUES (%s)", [symbol])


@pytest.mark.parametrize("alias", ALIASES)
def test_a_committed_transaction_publishes_after_the_commit(
    alias: str, subscriber: Subscribers, group: str
) -> None:
    member = subscriber("py-1", group)
    with transaction.atomic(using=alias):
        insert(alias, "C1")
        publish_on_commit(group, {"symbol": "C1", "price": 1.5}, using=alias)
        member.expect_silence(0.3)  # not before the commit
    assert member.message()["data"] == {"symbol": "C1", "price": 1.5}
    assert rows(alias, "C1") == 1


@pytest.mark.parametrize("alias", ALIASES)
def test_a_rolled_back_transaction_publishes_nothing(
    alias: str, subscriber: Subscribers, group: str
) -> None:
    member = subscriber("py-1", group)
    with pytest.raises(Rollback):
        with transaction.atomic(using=alias):
            insert(alias, "R1")
            publish_on_commit(group, "rolled back", using=alias)
            publish_many_on_commit([(group, "also rolled back")], using=alias)
            raise Rollback
    get_client().publish(group, "marker")
    assert member.message()["data"] == "marker", "the first message is the marker"
    member.expect_silence(0.2)
    assert rows(alias, "R1") == 0


@pytest.mark.parametrize("alias", ALIASES)
def test_a_rolled_back_savepoint_drops_only_its_own_messages(
    alias: str, subscriber: Subscribers, group: str
) -> None:
    member = subscriber("py-1", group)
    with transaction.atomic(using=alias):
        publish_on_commit(group, "outer 1", using=alias)
        with pytest.raises(Rollback):
            with transaction.atomic(using=alias):
                publish_on_commit(group, "inner", using=alias)
                raise Rollback
        publish_on_commit(group, "outer 2", using=alias)
    assert [member.message()["data"] for _ in range(2)] == ["outer 1", "outer 2"]
    member.expect_silence(0.2)


def test_on_commit_follows_the_database_it_is_given(subscriber: Subscribers, group: str) -> None:
    member = subscriber("py-1", group)
    with transaction.atomic(using="pg"):
        # Registered on "default", which is in autocommit here: sent at once.
        publish_on_commit(group, "default", using="default")
        assert member.message()["data"] == "default"
        publish_on_commit(group, "pg", using="pg")
        member.expect_silence(0.2)
    assert member.message()["data"] == "pg"


def test_outside_a_transaction_it_publishes_at_once(subscriber: Subscribers, group: str) -> None:
    member = subscriber("py-1", group)
    publish_on_commit(group, "autocommit")
    assert member.message()["data"] == "autocommit"


def test_publish_many_on_commit_sends_one_batch_in_order(subscriber: Subscribers) -> None:
    a, hist = unique_group(), unique_group("hist")
    member = subscriber("py-1", a, hist)
    with transaction.atomic():
        publish_many_on_commit([(a, 1), (hist, 2), (a, 3)])
        publish_many_on_commit([])  # nothing
    got = [(m["group"], m["data"], m.get("offset")) for m in (member.message() for _ in range(3))]
    assert got == [(a, 1, None), (hist, 2, 1), (a, 3, None)]


def test_django_types_are_encoded_and_bad_data_fails_inside_the_transaction(
    subscriber: Subscribers, group: str
) -> None:
    import datetime
    import uuid

    member = subscriber("py-1", group)
    when = datetime.datetime(2026, 11, 3, 12, 30, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    with transaction.atomic():
        publish_on_commit(group, {"price": Decimal("189.50"), "at": when, "id": ident})
        with pytest.raises(TypeError):
            publish_on_commit(group, {"raw": b"bytes"})
        with pytest.raises(ValueError):
            publish_on_commit(group, float("inf"))
    assert member.message()["data"] == {
        "price": "189.50",
        "at": "2026-11-03T12:30:00Z",
        "id": str(ident),
    }
    member.expect_silence(0.2)


def test_a_failure_after_the_commit_is_logged_not_raised(
    closed_port_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(
        WSGATE_API_URL=closed_port_url, WSGATE_CLIENT_OPTIONS={"backoff": 0, "timeout": 1}
    ):
        with caplog.at_level(logging.ERROR, logger="wsgate.django"):
            with transaction.atomic():
                insert("default", "F1")
                publish_on_commit("market.F1", {"p": 1})
        assert rows("default", "F1") == 1, "the data is committed"
        [record] = [r for r in caplog.records if r.name == "wsgate.django"]
        assert "market.F1" in record.getMessage()
        assert "connection_failed" in record.getMessage()
        assert settings.WSGATE_API_KEY not in caplog.text

        with pytest.raises(wsgate.ConnectionFailed):
            with transaction.atomic():
                insert("default", "F2")
                publish_on_commit("market.F2", {"p": 2}, robust=False)
        assert rows("default", "F2") == 1, "committed before the callback raised"


def test_get_client_is_one_client_per_settings(node: Node) -> None:
    client = get_client()
    assert get_client() is client
    assert client.api_url == node.api.rstrip("/")
    with override_settings(WSGATE_CLIENT_OPTIONS={"timeout": 2}):
        other = get_client()
        assert other is not client
        assert other._settings.timeout.read == 2
    assert get_client() is not other


def test_async_client_uses_the_settings(node: Node, subscriber: Subscribers, group: str) -> None:
    import asyncio

    member = subscriber("py-1", group)

    async def main() -> None:
        async with wsgate_django.async_client() as client:
            await client.publish(group, {"price": Decimal("1.25")})

    asyncio.run(main())
    assert member.message()["data"] == {"price": "1.25"}


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"WSGATE_API_URL": ""}, "WSGATE_API_URL"),
        ({"WSGATE_API_KEY": None}, "WSGATE_API_KEY"),
        ({"WSGATE_CLIENT_OPTIONS": ["timeout"]}, "WSGATE_CLIENT_OPTIONS"),
    ],
)
def test_missing_settings_are_improperly_configured(overrides: dict[str, object], names: str) -> None:
    with override_settings(**overrides):
        with pytest.raises(ImproperlyConfigured, match=names):
            get_client()
        with pytest.raises(ImproperlyConfigured):
            publish_on_commit("g", 1)
