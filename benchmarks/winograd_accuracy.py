"""How close each backend's Winograd path comes to its accuracy contract: the worst
|error| / bound per adversarial case, dtype and result (the bound: 1e-5 * S + 1e-4 *
|exact| in float32, 1e-12 * S in float64, S the largest sum of |terms|; the contract
holds below 1). The cases and the bound are the tests' (tests/helpers/
winograd_contract.py: wide dynamic range, deep channels, constant sign, one huge value).

    .venv/bin/python benchmarks/winograd_accuracy.py [--backend cpp,numba,cuda-emu]

Each case runs with seed 0 (the tests also run other seeds for the one-huge cases).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import winograd_contract as contract  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cpp,numba,cuda-emu",
                    help="comma list of backends with a 'winograd' algorithm")
    args = ap.parse_args(argv)
    results = ("y", "grad_x", "grad_weight")
    print(f"{'backend':9s} {'dtype':8s} {'case':28s}" + "".join(f"{r:>12s}" for r in results))
    for backend in args.backend.split(","):
        worst = {}
        for dtype in (np.float32, np.float64):
            for case in contract.ADVERSARIAL_2D:
                x, w, gy, b, kw = contract.adversarial_case(case, 0)
                got = contract.check(x, w, gy, b, kw, dtype, case[0], backend)
                name = contract.adversarial_id(case)
                print(f"{backend:9s} {np.dtype(dtype).name:8s} {name:28s}"
                      + "".join(f"{got[r]:12.2e}" for r in results), flush=True)
                key = np.dtype(dtype).name
                worst[key] = max(worst.get(key, 0.0), *got.values())
        print(f"{backend}: worst |err| / bound " +
              ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
