"""`self1e data plan` of the paper recipe on a tiny tree of every source of the authors' mix (the
tests' fixtures, in the real on-disk formats), for the README.

    python benchmarks/paper_mix_plan.py [--config configs/self1e_paper_2b.yaml] [--root /tmp/paper-data]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv: list[str] | None = None) -> int:
    from data.fixture_paper import paper_config, write_paper_tree
    from self1e.cli import main as self1e

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/self1e_paper_2b.yaml")
    p.add_argument("--processes", type=int, default=8)
    p.add_argument("--root", default=None, help="an empty folder for the tree (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_paper_tree(Path(args.root) if args.root else Path(tmp) / "data")
        config = paper_config(args.config, root, Path(tmp) / "paper.yaml")
        print(f"# self1e data plan {args.config} --processes {args.processes}   (data root: the fixture tree)")
        return self1e(["data", "plan", str(config), "--processes", str(args.processes)])


if __name__ == "__main__":
    sys.exit(main())
