"""Why does a model miss "how many" questions? Two measures on RefShapes counting questions.

1. Its greedy answers against the truth, as a confusion table (fresh ``test`` questions).
2. A probe: the language model's last hidden state at the position that predicts the answer word,
   taken on fresh ``train`` questions, and a linear classifier (softmax regression, fitted by torch)
   trained on most of them to tell the true count, scored on the rest. If the probe does no better
   than the model, the count is not in that state: the LM head is not what loses it.

    python benchmarks/count_probe.py --model default [--model runs/x/final ...]
"""
from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "count_probe.json"


def counting_samples(split: str, seed: int, n: int) -> list:
    from self1e.data.refshapes import iter_vqa_samples

    stream = (s for s in iter_vqa_samples(split, seed, 50 * n + 50) if s.kind == "vqa-count")
    return list(itertools.islice(stream, n))


def answers_and_states(predictor, samples) -> tuple[list[str], np.ndarray]:
    """Greedy normalised answers, and the final-norm hidden state at the last prompt position."""
    from self1e.eval.chat import normalise_answer

    grab: list[torch.Tensor] = []
    norm = predictor.model.backbone.language_model.norm

    def first_call(module, inputs, out):  # the prompt's pass (then one call per generated token)
        if not grab:
            grab.append(out[0, -1].detach().float())

    handle = norm.register_forward_hook(first_call)
    answers, states = [], []
    try:
        for s in samples:
            predictor.set_image(s.load_image())
            grab.clear()
            answers.append(normalise_answer(predictor.chat(s.question, max_new_tokens=4).text))
            states.append(grab[0].numpy())
    finally:
        handle.remove()
    return answers, np.stack(states)


def linear_probe(x: np.ndarray, y: np.ndarray, n_train: int, steps: int = 1500, seed: int = 0) -> float:
    """Accuracy on ``x[n_train:]`` of softmax regression fitted on ``x[:n_train]`` (standardised)."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x[:n_train]), torch.from_numpy(y[:n_train])
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    net = torch.nn.Linear(x.shape[1], len(NUMBERS))
    opt = torch.optim.Adam(net.parameters(), 3e-3, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net((xt - mu) / sd), yt).backward()
        opt.step()
    with torch.no_grad():
        pred = net((torch.from_numpy(x[n_train:]) - mu) / sd).argmax(1).numpy()
    return float((pred == y[n_train:]).mean())


def measure(model: str, questions: int, probe_train: int, probe_test: int, seed: int) -> dict:
    from self1e.eval.chat import normalise_answer
    from self1e.inference import Self1ePredictor

    predictor = Self1ePredictor.from_pretrained(model, device="cpu")
    test = counting_samples("test", seed, questions)
    answers, _ = answers_and_states(predictor, test)
    truth = [normalise_answer(s.answer) for s in test]
    confusion = Counter(zip(truth, answers))
    by_truth = {t: {"n": sum(v for (a, _), v in confusion.items() if a == t),
                    "right": confusion[(t, t)]} for t in NUMBERS if any(a == t for a, _ in confusion)}
    train = counting_samples("train", seed + 1, probe_train + probe_test)
    probe_answers, states = answers_and_states(predictor, train)
    y = np.array([NUMBERS.index(normalise_answer(s.answer)) for s in train])
    held = y[probe_train:]
    return {"model": model, "questions": len(test),
            "exact_match": float(np.mean([a == t for a, t in zip(answers, truth)])),
            "by_true_count": by_truth,
            "confusion": [{"truth": t, "answer": a, "n": n} for (t, a), n in sorted(confusion.items())],
            "probe": {"train": probe_train, "test": len(held),
                      "accuracy": linear_probe(states, y, probe_train),
                      "model_on_the_same": float(np.mean([NUMBERS[t] == a for t, a in
                                                          zip(held, probe_answers[probe_train:])])),
                      "majority_answer": float(np.bincount(held).max() / len(held))}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="a model (repeatable; default: the shipped one)")
    ap.add_argument("--questions", type=int, default=200, help="fresh test counting questions")
    ap.add_argument("--probe-train", type=int, default=2000, help="train-split questions the probe is fitted on")
    ap.add_argument("--probe-test", type=int, default=400, help="train-split questions it is scored on")
    ap.add_argument("--seed", type=int, default=2027)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"seed": args.seed, "results": [measure(m, args.questions, args.probe_train, args.probe_test, args.seed)
                                             for m in args.model or ["default"]]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for r in report["results"]:
        p = r["probe"]
        counts = ", ".join(f"{t} {v['right']}/{v['n']}" for t, v in r["by_true_count"].items())
        print(f"{r['model']}: exact {r['exact_match']:.1%} on {r['questions']} ({counts}); linear probe "
              f"{p['accuracy']:.1%} on {p['test']} (the model {p['model_on_the_same']:.1%}, majority answer "
              f"{p['majority_answer']:.1%})")
    return report


if __name__ == "__main__":
    main()
