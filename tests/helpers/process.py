"""Running ``effnet`` in a child process with bounded memory, and reading its peak.

Memory-bound tests assert a peak rather than an exit code: :func:`run_effnet` runs the command
under an address-space limit (``RLIMIT_AS``; importing PyTorch alone reserves about 3.3 GB of
address space, so the limit is at least 6 GB) and returns the child's peak resident memory.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

GB = 2**30
ADDRESS_SPACE = 6 * GB


@dataclass(frozen=True)
class Finished:
    """A finished child: its exit code, output and peak resident memory in bytes."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    timed_out: bool = False


def run_effnet(argv: list[str], cwd: str | Path | None = None, address_space: int = ADDRESS_SPACE,
               timeout: float = 600, script: str | None = None) -> Finished:
    """``python -m effnet ARGV`` (or ``python -c SCRIPT``) with at most ``address_space`` bytes
    of address space; killed after ``timeout`` seconds."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    command = [sys.executable, "-c", script] if script is not None else [sys.executable, "-m", "effnet", *argv]
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, stream=stream: output.__setitem__(name, stream.read()))
               for name, stream in (("out", child.stdout), ("err", child.stderr))]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, child.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak, not that of this process's other children
    finally:
        killer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    child.stdout.close()
    child.stderr.close()
    return Finished(child.returncode, output["out"].decode(errors="replace"), output["err"].decode(errors="replace"),
                    usage.ru_maxrss * 1024, timed_out=child.returncode == -signal.SIGKILL)
