"""A pipelined connection for the shared limiter's script calls on a single Redis server.

A decision is the request path's one Redis round trip, so its client cost is paid on every
request. Through redis-py's command layer one call cost more client CPU than the decision itself
(connection checkout, a stream reader and its waiter, per-argument encoding, a reply read in a
coroutine). Here a call is one write of the command, packed by hiredis in C, and one future,
resolved by the protocol when its reply arrives, parsed by hiredis in C too.

Redis answers the commands of one connection in the order they were sent, so calls are pipelined
on one connection and each waits only for its own reply. A call whose caller gave up (its
deadline passed, or it was cancelled) keeps its place in the queue: its reply is read when it
comes and dropped, never taken for a later call's, so a deadline costs no reconnection.

The connection is opened as the limiter's redis-py client would open its own, from the same
URL settings: TCP, TLS (`rediss://`) or a Unix socket, then AUTH (password, username, or a
credential provider), SELECT and CLIENT SETNAME as configured. Redis Cluster is not served
here: its client routes by slot.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import hiredis
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

#: What a reply can be: hiredis's values (bytes, int, list, None), or an error reply.
Reply = Any


def pack(*args: str | bytes | int) -> bytes:
    """One command in RESP, ready to write."""
    # hiredis's stub types the argument as a one-element tuple; any length is packed.
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]
    return packed


class RedisPipe(asyncio.Protocol):
    """One connection to Redis carrying pipelined calls (see the module)."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader()
        #: One future per call sent and not answered yet, oldest first.
        self._waiting: deque[asyncio.Future[Reply]] = deque()
        self._transport: asyncio.Transport | None = None
        self._lost: Exception | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        waiting = self._waiting
        try:
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            # Bytes that are not RESP, or a reply nobody asked for: nothing later can be
            # trusted on this connection.
            self._fail(RedisConnectionError(f"unreadable reply from Redis: {exc!r}"))
            if self._transport is not None:
                self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(
            RedisConnectionError(
                "Redis closed the connection" if exc is None else f"connection lost: {exc!r}"
            )
        )

    # --- calls ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether calls can still be sent (not lost, not closing)."""
        transport = self._transport
        return self._lost is None and transport is not None and not transport.is_closing()

    def call(self, command: bytes) -> asyncio.Future[Reply]:
        """Sends one packed command; the future resolves with its reply (an error reply is a
        `hiredis.ReplyError` value, not an exception), or fails with a `ConnectionError` of
        redis-py's if the connection is lost first."""
        if not self.usable:
            raise self._lost or RedisConnectionError("the connection to Redis is closed")
        assert self._transport is not None
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(command)
        return future

    def close(self) -> None:
        """Closes the connection; calls still waiting fail."""
        self._fail(RedisConnectionError("the connection to Redis was closed"))
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        if self._lost is None:
            self._lost = exc
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)


def checked(reply: Reply) -> Reply:
    """`reply`, or raises redis-py's `ResponseError` (or its NOSCRIPT subclass) for an error
    reply."""
    if isinstance(reply, hiredis.ReplyError):
        message = str(reply)
        if message.startswith("NOSCRIPT"):
            raise NoScriptError(message)
        raise ResponseError(message)
    return reply


async def open_pipe(pool: ConnectionPool) -> RedisPipe:
    """A pipe to the server `pool` (a single-server redis-py client's pool) connects to, opened
    and set up as that client would, within its connect timeout. Raises redis-py's
    `ConnectionError` or `ResponseError` (a refused AUTH), or `TimeoutError`."""
    settings: dict[str, Any] = pool.connection_kwargs
    async with asyncio.timeout(settings.get("socket_connect_timeout")):
        return await _open(pool, settings)


async def _open(pool: ConnectionPool, settings: dict[str, Any]) -> RedisPipe:
    kind = pool.connection_class
    loop = asyncio.get_running_loop()
    try:
        if issubclass(kind, UnixDomainSocketConnection):
            _, pipe = await loop.create_unix_connection(RedisPipe, settings["path"])
        else:
            context: ssl.SSLContext | None = None
            if issubclass(kind, SSLConnection):
                context = kind(**settings).ssl_context.get()
            _, pipe = await loop.create_connection(
                RedisPipe,
                settings.get("host", "localhost"),
                settings.get("port", 6379),
                ssl=context,
            )
    except OSError as exc:
        raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
    try:
        for command in await _setup(settings):
            checked(await pipe.call(command))
    except BaseException:
        pipe.close()
        raise
    return pipe


async def _setup(settings: dict[str, Any]) -> list[bytes]:
    """The commands that set a new connection up as configured, in order."""
    commands: list[bytes] = []
    username, password = settings.get("username"), settings.get("password")
    provider = settings.get("credential_provider")
    if provider is not None:
        credentials = await provider.get_credentials_async()
        username, password = (None, credentials[0]) if len(credentials) == 1 else credentials
    if password is not None:
        commands.append(
            pack("AUTH", password) if username is None else pack("AUTH", username, password)
        )
    if settings.get("db"):
        commands.append(pack("SELECT", settings["db"]))
    if settings.get("client_name"):
        commands.append(pack("CLIENT", "SETNAME", settings["client_name"]))
    return commands
