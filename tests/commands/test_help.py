"""``segfm --help`` and subcommand help: no torch import, whole sentences, registries listed."""

import ast
import inspect
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import pytest

from segfm.cli import SUBCOMMANDS, main, overview

ROOT = Path(__file__).resolve().parents[2]
OWN = [name for name, sub in SUBCOMMANDS.items() if sub.target is not None]
#: verify-data's --data is typed as a data module, so its help imports Lightning
LIGHT = [name for name in OWN if name != "verify-data"]


def _imported(args: list[str]) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules ``python -m segfm ARGS`` imports (from ``-X importtime``), and the process."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "segfm", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines}, proc


@pytest.mark.parametrize("args", [["--help"], []], ids=["help", "no-arguments"])
def test_top_level_help_imports_neither_torch_nor_lightning(args):
    modules, proc = _imported(args)
    assert proc.returncode == (0 if args else 2)
    text = proc.stdout if args else proc.stderr
    for name, sub in SUBCOMMANDS.items():
        assert name in text
        assert " ".join(sub.description.split()[:4]) in " ".join(text.split())
    assert "segfm.cli" in modules  # the measurement sees segfm's own imports
    heavy = {m for m in modules if m.split(".")[0] in ("torch", "lightning", "jsonargparse")}
    assert not heavy, sorted(heavy)[:5]
    targets = {sub.target.partition(":")[0] for sub in SUBCOMMANDS.values() if sub.target}
    assert not targets & modules and "segfm.commands.trainer" not in modules


@pytest.mark.parametrize("name", LIGHT)
def test_own_subcommand_help_does_not_import_torch(name):
    modules, proc = _imported([name, "--help"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert SUBCOMMANDS[name].description.split()[0] in proc.stdout
    assert not {m for m in modules if m.split(".")[0] in ("torch", "lightning")}
    others = {SUBCOMMANDS[n].target.partition(":")[0] for n in LIGHT if n != name}
    assert not others & modules  # only the asked subcommand's module is imported


def test_descriptions_are_whole_sentences_and_the_docstrings_first_line():
    for name, sub in SUBCOMMANDS.items():
        assert sub.description[0].isupper() and sub.description.endswith("."), name
        if sub.target is None:
            continue
        module, _, function = sub.target.partition(":")
        fn = getattr(import_module(module), function)
        assert inspect.getdoc(fn).splitlines()[0] == sub.description, name


def test_command_modules_import_the_library_inside_the_function():
    for name in LIGHT:
        module = SUBCOMMANDS[name].target.partition(":")[0]
        tree = ast.parse(Path(import_module(module).__file__).read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [a.name for n in top for a in n.names] + [
            n.module for n in top if isinstance(n, ast.ImportFrom)
        ]
        assert not [n for n in names if n and n.startswith(("torch", "segfm.evaluation"))], name


def test_overview_wraps_without_cutting_a_description():
    text = " ".join(overview().split())
    for sub in SUBCOMMANDS.values():
        assert sub.description in text


def test_fit_help_has_segfms_description_and_lists_the_registries(capsys):
    from segfm.data import _MODULES
    from segfm.methods import __all__ as methods

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert SUBCOMMANDS["fit"].description in out
    for name in _MODULES:
        assert name == "BaseDataModule" or f"segfm.data.{name}" in out, name
    for name in methods:
        assert name == "BaseTask" or f"segfm.methods.{name}" in out, name


def test_a_listed_data_module_resolves(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--data.help", "segfm.data.NpzDataModule"])
    assert exit_info.value.code == 0
    assert "--data.root ROOT" in capsys.readouterr().out


def test_evaluation_never_imports_tracking():
    for path in sorted((ROOT / "segfm" / "evaluation").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("segfm.tracking"), path
            if isinstance(node, ast.Import):
                assert not [a for a in node.names if a.name.startswith("segfm.tracking")], path


@pytest.mark.parametrize("name", ["fit", "verify-data"])
def test_help_that_needs_lightning_is_kept_after_its_first_rendering(name, tmp_path):
    first = subprocess.run(
        [sys.executable, "-m", "segfm", name, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "--data" in first.stdout
    assert len(list((tmp_path / "cache" / "help").glob(f"{name}-*.txt"))) == 1
    modules, again = _imported([name, "--help"])
    assert again.returncode == 0 and again.stdout == first.stdout
    assert not {m for m in modules if m.split(".")[0] in ("torch", "lightning")}
