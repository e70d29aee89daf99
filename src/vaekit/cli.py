"""The ``vaekit`` command: train | validate | presets.

Imports torch only inside the commands that need it, so ``vaekit --help`` answers at once. Errors a user can fix
(config, data, missing weights) are one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """examples:
  vaekit train                                   # conv VAE on the built-in shapes data, a few minutes on CPU
  vaekit train cfg.yaml train.epochs=5 optim.lr=3e-4
  vaekit train --preset beta-vae data.source=mnist data.path=DIR
  vaekit train --preset tags-medium,beta-vae data.source=tags data.path=tags.csv   # presets compose in order
  vaekit train --resume runs/shapes-conv-20260101-120000
  vaekit validate cfg.yaml                       # check and summarise without training
  vaekit train examples/audio_digits.yaml        # one example config per modality in examples/
  vaekit eval runs/RUN --split test              # metrics, a table and figures under runs/RUN/eval/
  vaekit compare runs/A runs/B --out cmp         # several models on the same batches
  vaekit export RUN_DIR --format diffusers       # a folder AutoencoderKL.from_pretrained loads
  vaekit sweep cfg.yaml --trials 8 --param optim.lr=loguniform:1e-4:1e-2 --param loss.beta=choice:1,4,10
  vaekit shard images/ --out shards/ --samples-per-shard 1000   # then data.source=webdataset data.path=shards/
  vaekit encode RUN_DIR --out latents/           # latent shards + stats.json (scale/shift) + manifest.json
  vaekit export RUN_DIR --format hub             # weights, configs and a model card; then `vaekit push`
"""


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """First positional is a config file unless it looks like an override (contains '=')."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vaekit",
        description="Train variational autoencoders on images, video, audio and tables.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    p_train = sub.add_parser("train", help="train a model (defaults: conv VAE on procedural shapes; --preset beta-vae for β=4)")
    p_train.add_argument("args", nargs="*", metavar="[CONFIG] [key.path=value ...]")
    p_train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p_train.add_argument("--preset", action="append", metavar="NAME[,NAME]",
                         help="start from named presets, applied in order, a later one winning (see `vaekit presets`); "
                         "repeat it or separate names with commas; accepted anywhere among the overrides")

    p_val = sub.add_parser("validate", help="check a config and print what it would train, without training")
    p_val.add_argument("args", nargs="*", metavar="[CONFIG] [key.path=value ...]")
    p_val.add_argument("--preset", action="append", metavar="NAME[,NAME]",
                       help="start from named presets, applied in order (as for train)")
    p_val.add_argument("--no-data", action="store_true", help="do not read the data (no sizes, no parameter count)")

    sub.add_parser("presets", help="list the named presets")

    p_eval = sub.add_parser("eval", help="evaluate a run: metrics JSON, a table and figures under RUN_DIR/eval/")
    p_eval.add_argument("run_dir", metavar="RUN_DIR")
    p_eval.add_argument(
        "overrides", nargs="*", metavar="key.path=value", help="data overrides, e.g. data.num_samples=500"
    )
    p_eval.add_argument("--split", default="auto", choices=["auto", "val", "test", "train"],
                        help="auto (default): the run's test split when it has one, else val")
    p_eval.add_argument("--checkpoint", metavar="PATH", help="a checkpoint directory (checkpoints/step_XXXXXXXX)")
    p_eval.add_argument("--ema", action="store_true", help="with --checkpoint: its ema.safetensors")
    p_eval.add_argument("--tiled", type=int, metavar="TILE", help="tiled vs untiled reconstruction with windows of "
                        "TILE pixels: the error near the seams vs inside (eval/tiled-<split>.json)")
    p_eval.add_argument("--overlap", type=int, metavar="PX", help="with --tiled: window overlap (default TILE/4)")
    p_eval.add_argument("--tile-frames", type=int, metavar="T", help="with --tiled, video: temporal chunk length")
    p_eval.add_argument("--frame-overlap", type=int, default=0, metavar="T", help="with --tile-frames: overlap")
    _eval_options(p_eval)

    p_cmp = sub.add_parser("compare", help="evaluate several runs on the same batches: compare.json/.md/.png")
    p_cmp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run directories or model.safetensors")
    p_cmp.add_argument("--data", nargs="+", metavar="CONFIG_OR_OVERRIDES", help="a YAML config or data overrides")
    p_cmp.add_argument("--out", metavar="DIR", help="output directory (default: ./compare-YYYYmmdd-HHMMSS)")
    p_cmp.add_argument("--split", default="val", choices=["val", "test", "train"])
    _eval_options(p_cmp)

    _sweep_parser(sub)

    p_exp = sub.add_parser("export", help="write a run's weights (LoRA merged) as model.safetensors or a diffusers folder")
    p_exp.add_argument("run_dir", metavar="RUN_DIR")
    p_exp.add_argument("--format", default="safetensors", choices=["safetensors", "diffusers", "hub"],
                       help="safetensors: OUT/model.safetensors (default OUT: RUN_DIR/export); diffusers: a "
                       "save_pretrained folder (default OUT: RUN_DIR/diffusers); hub: a folder ready to upload with "
                       "a model card (default OUT: RUN_DIR/hub)")
    p_exp.add_argument("--checkpoint", metavar="PATH", help="a checkpoint directory instead of the run's export")
    p_exp.add_argument("--out", metavar="DIR", help="output folder")
    _data_commands(sub)
    return parser


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="an Optuna study over config keys: one run per trial, resumable, tables + plot")
    p.add_argument("args", nargs="*", metavar="[CONFIG] [key.path=value ...]")
    p.add_argument("--trials", type=int, help="trials in total (a continued sweep runs the missing ones)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=DIST",
                   help="a searched key: loguniform:LO:HI, uniform:LO:HI, int:LO:HI, intlog:LO:HI, choice:A,B,C")
    p.add_argument("--metric", help="the record to optimise, e.g. val/loss (default: sweep.metric)")
    p.add_argument("--direction", choices=["minimize", "maximize"])
    p.add_argument("--jobs", type=int, help="trials at once")
    p.add_argument("--nproc", type=int, help="processes per trial (torchrun)")
    p.add_argument("--pruner", choices=["median", "none"])
    p.add_argument("--dir", help="the sweep directory (default: {run.dir}/sweep-{run.name})")


def _sweep_command(args: argparse.Namespace) -> int:
    from vaekit.sweep.runner import run_sweep
    from vaekit.sweep.spec import build_spec

    config, overrides = _split_args(args.args)
    flags = {"trials": args.trials, "metric": args.metric, "direction": args.direction, "jobs": args.jobs,
             "nproc": args.nproc, "pruner": args.pruner, "dir": args.dir}
    spec = build_spec(config, overrides, flags, args.param)
    result = run_sweep(spec)
    best = result["best"]
    if best is not None:
        print(f"best: trial {best['trial']} {result['metric']}={best['value']:.5g} {best['params']}", file=sys.stderr)
    failed = [r["trial"] for r in result["trials"] if r["state"] == "fail"]
    if failed:
        print(f"warning: {len(failed)} trial(s) failed: {failed} (their output: "
              f"{spec.directory / 'trials'}/trial-NNNN.log)", file=sys.stderr)
    print(spec.directory / "results.md")
    return 0 if best is not None else 1  # a study in which no trial completed has no answer


# ------------------------------------------------------------------ shards and latents (issue 16)
def _data_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shard", help="pack a folder, table or config's data into webdataset tar shards")
    p.add_argument("src", metavar="SRC", help="a folder (images, sound or video files), a table file or a YAML config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="data overrides for a config or table")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder for the shards")
    p.add_argument("--samples-per-shard", type=int, default=1000, metavar="N")
    p.add_argument("--labels", choices=["none", "folder"], default="none",
                   help="folder: the class folder's index as each sample's cls member")
    p.add_argument("--split", nargs="+", choices=["train", "val", "test"], default=None,
                   help="a config's splits to pack (default: train; several go into one set, which the webdataset source splits again)")

    p = sub.add_parser("encode", help="encode a data set with a run's model: latent shards, stats.json, manifest.json")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", nargs="+", metavar="CONFIG_OR_OVERRIDES", help="a YAML (its data section) or data.* "
                   "overrides (default: the run's own data)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder (or one this encode left unfinished)")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--mean", dest="mode", action="store_const", const="mean", help="the posterior mean (default)")
    mode.add_argument("--sample", dest="mode", action="store_const", const="sample", help="one posterior draw")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "webdataset"])
    p.add_argument("--samples-per-chunk", type=int, default=1024, metavar="N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda, else mps, else cpu)")
    _tiling_options(p)

    p = sub.add_parser("push", help="upload a run's hub export (vaekit export --format hub) to the Hugging Face hub")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("repo_id", metavar="REPO_ID", help="owner/name on the hub")
    p.add_argument("--private", action="store_true")

    p = sub.add_parser("decode", help="decode latents written by `vaekit encode` back to images, wavs or mp4s")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("latents", metavar="LATENTS")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda, else mps, else cpu)")
    _tiling_options(p)


def _tiling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tile", type=int, metavar="PX", help="work in blended windows of PX pixels (large inputs)")
    p.add_argument("--overlap", type=int, default=None, metavar="PX", help="with --tile: overlap (default PX/4)")
    p.add_argument("--tile-frames", type=int, metavar="T", help="with --tile, video: temporal chunks of T frames")
    p.add_argument("--frame-overlap", type=int, default=0, metavar="T")


def _tiling(args: argparse.Namespace) -> dict | None:
    if not args.tile:
        return None
    overlap = args.tile // 4 if args.overlap is None else args.overlap
    return {"tile": args.tile, "overlap": overlap, "frames": args.tile_frames, "frame_overlap": args.frame_overlap}


def _data_dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "shard":
        from vaekit.data.pack import shard

        out = shard(args.src, args.out, args.samples_per_shard, overrides=args.overrides,
                    labels=args.labels == "folder", splits=args.split)
        print(out)
        return 0
    if args.command == "encode":
        from vaekit.latents.encode import encode_dataset

        out = encode_dataset(args.run_dir, args.out, data=args.data, split=args.split, mode=args.mode or "mean",
                             fmt=args.format, batch_size=args.batch_size, per_chunk=args.samples_per_chunk,
                             device=args.device, tiling=_tiling(args))
        if (out / "manifest.json").is_file():
            print(out)
        return 0
    if args.command == "push":
        from vaekit.pipeline.hub import push

        print(push(args.run_dir, args.repo_id, private=args.private))
        return 0
    if args.command == "decode":
        from vaekit.latents.encode import decode_latents

        print(decode_latents(args.run_dir, args.latents, args.out, batch_size=args.batch_size, device=args.device,
                             tiling=_tiling(args)))
        return 0
    return None


def _eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batches", type=int, metavar="N", help="only the first N batches (default: the whole split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--k", type=int, default=64, help="importance samples per input for the IWAE bound")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", help="comma-separated metric names (default: those that fit the data)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda, else mps, else cpu)")
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"], help="LPIPS backbone")
    p.add_argument("--lpips-weights", metavar="PATH",
                   help="the LPIPS backbone's torchvision weights file (default: the torch hub cache; without "
                   "them LPIPS is skipped, and said so)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # train/validate: overrides after an option (`--preset a x=1`) are overrides too
        if args.command not in ("train", "validate") or any(item.startswith("-") for item in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args = [*args.args, *extra]
    if args.version:
        from vaekit import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _dispatch(args)
    except KeyboardInterrupt as err:
        text = str(err) or "interrupted; resume with `vaekit train --resume RUN_DIR`"
        print(f"vaekit: {text}", file=sys.stderr)
        return 130
    except Exception as err:  # user-fixable problems become one line; everything else is a real bug
        from vaekit.errors import user_message

        found = user_message(err)
        if found is None:
            raise
        line, code = found
        print(f"vaekit: {line}", file=sys.stderr)
        return code
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down a process group this command started (torchrun / accelerate launch) before the interpreter exits:
    left to exit-time destructors, gloo's threads can abort a process whose peer is still finishing."""
    torch_dist = sys.modules.get("torch.distributed")
    if torch_dist is None or not torch_dist.is_available() or not torch_dist.is_initialized():
        return
    try:
        torch_dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit; the command's own result stands
        pass


def run() -> None:
    """The ``vaekit`` command. Under a launcher (several processes) the process ends with ``os._exit`` once its
    files are closed: C++ destructors of the torch/gloo runtime that run at interpreter exit aborted a finished
    rank now and then on a loaded machine ('terminate called without an active exception', exit -6)."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _dispatch(args: argparse.Namespace) -> int:
    done = _data_dispatch(args)
    if done is not None:
        return done
    if args.command == "presets":
        from vaekit.config.load import list_presets

        for name, text in list_presets().items():
            print(f"{name:15s} {text}")
        return 0

    if args.command == "export":
        from vaekit.pipeline.export import export_run

        print(export_run(args.run_dir, args.format, args.checkpoint, args.out))
        return 0

    if args.command == "sweep":
        return _sweep_command(args)

    if args.command in ("eval", "compare"):
        return _eval_command(args) if args.command == "eval" else _compare_command(args)

    config, overrides = _split_args(args.args)
    if args.command == "validate":
        from vaekit.config.load import load_config
        from vaekit.pipeline.summary import summarize

        cfg = load_config(config, overrides, preset=args.preset)
        _check_weights(cfg)
        print(summarize(cfg, build=not args.no_data))
        _print_warnings(cfg)
        print("config OK")
        return 0

    # train: the config is checked before torch is imported, so a typo answers at once
    from vaekit.config.load import load_config, resolve_dict

    if args.resume:
        if config is not None:
            overrides = [config, *overrides] if "=" in config else overrides
        import vaekit.api as api

        result = api.train(resume=args.resume, overrides=overrides)
    else:
        tree = resolve_dict(config, overrides, preset=args.preset)
        cfg = load_config(tree)
        _check_weights(cfg)
        _print_warnings(cfg)
        import vaekit.api as api

        # the merged tree, not the validated config: which keys the user set survives, so loss.recon left unset
        # is resolved from the data as the Python API does
        result = api.train(tree)
    if _is_main():
        print(Path(result.run_dir))
    return 0


def _print_warnings(cfg) -> None:  # noqa: ANN001
    """Settings that are valid but train differently from what they may seem to ask for, on stderr."""
    from vaekit.config.notes import config_warnings

    for line in config_warnings(cfg) if _is_main() else []:
        print(line, file=sys.stderr)


def _check_weights(cfg) -> None:  # noqa: ANN001
    """Pretrained perceptual weights and every stage's ``init_from`` must be on disk before any training starts."""
    from vaekit.objectives.perceptual import check_perceptual_weights
    from vaekit.pipeline.stages import check_init_from, resolve_stages

    stages = resolve_stages(cfg)
    for stage in stages:
        check_perceptual_weights(stage.cfg.loss.perceptual)
    check_init_from(stages)


def _eval_kwargs(args: argparse.Namespace) -> dict:
    from vaekit.errors import ConfigError
    from vaekit.utils import get_device

    if args.lpips_weights and not Path(args.lpips_weights).is_file():
        raise ConfigError(f"--lpips-weights: {args.lpips_weights!r} is not a file")
    return {
        "split": args.split,
        "batches": args.batches,
        "batch_size": args.batch_size,
        "k": args.k,
        "seed": args.seed,
        "metrics": args.metrics.split(",") if args.metrics else None,
        "device": args.device or get_device(),
        "lpips_net": args.lpips_net,
        "lpips_weights": args.lpips_weights,
        "progress": True,
    }


def _eval_command(args: argparse.Namespace) -> int:
    """``vaekit eval``: writes RUN_DIR/eval/<split>-<step>.json and figures beside it; nothing else in the run."""
    import json

    from vaekit.errors import ConfigError
    from vaekit.eval.evaluate import evaluate, load_for_eval, markdown_table, resolve_data

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    if args.ema and not args.checkpoint:
        raise ConfigError("--ema needs --checkpoint (the exported model.safetensors already holds the EMA weights)")
    loaded = load_for_eval(run_dir, args.checkpoint, args.ema)
    if args.tiled:
        return _tiled_eval(args, loaded, run_dir)
    data = resolve_data(args.overrides or None, loaded, args.split)
    split = data.split or args.split
    print(f"evaluating the {split} split ({len(data)} samples){_split_hint(args.split, split)}", file=sys.stderr)
    if data.note:
        print(f"note: {data.note}", file=sys.stderr)
    tag = f"{split}-{loaded.step if loaded.step is not None else 'final'}" + ("-ema" if args.ema else "")
    out = run_dir / "eval"
    result = evaluate(loaded, data, out_dir=out / tag, **{**_eval_kwargs(args), "split": split})
    path = out / f"{tag}.json"
    try:
        path.write_text(json.dumps(result, indent=1))
    except OSError as err:
        from vaekit.eval.load import write_failed

        raise write_failed(err, out) from None
    print(markdown_table({loaded.name: result}))
    for name, reason in result["skipped"].items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(path)
    return 0


def _tiled_eval(args: argparse.Namespace, loaded, run_dir: Path) -> int:  # noqa: ANN001
    """``vaekit eval --tiled``: RUN_DIR/eval/tiled-<split>.json."""
    import json

    from vaekit.eval.tiled import evaluate_tiled

    kw = _eval_kwargs(args)
    result = evaluate_tiled(loaded, args.overrides or None, split=args.split, tile=args.tiled, overlap=args.overlap,
                            frames=args.tile_frames, frame_overlap=args.frame_overlap, batches=args.batches,
                            batch_size=min(args.batch_size, 16), device=kw["device"])
    (run_dir / "eval").mkdir(exist_ok=True)
    path = run_dir / "eval" / f"tiled-{result['split']}.json"
    path.write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")
    print(path)
    return 0


def _compare_command(args: argparse.Namespace) -> int:
    """``vaekit compare``: compare.json, compare.md and compare.png in --out."""
    import time

    from vaekit.eval.evaluate import compare, markdown_table

    data = args.data
    if data and len(data) == 1 and "=" not in data[0]:
        data = data[0]  # a YAML config
    out = Path(args.out or f"compare-{time.strftime('%Y%m%d-%H%M%S')}")
    result = compare(args.runs, data, out_dir=out, **_eval_kwargs(args))
    print(markdown_table(result["results"]))
    skipped: dict[str, str] = {}
    for run in result["results"].values():  # as eval does: what was left out, and why
        skipped.update(run.get("skipped", {}))
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    for note in result["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(out)
    return 0


def _split_hint(asked: str, used: str) -> str:
    if asked == "auto":
        return ": the run's test split (--split val for validation)" if used == "test" else ": the run has no test split"
    return ""


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
