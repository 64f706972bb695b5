"""Local presence counts and who may see whose presence."""

from __future__ import annotations

from notifyd.core.presence import LocalPresence, PresenceChange, PresencePolicy, UserPresence


def test_presence_counts_devices_and_roles() -> None:
    p = LocalPresence()
    came = p.connected("u", ("doctor",), 1.0)
    assert came == PresenceChange(True, "u", ("doctor",), 1.0)
    assert p.connected("u", ("doctor",), 2.0) is None
    assert p.role_counts(["doctor", "nurse"]) == {"doctor": 1, "nurse": 0}
    assert p.disconnected("u", 5.0) is None
    assert p.state("u", 5.5) == UserPresence("u", True, 5.5, ("doctor",))
    assert p.disconnected("u", 6.0) == PresenceChange(False, "u", ("doctor",), 6.0)
    assert p.state("u", 7.0) == UserPresence("u", False, 6.0, ("doctor",))
    assert p.role_counts(["doctor"]) == {"doctor": 0}
    assert p.state("never", 7.0) == UserPresence("never", False, None, ())
    assert p.disconnected("never", 8.0) is None  # an unknown device changes nothing
    assert p.online() == {}


def test_presence_policy_public_roles() -> None:
    policy = PresencePolicy(["admin"], ["doctor"])
    doctor = UserPresence("d", True, 1.0, ("doctor",))
    patient = UserPresence("p", False, 3.0, ("patient",))
    assert policy.is_watcher(("admin",)) and not policy.is_watcher(("patient",))
    assert policy.may_query(("patient",))
    assert policy.shown(("patient",), doctor) == doctor
    assert policy.shown(("patient",), patient) == UserPresence("p", False, None, ())
    assert policy.shown(("admin",), patient) == patient
    assert policy.countable(("patient",), "doctor") and not policy.countable(("patient",), "x")
    assert policy.countable(("admin",), "x")
    assert not PresencePolicy(["admin"], []).may_query(("patient",))
