"""Rich display in notebooks: generated source and traced IR, syntax-highlighted.

:class:`Source` is a ``str`` (code treating ``f.source(...)`` as text keeps working)
that Jupyter shows as highlighted code; :func:`graph_html` does the same for a traced
:class:`~diffprog.ir.Graph`. Highlighting uses Pygments when it is installed; without
it the text is shown plain, in a ``<pre>`` block.

>>> from diffprog.display import Source
>>> src = Source("def f(x):\\n    return x * 2\\n", language="python")
>>> src.startswith("def f") and isinstance(src, str)
True
>>> print(src._repr_markdown_())
```python
def f(x):
    return x * 2
```
"""
from __future__ import annotations

import html

_STYLE = "default"


class Source(str):
    """Program text (Python or Julia) that renders highlighted in Jupyter.

    A ``str`` in every other respect: print it, compare it, search it, write it to a
    file. ``language`` is "python" or "julia" (the engine's language).
    """

    language: str

    def __new__(cls, text: str, language: str = "python") -> "Source":
        self = super().__new__(cls, text)
        self.language = language
        return self

    def __reduce__(self):  # pickle/copy keep the language
        return (Source, (str(self), self.language))

    def _repr_html_(self) -> str:
        return highlight_html(str(self), self.language)

    def _repr_markdown_(self) -> str:
        return fenced(str(self), self.language)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython terminal: the code, not a quoted str
        p.text(str(self))


def fenced(text: str, language: str) -> str:
    """``text`` as a Markdown code block in ``language``."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{language}\n{text.rstrip()}\n{fence}"


def highlight_html(text: str, language: str) -> str:
    """HTML for ``text`` highlighted as ``language`` ("python", "julia" or "ir"); a plain
    ``<pre>`` block when Pygments is not installed."""
    lexer = _lexer(language)
    if lexer is None:
        return f'<pre class="diffprog-{language}">{html.escape(text)}</pre>'
    from pygments import highlight
    from pygments.formatters import HtmlFormatter

    formatter = HtmlFormatter(noclasses=True, style=_STYLE, nobackground=True)
    return f'<div class="diffprog-{language}">{highlight(text, lexer, formatter)}</div>'


def graph_html(graph) -> str:
    """HTML for a traced :class:`~diffprog.ir.Graph` (its printed form, highlighted)."""
    return highlight_html(str(graph), "ir")


def _lexer(language: str):
    try:
        import pygments.lexers
    except ImportError:
        return None
    if language == "ir":
        return _ir_lexer()()
    try:
        return pygments.lexers.get_lexer_by_name(language)
    except Exception:  # pygments.util.ClassNotFound: an unknown language shows plain
        return None


_IR_LEXER = None


def _ir_lexer():
    """A small Pygments lexer for diffprog's IR text (made once, only with Pygments)."""
    global _IR_LEXER
    if _IR_LEXER is None:
        from pygments.lexer import RegexLexer, bygroups
        from pygments.token import Keyword, Name, Number, Operator, Punctuation, Text

        class IRLexer(RegexLexer):
            name = "diffprog IR"
            tokens = {"root": [
                (r"\b(lambda|return)\b", Keyword),
                (r"(\w+)(:)([a-z]+\d*)(\[[^\]]*\])",  # v3:float64[3] -- a typed variable
                 bygroups(Name.Variable, Punctuation, Keyword.Type, Keyword.Type)),
                (r"(=)(\s+)([a-z_][a-z0-9_]*)", bygroups(Operator, Text, Name.Function)),
                (r"\b[a-z]\d+\b", Name.Variable),
                (r"-?\d+(\.\d*)?(e[-+]?\d+)?", Number),
                (r"\w+(?==)", Name.Attribute),  # primitive parameters: axes=(0,)
                (r"[{}()\[\],.:=]", Punctuation),
                (r"\s+", Text),
                (r".", Text),
            ]}

        _IR_LEXER = IRLexer
    return _IR_LEXER
