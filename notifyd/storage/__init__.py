"""PostgreSQL: store.py (every query, asyncpg), listener.py (the LISTEN connection and its
payloads), pipeline.py (their events to the publisher in commit order), retention.py (pruning
paced in short batches) and migrate.py (sql/ applied in order).

Imports notifyd.core, the settings and notifyd.ops: never the edge, the hub, the app or Redis.
"""
