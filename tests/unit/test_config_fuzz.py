"""Config fuzzing: mutated configs through the CLI's own entry point end as exit 0, or exit 2 with one line.

A valid tree (the schema defaults plus a two-stage curriculum) is mutated with random types (huge ints, negative
numbers, inf/nan, strings long and unicode, lists, dicts, None), deleted and added keys, deep nesting and list-index
overrides, then fed to ``vaekit validate --no-data`` (never reads data or builds models) as a YAML file or as dotted
overrides. Seeded, so a failure names a case that reproduces.
"""

from __future__ import annotations

import contextlib
import copy
import io
import random
import time
from pathlib import Path
from typing import Any

import yaml

from vaekit.cli import main
from vaekit.config.schema import VaekitConfig

CASES = 1000
SEED = 20260101
HANG_S = 120.0
"""A case slower than this is a hang (a loaded 2-core machine takes seconds for the slowest); never a speed check."""
STAGES = [
    {"name": "warmup", "steps": 4, "data": {"image_size": 32}, "loss": {"kl": {"schedule": "linear"}}},
    {
        "name": "main",
        "metric": "train/recon",
        "threshold": 10.0,
        "max_steps": 8,
        "freeze": ["encoder"],
        "optim": {"lr": 1e-4, "group_lr": {"decoder": 1e-3}},
    },
]
DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
WORDS = ["name", "steps", "lr", "0", "1", "encoder", "x", "hidden_dims", "betas", "kind", "ü", ""]


def _make_base() -> dict[str, Any]:
    tree = VaekitConfig().model_dump(mode="json")
    tree["loss"].pop("perceptual")  # kind=vgg/lpips would only add the one-line missing-weights error
    tree["stages"] = copy.deepcopy(STAGES)
    tree["stage_defaults"] = {"train": {"batch_size": 16}}
    return tree


BASE = _make_base()


def _base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(16)
    if kind == 0:
        return rng.choice([10**30, 2**63, -(2**63) - 1, 2**64, 10**4000])
    if kind == 1:
        return rng.choice([-1, -0.5, -(10**9), -1e-300, 0, 0.0])
    if kind == 2:
        return rng.choice([float("inf"), float("-inf"), float("nan"), 1e308, 5e-324])
    if kind == 3:
        return rng.choice(["", "a", "relu", "../../../x", "a/b", "..", "adam", "none", "0", "1e-3", "yes", "~"])
    if kind == 4:
        return rng.choice(["x" * 10_000, "ü日本語\u202e\u200b", "\t\n", "a\\b", "€" * 100, "null", "[1", "{a: 1"])
    if kind == 5:
        return None
    if kind == 6:
        return rng.choice([True, False])
    if kind == 7 and depth < 3:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8 and depth < 3:
        return {rng.choice(WORDS): _random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if kind == 9:
        return list(range(rng.randrange(0, 20)))
    if kind == 10:
        return rng.randrange(-3, 70000)
    if kind == 11:
        return rng.uniform(-2, 2)
    if kind == 12:
        return [rng.randrange(1, 70000) for _ in range(rng.randrange(1, 4))]
    if kind == 13:
        return rng.choice([[0.9, 0.999], [1.0, 0.5], [0.5], [0.5, 0.5, 0.5], {"encoder": -1}, {"decoder": 1e-3}])
    if kind == 14:
        return rng.choice(["encoder", "decoder", "discriminator", "train/recon", "val/total", "cosine", "batch"])
    return rng.randrange(0, 10)


def _nested(rng: random.Random, value: Any) -> Any:
    for _ in range(rng.randrange(20, 60)):
        value = [value] if rng.random() < 0.5 else {"a": value}
    return value


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a node (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for key, value in tree.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            out += _paths(value, (*prefix, i))
    return out


def _get(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _mutate(rng: random.Random, tree: dict[str, Any]) -> None:
    path = rng.choice(_paths(tree))
    parent, last = _get(tree, path[:-1]), path[-1]
    op = rng.randrange(6)
    if op <= 1:
        parent[last] = _random_value(rng)
    elif op == 2 and isinstance(parent, dict):
        del parent[last]
    elif op == 3:
        target = parent if isinstance(parent, dict) else tree
        target[rng.choice(WORDS) + rng.choice(["", "_x", "s"])] = _random_value(rng)
    elif op == 4:
        parent[last] = _nested(rng, _random_value(rng))
    else:
        parent[last] = rng.choice([[], {}, [_random_value(rng)], {"": 1}])


def _overrides(rng: random.Random, tree: dict[str, Any]) -> list[str]:
    """Dotted overrides, including through list elements (``stages.1.optim.lr``, ``model.hidden_dims.0.sub``)."""
    out = []
    for _ in range(rng.randrange(1, 4)):
        path = [str(p) for p in rng.choice(_paths(tree))]
        if rng.random() < 0.3:
            path.append(rng.choice(WORDS) or "sub")
        if rng.random() < 0.1:
            path.insert(rng.randrange(len(path) + 1), str(rng.randrange(12)))
        value = _random_value(rng)
        if rng.random() < 0.1:
            value = _nested(rng, value)
        text = yaml.dump(value, Dumper=DUMPER, default_flow_style=True, width=10**9).strip()
        text = text.removesuffix("...").strip()
        out.append(f"{'.'.join(path)}={text}")
    return out


def _raw(rng: random.Random, tmp: Path, i: int) -> list[str]:
    """Hostile bytes the tree mutations cannot make: deep nesting past the recursion limit, alias bombs, non-UTF-8,
    integers past Python's digit limit, a directory."""
    n = rng.randrange(300, 800)
    deep = "[" * n + "]" * n if rng.random() < 0.5 else "{a: " * n + "1" + "}" * n
    letters = "abcdefghi"
    bomb = "[" + ", ".join(f"&{c} [{', '.join([f'*{letters[k - 1]}' if k else 'lol'] * 9)}]" for k, c in enumerate(letters)) + "]"
    texts = [
        f"model:\n  hidden_dims: {deep}\n",
        f"stages: {bomb}\n",
        "loss:\n  beta: " + "9" * rng.randrange(4000, 6000) + "\n",
        "a: &x [1, *x]\n",
    ]
    choice = rng.randrange(len(texts) + 3)
    if choice < len(texts):
        if rng.random() < 0.5:
            value = texts[choice].split(": ", 1)[-1].strip().removeprefix("\n  hidden_dims: ")
            return ["validate", "--no-data", f"model.hidden_dims={value}"]
        data = texts[choice].encode()
    elif choice == len(texts):
        data = "run:\n  name: caf\u00e9\n".encode("latin-1")
    elif choice == len(texts) + 1:
        return ["validate", "--no-data", str(tmp)]
    else:
        return ["validate", "--no-data", f"preset={'x' * rng.randrange(100, 5000)}"]
    path = tmp / f"raw{i}.yaml"
    path.write_bytes(data)
    return ["validate", "--no-data", str(path)]


def _case(rng: random.Random, tmp: Path, i: int) -> list[str]:
    if rng.random() < 0.05:
        return _raw(rng, tmp, i)
    if rng.random() < 0.35:
        return ["validate", "--no-data", *_overrides(rng, BASE)]
    tree = _base()
    for _ in range(rng.choice([1, 1, 2, 3])):
        _mutate(rng, tree)
    path = tmp / f"case{i}.yaml"
    path.write_text(yaml.dump(tree, Dumper=DUMPER, allow_unicode=True, width=10**9), encoding="utf-8")
    extra = _overrides(rng, BASE) if rng.random() < 0.2 else []
    return ["validate", "--no-data", str(path), *extra]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_unmutated_base_config_validates(tmp_path: Path) -> None:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(_base()))
    code, out, err = _run(["validate", "--no-data", str(path)])
    assert (code, err) == (0, "") and out.rstrip().endswith("config OK")


def test_mutated_configs_exit_0_or_2_with_exactly_one_line(tmp_path: Path) -> None:
    _run(["validate", "--no-data"])  # imports once, before the cases
    rng = random.Random(SEED)
    failures, codes, slowest = [], {0: 0, 2: 0}, 0.0
    start = time.perf_counter()
    for i in range(CASES):
        argv = _case(rng, tmp_path, i)
        t0 = time.perf_counter()
        try:
            code, out, err = _run(argv)
        except BaseException as e:  # noqa: BLE001 - a traceback is exactly what this test looks for
            failures.append(f"case {i}: {type(e).__name__}: {str(e)[:200]} (argv {str(argv[2:])[:300]})")
            continue
        took = time.perf_counter() - t0
        slowest = max(slowest, took)
        lines = err.splitlines()
        if took > HANG_S:  # only a hang breaks this bound; speed is measured in bench/, not asserted here
            failures.append(f"case {i}: took {took:.1f} s, a hang? (argv {str(argv[2:])[:300]})")
        if code == 0:
            ok = not err and out.rstrip().endswith("config OK")
        else:
            ok = code == 2 and len(lines) == 1 and lines[0].startswith("vaekit: ")
        if not ok:
            failures.append(f"case {i}: exit {code}, stderr {err[:300]!r} (argv {str(argv[2:])[:300]})")
        codes[code] = codes.get(code, 0) + 1
    total = time.perf_counter() - start
    assert not failures, f"{len(failures)} of {CASES} cases failed:\n" + "\n".join(failures[:20])
    assert codes[0] > 20 and codes[2] > CASES // 2, codes  # the mutations reach both outcomes
    print(f"{CASES} cases in {total:.1f} s (slowest {slowest:.2f} s): {codes}")
