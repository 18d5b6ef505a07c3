"""Running the service: the listening socket first, then the model, then uvicorn until SIGTERM.

The socket is bound before anything else, so a port in use (or an address this machine does not have) is
said in one line at once, not after the model has loaded. uvicorn then serves on that socket.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import BusyError, ConfigError, hint


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides it


def _free_port_near(host: str, port: int) -> int | None:
    """A port after ``port`` that is free on ``host`` now (a suggestion: it may be taken by the time it is used)."""
    for candidate in range(port + 1, min(port + 20, 65536)):
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with contextlib.suppress(OSError):
                probe.bind((host, candidate))
                return candidate
    return None


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening: connections are refused until the server
    runs), or the one-line error that says why it cannot be and what to pass instead."""
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
    # they are TCP, and with it on every small response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart is not blocked by TIME_WAIT
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise _bind_error(err, host, port) from None
    sock.set_inheritable(True)
    return sock


def _bind_error(err: OSError, host: str, port: int) -> Exception:
    if err.errno == errno.EADDRINUSE:
        free = _free_port_near(host, port)
        example = hint(f"port={free}", f"--port {free}") if free else hint("another port=", "another --port")
        return BusyError(f"port {port} on {host} is in use; pass {example} (free now), or stop what listens on "
                         f"{port}")
    if err.errno == errno.EACCES:
        return ConfigError(f"port {port} on {host} needs privileges this process lacks (ports below 1024 do); "
                           f"pass {hint('port=8000', '--port 8000')}")
    if err.errno == errno.EADDRNOTAVAIL or isinstance(err, socket.gaierror):
        return ConfigError(f"cannot listen on {host}: it is not an address of this machine; pass "
                           f"{hint('host=', '--host ')}127.0.0.1 (this machine only) or 0.0.0.0 (every address)")
    return ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pass another "
                       f"{hint('host= or port=', '--host or --port')}")


def run_server(app: Any, sock: socket.socket, *, log_level: str, timeout_s: float) -> int:
    """Serve ``app`` on ``sock`` until SIGTERM or Ctrl-C; requests in flight are answered first. 0 after a
    graceful stop, 1 when the server did not start."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=int(timeout_s) + 5)
    server = _graceful_server(config)
    with sock:
        server.run(sockets=[sock])
    return 0 if server.started else 1


def _graceful_server(config: Any) -> Any:
    """uvicorn's server, except that a SIGTERM or SIGINT ends the process with status 0 once the requests in
    flight are answered (uvicorn itself re-raises the signal afterwards, which ends it with status 143)."""
    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return GracefulServer(config)
