"""The socket side of keyd: the socket directory, peer checks, framing, one thread per connection,
and the poller that watches for the operator's drop file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import stat
import struct
import threading
from pathlib import Path
from types import FrameType

from keyd import hardening
from keyd.barrier import Barrier
from keyd.budgets import Budgets
from keyd.config import Config
from keyd.errors import ErrorCode
from keyd.events import Event, EventSink, FanoutSink, SpoolSink, SyslogSink
from keyd.keysource import DropIdentity, DropRefusal, DropRefused, consume_drop_owned, open_drop, wipe
from keyd.protocol import MAX_FRAME, Reason
from keyd.protocol.response import encode_error
from keyd.state import StateStore, hand_over, make_state_dir

log = logging.getLogger("keyd")

# Small first reads: a 64 KiB recv buffer costs more than a second recv for the rare large frame.
RECV_SIZE = 4096
# A peer that hangs up must cost an EPIPE, never a SIGPIPE, whatever the process's signal setup.
NOSIGNAL = socket.MSG_NOSIGNAL
_PEERCRED = struct.Struct("3i")


class FrameError(Exception):
    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class FrameReader:
    """Reads length-prefixed frames. Usually one recv per frame: the whole request arrives at once."""

    __slots__ = ("_buf", "_recv")

    def __init__(self, sock: socket.socket) -> None:
        self._recv = sock.recv
        self._buf = b""

    def read(self) -> bytes | None:
        """The next frame body; None at a clean end of stream. Raises FrameError on a bad frame."""
        buf = self._buf
        while len(buf) < 4:
            chunk = self._recv(RECV_SIZE)
            if not chunk:
                if buf:
                    raise FrameError(Reason.TRUNCATED)
                return None
            buf += chunk
        size = int.from_bytes(buf[:4], "big")
        if size == 0:
            raise FrameError(Reason.EMPTY_FRAME)
        if size > MAX_FRAME:
            # The stream cannot be resynchronised without reading it all: answer and hang up.
            raise FrameError(Reason.FRAME_TOO_LARGE)
        end = 4 + size
        if len(buf) < end:
            parts = [buf]
            have = len(buf)
            while have < end:
                chunk = self._recv(max(RECV_SIZE, end - have))
                if not chunk:
                    raise FrameError(Reason.TRUNCATED)
                parts.append(chunk)
                have += len(chunk)
            buf = b"".join(parts)
        self._buf = buf[end:]
        return buf[4:end]


def _set_timeouts(sock: socket.socket, seconds: float) -> None:
    # Kernel-side timeouts keep the socket in blocking mode: no extra poll() per recv on the hot path.
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def prepare_socket_dir(path: Path, *, uid: int, gid: int) -> None:
    """The socket's directory: 0750, owned by keyd's user and the web app's group. Nobody else enters."""
    directory = path.parent
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{directory} is not a directory (a symlink?)")
    others = [name for name in os.listdir(directory) if name != path.name]
    if others:
        # keyd sets this directory's owner and mode: it must never do that to /run or /tmp.
        raise OSError(f"{directory} holds other files ({others[0]}...): give keyd a directory of its own")
    if os.geteuid() == 0:
        os.chown(directory, uid, gid)
    os.chmod(directory, 0o750)  # noqa: S103 - the web app's group must enter; others must not


def bind_socket(path: Path, *, uid: int, gid: int) -> socket.socket:
    prepare_socket_dir(path, uid=uid, gid=gid)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket: refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            os.unlink(path)  # stale socket of a keyd that is gone
        else:
            raise OSError(f"another keyd is serving on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    os.chmod(path, 0o660)
    sock.listen(128)
    return sock


class Server:
    def __init__(self, sock: socket.socket, barrier: Barrier, events: EventSink, config: Config) -> None:
        self.sock = sock
        self.barrier = barrier
        self.events = events
        self.config = config
        self._peers = config.allowed_uids | config.admin_uids
        self._slots = threading.BoundedSemaphore(config.max_connections)
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            conn.settimeout(None)
            if not self._slots.acquire(blocking=False):
                with contextlib.suppress(OSError):
                    conn.sendall(encode_error(ErrorCode.FORBIDDEN, Reason.TOO_MANY_CONNECTIONS), NOSIGNAL)
                conn.close()
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True, name="keyd-conn").start()

    def stop(self) -> None:
        self._stop.set()

    def _connection(self, conn: socket.socket) -> None:
        try:
            pid, uid, _gid = _PEERCRED.unpack(
                conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
            if uid not in self._peers:
                self._refuse_peer(conn, pid, uid)
                return
            _set_timeouts(conn, self.config.idle_timeout)
            reader = FrameReader(conn)
            handle = self.barrier.handle
            send = conn.sendall
            while True:
                try:
                    body = reader.read()
                except FrameError as exc:
                    send(encode_error(ErrorCode.BAD_REQUEST, exc.reason), NOSIGNAL)
                    return
                if body is None:
                    return
                send(handle(body, uid), NOSIGNAL)
        except OSError:
            return  # the peer went away or timed out: nothing to answer
        finally:
            conn.close()
            self._slots.release()

    def _refuse_peer(self, conn: socket.socket, pid: int, uid: int) -> None:
        log.warning("refused a connection from uid %d (pid %d)", uid, pid)
        self.events.emit(Event.PEER_REFUSED, uid=uid, pid=pid)
        # Read (and ignore) the first frame so the refusal arrives as an answer, not as a reset.
        _set_timeouts(conn, 1.0)
        with contextlib.suppress(OSError, FrameError):
            FrameReader(conn).read()
        with contextlib.suppress(OSError):
            conn.sendall(encode_error(ErrorCode.FORBIDDEN, Reason.PEER_NOT_ALLOWED), NOSIGNAL)


class DropPoller:
    """Watches the drop path; a valid secret unseals keyd. Each refused file is reported once."""

    def __init__(
        self, barrier: Barrier, events: EventSink, config: Config, *, drop_uids: frozenset[int]
    ) -> None:
        self.barrier = barrier
        self.events = events
        self.path = config.drop_path
        self.interval = config.poll_interval
        self.drop_uids = drop_uids
        self._stop = threading.Event()
        self._last: DropIdentity | None = None

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.barrier.expire_shares()  # a custodian share that waited too long goes
                self.poll_once()
            except Exception:
                # The poller is the only way in for the key: it must survive anything one poll meets.
                log.exception("drop-file poll failed; keyd stays as it is and polls again")

    def stop(self) -> None:
        self._stop.set()

    def poll_once(self) -> None:
        try:
            fd = open_drop(self.path)
            if fd is None:
                self._last = None
                return
            secret, owner = consume_drop_owned(fd, self.path, allowed_uids=self.drop_uids)
        except DropRefused as exc:
            self._refused(exc)
            return
        self._last = None
        if not self.barrier.sealed and self.barrier.rekey_armed:
            self.barrier.rekey(secret, uid=owner)  # `keyd rekey`: the new secret, wiped either way
            return
        if not self.barrier.sealed:
            wipe(secret)
            log.warning("drop file consumed and ignored: keyd is already unsealed")
            self.events.emit(Event.DROP_FILE_REFUSED, reason="already_unsealed")
            return
        if self.barrier.takes_shares:
            self.barrier.deliver_share(secret, uid=owner)
        else:
            self.barrier.unseal(secret)

    def _refused(self, exc: DropRefused) -> None:
        try:
            st = os.lstat(self.path)
            ident = DropIdentity(exc.reason, st.st_dev, st.st_ino, st.st_mtime_ns)
        except OSError:
            ident = DropIdentity(exc.reason, 0, 0, 0)
        if ident == self._last:
            return
        self._last = ident
        fields: dict[str, str | int] = {"reason": exc.reason.value, "path": str(self.path)}
        if exc.uid is not None:
            fields["uid"] = exc.uid
        if exc.mode is not None:
            fields["mode"] = f"{exc.mode:04o}"
        event = (
            Event.DROP_FILE_NOT_DELETED if exc.reason is DropRefusal.NOT_DELETED else Event.DROP_FILE_REFUSED
        )
        log.warning("drop file refused: %s", exc.reason.value)
        self.events.emit(event, **fields)


def make_events(config: Config) -> FanoutSink:
    sinks: list[EventSink] = [SpoolSink(config.state_dir / "events.jsonl")]
    if config.syslog:
        sinks.append(SyslogSink())
    return FanoutSink(*sinks)


def serve(config: Config) -> int:
    """`keyd serve`: bind, drop privileges, harden, then serve until SIGTERM/SIGINT."""
    if config.user is not None:
        uid, gid = hardening.resolve_user(config.user)
    else:
        uid, gid = os.geteuid(), os.getegid()
    group = hardening.resolve_group(config.socket_group)
    sock_gid = group if group is not None else gid
    store = StateStore(config.state_dir)
    store.load()  # refuse to start (and to bind) on a missing or broken state
    make_state_dir(config.state_dir)  # 0700, and refuse a directory that is not keyd's alone
    hand_over(config.state_dir, uid, gid)
    sock = bind_socket(config.socket, uid=uid, gid=sock_gid)
    if config.user is not None and os.geteuid() != uid:
        hardening.drop_privileges(uid, gid)
    problems = hardening.harden()
    events = make_events(config)
    if os.geteuid() == 0:
        log.warning("keyd runs as root: acceptable in development only (set `user` in production)")
    for problem in problems:
        log.warning("hardening degraded: %s", problem)
        events.emit(Event.HARDENING_DEGRADED, detail=problem)
    budgets = Budgets(config.budgets, path=config.state_dir / "budgets.json")
    barrier = Barrier(config=config, store=store, events=events, budgets=budgets)
    server = Server(sock, barrier, events, config)
    drop_uids = config.drop_uids or frozenset({os.geteuid()})
    poller = DropPoller(barrier, events, config, drop_uids=drop_uids)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Seal first: the key leaves memory before anything else happens.
        barrier.seal(signal.Signals(signum).name)
        poller.stop()
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=poller.run, daemon=True, name="keyd-drop").start()
    events.emit(Event.STARTED, mode=config.mode, uid=os.geteuid())
    log.info("serving on %s (sealed; waiting for the key at %s)", config.socket, config.drop_path)
    try:
        server.serve_forever()
    finally:
        barrier.seal("shutdown")
        with contextlib.suppress(OSError):
            os.unlink(config.socket)
        sock.close()
        events.emit(Event.STOPPED)
    return 0
