"""Images per second of the synthetic face renderer (images alone, with masks, via a DataLoader).

Usage: python benchmarks/faces_speed.py [--image-size 64] [--batch-size 64] [--batches 50]
Prints wall-clock and process CPU time per batch; CPU time is the steadier number on a
shared machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from icm.data import SyntheticFaces, render, render_images, sample_factors


def measure(step: Callable[[int], object], batches: int) -> tuple[float, float]:
    """Best-of-three (wall, cpu) seconds per call of step(i), i = 0..batches-1."""
    step(0)  # warm-up
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(batches):
            step(i)
        best_wall = min(best_wall, (time.perf_counter() - wall) / batches)
        best_cpu = min(best_cpu, (time.process_time() - cpu) / batches)
    return best_wall, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b, size = args.batch_size, args.image_size
    factors = [sample_factors(b, seed) for seed in range(args.batches)]
    dataset = SyntheticFaces(num_images=b * args.batches, image_size=size)
    loader = DataLoader(dataset, batch_size=b, shuffle=True)
    batches = iter(())

    def from_loader(_: int) -> object:
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    cases = {
        "render_images": lambda i: render_images(factors[i], size),
        "render (+masks)": lambda i: render(factors[i], size),
        "DataLoader batch": from_loader,
    }
    print(f"{b} faces of {size}x{size} per batch, {args.threads} thread(s)")
    for name, step in cases.items():
        wall, cpu = measure(step, args.batches)
        print(
            f"{name:18s} {wall * 1e3:7.2f} ms/batch wall ({b / wall:8.0f} images/s), "
            f"{cpu * 1e3:7.2f} ms/batch cpu ({b / cpu:8.0f} images/s)"
        )


if __name__ == "__main__":
    main()
