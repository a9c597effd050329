"""Keep spawned engines alive: start, wait for health, restart with backoff, stop."""

import logging
import threading
from pathlib import Path

from app.engines.vllm_process import EngineSettings, VllmProcess

log = logging.getLogger("sparsegate.engines")


class Supervisor:
    def __init__(self, settings: list[EngineSettings], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.engines = [VllmProcess(s, log=log_dir / f"{s.served_name}.log") for s in settings]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="engine-supervisor", daemon=True)

    def start(self, timeout: float = 900) -> None:
        for engine in self.engines:
            engine.start()
        for engine in self.engines:
            engine.wait_ready(timeout)
            log.info("engine %s ready at %s", engine.settings.served_name, engine.settings.url)
        self._thread.start()

    def _watch(self) -> None:
        backoff = {id(e): 1.0 for e in self.engines}
        while not self._stop.wait(1.0):
            for engine in self.engines:
                if engine.proc is not None and engine.proc.poll() is not None:
                    delay = backoff[id(engine)]
                    name, code = engine.settings.served_name, engine.proc.returncode
                    log.warning("engine %s exited (%s); restarting in %.0f s", name, code, delay)
                    if self._stop.wait(delay):
                        return
                    backoff[id(engine)] = min(delay * 2, 60.0)
                    engine.start()
                elif engine.healthy():
                    backoff[id(engine)] = 1.0

    def stop(self) -> None:
        self._stop.set()
        for engine in self.engines:
            engine.stop()
