"""The package as users get it: `pip wheel` builds a wheel (with the
pinned hatchling of the test virtualenv, so without the network), the wheel
holds the package and its metadata, and installed into a scratch virtualenv
it imports from there and publishes to the real node."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

from conftest import Node

import wsgate

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=180, env=env
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout}{result.stderr}"
    return result.stdout


def test_the_wheel_builds_installs_and_publishes(node: Node, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, ROOT)
    [wheel] = dist.glob("*.whl")
    assert wheel.name == f"wsgate-{wsgate.__version__}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"wsgate-{wsgate.__version__}.dist-info"
        metadata = Parser().parsestr(z.read(f"{info}/METADATA").decode())
    package = {n for n in names if not n.startswith(info)}
    assert package == {
        f"wsgate/{f}"
        for f in [
            "__init__.py",
            "_client.py",
            "_core.py",
            "_types.py",
            "_version.py",
            "django.py",
            "errors.py",
            "py.typed",
        ]
    }
    assert metadata["Name"] == "wsgate"
    assert metadata["Version"] == wsgate.__version__
    assert metadata["Requires-Python"] == ">=3.10"
    requires = metadata.get_all("Requires-Dist")
    assert any(r.startswith("httpx") for r in requires), requires
    assert any(r.lower().startswith("django") and "extra" in r for r in requires), requires

    # A scratch virtualenv without pip (fast); the test virtualenv's pip
    # installs the wheel into it, and a .pth file lends it httpx and Django
    # from the test virtualenv (after its own site-packages, so the wsgate
    # it imports is the wheel's).
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    scratch = venv / "bin" / "python"
    run(*pip, "--python", scratch, "install", "--no-index", "--no-deps", wheel)
    site = Path(
        run(scratch, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    )
    (site / "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(API=node.api, KEY=node.key)
    out = run(
        scratch,
        "-I",
        "-c",
        """
import importlib.metadata, importlib.resources, os, sys
import wsgate, wsgate.django
assert wsgate.__file__.startswith(sys.prefix), wsgate.__file__
assert importlib.metadata.version("wsgate") == wsgate.__version__
assert importlib.resources.files("wsgate").joinpath("py.typed").is_file()
with wsgate.Client(os.environ["API"], os.environ["KEY"]) as client:
    print(client.publish("t.from-the-wheel", {"ok": True}), client.cluster()[0]["node"])
""",
        env=env,
    )
    assert out.split() == ["None", node.node_id]
