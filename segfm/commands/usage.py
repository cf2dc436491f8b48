"""Usage errors of jsonargparse, shortened to one line naming the option and the fix.

jsonargparse explains a refused value over ten to sixty lines (the union of subtypes it tried,
the namespace it was given, the whole usage block). :func:`usage_error` reads the key, the class
and the reason out of that text and says it in one line, suggesting the nearest valid option or
class (difflib) for a misspelt one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from importlib import import_module
from typing import Any

_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS = re.compile(r"Problem with given class_path '([^']+)'")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_REQUIRED = re.compile(r"the following arguments are required: (.+)")
_UNRECOGNIZED = re.compile(r"Unrecognized arguments: (.+)", re.IGNORECASE)
_EXPECTED = re.compile(r"Expected an? (.+?)(?:\. Got value: (.*))?$")
_GIVEN = re.compile(r"^\s*Given value: (.*)$", re.MULTILINE)
_NESTED = re.compile(r"NestedArg\(key='([^']+)'")
_TRAINER_STAGE = re.compile(r"^(fit|validate|test|predict)\.")  # "fit.model" is --model
_NO_CLASS = ("has no attribute", "No module named", "dot import path", "not accessible or invalid")
#: registries of the class-typed options: option -> (package, registry attribute, base class)
_REGISTRIES = {
    "model": ("segfm.methods", "_MODULES", "BaseTask"),
    "data": ("segfm.data", "_MODULES", "BaseDataModule"),
}


class UsageError(Exception):
    """A command line segfm cannot parse; reported in one line, exit status 2.

    Args:
        message: What is wrong and how to fix it.
        hint: The command that lists the valid options (``segfm fit --help``).
    """

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


def _nearest(word: str, choices: Iterable[str]) -> str | None:
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return near[0] if near else None


def _suggest(word: str, choices: Iterable[str]) -> str:
    near = _nearest(word, choices)
    return f"; did you mean {near}?" if near else ""


def parser_options(parser: Any) -> list[str]:
    """Every ``--option`` of a parser and of its subcommand parsers."""
    if parser is None:
        return []
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        options += parser_options(sub)
    return options


def _init_options(class_path: str) -> list[str]:
    """The init arguments of a class, as jsonargparse reads them (inherited ones included)."""
    from jsonargparse import ArgumentParser

    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
    except Exception:  # a suggestion is a courtesy: the error stands without it
        return []
    return [o[2:] for o in parser_options(parser) if o not in ("--help", "--config")]


def registered_classes(key: str) -> list[str]:
    """Class paths ``--model`` or ``--data`` accepts, from segfm's registries (none imported).

    Args:
        key: ``model`` or ``data``; any other option has no registry.

    Returns:
        ``segfm.methods.<Name>`` or ``segfm.data.<Name>`` of every registered class.
    """
    if key not in _REGISTRIES:
        return []
    package, registry, base = _REGISTRIES[key]
    names = getattr(import_module(package), registry)
    return [f"{package}.{n}" for n in names if n != base]


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``; ``typing.Literal['a', 'b']`` -> ``one of a, b``."""
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", text)
    if literal:
        return "one of " + ", ".join(v.strip(" '\"") for v in literal.group(1).split(","))
    return re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)


def _expected(message: str) -> str | None:
    """``expected int (or null), got 'abc'`` from the ``Expected ...`` lines, if any."""
    types, got = [], None
    for line in message.splitlines():
        match = _EXPECTED.search(line.strip().lstrip("- "))
        if match:
            types.append(_type_name(match.group(1)))
            got = got or match.group(2)
    if not types:
        return None
    given = _GIVEN.search(message)
    got = got if got is not None else (given.group(1) if given else None)
    nullable = "NoneType" in types
    kinds = " or ".join(t for t in dict.fromkeys(types) if t != "NoneType") or "null"
    text = f"expected {kinds}{' (or null)' if nullable and kinds != 'null' else ''}"
    return text + (f", got {got!r}" if got is not None else "")


def _class_problem(key: str, class_path: str, message: str) -> str | None:
    """One line for a class's refused init argument, or None if not that kind of error."""
    option = f"--{key}.init_args"
    # an option of a group (a dataclass init argument): jsonargparse names the innermost key;
    # the outermost "Given value: NestedArg(key=...)" holds its whole path below init_args
    nested = _NESTED.findall(message)
    path = nested[-1] if nested else ""
    not_accepted = _NOT_ACCEPTED.search(message)
    if not_accepted:
        name = not_accepted.group(1)
        full = path if path.endswith(f".{name}") else name
        group = full[: -len(name)]
        owner = _CLASS.findall(message)[-1] if group else class_path
        near = _nearest(name, _init_options(owner))
        fix = (
            f"; did you mean {option}.{group}{near}?"
            if near
            else f" (--{key}.help {class_path} lists them)"
        )
        return f"{option}.{full} is not an option of {class_path}{fix}"
    required = _REQUIRED.search(message)
    if required:
        names = [n.strip() for n in required.group(1).split(",")]
        given = " ".join(f"{option}.{n} VALUE" for n in names)
        return f"{class_path} needs {', '.join(names)}: give {given} (or set it in the config)"
    keys = _KEY.findall(message)
    expected = _expected(message)
    if keys and expected:
        name = path if path.endswith(f".{keys[-1]}") else keys[-1]
        return f"{option}.{name}: {expected}"
    return None


def usage_message(message: str, parser: Any = None) -> str:
    """One line for jsonargparse's error ``message``: the option, what is wrong, the fix.

    Args:
        message: The text of jsonargparse's ``ArgumentError``.
        parser: The parser that raised it, for suggesting the nearest option.

    Returns:
        The line (without the ``segfm: error:`` prefix).
    """
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        words = unrecognized.group(1).split()
        option = next((w.split("=")[0] for w in words if w.startswith("-")), words[0])
        return f"unknown option {option}{_suggest(option, parser_options(parser))}"
    keys = _KEY.findall(message)
    key = keys[0] if keys else None
    class_path = _CLASS.search(message)
    if key and any(s in message for s in _NO_CLASS) and not _NOT_ACCEPTED.search(message):
        given = _GIVEN.search(message)
        value = given.group(1) if given else (class_path.group(1) if class_path else "")
        choices = registered_classes(key)
        short = {c.rpartition(".")[2]: c for c in choices}
        near = short.get(_nearest(value.rpartition(".")[2], short) or "")
        fix = f"did you mean {near}?" if near else f"choose one of {', '.join(choices)}"
        return f"--{key} {value}: no such class" + (f"; {fix}" if choices else "")
    if key and class_path:
        line = _class_problem(key, class_path.group(1), message)
        if line:
            return line
    required = _REQUIRED.search(message)
    if required and not class_path:
        names = [_TRAINER_STAGE.sub("", n.strip()) for n in required.group(1).split(",")]
        options = ", ".join(f"--{n}" for n in names)
        where = " or in a --config file" if "--config" in parser_options(parser) else ""
        return f"missing {options}: give them on the command line{where}"
    expected = _expected(message)
    if key and expected:
        return f"--{key}: {expected}"
    text = _KEY.sub("", message, count=1).lstrip(": ") if key else message
    skip = ("Subtypes:", "Given value", "Errors:", "Does not validate")
    detail = [
        line.strip(" -")
        for line in text.splitlines()
        if line.strip(" -") and not line.strip(" -").startswith(skip) and "NoneType" not in line
    ]
    head = [f"--{key}:"] if key else []
    return " ".join([*head, *detail[:2]]).strip() or "cannot parse the command line"


def usage_error(err: Exception, parser: Any, hint: str) -> UsageError:
    """The :class:`UsageError` of a jsonargparse ``ArgumentError`` raised by ``parser``."""
    return UsageError(usage_message(str(err), parser), hint)
