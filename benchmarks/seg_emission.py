"""Does the model decide by itself when to answer with [SEG]? With and without the causal LM-loss pass.

Under the bidirectional segmentation mask, the position that predicts [SEG] can see [SEG] (and the
answer) through the image tokens, so an LM loss taken from that pass leaks the answer.
``causal_lm_loss`` takes the LM loss from a second, causal pass instead. This trains the same recipe
twice (only that switch differs) on segmentation *and* VQA (the negatives: questions answered in words),
then measures on held-out samples, with greedy generation as a user gets it: the share of segmentation
requests answered with [SEG], the share of VQA questions answered without it, and the LM loss of the
[SEG] token at its position (teacher-forced, causal, as generation sees it).

    python benchmarks/seg_emission.py --steps 2000
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def seg_token_loss(model_dir: Path, samples: list) -> float:
    """Mean cross-entropy of [SEG] at its position in the canonical answer, from a causal pass."""
    import torch
    import torch.nn.functional as F

    from self1e.model import load_model

    model = load_model(model_dir, config={"seg_attention": "causal"})  # the LM sees what generation sees
    p, losses = model.processor, []
    with torch.no_grad():
        for s in samples:
            image = p.image_input(s.load_image())
            batch = p.segmentation_batch([image], [s.text])
            logits = model(batch, return_lm_logits=True).lm_logits[0]
            pos = int((batch.input_ids[0] == model.seg_token_id).nonzero()[0, 0])
            losses.append(float(F.cross_entropy(logits[pos - 1][None].float(), batch.input_ids[0, pos][None])))
    return sum(losses) / len(losses)


def main(argv: list[str] | None = None) -> int:
    from self1e.data.datasets import load_dataset
    from self1e.eval.chat import evaluate_chat
    from self1e.inference import Self1ePredictor
    from self1e.train.config import load_config
    from self1e.train.loop import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", default="tiny:small112")
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--train-n", type=int, default=60000, help="samples per training dataset (default: %(default)s)")
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--out", default="runs/seg_emission")
    p.add_argument("--results", default="benchmarks/results/seg_emission.json")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    s, n = args.size, args.train_n
    data = (f"data=[{{spec: 'refshapes:train:{n}:1:{s}', ratio: 0.6}}, "
            f"{{spec: 'refshapes-vqa:train:{n}:2:{s}', ratio: 0.4}}]")
    seg_test = load_dataset(f"refshapes:test:{args.test}:9:{s}")
    vqa_test = load_dataset(f"refshapes-vqa:test:{args.test}:9:{s}")
    rows = []
    for causal in (False, True):
        run = Path(args.out) / f"causal_lm_loss-{str(causal).lower()}"
        cfg = load_config(None, [f"model={args.start}", data, f"self1e.causal_lm_loss={str(causal).lower()}",
                                 "self1e.seg_attention=bidirectional", f"max_steps={args.steps}", "lr=2e-3",
                                 "warmup_steps=100", "batch_size=8", "val=null", "save_every=0", "eval_every=0",
                                 "lora.enabled=false", "cpu_threads=2", f"out={run}", "seed=0", *args.overrides])
        final = train(cfg)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        lm = [x["lm_loss"] for x in lines if "lm_loss" in x][-5:]
        chat = evaluate_chat(Self1ePredictor.from_pretrained(final, device="cpu"), segmentation=seg_test,
                             vqa=vqa_test, progress=False)
        rows.append({"causal_lm_loss": causal, "steps": args.steps, "train_lm_loss": sum(lm) / len(lm),
                     "seg_requests_with_seg": chat["segmentation"]["answered_with_seg"],
                     "vqa_without_seg": chat["vqa"]["answered_without_seg"],
                     "vqa_exact_match": chat["vqa"]["exact_match"],
                     "seg_token_loss_causal": seg_token_loss(final, seg_test[:100])})
        print(json.dumps(rows[-1]), flush=True)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
