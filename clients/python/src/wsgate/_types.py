"""The shapes of the API's answers (the JSON as wsgate sends it)."""

from __future__ import annotations

from typing import Literal, NamedTuple, TypedDict

__all__ = ["ClusterNode", "Member", "Message", "Presence", "PublishRetry"]


class Message(NamedTuple):
    """One message of :meth:`Client.publish_many`; a plain ``(group, data)``
    tuple works the same."""

    group: str
    data: object


class Member(TypedDict):
    """One connection in a group: its user, its session id, its node."""

    user_id: str
    session: str
    node: str


class Presence(TypedDict):
    """``GET /api/v1/groups/{group}/presence``."""

    group: str
    count: int
    members: list[Member]


class ClusterNode(TypedDict):
    """One live node of ``GET /api/v1/cluster``."""

    node: str
    connections: int
    last_seen_ms: int


#: When a publish is retried; see :class:`wsgate.Client`.
PublishRetry = Literal["at_most_once", "at_least_once"]
