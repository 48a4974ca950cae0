"""`AnnounceRequests`: tell the batcher a model request is on its way as soon as its headers arrive.

A batch that is not full waits (up to max_wait) only for *announced* requests (`DynamicBatcher.announce`).
Announcing from the route handler is late: by then Starlette has already read and parsed the whole multipart
body, so with a few clients posting at once the first request reaches the queue and leaves in a batch of one
while the others are still being parsed. Announced here, at the first byte of the ASGI call, every concurrent
upload counts, and a burst meets in one forward pass (`benchmarks/bench_serve.py`: requests per forward call).

Each announcement is consumed exactly once: the route takes it over (`claim`) and then submits or withdraws it
itself; a request that never reaches that point (413, 422, a client that hangs up mid-upload) is withdrawn here.
"""

from __future__ import annotations

ANNOUNCED = "groundscope_announced"  # key in the ASGI scope's "state" dict (Starlette's request.state)


class AnnounceRequests:
    """ASGI middleware: ``batcher.announce()`` for every POST under `prefix`, withdrawn unless the route claims it."""

    def __init__(self, app, batcher, prefix: str = "/v1/"):
        self.app = app
        self.batcher = batcher
        self.prefix = prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        state[ANNOUNCED] = True
        self.batcher.announce()
        try:
            await self.app(scope, receive, send)
        finally:
            if state.pop(ANNOUNCED, False):
                self.batcher.withdraw()


def claim(scope) -> bool:
    """Take over the middleware's announcement for this request; False if there was none (announce yourself)."""
    return bool(scope.setdefault("state", {}).pop(ANNOUNCED, False))
