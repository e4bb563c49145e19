"""The entry-point rule: scripts at the top level, in tools/ and in bench/; packages have no command line."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "engine", "losses", "models", "utils")
TOOLS = ("make_synthetic", "check_dataset", "baselines", "figures")


@pytest.mark.parametrize("package", PACKAGES)
def test_library_packages_have_no_main_block(package: str) -> None:
    runnable = [str(path.relative_to(ROOT)) for path in sorted((ROOT / package).rglob("*.py"))
                if path.name == "__main__.py" or re.search(r"^if __name__ == .__main__.:", path.read_text(), re.M)]
    assert runnable == []


@pytest.mark.parametrize("tool", TOOLS)
def test_every_tool_is_a_script_with_help(tool: str, capsys) -> None:
    assert re.search(r"^if __name__ == .__main__.:", (ROOT / "tools" / f"{tool}.py").read_text(), re.M)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"tools.{tool}").main(["--help"])
    assert stop.value.code == 0 and "usage:" in capsys.readouterr().out


def test_readme_lists_every_script() -> None:
    readme = (ROOT / "README.md").read_text()
    scripts = [p.relative_to(ROOT) for pattern in ("*.py", "*.sh", "tools/*.py", "bench/*.py", "bench/*.sh")
               for p in ROOT.glob(pattern)
               if p.suffix == ".sh" or re.search(r"^if __name__ == .__main__.:", p.read_text(), re.M)]
    assert scripts and [str(s) for s in scripts if f"{s}`" not in readme] == []
