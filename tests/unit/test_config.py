"""Config loading: precedence, dotted overrides, presets, and one-line errors that name the key."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

import vaekit.config.load as load_module
from vaekit.config.load import ConfigError, dump_config, list_presets, load_config, parse_override


def test_defaults_then_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"optim": {"lr": 0.01, "name": "sgd"}, "train": {"epochs": 3}}))
    cfg = load_config(path, ["optim.lr=0.02"])
    assert cfg.optim.lr == 0.02  # override beats YAML
    assert cfg.optim.name == "sgd"  # YAML beats default
    assert cfg.train.batch_size == 64  # default


def test_override_values_are_yaml_and_scientific_notation_is_a_number() -> None:
    assert parse_override("optim.lr=1e-4") == (["optim", "lr"], 1e-4)
    assert parse_override("model.hidden_dims=[8,16]") == (["model", "hidden_dims"], [8, 16])
    assert parse_override("train.max_steps=null") == (["train", "max_steps"], None)
    assert parse_override("log.progress=false") == (["log", "progress"], False)


def test_python_keyword_overrides_nest_and_use_double_underscore() -> None:
    cfg = load_config(None, {"train": {"epochs": 2}, "optim__lr": 0.5})
    assert cfg.train.epochs == 2 and cfg.optim.lr == 0.5


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochz=3", "train.epochz: unknown key; did you mean 'epochs'?"),
        ("train.precision=fp32", "train.precision: 'fp32' is not allowed; choose one of 'no', 'fp16' or 'bf16'"),
        ("optim.name=adamx", "optim.name: 'adamx' is not allowed"),
        ("optim.scheduler.name=linear", "optim.scheduler.name: 'linear' is not allowed"),
        ("optim.lr=-1", "optim.lr: -1 is invalid"),
        ("model.hidden_dims=[]", "model.hidden_dims: [] is invalid"),
        ("bogus.key=1", "bogus: unknown key"),
    ],
)
def test_bad_values_are_one_line_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(expected.split(";")[0])
    assert expected in message


def test_invalid_yaml_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml.*line"):
        load_config(path)


def test_presets_exist_and_validate() -> None:
    names = set(list_presets())
    assert {"beta-vae", "beta-vae-high", "vae-gan", "denoising", "lpips"} <= names
    assert load_config(None, ["preset=beta-vae"]).loss.beta == 4.0
    assert load_config(None, preset="beta-vae-high").loss.beta == 10.0
    assert load_config(None, preset="denoising").loss.denoise.mask_rate > 0
    assert load_config(None, preset="vae-gan").loss.adversarial.weight > 0
    assert load_config(None, preset="lpips").loss.perceptual.kind == "lpips"


def test_yaml_beats_preset(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"preset": "beta-vae", "loss": {"beta": 2.0}}))
    assert load_config(path).loss.beta == 2.0


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of .*beta-vae"):
        load_config(None, preset="nope")


def test_dumped_config_loads_back_equal(tmp_path: Path) -> None:
    cfg = load_config(None, ["optim.lr=3e-4", "model.hidden_dims=[4,8]", "loss.kl.schedule=linear"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


# ------------------------------------------------------------------------ values that crash at run time
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.group_lr.encoder=-1", "optim.group_lr.encoder"),  # gradient ascent
        ("disc_optim.group_lr.decoder=0", "disc_optim.group_lr.decoder"),
        ("optim.betas=[1.0,0.999]", "optim.betas.0"),
        ("optim.betas=[-0.1,0.9]", "optim.betas.0"),
        ("disc_optim.betas=[0.5,1.5]", "disc_optim.betas.1"),
        ("run.seed=-1", "run.seed"),
        ("run.seed=9223372036854775808", "run.seed"),
        ("loss.kl.free_bits=.inf", "loss.kl.free_bits"),
        ("loss.kl.free_bits=1e5", "loss.kl.free_bits"),
        ("loss.spectral.w_sc=.nan", "loss.spectral.w_sc"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.grad_clip=.inf", "optim.grad_clip"),
        ("loss.adversarial.adaptive_max=.inf", "loss.adversarial.adaptive_max"),
        ("data.image_size=0", "data.image_size"),
        ("data.image_size=20000", "data.image_size"),
        ("data.frames=0", "data.frames"),
        ("data.num_samples=0", "data.num_samples"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.max_memory_mb=0", "data.max_memory_mb"),
        ("data.channels=4", "data.channels"),
        ("model.latent_dim=10000000", "model.latent_dim"),
        ("model.hidden_dims=[32,70000]", "model.hidden_dims"),
        ("train.batch_size=2000000", "train.batch_size"),
        ("log.num_samples=2000", "log.num_samples"),
        ("train.max_steps=99999999999999999999", "train.max_steps"),
    ],
)
def test_values_that_would_crash_at_run_time_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(f"{key}: ") and "\n" not in str(err.value)


def test_non_finite_floats_inside_a_stage_are_refused_naming_the_stage() -> None:
    stages = [{"name": "a", "steps": 1, "loss": {"kl": {"free_bits": float("inf")}}}]
    with pytest.raises(ConfigError, match=r"^stages\.0\.loss\.kl\.free_bits: inf is invalid"):
        load_config({"stages": stages})


@pytest.mark.parametrize("name", ["../../../x", "a/b", "a\\b", "a\x00b", "", ".", "..", "x" * 65, "warm up"])
def test_stage_names_must_be_safe_file_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^stages\.0\.name: .*use letters, digits, '-', '_', '\.'"):
        load_config({"stages": [{"name": name, "steps": 1}]})


def test_ordinary_stage_and_run_names_pass() -> None:
    cfg = load_config({"run": {"name": "my run-1.2", "dir": "../elsewhere/runs"}, "stages": [{"name": "low_res.v2", "steps": 1}]})
    assert cfg.run.name == "my run-1.2" and cfg.run.dir == "../elsewhere/runs"


@pytest.mark.parametrize("name", ["../x", "a/b", "a\\b", "..", ".", "", "a\nb"])
def test_run_name_cannot_leave_the_run_dir(name: str) -> None:
    with pytest.raises(ConfigError, match=r"^run\.name: .*single directory name"):
        load_config({"run": {"name": name}})


# ------------------------------------------------------------------------------- hostile config input
BOMB = "".join(  # "billion laughs": 9**9 strings from ~350 bytes
    f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
    for i in range(9)
)


def _one_line_quickly(source: object, overrides: list[str] = (), match: str = "") -> str:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_config(source, list(overrides))
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "\n" not in message and re.search(match, message), message
    return message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"train:\n  epochs: \xff\xfe\n", r"not UTF-8 text \(invalid byte at offset 17\)"),
        ("[" * 500 + "]" * 500, "nested more than 32 levels deep"),
        ("a: " + "{b: " * 300 + "1" + "}" * 300, "nested more than 32 levels deep"),
        (BOMB, "expands to more than 20000 values"),
        ("a: &x [1, *x]\n", "refers to itself"),
        ("train:\n  epochs: " + "1" * 5000 + "\n", "not valid YAML"),
        ("# big\n" + " " * (2**20 + 10), "larger than 1 MiB"),
    ],
)
def test_hostile_config_files_answer_in_one_line_within_a_second(tmp_path: Path, text: str | bytes, match: str) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert _one_line_quickly(path, match=match).startswith(f"config file {str(path)!r}")


def test_alias_bombs_and_deep_nesting_in_override_values_are_refused() -> None:
    bomb = "x=[" + ", ".join(line.split(": ", 1)[1] for line in BOMB.splitlines()) + "]"
    _one_line_quickly(None, [bomb], r"^override 'x': expands to more than")
    _one_line_quickly(None, ["model.hidden_dims=" + "[" * 600], r"^override 'model.hidden_dims': nested more than")
    _one_line_quickly(None, [".".join("abcdefghijklmnopqrstuvwxyz") + "=1"], "more than 16 key parts")


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("optim: &o {lr: 0.01}\ndisc_optim: *o\n")
    assert load_config(path).disc_optim.lr == 0.01


def test_config_paths_that_are_directories_missing_or_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _one_line_quickly(tmp_path, match="is a directory, not a YAML file")
    _one_line_quickly(tmp_path / "nope.yaml", match="does not exist")
    _one_line_quickly(str(tmp_path / ("x" * 5000)), match="cannot be read")
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {epochs: 1}\n")

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(load_module, "open", denied, raising=False)  # chmod 000 does not stop root
    _one_line_quickly(path, match=r"cannot be read \(Permission denied\)")


@pytest.mark.parametrize("name", ["x" * 5000, "../../etc/passwd", "a/b", "a\\b", "", 42])
def test_bad_preset_names_are_one_line(name: object) -> None:
    _one_line_quickly({"preset": name} if name else None, [] if name else ["preset=/"], r"^preset: ")


def test_overrides_through_a_list_element_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("model: {hidden_dims: [8, 16]}\n")
    _one_line_quickly(path, ["model.hidden_dims.0.sub=1"], r"^model\.hidden_dims\.0: is a value, not a section")
    _one_line_quickly(path, ["model.hidden_dims.²=1"], r"^model\.hidden_dims\.²: index out of range")
    _one_line_quickly(None, ["model.hidden_dims.0.sub=1"], r"^model\.hidden_dims: ")
    assert load_config(path, ["model.hidden_dims.1=32"]).model.hidden_dims == [8, 32]


def test_python_dicts_that_are_cyclic_or_deep_are_one_line() -> None:
    cyclic: dict = {"train": {}}
    cyclic["train"]["self"] = cyclic
    _one_line_quickly(cyclic, match="nested more than")
    deep: dict = {}
    node = deep
    for _ in range(500):
        node["a"] = {}
        node = node["a"]
    _one_line_quickly({"stage_defaults": deep}, match="nested more than")


# ------------------------------------------------------------------------------------- model size
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["model.hidden_dims=[65536,65536]"], r"^model\.hidden_dims: \[65536, 65536\] needs about \d+ GB of param"),
        (["model.arch=mlp", "data.image_size=4096", "model.hidden_dims=[1024]"], r"^model\.hidden_dims: \[1024\] needs"),
        (["model.latent_dim=1000000", "data.image_size=64"], r"^model\.latent_dim: 1000000 needs about \d+ GB"),
    ],
)
def test_models_too_large_for_memory_are_refused_before_anything_is_built(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_real_models_pass_the_size_check() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(examples.glob("*.yaml")):
        load_config(path)
    for name in list_presets():
        load_config(None, preset=name)
    load_config(None, ["data.source=moving_shapes", "data.image_size=256", "data.frames=16", "data.channels=3",
                       "model.hidden_dims=[128,256,512,512]", "model.latent=spatial"])
    load_config(None, ["model.arch=mlp", "data.image_size=256", "data.channels=3", "model.hidden_dims=[2048,1024]"])


@pytest.mark.parametrize(
    ("model", "data", "shape"),
    [
        ({}, {"image_size": 64}, (1, 64, 64)),
        ({"hidden_dims": [8, 16, 16], "latent": "spatial"}, {"source": "moving_shapes", "image_size": 32}, (1, 4, 32, 32)),
        ({"arch": "mlp", "hidden_dims": [64, 32]}, {"source": "mnist", "image_size": 28}, (1, 28, 28)),
        ({"hidden_dims": [8, 16]}, {"source": "tensor"}, (2, 256)),
        ({"arch": "mlp", "hidden_dims": [16]}, {"source": "tensor"}, (20,)),
    ],
)
def test_parameter_estimate_never_exceeds_the_built_model(model: dict, data: dict, shape: tuple) -> None:
    from vaekit.config.checks import estimate_parameters
    from vaekit.config.schema import DataConfig, ModelConfig
    from vaekit.models import build_model

    mc, dc = ModelConfig(**model), DataConfig(**data)
    real = sum(p.numel() for p in build_model(mc, shape, "bce").parameters())
    assert 0 < sum(estimate_parameters(mc, dc)) <= real


def test_thousands_of_stages_are_refused_quickly() -> None:
    stages = [{"name": f"s{i}", "steps": 1} for i in range(5000)]
    _one_line_quickly({"stages": stages}, match=r"^stages: .*at most 100 stages \(got 5000\)")
