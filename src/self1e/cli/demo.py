"""`self1e demo`: evaluate the shipped model on fresh RefShapes samples and draw overlays;
`--train` first retrains the default recipe from scratch within a time budget; `--web` serves the page."""
from __future__ import annotations

from self1e.cli.options import add_device, add_model
from self1e.cli.serve import add_server_options


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the shipped RefShapes model on fresh samples (or retrain it with --train)")
    p.add_argument("--out", default="demo-out", metavar="DIR",
                   help="folder for overlay pictures and report.json (default: %(default)s)")
    add_model(p)
    p.add_argument("--seed", type=int, default=2026, metavar="N", help="seed of the generated RefShapes samples")
    add_device(p)
    p.add_argument("--train", action="store_true", help="retrain the default recipe from scratch first")
    p.add_argument("--budget-minutes", type=float, default=10.0, metavar="MIN",
                   help="training time budget with --train (default: %(default)s)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="where --train writes its run (default: runs/demo-train-<time>)")
    p.add_argument("--web", action="store_true",
                   help="serve the web page (and the HTTP API) instead, as `self1e serve` does")
    add_server_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    import time

    model = args.model
    if args.train:
        from self1e.train.recipe import train_default_recipe

        run_dir = args.model_dir or time.strftime("runs/demo-train-%Y%m%d-%H%M%S")
        model = str(train_default_recipe(run_dir, budget_minutes=args.budget_minutes))
    if args.web:
        from self1e.cli.serve import serve

        return serve(args, model)
    from self1e.demo.run import run_demo

    run_demo(model, args.out, seed=args.seed, device=args.device, threads=args.threads)
    return 0
