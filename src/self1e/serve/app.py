"""The FastAPI app: the JSON API for programs and the web page for people, around one model.

Routes::

    GET  /               the web page (static files under /static, examples under /examples)
    GET  /healthz        model name, device, ready, queue
    GET  /v1/info        what the model knows (the page shows it) and the request limits
    GET  /v1/examples    the bundled example images with expressions and questions
    POST /v1/segment     an image + texts -> one result per text (COCO RLE at the image's size)
    POST /v1/chat        an image + a message (+ history) -> the answer and one result per [SEG]
    POST /v1/chat/completions  the same in OpenAI's chat-completions format (serve/openai.py)
    GET  /v1/models      the one model, in OpenAI's format
    GET  /openapi.json   the API's OpenAPI schema; GET /api: a readable page of it (offline)

Requests take JSON (``{"image": base64 or a data URL, ...}``) or a multipart form (an ``image``
file, ``text`` fields, ``message`` and ``history`` as JSON text). Every error is JSON
``{"error": {"status": N, "message": "..."}}``: 413 too large, 422 unusable input, 503 the queue is
full; bad input never prints a traceback.

The routes are built once (:func:`create_app`) around a *model side* (:class:`ModelSide`): where
segmentation jobs are batched and run, and chat turns run. The single-process server plugs in
:class:`LocalModel` (the predictor on one thread, batched by our :class:`Batcher`; :func:`build_app`);
Ray Serve plugs in a pool of model replicas batched by ``@serve.batch`` (``serve/ray_app.py``). Both
run the same model-side functions, :func:`run_segment` and :class:`ChatSession`.
"""
import contextlib
import hashlib
import html
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from self1e.inference.predictor import Self1ePredictor
from self1e.serve import openai
from self1e.serve.batching import Batcher, ModelUnavailable, QueueFull
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


def model_note(name: str) -> dict[str, Any]:
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


@dataclass(frozen=True)
class SegmentJob:
    """One ``/v1/segment`` request, checked: the decoded upload, its texts, whether to draw pictures."""

    upload: Upload
    texts: list[str]
    render: bool = False


@dataclass(frozen=True)
class ChatJob:
    """One chat turn, checked: the upload and its ``key`` (a hash of its bytes), the message, the
    history, whether to draw pictures, and ``generate``: keyword arguments of the predictor's chat."""

    upload: Upload
    key: str
    message: str
    history: list[dict[str, str]]
    render: bool = False
    generate: dict[str, Any] = field(default_factory=dict)


def run_segment(predictor: Self1ePredictor, limits: Limits, jobs: list[SegmentJob]) -> list[dict]:
    """The model side of ``/v1/segment``: a batch of jobs in one ``predict_images`` call (each
    image encoded once), each answered with its JSON."""
    grouped = predictor.predict_images([j.upload.image for j in jobs], [j.texts for j in jobs])
    out = [segment_response(j.upload, results, j.render) for j, results in zip(jobs, grouped)]
    if any(j.upload.size[0] * j.upload.size[1] > limits.model_pixels for j in jobs):
        release_memory()
    return out


class ChatSession:
    """The model side of chat: one predictor and its current image (the same image turn after turn
    is encoded once). Call it with a :class:`ChatJob`: the answer's JSON, with ``usage`` (prompt and
    generated token counts)."""

    def __init__(self, predictor: Self1ePredictor) -> None:
        self.predictor = predictor
        self.image_key: str | None = None

    def __call__(self, job: ChatJob) -> dict[str, Any]:
        if self.image_key != job.key:
            self.image_key = None
            self.predictor.set_image(job.upload.image)
            self.image_key = job.key
        response = self.predictor.chat(job.message, history=job.history, **job.generate)
        out = segment_response(job.upload, response.segments, job.render)
        return {"answer": response.text, "history": response.history, **out,
                "usage": {"prompt_tokens": response.prompt_tokens, "completion_tokens": len(response.token_ids)}}


class ModelSide(Protocol):
    """What the routes need from the model: ``segment`` (batched) and ``chat`` jobs answered as JSON
    dicts, admission against the queue size (QueueFull when full), and a few facts for /healthz."""

    device: str
    pending: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def segment(self, job: SegmentJob) -> dict: ...

    async def chat(self, job: ChatJob) -> dict: ...

    def health(self) -> dict[str, Any]: ...


class LocalModel:
    """The single-process server's model side: one predictor on one thread, segmentation batched by
    our :class:`Batcher`, chat turns on the same thread."""

    def __init__(self, predictor: Self1ePredictor, settings: ServeSettings) -> None:
        self.device = str(predictor.device)
        self.session = ChatSession(predictor)
        self.batcher = Batcher(lambda jobs: run_segment(predictor, settings.limits, jobs), settings.max_batch,
                               settings.batch_wait_ms, settings.queue_size)

    @property
    def pending(self) -> int:
        return self.batcher.pending

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()

    async def segment(self, job: SegmentJob) -> dict:
        return await self.batcher.submit(job)

    async def chat(self, job: ChatJob) -> dict:
        return await self.batcher.call(lambda: self.session(job))

    def health(self) -> dict[str, Any]:
        return {}


def build_app(predictor: Self1ePredictor, name: str = "model", settings: ServeSettings = ServeSettings()):
    """The single-process app around ``predictor`` (which it owns from now on: all model calls run on
    its thread); ``app.state.batcher`` is the Batcher."""
    model = LocalModel(predictor, settings)
    app = create_app(model, name, settings)
    app.state.batcher = model.batcher
    return app


def create_app(model: ModelSide, name: str = "model", settings: ServeSettings = ServeSettings()):
    """The routes, limits and errors of the API and the page, around a model side."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
    from fastapi.staticfiles import StaticFiles
    from starlette.exceptions import HTTPException

    limits = settings.limits

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await model.start()
        yield
        await model.stop()

    app = FastAPI(title="self1e", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Segment images and chat about them with a SELF1E model (one [SEG] token, no decoder).")
    app.state.model = model

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": {"status": status, "message": message}}, status_code=status)

    @app.exception_handler(RequestError)
    async def on_request_error(_, e: RequestError):
        return error(e.status, str(e))

    @app.exception_handler(QueueFull)
    async def on_queue_full(_, e: QueueFull):
        return error(503, str(e))

    @app.exception_handler(ModelUnavailable)
    async def on_unavailable(_, e: ModelUnavailable):
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

    def check_length(request: Request) -> None:
        """413 at once for a body whose declared size cannot hold an image within the limit."""
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes * 4 // 3 + 65536:
            raise RequestError(413, f"the request is {int(declared):,} bytes; the image limit is "
                                    f"{limits.max_upload_bytes:,} bytes")

    async def read_json(request: Request) -> Any:
        try:
            return await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(422, "the body is not JSON (send JSON or a multipart form)") from None

    async def read_request(request: Request) -> dict[str, Any]:
        """JSON body or multipart form -> {"image": Upload, "fields": {...}}."""
        check_length(request)
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
            body = await read_json(request)
            if not isinstance(body, dict):
                raise RequestError(422, "the JSON body must be an object")
            data = b64_bytes(body.get("image"), "image")
            fields = body
        return {"image": read_upload(data, limits), "key": hashlib.sha1(data).hexdigest(), "fields": fields}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"model": name, "device": model.device, "ready": True, "pending": model.pending,
                "max_batch": settings.max_batch, "queue_size": settings.queue_size, **model.health()}

    @app.get("/v1/info")
    async def info() -> dict:
        return {"model": model_note(name), "limits": asdict(limits),
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
        return await model.segment(SegmentJob(req["image"], texts, bool(req["fields"].get("render"))))

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
        out = await model.chat(ChatJob(req["image"], req["key"], message, history, bool(fields.get("render")),
                                       {"max_new_tokens": tokens}))
        out.pop("usage")
        return out

    @app.get("/v1/models")
    async def models() -> dict:
        """The one model this server holds, in OpenAI's format."""
        return openai.models_list(name)

    @app.post("/v1/chat/completions", openapi_extra=openai.openapi_body())
    async def chat_completions(request: Request):
        """OpenAI's chat completions: the answer as message content, its masks in message.segments."""
        check_length(request)
        req = openai.parse_request(await read_json(request), MAX_NEW_TOKENS)
        check_request_texts([req.message], limits, "the last user message")
        if len(req.history) > 2 * MAX_HISTORY_TURNS:
            raise RequestError(422, f"the conversation has {len(req.history) + 1} messages; the limit is "
                                    f"{2 * MAX_HISTORY_TURNS + 1}")
        job = ChatJob(read_upload(req.image, limits), hashlib.sha1(req.image).hexdigest(), req.message, req.history,
                      False, {"max_new_tokens": req.max_tokens, **req.sampling})
        out = await model.chat(job)
        generated = out["usage"]["completion_tokens"]
        args = (*openai.new_id(), name, out["answer"], out["results"], openai.finish_reason(generated, req.max_tokens),
                out["usage"]["prompt_tokens"], generated)
        if req.stream:
            return StreamingResponse(openai.stream_events(*args, req.include_usage), media_type="text/event-stream")
        return openai.completion(*args)

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
