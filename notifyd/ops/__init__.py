"""Operations: Prometheus metrics, JSON logs, systemd notifications and the cycle collector's
policy.

Each module imports nothing of notifyd but notifyd.core, so any layer may use it.
"""
