"""The Ray Serve deployment's code in-process, without a cluster: the ingress's model side (RemoteModel)
over a stand-in handle that calls a real model replica object, so the app, @serve.batch and the retry
on a dead replica are tested in milliseconds; test_ray_serve.py runs them on a real local Ray."""
import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from .conftest import b64, client_for, png_bytes, scene

ray_app = pytest.importorskip("self1e.serve.ray_app", reason="needs the ray extra")
from ray.exceptions import ActorDiedError  # noqa: E402

from self1e.serve.app import ServeSettings, create_app  # noqa: E402
from self1e.serve.codec import Limits  # noqa: E402

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "serve_ray.yaml"


@pytest.fixture(autouse=True)
def replica_context(monkeypatch):
    """@serve.batch reads its replica's max_ongoing_requests (to warn when batches cannot fill): give it one."""
    from types import SimpleNamespace

    from ray import serve

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=16))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)


class Call:
    def __init__(self, handle, method):
        self.handle, self.method = handle, method

    async def remote(self, *args):
        if self.handle.failures:
            self.handle.failures -= 1
            raise ActorDiedError()
        return await getattr(self.handle.replica, self.method)(*args) if self.method != "info" else \
            self.handle.replica.info()


class StandInHandle:
    """``handle.method.remote(job)`` awaits the replica object's method; the first ``failures`` calls
    raise ActorDiedError, as a handle does when its replica died."""

    def __init__(self, replica, failures: int = 0):
        self.replica, self.failures = replica, failures

    def __getattr__(self, method):
        return Call(self, method)


def replica(model_dir, max_batch=8, wait_ms=50.0):
    return ray_app.Self1eModel.func_or_class(str(model_dir), "cpu", {}, None, None, Limits(), max_batch, wait_ms)


def requests(n):
    return [(scene(200 + k, size=(48 + 4 * (k % 3), 40)), ["the red circle", "the blue star"][: 1 + k % 2])
            for k in range(n)]


async def post_all(app, jobs):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://ray-ingress") as client:
        async with app.router.lifespan_context(app):
            return await asyncio.gather(*[client.post("/v1/segment", json={"image": b64(png_bytes(im)), "texts": t})
                                          for im, t in jobs])


def test_the_ingress_with_serve_batch_answers_as_the_single_process_server(predictor, tiny_model_dir):
    worker = replica(tiny_model_dir, max_batch=8)
    app = create_app(ray_app.RemoteModel(StandInHandle(worker), queue_size=64), "tiny", ServeSettings())
    jobs = requests(12)
    answers = asyncio.run(post_all(app, jobs))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert max(worker.batches) > 1 and sum(worker.batches) == 12  # serve.batch gathered them
    with client_for(predictor, max_batch=1) as c:  # the single-process server, one request at a time
        for (image, texts), r in zip(jobs, answers):
            want = c.post("/v1/segment", json={"image": b64(png_bytes(image)), "texts": texts}).json()
            got = r.json()
            assert [g["text"] for g in got["results"]] == texts and got["width"] == want["width"]
            for g, w in zip(got["results"], want["results"]):  # batched rows: float rounding at the threshold
                assert abs(g["pixels"] - w["pixels"]) <= 0.002 * got["width"] * got["height"]


def test_a_bad_job_fails_alone_and_a_dead_replica_is_retried_then_answered_503(tiny_model_dir):
    worker = replica(tiny_model_dir, max_batch=1)
    handle = StandInHandle(worker)
    app = create_app(ray_app.RemoteModel(handle, queue_size=8), "tiny", ServeSettings(max_batch=1))
    image = b64(png_bytes(scene(3)))
    from fastapi.testclient import TestClient

    with TestClient(app, raise_server_exceptions=False) as c:
        handle.failures = 2  # two dead replicas, then a live one: answered
        r = c.post("/v1/segment", json={"image": image, "texts": ["the red circle"]})
        assert r.status_code == 200 and handle.failures == 0
        handle.failures = ray_app.RETRIES  # every try fails: the app's JSON 503
        r = c.post("/v1/segment", json={"image": image, "texts": ["the red circle"]})
        assert r.status_code == 503 and r.json()["error"]["status"] == 503
        assert "replicas failed to answer (ActorDiedError" in r.json()["error"]["message"]
        r = c.post("/v1/chat", json={"image": image, "message": "x" * 2001})
        assert r.status_code == 422 and "2,000 characters" in r.json()["error"]["message"]
        worker.predictor.predict_images, real = None, worker.predictor.predict_images  # a crash in the replica
        try:
            r = c.post("/v1/segment", json={"image": image, "texts": ["the red circle"]})
        finally:
            worker.predictor.predict_images = real
        assert r.status_code == 500 and "internal error (TypeError)" in r.json()["error"]["message"]
        health = c.get("/healthz").json()
        assert health["pending"] == 0 and health["retried"] == 2 + ray_app.RETRIES


def test_the_ray_route_chat_equals_the_single_process_one(predictor, tiny_model_dir):
    worker = replica(tiny_model_dir)
    app = create_app(ray_app.RemoteModel(StandInHandle(worker), queue_size=8), "tiny", ServeSettings())
    image = scene(21)
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Describe the image."},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(png_bytes(image))}}]}],
        "max_tokens": 8}
    from fastapi.testclient import TestClient

    with TestClient(app) as c, client_for(predictor) as single:
        got, want = c.post("/v1/chat/completions", json=body).json(), single.post("/v1/chat/completions",
                                                                                  json=body).json()
        assert c.get("/healthz").json()["device"] == "cpu"
        assert c.get("/openapi.json").json() == single.get("/openapi.json").json()
    for k in ("id", "created"):
        got.pop(k), want.pop(k)
    assert got == want


def test_the_serve_config_file_is_valid_and_names_the_deployments():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    assert app.import_path == "self1e.serve.ray_app:app_builder" and app.route_prefix == "/"
    names = {d.name for d in app.deployments}
    assert names == {ray_app.MODEL_DEPLOYMENT, ray_app.INGRESS_DEPLOYMENT}
    model = next(d for d in raw["applications"][0]["deployments"] if d["name"] == ray_app.MODEL_DEPLOYMENT)
    bounds = model["autoscaling_config"]
    assert bounds["min_replicas"] >= 1 and bounds["max_replicas"] >= bounds["min_replicas"]
    assert {"num_cpus", "num_gpus"} <= set(model["ray_actor_options"])
    assert model["max_ongoing_requests"] >= app.args["max_batch"]
    built = ray_app.app_builder(app.args)
    from ray.serve import Application

    assert isinstance(built, Application)
    with pytest.raises(ValueError, match="unknown \\['modle'\\]"):
        ray_app.app_builder({"model": "default", "modle": "x"})


def test_results_of_one_replica_job_are_the_same_json_as_the_plain_servers(predictor, tiny_model_dir):
    """run_segment is the one function both servers run: through the replica it gives the same JSON."""
    worker = replica(tiny_model_dir, max_batch=1)
    from self1e.serve.app import SegmentJob, run_segment
    from self1e.serve.codec import read_upload

    job = SegmentJob(read_upload(png_bytes(scene(5)), Limits()), ["the red circle"], False)
    got = asyncio.run(worker.segment(job))
    want = run_segment(predictor, Limits(), [job])[0]
    assert got == want and np.asarray(got["results"][0]["bbox"]).shape == (4,)


def test_serve_ray_options_are_checked_before_ray_starts(capsys):
    from self1e.cli import main

    assert main(["serve", "--ray", "--replicas", "0", "--model", "tiny:tiny"]) == 2
    assert "--replicas must be at least 1, got 0" in capsys.readouterr().err
