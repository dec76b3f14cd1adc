"""The repository explains itself: comments and docs point only at pages that exist in it.

Reasoning a reader needs lives in ``docs/*.md``. Pointers to notes outside the repository (numbered
sections of design notes such as ``kernels.md §2.5``, or paths to a shared notes folder) are dead ends
for a user or contributor, so any tracked file outside ``docs/`` that still has one fails here, and so
does a pointer to a ``docs/`` page or section anchor that does not exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()

NOTE_NAMES = r"(?:models|data|kernels|tooling|style)\.md"
# What a pointer into notes outside the repository looks like.
OUTSIDE_NOTE_PATTERNS = {
    "a numbered section of a design note": re.compile(NOTE_NAMES + r"\s*§"),
    # A bare note name; our own pages are always written with their folder (docs/kernels.md).
    "a design note by name": re.compile(r"(?<![\w/.-])" + NOTE_NAMES + r"(?![\w-])"),
    "a path into the shared notes": re.compile(r"shared/(?:design|seeds)|\.\./shared\b|/work/shared"),
}
# A bare section number, as the notes are cited ("(§1.6)"); a paper's section is fine when the paper is
# named right before it ("the BTN paper §3", "arXiv 2301.12149 §2").
BARE_SECTION = re.compile(r"§\s*\d")
PAPER_NAMED_BEFORE = re.compile(r"(?:paper|arxiv \S+)\s*$", re.IGNORECASE)

DOCS_LINK = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")


def tracked_text_files() -> dict[str, str]:
    """Path → text of every file git tracks (binary files left out)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list tracked files")
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True
    ).stdout.decode()
    texts = {}
    for path in filter(None, listing.split("\0")):
        try:
            texts[path] = (REPO / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
    return texts


def heading_anchors(markdown: str) -> set[str]:
    """Anchors GitHub makes for the headings of a page (code blocks skipped), plus explicit ``id``s."""
    anchors: set[str] = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", markdown))
    seen: dict[str, int] = {}
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if in_code or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def outside_note_references(path: str, text: str) -> list[str]:
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for what, pattern in OUTSIDE_NOTE_PATTERNS.items():
            if pattern.search(line):
                found.append(f"{path}:{number}: {what}: {line.strip()}")
        for match in BARE_SECTION.finditer(line):
            if not PAPER_NAMED_BEFORE.search(line[: match.start()]):
                found.append(f"{path}:{number}: a bare section number: {line.strip()}")
    return found


def test_no_tracked_file_outside_docs_points_at_notes_outside_the_repository():
    offenders = [
        reference
        for path, text in tracked_text_files().items()
        if not path.startswith("docs/") and path != THIS_FILE
        for reference in outside_note_references(path, text)
    ]
    assert not offenders, (
        "point to a page of docs/ (with its #anchor) or to a paper's equation instead:\n"
        + "\n".join(offenders)
    )


def test_the_checks_recognise_note_citations_and_allow_our_own_pages():
    flagged = [
        "see kernels.md §2.5",
        "(models.md §1.7 rule 2)",
        "``shared/design/kernels.md``",
        "shapes of the paper variant (§1.6)",
        "as tooling.md explains",
    ]
    allowed = [
        "see docs/kernels.md#backends",
        "[models](docs/models.md#btn)",
        "the BTN paper §3.2",
        "arXiv 2301.12149 §2",
        "eq. 9 of the BTN paper",
    ]
    assert all(outside_note_references("x.py", line) for line in flagged)
    assert not any(outside_note_references("x.py", line) for line in allowed)


def test_every_docs_page_and_anchor_pointed_to_exists():
    texts = tracked_text_files()
    pages = {path: heading_anchors(text) for path, text in texts.items() if path.endswith(".md")}
    broken = []
    for path, text in texts.items():
        links = [(f"docs/{page}", anchor) for page, anchor in DOCS_LINK.findall(text)]
        if path.endswith(".md"):
            # Relative Markdown links, resolved from the page's own folder.
            for target, anchor in MARKDOWN_LINK.findall(text):
                if target and (target.startswith(("http:", "https:")) or not target.endswith(".md")):
                    continue
                resolved = (Path(path).parent / target).as_posix() if target else path
                links.append((_normalise(resolved), anchor))
        for page, anchor in links:
            if page not in pages:
                broken.append(f"{path}: {page} does not exist")
            elif anchor and anchor not in pages[page]:
                broken.append(f"{path}: {page} has no section #{anchor}")
    assert not broken, "\n".join(sorted(set(broken)))


def _normalise(posix_path: str) -> str:
    parts: list[str] = []
    for part in posix_path.split("/"):
        if part == "..":
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def test_heading_anchors_follow_github():
    page = "# Kernels (`fer_lightning.ops`)\n## W&B offline\n```\n# not a heading\n```\n## FER+\n## FER+\n"
    assert heading_anchors(page) == {"kernels-fer_lightningops", "wb-offline", "fer", "fer-1"}


def test_augment_help_lists_every_recipe(capsys):
    # What `fer-lightning fit --data.help RAFDBDataModule` prints; jsonargparse takes it from the
    # FERDataModule docstring, which must name exactly the recipes transforms.py defines.
    from fer_lightning.cli import main
    from fer_lightning.data.transforms import RECIPES

    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", "RAFDBDataModule"])
    assert exit_info.value.code in (0, None)
    help_text = capsys.readouterr().out
    augment_help = help_text.split("\n  --data.augment AUGMENT\n", 1)[1].split("\n  --", 1)[0]
    assert set(re.findall(r"``(\w+)``", augment_help)) == set(RECIPES)
