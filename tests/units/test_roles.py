"""Role names: only A-Z folds; any other spelling is refused."""

from __future__ import annotations

from notifyd.core.roles import role_name
from units.fakes import KELVIN


def test_role_names_fold_only_a_to_z_and_refuse_the_rest() -> None:
    assert role_name("ADMIN") == role_name("Admin") == "admin"
    assert role_name("Org:42/Team_Lead+x") == "org:42/team_lead+x"
    assert role_name("x" * 128) == "x" * 128
    for refused in (
        "\u0130T",
        "\u0131t",
        "\u00c4RZTE",
        "stra\u00dfe",
        KELVIN,
        "\ufb00",
        "a b",
        "",
        "x" * 129,
        "tab\tx",
        "null\x00byte",
    ):
        assert role_name(refused) is None, refused
