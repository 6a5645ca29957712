"""Studies: the analyses and report figures that belong to one study, apart from the methods.

A family's adapters hold its models and explanation methods; what a particular study computes
on top of them (class-level maps, composite faces, per-head readings, projections) lives here,
one package per study, registered through the ``xaibench.plugins`` entry points like any wing.
The core never imports a study.
"""
