"""How long building a file source takes now that every image is fully decoded and every WAV header checked at
build (issue 19: a truncated file gets the same answer streaming or in memory).

    PYTHONPATH=src python3 bench/data_build.py [--images 2000] [--audio DIR]

Prints seconds per build for a streaming image folder of generated 64×64 PNGs and, when the free-spoken-digit
recordings are present (../shared/data), for that audio folder. Run it against another checkout's ``src`` to
compare.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vaekit.config.schema import DataConfig
from vaekit.data import build_data

FSDD = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "free-spoken-digit-dataset" / "recordings"


def _timed(name: str, cfg: DataConfig, repeats: int = 3) -> None:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bundle = build_data(cfg, 0)
        times.append(time.perf_counter() - start)
    print(f"{name}: build {min(times):.2f} s (best of {repeats}; {len(bundle.train)} train)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--audio", type=Path, default=FSDD)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(Path(tmp) / f"{i}.png")
        cfg = DataConfig(source="image_folder", path=tmp, in_memory="never")
        _timed(f"image_folder streaming, {args.images} PNG 64x64", cfg)
    if args.audio.is_dir():
        _timed(f"audio_folder {args.audio.name}", DataConfig(source="audio_folder", path=str(args.audio)))


if __name__ == "__main__":
    main()
