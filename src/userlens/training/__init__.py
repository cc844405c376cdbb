"""Training, checkpoints and evaluation: everything a model must not know about."""
