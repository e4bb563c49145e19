"""Plumbing: the optimiser and schedules, checkpoints, distributed set-up, run locks, logging, plots, resizing, device / AMP."""
