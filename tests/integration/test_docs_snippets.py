"""Every command and Python snippet in README.md and docs/ is run here, or marked illustrative.

A fenced block tagged ``bash``/``sh``/``shell``/``python``/``py`` is run, unless the line before it (blank
lines aside) is ``<!-- illustrative -->`` (it needs a GPU, the hub, real data or a shell) — blocks tagged
``text`` or ``yaml`` are not commands (a ``yaml`` block must load as a config). Each page runs in a fresh
directory holding tiny data under the names the pages use (``photos/``, ``clips/``, ``sounds/``,
``table.csv``, ``songs.csv``, ``surveys.csv``, ``my.yaml``) and a link to ``examples/``. ``vaekit ...``
commands run in-process through ``vaekit.cli.main`` and must exit 0; ``train`` and ``validate`` get ``TINY``
appended (two optimizer steps on a few samples; ``sweep`` gets them too, and one trial), and ``<!-- test: key=value ... -->`` before a block appends
more. Python blocks of one page share one namespace; ``vaekit.train`` appends ``TINY``. README.md may not mark
anything illustrative: its two set-up commands are the ones .ci/run runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").rglob("*.md") if "coming-from" not in p.parts)]
# docs/coming-from/ pages are run by test_coming_from.py: their blocks use the files earlier blocks write
SETUP = ['python3 -m pip install -e ".[dev]"', "python3 -m pytest"]
TINY = [
    "train.max_steps=2", "data.num_samples=48", "train.batch_size=4", "train.val_batches=1", "log.progress=false",
    "log.samples=false", "log.tensorboard=false", "log.plots=false",
]
RUN_TAGS = {"bash", "sh", "shell", "python", "py"}
FENCE = re.compile(r"^(?P<indent> *)```(?P<tag>[\w+-]*)")


def blocks(path: Path) -> list[dict]:
    """Fenced blocks of a page: tag, code, the marker comment before it (if any), first line number."""
    lines, out, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, j = i, i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker = lines[k].strip() if k >= 0 and lines[k].strip().startswith("<!--") else ""
        indent = len(m["indent"])
        code = "\n".join(line[indent:] for line in lines[start + 1 : j])
        out.append({"tag": m["tag"].lower(), "code": code, "marker": marker, "line": start + 1})
        i = j + 1
    return out


def commands(code: str) -> list[str]:
    """Shell lines of a block, continuation lines joined and trailing ``# comments`` dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def runnable(page: Path) -> list[dict]:
    found = [b for b in blocks(page) if b["tag"] in RUN_TAGS]
    return [b for b in found if "illustrative" not in b["marker"] and "setup" not in b["marker"]]


# ------------------------------------------------------------------------------------------- tiny data
def _make_data(root: Path) -> None:
    import av
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "photos").mkdir()
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "photos" / f"{i}.png")
    (root / "clips").mkdir()
    for v in range(4):
        with av.open(str(root / "clips" / f"clip{v}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=12)
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
            for i in range(24):
                frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 10 * i + v, dtype=np.uint8), format="rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    (root / "sounds").mkdir()
    t = np.arange(8000) / 8000
    for i in range(24):
        tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * i) * t)
        sf.write(root / "sounds" / f"{i % 3}_speaker_{i}.wav", tone.astype(np.float32), 8000)
    x = rng.normal(size=(80, 4))
    rows = "\n".join(f"{i},{a:.4f},{b:.4f},{c:.4f},{d:.4f}" for i, (a, b, c, d) in enumerate(x))
    (root / "table.csv").write_text("id,height,weight,width,depth\n" + rows + "\n")
    names = ["rock", "jazz", "piano", "male vocal", "drums", "calm"]
    songs = [str([names[j] for j in range(6) if rng.random() < 0.4]) for _ in range(80)]
    (root / "songs.csv").write_text("id,tags\n" + "\n".join(f'{i},"{s}"' for i, s in enumerate(songs)) + "\n")
    records = [f"s{e},{sp},{int(rng.integers(1, 5))}" for e in range(60) for sp in names if rng.random() < 0.5]
    (root / "surveys.csv").write_text("survey,species,count\n" + "\n".join(records) + "\n")
    (root / "my.yaml").write_text("model: {hidden_dims: [16, 16]}\ntrain: {epochs: 1}\n")
    (root / "examples").symlink_to(ROOT / "examples")


# ------------------------------------------------------------------------------------------- runners
def _run_command(cmd: str, extra: list[str]) -> None:
    from vaekit.cli import main

    argv = shlex.split(cmd)
    if argv[:3] in (["python", "-m", "vaekit"], ["python3", "-m", "vaekit"]):
        argv = ["vaekit", *argv[3:]]
    assert argv[0] == "vaekit", f"{cmd!r}: not a vaekit command; mark the block <!-- illustrative -->"
    args = argv[1:]
    if args[:1] in (["train"], ["validate"]) and "--resume" not in args:
        args += TINY + extra
    elif args[:1] in (["eval"], ["compare"]):
        args += ["--batches", "1", "--k", "2", *extra]
    elif args[:1] == ["sweep"]:  # one tiny trial: the overrides go before the first flag (argparse's positionals)
        flag = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
        args = [*args[:flag], *TINY, *extra, *args[flag:], "--trials", "1", "--jobs", "1"]
    code = main(args)
    assert code == 0, f"{cmd!r} exited {code}"


def _tiny_train(real):
    def train(config=None, *, overrides=None, **kwargs):
        if kwargs.get("resume") is None:
            overrides = [*(overrides or []), *TINY]
        return real(config, overrides=overrides, **kwargs)

    return train


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=_page_id)
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import vaekit
    import vaekit.api

    _make_data(tmp_path)
    monkeypatch.chdir(tmp_path)
    tiny = _tiny_train(vaekit.api.train)
    # vaekit.train first: monkeypatch records (and restores) what it was, which must be the real function
    monkeypatch.setattr(vaekit, "train", tiny, raising=False)
    monkeypatch.setattr(vaekit.api, "train", tiny)
    namespace: dict = {"__name__": "__docs__"}
    for block in runnable(page):
        where = f"{_page_id(page)}:{block['line']}"
        extra = block["marker"][len("<!-- test:") : -len("-->")].split() if block["marker"].startswith("<!-- test:") else []
        if block["tag"] in ("python", "py"):
            exec(compile(block["code"], where, "exec"), namespace)  # noqa: S102
        else:
            for cmd in commands(block["code"]):
                _run_command(cmd, extra)


def test_readme_runs_every_command() -> None:
    """README.md marks nothing illustrative; its set-up block is exactly the two commands .ci/run runs."""
    readme = ROOT / "README.md"
    found = [b for b in blocks(readme) if b["tag"] in RUN_TAGS]
    assert not [b["line"] for b in found if "illustrative" in b["marker"]], "README.md commands must all be run"
    setup = [b for b in found if "setup" in b["marker"]]
    assert len(setup) == 1 and commands(setup[0]["code"]) == SETUP
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert [line for line in ci if line in SETUP] == SETUP, ".ci/run must run the README's two commands first"


def test_markers_are_known() -> None:
    """A typo in a marker would silently skip a block: only illustrative, setup and test: are allowed."""
    for page in PAGES:
        for block in blocks(page):
            marker = block["marker"]
            if marker and block["tag"] in RUN_TAGS:
                ok = marker in ("<!-- illustrative -->", "<!-- setup: run by .ci/run -->") or marker.startswith(
                    "<!-- test:"
                )
                assert ok or not marker.startswith("<!--"), f"{_page_id(page)}:{block['line']}: {marker}"


def test_yaml_configs_in_the_docs_are_valid() -> None:
    """A ```yaml block is a config: it must load (keys and values checked; its data is not read)."""
    import yaml

    from vaekit.config.load import load_config

    for page in PAGES:
        for block in blocks(page):
            if block["tag"] == "yaml" and "illustrative" not in block["marker"]:
                load_config(yaml.safe_load(block["code"]))
