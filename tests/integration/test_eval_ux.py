"""``vaekit eval`` / ``compare`` for a newcomer (issue 19): the test split by default and said, data named on the
command line (one image, a folder used whole), a note when likelihoods differ, and progress with per-metric times.
Two tiny runs are trained once per module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_tree
from PIL import Image

import vaekit
from vaekit.cli import main

STEPS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ux") / "runs"
    common = {"train": {"max_steps": STEPS, "val_batches": 1}, "data": {"num_samples": 120, "split": [0.8, 0.1, 0.1]}}
    a = vaekit.train(tiny_tree(root, "bce", **common)).run_dir
    b = vaekit.train(tiny_tree(root, "mse", loss={"recon": "mse"}, **common)).run_dir
    return a, b


def test_eval_defaults_to_the_test_split_and_says_which(runs: tuple[Path, Path], capsys) -> None:
    run = runs[0]
    assert main(["eval", str(run), "--batches", "1", "--k", "2", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "evaluating the test split (12 samples): the run's test split (--split val for validation)" in captured.err
    result = json.loads((run / "eval" / f"test-{STEPS}.json").read_text())
    assert result["split"] == "test"
    assert main(["eval", str(run), "--split", "val", "--batches", "1", "--k", "2", "--device", "cpu"]) == 0
    assert "evaluating the val split" in capsys.readouterr().err and (run / "eval" / f"val-{STEPS}.json").is_file()


def test_eval_shows_progress_and_the_time_each_metric_took(runs: tuple[Path, Path], capsys) -> None:
    assert main(["eval", str(runs[0]), "--batches", "1", "--k", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "bce: test" in err  # the bar, named for the model and split
    line = next(x for x in err.splitlines() if "time per metric:" in x)
    assert "forward" in line and "elbo" in line and "iwae" in line and line.rstrip().endswith(" s")


def _image(path: Path, size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_compare_on_one_image_file_evaluates_it(runs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    image = _image(tmp_path / "one.png")
    out = tmp_path / "cmp"
    code = main(["compare", *map(str, runs), "--data", str(image), "--out", str(out), "--k", "2", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "compare.json").read_text())
    assert all(r["samples"] == 1 for r in result["results"].values())


def test_compare_on_a_folder_whose_split_is_empty_uses_all_of_it_and_says_so(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _image(tmp_path / "imgs" / "only.png")  # one image: a 10% validation split of it is empty
    overrides = ["data.source=image_folder", f"data.path={tmp_path / 'imgs'}", "data.split=null",
                 "data.num_samples=null", "data.channels=1"]
    out = tmp_path / "cmp"
    code = main(["compare", *map(str, runs), "--data", *overrides, "--out", str(out), "--k", "2", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "note: the val split is empty; evaluating on all 1 samples of the data" in captured.err
    assert json.loads((out / "compare.json").read_text())["split"] == "all"


def test_compare_notes_that_different_likelihoods_make_elbos_incomparable(
    runs: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--batches", "1", "--out", str(out), "--k", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note: the models use different likelihoods (bce: bce, mse: mse); their neg_elbo / iwae_nll are not " \
           "comparable" in err
    assert "> note: the models use different likelihoods" in (out / "compare.md").read_text()


def _write_video(path: Path, frames: int, size: int = 16) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            pixels = np.full((size, size, 3), (8 * i) % 256, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_eval_of_a_video_folder_run_writes_its_clip(tmp_path: Path, capsys) -> None:
    for k in range(2):
        _write_video(tmp_path / "videos" / f"v{k}.mp4", frames=16)
    tree = tiny_tree(tmp_path / "runs", "video",
                     data={"source": "video_folder", "path": str(tmp_path / "videos"), "frames": 4, "image_size": 16,
                           "num_samples": None, "val_fraction": 0.25},
                     model={"hidden_dims": [4, 8]}, train={"max_steps": 1, "batch_size": 2, "val_batches": 1})
    run = vaekit.train(tree).run_dir
    assert json.loads((run / "data_meta.json").read_text())["fps"] == [30.0]  # a list: int() crashed on it
    assert main(["eval", str(run), "--batches", "1", "--k", "2", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert list((run / "eval").glob("*/recon.mp4"))


def test_a_run_trained_on_arrays_is_evaluated_from_the_cli_on_data_named_there(tmp_path: Path, capsys) -> None:
    x = torch.rand(120, 1, 8, 8)
    run = vaekit.train(model={"arch": "mlp", "latent_dim": 2, "hidden_dims": [8]}, train_data=x,
                       overrides=[f"run.dir={tmp_path / 'runs'}", "train.max_steps=2", "log.progress=false",
                                  "log.samples=false", "log.plots=false", "log.tensorboard=false"]).run_dir
    assert main(["eval", str(run), "--batches", "1", "--k", "2", "--device", "cpu"]) == 2
    assert "on the command line name the data" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", x.reshape(120, -1).numpy())
    args = ["eval", str(run), "data.source=table", f"data.path={tmp_path / 'x.npy'}", "data.shape=[1,8,8]",
            "--metrics", "elbo", "--batches", "1", "--k", "2", "--device", "cpu"]
    assert main(args) == 0, capsys.readouterr().err
    assert list((run / "eval").glob("*.json"))
