"""What a report is drawn from (shared by the markdown and HTML renderers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..store import RunData


@dataclass
class Report:
    """What the renderers draw: the run's data, paired comparisons, figures and figure errors."""

    data: RunData
    paired: pd.DataFrame
    figures: list[tuple[str, str, Path]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
