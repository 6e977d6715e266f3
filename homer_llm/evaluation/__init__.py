"""Long-context quality evaluation (``homer-llm eval``): seeded synthetic tasks and real-prose
perplexity, HOMER against every baseline on the same model and samples, with confidence intervals.

Modules: tasks (generators + checkers), perplexity (essay samples), methods (HOMER variants and
baselines), runner (plain layer loop, continuation scoring, deadlines), rope (RoPE-scaled views),
harness (the budgeted loop), report (table, JSON, plot), stats (intervals), cli.
"""

from .harness import EvalSettings, Record, run_eval
from .methods import ALL_METHODS, EvalModel, Method, MethodResult, build_parts, make_methods
from .perplexity import PerplexityTask, PPLSample
from .stats import perplexity_interval, wilson_interval
from .tasks import QA_TASKS, QASample

__all__ = [
    "ALL_METHODS",
    "QA_TASKS",
    "EvalModel",
    "EvalSettings",
    "Method",
    "MethodResult",
    "PPLSample",
    "PerplexityTask",
    "QASample",
    "Record",
    "build_parts",
    "make_methods",
    "perplexity_interval",
    "run_eval",
    "wilson_interval",
]
