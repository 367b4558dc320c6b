"""Cold (decode) versus cached load of a CIFAR source, side by side in one process.

    python -m benchmarks.data_load --data-dir ../shared/data       # the real CIFAR-10 tarball

The cold load decodes every image into a fresh, empty cache folder; the cached loads read the
uint8 arrays back.  Prints the times, the ratio and the split sizes, and writes JSON.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from cigl_bayes.data import load_dataset
from cigl_bayes.experiments.cli import ArgumentParser, run_cli
from cigl_bayes.runs import atomic_write_json

from .common import check_options


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.data_load", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None, help="default: $CIGL_DATA_DIR")
    p.add_argument("--repeats", type=int, default=3, help="cached loads timed (median reported)")
    p.add_argument("--out", default="benchmarks/results/data_load.json")
    args = p.parse_args(argv)
    check_options(args)
    with tempfile.TemporaryDirectory(prefix="cigl-cache-") as cache:
        start = time.perf_counter()
        train, test = load_dataset(args.dataset, args.data_dir, cache_dir=cache)
        cold = time.perf_counter() - start
        cached = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            train2, test2 = load_dataset(args.dataset, args.data_dir, cache_dir=cache)
            cached.append(time.perf_counter() - start)
        same = np.array_equal(train.images, train2.images) and np.array_equal(test.labels, test2.labels)
    result = {"dataset": args.dataset, "train": len(train), "test": len(test),
              "train_per_class": np.bincount(train.labels).tolist(), "image_shape": list(train.images.shape[1:]),
              "dtype": str(train.images.dtype), "seconds_cold": cold, "seconds_cached": statistics.median(cached),
              "speedup": cold / statistics.median(cached), "cached_equals_decoded": bool(same)}
    print(f"{args.dataset}: {result['train']} train / {result['test']} test, {result['dtype']} "
          f"{'x'.join(map(str, result['image_shape']))}")
    print(f"  cold {cold:.2f} s   cached {result['seconds_cached']:.2f} s   speed-up {result['speedup']:.1f}x   "
          f"identical: {same}")
    atomic_write_json(result, Path(args.out))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
