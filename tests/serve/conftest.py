"""The API under test: the app around a tiny random model, in-process (TestClient) or on a real
loopback server (uvicorn in a thread, for concurrent clients)."""
from __future__ import annotations

import base64
import contextlib
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from self1e import Self1ePredictor


def png_bytes(image: Image.Image | np.ndarray, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scene(seed: int = 0, size=(72, 56)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def predictor(tiny_model_dir):
    return Self1ePredictor.from_pretrained(tiny_model_dir, device="cpu")


@contextlib.contextmanager
def client_for(predictor, **settings):
    from fastapi.testclient import TestClient

    from self1e.serve.app import ServeSettings, build_app

    app = build_app(predictor, "tiny", ServeSettings(**settings))
    with TestClient(app, raise_server_exceptions=False) as client:
        client.app_state = app.state
        yield client


@contextlib.contextmanager
def live_server(predictor, **settings):
    """uvicorn on 127.0.0.1 (a free port) in a thread; yields (base URL, app); stops it at the end."""
    import uvicorn

    from self1e.serve.app import ServeSettings, build_app

    app = build_app(predictor, "tiny", ServeSettings(**settings))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the test server did not start in 20 s")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(10)
