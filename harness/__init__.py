"""The engine (building a run, the trainer, evaluation, warm starts, paper tables into run specs),
the reporting (tables.csv, checks, figures, leaderboard) and `python -m harness`; they stand on
core/ and on the data, models and methods registries (docs/architecture.md)."""
