"""Loops that run the packages: the training loop (`train`), the paper's stages (`stages`), the training
flags (`options`), the depth teacher (`depth`), a model's evaluation (`evaluate`), saved maps (`saved_maps`),
photos (`photos`), test.py's flags and run (`eval_options`, `eval_run`), baselines and figures.

Submodules are imported where they are used, so that evaluating does not load the training code.
"""
