"""`python -m notifyd`: the same entry point as the console script.

Imports only notifyd.cli.
"""

from notifyd.cli import main

raise SystemExit(main())
