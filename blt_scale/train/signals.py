"""Stop requests: SIGUSR2 (SLURM's warning before a time limit or preemption) and SIGTERM set a
flag; the loop all-reduces it at the next step boundary so every rank stops after the same step."""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopFlag:
    def __init__(self):
        self.requested = False
        self.signum: int | None = None

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        # Only a flag: saving inside a handler would race the step that is running.
        self.requested, self.signum = True, signum
