"""Private rsyslogd instances for tests: own config, work dir, pid file and (for the sender) its own
log socket instead of /dev/log. The shipped config text (ops.rsyslog) is appended unchanged."""

from __future__ import annotations

import logging
import logging.handlers
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


def wait_for(predicate: Callable[[], bool], *, timeout: float = 20.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Rsyslogd:
    binary: str
    base: Path
    body: str  # the rendered ops.rsyslog config
    hostname: str
    with_socket: bool = False
    proc: subprocess.Popen[bytes] | None = None
    loggers: list[logging.Logger] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.base / "rsyslog.conf"

    @property
    def socket(self) -> Path:
        return self.base / "log.sock"

    def write(self) -> None:
        (self.base / "spool").mkdir(parents=True, exist_ok=True)
        pre = f'global(workDirectory="{self.base / "spool"}" localHostName="{self.hostname}")\n'
        if self.with_socket:
            pre += (
                'module(load="imuxsock" SysSock.Use="off")\n'
                f'input(type="imuxsock" Socket="{self.socket}" CreatePath="on")\n'
            )
        self.conf.write_text(pre + self.body)

    def check(self) -> subprocess.CompletedProcess[str]:
        self.write()
        return subprocess.run(
            [self.binary, "-N1", "-f", str(self.conf)], capture_output=True, text=True, check=False
        )

    def start(self) -> None:
        self.write()
        log = (self.base / "rsyslogd.out").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-n", "-f", str(self.conf), "-i", str(self.base / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        if self.with_socket:
            wait_for(self.socket.exists, what="rsyslogd's log socket")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.with_socket:
            self.socket.unlink(missing_ok=True)

    def logger(self, name: str) -> logging.Logger:
        """Like webapp.syslog: authpriv, tag `strongroom:`, but to this instance's socket."""
        logger = logging.getLogger(f"tests.ops.rsyslog.{name}.{id(self)}")
        handler = logging.handlers.SysLogHandler(
            address=str(self.socket), facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
        )
        handler.setFormatter(logging.Formatter("strongroom: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        self.loggers.append(logger)
        return logger

    def close_loggers(self) -> None:
        for logger in self.loggers:
            for h in list(logger.handlers):
                h.close()
                logger.removeHandler(h)
