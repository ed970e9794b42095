"""Progress reporting for long loops: a line every few seconds with the position, rate, ETA and
any numbers the caller passes (loss terms, learning rate)."""
import sys
import time


def format_seconds(seconds):
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`Progress(total, unit="step", items_per_unit=2, every_seconds=10)`; call `update(done, **values)`
    after each unit; it prints at most every `every_seconds` (and at the end) a line like
    `train  120/3000 (4.0%)  3.1 step/s  6.2 img/s  ETA 15:29  loss 1.234 ...`."""

    def __init__(self, total, *, name="", unit="step", items_per_unit=None, item_name="img", every_seconds=10.0,
                 stream=None, start=0):
        self.total, self.name, self.unit = total, name, unit
        self.items_per_unit, self.item_name = items_per_unit, item_name
        self.every_seconds, self.stream = every_seconds, stream or sys.stdout
        self.start_count = start
        self.start_time = self.last_print = time.time()
        self.done = start

    def rate(self):
        elapsed = time.time() - self.start_time
        return (self.done - self.start_count) / elapsed if elapsed > 0 else 0.0

    def line(self, **values):
        rate = self.rate()
        parts = [self.name, f"{self.done}/{self.total}" if self.total else f"{self.done}"]
        if self.total:
            parts[-1] += f" ({100.0 * self.done / self.total:.1f}%)"
        parts.append(f"{rate:.2f} {self.unit}/s")
        if self.items_per_unit:
            parts.append(f"{rate * self.items_per_unit:.1f} {self.item_name}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        for key, value in values.items():
            parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
        return "  ".join(p for p in parts if p)

    def update(self, done, force=False, **values):
        self.done = done
        now = time.time()
        if force or now - self.last_print >= self.every_seconds or (self.total and done >= self.total):
            self.last_print = now
            print(self.line(**values), file=self.stream, flush=True)
