"""systemd's notify protocol (sd_notify(3)): one datagram to $NOTIFY_SOCKET.

A unit with `WatchdogSec=` restarts the worker when the pings stop; the heartbeat
thread sends them only while the worker is healthy. Without NOTIFY_SOCKET (not
under systemd) nothing is sent."""

import os
import socket


def notify(message, environ=None):
    """Sends `message` ("READY=1", "WATCHDOG=1", ...); returns whether it was sent."""
    address = (environ or os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False
