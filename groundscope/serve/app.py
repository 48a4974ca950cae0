"""`create_app`: the FastAPI application behind `groundscope serve`.

Routes:
    GET  /            the web page (groundscope/serve/static/)
    GET  /healthz     {"status": "ok", "model", "segmenter", ...} while the model is loaded and the server takes
                      requests
    POST /v1/detect   multipart: image, classes="cat,remote control", box_threshold, max_detections, nms, masks
    POST /v1/ground   multipart: image, caption, phrase (repeatable), box_threshold, text_threshold, max_detections,
                      masks
    POST /v1/refer    multipart: image, expression, top_k, masks
                      (detect, ground and refer also take slices="640x640", overlap, full_image, merge: sliced
                      inference for small objects in large images, docs/sliced.md)
    POST /v1/describe multipart: image, box / mask / points (each repeatable) or expression, max_new_tokens,
                      temperature (with a describer: `create_app(..., describer=...)`, `serve --describer`);
                      or instead of the image a short clip, video, with frames, frame, track (serve/video.py)
    GET  /docs        the OpenAPI documentation FastAPI generates

With an API key (`create_app(..., api_key=)`, `serve --api-key` / $GROUNDSCOPE_API_KEY) every /v1/* route needs
``Authorization: Bearer <key>`` (401 otherwise, serve/auth.py); /healthz, the page and /docs stay open. No CORS
headers are sent unless `cors_origins` names the origins whose pages may call the API.

Each answer is exactly the JSON the CLI writes as <stem>.json for the same image (`groundscope.answers.result_record`);
a describe answer is what `groundscope describe --json` prints. ``masks=true`` is the CLI's --masks: every box is
segmented (the server's segmenter: `create_app(..., segmenter=)`, `serve --segmenter`, else the detector's default
pairing, loaded by the first such request) and each detection carries a COCO RLE "mask".
A request's life: the body streams in under the upload limit (413 beyond it); the image is decoded, resized and
normalised in a thread pool (400 naming the problem if it is not an image), overlapping the model; it joins the
bounded queue of the `DynamicBatcher` (503 + Retry-After when full), whose model streams run compatible requests
in one forward pass (`streams` > 1: several passes at once, sharing the CPU threads). The event loop only parses,
awaits and answers.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional, Sequence

import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from groundscope import __version__
from groundscope.answers import RegionTextError, describe_record, parse_box, parse_points, region_name, result_record
from groundscope.describe.api import RegionError, read_mask
from groundscope.images import ImageLoadError
from groundscope.prompts import PromptError, find_phrase_spans, normalize_caption
from groundscope.serve.announce import AnnounceRequests, claim
from groundscope.serve.auth import ApiKeyAuth
from groundscope.serve.batcher import DynamicBatcher, QueueFull, ShuttingDown
from groundscope.serve.limits import UploadLimit
from groundscope.serve.video import VideoUploadError, receive_video
from groundscope.serve.tasks import (
    DETECT_DEFAULTS,
    GROUND_DEFAULTS,
    REFER_DEFAULTS,
    Item,
    SegmenterSlot,
    SegmenterUnavailable,
    batch_key,
    make_runner,
    prepare_input,
)
from groundscope.serve.threads import in_fresh_thread
from groundscope.serve.uploads import decode_image
from groundscope.slicing.tiles import OPTION_HELP as SLICE_HELP
from groundscope.slicing.tiles import SliceError, spec_from_options

log = logging.getLogger("groundscope.serve")
STATIC_DIR = Path(__file__).resolve().parent / "static"
RETRY_AFTER_S = 1  # a full queue drains in about (queue_size / max_batch) forward passes: seconds, not minutes


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with `status` (and optional headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line that names each form field: "form field 'classes': Field required"."""
    parts = []
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = f"form field '{'.'.join(loc)}'" if loc else "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _slice_field(message: str) -> str:
    """Which slicing form field a `SliceError` message is about."""
    return next((f for f in ("overlap", "merge") if message.startswith(f)), "slices")


def create_app(
    detector_or_model_name,
    *,
    max_upload_mb: float = 20,
    max_batch: int = 4,
    queue_size: int = 64,
    max_wait_ms: float = 20,
    decode_workers: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    describer=None,
    streams: int = 1,
    segmenter=None,
    video_segmenter=None,
    max_video_frames: int = 600,
    api_key: Optional[str] = None,
    cors_origins: Sequence[str] = (),
) -> FastAPI:
    """Build the app around a loaded `GroundingDetector` (or a model name / folder, loaded now on `device`).

    Args:
        max_upload_mb: largest accepted image upload (413 beyond it).
        max_batch: most requests in one forward pass (also the detector's batch_size).
        queue_size: most requests waiting for the model (503 beyond it).
        max_wait_ms: how long a batch that is not full waits for the next request already on its way (announced
            when its headers arrive; a lone request never waits); the wait restarts each time one joins.
        decode_workers: threads decoding, resizing and normalising uploads (default: one per CPU, at most 4).
        device, precision: for a model given by name (`load_detector`'s arguments).
        describer: a `groundscope.describe.Describer`, or a describer name / folder (`load_describer`), for
            POST /v1/describe; without one that route answers 501. Its --expression form uses the detector.
        segmenter: a `Segmenter` or a segmenter name for requests with ``masks=true``; None: the detector's
            default pairing (`default_segmenter`), loaded on the first such request.
        video_segmenter: a SAM 2-family `VideoSegmenter` or its name (`load_video_segmenter`): a region sent with
            a clip to /v1/describe is given on form field ``frame`` and propagated through the clip, as the
            official demo_video.py does. None: the region stays where it is given on every sampled frame.
        max_video_frames: the most frames a clip sent to /v1/describe may hold (400 beyond it).
        streams: forward passes that may run at once, sharing the CPU threads (`DynamicBatcher`); a lone request
            still gets every thread. Default 1: with the nano model on 2 cores, 2 streams raised the 16-client rate
            by 3-8% and lowered the 4-client rate by 10-12% (benchmarks/results/serve.md).
        api_key: when given, every /v1/* request needs ``Authorization: Bearer <api_key>`` (401 otherwise);
            /healthz reports ``"auth": true`` so the web page knows to ask for it.
        cors_origins: origins (e.g. "https://tools.example.com") whose pages may call the API from a browser;
            none (the default): no CORS headers, so browsers keep other sites' pages from reading the answers.

    A detector passed in loaded runs as fast as it can in the batcher's thread only if the calling thread has not
    run torch's parallel kernels (see `groundscope.serve.threads`): load it with `in_fresh_thread(load_detector,
    ...)`, or pass the name.
    """
    if isinstance(detector_or_model_name, (str, os.PathLike)):
        from groundscope.models.loading import load_detector

        # Off the main thread, so only the batcher's worker keeps an OpenMP pool (serve/threads.py).
        detector = in_fresh_thread(load_detector, detector_or_model_name, device=device, precision=precision)
    else:
        detector = detector_or_model_name
    if isinstance(describer, (str, os.PathLike)):
        from groundscope.describe.api import load_describer

        describer = in_fresh_thread(load_describer, describer, device=device)
    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be > 0, got {max_upload_mb}")
    max_upload_bytes = int(max_upload_mb * 2**20)
    if api_key is not None and not api_key.strip():  # checked now: middleware is built on the first request
        raise ValueError("api_key is empty; give a key, or None for a server without one")
    threads = torch.get_num_threads()
    if isinstance(segmenter, (str, os.PathLike)):
        from groundscope.models.segmenter import load_segmenter

        # A named segmenter loads now (ModelLoadError names the problem): a bad name fails at start, not at the
        # first masks request. Off the main thread, as the detector (serve/threads.py).
        segmenter = in_fresh_thread(load_segmenter, segmenter, device=str(detector.device))
    segmenters = SegmenterSlot(segmenter, detector_name=detector.name, device=str(detector.device))
    if isinstance(video_segmenter, (str, os.PathLike)):
        from groundscope.models.video_segmenter import load_video_segmenter

        video_segmenter = in_fresh_thread(load_video_segmenter, video_segmenter, device=str(detector.device))
    if max_video_frames < 1:
        raise ValueError(f"max_video_frames must be >= 1, got {max_video_frames}")
    batcher = DynamicBatcher(make_runner(detector, max_batch, describer, segmenters, video_segmenter),
                             max_batch=max_batch,
                             max_wait_s=max_wait_ms / 1000, queue_size=queue_size, streams=streams,
                             threads=threads, set_threads=torch.set_num_threads if streams > 1 else None)
    decode_pool = ThreadPoolExecutor(max_workers=decode_workers or min(4, os.cpu_count() or 1),
                                     thread_name_prefix="groundscope-decode")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info("serving %s (max batch %d, %d stream(s) on %d threads, queue %d, upload limit %g MB)",
                 detector.name, max_batch, streams, threads, queue_size, max_upload_mb)
        yield
        # uvicorn has waited for open requests by now (graceful shutdown); finish whatever is still queued.
        await asyncio.to_thread(batcher.close, 60)
        decode_pool.shutdown(wait=True)

    app = FastAPI(
        title="groundscope",
        summary="Open-vocabulary detection, phrase grounding and referring expressions over HTTP.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.detector = detector
    app.state.describer = describer
    app.state.segmenters = segmenters
    app.state.batcher = batcher
    app.state.max_upload_bytes = max_upload_bytes
    app.add_middleware(AnnounceRequests, batcher=batcher)  # inner: a 413 refused by UploadLimit is never announced
    app.add_middleware(UploadLimit, max_bytes=max_upload_bytes)
    # Outside the upload limit: a request without the key learns nothing, not even the limit.
    if api_key is not None:
        app.add_middleware(ApiKeyAuth, api_key=api_key, max_body_bytes=max_upload_bytes)
    app.state.auth = api_key is not None
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Outermost: a browser's preflight (OPTIONS) carries no Authorization header and must be answered here.
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _validation_message(exc), "detail": jsonable_encoder(exc.errors())},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    def decode_and_prepare(data: bytes, name: str, task: str, sliced: bool = False):
        """In the pool: the decoded image (for the answer's width and height) and the model's input (the image
        itself for describe and for a sliced request, whose tiles are cut from it)."""
        image = decode_image(data, name)
        return image, (image if task == "describe" or sliced else prepare_input(detector, image))

    def unavailable(e: SegmenterUnavailable) -> ApiError:
        """503 for a masks request whose segmenter cannot load; box requests are unaffected."""
        return ApiError(503, f"form field 'masks': no segmenter: {e}; restart the server with --segmenter NAME "
                             "(e.g. sam-vit-base, or a folder saved with save_pretrained), or send masks=false")

    async def run_task(request: Request, task: str, upload: UploadFile, options: dict, prompt):
        """Read and decode the upload off the event loop, queue it, await its batch: (image, the model's result).
        `prompt` may be a callable, run in the decode pool after the image decoded, that returns the prompt.
        For describe_video the "image" is the checked clip on disk (a `VideoUpload`), removed when the batch is
        done."""
        name = upload.filename or "upload"
        video = task == "describe_video"
        data = await upload.read()
        if len(data) > max_upload_bytes:  # the middleware's allowance includes the form overhead
            raise ApiError(413, f"{'video' if video else 'image'} '{name}' is {len(data) / 2**20:.1f} MB; the "
                                f"server's limit is "
                                f"{max_upload_mb:g} MB (restart with a larger --max-upload-mb)")
        if batcher.pending >= batcher.queue_size:  # refuse before spending a decode on it
            raise ApiError(503, f"the server is busy ({batcher.pending} requests queued); retry shortly",
                           {"Retry-After": str(RETRY_AFTER_S)})
        loop = asyncio.get_running_loop()
        if not claim(request.scope):  # announced when its headers arrived (serve/announce.py); from here it is ours
            batcher.announce()
        image = None
        try:
            if video:
                image = model_input = await loop.run_in_executor(decode_pool, receive_video, data, name,
                                                                 max_video_frames)
            else:
                image, model_input = await loop.run_in_executor(decode_pool, decode_and_prepare, data, name, task,
                                                                 options.get("slicing") is not None)
            if callable(prompt):
                prompt = await loop.run_in_executor(decode_pool, prompt, image)
            own_masks = getattr(detector, "predicts_masks", False) and not segmenters.explicit
            if options.get("masks") and segmenters.name is None and not own_masks:
                # The segmenter is loaded (seconds, once) before the request joins the queue and outside the
                # batcher's workers, so box requests keep flowing meanwhile and a failed load is one 503.
                await asyncio.to_thread(segmenters.get)
        except BaseException as e:
            batcher.withdraw()
            if video and image is not None:
                image.remove()
            if isinstance(e, ImageLoadError):
                raise ApiError(400, f"form field 'image': {e}")
            if isinstance(e, VideoUploadError):
                raise ApiError(400, f"form field 'video': {e}")
            if isinstance(e, SegmenterUnavailable):
                raise unavailable(e)
            raise
        batcher.start()  # no-op under the lifespan; starts the worker for apps driven without it
        try:
            item = Item(model_input, prompt, image if options.get("masks") else None)
            result = await batcher.run(batch_key(task, **options), item, announced=True)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {e}; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})
        except ShuttingDown as e:
            raise ApiError(503, str(e), {"Retry-After": str(RETRY_AFTER_S)})
        except PromptError as e:
            raise ApiError(400, str(e))
        except SegmenterUnavailable as e:
            raise unavailable(e)
        except Exception as e:  # the model failed: answer 500 with the reason, keep serving
            log.exception("%s failed for %s", task, name)
            raise ApiError(500, f"{task} failed on '{name}': {type(e).__name__}: {e}")
        finally:
            if video:
                image.remove()
        return image, result

    async def answer(request: Request, task: str, upload: UploadFile, options: dict, prompt) -> JSONResponse:
        """detect / ground / refer: the CLI's per-image JSON."""
        image, dets = await run_task(request, task, upload, options, prompt)
        return JSONResponse(result_record(upload.filename or "upload", image.width, image.height, detector.name,
                                          task, dets))

    def slicing(slices: str | None, overlap: float, full_image: bool, merge: str) -> dict:
        """The form's slicing fields as the batch option ``slicing`` (absent without ``slices``); 400 naming the
        field for a bad value."""
        try:
            spec = spec_from_options(slices, overlap, full_image, merge)
        except SliceError as e:
            raise ApiError(400, f"form field {_slice_field(str(e))!r}: {e}".replace("--", ""))
        return {} if spec is None else {"slicing": spec}

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", summary="Liveness and the model served")
    async def healthz():
        body = {
            "status": "ok",
            "model": detector.name,
            "auth": app.state.auth,  # true: /v1/* needs "Authorization: Bearer <key>" (the page asks for it)
            "describer": describer.name if describer is not None else None,
            "segmenter": segmenters.name,  # null until one is loaded (the first masks request loads the default)
            "segmenter_error": segmenters.error,
            "video_segmenter": getattr(video_segmenter, "name", None),  # /v1/describe propagates a clip's region
            "device": str(detector.device),
            "max_batch": batcher.max_batch,
            "streams": batcher.streams,
            "queued": batcher.pending,
            "batches_run": batcher.batches_run,
            "batch_sizes": {str(k): v for k, v in sorted(batcher.batch_sizes.items())},
            "requests_done": batcher.jobs_done,
            "model_busy_s": round(batcher.busy_s, 3),
        }
        if batcher.closing:
            return JSONResponse({**body, "status": "shutting down"}, status_code=503)
        return body

    @app.post("/v1/detect", summary="Open-vocabulary detection: boxes for each class name")
    async def detect(
        request: Request,
        image: UploadFile = File(..., description="The image (JPEG, PNG, WebP, BMP, GIF, TIFF)."),
        classes: str = Form(..., description='Comma-separated class names, e.g. "cat,remote control".'),
        box_threshold: float = Form(DETECT_DEFAULTS["box_threshold"], ge=0, le=1, description="Minimum score."),
        max_detections: int = Form(DETECT_DEFAULTS["max_detections"], ge=1, description="Top-k (box, class) pairs."),
        nms: Optional[float] = Form(None, ge=0, le=1, description="Class-wise NMS IoU (off when absent)."),
        masks: bool = Form(False, description="Also segment every box (the answer's detections get a COCO RLE "
                                              "'mask')."),
        slices: Optional[str] = Form(None, description=SLICE_HELP["slices"].replace("--", "")),
        overlap: float = Form(0.2, description=SLICE_HELP["overlap"].replace("With --slices", "With slices")),
        full_image: bool = Form(True, description=SLICE_HELP["full_image"].replace("With --slices", "With slices")),
        merge: str = Form("nmm", description=SLICE_HELP["merge"].replace("With --slices", "With slices")),
    ):
        names = [c.strip() for c in classes.split(",") if c.strip()]  # the CLI's --classes rule
        if not names:
            raise ApiError(400, f"form field 'classes' holds no class names ({classes!r}); "
                                "send comma-separated names, e.g. classes=cat,remote control")
        options = {"box_threshold": box_threshold, "max_detections": max_detections, "nms_iou": nms, "masks": masks,
                   **slicing(slices, overlap, full_image, merge)}
        return await answer(request, "detect", image, options, tuple(names))

    @app.post("/v1/ground", summary="Phrase grounding: boxes for the phrases of a caption")
    async def ground(
        request: Request,
        image: UploadFile = File(..., description="The image."),
        caption: str = Form(..., description="The sentence whose phrases to ground."),
        phrase: Optional[list[str]] = Form(None, description="A phrase of the caption (repeat the field for "
                                                             "several); without it phrases are read off the tokens."),
        box_threshold: float = Form(GROUND_DEFAULTS["box_threshold"], ge=0, le=1),
        text_threshold: float = Form(GROUND_DEFAULTS["text_threshold"], ge=0, le=1,
                                     description="Token threshold when decoding phrases."),
        max_detections: int = Form(GROUND_DEFAULTS["max_detections"], ge=1),
        masks: bool = Form(False, description="Also segment every box."),
        slices: Optional[str] = Form(None, description=SLICE_HELP["slices"].replace("--", "")),
        overlap: float = Form(0.2, description=SLICE_HELP["overlap"].replace("With --slices", "With slices")),
        full_image: bool = Form(True, description=SLICE_HELP["full_image"].replace("With --slices", "With slices")),
        merge: str = Form("nmm", description=SLICE_HELP["merge"].replace("With --slices", "With slices")),
    ):
        phrases = [p for p in phrase or [] if p is not None] or None
        try:  # the CLI's check, before the request takes a place in the queue
            if phrases:
                find_phrase_spans(normalize_caption(caption), phrases)
            else:
                normalize_caption(caption)
        except PromptError as e:
            raise ApiError(400, str(e))
        options = {"box_threshold": box_threshold, "text_threshold": text_threshold, "max_detections": max_detections,
                   "masks": masks, **slicing(slices, overlap, full_image, merge)}
        return await answer(request, "ground", image, options, (caption, tuple(phrases) if phrases else None))

    @app.post("/v1/refer", summary="Referring expressions: the box an expression describes")
    async def refer(
        request: Request,
        image: UploadFile = File(..., description="The image."),
        expression: str = Form(..., description='e.g. "the cat on the left".'),
        top_k: int = Form(REFER_DEFAULTS["top_k"], ge=1, description="Boxes to return, best first."),
        masks: bool = Form(False, description="Also segment every box."),
        slices: Optional[str] = Form(None, description=SLICE_HELP["slices"].replace("--", "")),
        overlap: float = Form(0.2, description=SLICE_HELP["overlap"].replace("With --slices", "With slices")),
        full_image: bool = Form(True, description=SLICE_HELP["full_image"].replace("With --slices", "With slices")),
        merge: str = Form("nmm", description=SLICE_HELP["merge"].replace("With --slices", "With slices")),
    ):
        if not expression.strip(" ."):
            raise ApiError(400, "form field 'expression' is empty; send the words that single out one object")
        return await answer(request, "refer", image, {"top_k": top_k, "masks": masks,
                                                      **slicing(slices, overlap, full_image, merge)}, expression)

    @app.post("/v1/describe", summary="Describe Anything: a detailed description of each region")
    async def describe(
        request: Request,
        image: Optional[UploadFile] = File(None, description="The image (or send 'video')."),
        video: Optional[UploadFile] = File(None, description="Instead of the image: a short clip (mp4, webm, mov, "
                                                             "... decoded by PyAV; at most the server's "
                                                             "--max-video-frames frames)."),
        frames: Optional[int] = Form(None, ge=1, description="With a video: frames the describer reads (default: "
                                                             "the model's, 8)."),
        frame: int = Form(0, ge=0, description="With a video and a server started with --video-segmenter: the "
                                               "0-based frame the region is given on; it is propagated from there."),
        track: bool = Form(False, description="With a video, an expression and no video segmenter: find the box on "
                                              "every sampled frame instead of the first only."),
        box: Optional[list[str]] = Form(None, description='A region as "x1,y1,x2,y2" pixels (repeatable).'),
        mask: Optional[list[UploadFile]] = File(None, description="A region as a mask image of the image's size, "
                                                                  "non-zero inside (repeatable)."),
        points: Optional[list[str]] = Form(None, description='A region as clicks "x,y;x,y" (repeatable).'),
        expression: Optional[str] = Form(None, description="Instead of regions: words that single out one object; "
                                                           "the detector finds its box first."),
        max_new_tokens: Optional[int] = Form(None, ge=1, description="Generation budget (default: the model's)."),
        temperature: Optional[float] = Form(None, ge=0, description="Sampling temperature (0: greedy; default: "
                                                                     "the model's)."),
    ):
        if describer is None:
            raise ApiError(501, "this server has no region describer; restart it with --describer dam-nano "
                                "(or another Describe Anything model)")
        regions: list[dict] = []
        for text in box or []:
            try:
                regions.append({"box": parse_box(text)})
            except RegionTextError as e:
                raise ApiError(400, f"form field 'box': {e}")
        masks = [(m.filename or f"mask {i}", await m.read()) for i, m in enumerate(mask or [])]
        for text in points or []:
            try:
                regions.append({"points": parse_points(text)})
            except RegionTextError as e:
                raise ApiError(400, f"form field 'points': {e}")
        if expression is not None and not expression.strip(" ."):
            raise ApiError(400, "form field 'expression' is empty; send the words that single out one object")
        if expression is not None and (regions or masks):
            raise ApiError(400, "send either 'expression' or regions ('box' / 'mask' / 'points'), not both")
        if expression is None and not (regions or masks):
            raise ApiError(400, "no region given; send a 'box' (x1,y1,x2,y2), a 'mask' image, 'points' (x,y;x,y) "
                                "or an 'expression'")
        if (image is None) == (video is None):
            raise ApiError(400, "send the picture as form field 'image' or a short clip as 'video', one of the two")
        if video is None and (frames is not None or frame or track):
            raise ApiError(400, "form fields 'frames', 'frame' and 'track' are for a 'video'; an image has one frame")
        if video is not None and video_segmenter is None and frame:
            raise ApiError(400, "form field 'frame': this server propagates no region (it has no video segmenter), "
                                "so a region stays where it is given on every sampled frame; send frame=0, or "
                                "restart the server with --video-segmenter sam2.1-hiera-tiny")
        if video is not None and video_segmenter is not None and (track or len(regions) + len(masks) > 1):
            raise ApiError(400, "with the server's video segmenter one region (or one 'expression', without "
                                "'track') is given on 'frame' and propagated; send one")
        if track and expression is None:
            raise ApiError(400, "form field 'track' finds an 'expression' frame by frame; send the expression")

        def build_prompt(img):
            """In the decode pool: the regions, in the CLI's order (boxes, masks, points), each named as it names
            them; or the expression."""
            if expression is not None:
                return ("expression", expression)
            read = []
            for label, data in masks:
                try:
                    read.append({"mask": read_mask(io.BytesIO(data), f"mask {label}", label), "name": f"mask {label}"})
                except RegionError as e:
                    raise ApiError(400, f"form field 'mask': {e}")
            boxes = [{**r, "name": region_name(r)} for r in regions if "box" in r]
            clicks = [{**r, "name": region_name(r)} for r in regions if "points" in r]
            return ("regions", boxes + read + clicks)

        options = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        if video is not None:
            options.update(frames=frames, frame=frame, track=track)
            clip, results = await run_task(request, "describe_video", video, options, build_prompt)
            if not any(r.ok for r in results):
                raise ApiError(400, "; ".join(r.error for r in results))
            sampled = next(r.frames for r in results if r.ok) or []
            return JSONResponse(describe_record(video.filename or "upload", describer.name, clip.width, clip.height,
                                                results, frames=sampled, total_frames=clip.total))
        img, results = await run_task(request, "describe", image, options, build_prompt)
        if not any(r.ok for r in results):  # nothing described: the request itself is at fault
            raise ApiError(400, "; ".join(r.error for r in results))
        return JSONResponse(describe_record(image.filename or "upload", describer.name, img.width, img.height,
                                            results))

    return app
