"""Sample grids for any shape, and the wav / mp4 / spectrogram writers."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from vaekit.tracking.media import recon_grid, sample_grid, spectrogram_image, write_mp4, write_wav


@pytest.mark.parametrize("d", [1, 7, 141, 778])
def test_table_grids_work_for_any_width(d: int) -> None:
    x = torch.rand(5, d)
    for grid in (recon_grid(x, x.flip(0), "tabular"), sample_grid(x, "tabular")):
        assert grid.ndim == 3 and grid.shape[0] == 3 and 0.0 <= float(grid.min()) and float(grid.max()) <= 1.0


@pytest.mark.parametrize("length", [1, 3, 999, 8001])
def test_audio_grids_work_for_any_length(length: int) -> None:
    x = torch.rand(3, 2, length) * 2 - 1
    assert recon_grid(x, x, "audio").shape[0] == 3 and sample_grid(x, "audio").shape[0] == 3


@pytest.mark.parametrize("frames", [1, 3, 12])
def test_video_grids_work_for_any_frame_count(frames: int) -> None:
    x = torch.rand(2, 3, frames, 8, 8)
    grid = recon_grid(x, x, "video")
    per_row = min(frames, 8) if frames > 1 else 2  # one column per frame; single frames: input, recon pairs
    assert grid.shape[0] == 3 and grid.shape[-1] == 2 + per_row * (8 + 2)
    assert sample_grid(x, "video").shape[0] == 3


@pytest.mark.parametrize("channels,length", [(1, 1001), (2, 7)])
def test_write_wav_round_trips_through_soundfile(tmp_path: Path, channels: int, length: int) -> None:
    wave = torch.linspace(-1, 1, length).repeat(channels, 1) * 0.9
    path = write_wav(tmp_path / "a.wav", wave, 8000)
    data, rate = sf.read(path, always_2d=True)
    assert rate == 8000 and data.shape == (length, channels)
    assert np.allclose(data.T, wave.numpy(), atol=1e-4)


@pytest.mark.parametrize("channels,frames,size", [(3, 3, (16, 16)), (1, 1, (9, 13))])
def test_write_mp4_decodes_back_with_the_frame_count(
    tmp_path: Path, channels: int, frames: int, size: tuple
) -> None:
    clip = torch.zeros(channels, frames, *size)
    for t in range(frames):
        clip[:, t] = 0.2 + 0.3 * t
    path = write_mp4(tmp_path / "c.mp4", clip, fps=4)
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    assert len(decoded) == frames
    assert decoded[0].shape[:2] == (size[0] + size[0] % 2, size[1] + size[1] % 2)
    assert abs(decoded[-1].mean() / 255 - (0.2 + 0.3 * (frames - 1))) < 0.05


@pytest.mark.parametrize("length", [1, 255, 8000])
def test_spectrogram_image_is_a_colour_image_for_any_length(length: int) -> None:
    img = spectrogram_image(torch.sin(torch.arange(length) * 0.5).unsqueeze(0), 8000)
    assert img.shape[0] == 3 and img.ndim == 3 and img.dtype == torch.float32
    assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0
    assert spectrogram_image(torch.rand(2, 4000), 16000, height=64).shape[1] == 64


def test_spectrogram_puts_a_high_tone_above_a_low_tone() -> None:
    t = torch.arange(8000) / 8000

    def peak_row(freq: float) -> int:
        img = spectrogram_image(torch.sin(2 * torch.pi * freq * t), 8000)
        return int(img.sum(0).mean(1).argmax())

    assert peak_row(3000.0) < peak_row(300.0)  # row 0 is the top (high frequencies)


def test_wide_tables_are_drawn_as_one_readable_strip_per_row() -> None:
    from vaekit.tracking.media import table_strips

    x = torch.rand(5, 778)  # e.g. 778 species per checklist
    grid = recon_grid(x, 1 - x, "tabular")
    strips = table_strips([x, 1 - x], gap_every=2)
    assert torch.equal(grid, strips) and grid.shape[2] >= 778  # at least one pixel per column
    row_h = 6
    lo, hi = float(x.min()), float(x.max())
    first = grid[0, 0]  # the first pixel row: sample 0's input, one cell per column
    assert torch.allclose(first, ((x[0] - lo) / (hi - lo + 1e-8)).clamp(0, 1), atol=1e-5)
    assert torch.allclose(grid[0, row_h], ((1 - x[0] - lo) / (hi - lo + 1e-8)).clamp(0, 1), atol=1e-5)
    assert grid.shape[1] == 5 * 2 * row_h + 4 * 2  # 10 strips of 6 px, a 2 px line between pairs
    narrow = sample_grid(torch.rand(3, 4), "tabular")
    assert narrow.shape[2] == 4 * 32 and narrow.shape[1] == 3 * 24 + 2 * 2  # few columns: large cells
    assert sample_grid(torch.rand(2, 5000), "tabular").shape[2] == 2048  # very wide: columns averaged


def test_only_the_last_validations_sample_files_of_each_stage_are_kept(tmp_path: Path) -> None:
    from vaekit.tracking.media import prune_samples

    for step in (10, 20, 30, 40):
        for what in ("recon.png", "prior.png", "input0.wav"):
            (tmp_path / f"main_000_001_{step:06d}-{what}").write_text("x")
    (tmp_path / f"warm_001_000_{5:06d}-recon.png").write_text("x")  # another stage: untouched
    deleted = prune_samples(tmp_path, "main_000_", keep=2)
    assert len(deleted) == 6
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f"main_000_001_{s:06d}-{w}" for s in (30, 40) for w in ("recon.png", "prior.png",
                                                                                      "input0.wav")]
                          + ["warm_001_000_000005-recon.png"])
    assert prune_samples(tmp_path, "main_000_", keep=None) == []
