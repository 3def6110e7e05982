"""The real-guest kit (``../shared/realguest``): find it, set it up, boot and stop guests.

The kit boots real Linux guests behind Debian's QEMU (virtio-balloon) and a nested QEMU 10
(hv-balloon); see its README. Tests find it next to the repository (``../shared/realguest``, or
two levels up for a git worktree), at ``$HVDM_REALGUEST_KIT`` or at ``/work/shared/realguest``, and
skip with that reason only when it is absent. ``rig setup`` is idempotent (apt-get installs what is missing, as root).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def find_kit() -> Path | None:
    env = os.environ.get("HVDM_REALGUEST_KIT")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared" / "realguest", REPO.parent.parent / "shared" / "realguest"]
    # Where the development machines keep it, for a clone made anywhere else (e.g. CI's).
    candidates.append(Path("/work/shared/realguest"))
    for path in candidates:
        if (path / "rig").is_file():
            return path
    return None


class Rig:
    def __init__(self, kit: Path) -> None:
        self.kit = kit
        # Short: UNIX socket paths under it must fit 107 bytes.
        self.work = Path(tempfile.mkdtemp(prefix="rg", dir="/tmp"))
        self.env = dict(os.environ, RIG_WORK=str(self.work))

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(self.kit / "rig"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def setup(self) -> None:
        done = self.run("setup")
        if done.returncode != 0:
            raise AssertionError(f"rig setup failed:\n{done.stderr[-3000:]}")

    def up(self, kind: str, *args: str, timeout: float = 300, attempts: int = 2) -> dict[str, Any]:
        """Boot a guest; a boot that fails or hangs is stopped and tried once more.

        Why: the nested hv-balloon guest (L2 under L1's KVM under TCG) sometimes never starts --
        seen once in CI-like runs here: L1 printed "starting L2" and L2 wrote nothing for 10
        minutes. That is the emulation stack, before hvdm is involved, so a fresh boot is the fix;
        a second failure fails the test with both attempts' output.
        """
        failures: list[str] = []
        for attempt in range(1, attempts + 1):
            try:
                done = self.run(f"{kind}-up", *args, timeout=timeout)
            except subprocess.TimeoutExpired:
                failures.append(f"attempt {attempt}: rig {kind}-up timed out after {timeout:g} s")
            else:
                if done.returncode == 0:
                    info: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
                    return info
                failures.append(f"attempt {attempt}: rig {kind}-up failed:\n{done.stderr[-3000:]}")
            self.down(kind)
        raise AssertionError("\n".join(failures))

    def down(self, kind: str | None = None) -> None:
        self.run("down", *([kind] if kind else []), timeout=120)

    def exec(self, kind: str, command: str) -> str:
        done = self.run("exec", kind, command, timeout=120)
        return done.stdout


def hvdm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def start_hvdm(*args: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "services", *args, "-v"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT
    )


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)
