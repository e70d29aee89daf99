"""Input-pipeline throughput: decoded samples/s from webdataset shards vs from a folder, with DataLoader workers.

Two workloads, each read through vaekit's own `BatchLoader` (the path training takes), one epoch per trial:

- images: JPEG frames of the shared clips (``../shared/data/video``; 340x256 / 320x240 photos of people), decoded,
  resized and centre-cropped to 256x256; ``image_folder`` (streaming, ``in_memory=never``) vs the same files packed
  by ``vaekit shard``;
- clips: 17-frame 256x256 clips of the shared video files; ``video_folder`` (every 17-frame slot of each file) vs
  shards of the original video bytes (``vaekit shard`` of the folder: one random clip per file per epoch) and vs
  shards of decoded uint8 clips (``vaekit shard`` of the video_folder config: no video decoding at read time).

The machine this runs on is shared and loaded (2 cores, several other jobs): absolute samples/s move with the
load, so trials are interleaved (folder, shards, folder, shards, ...) and the figure to read is the per-pair
ratio shards/folder and its median.

    python bench/data_throughput.py [--images 512] [--trials 3] [--workers 2] [--batch 16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vaekit.config.load import load_config
from vaekit.data import BatchLoader, build_data
from vaekit.data.pack import shard

REPO = Path(__file__).resolve().parents[1]
SHARED = next((p for p in (REPO.parent / "shared" / "data" / "video", REPO.parent.parent / "shared" / "data" / "video")
               if p.is_dir()), REPO.parent / "shared" / "data" / "video")
"""``../shared/data/video`` beside the checkout (or beside the worktrees' folder); ``--video`` overrides it."""


def frames_folder(out: Path, n: int) -> Path:
    """``n`` JPEG frames of the shared clips (every 2nd frame, cycling through the files)."""
    import av

    out.mkdir(parents=True)
    videos = sorted(SHARED.glob("*.mp4"))
    if not videos:
        raise SystemExit(f"{SHARED}: no .mp4 files (pass --video DIR)")
    k = 0
    while k < n:
        for video in videos:
            with av.open(str(video)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i % 2 == 0 and k < n:
                        frame.to_image().save(out / f"{k:05d}.jpg", quality=90)
                        k += 1
            if k >= n:
                break
    return out


def samples_per_sec(overrides: list[str], workers: int, batch: int) -> tuple[float, int]:
    cfg = load_config(None, [*overrides, f"data.num_workers={workers}", "data.val_fraction=0", "data.in_memory=never"])
    source = build_data(cfg.data, 0).train
    loader = BatchLoader(source, batch, shuffle=True, drop_last=False, seed=0, num_workers=workers)
    start, n = time.perf_counter(), 0
    for b in loader:
        n += len(b["x"])
    return n / (time.perf_counter() - start), n


def compare(name: str, folder: list[str], shards: dict[str, list[str]], args: argparse.Namespace) -> dict:
    rows: dict[str, list[float]] = {"folder": [], **{k: [] for k in shards}}
    counts = {}
    for _ in range(args.trials):  # interleaved: folder, then each shard kind, per trial
        for kind, ov in [("folder", folder), *shards.items()]:
            rate, counts[kind] = samples_per_sec(ov, args.workers, args.batch)
            rows[kind].append(rate)
            print(f"{name}: {kind} {rate:.1f} samples/s ({counts[kind]} samples)", flush=True)
    result = {"workload": name, "samples_per_epoch": counts, "samples_per_sec": rows}
    for kind in shards:
        ratios = [s / f for s, f in zip(rows[kind], rows["folder"], strict=True)]
        result[f"ratio_{kind}_over_folder"] = {"per_trial": ratios, "median": statistics.median(ratios)}
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--clips", type=int, default=24, help="17-frame clips read from the video folder per epoch")
    p.add_argument("--skip-images", action="store_true")
    p.add_argument("--video", help="the folder of video files (default ../shared/data/video)")
    p.add_argument("--json")
    args = p.parse_args()
    if args.video:
        global SHARED
        SHARED = Path(args.video)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_images:
            imgs = frames_folder(root / "frames", args.images)
            shard(str(imgs), str(root / "img-shards"), 128)
            size = ["data.image_size=256"]
            results.append(compare("images 256x256", ["data.source=image_folder", f"data.path={imgs}", *size],
                                   {"shards": ["data.source=webdataset", f"data.path={root}/img-shards", *size]}, args))
        clip = ["data.image_size=256", "data.frames=17", f"data.num_samples={args.clips}"]
        video = ["data.source=video_folder", f"data.path={SHARED}", *clip]
        shard(str(SHARED), str(root / "mp4-shards"), 8)
        shard_cfg = root / "video.yaml"
        shard_cfg.write_text(f"data: {{source: video_folder, path: {SHARED}, image_size: 256, frames: 17, "
                             f"val_fraction: 0, in_memory: never, num_samples: {args.clips}}}\n")
        shard(str(shard_cfg), str(root / "npy-shards"), 8, splits=["train"])
        results.append(compare("clips 17x256x256", video, {
            "shards_of_video_files": ["data.source=webdataset", f"data.path={root}/mp4-shards", *clip],
            "shards_of_decoded_clips": ["data.source=webdataset", f"data.path={root}/npy-shards", *clip],
        }, args))
    for r in results:
        print(f"\n{r['workload']} ({args.workers} workers, batch {args.batch}; samples/epoch {r['samples_per_epoch']})")
        for kind, rates in r["samples_per_sec"].items():
            print(f"  {kind:26s} samples/s per trial: {', '.join(f'{x:7.1f}' for x in rates)}")
        for key, v in r.items():
            if key.startswith("ratio_"):
                print(f"  {key:40s} median {v['median']:.2f}  (per trial {', '.join(f'{x:.2f}' for x in v['per_trial'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
