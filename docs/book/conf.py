"""Sphinx configuration of the course book (``make book``; fusionkit/lab/book.py copies this folder into
the book's source tree, ``build/book/src``, beside the executed notebooks).

MyST-NB renders the notebooks as ``make run`` executed them (``nb_execution_mode = "off"``: the book
never runs a cell), in the book theme. Nothing is fetched from the network, at build time or when a
page is read:

- maths is converted to MathML when the book is built (latex2mathml), which browsers render
  natively; Sphinx's default, MathJax, is a script from a CDN;
- widget outputs arrive already rendered as static HTML (fusionkit.lab.book.render_widgets), so no
  page loads ipywidgets' embedding scripts (also from a CDN).
"""
from docutils import nodes
from sphinx.util import logging

project = "fusionkit: fusing the two streams"
author = "the fusionkit authors"
copyright = "the fusionkit authors, MIT licence"

extensions = ["myst_nb"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
root_doc = "index"

nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "fusionkit"
html_static_path = ["_static"]
html_favicon = "_static/favicon.svg"
html_theme_options = {
    "use_download_button": True,       # the .ipynb of each page: how a student gets an assignment
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
html_context = {"default_mode": "auto"}  # the reader's light/dark preference (unset, the theme logs an error)
html_show_sourcelink = False
html_math_renderer = "mathml"

logger = logging.getLogger(__name__)


def _mathml(latex: str, display: str, node) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(latex, display=display)
    except Exception as e:  # an unsupported macro: say which formula, show its TeX
        logger.warning(f"cannot convert this formula to MathML ({type(e).__name__}: {e}): {latex!r}", location=node)
        return f'<code class="math-tex">{latex}</code>'


def _visit_math(self, node):
    self.body.append(f'<span class="math notranslate">{_mathml(node.astext(), "inline", node)}</span>')
    raise nodes.SkipNode


def _visit_displaymath(self, node):
    number = node.get("number")
    label = f'<span class="eqno">({number})</span>' if number else ""
    self.body.append(self.starttag(node, "div", CLASS="math notranslate")
                     + _mathml(node.astext(), "block", node) + label + "</div>\n")
    raise nodes.SkipNode


def setup(app):
    app.add_html_math_renderer("mathml", (_visit_math, None), (_visit_displaymath, None))
