"""The local web page of app.py (Gradio): a photo, uploaded or one of scikit-image's samples, and where it is in
focus: the P(in-focus) map, the blurred regions tinted red and the in-focus mask at an adjustable threshold, from
the shipped model or any checkpoint in checkpoint/ that loads. The map is models.predict's, as test.py --images
writes it; a file test.py refuses is refused with the line test.py prints, never a stack trace."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import gradio as gr
import numpy as np
import torch

from datasets import DatasetError, PhotoDataset
from datasets.decoding import load_rgb
from engine.evaluate import to_8bit
from models import load_model, predict
from models.inference import input_spec
from models.shipped import ROOT, SHIPPED_CHECKPOINT
from utils.checkpoint import CheckpointError
from utils.plots import blur_overlay

CHECKPOINT_SUFFIXES = (".pth", ".pt")
DEFAULT_THRESHOLD = 0.5
USER_ERRORS = (DatasetError, CheckpointError, FileNotFoundError, ValueError)  # what test.py reports in one line
INTRO = """# D-DFFNet: where is this photo in focus?
Drop a photo, or pick a sample: the detector gives every pixel its probability of being in focus (white = sharp).
The blurred regions are tinted red at the threshold you choose. Everything runs on this computer's CPU."""
CSS = """
#status { min-height: 2.5em; }
#status p { margin: 0; }
#samples .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
#samples .thumbnail-item { min-width: 0 !important; }
.gradio-container { max-width: 1400px !important; }
"""
log = logging.getLogger("app")


@lru_cache(maxsize=2)
def load_detector(path: Path) -> torch.nn.Module:
    """A blur detector from a checkpoint file, on the CPU, in eval mode (the last two used are kept)."""
    return load_model(path, map_location="cpu", detector_only=True).eval()


def checkpoint_label(path: Path) -> str:
    """The model choice's name of a checkpoint: its path below checkpoint/ (else as given)."""
    try:
        return str(path.resolve().relative_to((ROOT / "checkpoint").resolve()))
    except ValueError:
        return str(path)


def describe_detector(model: torch.nn.Module) -> str:
    """'dffnet / resnet10t at 224 px'."""
    config = getattr(model, "config", {})
    return f"{config.get('name')} / {config.get('backbone')} at {input_spec(model).img_size} px"


def find_detectors(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """The detectors the page offers (checkpoint_label -> file): the shipped model first, then every .pth / .pt
    file under `folder` that loads as a blur detector; and the files left out, each with the reason."""
    files = [SHIPPED_CHECKPOINT] + sorted(p for p in folder.rglob("*") if p.suffix in CHECKPOINT_SUFFIXES
                                          and p.is_file() and p.resolve() != SHIPPED_CHECKPOINT.resolve())
    found, left_out = {}, []
    for path in files:
        try:
            load_model(path, map_location="cpu", detector_only=True)
        except (*USER_ERRORS, RuntimeError) as exc:
            left_out.append(f"{path}: {' '.join(str(exc).split())}")
            continue
        found[checkpoint_label(path)] = path
    return found, left_out


@dataclass
class Analysis:
    """One photo (upright RGB), its P(in-focus) map, the seconds models.predict took and the model's description."""
    photo: np.ndarray
    in_focus: np.ndarray
    seconds: float
    model: str


def analyse(photo_path: Path, checkpoint: Path) -> Analysis:
    """Check the file as test.py --images does, then predict its map. Raises the errors test.py reports."""
    PhotoDataset([photo_path])  # test.py --images's check of a file given by name: an image extension
    picture = load_rgb(photo_path)
    model = load_detector(checkpoint)
    start = time.perf_counter()
    in_focus = predict(model, picture)
    return Analysis(np.asarray(picture), in_focus, time.perf_counter() - start, describe_detector(model))


def views(analysis: Analysis, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(8-bit map as test.py saves it, photo with the blurred regions tinted red, in-focus mask) at `threshold`:
    in focus where P(in-focus) > threshold."""
    sharp = analysis.in_focus > threshold
    return (to_8bit(torch.from_numpy(analysis.in_focus)), blur_overlay(analysis.photo, sharp.astype(np.float32)),
            sharp.astype(np.uint8) * 255)


def error_line(exc: Exception, photo_path: Path | None) -> str:
    """The one line test.py prints for `exc` (after 'test.py: error: '), the upload's temporary folder left out."""
    message = " ".join(str(exc).split())
    return message.replace(str(photo_path), photo_path.name) if photo_path is not None else message


def _picture(label: str, file_format: str, elem_id: str) -> gr.Image:
    """An output picture: JPEG for photos, PNG (lossless) for maps, so that the map shown is the map saved."""
    return gr.Image(label=label, format=file_format, interactive=False, height=320, buttons=["download", "fullscreen"],
                    elem_id=elem_id)


def build_page(detectors: dict[str, Path], samples: list[Path]) -> gr.Blocks:
    """The page: photo input (upload or sample), model and threshold on the left; photo, map, overlay and mask."""
    def run(photo: str | None, detector: str, threshold: float) -> tuple:
        """Outputs for one photo: the four pictures, the status line, the analysis kept for the threshold and
        the photo's path kept for a change of model."""
        if not photo:
            return None, None, None, None, "", None, None
        path = Path(photo)
        try:
            analysis = analyse(path, detectors[detector])
        except USER_ERRORS as exc:
            return None, None, None, None, f"**error:** {error_line(exc, path)}", None, photo
        except Exception as exc:  # a bug, not the user's file: one line here, the traceback in the terminal
            log.exception("app.py: unexpected error on %s", path)
            return (None, None, None, None, f"**error:** unexpected {type(exc).__name__} (details in the terminal "
                    "that runs app.py)", None, photo)
        grey, overlay, mask = views(analysis, threshold)
        height, width = analysis.in_focus.shape
        status = (f"**{path.name}** ({width} x {height} px): {analysis.model} took **{analysis.seconds:.2f} s** "
                  "on the CPU")
        return analysis.photo, grey, overlay, mask, status, analysis, photo

    def redraw(analysis: Analysis | None, threshold: float) -> tuple:
        if analysis is None:
            return None, None
        _, overlay, mask = views(analysis, threshold)
        return overlay, mask

    def pick_sample(detector: str, threshold: float, event: gr.SelectData) -> tuple:
        return run(str(samples[event.index]), detector, threshold)

    with gr.Blocks(title="D-DFFNet: defocus blur detection", analytics_enabled=False) as page:
        gr.Markdown(INTRO)
        analysis_state, photo_state = gr.State(None), gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                upload = gr.File(label="Your photo (.jpg, .png, .bmp, .tif)", type="filepath", elem_id="upload",
                                 height=150)
                gr.Markdown("or pick a sample photo (scikit-image's, CC0 / public domain):")
                gallery = gr.Gallery(value=[str(p) for p in samples], columns=4, height=96,
                                     show_label=False, allow_preview=False, object_fit="cover", buttons=[],
                                     elem_id="samples")
                detector = gr.Dropdown(list(detectors), value=next(iter(detectors)), label="Model", elem_id="model",
                                       info="the shipped model, or any checkpoint in checkpoint/ that loads")
                threshold = gr.Slider(0, 1, value=DEFAULT_THRESHOLD, step=0.01, label="Threshold",
                                      info="in focus where P(in-focus) is above it", elem_id="threshold")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=5):
                with gr.Row():
                    photo = _picture("Photo", "jpeg", "photo")
                    in_focus = _picture("P(in-focus): white = sharp", "png", "map")
                with gr.Row():
                    overlay = _picture("Blurred (red) at the threshold", "jpeg", "overlay")
                    mask = _picture("In focus (white) at the threshold", "png", "mask")
        outputs = [photo, in_focus, overlay, mask, status, analysis_state, photo_state]
        upload.upload(run, [upload, detector, threshold], outputs)
        upload.clear(lambda: (None, None, None, None, "", None, None), None, outputs)
        gallery.select(pick_sample, [detector, threshold], outputs)
        detector.change(run, [photo_state, detector, threshold], outputs)
        threshold.change(redraw, [analysis_state, threshold], [overlay, mask])
    return page


def serve(page: gr.Blocks, host: str, port: int) -> None:
    """Serve the page on host:port until interrupted (no analytics, no public link)."""
    page.launch(server_name=host, server_port=port, share=False, show_error=False, css=CSS,
                theme=gr.themes.Soft(), footer_links=[])
