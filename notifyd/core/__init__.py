"""The pure core: protocol frames, NOTIFY payload trust, session state, the stream index, fan-out,
timers, limits, presence policy, roles, authentication and errors.

Imports no asyncio, asyncpg, redis or socket, nor any notifyd module outside notifyd.core;
tested without I/O in tests/units (tests/test_layout.py holds the core and its tests to that).
"""
