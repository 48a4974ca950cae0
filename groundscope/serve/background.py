"""`serve_in_thread`: run an app under a real uvicorn server in a background thread (tests, benchmarks, notebooks).

Binding port 0 lets the OS pick a free port, so parallel runs never collide; the URL is read back from the
bound socket once uvicorn reports it has started.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                    start_timeout: float = 30.0) -> Iterator[str]:
    """Serve `app` until the block ends (graceful shutdown: open requests finish, the batcher drains).

    Yields:
        the base URL, e.g. "http://127.0.0.1:43817".
    """
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on"))
    # uvicorn installs signal handlers only in the main thread, so this thread leaves the caller's alone.
    thread = threading.Thread(target=server.run, name="groundscope-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"uvicorn exited during startup on {host}:{port} (port in use? see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {start_timeout:g} s on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
