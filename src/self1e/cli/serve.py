"""`self1e serve`: the HTTP API and the web page for one model (FastAPI + uvicorn, the ``serve`` extra).

    self1e serve --model default [--host 127.0.0.1] [--port 8000] [--max-batch 8] [--batch-wait-ms 5]
                 [--queue-size 64] [--max-upload-mb 20] [--model-pixels 4000000]
    self1e serve --ray [--address ADDR] [--replicas N] [--gpus-per-replica G] [--cpus-per-replica C] ...

With ``--ray`` the same app runs on Ray Serve (the ``ray`` extra; serve/ray_app.py): a local Ray is
started (on 127.0.0.1) unless ``--address`` names a running cluster.
"""
from __future__ import annotations

from self1e.cli.options import add_device, add_model, add_quantize, add_settings, quantize_from, settings_from
from self1e.cli.ray_cluster import add_address


def add_server_options(p) -> None:
    """Where and how the app listens and batches (shared with ``self1e demo --web``)."""
    p.add_argument("--host", default="127.0.0.1", metavar="ADDR",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, metavar="PORT", help="port (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=8, metavar="N",
                   help="segmentation requests batched into one forward pass; 1 = no batching (default: %(default)s)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                   help="how long a request waits for others to batch with (default: %(default)s)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="pending requests at most; more are answered 503 (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                   help="largest image upload, in MiB (413 above; default: %(default)s)")
    p.add_argument("--model-pixels", type=int, default=4_000_000, metavar="N",
                   help="images with more pixels are downscaled for the model, masks returned at full size "
                        "(default: %(default)s)")


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the HTTP API and the web page (needs self1e[serve])")
    add_model(p)
    add_device(p)
    add_quantize(p)
    add_settings(p)
    add_server_options(p)
    ray = p.add_argument_group("Ray Serve (needs self1e[ray])")
    ray.add_argument("--ray", action="store_true", help="serve on Ray Serve: the same app, the model on replicas, "
                     "batched by Ray Serve's @serve.batch")
    add_address(ray)
    ray.add_argument("--replicas", type=int, default=1, metavar="N", help="model replicas (default: %(default)s)")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, metavar="G",
                     help="GPUs reserved per model replica, fractions allowed (default: %(default)s)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="C",
                     help="CPUs reserved per model replica (default: %(default)s)")
    p.set_defaults(run=run)


def serve(args, model: str) -> int:
    """Load ``model`` and serve it with the options of :func:`add_server_options` until interrupted."""
    try:
        import uvicorn

        from self1e.serve.app import ServeSettings, build_app
    except ImportError as e:
        raise ValueError(f"serving needs FastAPI and uvicorn ({e.name} is missing): pip install 'self1e[serve]'") \
            from None
    from self1e.inference import Self1ePredictor
    from self1e.serve.codec import Limits

    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), model_pixels=args.model_pixels)
    settings = ServeSettings(args.max_batch, args.batch_wait_ms, args.queue_size, limits)
    if getattr(args, "ray", False):
        return serve_on_ray(args, model, settings)
    predictor = Self1ePredictor.from_pretrained(model, device=args.device, config=settings_from(args) or None,
                                                threads=args.threads, quantize=quantize_from(args))
    app = build_app(predictor, str(model), settings)
    print(f"self1e: serving {model} on http://{args.host}:{args.port}/ (API: /api, /openapi.json); Ctrl-C stops")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def serve_on_ray(args, model: str, settings) -> int:
    """Deploy the app on Ray Serve (a local Ray, or the cluster at ``--address``) and wait for Ctrl-C."""
    import signal
    import time

    from self1e.cli.ray_cluster import ray_session

    if args.replicas < 1:
        raise ValueError(f"--replicas must be at least 1, got {args.replicas}")

    def stop(*_):
        raise KeyboardInterrupt

    with ray_session(args.address, log_to_driver=True):
        try:
            from ray import serve

            from self1e.serve.ray_app import APP_NAME, build_application
        except ImportError as e:
            raise ValueError(f"--ray needs Ray Serve ({e.name} is missing): pip install 'self1e[ray]'") from None
        for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background: stop the app, then Ray
            signal.signal(sig, stop)
        try:
            serve.start(http_options={"host": args.host, "port": args.port})
            app = build_application(model, name=str(model), device=args.device,
                                    config=settings_from(args) or None, threads=args.threads,
                                    quantize=quantize_from(args), settings=settings, replicas=args.replicas,
                                    cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica)
            serve.run(app, name=APP_NAME, route_prefix="/")
            print(f"self1e: serving {model} on Ray Serve at http://{args.host}:{args.port}/ ({args.replicas} "
                  f"replica(s); API: /api, /openapi.json); Ctrl-C stops")
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0
        finally:
            serve.shutdown()


def run(args) -> int:
    return serve(args, args.model)
