"""Evaluation: metrics (`metrics`), `evaluate` one model / `compare` several (`evaluate`), figures (`figures`)."""

from vaekit.eval.evaluate import compare, evaluate, load_for_eval, markdown_table

__all__ = ["compare", "evaluate", "load_for_eval", "markdown_table"]
