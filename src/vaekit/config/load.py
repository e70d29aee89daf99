"""Build a ``VaekitConfig``: defaults → preset → YAML file → dotted overrides, with one-line errors.

A bad value never becomes a traceback: ``ConfigError`` carries one line that names the full key path, the value
and what is allowed, and the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import copy
import difflib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vaekit.config.schema import VaekitConfig
from vaekit.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


# ------------------------------------------------------------------------------------ presets
def list_presets() -> dict[str, str]:
    """Preset name → its one-line description (the first comment line of its YAML file)."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        out[path.stem] = first.lstrip("# ").strip()
    return out


def load_preset(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    return yaml.safe_load(path.read_text()) or {}


# ---------------------------------------------------------------------------------- overrides
def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` merged into ``base`` recursively (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` → (["optim", "lr"], 0.0001). Values are YAML (``[32,64]``, ``true``, ``null``)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        value = _maybe_number(value)
    return key.split("."), value


def _maybe_number(text: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; users mean a number.
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[a][b]...`` creating dicts on the way; an integer part indexes a list (``stages.1.steps``)."""
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
            continue
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"{where}: is a value, not a section; cannot set {'.'.join(path)}")
    last = path[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(path))] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{where}: index out of range (the list has {len(node)} entries)")
    return int(part)


# ----------------------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {str(path)!r}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r}: the top level must be a mapping of sections")
    return data


def resolve_dict(
    source: str | Path | Mapping[str, Any] | VaekitConfig | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    preset: str | None = None,
) -> dict[str, Any]:
    """The merged raw dict (not yet validated): preset → file/dict → overrides."""
    if isinstance(source, VaekitConfig):
        tree = source.model_dump(mode="json")
    elif isinstance(source, Mapping):
        tree = copy.deepcopy(dict(source))
    elif source is None:
        tree = {}
    else:
        tree = read_yaml(source)

    items = _override_items(overrides)
    for path, value in items:  # a preset may be chosen on the command line too
        if path == ["preset"]:
            preset = value
    preset = preset or tree.get("preset")
    if preset:
        tree = deep_merge(load_preset(str(preset)), tree)
        tree["preset"] = preset
    for path, value in items:
        set_dotted(tree, path, value)
    return tree


def _override_items(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[list[str], Any]]:
    if isinstance(overrides, Mapping):
        items = []
        for key, value in overrides.items():
            path = key.replace("__", ".").split(".")
            if isinstance(value, Mapping):  # train={"epochs": 2} → train.epochs=2
                items.extend((path + sub, v) for sub, v in _flatten(value))
            else:
                items.append((path, value))
        return items
    return [parse_override(item) for item in overrides]


def _flatten(tree: Mapping[str, Any], prefix: list[str] | None = None) -> list[tuple[list[str], Any]]:
    out: list[tuple[list[str], Any]] = []
    for key, value in tree.items():
        path = [*(prefix or []), str(key)]
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, path))
        else:
            out.append((path, value))
    return out


def load_config(
    source: str | Path | Mapping[str, Any] | VaekitConfig | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    preset: str | None = None,
) -> VaekitConfig:
    """Validate the merged config. Raises ``ConfigError`` with one line naming key, value and what is allowed."""
    tree = resolve_dict(source, overrides, preset)
    cfg = validate_tree(tree)
    from vaekit.config.checks import check_config  # cross-section checks (stages, optimizers)

    check_config(cfg)
    return cfg


def validate_tree(tree: dict[str, Any], model: type[BaseModel] = VaekitConfig, prefix: str = "") -> Any:
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, prefix)) from None


# ------------------------------------------------------------------------------ error messages
def format_validation_error(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """The first error of ``err`` as one line: ``train.precision: 'fp32' is not allowed; choose one of …``."""
    e = err.errors(include_url=False)[0]
    loc = [str(p) for p in e["loc"]]
    key = prefix + ".".join(loc)
    value = e.get("input")
    kind = e["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, e["loc"][:-1])
        hint = difflib.get_close_matches(loc[-1], allowed, n=1)
        tip = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{key}: unknown key{tip} (allowed: {', '.join(allowed)})"
    if kind == "literal_error":
        expected = e.get("ctx", {}).get("expected", "")
        return f"{key}: {value!r} is not allowed; choose one of {expected}"
    if kind == "missing":
        return f"{key}: required"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{key}: {_short(value)} is invalid: {msg}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the section at ``loc`` (walking nested pydantic models)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_type(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_type(arg)
        if found is not None:
            return found
    return None


def dump_config(cfg: VaekitConfig) -> str:
    """The config as YAML, section order kept; loading it back gives an equal config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, default_flow_style=None)
