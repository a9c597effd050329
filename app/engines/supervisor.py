"""Keep spawned engines alive: start, wait for health, restart with backoff, stop.

Every engine runs in its own process group, and every way out of an engine's life (crash,
restart, stop) ends the whole group, so vLLM's EngineCore child never outlives its server."""

import dataclasses
import logging
import threading
import time
from pathlib import Path

from app.engines.vllm_process import (
    EngineSettings,
    VllmProcess,
    shared_host_environment,
    stop_all,
)

log = logging.getLogger("sparsegate.engines")


class Supervisor:
    def __init__(self, settings: list[EngineSettings], log_dir: Path, grace_s: float = 8) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        shared = shared_host_environment(len(settings))
        settings = [dataclasses.replace(s, env=shared | s.env) for s in settings]
        self.engines = [VllmProcess(s, log=log_dir / f"{s.served_name}.log") for s in settings]
        self.grace_s = grace_s
        self._stop = threading.Event()
        # Held while an engine is (re)started or stopped: a restart never races stop().
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name="engine-supervisor", daemon=True)

    def start(self, timeout: float = 900) -> None:
        with self._lock:
            for engine in self.engines:
                engine.start()
        deadline = time.monotonic() + timeout
        for engine in self.engines:
            # One deadline for all; returns early when stop() is called meanwhile.
            if not engine.wait_ready(max(0.0, deadline - time.monotonic()), cancel=self._stop):
                return
            log.info("engine %s ready at %s", engine.settings.served_name, engine.settings.url)
        self._thread.start()

    def _watch(self) -> None:
        backoff = {id(e): 1.0 for e in self.engines}
        while not self._stop.wait(1.0):
            for engine in self.engines:
                if engine.proc is not None and engine.proc.poll() is not None:
                    name, code = engine.settings.served_name, engine.proc.returncode
                    # The server is gone; its EngineCore may not be: end the whole group now,
                    # not at the restart (it holds memory and a core meanwhile).
                    engine.reap(time.monotonic())
                    delay = backoff[id(engine)]
                    log.warning("engine %s exited (%s); restarting in %.0f s", name, code, delay)
                    if self._stop.wait(delay):
                        return
                    backoff[id(engine)] = min(delay * 2, 60.0)
                    with self._lock:
                        if self._stop.is_set():
                            return
                        engine.start()
                elif engine.healthy():
                    backoff[id(engine)] = 1.0

    def stop(self) -> None:
        """End every engine's process group: SIGTERM to all at once, SIGKILL at the deadline."""
        self._stop.set()
        with self._lock:
            stop_all([e for e in self.engines if e.proc is not None], self.grace_s)
