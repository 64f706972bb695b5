"""Role names: the one normalisation of a role, shared by tokens (auth.py), presence queries
(protocol.py) and settings (config.py), and mirrored exactly by notifyd.role_name() in
sql/0005_identity.sql, which the insert trigger applies to notifyd.notifications.role.
Only A-Z are folded, never by a locale: Python's str.lower() and PostgreSQL's lower() disagree
on characters such as İ, and lower() under LC_CTYPE 'C' leaves non-ASCII letters alone.

Imports nothing of notifyd, and no asyncio, asyncpg, redis or socket.
"""

from __future__ import annotations

import re
import string

MAX_ROLE_LENGTH = 128
# After folding: 1 to 128 visible ASCII characters ('!' to '~'); no space, no control
# character, nothing outside ASCII.
_ROLE = re.compile(rf"[!-~]{{1,{MAX_ROLE_LENGTH}}}", re.ASCII)
_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
ROLE_RULE = f"1 to {MAX_ROLE_LENGTH} visible ASCII characters (A-Z are lower-cased)"


def role_name(raw: str) -> str | None:
    """The role as notifyd names it (A-Z lower-cased), or None when it is not a role name."""
    folded = raw.translate(_FOLD)
    return folded if _ROLE.fullmatch(folded) else None
