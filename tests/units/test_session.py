"""The per-connection replay hold-back: the order guarantee of a sync."""

from __future__ import annotations

import pytest

from notifyd.core.auth import Authenticator, Identity, issue_token
from notifyd.core.codes import ErrorCode
from notifyd.core.errors import ClientError
from notifyd.core.session import Session, State
from notifyd.core.settings import parse
from units.fakes import SECRET, live_session


def test_session_holds_live_items_during_sync_and_drops_duplicates() -> None:
    s = live_session()
    assert s.state is State.LIVE
    assert s.offer("user:1", 1, b"f1") == b"f1"  # before any sync: live as it comes
    s.begin_sync(["user:1", "all"])
    with pytest.raises(ClientError, match="previous"):
        s.begin_sync(["user:1"])
    for seq in (4, 5, 6):
        assert s.offer("user:1", seq, f"f{seq}".encode()) is None  # held
    assert s.offer("role:x", 9, b"other") == b"other"  # streams not in the sync flow on
    # the response delivered up to 5: only 6 follows, then live items above it
    assert s.finish_sync({"user:1": 5, "all": 0}, set()) == [b"f6"]
    assert s.offer("user:1", 6, b"dup") is None
    assert s.offer("user:1", 7, b"f7") == b"f7"


def test_session_behind_after_has_more_and_abort() -> None:
    s = live_session()
    s.begin_sync(["user:1"])
    s.offer("user:1", 10, b"f10")
    assert s.finish_sync({"user:1": 3}, {"user:1"}) == []
    assert s.offer("user:1", 11, b"f11") is None  # behind: the next sync brings it
    s.begin_sync(["user:1"])
    s.offer("user:1", 12, b"f12")
    assert s.abort_sync() == []  # still behind after a failed sync
    s.begin_sync(["user:1"])
    assert s.finish_sync({"user:1": 11}, set()) == []
    assert s.offer("user:1", 12, b"f12") == b"f12"


def test_session_in_flight_covers_live_and_released_items_until_the_next_sync() -> None:
    s = live_session()
    assert s.in_flight() == {}
    s.offer("user:1", 3, b"f3")
    s.offer("user:1", 4, b"f4")
    assert s.in_flight() == {"user:1": (3, 4)}  # may still be on its way: a sync skips it
    s.begin_sync(["user:1", "all"])
    s.offer("user:1", 9, b"f9")  # held during the sync, sent after the response
    assert s.finish_sync({"user:1": 8, "all": 0}, set()) == [b"f9"]
    assert s.in_flight() == {"user:1": (9, 9)}
    s.begin_sync(["user:1", "all"])
    s.offer("all", 2, b"a2")
    assert s.finish_sync({"user:1": 9, "all": 1}, {"all"}) == []  # all: another page
    assert s.in_flight() == {}


def test_session_streams_given_as_they_are_leave_nothing_out_of_their_next_pages() -> None:
    s = live_session()
    s.offer("user:1", 3, b"f3")
    s.offer("user:1", 4, b"f4")
    s.offer("all", 7, b"a7")
    s.begin_sync(["user:1", "all"])
    # user:1 asked without a cursor (or reset): 3 and 4 are in its response or its next pages
    assert s.finish_sync({"user:1": 2, "all": 5}, {"user:1", "all"}, fresh={"user:1"}) == []
    assert s.in_flight() == {"all": (7, 7)}  # all had a cursor: still never twice
    s.begin_sync(["user:1", "all"])
    assert s.finish_sync({"user:1": 4, "all": 7}, set()) == []
    assert s.in_flight() == {}
    assert s.offer("user:1", 4, b"dup") is None and s.offer("user:1", 5, b"f5") == b"f5"


def test_session_waiting_for_sync_sends_nothing_live_until_the_response() -> None:
    s = live_session()
    s.wait_for_sync()
    assert s.offer("user:1", 1, b"f1") is None  # the sync brings it
    s.begin_sync(["user:1", "all"])
    s.offer("user:1", 2, b"f2")
    assert s.abort_sync() == []  # a failed sync: still waiting for one that answers
    assert s.offer("user:1", 3, b"f3") is None
    s.begin_sync(["user:1", "all"])
    s.offer("user:1", 4, b"f4")
    assert s.finish_sync({"user:1": 3, "all": 0}, set()) == [b"f4"]
    assert s.offer("user:1", 5, b"f5") == b"f5"


def test_session_refresh_takes_the_fresh_tokens_roles() -> None:
    s = live_session()
    auth = Authenticator(parse({"jwt_secret": SECRET}))
    refreshed = s.authenticate(auth.verify(issue_token(SECRET, "1", ["admin"], ttl=9999)))
    assert refreshed.roles == ("admin",) and refreshed.expires_at > 0
    assert s.identity == refreshed
    with pytest.raises(ClientError) as info:
        s.authenticate(auth.verify(issue_token(SECRET, "2")))
    assert info.value.code is ErrorCode.AUTH_USER_MISMATCH


def test_roles_cannot_change_while_a_sync_is_answered() -> None:
    session = Session("c1")
    session.authenticate(Identity("42", ("admin",), 2e9, None))
    session.begin_sync(["user:42", "role:admin", "all"])
    session.authenticate(Identity("42", ("admin",), 3e9, None))  # same roles: fine
    with pytest.raises(ClientError) as caught:
        session.authenticate(Identity("42", (), 3e9, None))
    assert caught.value.code is ErrorCode.SYNC_IN_PROGRESS
    assert session.identity is not None and session.identity.roles == ("admin",)
    session.finish_sync({}, set())
    session.offer("role:admin", 5, b"frame")
    assert session.in_flight() == {"role:admin": (5, 5)}
    session.authenticate(Identity("42", ("doctor",), 3e9, None))
    assert session.in_flight() == {}  # what was sent of a dropped stream is forgotten
    assert session.offer("role:doctor", 9, b"new") == b"new"  # gained: live from here
