"""`self1e train`: train SELF1E from a YAML recipe (one process, or several under `accelerate launch`).

    self1e train --config configs/refshapes_tiny.yaml --out runs/tiny [--set lr=3e-4 ...] [--resume]
    accelerate launch --config_file configs/accelerate/ddp.yaml $(which self1e) train --config ... --out ...
"""
from __future__ import annotations

import os


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a SELF1E model from a YAML config",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", metavar="FILE.yaml", help="training recipe (defaults: see self1e.train.config)")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides the config's 'out')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, dotted for nested ones (e.g. lora.r=64); repeatable")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoints/latest, or without it from the newest complete "
                        "OUT/checkpoints/step_* (starts fresh when there is none)")
    p.set_defaults(run=run)


def run(args) -> int:
    from self1e.train.config import load_config
    from self1e.train.loop import train

    extra = {"out": args.out} if args.out else {}
    cfg = load_config(args.config, args.overrides, **extra)
    final = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line, also under `accelerate launch`
        print(final)
    return 0
