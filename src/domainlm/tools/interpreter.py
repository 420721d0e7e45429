"""An opt-in Python code interpreter tool (ChatGLM3's Code Interpreter mode).

Code runs in a separate `python -I` process, in a fresh temporary folder, with limits on
CPU seconds, memory and output size, sockets disabled, and an empty environment. This
keeps accidents contained (runaway loops, huge allocations, stray network calls); it is not
a sandbox for hostile code, so it is off unless the user turns it on.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from typing import Annotated

from domainlm.tools.registry import Tool, tool

CPU_SECONDS = 10
MEMORY_BYTES = 1 << 30
MAX_OUTPUT = 8000

_PRELUDE = f"""
import resource, socket
resource.setrlimit(resource.RLIMIT_CPU, ({CPU_SECONDS}, {CPU_SECONDS}))
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_BYTES}, {MEMORY_BYTES}))
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the code interpreter")
socket.socket = _no_network
socket.create_connection = _no_network
del resource, socket, _no_network
"""


def run_python(code: str) -> str:
    """Run `code` and return what it printed (stdout then stderr), or why it failed."""
    with tempfile.TemporaryDirectory(prefix="domainlm-code-") as folder:
        try:
            done = subprocess.run(
                [sys.executable, "-I", "-c", _PRELUDE + "\n" + code],
                cwd=folder, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                timeout=CPU_SECONDS * 2, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"error: the code ran longer than {CPU_SECONDS * 2} s and was stopped"
    output = (done.stdout + (("\n" + done.stderr) if done.stderr else "")).strip()
    if done.returncode in (-9, -24):  # SIGKILL / SIGXCPU from the CPU limit
        output = (output + "\n" if output else "") + f"error: CPU time limit ({CPU_SECONDS} s)"
    elif done.returncode != 0 and not output:
        output = f"error: exit code {done.returncode}"
    return output[:MAX_OUTPUT] + ("…(truncated)" if len(output) > MAX_OUTPUT else "")


@tool(name="python", timeout=CPU_SECONDS * 2 + 5)
def python_tool(code: Annotated[str, "Python code; print() what you want to see"]) -> str:
    """Run Python code in a separate, limited process and return its printed output."""
    return run_python(code)


CODE_TOOLS: list[Tool] = [python_tool]
