"""The import rules of docs/architecture.md, checked on the source (nothing is imported)."""

from pathlib import Path

from benchmarks.structure import cycles, imports_of, module_name, part_of, python_files

ROOT = Path(__file__).resolve().parents[1] / "segfm"

GROUND = {"sample", "errors", "utils"}
#: part -> the parts of segfm it may import (docs/architecture.md, "Allowed imports")
ALLOWED: dict[str, set[str]] = {
    "sample": set(),
    "errors": set(),
    "utils": set(),
    "nn": set(),
    "models": {"nn"},
    "checkpoints": {"models"},
    "prompts": set(),
    "transforms": set(),
    "losses": set(),
    "inference": {"models", "prompts", "transforms"},
    "data.io": {"transforms"},
    "data": {"data.io", "transforms"},
    "evaluation": {"prompts", "data.io"},
    "methods": {
        "callbacks",
        "checkpoints",
        "data.io",
        "evaluation",
        "inference",
        "losses",
        "models",
        "prompts",
        "transforms",
    },
    "callbacks": {"checkpoints"},
    "tracking": {"checkpoints", "data.io", "evaluation", "inference"},
    "accelerators": set(),
    "challenge": {"checkpoints", "data.io", "evaluation", "methods", "prompts"},
    "serve": {"data.io", "evaluation", "methods", "transforms"},
    "commands": {
        "accelerators",
        "challenge",
        "checkpoints",
        "data",
        "data.io",
        "evaluation",
        "methods",
        "serve",
        "tracking",
    },
    "cli": {"commands"},
    "__main__": {"cli"},
}


def _arrows() -> dict[str, set[str]]:
    arrows: dict[str, set[str]] = {}
    for path in python_files(ROOT):
        source = part_of(module_name(path, ROOT), "segfm")
        if source is None:
            continue
        targets = {part_of(name, "segfm") for name in imports_of(path, ROOT)}
        arrows.setdefault(source, set()).update(t for t in targets if t and t != source)
    return arrows


def test_every_part_is_in_the_table() -> None:
    assert set(_arrows()) <= set(ALLOWED), "a new part: add it to docs/architecture.md and here"


def test_imports_follow_the_table() -> None:
    wrong = {
        part: sorted(targets - ALLOWED[part] - GROUND)
        for part, targets in _arrows().items()
        if targets - ALLOWED[part] - GROUND
    }
    assert wrong == {}


def test_no_cycle_between_parts() -> None:
    assert cycles(_arrows()) == []


def test_a_forbidden_arrow_is_seen(tmp_path: Path) -> None:
    """The scan finds an upward import (so the two tests above can fail)."""
    package = tmp_path / "segfm"
    (package / "evaluation").mkdir(parents=True)
    (package / "evaluation" / "x.py").write_text("from segfm.methods.base import BaseTask\n")
    (package / "methods").mkdir()
    (package / "methods" / "y.py").write_text("from ..evaluation import x\n")
    arrows = {}
    for path in python_files(package):
        source = part_of(module_name(path, package), "segfm")
        arrows[source] = {part_of(n, "segfm") for n in imports_of(path, package)} - {None}
    assert arrows == {"evaluation": {"methods"}, "methods": {"evaluation"}}
    assert cycles(arrows) == [["evaluation", "methods"]]
