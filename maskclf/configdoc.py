"""The configuration reference page (docs/configuration.md), generated from the config's dataclasses.

Every section of a config class (the core's :class:`maskclf.config.Config`, or one that adds sections to it)
becomes one table: each key under its dotted override
name (``train.lr``), its type, its default and its description. The descriptions are the ``#`` comments
beside each field (or the comment lines just above it) in the module that defines the section's dataclass,
so a section declared elsewhere (the search layer's own, say) is documented from its own source.

The page documents the one config users write, the core's sections and the search layer's, so its command is
the search layer's: ``python -m search.study.settings --write`` (``--check``: exit 1 if the page is out of
date; neither: print it). ``python -m maskclf.configdoc`` prints the core's sections alone.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "configuration.md"
COMMAND = "python -m search.study.settings --write"


@dataclasses.dataclass
class Key:
    name: str  # dotted override name, e.g. train.lr
    type: str
    default: Any
    description: str


@dataclasses.dataclass
class Section:
    name: str
    cls: type
    description: str
    keys: list[Key]


@functools.lru_cache(maxsize=None)
def _source(path: str) -> tuple[ast.Module, dict[int, str], set[int]]:
    """The module's syntax tree, its comments by line, and the lines that hold only a comment."""
    text = Path(path).read_text(encoding="utf-8")
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            for row in range(tok.start[0], tok.end[0] + 1):
                code_lines.add(row)
    alone = {row for row in comments if row not in code_lines}
    return ast.parse(text), comments, alone


def _class_node(tree: ast.Module, qualname: str) -> ast.ClassDef | None:
    body: list[ast.stmt] = tree.body
    node = None
    for part in qualname.split("."):
        node = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def _comments_of(cls: type) -> dict[str, str]:
    """``{field name: its comment}`` from the source of ``cls``: the comment lines right above a field,
    then the comment at the end of its line(s)."""
    try:
        path = inspect.getsourcefile(cls)
    except TypeError:
        return {}
    if not path or not Path(path).is_file():
        return {}
    tree, comments, alone = _source(path)
    node = _class_node(tree, cls.__qualname__)
    if node is None:
        return {}
    out: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above = []
        row = stmt.lineno - 1
        while row in alone:
            above.append(comments[row])
            row -= 1
        beside = [comments[r] for r in range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
                  if r in comments and r not in alone]
        text = " ".join([*reversed(above), *beside]).strip()
        if text:
            out[stmt.target.id] = text
    return out


def _type_name(typ: Any) -> str:
    if isinstance(typ, type) and not typing.get_args(typ):
        return typ.__name__
    return str(typ).replace("typing.", "")


def _config_class() -> type:
    from maskclf import config  # the Config tree that every command loads

    return config.Config


def sections(config_cls: type | None = None) -> list[Section]:
    """The sections of the config, in the order of the Config dataclass, each with its keys."""
    config_cls = config_cls or _config_class()
    root = config_cls()
    beside_root = _comments_of(config_cls)
    out = []
    for f in dataclasses.fields(root):
        sub = getattr(root, f.name)
        if not dataclasses.is_dataclass(sub):
            continue
        cls = type(sub)
        hints = typing.get_type_hints(cls)
        notes = {}
        for base in reversed(cls.__mro__):  # a section that extends another's (distill) has both sets of comments
            if dataclasses.is_dataclass(base):
                notes.update(_comments_of(base))
        doc = inspect.getdoc(cls) or ""
        if doc.startswith(f"{cls.__name__}("):  # the docstring dataclass() makes up
            doc = ""
        keys = [Key(f"{f.name}.{k.name}", _type_name(hints.get(k.name, k.type)), getattr(sub, k.name),
                    notes.get(k.name, "")) for k in dataclasses.fields(sub)]
        desc = " ".join(x for x in (beside_root.get(f.name, ""), doc) if x)
        out.append(Section(f.name, cls, desc, keys))
    return out


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '""' if value == "" else value
    if isinstance(value, float):
        text = repr(value)
        if "e" in text:
            mantissa, _, exp = text.partition("e")
            text = f"{mantissa}e{int(exp)}"
        return text
    if isinstance(value, (dict, list)) and not value:
        return "{}" if isinstance(value, dict) else "[]"
    return repr(value)


def _cell(text: str) -> str:
    """Markdown table cell: one line, pipes escaped, ``<`` as an entity (``<run.dir>`` is no HTML tag)."""
    return " ".join(text.split()).replace("<", "&lt;").replace("|", "\\|")


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def _where(cls: type) -> str:
    try:
        path = Path(inspect.getsourcefile(cls) or "").resolve()
        return str(path.relative_to(ROOT))
    except (TypeError, ValueError):
        return cls.__module__


def render(config_cls: type | None = None) -> str:
    """The whole page, as Markdown."""
    config_cls = config_cls or _config_class()
    secs = sections(config_cls)
    path_keys = set(getattr(config_cls, "PATH_KEYS", ()))
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{COMMAND}` from the config's dataclasses; edit their comments, not this page. -->",
        "",
        "This page is generated from the config's dataclasses: the default of each key and the comment beside "
        "it in the module that defines its section. Regenerate it after changing them:",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        "Every command takes `--config PATH` and then `key=value` overrides with these dotted names "
        "(`train.lr=3e-4 model.backbone=efficientnet_b0`); a YAML config file nests the same keys by section "
        "and holds only what differs from the defaults below (the commands' default config, `conf/search.yaml`, "
        "changes several of them for the demo study). Unknown keys and bad values are errors that name the key. "
        "How configs and overrides work: [commands.md](commands.md).",
        "",
    ]
    if path_keys:
        lines += [
            "Keys marked *path* hold a local path: it is made absolute against the directory the command "
            "runs in when the config is loaded (URLs such as `s3://...` are left as they are).",
            "",
        ]
    lines += ["Sections: " + ", ".join(f"[{s.name}](#{s.name})" for s in secs) + ".", ""]
    for s in secs:
        lines += [f"## {s.name}", ""]
        if s.description:
            lines += [s.description, ""]
        bases = [b for b in s.cls.__mro__[1:] if dataclasses.is_dataclass(b)]
        lines += [f"Defined in `{_where(s.cls)}` (`{s.cls.__name__}`)"
                  + "".join(f", on `{_where(b)}` (`{b.__name__}`)" for b in bases) + ".", ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for k in s.keys:
            desc = _cell(k.description)
            if k.name in path_keys:
                desc = f"*path*. {desc}" if desc else "*path*"
            lines.append(f"| {_code(k.name)} | {k.type} | {_code(_default(k.default))} | {desc} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None, root: type | None = None, prog: str = "python -m maskclf.configdoc") -> int:
    """The page of ``root`` (default: the core's config): printed, written (``--write``) or checked."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(ROOT)}")
    g.add_argument("--check", action="store_true", help=f"exit 1 if {PAGE.relative_to(ROOT)} is out of date")
    args = p.parse_args(argv)
    page = render(root)
    if args.write:
        PAGE.parent.mkdir(parents=True, exist_ok=True)
        PAGE.write_text(page, encoding="utf-8")
        print(f"wrote {PAGE}")
    elif args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
