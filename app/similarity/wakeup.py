"""Wake-ups between the workers of one machine: a write need not wait for the others' next poll.

A write commits, applies itself here and then waits until every other live worker reports it has
applied it too. Each worker learns of another's write from its change-log poll (every
`applier_poll_ms`); this nudge makes that at once: every worker listens on a Linux abstract Unix
datagram socket named by its replica id, and a waiting write sends one byte to each worker still
behind, which wakes that worker's applier to poll now. It is only a hint, never the source of truth:
a lost or refused datagram (a worker on another machine or in another network namespace, a worker
that just stopped, a platform without abstract sockets) leaves the poll to do the same work later.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

SUPPORTED = sys.platform.startswith("linux")


def address(replica_id: str) -> bytes:
    """The abstract socket name of a replica (a leading NUL byte: no file, nothing to clean up)."""
    return b"\0qsim-wake-" + replica_id.encode("ascii")


class WakeupListener:
    """Calls `on_wake` whenever another worker nudges this replica; a daemon thread blocked on recv."""

    def __init__(self, replica_id: str, on_wake: Callable[[], None]):
        self._on_wake = on_wake
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        if not SUPPORTED:
            return
        try:
            listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            listening.bind(address(replica_id))
        except OSError as error:
            logger.info("no wake-ups between workers (%s): other workers' writes wait for the poll", error)
            return
        self._socket = listening
        self._thread = threading.Thread(target=self._listen, name="wakeup-listener", daemon=True)
        self._thread.start()

    @property
    def listening(self) -> bool:
        return self._socket is not None

    def _listen(self) -> None:
        listening = self._socket
        while True:
            try:
                listening.recv(16)
            except OSError:  # closed: the applier stopped
                return
            if self._socket is None:  # shut down: recv returned nothing
                return
            self._on_wake()

    def close(self) -> None:
        listening, self._socket = self._socket, None
        if listening is not None:
            # shutdown() ends the blocked recv on Linux; close() alone would leave it waiting.
            with contextlib.suppress(OSError):
                listening.shutdown(socket.SHUT_RDWR)
            listening.close()
        if self._thread is not None:
            self._thread.join(timeout=2)


class WakeupSender:
    """Nudges other replicas' listeners; every failure is ignored (the poll covers it)."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = None  # opened on the first nudge
        self._closed = False
        self._lock = threading.Lock()

    def wake(self, replica_ids: Iterable[str]) -> int:
        """Sends one nudge to each replica; returns how many were delivered to a listener."""
        with self._lock:
            if self._socket is None and SUPPORTED and not self._closed:
                with contextlib.suppress(OSError):
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.setblocking(False)
            if self._socket is None:
                return 0
            delivered = 0
            for replica_id in replica_ids:
                try:
                    self._socket.sendto(b"w", address(replica_id))
                    delivered += 1
                except OSError:  # not on this machine, gone, or its queue is full of nudges already
                    pass
            return delivered

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._socket is not None:
                self._socket.close()
                self._socket = None
