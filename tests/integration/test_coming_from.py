"""The "Coming from ..." pages (docs/coming-from/*.md) run as written: every fenced block with a title
(```yaml title="x.yaml"```, ```python title="..."```, ```bash title="..."```) is run, in page order, in one
temporary folder holding tiny stand-ins for the data the pages name (``tags.csv``, ``frames/``, ``audio/``).

YAML blocks are written under their title (a file name) and trained; ``vaekit`` lines of bash blocks run through
the CLI; Python blocks are executed. Sizes are cut down by the overrides in the HTML comment right before a
block (``<!-- test: train.max_steps=2 -->``, as in test_docs_snippets.py), added to every train of that block;
``<!-- test: write-only -->`` writes a YAML block without training it.
"""

from __future__ import annotations

import math
import re
import shlex
import wave
from pathlib import Path
from typing import Any

import pytest
import torch

import vaekit

PAGES = sorted((Path(__file__).resolve().parents[2] / "docs" / "coming-from").glob("*.md"))
BLOCK = re.compile(r'(?:<!-- test: (.*?) -->\n)?```(yaml|python|bash) title="([^"]+)"\n(.*?)```', re.S)
QUIET = ["run.dir=runs", "log.progress=false", "log.samples=false", "log.plots=false", "train.val_batches=1"]


def blocks(page: Path) -> list[tuple[str, str, str, list[str]]]:
    """``(kind, title, text, overrides)`` of each titled block of ``page``, in order."""
    return [(kind, title, text, shlex.split(run or ""))
            for run, kind, title, text in BLOCK.findall(page.read_text())]


def _stand_in_data(root: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tags = ["rock", "jazz", "guitar", "piano", "vocal", "drums", "calm", "fast"]
    rows = ["|".join(t for t in tags if torch.rand(1, generator=g) < 0.3) or "rock" for _ in range(64)]
    (root / "tags.csv").write_text("id,tags\n" + "\n".join(f"{i},{r}" for i, r in enumerate(rows)) + "\n")
    from PIL import Image

    (root / "frames").mkdir()
    for i in range(24):
        pixels = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(root / "frames" / f"frame_{i:04d}.png")
    (root / "audio").mkdir()
    for i in range(24):
        t = torch.arange(2048) / 8000
        wave_ = 0.3 * torch.sin(2 * math.pi * (200 + 20 * i) * t)
        with wave.open(str(root / "audio" / f"{i % 10}_speaker_{i}.wav"), "wb") as fh:
            fh.setnchannels(1)
            fh.setsampwidth(2)
            fh.setframerate(8000)
            fh.writeframes((wave_ * 32767).to(torch.int16).numpy().tobytes())


def _run_block(kind: str, title: str, text: str, extra: list[str], monkeypatch: Any) -> None:
    from vaekit.cli import main

    if kind == "yaml":
        Path(title).write_text(text)
        if extra != ["write-only"]:
            vaekit.train(title, overrides=[*QUIET, *extra])
        return
    if kind == "bash":
        for line in text.splitlines():
            if line.startswith("vaekit "):
                args = shlex.split(line.split("  #")[0])[1:]
                if args[0] in ("train", "validate"):
                    args += [*QUIET, *extra]
                assert main(args) == 0, line
        return
    real = vaekit.train
    monkeypatch.setattr(vaekit, "train", lambda *a, overrides=None, **kw: real(
        *a, overrides=[*(overrides or []), *QUIET, *extra], **kw))
    exec(compile(text, title, "exec"), {"__name__": "__snippet__"})  # noqa: S102 - the page's own code
    monkeypatch.setattr(vaekit, "train", real)


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_coming_from_page_runs_as_written(page: Path, tmp_path: Path, monkeypatch: Any) -> None:
    found = blocks(page)
    assert found, f"{page.name}: no titled code blocks"
    monkeypatch.chdir(tmp_path)
    _stand_in_data(tmp_path)
    for kind, title, text, extra in found:
        _run_block(kind, title, text, extra, monkeypatch)


def test_there_are_five_coming_from_pages() -> None:
    assert {p.stem for p in PAGES} == {
        "lightning-hydra-tags", "vae-gan-pipeline", "denoising-python", "video-audio-curriculum-lora",
        "ddp-frames-compare",
    }
