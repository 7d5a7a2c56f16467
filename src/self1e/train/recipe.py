"""The shipped default model's recipe, rerun from scratch within a time budget (`self1e demo --train`)."""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)
RECIPE = Path(__file__).with_name("default_recipe.yaml")  # stage 1 of the shipped model, from random init
# Optimizer steps per minute of the recipe on one core of the development machine (2-core x86 VM),
# measured from the shipped model's own metrics; it sets the step count, so the LR schedule ends
# when the budget does. ``max_minutes`` stops the run on slower machines anyway.
STEPS_PER_MINUTE = 430


def train_default_recipe(out_dir: str | Path, budget_minutes: float = 10.0) -> Path:
    """Train the default recipe for about ``budget_minutes``; returns the final model folder."""
    from self1e.train.config import load_config
    from self1e.train.loop import train

    if budget_minutes <= 0:
        raise ValueError(f"--budget-minutes must be positive, got {budget_minutes}")
    if not RECIPE.is_file():
        raise ValueError(f"the default recipe is missing: {RECIPE}")
    steps = max(10, int(budget_minutes * STEPS_PER_MINUTE))
    cfg = load_config(RECIPE, [f"out={out_dir}", f"max_steps={steps}", f"max_minutes={budget_minutes}",
                               f"warmup_steps={min(200, steps // 10)}", "save_every=0", "eval_every=0", "val=null"])
    log.info("retraining the default recipe for %d steps (about %.0f minutes) into %s", steps, budget_minutes, out_dir)
    return train(cfg)
