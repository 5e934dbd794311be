"""The ground every other part stands on: one-line errors, the name registries, paths, atomic file
writes and locks, the run spec, the one definition of each metric, budgets, lr schedules, scheduler
resources, and reading results. It imports nothing of the project outside itself (docs/architecture.md)."""
