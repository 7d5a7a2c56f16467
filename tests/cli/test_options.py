"""The command line's options: instant --help without torch, documented flags, shared flags defined once."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from self1e.cli import build_parser

PROBE = """
import json, sys
from self1e.cli import main
try:
    main({argv!r})
    code = 0
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}}))
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0),
    (["eval", "--help"], 0),
    (["train", "--help"], 0),
    (["segment"], 2),  # missing required arguments: an argparse error
])
def test_help_and_argument_errors_do_not_import_torch(argv, code):
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == code, (result, proc.stderr[-2000:])
    assert not result["torch"], f"self1e {' '.join(argv)} imported torch"
    assert not result["transformers"], f"self1e {' '.join(argv)} imported transformers"
    if code == 2:
        assert "required" in proc.stderr and "self1e segment" in proc.stderr
    else:
        assert "usage: self1e" in proc.stdout


def subparsers(parser: argparse.ArgumentParser, prefix: str = "self1e") -> dict[str, argparse.ArgumentParser]:
    """Every (nested) sub-parser by its command line, e.g. 'self1e data synth'."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[f"{prefix} {name}"] = sub
                out.update(subparsers(sub, f"{prefix} {name}"))
    return out


PARSER = build_parser()
ALL = {"self1e": PARSER, **subparsers(PARSER)}


def optionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_sub_command_is_walked():
    assert {"self1e segment", "self1e eval", "self1e train", "self1e demo", "self1e import-authors",
            "self1e data", "self1e data synth", "self1e data convert", "self1e data check"} <= set(ALL)


def test_every_option_has_help_and_a_metavar_or_choices():
    bad = []
    for cmd, parser in ALL.items():
        for a in optionals(parser):
            flag = "/".join(a.option_strings)
            if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
                if not (a.help or "").strip():
                    bad.append(f"{cmd} {flag}: flag without help")
                continue
            if not (a.help or "").strip() or a.help == argparse.SUPPRESS:
                bad.append(f"{cmd} {flag}: no help")
            if a.metavar is None and not a.choices:
                bad.append(f"{cmd} {flag}: neither metavar nor choices")
    assert not bad, "undocumented options:\n" + "\n".join(bad)


@pytest.mark.parametrize("flag", ["--device", "--model"])
def test_shared_flags_have_one_help_text(flag):
    from self1e.cli import options

    reference = argparse.ArgumentParser()
    getattr(options, f"add_{flag.lstrip('-')}")(reference)
    expected = next(a for a in reference._actions if flag in a.option_strings)
    seen = {}
    for cmd, parser in ALL.items():
        for a in optionals(parser):
            if flag in a.option_strings:
                seen[cmd] = (a.help, a.metavar)
    assert len(seen) >= 3, seen  # segment, eval, demo at least
    differing = {cmd: v for cmd, v in seen.items() if v[0] != expected.help or v[1] != expected.metavar}
    # --model's help may only differ by the "(default: ...)" suffix that add_model appends for a default
    if flag == "--model":
        base = expected.help.replace(" (default: %(default)s)", "")
        differing = {cmd: v for cmd, v in differing.items()
                     if v[0].replace(" (default: %(default)s)", "") != base or v[1] != expected.metavar}
    assert not differing, f"{flag} defined differently in: {differing}"


def test_eval_counts_overlays_and_segment_writes_one():
    ev = {s: a for a in optionals(ALL["self1e eval"]) for s in a.option_strings}
    assert "--num-overlays" in ev and "--overlays" not in ev
    assert ev["--num-overlays"].type is int and ev["--num-overlays"].default == 0
    args = ALL["self1e eval"].parse_args(["--model", "m", "--data", "d", "--out", "r.json", "--num-overlays", "3"])
    assert args.num_overlays == 3
    with pytest.raises(SystemExit):  # a count, not a path
        ALL["self1e eval"].parse_args(["--model", "m", "--data", "d", "--out", "r.json", "--num-overlays", "x/"])

    seg = {s: a for a in optionals(ALL["self1e segment"]) for s in a.option_strings}
    overlay = seg["--overlay"]
    assert overlay.type in (None, str) and overlay.nargs is None and overlay.metavar == "PATH"
    args = ALL["self1e segment"].parse_args(["--image", "a.png", "--text", "t", "--out", "m.png",
                                             "--overlay", "o/over.png"])
    assert args.overlay == "o/over.png"
