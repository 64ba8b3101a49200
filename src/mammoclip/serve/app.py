"""The FastAPI application: versioned endpoints, auth, limits, access log, metrics and the viewer page.

``create_app(ServeConfig(checkpoint=...))`` loads the models once (or takes a ready
:class:`~mammoclip.serve.engine.Engine`) and returns the app; :func:`mammoclip.serve.run` serves it
with uvicorn. Every error is JSON ``{"error": {"code", "message"}}`` with the status, and the codes
of a bad image are those of :mod:`mammoclip.imaging.failures` (``TOO_LARGE`` -> 413).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from mammoclip.errors import ConfigError, ImageError
from mammoclip.imaging import failures as fc
from mammoclip.imaging.dicom import DecodeLimits
from mammoclip.serve.batcher import MicroBatcher, run_on
from mammoclip.serve.config import ServeConfig
from mammoclip.serve.engine import CUSTOM_TASK, Engine, png_base64, to_uint8
from mammoclip.serve.inputs import Prepared, RequestError, Upload, prepare, receive_upload
from mammoclip.serve.metrics import Metrics

#: The JSON-lines access log (one object per request); never a query string, a file name or a header value.
ACCESS_LOG = logging.getLogger("mammoclip.serve.access")
#: HTTP status of each image failure code; any other code of a bad image is 422.
STATUS_OF_CODE: dict[str, int] = {fc.TOO_LARGE: 413, fc.DECODE_PANIC: 422, fc.PROCESS_ERROR: 422}
#: Paths that need no token: liveness and the page (they hold no data); and path prefixes: the page's assets.
OPEN_PATHS: frozenset[str] = frozenset({"/healthz", "/"})
OPEN_PREFIXES: tuple[str, ...] = ("/static/",)
#: Request body the OpenAPI schema documents for the image endpoints.
IMAGE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/dicom": {"schema": {"type": "string", "format": "binary"}},
    "image/png": {"schema": {"type": "string", "format": "binary"}},
    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}, "text": {"type": "array", "items": {"type": "string"}}}}},
}}}
TEXT_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {
    **IMAGE_BODY["requestBody"]["content"],
    "application/json": {"schema": {"type": "object", "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "maxItems": 64}}, "required": ["texts"]}}}}}
#: Most texts one /v1/embed request may embed.
MAX_TEXTS: int = 64

Flag = Annotated[bool, Query()]


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "status": status}}, status_code=status,
                        headers=headers)


def _comma(values: list[str] | None) -> list[str]:
    """Repeated and comma-separated query values, flattened, blanks dropped."""
    return [v.strip() for raw in values or [] for v in raw.split(",") if v.strip()]


class Slots:
    """At most ``limit`` model requests in flight; one more is refused at once (503), never queued unboundedly."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def try_acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1


class Server:
    """State shared by the endpoints: config, engine, model thread, batcher, slots, metrics."""

    def __init__(self, cfg: ServeConfig, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mammoclip-model")
        self.slots = Slots(cfg.max_concurrency)
        self.limits = DecodeLimits(max_pixels=cfg.max_pixels)
        self.batcher: MicroBatcher | None = None
        self.metrics = Metrics({
            "mammoclip_queue_depth": ("Images waiting for a forward pass.",
                                      lambda: self.batcher.depth if self.batcher is not None else 0),
            "mammoclip_in_flight": ("Model requests being served (running or queued).", lambda: self.slots.used),
        })

    async def start(self) -> None:
        self.batcher = MicroBatcher(self.engine.embed_images_sync, self.executor, max_size=self.cfg.batch_max_size,
                                    max_wait_ms=self.cfg.batch_max_wait_ms, on_batch=self.metrics.observe_batch)
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        self.executor.shutdown(wait=True)

    async def embed(self, prepared: Prepared) -> Any:
        assert self.batcher is not None
        return await self.batcher.submit(self.engine.tensor(prepared.pixels))

    async def guarded(self, request: Request, work: Callable[[Upload], Awaitable[dict[str, Any]]],
                      *, body_optional: bool = False) -> JSONResponse:
        """Slot, upload to a private folder, timeout, cleanup: the frame of every model endpoint."""
        if not self.slots.try_acquire():
            raise RequestError(503, "SATURATED", f"{self.cfg.max_concurrency} requests already in flight; "
                               "retry shortly", headers={"Retry-After": str(self.cfg.retry_after_s)})
        try:
            upload = await receive_upload(request.stream(), request.headers.get("content-type", ""),
                                          request.headers.get("content-length"), self.cfg.max_upload_bytes,
                                          allow_fields_only=body_optional)
            request.state.bytes_in = upload.nbytes
            try:
                result = await asyncio.wait_for(work(upload), self.cfg.timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(504, "TIMEOUT", f"the request took over {self.cfg.timeout_s:g} s") from None
            finally:
                upload.cleanup()
            if self.cfg.log_phi and upload.kind == "dicom":
                request.state.phi = result.get("dicom")
            return JSONResponse(result)
        finally:
            self.slots.release()

    async def prepared(self, upload: Upload, processed: bool, *, detector: bool = False) -> Prepared:
        prep = self.engine.det_prep if detector and self.engine.det_prep is not None else self.engine.prep
        return await asyncio.to_thread(prepare, upload, prep, self.limits, processed=processed)

    def image_block(self, upload: Upload, p: Prepared, *, return_image: bool) -> dict[str, Any]:
        h, w = (int(v) for v in p.pixels.shape[:2])
        block: dict[str, Any] = {"kind": upload.kind, "original_size": list(p.original_size), "processed_size": [h, w],
                                 "transform": p.record.to_dict() if p.record is not None else None}
        if return_image:
            block["processed_png"] = png_base64(to_uint8(p.pixels))
        return block

    def phi_block(self, upload: Upload) -> dict[str, Any] | None:
        """Patient identifiers of a DICOM upload: only with ``log_phi`` (the operator's explicit choice)."""
        if not self.cfg.log_phi or upload.kind != "dicom" or upload.path is None:
            return None
        from mammoclip.imaging.dicom import read_dicom_header

        meta = read_dicom_header(upload.path)
        return {"patient_id": meta.patient_id, "study_uid": meta.study_id, "sop_uid": meta.image_id}


def _route_of(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def create_app(cfg: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The application for ``cfg``; loads the models unless ``engine`` (built for the same config) is given."""
    engine = engine or Engine(cfg)
    server = Server(cfg, engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="mammoclip", version="1", lifespan=lifespan,
                  description="Mammo-CLIP over HTTP: zero-shot scores, embeddings, FActOR heatmaps and boxes "
                              "for one mammogram (DICOM, PNG or JPEG). See docs/serve.md.")
    app.state.server = server

    @app.middleware("http")
    async def frame(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        request.state.bytes_in, request.state.phi, request.state.code = 0, None, None
        path = request.url.path
        if cfg.token and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {cfg.token}".encode()):
                response: Response = _error(401, "UNAUTHORIZED", "missing or wrong bearer token",
                                            {"WWW-Authenticate": "Bearer"})
                _finish(request, response, start, "unauthorized")
                return response
        try:
            response = await call_next(request)
        except Exception:  # noqa: BLE001 - a bug must not leak a traceback (or an image's header) to the client
            logging.getLogger("mammoclip.serve").exception("unhandled error on %s", _route_of(request))
            response = _error(500, "INTERNAL", "internal error; see the server log")
        _finish(request, response, start, _route_of(request))
        return response

    def _finish(request: Request, response: Response, start: float, route: str) -> None:
        seconds = time.perf_counter() - start
        server.metrics.observe_request(route, request.method, response.status_code, seconds)
        record: dict[str, Any] = {
            "ts": round(time.time(), 3), "id": uuid.uuid4().hex[:12], "method": request.method, "route": route,
            "status": response.status_code, "ms": round(seconds * 1000, 2),
            "bytes_in": int(getattr(request.state, "bytes_in", 0) or 0),
            "code": getattr(request.state, "code", None),
        }
        if cfg.log_phi and getattr(request.state, "phi", None):
            record["phi"] = request.state.phi
        ACCESS_LOG.info(json.dumps(record, separators=(",", ":")))

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, err: RequestError) -> JSONResponse:
        request.state.code = err.code
        return _error(err.status, err.code, err.message, err.headers)

    @app.exception_handler(ImageError)
    async def on_image_error(request: Request, err: ImageError) -> JSONResponse:
        request.state.code = err.code
        return _error(STATUS_OF_CODE.get(err.code, 422), err.code, str(err))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, err: RequestValidationError) -> JSONResponse:
        request.state.code = "BAD_PARAMETER"
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in err.errors())
        return _error(422, "BAD_PARAMETER", where)

    def need(feature: str) -> None:
        loaded = {"explain": engine.mapper is not None, "detect": engine.detector is not None}[feature]
        if not loaded:
            flag = {"explain": "--factor", "detect": "--detector"}[feature]
            raise RequestError(501, "NOT_LOADED", f"/v1/{feature} is not available: the server was started "
                               f"without {flag}")

    # --- endpoints ---------------------------------------------------------------------------------
    @app.get("/healthz", summary="Liveness (no token needed)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "auth": bool(cfg.token)}

    @app.get("/v1/info", summary="The model, its input size and what is loaded")
    async def info() -> dict[str, Any]:
        return engine.info(cfg)

    @app.get("/metrics", summary="Prometheus text exposition", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/zeroshot", summary="Zero-shot class probabilities of one mammogram", openapi_extra=IMAGE_BODY)
    async def zeroshot(
        request: Request,
        task: Annotated[list[str] | None, Query(description="task(s), repeated or comma-separated; default: all")] = None,
        prompts: Annotated[str, Query(description="prompt style: paper or ensemble")] = "ensemble",
        labels: Annotated[list[str] | None, Query(description="custom labels (>= 2): one prompt each, "
                                                            "scored as the task 'custom'")] = None,
        use_logit_scale: Flag = False,
        processed: Annotated[bool, Query(description="the PNG is already the model's input")] = False,
        return_image: Annotated[bool, Query(description="include the processed image as base64 PNG")] = False,
    ) -> JSONResponse:
        from mammoclip.evaluate.tasks import list_tasks

        custom = tuple(_comma(labels))
        names = _comma(task) or ([] if custom else list_tasks())
        if custom:
            if len(custom) < 2 or len(set(custom)) != len(custom) or len(custom) > 32:
                raise RequestError(422, "BAD_LABELS", "labels: give 2 to 32 distinct labels")
            names.append(CUSTOM_TASK)
        if len(names) > 16:
            raise RequestError(422, "BAD_PARAMETER", "at most 16 tasks per request")
        tables = []
        for name in names:  # checked before the upload is read: a typo costs no decode
            try:
                tables.append(engine.prompt_table(name, prompts, custom))
            except ConfigError as err:
                code = "UNKNOWN_PROMPT_STYLE" if "prompt style" in str(err) else "UNKNOWN_TASK"
                raise RequestError(422, code, str(err)) from None

        async def work(upload: Upload) -> dict[str, Any]:
            _need_image(upload)
            p = await server.prepared(upload, processed)
            emb = await server.embed(p)
            out = []
            for canonical, table in tables:
                key = (canonical, prompts if canonical != CUSTOM_TASK else "", custom if canonical == CUSTOM_TASK else ())
                weights = await run_on(server.executor, engine.class_weights_sync, key, table)
                probs = engine.zero_shot(emb, weights, use_logit_scale)
                classes = [{"name": c, "probability": pr, "prompts": ps} for (c, ps), pr in zip(table.items(), probs)]
                out.append({"task": canonical, "classes": classes, "prediction": list(table)[int(np.argmax(probs))]})
            return {"model": engine.name, "prompt_style": prompts, "use_logit_scale": use_logit_scale, "tasks": out,
                    "image": server.image_block(upload, p, return_image=return_image),
                    **_phi(server, upload)}

        return await server.guarded(request, work)

    @app.post("/v1/embed", summary="Image embedding of one mammogram and/or text embeddings", openapi_extra=TEXT_BODY)
    async def embed(
        request: Request,
        processed: Annotated[bool, Query(description="the PNG is already the model's input")] = False,
        return_image: Annotated[bool, Query(description="include the processed image as base64 PNG")] = False,
    ) -> JSONResponse:
        if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
            return await _embed_json(request)

        async def work(upload: Upload) -> dict[str, Any]:
            result: dict[str, Any] = {"model": engine.name, "embed_dim": int(engine.model.embed_dim)}
            texts = upload.fields.get("text", [])
            if upload.path is None and not texts:
                raise RequestError(422, "NO_INPUT", "send an image (raw body or a 'file' part) and/or 'text' fields")
            if upload.path is not None:
                p = await server.prepared(upload, processed)
                emb = await server.embed(p)
                result["image"] = {**server.image_block(upload, p, return_image=return_image),
                                   "embedding": [float(v) for v in emb]}
            if texts:
                result["texts"] = await _texts(texts)
            return {**result, **_phi(server, upload)}

        return await server.guarded(request, work, body_optional=True)

    async def _texts(texts: list[str]) -> list[dict[str, Any]]:
        if not texts or len(texts) > MAX_TEXTS or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise RequestError(422, "BAD_TEXT", f"texts: 1 to {MAX_TEXTS} non-empty strings")
        emb = await run_on(server.executor, engine.embed_texts_sync, list(texts))
        return [{"index": i, "embedding": [float(v) for v in row]} for i, row in enumerate(emb)]

    async def _embed_json(request: Request) -> JSONResponse:
        if not server.slots.try_acquire():
            raise RequestError(503, "SATURATED", "too many requests in flight; retry shortly",
                               headers={"Retry-After": str(cfg.retry_after_s)})
        try:
            raw = await _bounded_body(request, min(cfg.max_upload_bytes, 1 << 20))
            try:
                payload = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise RequestError(422, "BAD_JSON", "the body is not valid JSON") from None
            texts = payload.get("texts") if isinstance(payload, dict) else None
            if not isinstance(texts, list):
                raise RequestError(422, "BAD_TEXT", 'expected {"texts": ["...", ...]}')
            try:
                result = await asyncio.wait_for(_texts(texts), cfg.timeout_s)
            except asyncio.TimeoutError:
                raise RequestError(504, "TIMEOUT", f"the request took over {cfg.timeout_s:g} s") from None
            return JSONResponse({"model": engine.name, "embed_dim": int(engine.model.embed_dim), "texts": result})
        finally:
            server.slots.release()

    async def _bounded_body(request: Request, limit: int) -> bytes:
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise RequestError(413, "UPLOAD_TOO_LARGE", f"body over {limit} bytes")
            chunks.append(chunk)
        request.state.bytes_in = n
        return b"".join(chunks)

    @app.post("/v1/explain", summary="FActOR heatmaps and regions per attribute (needs --factor)",
              openapi_extra=IMAGE_BODY)
    async def explain(
        request: Request,
        attribute: Annotated[list[str] | None, Query(description="attribute(s); default: every mapper head")] = None,
        original: Annotated[bool, Query(description="also the heatmap on the original image grid")] = False,
        processed: Annotated[bool, Query(description="the PNG is already the model's input")] = False,
        return_image: Annotated[bool, Query(description="include the processed image as base64 PNG")] = False,
    ) -> JSONResponse:
        need("explain")
        names = _comma(attribute) or list(engine.mapper.names)
        unknown = [a for a in names if a not in engine.mapper.names]
        if unknown or len(set(names)) != len(names):
            raise RequestError(422, "UNKNOWN_ATTRIBUTE", f"unknown or repeated attribute(s) {unknown or names}; "
                               f"the mapper has {list(engine.mapper.names)}")

        async def work(upload: Upload) -> dict[str, Any]:
            _need_image(upload)
            p = await server.prepared(upload, processed)
            items = await run_on(server.executor, engine.explain_sync, engine.tensor(p.pixels), names, p.record,
                                 original)
            return {"model": engine.name, "method": "factor", "attributes": items,
                    "image": server.image_block(upload, p, return_image=return_image), **_phi(server, upload)}

        return await server.guarded(request, work)

    @app.post("/v1/detect", summary="Lesion boxes (needs --detector)", openapi_extra=IMAGE_BODY)
    async def detect(
        request: Request,
        processed: Annotated[bool, Query(description="the PNG is already the detector's input")] = False,
        return_image: Annotated[bool, Query(description="include the processed image as base64 PNG")] = False,
    ) -> JSONResponse:
        need("detect")

        async def work(upload: Upload) -> dict[str, Any]:
            _need_image(upload)
            p = await server.prepared(upload, processed, detector=True)
            boxes = await run_on(server.executor, engine.detect_sync, p.pixels, p.record)
            return {"model": engine.name, "boxes": boxes,
                    "image": server.image_block(upload, p, return_image=return_image), **_phi(server, upload)}

        return await server.guarded(request, work)

    # --- the viewer ----------------------------------------------------------------------------------
    static = resources.files("mammoclip.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(static.joinpath("index.html").read_text(encoding="utf-8"),
                            headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                     "style-src 'self'; script-src 'self'; connect-src 'self'"})

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _need_image(upload: Upload) -> None:
    if upload.path is None:
        raise RequestError(422, "NO_INPUT", "send an image: a raw body or a multipart 'file' part")


def _phi(server: Server, upload: Upload) -> dict[str, Any]:
    block = server.phi_block(upload)
    return {"dicom": block} if block is not None else {}
