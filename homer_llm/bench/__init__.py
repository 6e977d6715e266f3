"""``homer-llm bench``: memory and speed of plain prefill vs HOMER on random-initialised models.

Modules: ``configs`` (model shapes, meta-device build), ``measure`` (timers, memory meters, matmul
probe), ``runner`` (the measurement loop, OOM as a result), ``report`` (table, JSON, plot) and
``cli`` (arguments for the main command line).
"""

from .configs import SHAPES, ModelShape, build_model, get_shape
from .runner import Bench, BenchReport, BenchResult, BenchSettings

__all__ = ["SHAPES", "Bench", "BenchReport", "BenchResult", "BenchSettings", "ModelShape", "build_model", "get_shape"]
