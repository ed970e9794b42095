"""Timing helpers for the benchmarks: median wall time after warm-up, the machine's copy
bandwidth (the memory-traffic floor), and a plain-text table.

Python's garbage collector is off while calls are timed (as `timeit` does): with TensorFlow
loaded a collection walks millions of objects, and where it lands depends on how many Python
objects the calls before it allocated, not on the work being timed."""
import contextlib
import gc
import statistics
import time

import numpy as np


@contextlib.contextmanager
def _collector_off():
    """The garbage collector off (after one collection) for the block, restored after it."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def median_seconds(fn, warmup=3, repeats=15, min_time=0.0):
    """Median wall time of fn() (which must block until its work is done)."""
    for _ in range(warmup):
        fn()
    times = []
    with _collector_off():
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_time:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved_medians(fns, warmup=5, repeats=15):
    """Median wall time of each fn in `fns` (name -> callable), timed round-robin so that every
    implementation sees the same machine state: on a noisy machine the ratios stay meaningful
    even when the absolute times drift."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    with _collector_off():
        for _ in range(repeats):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def copy_bandwidth(num_bytes=256 << 20, repeats=7):
    """Bytes per second of a large array copy, counting the read and the write."""
    src = np.ones(num_bytes // 4, np.float32)
    dst = np.empty_like(src)
    seconds = median_seconds(lambda: np.copyto(dst, src), warmup=2, repeats=repeats)
    return 2 * num_bytes / seconds


def format_table(rows, columns):
    """rows: list of dicts; columns: list of (key, header, format)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([("" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
