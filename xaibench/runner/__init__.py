"""The benchmark runner: TOML configs, grid expansion, executors and the SQLite results store.

    from xaibench.runner import run_benchmark
    result = run_benchmark("default")            # -> reports/default/ (results.db, report.html, ...)
"""

from ..errors import (
    CellError,
    ConfigError,
    ConfigMismatchError,
    RunExistsError,
    RunLockedError,
)
from ..store import RESULT_COLUMNS, CellResult, Store
from .config import (
    BenchmarkConfig,
    Cell,
    Study,
    expand,
    list_benchmarks,
    load_config,
    parse_config,
)
from .executor import (
    EXECUTORS,
    Executor,
    Job,
    LocalExecutor,
    create_executor,
    register_executor,
)
from .ray_executor import RayExecutor
from .run import RunResult, run_benchmark
from .specs import Spec, benchmark_schema

__all__ = [
    "BenchmarkConfig", "Cell", "CellError", "CellResult", "ConfigError", "ConfigMismatchError", "EXECUTORS",
    "Executor", "Job", "LocalExecutor", "RESULT_COLUMNS", "RayExecutor", "RunExistsError", "RunLockedError", "RunResult", "Spec",
    "Store", "Study", "benchmark_schema",
    "create_executor", "expand", "list_benchmarks", "load_config", "parse_config", "register_executor",
    "run_benchmark",
]
