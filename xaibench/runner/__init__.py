"""The benchmark runner: TOML configs, grid expansion, executors and the SQLite results store.

    from xaibench.runner import run_benchmark
    result = run_benchmark("default")            # -> reports/default/ (results.db, report.html, ...)
"""

from .config import BenchmarkConfig, Cell, Study, expand, list_benchmarks, load_config, parse_config
from .specs import ConfigError, Spec
from .executor import EXECUTORS, Executor, Job, LocalExecutor, create_executor, register_executor
from .run import ConfigMismatchError, RunExistsError, RunResult, run_benchmark
from .store import RESULT_COLUMNS, CellResult, Store
from .work import CellError

__all__ = [
    "BenchmarkConfig", "Cell", "CellError", "CellResult", "ConfigError", "ConfigMismatchError", "EXECUTORS",
    "Executor", "Job", "LocalExecutor", "RESULT_COLUMNS", "RunExistsError", "RunResult", "Spec", "Store", "Study",
    "create_executor", "expand", "list_benchmarks", "load_config", "parse_config", "register_executor",
    "run_benchmark",
]
