"""The paper's data sets (folders, splits, raw mask polarity) and `build_dataset` over expressions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from .base import CombinedDataset, PairDataset, read_meta
from .decoding import image_size
from .errors import DatasetError, UnusableFilesError, format_names, warn
from .files import HOMOGENEOUS_DIR, Pairing, list_folder, natural_key, pair_folders, read_split_list, stem_key
from .polarity import STATED_POLARITIES, MaskPolarity, estimate_polarity, split_polarity

IMAGE_DIRS = ("image", "images", "img")
MASK_DIRS = ("gt", "GT", "mask", "masks")
CUHK_DIRS = ("CUHK", "shidatatset", "shidataset")
EBD_WIDE_DOF = 300
POLARITY_MIN_CONFIDENCE = 0.75
# |median log HF-energy ratio white/black| from which an estimate that contradicts a set's given polarity refuses
# the set (the real sets measure 1.2-1.6 the right way round; noise without defocus stays near 0)
POLARITY_CONTRADICTION = 0.5
# this repository's fixed validation split of CUHK-TR-1 (100 names drawn once with random.Random(2023))
CUHK_VALIDATION_LIST = Path(__file__).resolve().parent / "splits" / "cuhk_tr1_val.txt"
STATED_FORMS = "|".join(p.label for p in STATED_POLARITIES)


def _layouts(set_dirs: tuple[str, ...], pairs: tuple[tuple[str, str], ...] = ()) -> tuple:
    """(image folder, mask folder) candidates relative to the data root, in search order."""
    generic = tuple((f"{d}/{i}", f"{d}/{m}") for d in set_dirs for i in IMAGE_DIRS for m in MASK_DIRS)
    return generic + pairs


@dataclass(frozen=True)
class BenchmarkSet:
    """A registered data set: where it lives under the root, which files it takes, raw polarity."""
    name: str
    layouts: tuple[tuple[str, str], ...]
    polarity: MaskPolarity
    expected_pairs: int | None
    selection: str = "all"              # all | split-test | split-train | ebd-shallow | own-list
    split_names: tuple[str, ...] = ()   # split-list file names searched under the set and the root
    stem_prefix: str = ""
    own_list: Path | None = None        # a list shipped here: held out of split-train, the set of own-list


_DUT_AUTHORS = ("DUT/DUT-DBD_Dataset", "DUT-DBD_Dataset")
_BLURRED, _IN_FOCUS = MaskPolarity.WHITE_BLURRED, MaskPolarity.WHITE_IN_FOCUS
REGISTRY: dict[str, BenchmarkSet] = {s.name: s for s in (
    BenchmarkSet("CUHK-TR-1", _layouts(CUHK_DIRS), _BLURRED, 604, "split-train",
                 ("cuhk_te1.txt", "split.txt"), "out_of_focus"),
    BenchmarkSet("CUHK-TE-1", _layouts(CUHK_DIRS), _BLURRED, 100, "split-test",
                 ("cuhk_te1.txt", "split.txt"), "out_of_focus"),
    BenchmarkSet("CUHK-TR-1-FIT", _layouts(CUHK_DIRS), _BLURRED, 504, "split-train",
                 ("cuhk_te1.txt", "split.txt"), "out_of_focus", CUHK_VALIDATION_LIST),
    BenchmarkSet("CUHK-TR-1-VAL", _layouts(CUHK_DIRS), _BLURRED, 100, "own-list", (), "out_of_focus",
                 CUHK_VALIDATION_LIST),
    BenchmarkSet("CUHK-TR-2", _layouts(CUHK_DIRS), _BLURRED, None, "split-train",
                 ("cuhk_te2.txt",), "out_of_focus"),
    BenchmarkSet("CUHK-TE-2", _layouts(CUHK_DIRS), _BLURRED, None, "split-test",
                 ("cuhk_te2.txt",), "out_of_focus"),
    BenchmarkSet("DUT-TR", _layouts(("DUT-TR",), tuple(
        (f"{d}/DUT600S_Training", f"{d}/DUT600GT_Training") for d in _DUT_AUTHORS)), _IN_FOCUS, 600),
    BenchmarkSet("DUT-TE", _layouts(("DUT-TE",) + _DUT_AUTHORS, tuple(
        (f"{d}/DUT500S-Images", f"{d}/DUT500GT-Images") for d in _DUT_AUTHORS)), _IN_FOCUS, 500),
    BenchmarkSet("CTCUG", _layouts(("CTCUG",), (("CTCUG/CTCUG_images", "CTCUG/CTCUG_gt"),)),
                 _BLURRED, 150),
    BenchmarkSet("EBD", _layouts(("EBD",)), _IN_FOCUS, 1605),
    BenchmarkSet("EBD-1305", _layouts(("EBD",)), _IN_FOCUS, 1305, "ebd-shallow", ("ebd1305.txt",)),
)}


def uses_split_list(expr: str) -> bool:
    """True for a registered set that takes a split list (the CUHK splits, EBD-1305)."""
    return expr in REGISTRY and bool(REGISTRY[expr].split_names)


def dataset_names() -> list[str]:
    """Registered set names; `folder:PATH[:white=...]` and `synthetic:PATH` are accepted too."""
    return list(REGISTRY)


def build_dataset(expr: str, split: str, root: str | Path = "data", img_size: int = 320,
                  cache: bool = False, augment: bool | None = None,
                  split_file: str | Path | None = None, crop_scale: float = 1.0) -> Dataset:
    """Data set for an expression such as 'CUHK-TR-1+DUT-TR' or 'folder:PATH:white=blurred'.

    split 'train': augmented img_size^2 pairs, any problem is an error; 'test': mask at its original
    size, unusable files are left out with a warning, size mismatches kept in `size_mismatch`.
    `split_file` overrides the split list of the CUHK / EBD-1305 entry; `crop_scale` < 1 adds random crops
    to the training augmentation (datasets.base.PairDataset).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train = split == "train"
    augment = train if augment is None else augment
    terms = [t.strip() for t in expr.split("+")]
    if not all(terms):
        raise DatasetError(f"bad data-set expression {expr!r}: empty term")
    if len(terms) > 1 and not train:
        raise DatasetError(f"{expr}: '+' combines training sets; evaluate test sets one at a time")
    listed = [t for t in terms if uses_split_list(t)]
    if split_file is not None and len(listed) != 1:
        raise DatasetError(f"{expr}: --split-file applies to exactly one CUHK or EBD-1305 term, found "
                           f"{len(listed)}")
    parts = [_build_term(t, train, Path(root), img_size, cache, augment, split_file, crop_scale) for t in terms]
    return parts[0] if len(parts) == 1 else CombinedDataset(expr, parts)


def _build_term(term: str, train: bool, root: Path, img_size: int, cache: bool, augment: bool,
                split_file: str | Path | None, crop_scale: float = 1.0) -> PairDataset:
    if term.startswith("folder:"):
        path, polarity = _parse_folder(term)
        image_dir, mask_dir = find_pair_dirs(path)
        keys = None
    elif term.startswith("synthetic:"):
        path = Path(term[len("synthetic:"):])
        image_dir, mask_dir = path / "image", path / "gt"
        if not (image_dir.is_dir() and mask_dir.is_dir()):
            raise DatasetError(f"{term}: {path} has no image/ and gt/ (write one with "
                               "tools/make_synthetic.py)")
        polarity = _synthetic_polarity(path)
        keys = None
    elif term in REGISTRY:
        spec = REGISTRY[term]
        image_dir, mask_dir = _locate(spec, root)
        polarity = spec.polarity
        keys = _select_keys(spec, root, image_dir, split_file)
    else:
        raise DatasetError(f"unknown data set {term!r}; known: {', '.join(REGISTRY)}, "
                           f"folder:PATH[:{STATED_FORMS}], synthetic:PATH")
    pairing = pair_folders(image_dir, mask_dir, keys)
    pairing.decode_all()
    _apply_rules(term, pairing, train, image_dir)
    if polarity is None:
        polarity = _estimated_polarity(term, pairing.pairs)
    else:
        _check_given_polarity(term, pairing.pairs, polarity, image_dir.parent)
    if term in REGISTRY and REGISTRY[term].expected_pairs not in (None, len(pairing.pairs)):
        warn(f"{term}: {len(pairing.pairs)} pairs in {image_dir.parent}, the paper's set has "
             f"{REGISTRY[term].expected_pairs}")
    regions = None if train else homogeneous_masks(mask_dir.parent / HOMOGENEOUS_DIR, pairing.pairs)
    return PairDataset(term, pairing.pairs, polarity, train, img_size, augment, cache, list(pairing.corrupt),
                       homogeneous=regions, crop_scale=crop_scale)


def homogeneous_masks(folder: Path, pairs: list) -> list[Path] | None:
    """The homogeneous-region mask of every pair (`folder`/<mask stem>.png), or None without `folder`; a
    folder that lacks some masks is an error naming them."""
    if not folder.is_dir():
        return None
    paths = [folder / f"{Path(pair.mask).stem}.png" for pair in pairs]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{folder}: no homogeneous-region mask for {len(missing)} of {len(paths)} test images "
                           f"(expected <mask stem>.png): {format_names(missing, 10)}")
    mis_sized = [f"{path.name} ({_wxh(image_size(path))}, GT {_wxh(pair.mask_size)})"
                 for path, pair in zip(paths, pairs) if image_size(path) != pair.mask_size]
    if mis_sized:
        raise DatasetError(f"{folder}: region masks whose size differs from their GT mask: "
                           f"{format_names(mis_sized, 10)}")
    return paths


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[1]}x{size[0]}"


def _parse_folder(term: str) -> tuple[Path, MaskPolarity | None]:
    """folder:PATH[:white=...] -> (PATH, the stated polarity or None)."""
    path, polarity = split_polarity(term[len("folder:"):])
    if not path:
        raise DatasetError(f"bad expression {term!r}: use folder:PATH or folder:PATH:{STATED_FORMS}")
    return Path(path), polarity


def _synthetic_polarity(path: Path) -> MaskPolarity:
    """The polarity a synthetic set's meta.json states (white=in-focus when absent)."""
    stated = read_meta(path).get("mask_polarity", MaskPolarity.WHITE_IN_FOCUS.label)
    try:
        return MaskPolarity.parse(stated)
    except ValueError as exc:
        raise DatasetError(f"{path / 'meta.json'}: {exc}") from None


def find_pair_dirs(path: Path) -> tuple[Path, Path]:
    """The image and mask folders inside `path` (image/ or images/ with gt/ or masks/)."""
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder")
    for image_name in IMAGE_DIRS:
        for mask_name in MASK_DIRS:
            if (path / image_name).is_dir() and (path / mask_name).is_dir():
                return path / image_name, path / mask_name
    raise DatasetError(f"{path}: expected an image folder ({'/'.join(IMAGE_DIRS)}) and a mask "
                       f"folder ({'/'.join(MASK_DIRS)}) inside")


def _locate(spec: BenchmarkSet, root: Path) -> tuple[Path, Path]:
    for image_rel, mask_rel in spec.layouts:
        if (root / image_rel).is_dir() and (root / mask_rel).is_dir():
            return root / image_rel, root / mask_rel
    looked = format_names([f"{image_rel} + {mask_rel}" for image_rel, mask_rel in spec.layouts], 12)
    raise DatasetError(f"{spec.name}: no data under {root}; looked for {looked} (see data/README.md)")


def _split_list_path(spec: BenchmarkSet, root: Path, image_dir: Path,
                     split_file: str | Path | None) -> Path | None:
    if split_file is not None:
        return Path(split_file)
    set_dir = image_dir.parent
    for folder in (set_dir / "splits", set_dir, root / "splits", root):
        for name in spec.split_names:
            if (folder / name).is_file():
                return folder / name
    return None


def _select_keys(spec: BenchmarkSet, root: Path, image_dir: Path,
                 split_file: str | Path | None) -> list[str]:
    """Stems of the set's images, in the set's order."""
    images = list_folder(image_dir).files
    keys = sorted(images, key=natural_key)
    if spec.stem_prefix:
        others = [images[k].name for k in keys if not k.startswith(spec.stem_prefix)]
        if others:
            warn(f"{spec.name}: ignoring {len(others)} files of {image_dir} that are not "
                 f"{spec.stem_prefix}* images: {format_names(others, 20)}")
        keys = [k for k in keys if k.startswith(spec.stem_prefix)]
    if spec.selection == "own-list":
        return _listed_keys(spec, spec.own_list, images, image_dir)
    list_path = _split_list_path(spec, root, image_dir, split_file)
    if spec.selection == "all":
        return keys
    if list_path is None and spec.selection == "ebd-shallow":
        if len(keys) != EBD_WIDE_DOF + spec.expected_pairs:
            raise DatasetError(
                f"EBD-1305 by the documented order (the last {EBD_WIDE_DOF} of the sorted set are "
                f"wide-DOF) needs all {EBD_WIDE_DOF + spec.expected_pairs} EBD images; {image_dir} has "
                f"{len(keys)}. Put the 1305 names in {image_dir.parent}/ebd1305.txt or pass --split-file PATH")
        return keys[:spec.expected_pairs]
    if list_path is None:
        places = [image_dir.parent / "splits", image_dir.parent, root / "splits", root]
        raise DatasetError(
            f"{spec.name} needs the split list {' or '.join(spec.split_names)} (one image name per "
            f"line); looked in {format_names([str(p) for p in places])}. Put it there or pass "
            "--split-file PATH (BTBNet's CUHK-TE-1 list is not part of the CUHK release; see data/README.md)")
    if spec.selection == "split-train":
        excluded = {stem_key(n) for n in read_split_list(list_path)}
        if spec.own_list is not None:
            excluded |= set(_listed_keys(spec, spec.own_list, images, image_dir))
        return [k for k in keys if k not in excluded]
    return _listed_keys(spec, list_path, images, image_dir)


def _listed_keys(spec: BenchmarkSet, list_path: Path, images: dict, image_dir: Path) -> list[str]:
    """The stems a split list names, all of which must be in the image folder."""
    names = read_split_list(list_path)
    listed = [stem_key(n) for n in names]
    missing = [n for n, k in zip(names, listed) if k not in images]
    if missing:
        raise DatasetError(f"{spec.name}: {len(missing)} of the {len(names)} images named in "
                           f"{list_path} are missing from {image_dir}: {format_names(missing)}")
    return listed


def _apply_rules(term: str, pairing: Pairing, train: bool, image_dir: Path) -> None:
    """Training refuses any unusable or mismatched file and a set of one-class masks; testing warns and
    says what was done."""
    problems = pairing.problems()
    mismatch = [f"{p.name} (image {p.image_size[0]}x{p.image_size[1]}, mask "
                f"{p.mask_size[0]}x{p.mask_size[1]})" for p in pairing.size_mismatch]
    one_class = (f"every one of the {len(pairing.pairs)} masks is a single class ({pairing.one_class_summary()}); "
                 "check how they are stored with tools/check_dataset.py" if pairing.every_mask_one_class else "")
    if pairing.odd_files:
        warn(f"{term}: ignoring files that are not images: {format_names(pairing.odd_files)}")
    if pairing.hidden:
        warn(f"{term}: ignoring {len(pairing.hidden)} hidden files (names starting with '.', e.g. the '._' files "
             f"macOS writes): {format_names(pairing.hidden, 5)}")
    if pairing.colour_masks:
        names = format_names(list(pairing.colour_masks), 20)
        raise UnusableFilesError(f"{term} ({image_dir.parent}): colour masks whose red, green and blue differ: "
                                 f"{names}. Masks must be grey (black and white); re-save them as grey images")
    if train and (problems or mismatch or one_class):
        details = problems + ([f"masks whose size differs from the image: {format_names(mismatch)}"]
                              if mismatch else []) + ([one_class] if one_class else [])
        raise DatasetError(f"{term} ({image_dir.parent}) cannot be used for training: "
                           + "; ".join(details))
    if problems:
        warn(f"{term}: left out of the test set: " + "; ".join(problems))
    if one_class:
        warn(f"{term}: {one_class}. F-beta and IoU mean nothing on such a set")
    if mismatch:
        warn(f"{term}: masks whose size differs from the image are kept and listed in "
             f"dataset.size_mismatch (the official protocol skips them): {format_names(mismatch)}")
    if not pairing.pairs:
        raise DatasetError(f"{term}: no image/mask pairs in {image_dir.parent}")


def _check_given_polarity(term: str, pairs: list, polarity: MaskPolarity, folder: Path) -> None:
    """Compare the polarity a set is given with what its images say: when they say the other one with confidence,
    refuse a set whose polarity the user stated (in the expression or a synthetic set's meta.json), and warn for a
    registered set (its files differ from the release's convention)."""
    estimate = estimate_polarity(pairs, max_images=24)
    if (estimate.polarity not in STATED_POLARITIES or estimate.polarity is polarity
            or estimate.confidence < POLARITY_MIN_CONFIDENCE
            or abs(estimate.median_log_ratio) < POLARITY_CONTRADICTION):
        return
    if term.startswith("folder:"):
        given, fix = "stated", f"if they are, write folder:{_parse_folder(term)[0]}:{estimate.label}"
    elif term.startswith("synthetic:"):
        given, fix = "stated in meta.json", f"correct mask_polarity in {folder / 'meta.json'}"
    else:
        given, fix = f"the {term} convention", f"are the masks in {folder} inverted? Use the set's original masks"
    smoother = "sharper" if estimate.polarity is MaskPolarity.WHITE_IN_FOCUS else "smoother"
    agreeing = round(estimate.confidence * estimate.images_used)
    message = (f"{term} ({folder}): the masks look {estimate.label}, not {polarity.label} as {given}: their white "
               f"regions are the {smoother} ones in {agreeing} of {estimate.images_used} images (median log ratio of "
               f"high-frequency energy white/black {estimate.median_log_ratio:+.2f}); {fix} (tools/check_dataset.py "
               "shows the evidence)")
    if term in REGISTRY:
        warn(message)
    else:
        raise UnusableFilesError(message)


def _estimated_polarity(term: str, pairs: list) -> MaskPolarity:
    estimate = estimate_polarity(pairs, max_images=24)
    if estimate.polarity is MaskPolarity.UNKNOWN or estimate.confidence < POLARITY_MIN_CONFIDENCE:
        raise DatasetError(f"{term}: cannot tell the mask polarity from the images ({estimate.label}, "
                           f"confidence {estimate.confidence:.2f}); write "
                           + " or ".join(f"{term}:{p.label}" for p in STATED_POLARITIES))
    warn(f"{term}: mask polarity not given; estimated {estimate.label} from image sharpness "
         f"(confidence {estimate.confidence:.2f} over {estimate.images_used} images). "
         f"Write {term}:{estimate.label} to state it")
    return estimate.polarity
