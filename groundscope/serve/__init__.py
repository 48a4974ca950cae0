"""`groundscope serve`: the detector behind an HTTP API with dynamic batching, and a web page.

    from groundscope.serve import create_app      # needs the serve extra: pip install 'groundscope[serve]'
    app = create_app(gs.load_detector("nano"), max_batch=4)

Modules: app (routes), batcher (queue + batching worker), tasks (requests -> detector calls), uploads (bytes ->
image), limits (413 middleware), background (uvicorn in a thread), cli (the typer verb), static/ (the web page).
Importing this package does not import FastAPI; `create_app` does, on first use.
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    # Lazy, so `groundscope --help` and the other verbs never pay for (or need) FastAPI.
    if name == "create_app":
        from groundscope.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'groundscope.serve' has no attribute {name!r}")
