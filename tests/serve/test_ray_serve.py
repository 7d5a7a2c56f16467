"""`self1e serve --ray` for real: the app on a local Ray Serve (loopback only, 2 CPUs, no dashboard;
one Ray for the whole module, shut down at its end), compared with the single-process server."""
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from self1e.serve.codec import Limits

from .conftest import b64, client_for, png_bytes, scene

pytestmark = pytest.mark.slow
EXPRESSIONS = ["the red circle", "the blue star", "all the boxes", "the small green triangle on the left"]
APP = "self1e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_serve(local_ray):
    """Serve's proxy on a free loopback port of the module's local Ray; yields (ray, serve, url)."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield local_ray, serve, f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def deploy(ray_serve, model_dir, replicas=2, **settings):
    from self1e.serve.app import ServeSettings
    from self1e.serve.ray_app import build_application

    _, serve, url = ray_serve
    app = build_application(str(model_dir), name="tiny", device="cpu", settings=ServeSettings(**settings),
                            replicas=replicas, cpus_per_replica=1.0)
    serve.run(app, name=APP, route_prefix="/")
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/healthz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the Ray app did not become healthy in 60 s"
        time.sleep(0.2)
    return url


def model_replicas(ray) -> list[str]:
    from self1e.serve.ray_app import MODEL_DEPLOYMENT

    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::") and f"#{MODEL_DEPLOYMENT}#" in a["name"])


def running_replicas(serve) -> int:
    from self1e.serve.ray_app import MODEL_DEPLOYMENT

    status = serve.status().applications[APP].deployments[MODEL_DEPLOYMENT]
    return status.replica_states.get("RUNNING", 0)


def jobs(n, seed=300):
    return [(png_bytes(scene(seed + k, size=(64 + 8 * (k % 3), 48))), EXPRESSIONS[k % 4:k % 4 + 1 + k % 2])
            for k in range(n)]


def body(job):
    return {"image": b64(job[0]), "texts": job[1]}


def single_process_answers(predictor, requests) -> list[dict]:
    with client_for(predictor, max_batch=1) as c:
        return [c.post("/v1/segment", json=body(j)).json() for j in requests]


def test_two_replicas_answer_20_concurrent_requests_as_the_single_process_server(ray_serve, predictor,
                                                                                  tiny_model_dir):
    """--max-batch 1 on both sides: each request runs alone, so the RLE must be identical (batched rows
    are padded, which moves logits by float rounding; the batched Ray run is tested below)."""
    ray, serve, _ = ray_serve
    url = deploy(ray_serve, tiny_model_dir, replicas=2, max_batch=1)
    assert len(model_replicas(ray)) == 2 and running_replicas(serve) == 2
    requests = jobs(20)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda j: httpx.post(f"{url}/v1/segment", json=body(j), timeout=120), requests))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    assert [r.json() for r in answers] == single_process_answers(predictor, requests)
    # the same app: routes, OpenAPI, health, the OpenAI route
    with client_for(predictor) as single:
        assert httpx.get(f"{url}/openapi.json").json() == single.get("/openapi.json").json()
        assert httpx.get(f"{url}/").text == single.get("/").text
        health = httpx.get(f"{url}/healthz").json()
        assert health["device"] == "cpu" and health["backend"] == "ray" and health["retried"] == 0
        chat = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe the image."},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(requests[0][0])}}]}],
            "max_tokens": 8}
        got = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).json()["choices"]
        assert got == single.post("/v1/chat/completions", json=chat).json()["choices"]


BAD = [({"image": b64(png_bytes(scene(1, size=(400, 400)))), "texts": ["x"]}, 413, "limit is 100,000 bytes"),
       ({"image": b64(b"not a picture"), "texts": ["x"]}, 422, "cannot read the uploaded image"),
       ({"image": b64(png_bytes(scene(1))), "texts": ["x"] * 17}, 422, "the limit is 16"),
       ({"image": b64(png_bytes(scene(1))), "texts": []}, 422, "no expression")]


def test_limits_and_a_dying_replica_through_the_ray_route(ray_serve, predictor, tiny_model_dir):
    ray, serve, _ = ray_serve
    url = deploy(ray_serve, tiny_model_dir, replicas=2, max_batch=1, limits=Limits(max_upload_bytes=100_000))
    for request, status, words in BAD:
        r = httpx.post(f"{url}/v1/segment", json=request, timeout=60)
        assert r.status_code == status and r.json()["error"]["status"] == status, r.text
        assert words in r.json()["error"]["message"]
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]}, timeout=60)
    assert r.status_code == 422 and "fetches nothing" in r.json()["error"]["message"]

    # kill one model replica in the middle of a burst
    requests = jobs(48, seed=400)
    want = single_process_answers(predictor, requests)
    victims = model_replicas(ray)
    assert len(victims) == 2
    done, killed_at = [], []

    def post(job):
        r = httpx.post(f"{url}/v1/segment", json=body(job), timeout=120)
        done.append(time.monotonic())
        return r

    def kill_when_started():
        while len(done) < 6:
            time.sleep(0.005)
        ray.kill(ray.get_actor(victims[0], namespace="serve"), no_restart=True)
        killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_when_started)
    killer.start()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(post, requests))
    killer.join(30)
    assert killed_at and sum(t > killed_at[0] for t in done) >= 6  # the burst went on after the kill
    for r, w in zip(answers, want):
        if r.status_code == 200:
            assert r.json() == w
        else:  # a request lost with its replica says so, as the app's JSON error
            assert r.status_code >= 500 and r.json()["error"]["status"] == r.status_code, r.text
    answered = sum(r.status_code == 200 for r in answers)
    # Requests in flight on the dead replica were asked again. On a busy machine the kill can land
    # between two of its batches, with nothing in flight: then nothing is retried and nothing is lost
    # (without the retry, a request lost with the replica would have answered 5xx here).
    retried = httpx.get(f"{url}/healthz").json()["retried"]
    assert retried >= 1 or answered == len(requests), (retried, answered)
    deadline = time.monotonic() + 90
    while True:  # Serve notices the death (the status may still count it as running) and starts a new one
        alive = model_replicas(ray)
        if len(alive) == 2 and victims[0] not in alive and running_replicas(serve) == 2:
            break
        assert time.monotonic() < deadline, f"Serve did not replace the killed replica in 90 s: {alive}"
        time.sleep(0.5)
    with ThreadPoolExecutor(12) as pool:
        again = list(pool.map(lambda j: httpx.post(f"{url}/v1/segment", json=body(j), timeout=120), requests[:20]))
    assert [r.status_code for r in again] == [200] * 20 and [r.json() for r in again] == want[:20]
    print(f"burst with a replica killed: {answered}/48 answered right, {48 - answered} JSON 5xx")


def test_serve_batch_batches_across_replicas_and_a_full_queue_answers_503(ray_serve, predictor, tiny_model_dir):
    ray, serve, _ = ray_serve
    from self1e.serve.ray_app import MODEL_DEPLOYMENT

    url = deploy(ray_serve, tiny_model_dir, replicas=2, max_batch=8, batch_wait_ms=100)
    requests = jobs(24, seed=500)
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda j: httpx.post(f"{url}/v1/segment", json=body(j), timeout=120), requests))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    for r, w in zip(answers, single_process_answers(predictor, requests)):
        got = r.json()
        assert [g["text"] for g in got["results"]] == [x["text"] for x in w["results"]]
        for g, x in zip(got["results"], w["results"]):  # padded rows: a pixel at the threshold may flip
            assert abs(g["pixels"] - x["pixels"]) <= 0.002 * got["width"] * got["height"]
    handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP)
    infos = {}
    for _ in range(40):  # ask until both replicas have reported their batch sizes
        info = handle.info.remote().result()
        infos[info["pid"]] = info["batches"]
        if len(infos) == 2:
            break
    assert sum(map(sum, infos.values())) == 24 and max(max(b) for b in infos.values() if b) > 1

    # the queue limit: two long chats fill a queue of 2, the third request is refused at once
    url = deploy(ray_serve, tiny_model_dir, replicas=1, max_batch=1, queue_size=2)
    chat = {"image": b64(png_bytes(scene(9))), "message": "Describe the image.", "max_new_tokens": 256}
    with ThreadPoolExecutor(2) as pool:
        slow = [pool.submit(httpx.post, f"{url}/v1/chat", json=chat, timeout=120) for _ in range(2)]
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/healthz").json()["pending"] < 2:
            assert time.monotonic() < deadline and not all(f.done() for f in slow)
            time.sleep(0.01)
        busy = httpx.post(f"{url}/v1/segment", json=body(requests[0]), timeout=60)
        assert [f.result().status_code for f in slow] == [200, 200]
    assert busy.status_code == 503 and busy.json()["error"] == {
        "status": 503, "message": busy.json()["error"]["message"]} and "queue size 2" in busy.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/segment", json=body(requests[0]), timeout=60).status_code == 200
