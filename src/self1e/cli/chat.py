"""`self1e chat`: talk with the model about an image in the terminal; every [SEG] it writes becomes a mask.

    self1e chat --model default --image scene.png                   # interactive (/reset, /quit)
    self1e chat --model default --image scene.png --message "Can you segment the red circle?"

Each turn prints the answer and, for every [SEG], the phrase it answers and the overlay and mask
files written to --out (turn<T>_<K>.png and turn<T>_<K>_mask.png).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from self1e.cli.options import add_device, add_model, add_quantize, add_settings, quantize_from, settings_from


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk about an image; answers with [SEG] come with masks",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p)
    p.add_argument("--image", required=True, metavar="PATH", help="any image file Pillow reads")
    p.add_argument("--message", action="append", metavar="TEXT",
                   help="one turn (repeat for several, as one conversation); without it, read turns from stdin")
    p.add_argument("--out", default="chat-out", metavar="DIR",
                   help="folder for the overlays and masks of [SEG] answers (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="answer length limit (default: 64)")
    p.add_argument("--sample", action="store_true", help="sample the answer instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, metavar="T", help="with --sample (default: 0.7)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="with --sample: repeatable answers")
    add_device(p)
    add_quantize(p)
    add_settings(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from self1e.common.files import check_outputs
    from self1e.common.images import save_image, to_rgb, write_mask_png
    from self1e.common.overlay import overlay
    from self1e.inference import Self1ePredictor
    from self1e.inference.predictor import pick_device

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if Path(args.out).is_file():
        raise ValueError(f"--out {args.out} is a file; give a folder for the overlays and masks")
    pick_device(args.device)
    image = to_rgb(args.image)  # fails early, naming the file, before the model loads
    predictor = Self1ePredictor.from_pretrained(args.model, device=args.device, config=settings_from(args),
                                                threads=args.threads, quantize=quantize_from(args))
    predictor.set_image(image)
    out = Path(args.out)
    interactive = not args.message
    messages = args.message or _stdin_turns()
    history: list = []
    for turn, message in enumerate(messages, start=1):
        if message.strip() == "/quit":
            break
        if message.strip() == "/reset":
            history = []
            print("(conversation reset)")
            continue
        if not message.strip():
            continue
        response = predictor.chat(message, history=history, max_new_tokens=args.max_new_tokens,
                                  do_sample=args.sample, temperature=args.temperature, seed=args.seed)
        history = response.history
        print(f"assistant: {response.text}", flush=True)
        for k, seg in enumerate(response.segments, start=1):
            picture, mask_file = out / f"turn{turn}_{k}.png", out / f"turn{turn}_{k}_mask.png"
            check_outputs({"--out": [picture, mask_file]}, {"--image": [args.image]})
            save_image(overlay(image, seg.mask, seg.text), picture)
            write_mask_png(seg.mask, mask_file)
            print(f"  [SEG] {k}: {seg.text!r}, {int(seg.mask.sum())} px, score {seg.score:.3f} -> {picture}")
        if interactive:
            print("you: ", end="", flush=True)
    return 0


def _stdin_turns():
    if sys.stdin.isatty():
        print("Ask about the image (/reset starts over, /quit or Ctrl-D ends).\nyou: ", end="", flush=True)
    for line in sys.stdin:
        yield line.rstrip("\n")
