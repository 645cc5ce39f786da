"""Progress of long work, shown three ways from one object: a bar on a terminal, plain lines in a
log, and a ``progress`` object in the run's status.json for the app.

    prog = Progress(200, unit="steps", stage="training", status=status_writer(run))
    for step in ...:
        prog.update(1)
    prog.close()

- On a terminal (the stream's ``isatty()``) a tqdm bar: items done, rate, ETA.
- Elsewhere (a job's log.txt, a pipe) one plain line every ``every_s`` seconds or at every
  multiple of ``every_frac`` of the total (10%, 20%, ...), whichever comes first, and one at the end:
  ``[progress] training: 40/200 steps (20%), 3.1 steps/s, ETA 52s``
- ``status`` (e.g. ``status_writer(run)``) is called as ``status(snapshot, **extra)`` with the
  snapshot ``{done, total, fraction, unit, rate, eta_s, stage}`` (and any fields given to ``update``)
  at most every ``status_every_s`` seconds, on the first update and at the end. ``done``, ``total``
  and ``fraction`` are what readers of status.json used before; the rest is new.

``show``: "auto" (bar or lines, as above), True (the same), or False (status only: for work nested
in a larger task that shows its own progress). Rates and ETAs count only what this process did, so a
resumed run does not look fast. ``echo`` prints a message without tearing an open bar.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

_OPEN_BARS: list = []


def echo(message: str, file=None) -> None:
    """Print a line; while a bar is open on a terminal, print above it instead of through it."""
    if _OPEN_BARS:
        from tqdm import tqdm

        tqdm.write(message, file=file or sys.stdout)
    else:
        print(message, file=file or sys.stdout, flush=True)


def status_writer(run, key: str = "progress") -> Callable[[dict], None]:
    """A ``status`` callback that merges the snapshot into ``run``'s status.json under ``key``."""

    def write(snapshot: dict, **extra) -> None:
        run.update_status(**{key: snapshot}, **extra)

    return write


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """See the module docstring. Not thread-safe: update it from one thread."""

    def __init__(self, total: int | None, *, unit: str = "item", stage: str = "", done: int = 0,
                 status: Callable[..., None] | None = None, show: bool | str = "auto", stream=None,
                 every_s: float = 10.0, every_frac: float = 0.1, status_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        self.status, self.every_s, self.every_frac, self.status_every_s = status, every_s, every_frac, status_every_s
        self.clock = clock
        tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.mode = "none" if not show else ("bar" if tty else "lines")
        self.bar = None
        self._status_at = float("-inf")
        self._line_last = None
        self._extra: dict = {}
        self._closed = False
        self._start(total, unit, stage, done)

    # ------------------------------------------------------------------ state
    def _start(self, total, unit, stage, done):
        self.total = None if total is None else int(total)
        self.unit, self.stage, self.done = unit, stage, int(done)
        self._t0, self._done0 = self.clock(), self.done
        self._line_at, self._line_frac = self._t0, self._frac()
        if self.mode == "bar":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=self.total, initial=self.done, unit=f" {unit}", desc=stage, file=self.stream,
                                dynamic_ncols=True, mininterval=0.1, leave=True)
                _OPEN_BARS.append(self.bar)
            else:
                self.bar.unit = f" {unit}"
                self.bar.reset(total=self.total)
                self.bar.set_description(stage, refresh=False)
                self.bar.update(self.done)

    def _frac(self) -> float:
        return (self.done / self.total) if self.total else 0.0

    @property
    def rate(self) -> float | None:
        """Items per second done by this process since the stage began (None before any)."""
        elapsed = self.clock() - self._t0
        did = self.done - self._done0
        return did / elapsed if did > 0 and elapsed > 0 else None

    @property
    def eta_s(self) -> float | None:
        r = self.rate
        if r is None or self.total is None:
            return None
        return max(0.0, (self.total - self.done) / r)

    def snapshot(self) -> dict:
        r, eta = self.rate, self.eta_s
        return {"done": self.done, "total": self.total, "fraction": round(self._frac(), 6), "unit": self.unit,
                "rate": None if r is None else round(r, 4), "eta_s": None if eta is None else round(eta, 1),
                "stage": self.stage}

    def line(self) -> str:
        total = "?" if self.total is None else self.total
        pct = f" ({100 * self._frac():.0f}%)" if self.total else ""
        r = self.rate
        rate = f"{r:.3g} {self.unit}/s" if r is not None else f"- {self.unit}/s"
        stage = f"{self.stage}: " if self.stage else ""
        return f"[progress] {stage}{self.done}/{total} {self.unit}{pct}, {rate}, ETA {_duration(self.eta_s)}"

    # ------------------------------------------------------------------ updates
    def update(self, n: int = 1, **status_extra) -> None:
        """``n`` more items done. ``status_extra`` fields go into status.json with the next write."""
        self.set(self.done + int(n), **status_extra)

    def set(self, done: int, total: int | None = None, *, stage: str | None = None, **status_extra) -> None:
        """Absolute progress (callers that count for themselves, e.g. ``progress(done, total)`` hooks)."""
        if total is not None and total != self.total:
            self.total = int(total)
            if self.bar is not None:
                self.bar.total = self.total
        if stage is not None and stage != self.stage:
            self.stage = stage
            if self.bar is not None:
                self.bar.set_description(stage, refresh=False)
        step = int(done) - self.done
        self.done = int(done)
        self._extra.update(status_extra)
        if self.bar is not None and step:
            self.bar.update(step)
        now = self.clock()
        if self.mode == "lines":
            def notch(frac):  # 10%, 20%, ... with every_frac=0.1
                return int(frac / self.every_frac + 1e-9)

            crossed = bool(self.total) and (notch(self._frac()) > notch(self._line_frac) or self.done >= self.total)
            if crossed or now - self._line_at >= self.every_s:
                self._emit_line(now)
        if self.status is not None and now - self._status_at >= self.status_every_s:
            self._write_status(now)

    def resume_hook(self) -> Callable[[int, int], None]:
        """A ``progress(done, total)`` callback whose first call reports work done before this process
        (a resumed run's finished items): that call sets the starting point, so rate and ETA count
        only what this process does."""
        first = [True]

        def hook(done: int, total: int) -> None:
            if first[0]:
                first[0] = False
                self.new_stage(self.stage, total, done=done)
            else:
                self.set(done, total)

        return hook

    def new_stage(self, stage: str, total: int | None, *, unit: str | None = None, done: int = 0) -> None:
        """Start counting something else (rate and ETA restart); the bar is reused."""
        if self.mode == "lines" and self.done != self._done0:
            self._emit_line(self.clock())
        self._start(total, unit or self.unit, stage, done)
        if self.status is not None:
            self._write_status(self.clock())

    def _emit_line(self, now: float) -> None:
        self._line_at, self._line_frac = now, self._frac()
        if (self.stage, self.done, self.total) == self._line_last:
            return  # nothing new since the last line (e.g. the end was reached, then closed)
        self._line_last = (self.stage, self.done, self.total)
        print(self.line(), file=self.stream, flush=True)

    def _write_status(self, now: float) -> None:
        self._status_at = now
        extra, self._extra = self._extra, {}
        if extra:
            self.status(self.snapshot(), **extra)
        else:  # a plain callback may take the snapshot only
            self.status(self.snapshot())

    def close(self) -> dict:
        """Final line / bar and status write; returns the last snapshot. Safe to call twice."""
        snap = self.snapshot()
        if self._closed:
            return snap
        self._closed = True
        if self.mode == "lines":
            self._emit_line(self.clock())
        if self.bar is not None:
            self.bar.close()
            if self.bar in _OPEN_BARS:
                _OPEN_BARS.remove(self.bar)
        if self.status is not None:
            self._write_status(self.clock())
        return snap

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
