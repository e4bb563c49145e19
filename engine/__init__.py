"""Loops that run the packages: training (`train`, `depth`), evaluation (`evaluate`), baselines and figures.

Submodules are imported where they are used, so that evaluating does not load the training code.
"""
