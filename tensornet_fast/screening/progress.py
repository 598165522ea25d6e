"""Progress of a screening run (a bar with rate and ETA, or log lines) and its final
statistics."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class Progress:
    """``mode``: "bar" (tqdm over the input's bytes, so the ETA holds for a stream, with
    molecules/s), "log" (a plain line every ``log_every`` seconds), "none", or "auto" (bar on a
    terminal, log lines otherwise). ``True``/``False``/``None`` mean bar/none/auto."""

    def __init__(
        self,
        total_bytes: int,
        mode: str | bool | None = "auto",
        log_every: float = 10.0,
        stream=None,
        desc: str = "screen",
    ):
        self.stream = stream or sys.stderr
        self.desc = desc
        self.total = max(total_bytes, 1)
        self.start = time.perf_counter()
        self.n_rows = self.n_failed = self.n_warned = 0
        self.bytes = 0
        self._skipped_bytes = 0
        self.log_every = log_every
        self._last_log = self.start
        mode = {True: "bar", False: "none", None: "auto"}.get(mode, mode)
        if mode not in ("auto", "bar", "log", "none"):
            raise ValueError(f"progress mode {mode!r}: use auto, bar, log or none")
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "log"
        self.bar = None
        if mode == "bar":
            try:
                from tqdm import tqdm
            except ImportError:  # the runtime install has no tqdm: log lines instead
                mode = "log"
        if mode == "bar":
            self.bar = tqdm(
                total=self.total,
                unit="B",
                unit_scale=True,
                file=self.stream,
                desc=desc,
                smoothing=0.1,
                dynamic_ncols=True,
            )
        self.quiet = mode == "none"

    def skip(self, nbytes: int) -> None:  # may be called from the reader thread
        self._skipped_bytes += nbytes

    def rate(self) -> float:
        return self.n_rows / max(time.perf_counter() - self.start, 1e-9)

    def update(self, rows: Sequence[dict], nbytes: int) -> None:
        self.n_rows += len(rows)
        # "ok" / "ok; outside training domain: ..." (computed, with a warning) / "error: ..."
        self.n_failed += sum(1 for r in rows if not r["status"].startswith("ok"))
        self.n_warned += sum(1 for r in rows if r["status"].startswith("ok;"))
        skipped, self._skipped_bytes = self._skipped_bytes, 0
        self.bytes += nbytes + skipped
        if self.bar is not None:
            self.bar.update(nbytes + skipped)
            self.bar.set_postfix(
                per_s=f"{self.rate():.1f}", done=self.n_rows, failed=self.n_failed, refresh=False
            )
        elif not self.quiet and time.perf_counter() - self._last_log >= self.log_every:
            self._last_log = time.perf_counter()
            frac = min(self.bytes / self.total, 1.0)
            elapsed = self._last_log - self.start
            eta = f"{elapsed * (1 - frac) / frac:.0f} s" if frac > 0 else "unknown"
            print(
                f"{self.desc}: {self.n_rows} structures ({self.n_failed} failed), "
                f"{self.rate():.1f} structures/s, {100 * frac:.1f}% of input, ETA {eta}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class ScreenStats:
    out: str
    n_rows: int = 0  # rows written by this run
    n_failed: int = 0
    n_warned: int = 0  # computed, status "ok; <domain issue>"
    n_existing: int = 0  # rows already in OUT (skipped)
    elapsed_s: float = 0.0
    interrupted: bool = False
    mode: str = "local"
    label: str = "screen"
    extra: dict = field(default_factory=dict)

    @property
    def molecules_per_s(self) -> float:
        return self.n_rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        state = "interrupted" if self.interrupted else "done"
        warned = f", {self.n_warned} outside the training domain" if self.n_warned else ""
        existing = "" if self.out == "-" else f"; {self.n_existing} already in {self.out} skipped"
        return (
            f"{self.label} {state}: {self.n_rows} structures ({self.n_rows - self.n_failed} ok"
            f"{warned}, {self.n_failed} failed) in {self.elapsed_s:.2f} s = "
            f"{self.molecules_per_s:.1f} structures/s [{self.mode}]{existing}"
        )
