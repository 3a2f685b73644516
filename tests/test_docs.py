"""The documentation stays true to the code: the command reference is regenerated from the CLI
(cog), the README stays short, every relative link leads somewhere, and every dependency in
pyproject.toml is explained."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_LIMIT = 12 * 1024  # bytes: a README read in five minutes

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    found: set[str] = set()
    for line in _FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in found:
                n += 1
                anchor = f"{slug}-{n}"
            found.add(anchor)
    return found


def test_command_reference_is_up_to_date(tmp_path: Path) -> None:
    pytest.importorskip("cogapp", reason="cogapp is in the test extra: pip install -e '.[test]'")
    page = "docs/commands.md"

    def cog(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cogapp", *args, page], cwd=REPO, capture_output=True, text=True, timeout=300
        )

    check = cog("--check")
    if check.returncode == 0:
        return
    fresh = tmp_path / "commands.md"
    regenerated = cog("-o", str(fresh))
    diff = "".join(
        difflib.unified_diff(
            (REPO / page).read_text(encoding="utf-8").splitlines(keepends=True),
            fresh.read_text(encoding="utf-8").splitlines(keepends=True) if fresh.exists() else [],
            page,
            "regenerated",
            n=1,
        )
    )
    pytest.fail(
        f"{page} is stale: the CLI's help changed. Regenerate it with\n\n    cog -r {page}\n\n"
        f"{check.stdout}{check.stderr}\n{diff[:6000] or regenerated.stderr[-3000:]}",
        pytrace=False,
    )


def test_readme_is_short_and_every_relative_link_resolves() -> None:
    size = len((REPO / "README.md").read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes; keep it under {README_LIMIT} and move details into docs/"
    broken = []
    for page in _markdown_files():
        for target in _LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)}: ({target})"
            if not dest.exists():
                broken.append(f"{where} → no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where} → no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_links_every_docs_page() -> None:
    readme = _prose((REPO / "README.md").read_text(encoding="utf-8"))
    linked = {(REPO / t.partition("#")[0]).resolve() for t in _LINK.findall(readme)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md links no page for docs/{', docs/'.join(missing)}"


def test_every_dependency_is_explained() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        specs += extra
    names = {re.split(r"[\s<>=!~\[;]", s, maxsplit=1)[0].lower() for s in specs}
    explained = (DOCS / "dependencies.md").read_text(encoding="utf-8").lower()
    missing = sorted(n for n in names if f"| {n} " not in explained and f"| {n} (" not in explained)
    assert not missing, f"docs/dependencies.md does not say why these are needed: {', '.join(missing)}"
