"""MkDocs hook (mkdocs.yml `hooks:`): links from the site to files outside `docs/` go to the repository.

The pages link to a component's README, the chart or a benchmark's plot with relative paths, which
work when the Markdown is read on the forge. The site holds only `docs/`, so such a link is rewritten
to the file in the repository (`repo_url`), and `mkdocs build --strict` still fails on a link to a
page of the site that does not exist.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def outside_link(target: str, page_uri: str, repo_url: str, branch: str = "main") -> str | None:
    """The repository URL of `target` (relative to the page `page_uri` in docs/) when it points
    outside docs/; None for a link within the site, an anchor or an absolute URL."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
        return None
    path, _, anchor = target.partition("#")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), path))
    if not resolved.startswith("../"):
        return None
    return f"{repo_url.rstrip('/')}/blob/{branch}/{resolved[3:]}" + (f"#{anchor}" if anchor else "")


def on_page_markdown(markdown: str, page: Any, config: Any, **_: Any) -> str:
    repo_url = config["repo_url"]

    def rewrite(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        url = outside_link(target, page.file.src_uri, repo_url)
        if url is None:
            return match.group(0)
        return f"{bang}[{text}]({url}{'?raw=true' if bang else ''})"

    return LINK.sub(rewrite, markdown)
