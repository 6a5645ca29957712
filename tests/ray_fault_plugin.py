"""A test-only plugin for the Ray executor tests (imported by tests/test_ray.py and by Ray workers;
not a test module, so pytest never imports it: the registry of other tests stays as shipped).

``raytest.flaky_gradcam`` is GradCAM whose worker process dies (``os._exit``) on its first call
while its ``marker`` file does not exist: it creates the marker first, so the retried cell runs
through. With the default ``marker=""`` it is plain GradCAM, so any registry-wide check sees a
well-behaved CNN explainer.
"""

from __future__ import annotations

import os
from pathlib import Path

from xaibench import register_explainer
from xaibench.adapters.cnn.cam import GradCAM

@register_explainer("raytest.flaky_gradcam", fixture="cnn")
class FlakyGradCAM(GradCAM):
    """GradCAM whose process dies once, mid-cell, while its marker file is missing (tests only)."""

    class Settings(GradCAM.Settings):
        marker: str = ""
        """File whose absence kills the process on the first call (it is created first)."""

    def explain(self, inputs, target=None):
        marker = self.settings.marker
        if marker and not Path(marker).exists():
            Path(marker).write_text(str(os.getpid()))
            os._exit(3)  # a worker dying mid-cell: no exception, no cleanup
        return super().explain(inputs, target)
