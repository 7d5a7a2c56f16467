"""The FastAPI app: the JSON API for programs and the web page for people, around one predictor.

Routes::

    GET  /               the web page (static files under /static, examples under /examples)
    GET  /healthz        model name, device, ready, queue
    GET  /v1/info        what the model knows (the page shows it) and the request limits
    GET  /v1/examples    the bundled example images with expressions and questions
    POST /v1/segment     an image + texts -> one result per text (COCO RLE at the image's size)
    POST /v1/chat        an image + a message (+ history) -> the answer and one result per [SEG]
    GET  /openapi.json   the API's OpenAPI schema; GET /api: a readable page of it (offline)

Requests take JSON (``{"image": base64 or a data URL, ...}``) or a multipart form (an ``image``
file, ``text`` fields, ``message`` and ``history`` as JSON text). Every error is JSON
``{"error": {"status": N, "message": "..."}}``: 413 too large, 422 unusable input, 503 the queue is
full; bad input never prints a traceback.
"""
import contextlib
import hashlib
import html
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from self1e.inference.predictor import Self1ePredictor
from self1e.serve.batching import Batcher, QueueFull
from self1e.serve.codec import (
    Limits,
    RequestError,
    Upload,
    b64_bytes,
    check_request_texts,
    pictures,
    read_upload,
    release_memory,
    result_json,
    to_size,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
EXAMPLES = Path(__file__).resolve().parent.parent / "assets" / "examples"
MAX_HISTORY_TURNS = 32
MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class ServeSettings:
    """How the app batches: ``max_batch`` requests per pass (1 = no batching), waiting at most
    ``batch_wait_ms`` for more; ``queue_size`` pending requests at most (then 503)."""

    max_batch: int = 8
    batch_wait_ms: float = 5.0
    queue_size: int = 64
    limits: Limits = Limits()


def model_note(predictor: Self1ePredictor, name: str) -> dict[str, Any]:
    """What the loaded model knows, for the page. The shipped default model knows RefShapes only."""
    if name != "default":
        return {"name": name, "domain": None,
                "note": "A SELF1E checkpoint: it segments what its training data taught it."}
    from self1e.data.refshapes_text import COLOURS, SHAPES, SIZES

    return {"name": name, "domain": "RefShapes",
            "shapes": list(SHAPES), "colours": list(COLOURS), "sizes": list(SIZES),
            "note": ("The shipped default model is tiny (under 1 M parameters) and knows only RefShapes: flat "
                     "scenes of circles, squares, triangles, diamonds, stars and crosses in eight colours, "
                     "described by colour, size, position (left, right, top, bottom) and relations (left of, "
                     "above, ...). Real photos and noise are outside its domain: it still draws a mask, and its "
                     "score is its own confidence, not a probability that the object is there.")}


def build_app(predictor: Self1ePredictor, name: str = "model", settings: ServeSettings = ServeSettings()):
    """The app around ``predictor`` (which it owns from now on: all model calls run on its thread)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    limits = settings.limits
    state: dict[str, Any] = {"image_key": None}

    def run_segment(jobs: list[tuple[Upload, list[str], bool]]) -> list[dict]:
        grouped = predictor.predict_images([u.image for u, _, _ in jobs], [texts for _, texts, _ in jobs])
        out = [segment_response(upload, results, render) for (upload, _, render), results in zip(jobs, grouped)]
        if any(u.size[0] * u.size[1] > limits.model_pixels for u, _, _ in jobs):
            release_memory()
        return out

    batcher = Batcher(run_segment, settings.max_batch, settings.batch_wait_ms, settings.queue_size)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="self1e", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Segment images and chat about them with a SELF1E model (one [SEG] token, no decoder).")
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)

    @app.exception_handler(RequestError)
    async def on_request_error(_, e: RequestError):
        return error(e.status, str(e))

    @app.exception_handler(QueueFull)
    async def on_queue_full(_, e: QueueFull):
        return error(503, str(e))

    @app.exception_handler(RequestValidationError)
    async def on_validation(_, e: RequestValidationError):
        return error(422, "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))

    @app.exception_handler(HTTPException)
    async def on_http(_, e: HTTPException):
        return error(e.status_code, str(e.detail))

    @app.exception_handler(ValueError)
    async def on_value_error(_, e: ValueError):  # the library's own input checks (texts, history, ...)
        return error(422, str(e))

    @app.exception_handler(Exception)
    async def on_crash(_, e: Exception):
        log.exception("internal error")
        return error(500, f"internal error ({type(e).__name__}); the server log has the details")

    async def read_request(request: Request) -> dict[str, Any]:
        """JSON body or multipart form -> {"image": Upload, "fields": {...}}."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes * 4 // 3 + 65536:
            raise RequestError(413, f"the request is {int(declared):,} bytes; the image limit is "
                                    f"{limits.max_upload_bytes:,} bytes")
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_part_size=limits.max_upload_bytes + 1)
            file = form.get("image")
            if file is None or isinstance(file, str):
                raise RequestError(422, "the form has no 'image' file field")
            data = await file.read()
            fields = {"texts": form.getlist("text") or form.getlist("texts"), "message": form.get("message"),
                      "history": json.loads(form["history"]) if form.get("history") else None,
                      "render": str(form.get("render", "")).lower() in ("1", "true", "yes"),
                      "max_new_tokens": form.get("max_new_tokens")}
        else:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(422, "the body is not JSON (send JSON or a multipart form)") from None
            if not isinstance(body, dict):
                raise RequestError(422, "the JSON body must be an object")
            data = b64_bytes(body.get("image"), "image")
            fields = body
        return {"image": read_upload(data, limits), "key": hashlib.sha1(data).hexdigest(), "fields": fields}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"model": name, "device": str(predictor.device), "ready": True, "pending": batcher.pending,
                "max_batch": settings.max_batch, "queue_size": settings.queue_size}

    @app.get("/v1/info")
    async def info() -> dict:
        return {"model": model_note(predictor, name), "limits": asdict(limits),
                "max_history_turns": MAX_HISTORY_TURNS, "max_new_tokens": MAX_NEW_TOKENS}

    @app.get("/v1/examples")
    async def examples() -> list:
        path = EXAMPLES / "examples.json"
        return json.loads(path.read_text()) if path.is_file() else []

    @app.post("/v1/segment", openapi_extra=_body_doc(["texts"]))
    async def segment(request: Request) -> dict:
        """One mask per text, all at the image's original size."""
        req = await read_request(request)
        texts = check_request_texts(req["fields"].get("texts"), limits)
        return await batcher.submit((req["image"], texts, bool(req["fields"].get("render"))))

    @app.post("/v1/chat", openapi_extra=_body_doc(["message", "history", "max_new_tokens"]))
    async def chat(request: Request) -> dict:
        """The model's answer; one result per [SEG] it writes."""
        req = await read_request(request)
        fields = req["fields"]
        message = fields.get("message")
        if not isinstance(message, str) or not message.strip():
            raise RequestError(422, "'message' must be a non-empty string")
        check_request_texts([message], limits, "message")
        history = fields.get("history") or []
        if not isinstance(history, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                                    for t in history):
            raise RequestError(422, "'history' must be a list of {\"role\", \"content\"} objects, as a previous "
                                    "answer's 'history' returns it")
        if len(history) > 2 * MAX_HISTORY_TURNS:
            raise RequestError(422, f"'history' has {len(history)} turns; the limit is {2 * MAX_HISTORY_TURNS}")
        tokens = fields.get("max_new_tokens") or 64
        try:
            tokens = int(tokens)
        except (TypeError, ValueError):
            raise RequestError(422, f"'max_new_tokens' must be a whole number, got {tokens!r}") from None
        if not 1 <= tokens <= MAX_NEW_TOKENS:
            raise RequestError(422, f"'max_new_tokens' must be between 1 and {MAX_NEW_TOKENS}, got {tokens}")
        upload, key, render = req["image"], req["key"], bool(fields.get("render"))

        def run() -> dict:
            if state["image_key"] != key:  # the same image turn after turn is encoded once
                predictor.set_image(upload.image)
                state["image_key"] = key
            response = predictor.chat(message, history=history, max_new_tokens=tokens)
            out = segment_response(upload, response.segments, render)
            return {"answer": response.text, "history": response.history, **out}

        return await batcher.call(run)

    @app.get("/api", response_class=HTMLResponse)
    async def api_page() -> str:
        return _api_page(app.openapi())

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if EXAMPLES.is_dir():
        app.mount("/examples", StaticFiles(directory=EXAMPLES), name="examples")
    return app


def segment_response(upload: Upload, results, render: bool) -> dict:
    """The JSON of a segmentation (or a chat's masks): results at the upload's own size, and with
    ``render`` the page's pictures (drawn at the size the model saw, to keep them light)."""
    masks = [to_size(r.mask, upload.size) for r in results]
    out: dict[str, Any] = {"width": upload.size[0], "height": upload.size[1],
                           "results": [result_json(r.text, m, r.score) for r, m in zip(results, masks)]}
    if upload.downscaled:
        out["model_size"] = list(upload.image.size)
    if render:
        colours, views = pictures(upload.image, [np.asarray(r.mask) for r in results])
        for item, colour, png in zip(out["results"], colours, views.pop("mask_pngs")):
            item["colour"], item["mask_png"] = colour, png
        out.update(views)
    return out


def _body_doc(fields: list[str]) -> dict:
    """The request body of a route for the OpenAPI schema (the route parses it by hand: JSON or form)."""
    props = {"image": {"type": "string", "description": "base64 image or data: URL"},
             "render": {"type": "boolean", "description": "also return the page's pictures"}}
    for f in fields:
        props[f] = {"texts": {"type": "array", "items": {"type": "string"}},
                    "history": {"type": "array", "items": {"type": "object"}},
                    "max_new_tokens": {"type": "integer"}}.get(f, {"type": "string"})
    form = {**props, "image": {"type": "string", "format": "binary"}}
    if "texts" in fields:
        form["text"] = form.pop("texts")
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "required": ["image", *fields[:1]], "properties": props}},
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": form}}}}}


def _api_page(schema: dict) -> str:
    """A plain HTML page of the OpenAPI schema (no scripts from the internet)."""
    rows = []
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {})
            fields = ", ".join(sorted(next(iter(body.values()), {}).get("schema", {}).get("properties", {})))
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op.get('summary', ''))}</td><td>{html.escape(fields)}</td></tr>")
    return ("<!doctype html><meta charset=utf-8><title>self1e API</title><style>body{font-family:sans-serif;"
            "margin:2em}td{padding:.3em 1em;border-bottom:1px solid #ddd}</style><h1>self1e API</h1>"
            "<p>The schema: <a href=/openapi.json>/openapi.json</a>. Errors are JSON "
            "<code>{\"error\": {\"status\", \"message\"}}</code>.</p><table><tr><th>method</th><th>path</th>"
            "<th>what</th><th>body fields</th></tr>" + "".join(rows) + "</table>")
