"""The tested stack's pins: rebuild them, check an install against them, and look for upstream drift.

    python scripts/pins.py refresh   # a fresh resolve -> constraints.txt and pyproject's build pins
    python scripts/pins.py check     # this environment has exactly constraints.txt's versions (CI)
    python scripts/pins.py drift     # the test suite in a fresh venv without the pins

Two files hold the pins. constraints.txt: every distribution that
`pip install -c constraints.txt -e ".[test,dali,dicom]"` installs (the README's commands and CI),
so that an upstream release cannot change what they install. pyproject.toml's [build-system]
requires: the build tools, exact, because pip's isolated build environment does not read -c.
pyproject.toml's [project] dependencies keep ranges, for installs beside a user's own torch and
transformers; `drift` installs the newest releases inside those ranges (and the newest build tools
inside BUILD_TOOLS) and runs scripts/test.sh, so that the next upstream break is found here first.

torch and torchvision stay at the development machines' versions (they lie on these machines'
disk; a newer CUDA build is several GB): set TORCH_PINS="torch==X torchvision==Y" to move them.
Every command needs only the standard library, and runs from any working directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"
EXTRAS = ".[test,dali,dicom]"
# The build tools and the oldest releases the build works with (setup.py, CMakeLists.txt):
# `refresh` pins the newest release of each into pyproject.toml, `drift` builds with the newest.
BUILD_TOOLS = ["setuptools>=77", "wheel", "pybind11>=2.12", "cmake>=3.22", "ninja"]
BUILD_REQUIRES = re.compile(r"^requires = \[.*\]$", re.M)
HEADER = """\
# The tested stack, exact: every distribution that `pip install -c constraints.txt -e ".[test,dali,dicom]"`
# installs (the README's commands and CI; .ci/run checks the result with `scripts/pins.py check`).
# Written by `python scripts/pins.py refresh` from a fresh resolve ({date}, Python {python}, {machine});
# do not edit by hand. pyproject.toml keeps the ranges the code supports, and pins the build tools.
"""


def pins_of(lines: list[str]) -> dict[str, str]:
    """{normalised name: version} of `name==version` lines; comments and blanks are skipped."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            if not sep:
                raise SystemExit(f"error: {line!r} is not a name==version pin")
            out[normalise(name)] = version.strip()
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().strip()


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, cwd=REPO, **kwargs)


def fresh_venv(folder: Path) -> Path:
    """A new venv's python (with the machine's own pip, as the README's commands get)."""
    run([sys.executable, "-m", "venv", str(folder)])
    return folder / "bin" / "python"


def torch_pins() -> list[str]:
    if os.environ.get("TORCH_PINS"):
        return os.environ["TORCH_PINS"].split()
    current = pins_of(CONSTRAINTS.read_text().splitlines())
    return [f"{name}=={current[name]}" for name in ("torch", "torchvision")]


def refresh() -> None:
    with tempfile.TemporaryDirectory(prefix="pins-") as tmp:
        python = fresh_venv(Path(tmp) / "venv")
        # the build tools: the newest release of each, without installing them (pip's report)
        report = run([str(python), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                      "--report", "-", *BUILD_TOOLS], capture_output=True, text=True).stdout
        chosen = {normalise(item["metadata"]["name"]): item["metadata"]["version"]
                  for item in json.loads(report)["install"]}
        names = [re.split(r"[<>=!~]", spec)[0] for spec in BUILD_TOOLS]
        tools = [f"{name}=={chosen[normalise(name)]}" for name in names]
        PYPROJECT.write_text(BUILD_REQUIRES.sub(f"requires = {json.dumps(tools)}", PYPROJECT.read_text(), count=1))
        # the stack, resolved as a new user's install would be, built with those tools
        run([str(python), "-m", "pip", "install", "-e", EXTRAS, *torch_pins()])
        # --all: setuptools and wheel are runtime requirements here too (torch's, astunparse's)
        frozen = run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True,
                     text=True).stdout
        version = run([str(python), "-c", "import platform; print(platform.python_version(), platform.machine())"],
                      capture_output=True, text=True).stdout.split()
    # pip itself is the venv's own, not something the command installs
    lines = sorted((line for line in frozen.splitlines() if line and not line.startswith(("#", "pip=="))),
                   key=str.lower)
    header = HEADER.format(date=datetime.date.today().isoformat(), python=version[0], machine=version[1])
    CONSTRAINTS.write_text(header + "\n".join(lines) + "\n")
    print(f"wrote {CONSTRAINTS.name} ({len(lines)} pins) and pyproject.toml's build pins: {', '.join(tools)}")


def check() -> int:
    """This environment's distributions equal constraints.txt's pins, both ways (convirt_fast aside)."""
    pinned = pins_of(CONSTRAINTS.read_text().splitlines())
    skip = {"convirt-fast", "pip"}  # the project, and the venv's own pip
    installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed = {name: version for name, version in installed.items() if name not in skip}
    problems = [f"{name}: installed {installed[name]}, pinned {version}" for name, version in sorted(pinned.items())
                if name in installed and installed[name] != version]
    problems += [f"{name}: pinned {version}, not installed" for name, version in sorted(pinned.items())
                 if name not in installed]
    problems += [f"{name}=={version}: installed, not pinned" for name, version in sorted(installed.items())
                 if name not in pinned]
    if problems:
        print(f"error: this environment differs from {CONSTRAINTS.name} "
              f"(run `python scripts/pins.py refresh` after a deliberate change):\n  " + "\n  ".join(problems))
        return 1
    print(f"pins: the {len(pinned)} distributions installed are exactly {CONSTRAINTS.name}'s")
    return 0


def drift(keep: bool) -> int:
    """The test suite on the newest releases the ranges allow; returns its exit code."""
    tmp = Path(tempfile.mkdtemp(prefix="drift-"))
    python = fresh_venv(tmp / "venv")
    run([str(python), "-m", "pip", "install", "--upgrade", "pip", *BUILD_TOOLS])
    # the newest build tools, not pyproject's pins: no build isolation
    run([str(python), "-m", "pip", "install", "--no-build-isolation", "-e", EXTRAS, *torch_pins()])
    frozen = run([str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], capture_output=True,
                 text=True).stdout
    pinned = pins_of(CONSTRAINTS.read_text().splitlines())
    moved = [f"{line}   (pinned {pinned.get(normalise(line.split('==')[0]), 'no pin')})"
             for line in frozen.splitlines() if "==" in line
             and pinned.get(normalise(line.split("==")[0])) != line.split("==")[1]]
    print(f"drift: {len(moved)} distributions differ from {CONSTRAINTS.name}:\n  " + "\n  ".join(moved))
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(tmp / "venv")}
    code = subprocess.run(["bash", "scripts/test.sh", "-q"], cwd=REPO, env=env).returncode
    print(f"drift: scripts/test.sh exited {code} on the newest releases ({'passed' if code == 0 else 'FAILED'})")
    if keep:
        print(f"drift: the venv is kept at {tmp / 'venv'}")
    else:
        subprocess.run(["rm", "-rf", str(tmp)])
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("refresh", help="rebuild constraints.txt and pyproject's build pins from a fresh resolve")
    sub.add_parser("check", help="this environment has exactly constraints.txt's versions")
    drift_parser = sub.add_parser("drift", help="the test suite in a fresh venv without the pins")
    drift_parser.add_argument("--keep", action="store_true", help="keep the venv (its path is printed)")
    args = parser.parse_args()
    if args.command == "refresh":
        refresh()
        return 0
    return check() if args.command == "check" else drift(args.keep)


if __name__ == "__main__":
    sys.exit(main())
