"""MkDocs hooks: the generated parts of the site.

- ``<!-- cli-reference -->`` in a page becomes the reference of every ``csrs`` subcommand,
  rendered from ``csrs.cli.build_parser()`` at build time (``scripts/cli_reference.py``);
- ``C[y][k]`` in a docstring stays text (not a cross-reference to ``k``), and Sphinx roles
  (``:func:``) are dropped before the name they mark;
- every table between ``<!-- table: ... -->`` and ``<!-- end table -->`` is compared with what its
  CSV gives (``scripts/tables.py``): a stale table is a warning, so ``mkdocs build --strict``
  fails on it.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_reference import cli_reference  # noqa: E402
from tables import TableError, changed_tables, render_text  # noqa: E402

log = logging.getLogger("mkdocs.plugins.csrs")
CLI_MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    try:
        rendered, tables = render_text(markdown)
    except TableError as error:
        log.warning(f"{page.file.src_uri}: {error}")
        return markdown
    for index in changed_tables(markdown, rendered):
        line, source = tables[index]
        log.warning(f"{page.file.src_uri}:{line}: the table from {source} differs from what the "
                    f"CSV gives; run 'make tables'")
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown



# Docstrings write cost matrix entries as C[y][k], which markdown reads as a link to "k" and
# mkdocstrings as a cross-reference; put the text back where the target is no Python name.
DOCSTRING_REF = re.compile(r'<autoref (?=[^>]*filepath=)[^>]*identifier="(?P<target>[^".]+)"[^>]*>'
                           r'(?P<text>[^<]*)</autoref>')

# Docstrings name functions Sphinx-style (:func:`name`); show the name alone.
SPHINX_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|exc|obj):<code>")


def on_page_content(html: str, page, config, files) -> str:
    if not page.file.src_uri.startswith("api/"):
        return html
    html = DOCSTRING_REF.sub(lambda m: f"[{m['text']}][{m['target']}]", html)
    return SPHINX_ROLE.sub("<code>", html)
