"""Evaluation: stream any model through a package's splits and report its robustness.

- :mod:`builder.evaluation.model_loading`: ``--model`` loading and the model input;
- :mod:`builder.evaluation.scoring`: per-split scores, white-box attacks, robustness;
- :mod:`builder.evaluation.reports`: ``results.json``, ``results.md``, ``robustness.png``,
  and the Hub's ``.eval_results/`` file.

Reads packages only (through :mod:`fluorobench_c` and the manifest); never imports the build.
"""

from builder.evaluation.reports import results_markdown, write_eval_results, write_reports
from builder.evaluation.scoring import evaluate

__all__ = ["evaluate", "results_markdown", "write_eval_results", "write_reports"]
