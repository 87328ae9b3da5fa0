"""The keyd client: the only keyd module the web app imports (with keyd.errors).

    with KeydClient("/run/strongroom-keyd/keyd.sock") as keyd:
        blob = keyd.encrypt(b"4111...", context=Context("cust-42", "pan"), actor="alice", purpose="create")
        keyd.decrypt(blob, context=Context("cust-42", "pan"), actor="alice", purpose="reveal")

Thread-safe: each call borrows a connection from a small pool and returns it, so threads do not
queue behind one another. Connections are reused; one that keyd closed (restart, idle timeout) is
replaced once, transparently. A fork (gunicorn) never shares a connection with the parent.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from keyd.envelope import HEADER_LEN, OVERHEAD, header_key_version, key_version
from keyd.errors import BY_CODE, ErrorCode, KeydError, Unavailable
from keyd.protocol import MAX_FRAME, Op, ProtocolError
from keyd.protocol.request import RekeyArgs, encode_batch, encode_request, encode_single
from keyd.protocol.response import ErrorResponse, ResponseError, parse_response

# What the web app may know of a stored ciphertext without a key comes from keyd/envelope.py,
# re-exported here because the web app imports nothing of keyd but this module and keyd.errors:
# HEADER_LEN (the public header's length), OVERHEAD (what encryption adds to a plaintext), and the
# key version of a whole value (key_version) or of its header alone (header_key_version). Both raise
# ValueError for anything that is not a keyd ciphertext.
__all__ = [
    "HEADER_LEN",
    "OVERHEAD",
    "Context",
    "KeydAdminClient",
    "KeydClient",
    "SecretGeneration",
    "ShareProgress",
    "Status",
    "header_key_version",
    "key_version",
]

_POOL_MAX = 8
# Most answers fit; a 64 KiB buffer per recv costs more than a second recv for a large batch.
_RECV_SIZE = 4096

# Every live client forgets its pooled connections in a forked child (gunicorn forks workers): two
# processes writing into one connection would interleave their frames.
_CLIENTS: weakref.WeakSet[KeydClient] = weakref.WeakSet()


def _after_fork() -> None:
    for client in list(_CLIENTS):
        client._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork)


def _share_progress(obj: Any) -> ShareProgress | None:
    """The status's `shares` object (absent before shares existed, and for other kinds of key)."""
    if obj is None:
        return None
    return ShareProgress(
        received=int(obj["received"]),
        threshold=int(obj["threshold"]),
        count=int(obj["count"]),
        indices=tuple(int(i) for i in obj.get("indices", ())),
    )


@dataclass(frozen=True)
class Context:
    """Bound to the ciphertext as associated data: it decrypts only for this record and field."""

    record_id: str
    field: str


@dataclass(frozen=True)
class Status:
    sealed: bool
    key_version: int | None
    min_decrypt_version: int | None
    mode: str
    # Encryptions per key version (an upper bound carried over restarts; exact since this start).
    versions: dict[int, int] = field(default_factory=dict)
    # key_kind "shares": the custodian shares keyd holds now; None for every other kind of key.
    shares: ShareProgress | None = None
    # Re-keying: the current secret generation, every generation keyd needs (oldest first), the one
    # a sealed keyd waits for next, and whether a `keyd rekey` waits for its new secret.
    generation: int = 1
    generations: tuple[SecretGeneration, ...] = ()
    awaiting_generation: int | None = None
    rekey_armed: bool = False


@dataclass(frozen=True)
class SecretGeneration:
    number: int
    mode: str
    key_kind: str
    versions: tuple[int, ...] = ()


@dataclass(frozen=True)
class ShareProgress:
    received: int
    threshold: int
    count: int
    indices: tuple[int, ...] = ()


class _StaleConnection(Exception):
    """The pooled connection was closed by keyd before it answered anything."""


def _error(resp: ErrorResponse) -> KeydError:
    exc = BY_CODE[resp.code](resp.reason)
    exc.reason = resp.reason
    return exc


class KeydClient:
    def __init__(self, socket_path: str | os.PathLike[str], *, timeout: float = 2.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self._path = os.fspath(socket_path)
        self._timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[socket.socket] = []
        self._closed = False
        _CLIENTS.add(self)

    def _forget_after_fork(self) -> None:
        # The parent's connections are the parent's: close our copies of the descriptors only
        # (close() never shuts the connection down for the parent).
        self._lock = threading.Lock()
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    # --- connections ----------------------------------------------------------------------------

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._timeout)
            sock.connect(self._path)
            sock.settimeout(None)
            tv = struct.pack("ll", int(self._timeout), int((self._timeout % 1) * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        except OSError as exc:
            sock.close()
            raise Unavailable(f"cannot reach keyd at {self._path}: {exc.strerror or exc}") from None
        return sock

    def _borrow(self) -> tuple[socket.socket, bool]:
        with self._lock:
            if self._closed:
                raise Unavailable("client is closed")
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, sock: socket.socket) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < _POOL_MAX:
                self._idle.append(sock)
                return
        sock.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    @staticmethod
    def _exchange(sock: socket.socket, request: bytes, reused: bool) -> bytes:
        try:
            # MSG_NOSIGNAL: a keyd that went away is an EPIPE here, not a SIGPIPE in the web app.
            sock.sendall(request, socket.MSG_NOSIGNAL)
            data = sock.recv(_RECV_SIZE)
        except (BrokenPipeError, ConnectionResetError):
            if reused:
                raise _StaleConnection from None
            raise
        if not data:
            if reused:
                raise _StaleConnection
            raise ConnectionResetError("keyd closed the connection")
        while len(data) < 4:
            more = sock.recv(_RECV_SIZE)
            if not more:
                raise ConnectionResetError("keyd closed the connection mid-answer")
            data += more
        size = int.from_bytes(data[:4], "big")
        if not 0 < size <= MAX_FRAME + 1024:
            raise ResponseError("bad answer length")
        end = size + 4
        if len(data) < end:
            parts = [data]
            have = len(data)
            while have < end:
                more = sock.recv(max(_RECV_SIZE, end - have))
                if not more:
                    raise ConnectionResetError("keyd closed the connection mid-answer")
                parts.append(more)
                have += len(more)
            data = b"".join(parts)
        if len(data) != end:
            raise ResponseError("keyd sent more than one answer")
        return data[4:]

    def _call(self, request: bytes) -> ErrorResponse | list[bytes | ErrorResponse] | dict[str, Any]:
        for attempt in (1, 2):
            sock, reused = self._borrow()
            try:
                body = self._exchange(sock, request, reused)
                result = parse_response(body)
            except _StaleConnection:
                sock.close()
                self._drop_idle()  # they all belong to the keyd that went away
                if attempt == 1:
                    continue
                raise Unavailable("keyd closed the connection") from None
            except (TimeoutError, BlockingIOError):
                sock.close()
                raise Unavailable(f"keyd did not answer within {self._timeout} s") from None
            except ResponseError:
                sock.close()
                raise Unavailable("keyd sent a malformed answer") from None
            except OSError as exc:
                sock.close()
                raise Unavailable(f"keyd connection failed: {exc.strerror or exc}") from None
            self._give_back(sock)
            return result
        raise Unavailable("unreachable")  # pragma: no cover

    # --- operations -----------------------------------------------------------------------------

    def _items(
        self, op: Op, items: list[tuple[str, str, bytes]], actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        try:
            request = encode_request(op, actor, purpose, items)
        except ProtocolError as exc:
            raise _error(ErrorResponse(exc.code, exc.refusal.value)) from None
        return self._results(request, len(items))

    def _results(self, request: bytes, expected: int) -> list[bytes | KeydError]:
        return self._results_of(self._call(request), expected)

    @staticmethod
    def _results_of(
        result: ErrorResponse | list[bytes | ErrorResponse] | dict[str, Any], expected: int
    ) -> list[bytes | KeydError]:
        if isinstance(result, ErrorResponse):
            raise _error(result)
        if not isinstance(result, list) or len(result) != expected:
            raise Unavailable("keyd answered with the wrong number of items")
        if any(type(r) is ErrorResponse for r in result):
            return [_error(r) if isinstance(r, ErrorResponse) else r for r in result]
        return result  # type: ignore[return-value] # all bytes: checked just above

    def _single(self, op: Op, data: bytes, context: Context, actor: str, purpose: str) -> bytes:
        try:
            request = encode_single(op, actor, purpose, context.record_id, context.field, bytes(data))
        except ProtocolError as exc:
            raise _error(ErrorResponse(exc.code, exc.refusal.value)) from None
        result = self._call(request)
        if type(result) is list and len(result) == 1 and type(result[0]) is bytes:
            return result[0]  # the usual answer, without _results' checks for a batch
        (out,) = self._results_of(result, 1)
        if isinstance(out, KeydError):
            raise out
        return out

    def _batch(
        self, op: Op, items: Sequence[tuple[Context, bytes]], actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        if not items:
            return []
        # An item the server would refuse fails here, alone; the others still go.
        try:
            request, errors = encode_batch(op, actor, purpose, items)
        except ProtocolError as exc:
            raise _error(ErrorResponse(exc.code, exc.refusal.value)) from None
        results = self._results(request, errors.count(None)) if request is not None else []
        if len(results) == len(errors):
            return results
        sent = iter(results)
        return [
            next(sent) if e is None else _error(ErrorResponse(ErrorCode.BAD_REQUEST, e.value)) for e in errors
        ]

    def status(self) -> Status:
        return self._status(encode_request(Op.STATUS, "keyd-client", "status"))

    def _status(self, request: bytes) -> Status:
        result = self._call(request)
        if isinstance(result, ErrorResponse):
            raise _error(result)
        if not isinstance(result, dict):
            raise Unavailable("keyd answered status with items")
        try:
            return Status(
                sealed=bool(result["sealed"]),
                key_version=result.get("key_version"),
                min_decrypt_version=result.get("min_decrypt_version"),
                mode=str(result["mode"]),
                versions={int(k): int(v) for k, v in result.get("versions", {}).items()},
                shares=_share_progress(result.get("shares")),
                generation=int(result.get("generation", 1)),
                generations=tuple(
                    SecretGeneration(
                        number=int(g["number"]),
                        mode=str(g["mode"]),
                        key_kind=str(g["key_kind"]),
                        versions=tuple(int(v) for v in g.get("versions", ())),
                    )
                    for g in result.get("generations", ())
                ),
                awaiting_generation=(
                    None if result.get("awaiting_generation") is None else int(result["awaiting_generation"])
                ),
                rekey_armed=bool(result.get("rekey_armed", False)),
            )
        except (KeyError, TypeError, ValueError):
            raise Unavailable("keyd sent a malformed status") from None

    def encrypt(self, plaintext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        return self._single(Op.ENCRYPT, plaintext, context, actor, purpose)

    def decrypt(self, ciphertext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        return self._single(Op.DECRYPT, ciphertext, context, actor, purpose)

    def rewrap(self, ciphertext: bytes, *, context: Context, actor: str, purpose: str) -> bytes:
        """Re-encrypt under the newest key version; the plaintext never leaves keyd."""
        return self._single(Op.REWRAP, ciphertext, context, actor, purpose)

    def encrypt_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        return self._batch(Op.ENCRYPT_BATCH, items, actor, purpose)

    def decrypt_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        return self._batch(Op.DECRYPT_BATCH, items, actor, purpose)

    def rewrap_batch(
        self, items: Sequence[tuple[Context, bytes]], *, actor: str, purpose: str
    ) -> list[bytes | KeydError]:
        return self._batch(Op.REWRAP_BATCH, items, actor, purpose)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._drop_idle()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class KeydAdminClient(KeydClient):
    """Operator commands (`python -m keyd seal|rotate|retire`). keyd accepts them only from admin uids."""

    def _admin(self, op: Op, actor: str, arg: int | None = None) -> Status:
        return self._status(encode_request(op, actor, "operator", arg=arg))

    def seal(self, *, actor: str) -> Status:
        return self._admin(Op.SEAL, actor)

    def rotate(self, *, actor: str) -> Status:
        return self._admin(Op.ROTATE, actor)

    def retire(self, min_version: int, *, actor: str) -> Status:
        return self._admin(Op.RETIRE, actor, min_version)

    def rekey(self, kind: str, *, actor: str, scrypt_n: int = 2**17, token_label: str = "") -> Status:
        """Arm keyd to take a new secret (`kind` passphrase, raw or pin) from its drop path.

        The secret itself never travels over the socket: the operator drops it like an unseal.
        """
        log_n = (
            scrypt_n.bit_length() - 1
            if kind == "passphrase" and scrypt_n == 1 << (scrypt_n.bit_length() - 1)
            else 0
        )
        spec = RekeyArgs(kind, log_n, token_label if kind == "pin" else "")
        return self._status(encode_request(Op.REKEY, actor, "operator", rekey=spec))

    def retire_secret(self, *, actor: str) -> Status:
        """Drop the old secret generation once none of its versions may be decrypted."""
        return self._admin(Op.RETIRE_SECRET, actor)
