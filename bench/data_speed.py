"""Data speed: synthetic images per second, and training-loader throughput on the CUHK images.

    python bench/data_speed.py [--quick] [--data-root ../shared/data] [--split-file ...]

Loader rows run the training transform (flip, PIL bilinear 320x320, jitter, normalise) over CUHK-TR-1,
without and with the in-memory cache; the baseline is the authors' per-item pattern (open and decode
both files, rebuild the list of all names on every item: O(N) per item). Prints a table and writes
bench/results/data_speed.json naming the machine.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.base import PairDataset  # noqa: E402
from datasets.decoding import load_rgb  # noqa: E402
from datasets.polarity import load_mask  # noqa: E402
from datasets.synthetic import generate_dataset  # noqa: E402
from datasets.transforms import COLOR_JITTER, mask_tensor, normalise, resize_image, resize_mask  # noqa: E402


class AuthorsStyleDataset(Dataset):
    """Baseline with the authors' per-item work: decode on every call and an O(N) name-list rebuild."""

    def __init__(self, pairs: PairDataset) -> None:
        self.pairs = pairs.pairs
        self.polarity = pairs.polarity
        self.img_size = pairs.img_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        names = [str(p.image).split("/")[-1] for p in self.pairs]
        pair = self.pairs[index]
        image, mask = load_rgb(pair.image), load_mask(pair.mask, self.polarity)
        if torch.rand(()) < 0.5:
            image, mask = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), mask[:, ::-1].copy()
        image = COLOR_JITTER(resize_image(image, self.img_size))
        return {"image": normalise(image), "mask": mask_tensor(resize_mask(mask, self.img_size)),
                "name": names[index]}


def synthetic_rate(count: int, size: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        generate_dataset(Path(tmp) / "set", n=count, seed=0, size=size, workers=workers)
        return count / (time.perf_counter() - start)


def loader_rate(dataset: Dataset, workers: int, batch_size: int = 6) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    start = time.perf_counter()
    seen = sum(batch["image"].shape[0] for batch in loader)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts, to check the script runs")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--split-file", default=str(ROOT.parent / "shared" / "spec" / "splits" / "cuhk_te1.txt"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_speed.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    synthetic_count = 12 if args.quick else 200
    rows = []
    for size in (320, 160):
        for workers in sorted({1, args.workers}):
            rate = synthetic_rate(synthetic_count, size, workers)
            rows.append({"task": f"synthetic generation {size}x{size}", "workers": workers,
                         "images": synthetic_count, "images_per_s": rate})

    cuhk = build_dataset("CUHK-TR-1", "train", root=args.data_root, split_file=args.split_file)
    limit = 60 if args.quick else len(cuhk)
    start = time.perf_counter()
    cached = build_dataset("CUHK-TR-1", "train", root=args.data_root, split_file=args.split_file, cache=True)
    cache_fill = time.perf_counter() - start
    subset = list(range(limit))
    candidates = (("authors-style loader (baseline)", AuthorsStyleDataset(cuhk)),
                  ("CUHK-TR-1 loader, no cache", cuhk), ("CUHK-TR-1 loader, cache", cached))
    for label, dataset in candidates:
        for workers in sorted({0, args.workers}):
            rows.append({"task": label, "workers": workers, "images": limit,
                         "images_per_s": loader_rate(Subset(dataset, subset), workers)})
    rows.append({"task": "cache fill (decode + resize, 2 threads)", "workers": 0, "images": len(cached),
                 "images_per_s": len(cached) / cache_fill})

    info = machine()
    print(f"machine: {info['host']} {info['cpu']}, {info['cpu_count']} CPUs, torch threads "
          f"{info['torch_threads']}; quick={args.quick}")
    print(f"{'task':<42} {'workers':>7} {'images':>7} {'images/s':>10}")
    for row in rows:
        print(f"{row['task']:<42} {row['workers']:>7} {row['images']:>7} {row['images_per_s']:>10.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "quick": args.quick, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
