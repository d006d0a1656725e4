"""``make quickstart-check``: the README's quick start, run word for word on ``make sandbox``.

The quick start is what a new user types first; a drift between it and the code is a broken
first hour. This reads the README's "Quick start" section, takes every ``$ `` command of its
console blocks in order, starts the one that is ``make sandbox`` in the background (as the
user's first terminal), waits until it says it is up, and runs the others in one bash (the
user's second terminal, so ``. .sandbox/env`` carries over), stopping at the first that fails.
Then it checks what a user would: ``make sandbox`` exited 0, and the machine is as it was
(no bridge, no holder in the node's lock).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time

from sandbox.controlplane import REPO_ROOT
from sandbox.host_lock import read_holder
from sandbox.keep import STATE
from sandbox.node import BRIDGE

README = REPO_ROOT / "README.md"
KEPT_SANDBOX = "make sandbox"
START_TIMEOUT = 600.0
COMMANDS_TIMEOUT = 900.0


def quick_start_commands(readme: str) -> list[str]:
    """The ``$ `` lines of the console blocks in the README's "Quick start" section."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", readme, flags=re.M | re.S)
    if section is None:
        raise ValueError("README.md has no '## Quick start' section")
    commands = []
    for block in re.findall(r"^```console\n(.*?)^```", section.group(1), flags=re.M | re.S):
        commands += [line[2:] for line in block.splitlines() if line.startswith("$ ")]
    if not commands:
        raise ValueError("README.md's quick start has no `$ ` commands")
    return commands


def _without_comment(command: str) -> str:
    return command.split("  #", 1)[0].strip()


def run(commands: list[str]) -> int:
    """Run the quick start; 0 when every command succeeded and the sandbox stopped cleanly."""
    if _without_comment(commands[0]) != KEPT_SANDBOX:
        print(f"error: the quick start must begin with `{KEPT_SANDBOX}`", file=sys.stderr)
        return 2
    print(f"$ {commands[0]}   (in the background)", flush=True)
    kept = subprocess.Popen(["bash", "-c", commands[0]], cwd=REPO_ROOT)
    try:
        if not _wait_until_up(kept):
            return 1
        script = "set -euo pipefail\n" + "".join(
            f"echo {shlex.quote('$ ' + command)}\n{command}\n" for command in commands[1:])
        result = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, check=False,
                                timeout=COMMANDS_TIMEOUT)
        if result.returncode != 0:
            print(f"error: a quick-start command failed (exit code {result.returncode})",
                  file=sys.stderr)
            return 1
        code = kept.wait(timeout=180)  # the quick start's own last step stops it
    finally:
        if kept.poll() is None:
            subprocess.run(["make", "sandbox-down"], cwd=REPO_ROOT, check=False)
            kept.wait(timeout=180)
    return _left_clean(code)


def _wait_until_up(kept: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if kept.poll() is not None:
            print(f"error: `{KEPT_SANDBOX}` exited ({kept.returncode}) before it was up",
                  file=sys.stderr)
            return False
        holder = read_holder()
        if (STATE / "env").exists() and holder is not None and holder.kept:
            return True
        time.sleep(1)
    print(f"error: `{KEPT_SANDBOX}` was not up after {START_TIMEOUT:.0f}s", file=sys.stderr)
    return False


def _left_clean(code: int) -> int:
    problems = []
    if code != 0:
        problems.append(f"`{KEPT_SANDBOX}` exited {code}")
    if subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True,
                      check=False).returncode == 0:
        problems.append(f"the bridge {BRIDGE} is still there")
    if read_holder() is not None:
        problems.append("the node's lock still names a holder")
    if (STATE / "env").exists():
        problems.append(".sandbox/env is still there")
    for problem in problems:
        print(f"error: after the quick start, {problem}", file=sys.stderr)
    if not problems:
        print("The README's quick start ran word for word; the sandbox stopped cleanly.")
    return 1 if problems else 0


def main() -> int:
    """Entry point of ``python -m sandbox.quickstart_check``."""
    return run(quick_start_commands(README.read_text()))


if __name__ == "__main__":
    sys.exit(main())
