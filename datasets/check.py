"""Check a defocus data set folder: pairs, unpaired, mismatched and corrupt files, formats, mask value
ranges, one-class masks, mask polarity.

Every image and mask is decoded in full (on a thread pool), so a truncated file is named with the
others instead of stopping the check. The folder holds an image folder (image/ or images/) and a mask
folder (gt/ or masks/); the command line is tools/check_dataset.py.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from .files import pair_folders
from .polarity import estimate_polarity
from .registry import find_pair_dirs


def check_folder(path: str | Path, max_images: int = 100) -> dict:
    """Report on the set in `path` as a JSON-serialisable dict."""
    image_dir, mask_dir = find_pair_dirs(Path(path))
    pairing = pair_folders(image_dir, mask_dir)
    pairing.decode_all()
    polarity = estimate_polarity(pairing.pairs, max_images)
    unpaired = ([f"{image_dir.name}/{n}" for n in pairing.images_without_mask]
                + [f"{mask_dir.name}/{n}" for n in pairing.masks_without_image])
    return {
        "path": str(path),
        "image_dir": image_dir.name,
        "mask_dir": mask_dir.name,
        "pairs": len(pairing.pairs),
        "unpaired": unpaired,
        "size_mismatch": [p.name for p in pairing.size_mismatch],
        "size_mismatch_detail": [{"name": p.name, "image_size": list(p.image_size),
                                  "mask_size": list(p.mask_size)} for p in pairing.size_mismatch],
        "unreadable": pairing.unreadable,
        "corrupt": pairing.corrupt,
        "colour_masks": pairing.colour_masks,
        "too_small": pairing.too_small,
        "hidden_files": pairing.hidden,
        "one_class_masks": pairing.one_class_masks,
        "every_mask_one_class": pairing.every_mask_one_class,
        "duplicate_stems": pairing.duplicates,
        "other_files": pairing.odd_files,
        "image_types": dict(Counter(p.image.suffix for p in pairing.pairs)),
        "mask_modes": dict(pairing.mask_modes),
        "mask_value_ranges": dict(pairing.mask_ranges),
        "polarity": polarity.as_dict(),
    }


def has_problems(report: dict) -> bool:
    """True when some file cannot be used as it is, or no mask holds both classes."""
    return report["every_mask_one_class"] or any(
        report[key] for key in ("unpaired", "size_mismatch", "unreadable", "corrupt", "colour_masks", "too_small",
                                "duplicate_stems"))


def format_report(report: dict) -> str:
    """Human-readable report: counts, then the names behind every non-zero count."""
    polarity = report["polarity"]
    lines = [f"{report['path']}  ({report['image_dir']}/ + {report['mask_dir']}/)",
             f"  pairs:            {report['pairs']}"]
    for key, label in (("unpaired", "unpaired"), ("size_mismatch", "size mismatch"),
                       ("unreadable", "unreadable"), ("corrupt", "corrupt"), ("colour_masks", "colour masks"),
                       ("too_small", "too small"), ("hidden_files", "hidden files"),
                       ("duplicate_stems", "duplicate stems"), ("other_files", "other files"),
                       ("one_class_masks", "one-class masks")):
        lines.append(f"  {label + ':':<17} {len(report[key])}")
    for detail in report["size_mismatch_detail"]:
        lines.append(f"    size mismatch: {detail['name']} image {detail['image_size']} "
                     f"mask {detail['mask_size']}")
    for key in ("unpaired", "unreadable", "too_small", "duplicate_stems", "other_files"):
        lines.extend(f"    {key.replace('_', ' ')}: {name}" for name in report[key])
    lines.extend(f"    corrupt: {name} ({reason})" for name, reason in report["corrupt"].items())
    lines.extend(f"    colour mask: {name} (masks must be grey)" for name in report["colour_masks"])
    lines.extend(f"    one-class mask: {name} ({which})" for name, which in report["one_class_masks"].items())
    if report["every_mask_one_class"]:
        lines.append("    every mask is one class: nothing to learn or score; see how the masks are stored")
    lines.append("  image types:      " + ", ".join(f"{k} {v}" for k, v in report["image_types"].items()))
    lines.append("  mask modes:       " + ", ".join(f"{k} {v}" for k, v in report["mask_modes"].items()))
    lines.append("  mask values:      " + ", ".join(f"{k} {v}" for k, v in report["mask_value_ranges"].items()))
    lines.append(f"  polarity:         {polarity['label']} (confidence {polarity['confidence']:.2f} over "
                 f"{polarity['images_used']} images; median log HF-energy ratio white/black "
                 f"{polarity['median_log_ratio']:+.2f})")
    return "\n".join(lines)

