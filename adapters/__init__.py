"""Model families (installed as ``xaibench.adapters``): one sub-package per family."""
