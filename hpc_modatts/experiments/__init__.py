"""Experiments made of many pipelines: annotation-budget sweeps (``sweep``), their aggregated
tables and plots (``report``), and the annotation advisor (``advise`` with ``scorers``)."""
