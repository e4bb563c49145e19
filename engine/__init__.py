"""Loops that run the packages: the training loop (`train`), the paper's stages (`stages`), the training
flags (`options`), the depth teacher (`depth`), evaluation (`evaluate`), baselines and figures.

Submodules are imported where they are used, so that evaluating does not load the training code.
"""
