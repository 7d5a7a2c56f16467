"""The Ray options of `self1e serve --ray`, `self1e eval --ray` and `self1e batch`, and joining or starting Ray.

Ray is imported only by :func:`ray_session`, so the commands' ``--help`` and their runs without ``--ray``
never load it.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's one-node mode, every service on 127.0.0.1


def add_address(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--address", metavar="ADDR", help="a running Ray cluster (host:6379, auto or ray://...); "
                   "default: start a local Ray on this machine (on 127.0.0.1 only)")


def add_actor_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--actors", type=int, default=1, metavar="N", help="predictor actors (default: %(default)s)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0, metavar="G",
                   help="GPUs reserved per predictor actor, fractions allowed (default: %(default)s)")
    p.add_argument("--cpus-per-actor", type=float, default=None, metavar="C",
                   help="CPUs reserved per predictor actor (default: 1; on a local Ray, what the machine's "
                        "CPUs allow beside the decoding tasks)")


def pool_options(args: argparse.Namespace, model: str, device: str | None, config: dict, quantize: str | None):
    """The actor pool of ``args`` (``--actors``, ``--gpus-per-actor``, ``--cpus-per-actor``)."""
    from self1e.eval.ray_data import PoolOptions

    if args.actors < 1:
        raise ValueError(f"--actors must be at least 1, got {args.actors}")
    if args.gpus_per_actor < 0 or (args.cpus_per_actor is not None and args.cpus_per_actor < 0):
        raise ValueError("--gpus-per-actor and --cpus-per-actor must be >= 0")
    decode = 0.5
    cpus = args.cpus_per_actor
    if cpus is None:  # leave room for one decoding task, so that the pipeline never waits on itself
        cpus = 1.0 if args.address else max(0.1, min(1.0, ((os.cpu_count() or 1) - decode) / args.actors))
    return PoolOptions(model=str(model), device=device, config=dict(config or {}), threads=args.threads,
                       quantize=quantize, actors=args.actors, gpus_per_actor=args.gpus_per_actor,
                       cpus_per_actor=round(cpus, 3), decode_cpus=decode,
                       progress=not getattr(args, "no_progress", False))


def loopback_only():
    """Make a local Ray this process starts bind every service to 127.0.0.1 (Ray's one-node mode, for
    its children through the environment, for an already imported Ray through its constant). Returns
    a function that undoes it."""
    before = os.environ.get(LOOPBACK_ENV)
    os.environ[LOOPBACK_ENV] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    was = getattr(constants, "ENABLE_RAY_CLUSTER", None)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False

    def restore() -> None:
        if before is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = before
        if constants is not None:
            constants.ENABLE_RAY_CLUSTER = was

    return restore


@contextlib.contextmanager
def ray_session(address: str | None, log_to_driver: bool = False, **local):
    """Ray for one command: joined at ``address``, or a local Ray bound to 127.0.0.1 (``local``: more
    ``ray.init`` arguments, e.g. ``num_cpus``), shut down at the end; a Ray this process is already
    connected to is used as it is and left running. ``log_to_driver``: show the workers' logs. Yields
    the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise ValueError("this needs Ray (pip install 'self1e[ray]')") from None
    if ray.is_initialized():
        yield ray
        return
    if not address:
        loopback_only()
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
    else:
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=log_to_driver,
                 **local)
    try:
        yield ray
    finally:
        ray.shutdown()
