"""Running ``effnet`` in a child process with bounded memory, and reading its peak.

Memory-bound tests assert a peak rather than an exit code: :func:`run_effnet` runs the command
under an address-space limit (``RLIMIT_AS``; importing PyTorch alone reserves about 3.3 GB of
address space, so the limit is at least 6 GB) and returns the child's peak resident memory.

The peak is the child's own ``VmHWM``, which it writes at exit: the kernel's ``ru_maxrss``
also counts the resident memory of this (forked, often several GB) test process at the
moment of the fork, so it serves only for a child killed before it could write its own.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

GB = 2**30
ADDRESS_SPACE = 6 * GB
PEAK_FILE = "EFFNET_TEST_PEAK_FILE"
REPORT_PEAK = f"""
import atexit, os, runpy
def _report_peak(path=os.environ.pop({PEAK_FILE!r})):
    with open("/proc/self/status") as status, open(path, "w") as out:
        out.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(_report_peak)
"""
RUN_EFFNET = "runpy.run_module('effnet', run_name='__main__', alter_sys=True)"


@dataclass(frozen=True)
class Finished:
    """A finished child: its exit code, output and peak resident memory in bytes."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    timed_out: bool = False


def run_effnet(argv: list[str], cwd: str | Path | None = None, address_space: int = ADDRESS_SPACE,
               timeout: float = 600) -> Finished:
    """``python -m effnet ARGV`` with at most ``address_space`` bytes of address space; killed
    after ``timeout`` seconds."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    with tempfile.NamedTemporaryFile(prefix="effnet-peak-") as peak_file:
        command = [sys.executable, "-c", REPORT_PEAK + RUN_EFFNET, *argv]
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", PEAK_FILE: peak_file.name}
        child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=limit, env=environment)
        returncode, stdout, stderr, fork_peak = _wait(child, timeout)
        reported = Path(peak_file.name).read_text()
    peak = int(reported) * 1024 if reported else fork_peak
    return Finished(returncode, stdout, stderr, peak, timed_out=returncode == -signal.SIGKILL)


def _wait(child: subprocess.Popen[bytes], timeout: float) -> tuple[int, str, str, int]:
    """The exit code, output and ``ru_maxrss`` (bytes) of ``child``, killed after ``timeout`` seconds."""
    output: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, stream=stream: output.__setitem__(name, stream.read()))
               for name, stream in (("out", child.stdout), ("err", child.stderr))]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, child.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(child.pid, 0)  # this child's usage, not that of this process's others
    finally:
        killer.cancel()
    child.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    child.stdout.close()
    child.stderr.close()
    return (child.returncode, output["out"].decode(errors="replace"), output["err"].decode(errors="replace"),
            usage.ru_maxrss * 1024)
