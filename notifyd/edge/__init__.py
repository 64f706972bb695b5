"""The edge: what touches the clients' sockets. server.py (asyncio.Protocol and websockets'
sans-I/O protocol) and http_api.py (the HTTP routes on the same port) turn bytes into the core's
events and the core's answers into bytes; what they mean is decided in notifyd.core.

Imports the core, notifyd.ops and the store it is handed; never notifyd.app, which composes it.
"""
