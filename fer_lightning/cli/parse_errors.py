"""jsonargparse's parse errors as one line, with the closest valid name for a misspelled one.

jsonargparse reports a wrong option inside ``--data``/``--model`` as a tree: the union of the class and
``None`` it tried, each alternative's error indented below, then the raw value given. The one thing
that went wrong is a leaf of that tree; :func:`condense_parse_error` keeps the leaves, names the option
they belong to (``data.batch_size``) and, for a name that does not exist, adds "did you mean …?" from
the names a ``suggest`` callback knows. Imports nothing heavy: ``data-summary`` (cli/data_summary.py) uses it too.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

#: What a ``suggest`` callback is asked: ``("class", class_path)`` → its init options; ``("group", key)``
#: → the options under ``key``; ``("subclass", key)`` → class names accepted for ``key``;
#: ``("argument", "")`` → every command-line option.
Suggest = Callable[[str, str], Iterable[str]]

_PARSER_KEY = re.compile(r'Parser key "([^"]+)":\s*(.*)')
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)")
_NESTED_ARG = re.compile(r"Given value: NestedArg\(key='([^']+)', val='(.*)'\)$")
_GIVEN_VALUE = re.compile(r"Given value: (.*)$")
_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_GROUP_OPTION = re.compile(r"(Group|Subcommand) '([^']+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")
_IMPORT_PATH = re.compile(r"Expected a dot import path string: (\S+)")
_EXPECTED_TYPE = re.compile(r"Expected an? (.+?)(?:\. Got value: (.*))?$")
_CLASS_REPR = re.compile(r"<class '(?:[\w.]*\.)?(\w+)'>")
_LITERAL = re.compile(r"typing\.Literal\[(.*)\]")
# Lines that describe the tree rather than the mistake. ``None`` is an alternative of every optional
# option, so "expected None" is never the useful answer.
_SCAFFOLDING = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes: |Errors:|Given value type: |"
    r"Expected a NoneType$|Expected a path but .* either not accessible or invalid$)"
)


def class_init_options(class_path: str) -> list[str]:
    """The options jsonargparse accepts for ``class_path``'s init_args (an empty list if it cannot tell)."""
    import importlib

    from jsonargparse import ArgumentParser

    module_name, _, class_name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "init", fail_untyped=False)
    except Exception:  # only a suggestion: never hide the error being reported
        return []
    return [
        option.removeprefix("--init.")
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--init.") and not option.endswith((".help", "+"))
    ]


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """The valid name closest to ``name``: same last component first (a forgotten prefix), else difflib."""
    candidates = sorted({candidate for candidate in candidates if candidate and candidate != name})
    leaf = name.rsplit(".", 1)[-1].lstrip("-")
    same_leaf = [candidate for candidate in candidates if candidate.rsplit(".", 1)[-1].lstrip("-") == leaf]
    if same_leaf:
        return same_leaf[0]
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _suggestion(name: str, candidates: Iterable[str]) -> str:
    match = did_you_mean(name, candidates)
    return f"; did you mean {match}?" if match else ""


def _readable(text: str) -> str:
    text = _CLASS_REPR.sub(r"\1", text)
    return _LITERAL.sub(lambda literal: "one of " + literal[1], text)


def _type_expectations(leaves: list[str]) -> tuple[list[str], str | None, list[str]]:
    """Split leaves into the expected type names, the value given (if stated), and everything else."""
    types, value, rest = [], None, []
    for leaf in leaves:
        expected = _EXPECTED_TYPE.fullmatch(leaf)
        if expected and not leaf.startswith("Expected a dot import path"):
            types.append(_readable(expected[1]))
            value = expected[2] if expected[2] is not None else value
        else:
            rest.append(leaf)
    return types, value, rest


def condense_parse_error(message: str, suggest: Suggest | None = None) -> str:
    """One line saying which option is wrong, what was expected and, for a misspelled name, the closest one."""
    suggest = suggest or (lambda kind, key: class_init_options(key) if kind == "class" else ())
    lines = [_readable(line.strip().removeprefix("- ").strip()) for line in message.splitlines()]
    keys: list[str] = []
    class_path = nested_key = given = None
    leaves: list[str] = []
    for line in lines:
        if not line:
            continue
        # One line can hold a key and the start of its error ("Parser key "lr": Expected …").
        while True:
            parser_key, problem = _PARSER_KEY.search(line), _CLASS_PATH.match(line)
            if parser_key:
                keys.append(parser_key[1])
                line = parser_key[2]
            elif problem:
                class_path, line = problem[1], problem[2]
            else:
                break
        nested_arg, given_value = _NESTED_ARG.match(line), _GIVEN_VALUE.match(line)
        if nested_arg:
            nested_key, given = nested_arg[1], nested_arg[2]
        elif given_value:
            given = given if given is not None else given_value[1]
        elif line and not _SCAFFOLDING.match(line) and line not in leaves:
            leaves.append(line)

    option = ".".join(keys[:1] + ([nested_key] if nested_key and len(keys) < 2 else keys[1:]))
    for leaf in leaves:
        if not_accepted := _NOT_ACCEPTED.search(leaf):
            wrong = not_accepted[1]
            owner = class_path.rsplit(".", 1)[-1] if class_path else (keys[0] if keys else "this command")
            # A nested option is named by its whole path, not data.rat: from the nested argument
            # (--data.label_noise.rat=…) or from the parser keys it sits under (--data.label_noise='{rat: …}').
            nested = nested_key.removeprefix("init_args.") if nested_key else ""
            path = nested if nested.rsplit(".", 1)[-1] == wrong else ".".join([*keys[1:], wrong])
            name = f"{keys[0]}.{path}" if keys else path
            valid = suggest("class", class_path) if class_path else suggest("group", keys[0] if keys else "")
            return f"{name}: {owner} has no option '{wrong}'" + _suggestion(wrong, valid)
        if group_option := _GROUP_OPTION.search(leaf):
            # A YAML key: "Group 'trainer' … 'max_epoch'" or "Subcommand 'fit' … 'trainer.max_epoch'".
            owner, wrong = group_option[2], group_option[3]
            name = f"{owner}.{wrong}" if group_option[1] == "Group" else wrong
            return f"{name}: no such option" + _suggestion(name, suggest("group", name.split(".", 1)[0]))
        if unrecognized := _UNRECOGNIZED.search(leaf):
            arguments = unrecognized[1].split()
            options = [argument.split("=", 1)[0] for argument in arguments if argument.startswith("-")]
            hint = _suggestion(options[0], suggest("argument", "")) if options else ""
            return f"unrecognized arguments: {' '.join(arguments)}" + hint
    types, value, rest = _type_expectations(leaves)
    for leaf in rest:
        # Only when no plain type was possible too: "lr=abc" is also "not a float", the better answer.
        if (import_path := _IMPORT_PATH.search(leaf)) and not types:
            wrong = import_path[1]
            return f"{option or 'class_path'}: no class named '{wrong}'" + _suggestion(
                wrong, suggest("subclass", keys[0] if keys else "")
            )
    value = value if value is not None else given
    parts = [leaf for leaf in rest if not _IMPORT_PATH.search(leaf)]
    if types:
        parts.append(f"expected {' or '.join(dict.fromkeys(types))}" + (f", got {value!r}" if value else ""))
    text = "; ".join(parts) or "invalid value"
    return f"{option}: {text}" if option else text
