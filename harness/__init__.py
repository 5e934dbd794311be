"""The engine shared by every method: run specs, the trainer, metrics, checkpoints, aggregation."""
