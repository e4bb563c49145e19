"""The entry-point rule (scripts at the top level, in tools/ and in bench/; packages have no command line), and
the commands the README and docs/ show: every script they run exists and takes every flag they give it, every
make target exists, and the README's Python face runs as printed."""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datasets", "engine", "losses", "metrics", "models", "utils")
TOOLS = ("make_synthetic", "check_dataset", "baselines", "figures")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNERS = ("python", ".venv/bin/python", "bash", "make", "torchrun")


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
    scripts = [p.relative_to(ROOT) for pattern in ("*.py", "*.sh", "tools/*.py", "tools/*.sh", "bench/*.py", "bench/*.sh")
               for p in ROOT.glob(pattern)
               if p.suffix == ".sh" or re.search(r"^if __name__ == .__main__.:", p.read_text(), re.M)]
    assert scripts and [str(s) for s in scripts if f"{s}`" not in readme] == []


def shown_commands(document: Path) -> list[str]:
    """The command lines a document shows: the lines of its bash blocks and its inline code that starts with a
    runner (python, bash, make, torchrun), without comments and with `\\` continuations joined."""
    text = document.read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S)
             for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    commands = []
    for line in lines:
        if not re.match(rf"([A-Z_]+=\S+ )*({'|'.join(map(re.escape, RUNNERS))}) ", line.strip() + " "):
            continue
        words = shlex.split(line.split(" #")[0], comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):  # NAME=value before the command
            words = words[1:]
        if len(words) > 1 and words[0] in RUNNERS:  # a runner named alone is prose, not a command
            commands.append(" ".join(shlex.quote(w) for w in words))
    return commands


@functools.cache
def help_text(script: str) -> str:
    """What `python SCRIPT --help` prints (run in this process)."""
    stdout = io.StringIO()
    argv = sys.argv
    sys.argv = [script, "--help"]
    try:
        with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit) as stop:
            runpy.run_path(str(ROOT / script), run_name="__main__")
    finally:
        sys.argv = argv
    assert stop.value.code in (0, None), f"{script} --help exited with {stop.value.code}"
    return stdout.getvalue()


def check_python_command(words: list[str]) -> None:
    script_at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    script, args = words[script_at], words[script_at + 1:]
    assert (ROOT / script).is_file(), f"{script}: no such script"
    usage = help_text(script)
    for i, word in enumerate(args):
        if not word.startswith("--"):
            continue
        flag = word.split("=")[0]
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", usage), f"{script} has no {flag}"
        choices = re.search(rf"{re.escape(flag)} \{{([^}}]+)\}}", usage)
        value = word.split("=", 1)[1] if "=" in word else (args[i + 1] if i + 1 < len(args) else "")
        if choices and value and not value.startswith("-"):
            assert value in choices.group(1).split(","), f"{script} {flag} takes {choices.group(1)}, not {value}"


def check_command(command: str) -> None:
    words = shlex.split(command)
    runner = words[0]
    if runner == "make":
        makefile = (ROOT / "Makefile").read_text().replace("$(VENV)", ".venv")
        for word in words[1:]:
            name = word.split("=")[0]
            assert re.search(rf"^{re.escape(name)}\b", makefile, re.M), f"make: no target or variable {name}"
    elif runner == "bash":
        script = ROOT / words[1]
        assert script.is_file(), f"{words[1]}: no such script"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    else:
        check_python_command(words)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_command_shown_runs_a_script_that_takes_its_flags(document: Path) -> None:
    commands = shown_commands(document)
    if document.name == "README.md":
        assert len(commands) >= 20 and "python app.py" in commands and "make app" in " ".join(commands)
    for command in commands:
        try:
            check_command(command)
        except AssertionError as exc:
            raise AssertionError(f"{document.name}: `{command}`: {exc}") from None


def test_every_flag_shown_alone_belongs_to_a_script_the_readme_runs() -> None:
    """The experiments table and the prose name flags without their script (`--model pdnet`)."""
    readme = (ROOT / "README.md").read_text()
    scripts = {w for c in shown_commands(ROOT / "README.md") for w in shlex.split(c) if w.endswith(".py")}
    usages = " ".join(help_text(s) for s in sorted(scripts))
    flags = {f for code in re.findall(r"`(--[^`]+)`", readme) for f in re.findall(r"(?<![\w-])--[a-z][\w-]*", code)}
    assert flags and sorted(f for f in flags if f not in usages) == []


def test_the_readmes_python_face_runs_as_printed(tmp_path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    face = next(block for block in blocks if "torch.hub.load" in block)
    assert len([line for line in face.splitlines() if line and not line.startswith(("import", "from"))]) == 2
    photo = tmp_path / "photo.jpg"
    Image.fromarray(skimage.data.coffee()).save(photo)
    monkeypatch.chdir(ROOT)  # torch.hub.load(".", ...) runs from a clone
    namespace: dict = {}
    exec(face.replace('"photo.jpg"', repr(str(photo))), namespace)
    assert namespace["in_focus"].shape == (400, 600) and namespace["in_focus"].dtype == np.float32
    api = next(block for block in blocks if "models.load_model" in block)
    import datasets
    import models
    for module, name in re.findall(r"\b(models|datasets)\.(\w+)\(", api):
        assert hasattr({"models": models, "datasets": datasets}[module], name), f"{module}.{name}"


def relative_links(document: Path) -> list[Path]:
    """The files a markdown document links to (web addresses and in-page anchors left out)."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text())
    return [(document.parent / t).resolve() for t in targets if not re.match(r"[a-z]+://", t)]


def test_every_link_resolves_and_every_document_is_reachable_from_the_readme() -> None:
    documents = [*DOCUMENTS, ROOT / "checkpoint/release/MODEL_CARD.md", ROOT / "depth_pretrained/MODEL_CARD.md"]
    broken = [f"{d.relative_to(ROOT)} -> {t}" for d in documents for t in relative_links(d) if not t.exists()]
    assert broken == []
    reached, queue = set(), [ROOT / "README.md"]
    while queue:
        document = queue.pop()
        for target in relative_links(document):
            if target.suffix == ".md" and target not in reached:
                reached.add(target)
                queue.append(target)
    assert sorted(str(d.relative_to(ROOT)) for d in DOCUMENTS[1:] if d.resolve() not in reached) == []
