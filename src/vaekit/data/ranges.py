"""Does the data fit the likelihood? A Bernoulli (``bce``) likelihood needs targets in [0, 1]; trained on anything
else its loss falls without bound while the model learns nothing useful, so such a run is refused in one line."""

from __future__ import annotations

from typing import Any

import torch

from vaekit.errors import ConfigError


def check_target_range(recon: str, source: Any, where: str = "loss.recon") -> None:
    """Refuse ``bce`` on an in-memory source whose values leave [0, 1] (streamed sources are not scanned).

    Raises:
        ConfigError: naming the key, the data's range and what to use instead.
    """
    x = getattr(source, "x", None)
    if recon != "bce" or not isinstance(x, torch.Tensor) or x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.float())
    lo, hi = float(lo), float(hi)
    if lo < 0.0 or hi > 1.0:
        raise ConfigError(
            f"{where}: bce needs targets in [0, 1], but the training data range from {lo:.4g} to {hi:.4g}; "
            "use loss.recon=gaussian (or mse) for continuous values, or data.normalize=minmax"
        )
