"""The generated reference pages match the code, and every config key documents itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from vaekit.config.schema import StageConfig, VaekitConfig

ROOT = Path(__file__).resolve().parents[2]


def _submodel(tp: Any) -> type[BaseModel] | None:
    """The config class inside ``Model``, ``Model | None`` or ``list[Model]``."""
    for candidate in (tp, *get_args(tp)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _undocumented(model: type[BaseModel], prefix: str) -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        if not (field.description or "").strip():
            missing.append(prefix + name)
        sub = _submodel(field.annotation)
        if sub is not None:
            missing += _undocumented(sub, f"{prefix}{name}.")
    return missing


def test_every_config_key_has_a_docstring():
    assert _submodel(VaekitConfig.model_fields["stages"].annotation) is StageConfig  # lists are walked too
    missing = _undocumented(VaekitConfig, "")
    assert not missing, (
        "config keys without a docstring (write a string literal right after the field in schema.py): "
        + ", ".join(missing)
    )


def test_generated_reference_pages_are_current():
    """Fails when schema.py or cli.py changed without `python3 docs/gen_reference.py` being rerun."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_readme_is_short_and_its_links_resolve():
    """The README is a front page (under 200 lines); the details live in docs/, which its links must reach."""
    import re

    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
    missing = sorted(t for t in targets if t and not (ROOT / t).exists())
    assert not missing, f"README links to missing files: {missing}"
