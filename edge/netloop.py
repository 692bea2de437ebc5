"""Many paho clients driven from ONE thread with `selectors`.

paho's own loop_start() costs a thread per client; a simulated fleet of a
thousand devices would then be a thousand threads contending for the GIL. paho
also exposes its socket and the steps of its loop (loop_read, loop_write,
loop_misc) for an external event loop; this module is that loop.

Everything that touches a client or a member (publishing, recording, paho
callbacks) runs on the loop's thread. Other threads hand work over with
`call_soon`, which wakes the loop through a socket pair.

Connections: each member's client is given its broker address beforehand with
`connect_async`; the loop (re)connects with `reconnect()` at a bounded number
per pass, backing off exponentially with jitter after each failure so that a
thousand devices do not reconnect in lock-step after a broker restart. The TCP
connect itself blocks (paho has no non-blocking connect), which on a local or
LAN broker is well under a millisecond and is bounded by `connect_timeout`.

TLS (a client given `broker.mqtt.tls.configure`): paho wraps the socket itself, and
its TLS handshake also runs inside `reconnect()`, blocking, bounded by the same
`connect_timeout` (a few milliseconds on a LAN; it is why `connects_per_pass`
bounds a pass). A failed handshake (an untrusted certificate, a host name the
certificate does not name) raises an `ssl.SSLError`, which is an OSError: it is
retried with backoff like a refused TCP connect, and logged as a warning once per
failing streak because it is a configuration problem, not a network one.
Afterwards the socket is non-blocking and paho turns the SSL layer's "want
read/write" into its usual "try again". One thing the selector cannot see: bytes
the SSL layer has already decrypted but paho has not consumed (one TLS record
can hold several MQTT packets, and paho reads a bounded number per call). The
kernel socket is then not readable although data is waiting, so after each read
the loop keeps reading while the socket reports `pending()` bytes.

A clean stop publishes each member's farewell (its retained `offline`), waits
for those to be acknowledged by the broker (bounded by `stop_timeout`), then
disconnects, so the broker does not send the Last Will for a clean shutdown.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import selectors
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import paho.mqtt.client as mqtt

log = logging.getLogger("cityledger.device")

T = TypeVar("T")


class Member(Protocol):
    """What the loop drives: a paho client (already given its address) and a periodic tick."""

    client: mqtt.Client

    def tick(self, now: float) -> None:
        """Periodic work on the loop thread (re-sends, draining a backlog)."""

    def farewell(self) -> mqtt.MQTTMessageInfo | None:
        """Last words before a clean disconnect, or None when there is nothing to say."""


def _tls_pending(sock: Any) -> int:
    """Bytes decrypted by a TLS socket and not yet read (0 for a plain socket)."""
    pending = getattr(sock, "pending", None)
    if pending is None:
        return 0
    try:
        return int(pending())
    except (OSError, ValueError):  # closed meanwhile
        return 0


@dataclass(frozen=True)
class Backoff:
    """Delays between connection attempts: initial, doubling up to maximum, +-jitter."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25  # fraction of the delay, drawn uniformly either side

    def next_delay(self, delay: float) -> float:
        return min(self.maximum, max(self.initial, delay * self.factor))


@dataclass(eq=False)
class _Link:
    """The loop's bookkeeping for one member's connection."""

    member: Member
    client: mqtt.Client
    delay: float = 0.0  # the backoff delay to apply after the next failure
    next_attempt: float = 0.0  # monotonic time of the next connection attempt
    sock: Any = None  # the socket registered with the selector
    farewell: mqtt.MQTTMessageInfo | None = None
    disconnecting: bool = False  # stopping: never reconnect
    disconnect_sent: bool = False
    tls_failing: bool = False  # the last connect failed in the TLS handshake (warned once per streak)


@dataclass(order=True)
class _Timer:
    due: float
    order: int
    period: float = field(compare=False)
    fn: Callable[[float], None] = field(compare=False)


class NetLoop:
    """A single-threaded network loop for many MQTT clients."""

    def __init__(
        self,
        *,
        tick_every: float = 0.2,
        misc_every: float = 1.0,
        connects_per_pass: int = 32,
        backoff: Backoff = Backoff(),
        stop_timeout: float = 5.0,
        seed: int | None = None,
        max_pending_reads: int = 64,
    ) -> None:
        """`max_pending_reads` bounds the extra reads per event for TLS-buffered data (fairness)."""
        self.tick_every = tick_every
        self.max_pending_reads = max_pending_reads
        self.misc_every = misc_every
        self.connects_per_pass = connects_per_pass
        self.backoff = backoff
        self.stop_timeout = stop_timeout
        self._rng = random.Random(seed)
        self._selector = selectors.DefaultSelector()
        self._links: list[_Link] = []
        self._timers: list[_Timer] = []
        self._timer_order = itertools.count()
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._calls_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._closed = False
        self._buffered: set[_Link] = set()  # links whose TLS socket still holds decrypted bytes

    # ------------------------------------------------------------ setup

    def add(self, member: Member) -> None:
        """Drive `member`'s client from now on (call before `run` or on the loop thread)."""
        link = _Link(member, member.client, delay=self.backoff.initial, next_attempt=time.monotonic())
        client = member.client
        client.on_socket_open = lambda c, u, sock: self._socket_opened(link, sock)
        client.on_socket_close = lambda c, u, sock: self._socket_closed(link, sock)
        client.on_socket_register_write = lambda c, u, sock: self._want_write(link, sock, True)
        client.on_socket_unregister_write = lambda c, u, sock: self._want_write(link, sock, False)
        self._links.append(link)

    def every(self, period: float, fn: Callable[[float], None], *, first_in: float = 0.0) -> None:
        """Call `fn(now)` on the loop thread every `period` seconds, without drift."""
        if period <= 0:
            raise ValueError("period must be positive")
        due = time.monotonic() + first_in
        heapq.heappush(self._timers, _Timer(due, next(self._timer_order), period, fn))

    def call_soon(self, fn: Callable[[], T]) -> Future[T]:
        """Run `fn()` on the loop thread (from any thread); its result or exception lands in the Future."""
        future: Future[T] = Future()
        with self._calls_lock:
            if self._closed:
                future.set_exception(RuntimeError("the network loop has stopped"))
                return future
            self._calls.append((fn, future))
        self.wake()
        return future

    def wake(self) -> None:
        """Interrupt the loop's wait (from any thread)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake, or closed

    @property
    def members(self) -> list[Member]:
        return [link.member for link in self._links]

    @property
    def connected(self) -> int:
        return sum(1 for link in self._links if link.client.is_connected())

    # ------------------------------------------------------------ running

    def start(self, stop: threading.Event, *, name: str = "netloop") -> threading.Thread:
        """Run the loop in a new thread until `stop` is set; join the returned thread to wait for the clean stop."""
        thread = threading.Thread(target=self.run, args=(stop,), name=name, daemon=True)
        thread.start()
        return thread

    def run(self, stop: threading.Event) -> None:
        """Serve every member until `stop` is set, then shut down cleanly and close the loop."""
        try:
            next_misc = next_tick = time.monotonic()
            while not stop.is_set():
                self._poll(self._timeout(next_tick))
                now = time.monotonic()
                self._run_calls()
                self._connect_due(now)
                if now >= next_misc:
                    self._misc()
                    next_misc = now + self.misc_every
                if now >= next_tick:
                    for link in self._links:
                        self._guarded(link, link.member.tick, now)
                    next_tick = now + self.tick_every
                self._run_timers(now)
            self._shutdown()
        finally:
            self._close()

    def _timeout(self, next_tick: float) -> float:
        deadline = next_tick
        if self._timers:
            deadline = min(deadline, self._timers[0].due)
        return max(0.0, min(self.tick_every, deadline - time.monotonic()))

    def _poll(self, timeout: float) -> None:
        """Wait for socket events up to `timeout` and let paho read and write."""
        for pending in list(self._buffered):  # TLS bytes left over by the previous pass
            if pending.sock is not None:
                self._read(pending, pending.sock)
            else:
                self._buffered.discard(pending)
        for key, events in self._selector.select(0.0 if self._buffered else timeout):
            link: _Link | None = key.data
            if link is None:
                self._drain_wakeups()
                continue
            sock = key.fileobj
            if events & selectors.EVENT_READ and link.sock is sock:
                self._read(link, sock)
            if events & selectors.EVENT_WRITE and link.sock is sock:
                self._guarded(link, link.client.loop_write)

    def _read(self, link: _Link, sock: Any) -> None:
        """Let paho read, then again while a TLS socket holds decrypted bytes the selector cannot see.

        At most `max_pending_reads` extra reads, so one busy client cannot starve
        the others; what is still buffered then is read at the start of the next
        pass, whose select does not wait (see `_poll`).
        """
        self._buffered.discard(link)
        self._guarded(link, link.client.loop_read)
        for _ in range(self.max_pending_reads):
            if link.sock is not sock:
                return
            before = _tls_pending(sock)
            if not before:
                return
            self._guarded(link, link.client.loop_read)
            if link.sock is sock and _tls_pending(sock) == before:
                return  # paho consumed nothing: do not spin on it
        if link.sock is sock and _tls_pending(sock):
            self._buffered.add(link)

    def _guarded(self, link: _Link, fn: Callable[..., Any], *args: Any) -> Any:
        """One member's bug must not stop the fleet: log it and carry on."""
        try:
            return fn(*args)
        except Exception:
            log.exception("error in %s", getattr(link.member, "device", link.member))
            return None

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run_calls(self) -> None:
        while True:
            with self._calls_lock:
                if not self._calls:
                    return
                fn, future = self._calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except Exception as exc:  # handed to the caller, who decides
                future.set_exception(exc)

    def _run_timers(self, now: float) -> None:
        while self._timers and self._timers[0].due <= now:
            timer = heapq.heappop(self._timers)
            try:
                timer.fn(now)
            except Exception:
                log.exception("error in timer %r", timer.fn)
            # The next due time keeps the original phase; a late loop skips the missed beats.
            timer.due += timer.period * max(1, int((now - timer.due) // timer.period) + 1)
            heapq.heappush(self._timers, timer)

    def _misc(self) -> None:
        """Keepalive pings and dead-link detection (paho asks for it about once a second)."""
        for link in self._links:
            if link.sock is not None:
                self._guarded(link, link.client.loop_misc)
            if link.client.is_connected():
                link.delay = self.backoff.initial  # reached CONNACK: the next failure starts over
                link.tls_failing = False

    # ------------------------------------------------------------ connections

    def _connect_due(self, now: float) -> None:
        """(Re)connect clients whose backoff has expired, a bounded number per pass."""
        budget = self.connects_per_pass
        for link in self._links:
            if budget <= 0:
                return
            if link.sock is not None or link.disconnecting or now < link.next_attempt:
                continue
            budget -= 1
            try:
                link.client.reconnect()
            except ssl.SSLError as exc:
                self._tls_failed(link, exc)
                self._schedule_retry(link, time.monotonic())
            except OSError as exc:
                log.debug("connect failed: %s", exc)
                self._schedule_retry(link, time.monotonic())

    def _tls_failed(self, link: _Link, exc: ssl.SSLError) -> None:
        """Say so once per failing streak: retrying cures a broker restart, not a certificate mismatch."""
        level = logging.DEBUG if link.tls_failing else logging.WARNING
        device = getattr(link.member, "device", "?")
        log.log(level, "%s: TLS handshake with the broker failed: %s (retrying with backoff)", device, exc)
        link.tls_failing = True

    def _schedule_retry(self, link: _Link, now: float) -> None:
        jitter = 1.0 + self.backoff.jitter * (2.0 * self._rng.random() - 1.0)
        link.next_attempt = now + link.delay * jitter
        link.delay = self.backoff.next_delay(link.delay)

    def _socket_opened(self, link: _Link, sock: Any) -> None:
        link.sock = sock
        self._selector.register(sock, selectors.EVENT_READ, link)

    def _socket_closed(self, link: _Link, sock: Any) -> None:
        if link.sock is sock:
            link.sock = None
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        # The delay doubles on each failure; _misc resets it once a connection reaches CONNACK.
        self._schedule_retry(link, time.monotonic())

    def _want_write(self, link: _Link, sock: Any, want: bool) -> None:
        if link.sock is not sock:
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        try:
            self._selector.modify(sock, events, link)
        except (KeyError, ValueError):
            pass

    # ------------------------------------------------------------ stopping

    def _shutdown(self) -> None:
        """Farewells, wait for their PUBACKs (bounded), disconnect, wait for the sockets to close."""
        for link in self._links:
            link.disconnecting = True
            if link.client.is_connected():
                link.farewell = self._guarded(link, link.member.farewell)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline:
            for link in self._links:
                if link.sock is None or link.disconnect_sent:
                    continue
                if link.farewell is None or link.farewell.is_published():
                    link.disconnect_sent = True
                    self._guarded(link, link.client.disconnect)
            if all(link.sock is None for link in self._links):
                return
            self._poll(min(0.05, max(0.0, deadline - time.monotonic())))
            self._run_calls()
        for link in self._links:
            sock = link.sock
            if sock is not None:
                # The broker will publish this one's Last Will, which is the truth: it did not stop cleanly.
                device = getattr(link.member, "device", "?")
                log.warning("%s: no clean disconnect within %.1f s", device, self.stop_timeout)
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                sock.close()
                link.sock = None

    def _close(self) -> None:
        with self._calls_lock:
            self._closed = True
        for link in self._links:
            if link.sock is not None:
                try:
                    self._selector.unregister(link.sock)
                except (KeyError, ValueError):
                    pass
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        with self._calls_lock:
            calls, self._calls = list(self._calls), deque()
        for _, future in calls:
            future.cancel()
