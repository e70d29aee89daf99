"""The audio example against predicting silence: trains ``examples/audio_digits.yaml`` (with any overrides) and
prints the validation MSE of its reconstructions next to the MSE of an all-zero prediction (mean x²).

    PYTHONPATH=src python3 bench/audio_vs_silence.py [key=value ...]     # AVS_DIR=DIR for another run folder

Needs the free spoken digits under /work/shared/data (see examples/audio_digits.yaml).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

import vaekit
from vaekit.config.load import load_config, resolve_dict
from vaekit.data import build_data

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "audio_digits.yaml"
OUT = os.environ.get("AVS_DIR", "/tmp/audio-vs-silence")  # where the run goes (overwritten)


def silence_mse(cfg) -> float:  # noqa: ANN001
    """Per-element MSE of predicting zeros on the validation split (what the ``mse`` term would be)."""
    val = build_data(cfg.data, cfg.run.seed).val
    total, count = 0.0, 0
    for i in range(len(val)):
        x = val[i]["x"].float()
        total += float(x.pow(2).sum())
        count += x.numel()
    return total / count


def main(overrides: list[str]) -> None:
    tree = resolve_dict(EXAMPLE, [f"run.dir={OUT}", "run.overwrite=true", "log.samples=false", "log.progress=false",
                                  *overrides])
    cfg = load_config(tree)
    started = time.time()
    result = vaekit.train(tree)
    val = result.split("val")[-1]
    silence = silence_mse(cfg)
    print(f"steps {result.summary['steps']}  wall {time.time() - started:.0f}s  val mse {val['mse']:.5g}  "
          f"silence mse {silence:.5g}  ratio {val['mse'] / silence:.3f} ({(1 - val['mse'] / silence):.1%} better)")
    torch.save(list(result.history), f"{OUT}/history.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
