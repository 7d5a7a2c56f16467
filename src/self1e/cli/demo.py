"""`self1e demo`: evaluate the shipped model on fresh RefShapes samples and draw overlays;
`--train` first retrains the default recipe from scratch within a time budget."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the shipped RefShapes model on fresh samples (or retrain it with --train)")
    p.add_argument("--out", default="demo-out", help="folder for overlay pictures and report.json (default: demo-out)")
    p.add_argument("--model", default="default", help="model to demonstrate (default: the shipped one)")
    p.add_argument("--seed", type=int, default=2026, help="seed of the generated RefShapes samples")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--train", action="store_true", help="retrain the default recipe from scratch first")
    p.add_argument("--budget-minutes", type=float, default=10.0, help="training time budget with --train")
    p.add_argument("--model-dir", default=None, help="where --train writes its run (default: runs/demo-train-<time>)")
    p.add_argument("--web", action="store_true", help="serve the interactive web demo instead (needs self1e[demo])")
    p.add_argument("--port", type=int, default=7860, help="port of the web demo (on 127.0.0.1)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..demo import run_demo

    model = args.model
    if args.train:
        from ..train.recipe import train_default_recipe

        import time

        run_dir = args.model_dir or time.strftime("runs/demo-train-%Y%m%d-%H%M%S")
        model = str(train_default_recipe(run_dir, budget_minutes=args.budget_minutes))
    if args.web:
        from ..predictor import Self1ePredictor
        from ..web import build_app

        build_app(Self1ePredictor.from_pretrained(model, device=args.device)).launch(
            server_name="127.0.0.1", server_port=args.port)
        return 0
    run_demo(model, args.out, seed=args.seed, device=args.device)
    return 0
