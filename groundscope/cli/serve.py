"""``groundscope serve``: the detector behind an HTTP API and a web page.

    groundscope serve --model nano [--host 127.0.0.1] [--port 8000] [--max-upload-mb 20] [--max-batch 4]
                      [--describer dam-nano] [--segmenter sam-vit-base] [--precision fp32|bf16] [--streams N]
                      [--video-segmenter sam2.1-hiera-tiny] [--max-video-frames 600]
                      [--api-key KEY | $GROUNDSCOPE_API_KEY] [--cors-origin ORIGIN ...]

The model is loaded before the server binds its port, so a bad --model exits with 2 and one line like every
other verb, and /healthz answers 200 from the first moment it answers at all. A --segmenter (for requests with
masks=true) loads then too; without one the detector's default pairing loads on the first masks request. SIGTERM or Ctrl-C stop taking
connections, finish the requests in flight and the queue, then exit.

With a key every /v1/* request needs "Authorization: Bearer KEY"; binding anything but loopback without one
prints a warning, since then anyone who can reach the port can use the model.
"""

from __future__ import annotations

import ipaddress
from typing import List, Optional

import typer

from groundscope.cli.common import DeviceOpt, ModelOpt, PrecisionOpt, console, fail, load_model, pick_device


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to `app`."""

    @app.command("serve")
    def serve(
        model: str = ModelOpt,
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 0.0.0.0 serves other machines too."),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port (0: any free port)."),
        max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.01,
                                            help="Largest image upload (413 beyond)."),
        max_batch: int = typer.Option(4, "--max-batch", min=1, help="Most requests run in one forward pass."),
        queue_size: int = typer.Option(64, "--queue-size", min=1,
                                       help="Most requests waiting for the model (503 beyond)."),
        max_wait_ms: float = typer.Option(20.0, "--max-wait-ms", min=0.0,
                                          help="How long a batch waits for the next request already arriving "
                                          "(restarts when one joins)."),
        describer: Optional[str] = typer.Option(None, "--describer", help="A Describe Anything model (e.g. dam-nano) "
                                                "for POST /v1/describe; without it that route answers 501."),
        segmenter: Optional[str] = typer.Option(None, "--segmenter", help="Segmenter for requests with masks=true "
                                                "(default: the detector's pairing, loaded on the first such "
                                                "request: sam-nano for nano, sam-vit-base otherwise)."),
        video_segmenter: Optional[str] = typer.Option(None, "--video-segmenter", help="A SAM 2-family video model "
                                                      "(sam2.1-hiera-tiny, edgetam, a folder): a region sent with a "
                                                      "clip to /v1/describe is given on one frame and propagated "
                                                      "through it, as DAM's official video demo."),
        max_video_frames: int = typer.Option(600, "--max-video-frames", min=1, help="Most frames a clip sent to "
                                             "/v1/describe may hold (400 beyond)."),
        streams: int = typer.Option(1, "--streams", min=1, help="Forward passes that may run at once on a share of "
                                    "the CPU threads; a lone request still gets them all."),
        api_key: Optional[str] = typer.Option(None, "--api-key", envvar="GROUNDSCOPE_API_KEY", show_envvar=True,
                                              help="Require 'Authorization: Bearer KEY' on every /v1/* request "
                                              "(/healthz and the web page stay open; the page asks for the key)."),
        cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin", help="An origin (e.g. "
                                                        "https://tools.example.com) whose web pages may call the "
                                                        "API; repeatable. Default: none, no CORS headers."),
        device: str = DeviceOpt,
        precision: str = PrecisionOpt,
    ) -> None:
        """Serve detect / ground / refer over HTTP (JSON API, web page at /, OpenAPI docs at /docs)."""
        from importlib.util import find_spec

        # python-multipart is FastAPI's form parser; it imports as python_multipart (older releases: multipart).
        missing = [pkg for pkg, mods in [("fastapi", ["fastapi"]), ("uvicorn", ["uvicorn"]),
                                         ("python-multipart", ["python_multipart", "multipart"])]
                   if not any(find_spec(m) for m in mods)]
        if missing:
            raise fail(f"groundscope serve needs {', '.join(missing)}: pip install 'groundscope[serve]'")
        if api_key is not None and not api_key.strip():
            raise fail("the API key is empty (--api-key or $GROUNDSCOPE_API_KEY); give a key, or unset it to "
                       "serve without one")
        import uvicorn

        from groundscope.serve.app import create_app
        from groundscope.serve.threads import in_fresh_thread

        # Loaded off the main thread, so only the batcher's worker keeps an OpenMP pool (serve/threads.py).
        detector = in_fresh_thread(load_model, model, device, precision)
        describe_model = None
        if describer is not None:
            from groundscope.describe.api import load_describer
            from groundscope.models.loading import ModelLoadError

            try:
                describe_model = in_fresh_thread(load_describer, describer, device=pick_device(device))
            except ModelLoadError as e:
                raise fail(str(e))
        seg = None
        if segmenter is not None:  # a bad name exits 2 with the loader's line, before the port is bound
            from groundscope.cli.common import load_segmenter_for

            seg = in_fresh_thread(load_segmenter_for, segmenter, model, device)
        video_seg = None
        if video_segmenter is not None:
            if describe_model is None:
                raise fail("--video-segmenter propagates the regions /v1/describe describes; give --describer too")
            from groundscope.models.loading import ModelLoadError
            from groundscope.models.video_segmenter import load_video_segmenter

            try:
                video_seg = in_fresh_thread(load_video_segmenter, video_segmenter, device=pick_device(device))
            except ModelLoadError as e:
                raise fail(str(e))
        web = create_app(detector, max_upload_mb=max_upload_mb, max_batch=max_batch, queue_size=queue_size,
                         max_wait_ms=max_wait_ms, describer=describe_model, streams=streams, segmenter=seg,
                         video_segmenter=video_seg, max_video_frames=max_video_frames,
                         api_key=api_key, cors_origins=cors_origin or ())
        if api_key is None and not is_loopback(host):
            console.print(f"[yellow]warning:[/] serving {host} without an API key: anyone who can reach port "
                          f"{port} can use the model; pass --api-key KEY (or set GROUNDSCOPE_API_KEY)",
                          highlight=False, soft_wrap=True)  # one line, whatever the terminal's width
        auth = "API key required" if api_key is not None else "no API key"
        console.print(f"[green]serving[/] {detector.name} on http://{host}:{port}  (web page /, API docs /docs, "
                      f"{auth})", highlight=False, soft_wrap=True)
        # Graceful shutdown: uvicorn waits up to 30 s for requests in flight before the batcher drains and stops.
        uvicorn.run(web, host=host, port=port, log_level="info", timeout_graceful_shutdown=30)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, "localhost")."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
