"""The API on Ray Serve (``self1e serve --ray``, the ``ray`` extra): the same app, its model on a pool of replicas.

Two deployments make one Serve application::

    HTTP -> Serve's proxy -> Self1eIngress (the FastAPI app of serve/app.py: routes, limits, errors, JSON,
                                             OpenAPI; decodes uploads; admits at most queue_size requests)
                          -> Self1eModel x N replicas (one predictor each; /v1/segment jobs batched by
                             Ray Serve's @serve.batch around predict_images; chat turns one at a time)

The ingress plugs :class:`RemoteModel` into :func:`self1e.serve.app.create_app` where the single-process
server plugs its Batcher; the replicas run the same model-side functions (``run_segment``,
``ChatSession``). A replica that dies while answering is retried on another (inference is idempotent:
the answer is the same), up to ``retries`` times; a request that still finds none gets the app's JSON
503, never a silent loss. Serve itself replaces the dead replica.

Only this module (and the CLI's ``--ray`` path) imports Ray. ``app_builder`` is the import path for a
Serve config file (``configs/serve_ray.yaml``: ``serve run`` / ``serve deploy``).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
from collections.abc import Mapping
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError

from self1e.inference.predictor import Self1ePredictor
from self1e.serve.app import ChatJob, ChatSession, SegmentJob, ServeSettings, create_app, run_segment
from self1e.serve.batching import Admission, ModelUnavailable, run_isolated
from self1e.serve.codec import Limits

log = logging.getLogger(__name__)
APP_NAME = "self1e"
MODEL_DEPLOYMENT = "Self1eModel"
INGRESS_DEPLOYMENT = "Self1eIngress"
RETRIES = 3


@serve.deployment(name=MODEL_DEPLOYMENT)
class Self1eModel:
    """One model replica: a predictor, its segmentation batched by ``@serve.batch``, chat on the
    same thread. Every method answers a value: a job's result, or the exception it raised (so a bad
    job fails only its own request, as in the single-process server)."""

    def __init__(self, model: str, device: str | None = None, config: Mapping[str, Any] | None = None,
                 threads: int | None = None, quantize: str | None = None, limits: Limits | None = None,
                 max_batch: int = 8, batch_wait_ms: float = 5.0) -> None:
        self.predictor = Self1ePredictor.from_pretrained(model, device=device, config=dict(config or {}) or None,
                                                         threads=threads, quantize=quantize)
        self.limits = limits or Limits()
        self.session = ChatSession(self.predictor)
        self.batches: list[int] = []  # sizes of the batches run (for tests and benchmarks)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="self1e-model")
        # Ray Serve's dynamic batching, one queue per replica (decorated here, so that its sizes are the
        # deployment's arguments and two instances in one process never share a queue)
        self._batched = serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_ms / 1000)(
            self._segment_batch)

    async def _segment_batch(self, jobs: list[SegmentJob]) -> list[Any]:
        """Up to max_batch jobs in one ``predict_images`` call, on the model's thread."""
        self.batches.append(len(jobs))
        return await asyncio.get_running_loop().run_in_executor(self._executor, run_isolated, self._run, jobs)

    def _run(self, jobs: list[SegmentJob]) -> list[dict]:
        return run_segment(self.predictor, self.limits, jobs)

    async def segment(self, job: SegmentJob) -> Any:
        return await self._batched(job)

    async def chat(self, job: ChatJob) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self.session, job)
        except Exception as e:  # noqa: BLE001 - answered as the request's own error
            return e

    def info(self) -> dict[str, Any]:
        return {"device": str(self.predictor.device), "pid": os.getpid(), "batches": list(self.batches)}


class RemoteModel:
    """The ingress's model side (see ``ModelSide`` in serve/app.py): jobs go to the model replicas
    through a deployment handle; admission against the queue size happens here, before any replica
    is asked."""

    def __init__(self, handle, queue_size: int, retries: int = RETRIES) -> None:
        self.handle, self.retries = handle, retries
        self.admission = Admission(queue_size)
        self.device = "unknown"
        self.retried = 0  # calls asked again after a replica failed them

    @property
    def pending(self) -> int:
        return self.admission.pending

    async def start(self) -> None:
        try:
            self.device = (await self._ask("info", None))["device"]
        except ModelUnavailable:
            pass  # /healthz says "unknown" until a replica answers

    async def stop(self) -> None:
        pass

    async def _ask(self, method: str, job: Any) -> Any:
        last: Exception | None = None
        for attempt in range(self.retries):
            try:
                call = getattr(self.handle, method)
                return await (call.remote(job) if job is not None else call.remote())
            except (RayActorError, DeploymentUnavailableError) as e:  # the replica died or is gone: ask again
                last = e
                self.retried += 1
                log.warning("a model replica failed a %s call (%s); asking again", method, type(e).__name__)
                await asyncio.sleep(0.25 * (attempt + 1))
        raise ModelUnavailable(f"the model replicas failed to answer ({type(last).__name__}, {self.retries} tries); "
                               "try again shortly")

    async def _job(self, method: str, job: Any) -> Any:
        self.admission.admit()
        try:
            result = await self._ask(method, job)
        finally:
            self.admission.release()
        if isinstance(result, Exception):
            raise result
        return result

    async def segment(self, job: SegmentJob) -> dict:
        return await self._job("segment", job)

    async def chat(self, job: ChatJob) -> dict:
        return await self._job("chat", job)

    def health(self) -> dict[str, Any]:
        return {"backend": "ray", "retried": self.retried}


@serve.deployment(name=INGRESS_DEPLOYMENT)
@serve.ingress()
class Self1eIngress:
    """The FastAPI app of serve/app.py, built in the replica around a handle to the model replicas."""

    def __init__(self, model_handle, name: str, settings: ServeSettings) -> None:
        self.name, self.settings = name, settings
        self.model = RemoteModel(model_handle, settings.queue_size)

    def __serve_build_asgi_app__(self):
        return create_app(self.model, self.name, self.settings)


def build_application(model: str, *, name: str | None = None, device: str | None = None,
                      config: Mapping[str, Any] | None = None, threads: int | None = None,
                      quantize: str | None = None, settings: ServeSettings | None = None, replicas: int = 1,
                      autoscaling: Mapping[str, Any] | None = None, cpus_per_replica: float = 1.0,
                      gpus_per_replica: float = 0.0, ingress_cpus: float = 0.0):
    """The Serve application: ``replicas`` model replicas (or ``autoscaling`` bounds, Serve's
    ``autoscaling_config``) of ``cpus_per_replica`` CPUs and ``gpus_per_replica`` GPUs each, behind
    one ingress. ``device`` None picks CUDA inside a replica that was given a GPU, else the CPU."""
    settings = settings or ServeSettings()
    if replicas < 1 or cpus_per_replica < 0 or gpus_per_replica < 0:
        raise ValueError(f"need --replicas >= 1 and CPUs / GPUs per replica >= 0, got {replicas}, "
                         f"{cpus_per_replica}, {gpus_per_replica}")
    scale = {"autoscaling_config": dict(autoscaling)} if autoscaling else {"num_replicas": replicas}
    worker = Self1eModel.options(**scale, max_ongoing_requests=2 * settings.max_batch,
                                 ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    ingress = Self1eIngress.options(max_ongoing_requests=settings.queue_size + 32,
                                    ray_actor_options={"num_cpus": ingress_cpus})
    model_app = worker.bind(str(model), device, dict(config or {}), threads, quantize, settings.limits,
                            settings.max_batch, settings.batch_wait_ms)
    return ingress.bind(model_app, name or str(model), settings)


def app_builder(args: Mapping[str, Any]):
    """The application of a Serve config file's ``args`` (``import_path: self1e.serve.ray_app:app_builder``):
    ``model`` (required), ``name``, ``device``, ``threads``, ``quantize``, ``set`` (SELF1E settings), ``max_batch``,
    ``batch_wait_ms``, ``queue_size``, ``max_upload_mb``, ``model_pixels``. Replicas, autoscaling and
    per-replica CPUs / GPUs are the file's ``deployments`` options (they override the defaults here)."""
    args = dict(args)
    known = {"model", "name", "device", "threads", "quantize", "set", "max_batch", "batch_wait_ms", "queue_size",
             "max_upload_mb", "model_pixels"}
    unknown = sorted(set(args) - known)
    if unknown or "model" not in args:
        raise ValueError(f"Serve config args: need 'model'; unknown {unknown}; known: {sorted(known)}")
    defaults = ServeSettings()
    limits = Limits(max_upload_bytes=int(float(args.get("max_upload_mb", 20)) * 1024 * 1024),
                    model_pixels=int(args.get("model_pixels", defaults.limits.model_pixels)))
    settings = ServeSettings(int(args.get("max_batch", defaults.max_batch)),
                             float(args.get("batch_wait_ms", defaults.batch_wait_ms)),
                             int(args.get("queue_size", defaults.queue_size)), limits)
    return build_application(str(args["model"]), name=args.get("name"), device=args.get("device"),
                             config=args.get("set"), threads=args.get("threads"), quantize=args.get("quantize"),
                             settings=settings)
