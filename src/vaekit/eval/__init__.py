"""Evaluation: the metric functions (`metrics`, a leaf) and their table (`registry`); `evaluate` one model and
`compare` several (`evaluate`: loading in `load`, data in `data`, the pass in `run`, comparing in `comparison`);
figures (`figures`)."""

from vaekit.eval.evaluate import compare, evaluate, load_for_eval, markdown_table

__all__ = ["compare", "evaluate", "load_for_eval", "markdown_table"]
