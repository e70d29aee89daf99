"""A long run keeps the sample files of its last few validations only (``log.keep_samples``, issue 19)."""

from __future__ import annotations

from pathlib import Path

from conftest import tiny_tree

import vaekit


def test_a_run_keeps_only_the_last_validations_sample_images(tmp_path: Path) -> None:
    tree = tiny_tree(tmp_path, "s", data={"num_samples": 64}, train={"max_steps": 8, "val_every": 1, "batch_size": 16,
                                                                       "val_batches": 1},
                     log={"samples": True, "num_samples": 4, "keep_samples": 3})
    run = vaekit.train(tree).run_dir
    recon = sorted(p.name for p in (run / "samples").glob("*-recon.png"))
    assert len(recon) == 3 and recon[-1].endswith("000008-recon.png")
    assert len(list((run / "samples").glob("*-prior.png"))) == 3
