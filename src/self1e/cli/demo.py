"""`self1e demo`: not implemented yet."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="(not implemented yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise ValueError("'self1e demo' is not implemented yet")
