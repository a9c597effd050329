"""The deploy stack's images, built in the background from the start of the session.

Building them (`scripts/images.sh`, one image after another) is mostly downloading and
unpacking packages: about 7 minutes of waiting that the CPU-bound tests before the stack's
can fill. Started once collection has selected a stack test, in a process group of its own
that the session stops if it is still running; the stack's fixture waits for it to end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ImageBuild:
    proc: subprocess.Popen
    folder: Path
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls) -> ImageBuild:
        folder = Path(tempfile.mkdtemp(prefix="sparsegate-images-"))
        with (folder / "out").open("w") as out, (folder / "err").open("w") as err:
            proc = subprocess.Popen(["scripts/images.sh"], cwd=ROOT, stdout=out, stderr=err,
                                    start_new_session=True)  # fmt: skip
        return cls(proc, folder)

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """Its exit status, standard output and error, once it has ended (a build that
        runs past `timeout` is stopped and fails)."""
        try:
            code = self.proc.wait(timeout=max(timeout - (time.monotonic() - self.started), 1))
        except subprocess.TimeoutExpired:
            self._kill()
            code = -1
        return code, self._read("out"), self._read("err")

    def _read(self, name: str) -> str:
        return (self.folder / name).read_text(errors="replace")

    def close(self) -> None:
        """Stop it if it still runs; remove its output."""
        self._kill()
        for name in ("out", "err"):
            (self.folder / name).unlink(missing_ok=True)
        self.folder.rmdir()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
