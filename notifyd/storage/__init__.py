"""PostgreSQL: store.py (every query, asyncpg), listener.py (the LISTEN connection and its
payloads) and migrate.py (sql/ applied in order).

Of notifyd, imports only notifyd.core: never the edge, the app or Redis.
"""
