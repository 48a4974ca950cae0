"""`UploadLimit`: refuse request bodies over the upload limit with 413 before they are parsed or stored.

Starlette parses a multipart body completely (spooling big files to disk) before the route runs, so the size
must be enforced while the body streams in: by its Content-Length when the client sends one, else by counting
the bytes as they arrive. A pure ASGI middleware does both without buffering anything itself.
"""

from __future__ import annotations

import json

# Room for the form fields and multipart boundaries around the image, so an image of exactly the limit passes.
FORM_OVERHEAD_BYTES = 64 * 1024


class _BodyTooLarge(Exception):
    """Raised from `receive` once the streamed body passes the limit."""


class UploadLimit:
    """ASGI middleware: POST bodies over `max_bytes` (+ form overhead) get 413 ``{"error": ...}``."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.limit = self.max_bytes + FORM_OVERHEAD_BYTES

    def message(self) -> str:
        return (
            f"the upload is larger than the server's limit of {self.max_bytes / 2**20:.3g} MB; send a smaller image "
            "(a detector resizes to 1333 px anyway) or restart the server with a larger --max-upload-mb"
        )

    async def _send_413(self, send) -> None:
        body = json.dumps({"error": self.message()}, separators=(",", ":")).encode()  # as JSONResponse writes
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            # Refused before reading a byte; a client that sent "Expect: 100-continue" (curl does for big
            # files) never uploads the body at all.
            return await self._send_413(send)

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
                    await self._send_413(send)
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
            await self._send_413(send)
