"""Benchmarks as ``datasets`` builders and the continual task stream over them.

``load_benchmark("imre", "sep10", data_dir=...)``, ``load_benchmark("imner", "plom", data_dir=...)``,
``load_benchmark("synthetic", "re")``.
"""

from .benchmark import BUILDERS, ContinualBenchmark, ContinualTask, load_benchmark
from .common import BenchmarkFormatError
from .export import export_benchmark, push_export
from .imner import IMNER, IMNERConfig
from .imre import IMRE, IMREConfig
from .synthetic import Synthetic, SyntheticConfig

__all__ = [
    "BUILDERS", "BenchmarkFormatError", "ContinualBenchmark", "ContinualTask", "IMNER", "IMNERConfig",
    "IMRE", "IMREConfig", "Synthetic", "SyntheticConfig", "export_benchmark", "load_benchmark", "push_export",
]
