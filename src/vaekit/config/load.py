"""Build a ``VaekitConfig``: defaults → preset → YAML file → dotted overrides, with one-line errors.

A bad value never becomes a traceback: ``ConfigError`` carries one line that names the full key path, the value
and what is allowed, and the CLI prints it and exits with code 2.

Untrusted input is bounded before anything expensive runs: a config file is at most 1 MiB of UTF-8 text; YAML
(files and override values) may nest at most ``MAX_DEPTH`` levels and expand to at most ``MAX_NODES`` values with
every alias counted at its full size (so a few hundred bytes of nested aliases, "billion laughs", are refused
while parsing instead of being expanded by validation); dotted keys have at most ``MAX_KEY_PARTS`` parts.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vaekit.config.schema import VaekitConfig
from vaekit.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"
PRESET_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_FILE_BYTES = 2**20
MAX_DEPTH = 32
"""Nesting levels of mappings/lists; the deepest real key (``stages.0.loss.adversarial.discriminator.channels``)
needs 6."""
MAX_NODES = 20_000
"""Values in one YAML document or config tree, aliases expanded; a real config has a few hundred."""
MAX_KEY_PARTS = 16

_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: fast and same results


# ------------------------------------------------------------------------------------ presets
def list_presets() -> dict[str, str]:
    """Preset name → its one-line description (the first comment line of its YAML file)."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        out[path.stem] = first.lstrip("# ").strip()
    return out


def load_preset(name: str) -> dict[str, Any]:
    if not isinstance(name, str) or not PRESET_NAME.fullmatch(name) or not (PRESET_DIR / f"{name}.yaml").is_file():
        raise ConfigError(f"preset: unknown preset {_short(name)}; choose one of {', '.join(list_presets())}")
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}


def preset_names(value: Any) -> list[str]:
    """A preset setting as an ordered list: a name, a comma-separated string (``"tags-small,beta-vae"``) or a list
    of those; empty entries are dropped (names are checked by ``load_preset``)."""
    if value is None:
        return []
    out: list[Any] = []
    for item in value if isinstance(value, list | tuple) else [value]:
        if isinstance(item, str):
            out.extend(part.strip() for part in item.split(",") if part.strip())
        else:
            out.append(item)
    return out


def compose_presets(names: list[str]) -> dict[str, Any]:
    """The presets merged in order: a later preset's keys win over an earlier one's."""
    tree: dict[str, Any] = {}
    for name in names:
        tree = deep_merge(tree, load_preset(name))
    return tree


def preset_keys(names: list[str]) -> dict[str, tuple[str, Any]]:
    """Dotted key → (the preset that set it, its value) for presets applied in this order (the last one wins)."""
    out: dict[str, tuple[str, Any]] = {}
    for name in names:
        for path, value in _flatten(load_preset(name)):
            out[".".join(path)] = (name, value)
    return out


# ------------------------------------------------------------------------------------- bounded YAML
def safe_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses deep nesting and alias expansion beyond the budgets, in one line.

    Raises:
        ConfigError: naming ``where`` when a budget is exceeded.
        yaml.YAMLError, ValueError: not valid YAML (the caller words it).
    """
    _check_yaml_size(text, where)
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a safe loader


def _check_yaml_size(text: str, where: str) -> None:
    # One pass over the parser's events (no tree is built, nothing recurses): the nesting depth, and each node's
    # size with aliases expanded, counted bottom-up so an alias costs the full size of what it names.
    open_nodes: list[list[Any]] = []  # per open mapping/sequence: [anchor, expanded size so far]
    sizes: dict[str, int] = {}
    total = 0
    for event in yaml.parse(text, Loader=_YamlLoader):
        _check_duplicate_key(open_nodes, event, where)
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            open_nodes.append([event.anchor, 1, _KeyTracker() if isinstance(event, yaml.MappingStartEvent) else None])
            if len(open_nodes) > MAX_DEPTH:
                raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            anchor, n, _ = open_nodes.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, n = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, n = None, sizes.get(event.anchor, 0)
            if event.anchor in (node[0] for node in open_nodes):
                raise ConfigError(f"{where}: alias *{event.anchor} refers to itself (a recursive structure)")
        else:
            continue
        if anchor is not None:
            sizes[anchor] = n
        if open_nodes:
            open_nodes[-1][1] += n
            n = open_nodes[-1][1]
        else:
            total += n
            n = total
        if n > MAX_NODES:
            raise ConfigError(
                f"{where}: expands to more than {MAX_NODES} values (YAML aliases counted in full); "
                "a config needs a few hundred"
            )


class _KeyTracker:
    """Within one YAML mapping: whether the next node is a key, and the keys seen."""

    def __init__(self) -> None:
        self.key_next = True
        self.keys: set[str] = set()


def _check_duplicate_key(open_nodes: list[list[Any]], event: Any, where: str) -> None:
    """A mapping that names a key twice is refused (YAML would silently keep the last value)."""
    if not open_nodes or isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
        return
    tracker = open_nodes[-1][2]
    if tracker is None:
        return
    if tracker.key_next and isinstance(event, yaml.ScalarEvent) and event.value != "<<":
        if event.value in tracker.keys:
            line = f" (line {event.start_mark.line + 1})" if event.start_mark is not None else ""
            raise ConfigError(f"{where}: duplicate key {_short(event.value)}{line}; each key may appear once")
        tracker.keys.add(event.value)
    tracker.key_next = not tracker.key_next


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
        raise ConfigError(f"override {_short(item)}: expected key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {_short(item)}: empty key")
    try:
        value = safe_yaml(raw, f"override {_short(key)}") if raw.strip() else ""
    except (yaml.YAMLError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        value = raw
    if isinstance(value, str):
        value = _maybe_number(value)
    return key.split("."), value


def _maybe_number(text: str) -> Any:
    # YAML 1.1 reads "1e-4" as a string; users mean a number. Words ("nan", "inf") stay strings.
    if any(c.isalpha() and c not in "eE" for c in text):
        return text
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
    if len(path) > MAX_KEY_PARTS:
        raise ConfigError(f"{_short_key('.'.join(path))}: more than {MAX_KEY_PARTS} key parts")
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
        else:
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
    if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
        raise ConfigError(f"{_short_key(where)}: index out of range (the list has {len(node)} entries)")
    return int(part)


# ----------------------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping; ConfigError naming the file when it cannot be read or parsed."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"config: expected a file path, a mapping or a VaekitConfig, got {type(path).__name__}")
    name = f"config file {_short(str(path))}"
    try:
        with open(path, "rb") as f:  # not only regular files: `vaekit train <(...)` passes a pipe
            raw = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{name} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, not a YAML file") from None
    except (OSError, ValueError) as err:  # permissions, a too-long name, an embedded NUL
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError(f"{name}: cannot be read ({reason})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{name}: larger than {MAX_FILE_BYTES // 2**20} MiB; a config is a few KB of YAML")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name}: not UTF-8 text (invalid byte at offset {err.start}); save it as UTF-8") from None
    try:
        data = safe_yaml(text, name)
    except ConfigError:
        raise
    except (yaml.YAMLError, ValueError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{name}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of sections")
    return data


def check_tree(tree: Any, where: str = "config") -> None:
    """Refuse a tree (e.g. a dict from Python) deeper than ``MAX_DEPTH`` or with more than ``MAX_NODES`` values,
    counting shared sub-trees each time they appear (a cycle is infinitely deep)."""
    count = 0
    stack: list[tuple[Any, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} values; a config needs a few hundred")
        if isinstance(node, (Mapping, list, tuple)):
            if depth >= MAX_DEPTH:
                raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep")
            children = node.values() if isinstance(node, Mapping) else node
            stack.extend((child, depth + 1) for child in children)


def resolve_dict(
    source: str | Path | Mapping[str, Any] | VaekitConfig | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    preset: str | list[str] | None = None,
) -> dict[str, Any]:
    """The merged raw dict (not yet validated): preset → file/dict → overrides."""
    if isinstance(source, VaekitConfig):
        tree = source.model_dump(mode="json")
    elif isinstance(source, Mapping):
        check_tree(source)
        tree = copy.deepcopy(dict(source))
    elif source is None:
        tree = {}
    else:
        tree = read_yaml(source)
        _paths_from_file(tree, Path(source).parent)

    items = _override_items(overrides)
    # presets apply in order: the file's, then --preset (one or several), then preset=... overrides; a later
    # preset wins over an earlier one, and the file and overrides win over every preset
    names = preset_names(tree.get("preset")) + preset_names(preset)
    for path, value in items:
        if path == ["preset"]:
            names += preset_names(value)
    names = [n for i, n in enumerate(names) if n not in names[i + 1 :]]  # a repeated name counts where it is last
    if names:
        tree = deep_merge(compose_presets(names), tree)
        tree["preset"] = names[0] if len(names) == 1 else names
    elif "preset" in tree:
        tree["preset"] = None
    for path, value in items:
        if path != ["preset"]:
            set_dotted(tree, path, value)
    check_tree(tree)
    return tree


DATA_PATH_KEYS = ("path", "events_path")


def _paths_from_file(tree: dict[str, Any], folder: Path) -> None:
    """A config file's relative data paths name files beside the config: each one that exists relative to the
    file's folder becomes that path (else it stays relative to the current directory, as before)."""
    defaults, stages = tree.get("stage_defaults"), tree.get("stages")
    sections = [tree.get("data"), defaults.get("data") if isinstance(defaults, dict) else None]
    sections += [st.get("data") for st in (stages if isinstance(stages, list) else []) if isinstance(st, dict)]
    for data in sections:
        if not isinstance(data, dict):
            continue
        for key in DATA_PATH_KEYS:
            value = data.get(key)
            if isinstance(value, str) and value and not os.path.isabs(value):
                beside = folder / value
                if beside.exists():
                    data[key] = os.path.normpath(beside)


def _override_items(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[list[str], Any]]:
    if isinstance(overrides, Mapping):
        check_tree(overrides, "overrides")
        items = []
        for key, value in overrides.items():
            path = str(key).replace("__", ".").split(".")
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
    preset: str | list[str] | None = None,
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
        return f"{key}: {_short(value)} is not allowed; choose one of {expected}"
    if kind == "missing":
        return f"{key}: required"
    msg = e["msg"].removeprefix("Value error, ")
    if len(loc) <= 1 and re.match(r"[a-z_]+(\.[a-z_]+)*[:=]", msg):  # a section's cross-field check names its key
        return prefix + msg
    return f"{key}: {_short(value)} is invalid: {msg}"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (Python's 4300-digit limit)
        text = f"<a {type(value).__name__} too large to print>"
    return text if len(text) < 80 else text[:77] + "..."


def _short_key(key: str) -> str:
    return key if len(key) < 80 else key[:77] + "..."


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
