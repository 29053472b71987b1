"""Noticing a saved template or policy: a thread compares the modification time and size of every file
under the watched folders a few times a second (no file-system notification library is installed with
the service, and a templates folder is a few dozen files)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from pathlib import Path

Stamp = dict[str, tuple[int, int]]


def stamp(paths: Iterable[Path]) -> Stamp:
    """Modification time and size of every file under ``paths`` (a file stands for itself)."""
    out: Stamp = {}
    for root in paths:
        files = [root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())
        for p in files:
            try:
                st = p.stat()
            except FileNotFoundError:  # removed while listing
                continue
            out[str(p)] = (st.st_mtime_ns, st.st_size)
    return out


class Watcher:
    """Calls ``on_change`` (from its own thread) after any file under ``paths`` is added, changed or
    removed; ``interval`` seconds between looks."""

    def __init__(self, paths: list[Path], on_change: Callable[[], None], interval: float = 0.05) -> None:
        self.paths = paths
        self.on_change = on_change
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="studio-watcher", daemon=True)
        self._last = stamp(paths)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = stamp(self.paths)
            if now != self._last:
                self._last = now
                self.on_change()
