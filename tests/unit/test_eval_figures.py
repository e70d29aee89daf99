"""Evaluation figures (issue 19): video runs' frame rates as stored by video_folder, and comparison bars that
show differences."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vaekit.eval.figures import bar_layout, clip_rate, write_figures


def test_video_figures_accept_the_fps_list_a_video_folder_run_stores(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    clips = torch.rand(4, 3, 4, 8, 8, generator=g)  # (B, C, T, H, W)
    art = SimpleNamespace(
        inputs=clips, recons=clips.flip(0), means=torch.randn(4, 3, generator=g), labels=None,
        errors=torch.rand(4, generator=g), kl_per_dim=torch.rand(3, generator=g), model=None, modality="video",
        meta={"fps": [29.97], "frames": 4}, factor_names=None,
    )
    files = write_figures(art, tmp_path)  # data_meta.json's "fps": [29.97] crashed int() before
    assert (tmp_path / "recon.mp4").is_file() and tmp_path / "recon.mp4" in files


@pytest.mark.parametrize(
    ("fps", "rate"), [([29.97], 30), ([], 8), (None, 8), (25, 25), (12.5, 12), ([0.0], 8), ("x", 8), (True, 8)]
)
def test_clip_rate_reads_a_number_or_the_first_of_a_list(fps: object, rate: int) -> None:
    assert clip_rate({"fps": fps}) == rate


def test_similar_elbos_get_a_zoomed_axis_and_deltas_to_the_best() -> None:
    limits, labels = bar_layout("neg_elbo", [1003.2, 1000.0, None])
    assert limits is not None and limits[0] > 900 and limits[0] < 1000.0 < 1003.2 < limits[1]
    assert labels == ["1003 (+3.2)", "1000 (best)", "n/a"]
    limits, labels = bar_layout("psnr", [20.0, 30.0])  # higher is better; far apart: the axis starts at 0
    assert limits is None and labels == ["20 (-10)", "30 (best)"]
    assert bar_layout("mse", [0.01, -0.01])[0] is None  # values of both signs: from 0
