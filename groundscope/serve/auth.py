"""`ApiKeyAuth`: every API route (``/v1/*``) needs ``Authorization: Bearer <key>`` when the server has a key.

`/healthz`, the web page and its static files, and the OpenAPI docs stay open: the page must load to ask for the
key, and health checks (load balancers, `docker healthcheck`) carry no credentials. The key is compared with
`hmac.compare_digest`, in time that does not depend on how much of it a guess got right.

A refused request's body is read and thrown away first (bounded, as `UploadLimit` does for a 413), so a client
that uploads before reading the answer sees the 401 rather than a reset connection.
"""

from __future__ import annotations

import hmac

from groundscope.serve.limits import discard_body, drain_bound, expects_continue, json_error_messages

ENV_VAR = "GROUNDSCOPE_API_KEY"
_HOW = f"the key the server was started with (groundscope serve --api-key KEY, or ${ENV_VAR})"


def check_authorization(header: bytes | None, key: bytes) -> str | None:
    """None if `header` (the raw Authorization value) carries `key`; else why not, naming the fix."""
    if header is None:
        return f"this server needs an API key: send the header 'Authorization: Bearer <key>' with {_HOW}"
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        return f"the Authorization header must be 'Bearer <key>' with {_HOW}"
    if not hmac.compare_digest(token.strip(), key):
        return f"the API key sent is not this server's; send {_HOW}"
    return None


class ApiKeyAuth:
    """ASGI middleware: 401 ``{"error": ...}`` for requests under `prefix` without the right bearer key."""

    def __init__(self, app, api_key: str, max_body_bytes: int, prefix: str = "/v1/"):
        if not api_key or not api_key.strip():
            raise ValueError("api_key is empty; give a key, or None for a server without one")
        self.app = app
        self.key = api_key.strip().encode()
        self.prefix = prefix
        self.drain_bytes = drain_bound(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope.get("headers") or [] if k == b"authorization"), None)
        problem = check_authorization(header, self.key)
        if problem is None:
            return await self.app(scope, receive, send)
        # A client waiting for "100 Continue" has sent no body and gets none asked for; it may still send one
        # after its own timeout (curl: 1 s), which is why only a fully read body keeps the connection open.
        read_all = False if expects_continue(scope) else await discard_body(receive, self.drain_bytes)
        extra = [(b"www-authenticate", b'Bearer realm="groundscope"')]
        if not read_all:  # bytes left on the connection must not be read as the next request
            extra.append((b"connection", b"close"))
        for message in json_error_messages(401, problem, extra):
            await send(message)
