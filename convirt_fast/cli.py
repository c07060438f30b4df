"""Command line for configs: `--preset NAME`, `--section.field=value` overrides, `--help` from the
field docstrings (the string under each field in config.py is its help text)."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import typing
from functools import lru_cache

from convirt_fast.config import Config
from convirt_fast.presets import PRESETS


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def _parse_value(text: str, annotation, where: str):
    """Convert a command-line string to a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        annotation = next(a for a in args if a is not type(None))
        origin = typing.get_origin(annotation)
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected true/false, got {text!r}")
    if annotation in (int, float, str):
        try:
            return annotation(text)
        except ValueError:
            raise ValueError(f"{where}: expected {annotation.__name__}, got {text!r}") from None
    if origin is tuple:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError(f"{where}: expected a tuple such as (0.6,1.0), got {text!r}") from None
        return tuple(float(v) for v in value)
    raise ValueError(f"{where}: cannot set a field of type {annotation} from the command line")


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _set(obj, path: list[str], text: str, where: str) -> None:
    name = path[0]
    if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
        if not dataclasses.is_dataclass(obj):
            raise ValueError(f"unknown option --{where}: {where.rsplit('.', 1)[0]} is a value, not a section")
        names = [f.name for f in dataclasses.fields(obj) if f.name != "preset"]
        raise ValueError(f"unknown option --{where} (known here: {', '.join(names)}){_did_you_mean(name, names)}")
    if len(path) > 1:
        _set(getattr(obj, name), path[1:], text, where)
        return
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _parse_value(text, hints[name], f"--{where}"))


def _revalidate(obj) -> None:
    """Re-run __post_init__ checks after overrides, innermost first."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _revalidate(value)
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()


def help_text(cfg: Config) -> str:
    lines = ["usage: torchrun [--nproc_per_node=K] -m convirt_fast.train [--preset NAME] [--section.field=value ...]",
             "", f"presets: {', '.join(PRESETS)} (default cpu-default)", "", "options (defaults of the chosen preset):"]

    def walk(obj, prefix):
        docs = field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif f.name != "preset":
                lines.append(f"  --{prefix}{f.name}={value!r}")
                if f.name in docs:
                    lines.extend("      " + line for line in textwrap.wrap(docs[f.name], 90))

    walk(cfg, "")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> Config:
    """The Config that the command line asks for.

    `-h`/`--help` prints `help_text` (with the defaults of the chosen preset) to stdout and raises
    SystemExit(0), as argparse does. A bad option, value or preset raises ValueError naming it."""
    preset = "cpu-default"
    overrides: list[tuple[str, str]] = []
    i = 0
    wants_help = False
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            wants_help = True
        elif arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"--{key} needs a value")
                i += 1
                value = argv[i]
            if key == "preset":
                preset = value
            else:
                overrides.append((key, value))
        else:
            raise ValueError(f"unexpected argument {arg!r} (options look like --section.field=value)")
        i += 1
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}{_did_you_mean(preset, PRESETS)}")
    cfg = PRESETS[preset]()
    if wants_help:
        print(help_text(cfg))
        raise SystemExit(0)
    for key, value in overrides:
        _set(cfg, key.split("."), value, key)
    _revalidate(cfg)
    return cfg
