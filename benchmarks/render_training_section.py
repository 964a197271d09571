#!/usr/bin/env python
"""Put the recorded training runs into a Markdown file, between
``<!-- train:start -->`` and ``<!-- train:end -->``: the per-epoch test accuracy of
the ``cnn`` and ``dense`` models, read from the ``metrics.jsonl`` files that
``cnnfast train`` wrote (copied to ``benchmarks/results/train/``), never typed.

    python benchmarks/render_training_section.py README.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

START, END = "<!-- train:start -->", "<!-- train:end -->"
RESULTS = Path(__file__).resolve().parent / "results" / "train"
COMMANDS = {
    "cnn": "cnnfast train --model cnn --epochs 10 --batch-size 64 --optimizer adam "
           "--backend cpp --seed 0 --out runs/cnn",
    "dense": "cnnfast train --model dense --epochs 10 --batch-size 64 --optimizer adam "
             "--seed 0 --out runs/dense",
}


def load(name):
    with open(RESULTS / f"{name}.metrics.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def render() -> str:
    runs = {name: load(name) for name in COMMANDS}
    epochs = max(len(r) for r in runs.values())
    lines = ["Test accuracy on the 10,000 Fashion-MNIST test images after each epoch "
             "(Adam, lr 1e-3, batch 64, float32, seed 0), from the runs' own "
             "`metrics.jsonl` in `benchmarks/results/train/`:", "",
             "| epoch | " + " | ".join(f"`{n}`" for n in runs) + " |",
             "|---:|" + "---:|" * len(runs)]
    for e in range(epochs):
        cells = [f"{r[e]['test_acc'] * 100:.2f}%" if e < len(r) else "" for r in runs.values()]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, r in runs.items():
        peak = max(m.get("peak_rss_mb", 0) for m in r)
        lines.append(f"- `{name}`: `{COMMANDS[name]}`; peak resident memory "
                     f"{peak:.0f} MB.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", type=Path)
    args = parser.parse_args(argv)
    text = args.markdown.read_text()
    if START not in text or END not in text:
        print(f"{args.markdown}: markers {START} / {END} not found")
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = head + START + "\n" + render() + END + tail
    fd, tmp = tempfile.mkstemp(dir=args.markdown.parent, prefix=".readme-")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
