"""The CLI as a person uses it: typed into a terminal (tmux ``send-keys``), read off the screen
(``capture-pane``). Submit the StatQuest job, watch it to the end, read b3 = 2.61."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.examples import statquest_job
from tests.e2e.conftest import Running

pytestmark = pytest.mark.slow
WIDTH, HEIGHT = 160, 48  # wide enough that no line of ours wraps


def tmux_binary() -> str:
    """tmux, installed with apt when missing (as ``make system-deps`` does); skip if it cannot be."""
    if found := shutil.which("tmux"):
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    for step in (["apt-get", "install", "-y", "-q", "--no-install-recommends", "tmux"], ["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "tmux"]):
        try:
            subprocess.run([*sudo, *step], capture_output=True, timeout=300, check=False,
                           env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"})
        except (OSError, subprocess.TimeoutExpired):
            break
        if found := shutil.which("tmux"):
            return found
    pytest.skip("tmux is not installed and apt-get could not install it")


class Terminal:
    """A tmux session on its own server (socket in tmp), running a plain bash."""

    def __init__(self, tmux: str, socket: Path) -> None:
        self.base = [tmux, "-S", str(socket), "-f", "/dev/null"]

    def start(self, env: dict[str, str]) -> None:
        exports = " ".join(f"{k}={v}" for k, v in env.items())
        shell = f"env {exports} PS1='$ ' bash --norc --noprofile"
        subprocess.run([*self.base, "new-session", "-d", "-s", "cli", "-x", str(WIDTH), "-y", str(HEIGHT), shell],
                       check=True, timeout=30)

    def type(self, line: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "cli", "-l", line], check=True, timeout=10)
        subprocess.run([*self.base, "send-keys", "-t", "cli", "Enter"], check=True, timeout=10)

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-J", "-t", "cli"], capture_output=True, text=True,
                              check=True, timeout=10).stdout

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.screen(), re.MULTILINE)):
            assert time.monotonic() < deadline, f"{pattern!r} never appeared; the screen:\n{self.screen()}"
            time.sleep(0.2)
        return found

    def stop(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=10, check=False)


@pytest.fixture
def terminal(stack: Running, tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal(tmux_binary(), tmp_path / "tmux.sock")
    path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"  # `descent` as installed
    term.start({"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8", "TERM": "screen", "DESCENT_URL": stack.url})
    yield term
    term.stop()


def test_statquest_typed_into_a_terminal(terminal: Terminal, tmp_path: Path) -> None:
    spec = tmp_path / "statquest.json"
    spec.write_text(json.dumps(statquest_job()))
    terminal.type(f'ID=$(descent submit -q {spec}); echo "submitted: $ID"')
    job_id = terminal.wait_for(r"^submitted: ([0-9a-f-]{36})$").group(1)

    terminal.type('descent watch "$ID"; echo "watch exit: $?"')
    code = terminal.wait_for(r"^watch exit: (\d+)$").group(1)
    lines = terminal.screen().splitlines()
    assert code == "0", "\n".join(lines)  # the final status (succeeded) as exit code
    final = lines[lines.index("watch exit: 0") - 1]
    assert final.startswith(f"statquest-b3 {job_id[:8]} [█") and "░" not in final
    assert re.search(r"] step 9/1000  SSR [\d.e-]+  (\d+ steps/s  )?succeeded \(min_step_size\)$", final), final

    terminal.type('descent params "$ID" --digits 2')
    bias = terminal.wait_for(r"^layers\.1\.bias +\[(.*)\]$").group(1)
    assert bias == "2.61"  # b3, as in the video
    assert "layers.1.weight  [[-1.22, -2.30]]" in terminal.screen()
