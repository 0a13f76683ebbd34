"""The code's shape: two packages, one direction of dependency, no import cycle anywhere; the commands apart
from the machinery they share, no module too long to read, and the module paths of the earlier flat layout still
importable."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import search

from tests.conftest import ROOT


def _modules() -> dict[str, Path]:
    mods = {}
    for p in [*ROOT.glob("maskclf/**/*.py"), *ROOT.glob("search/**/*.py"), *ROOT.glob("tests/*.py"),
              *ROOT.glob("bench/*.py")]:
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = parts[-1] if parts[0] == "bench" else ".".join(parts).removesuffix(".__init__")
        mods[name] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (at the top or inside a function)."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                targets = subs if len(subs) == len(node.names) else [node.module, *subs]
            else:
                continue
            edges[m] |= {t for t in targets if t in mods and t != m}
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n, [*path, n])):
                return found
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m, [m])):
            return found
    return None


def test_no_import_cycle_in_the_project():
    edges = _imports(_modules())
    assert len(edges) > 40  # the walk found the project
    cycle = _cycle(edges)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_model_core_never_imports_the_search_layer():
    edges = _imports(_modules())
    wrong = {m: sorted(n for n in ns if n.startswith("search")) for m, ns in edges.items() if m.startswith("maskclf")}
    assert not any(wrong.values()), wrong


COMMANDS = ("search.tune", "search.finalize", "search.distill", "search.combine", "search.serve")


def test_no_command_imports_another():
    """What two commands share lives in the search layer's modules, not in one of the commands."""
    edges = _imports(_modules())
    assert all(c in edges for c in COMMANDS)
    wrong = {c: sorted(n for n in edges[c] if n in COMMANDS) for c in COMMANDS}
    assert not any(wrong.values()), wrong


def test_the_commands_sit_at_the_top_of_search_and_the_machinery_in_three_packages():
    top = sorted(f"search.{p.stem}" for p in (ROOT / "search").glob("*.py") if p.stem != "__init__")
    assert top == sorted(COMMANDS)
    assert sorted(p.parent.name for p in (ROOT / "search").glob("*/__init__.py")) == ["cluster", "study", "tracking"]


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(ROOT)): n for package in ("maskclf", "search") for p in (ROOT / package).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}


def test_the_paths_of_the_flat_layout_still_import_the_same_classes():
    """A Tune experiment saved by the flat layout pickled ``search.callback.MlflowTrials``; a model registered
    by it runs ``from search.registry import EnsembleModel`` when it loads."""
    from search.study.optuna_search import StudySearch
    from search.tracking.callback import MlflowTrials

    assert pickle.loads(b"csearch.callback\nMlflowTrials\n.") is MlflowTrials
    assert pickle.loads(b"csearch.optuna_search\nStudySearch\n.") is StudySearch
    from search.registry import EnsembleModel  # the old path is what is tested
    from search.tracking import registry

    assert EnsembleModel is registry.EnsembleModel
    from search.study import settings

    assert pickle.loads(b"cmaskclf.schema\nSearchConfig\n.") is settings.SearchConfig  # once the core's
    assert registry.__spec__.name == "search.tracking.registry"  # the module keeps its own name
    for old, new in search.MOVED.items():
        assert (ROOT / Path(*new.split("."))).with_suffix(".py").is_file(), new
        assert not (ROOT / Path(*old.split("."))).with_suffix(".py").exists(), old
