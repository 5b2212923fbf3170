"""The demo's defaults: the rows of its table and the size of its phantom.

Apart from ``hpc_modatts.demo`` so that ``hpc-modatts --help`` can show them (the demo's
``--variants`` choices and ``--cases`` default) without loading the data stack and the pipeline.
"""

from hpc_modatts.config import END_TO_END_VARIANTS, SLICE_VARIANTS, TABLE_ORDER

CHOICES = TABLE_ORDER
"""Variants ``hpc-modatts demo --variants`` accepts, in table order (MoDATTS-2D and M-GenSeg included)."""
VARIANTS = tuple(v for v in TABLE_ORDER if v not in SLICE_VARIANTS and v not in END_TO_END_VARIANTS)
"""Default rows of the demo's table, in order: no adaptation, MoDATTS self- and semi-supervised, the
upper bound (MoDATTS-2D and M-GenSeg on request: ``--variants``; docs/results.md)."""
DEMO_CASES = 40
"""Phantom cases of the demo: 24 train (12 T1 annotated, 12 T2 unannotated), 6 validation, 10 test."""
