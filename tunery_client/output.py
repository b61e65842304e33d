"""What the CLI prints: JSON, aligned tables, progress lines and a terminal plot. Stdlib only."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import IO, Any


def print_json(value: Any, out: IO[str] | None = None) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False), file=out or sys.stdout)


def is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def color(text: str, code: str, stream: IO[str] | None = None) -> str:
    stream = stream or sys.stdout
    if not is_tty(stream) or os.environ.get("NO_COLOR"):
        return text
    return f"\033[{code}m{text}\033[0m"


STATUS_COLORS = {
    "succeeded": "32",
    "ready": "32",
    "processed": "32",
    "running": "36",
    "loading": "36",
    "queued": "33",
    "validating_files": "33",
    "failed": "31",
    "error": "31",
    "cancelled": "35",
}


def status_text(status: str, stream: IO[str] | None = None) -> str:
    return color(status, STATUS_COLORS.get(status, "0"), stream)


def table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], out: IO[str] | None = None
) -> None:
    out = out or sys.stdout
    cells = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    header = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    print(header.rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    return str(value)


def number(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4f}"


def when(timestamp: int | float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def bar(fraction: float, width: int = 24) -> str:
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


class StatusLine:
    """One line that updates in place on a terminal; elsewhere (a pipe, a CI log) it prints a
    new line only when the text changed and `every` seconds have passed, so logs stay short."""

    def __init__(self, stream: IO[str] | None = None, every: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream)
        self.every = every
        self._shown = ""
        self._last_print = -math.inf
        self._pending = ""

    def update(self, text: str, force: bool = False) -> None:
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns
            self.stream.write("\r\033[K" + text[: width - 1])
            self.stream.flush()
            self._shown = text
            return
        self._pending = text
        now = time.monotonic()
        if text != self._shown and (force or now - self._last_print >= self.every):
            self._emit_pending(now)

    def _emit_pending(self, now: float) -> None:
        print(self._pending, file=self.stream, flush=True)
        self._shown = self._pending
        self._last_print = now

    def message(self, text: str) -> None:
        """A line printed above the status line (an event)."""
        if self.tty:
            self.stream.write("\r\033[K" + text + "\n" + self._shown[: self._width()])
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)

    def _width(self) -> int:
        return shutil.get_terminal_size((100, 20)).columns - 1

    def close(self) -> None:
        if self.tty:
            if self._shown:
                self.stream.write("\n")
                self.stream.flush()
        elif self._pending and self._pending != self._shown:
            self._emit_pending(time.monotonic())


class ByteProgress:
    """A progress line for an upload or a download of `total` bytes (None: unknown)."""

    def __init__(self, label: str, total: int | None, quiet: bool = False) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        # small transfers finish before a bar is worth drawing
        self.line = None if quiet else StatusLine(every=2.0)

    def advance(self, n: int) -> None:
        self.done += n
        if self.line is None:
            return
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = self.done / elapsed
        if self.total:
            fraction = self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else None
            text = (
                f"{self.label} {bar(fraction)} {fraction:4.0%}  {size(self.done)} of "
                f"{size(self.total)}  {size(rate)}/s  ETA {duration(eta)}"
            )
        else:
            text = f"{self.label} {size(self.done)}  {size(rate)}/s"
        self.line.update(text)

    def close(self) -> None:
        if self.line is not None:
            self.line.update(self.line._pending or "", force=True)
            self.line.close()


def plot(
    series: dict[str, list[tuple[float, float]]],
    width: int = 64,
    height: int = 16,
    x_label: str = "step",
    out: IO[str] | None = None,
) -> None:
    """A line plot of each series in characters: the first series is drawn as a line, the
    others as points, with their names in a legend below."""
    out = out or sys.stdout
    points = [p for values in series.values() for p in values if _finite(p[1])]
    if not points:
        print("(nothing to plot yet)", file=out)
        return
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    grid = [[" "] * width for _ in range(height)]

    def col(x: float) -> int:
        return min(width - 1, max(0, round((x - x0) / (x1 - x0) * (width - 1))))

    def row(y: float) -> int:
        return min(height - 1, max(0, round((y1 - y) / (y1 - y0) * (height - 1))))

    marks = ["•", "o", "x", "+", "*"]
    names = list(series)
    for index, name in enumerate(names):
        values = sorted((x, y) for x, y in series[name] if _finite(y))
        mark = marks[index % len(marks)]
        if index == 0 and len(values) > 1:
            # a line: interpolate the first series at every column it spans
            for c in range(col(values[0][0]), col(values[-1][0]) + 1):
                x = x0 + (x1 - x0) * c / (width - 1)
                grid[row(_interpolate(values, x))][c] = mark
        for x, y in values:
            grid[row(y)][col(x)] = mark
    labels = [number(y1 - (y1 - y0) * r / (height - 1)) for r in range(height)]
    pad = max(len(label) for label in labels)
    for r in range(height):
        label = labels[r] if r in (0, height // 2, height - 1) else ""
        print(f"{label.rjust(pad)} ┤{''.join(grid[r])}", file=out)
    print(f"{' ' * pad} └{'─' * width}", file=out)
    left, right = _tick(x0), _tick(x1)
    print(f"{' ' * pad}  {left}{right.rjust(width - len(left))}", file=out)
    legend = "   ".join(f"{marks[i % len(marks)]} {name}" for i, name in enumerate(names))
    print(f"{' ' * pad}  {x_label}: {legend}", file=out)


def _tick(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else number(x)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _interpolate(values: list[tuple[float, float]], x: float) -> float:
    for (xa, ya), (xb, yb) in itertools.pairwise(values):
        if xa <= x <= xb:
            return ya if xb == xa else ya + (yb - ya) * (x - xa) / (xb - xa)
    return values[-1][1] if x > values[-1][0] else values[0][1]
