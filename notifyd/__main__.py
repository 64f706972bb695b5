# `python -m notifyd`: the same entry point as the console script.
from notifyd.cli import main

raise SystemExit(main())
