"""The edge: what touches the clients' sockets. server.py (asyncio.Protocol and websockets'
sans-I/O protocol) and http_api.py (the HTTP routes on the same port) turn bytes into the
core's typed requests and answers into bytes; what a request means is decided by
notifyd.operations (and, for a connection's life, notifyd.hub, which server.py calls).

Never imports notifyd.app or notifyd.hub, which compose and call it.
"""
