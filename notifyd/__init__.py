"""notifyd: real-time notifications from PostgreSQL to every device of a user, over WebSockets."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2
