"""`UploadLimit`: refuse request bodies over the upload limit with 413 before they are parsed or stored.

Starlette parses a multipart body completely (spooling big files to disk) before the route runs, so the size
must be enforced while the body streams in: by its Content-Length when the client sends one, else by counting
the bytes as they arrive. A pure ASGI middleware does both without buffering anything itself.

Before a refusal is answered, the rest of the body is read and thrown away (`discard_body`), up to a bound. A
server that answers and closes with the client's bytes still unread makes the kernel reset the connection, and a
client that sends the whole body before it reads the answer (Python's urllib, requests) then sees "connection
reset by peer" instead of the 413. nginx's lingering close does the same. The bound (`drain_bound`: twice the
limit, at least 128 MiB, and at most `DRAIN_SECONDS` of reading) keeps a huge or trickling body from holding
the server: past it the connection is closed and such a client sees the reset.
"""

from __future__ import annotations

import asyncio
import json
import time

# Room for the form fields and multipart boundaries around the image, so an image of exactly the limit passes.
FORM_OVERHEAD_BYTES = 64 * 1024
# The least a refused body is read for. 128 MiB covers the uploads people try by mistake (a 64 MB photo at the
# default 20 MB limit); on loopback it is read in about a tenth of a second.
DRAIN_FLOOR_BYTES = 128 * 2**20
# Longest a refused body is read for, whatever its size, so a client trickling bytes cannot hold a worker.
DRAIN_SECONDS = 10.0


def drain_bound(limit_bytes: int) -> int:
    """Most bytes of a refused body read before answering: twice the limit, at least `DRAIN_FLOOR_BYTES`."""
    return max(2 * int(limit_bytes), DRAIN_FLOOR_BYTES)


def expects_continue(scope) -> bool:
    """True if the client waits for "100 Continue" before sending its body (curl does for big files): such a
    body is never sent if the server answers first, so there is nothing to read and reading would ask for it."""
    for name, value in scope.get("headers") or []:
        if name == b"expect" and value.lower() == b"100-continue":
            return True
    return False


async def discard_body(receive, max_bytes: int, seconds: float = DRAIN_SECONDS) -> bool:
    """Read and throw away the rest of the request body: True once all of it is read, False if it is longer than
    `max_bytes`, takes more than `seconds` or the client hung up (then the connection should be closed)."""
    deadline = time.monotonic() + seconds
    read = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            message = await asyncio.wait_for(receive(), left)
        except asyncio.TimeoutError:
            return False
        if message["type"] != "http.request":  # http.disconnect
            return False
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
        if read > max_bytes:
            return False


def json_error_messages(status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> list[dict]:
    """The ASGI messages of ``{"error": message}`` with `status`, byte for byte what JSONResponse writes."""
    body = json.dumps({"error": message}, separators=(",", ":")).encode()
    return [
        {"type": "http.response.start", "status": status,
         "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                     *headers]},
        {"type": "http.response.body", "body": body},
    ]


class _BodyTooLarge(Exception):
    """Raised from `receive` once the streamed body passes the limit."""


class UploadLimit:
    """ASGI middleware: POST bodies over `max_bytes` (+ form overhead) get 413 ``{"error": ...}``."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.limit = self.max_bytes + FORM_OVERHEAD_BYTES
        self.drain_bytes = drain_bound(self.limit)

    def message(self) -> str:
        return (
            f"the upload is larger than the server's limit of {self.max_bytes / 2**20:.3g} MB; send a smaller image "
            "(a detector resizes to 1333 px anyway) or restart the server with a larger --max-upload-mb"
        )

    async def _refuse(self, scope, receive, send, already_read: int = 0) -> None:
        """Read what is left of the body (bounded, see the module's doc), then answer 413 and close."""
        if not expects_continue(scope):
            await discard_body(receive, self.drain_bytes - already_read)
        # Always close: whatever was not read (past the bound) must not be parsed as the next request.
        for message in json_error_messages(413, self.message(), [(b"connection", b"close")]):
            await send(message)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            # Refused before the app reads a byte. A body longer than the drain bound is not read at all: the
            # client would see the reset after the bound anyway, so reading it would only waste the time.
            if int(length) > self.drain_bytes:
                for message in json_error_messages(413, self.message(), [(b"connection", b"close")]):
                    await send(message)
                return
            return await self._refuse(scope, receive, send)

        state = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["exceeded"] = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message):
            if state["exceeded"]:
                # Whatever the app answers after its body read failed (FastAPI versions differ: a 400 or a
                # re-raised error), the client must see the 413 instead.
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._refuse(scope, receive, send, state["received"])
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Our _BodyTooLarge, or whatever a framework layer wrapped it in on the way out.
            if not state["exceeded"] or state["started"]:
                raise
            state["started"] = True
            await self._refuse(scope, receive, send, state["received"])
