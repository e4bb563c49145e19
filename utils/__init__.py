"""Metrics, schedules, checkpoints, distributed set-up, logging and plots."""
