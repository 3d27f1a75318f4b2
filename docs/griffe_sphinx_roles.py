"""Griffe extension for the API reference: render camlib's few reST constructs as Markdown.

camlib's docstrings are Google style, but some use Sphinx roles (``:func:`explain```,
``:class:`Explainer```, ``:mod:`camlib.targets```, ``:math:`...```), a ``.. math::``
directive, and reST literal blocks introduced by ``::``. mkdocstrings would show those
verbatim. This extension, loaded by ``mkdocs.yml`` (``plugins.mkdocstrings...extensions``),
rewrites them when the package has been loaded, without touching the source:

* ``:func:`name``` and friends become cross-references ``[`name`][full.path]`` when
  ``name`` resolves (relative to the object's class, its module, or ``camlib``), else
  plain code ``name``;
* ``:math:`x``` becomes ``$x$`` and a ``.. math::`` block becomes ``$$ ... $$`` (rendered by
  ``pymdownx.arithmatex`` and MathJax);
* a paragraph ending in ``::`` ends in ``:`` (the indented block after it is already a
  Markdown code block);
* doctest lines (``>>> ...`` and their output) become a ``pycon`` code block, instead of
  nested block quotes.
"""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)\n(?P<body>(?:(?P=indent)[ \t]+.*\n?|[ \t]*\n)*)",
    re.M,
)
# A doctest: ">>> " lines, their "... " continuations and the output up to a blank line.
_DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>> .*\n(?:(?P=indent)(?!\s*$).*(?:\n|$))*", re.M)
_LITERAL = re.compile(r"(\S)::[ \t]*$", re.M)


def _exists(root: griffe.Object, path: str) -> bool:
    parts = path.split(".")
    if parts[0] != root.name:
        return False
    obj: griffe.Object | griffe.Alias = root
    for part in parts[1:]:
        try:
            obj = obj.members[part]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return False
    return True


def _resolve(root: griffe.Object, obj: griffe.Object, name: str) -> str | None:
    scopes = []
    if obj.is_class:
        scopes.append(obj.path)
    if obj.parent is not None and obj.parent.is_class:
        scopes.append(obj.parent.path)
    scopes += [obj.module.path, root.path]
    candidates = [name] + [f"{scope}.{name}" for scope in scopes]
    for candidate in candidates:
        if _exists(root, candidate):
            return candidate
    return None


def _math_block(match: re.Match) -> str:
    indent = match["indent"]
    body = textwrap.dedent(match["first"] + "\n" + textwrap.dedent(match["body"]))
    lines = [line for line in body.strip("\n").splitlines()]
    # arithmatex needs the $$ block to be a paragraph of its own: blank lines around it.
    maths = "".join(f"{indent}{line.strip()}\n" for line in lines)
    return f"\n{indent}$$\n{maths}{indent}$$\n\n"


def _doctest(match: re.Match) -> str:
    indent = match["indent"]
    return f"{indent}```pycon\n{match[0].rstrip()}\n{indent}```\n"


def rewrite(text: str, root: griffe.Object, obj: griffe.Object) -> str:
    """The Markdown form of one docstring."""
    text = _DOCTEST.sub(_doctest, text)
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _MATH_ROLE.sub(lambda m: f"${m[1]}$", text)

    def role(match: re.Match) -> str:
        name = match[1].rstrip("()")
        target = _resolve(root, obj, name)
        shown = f"`{match[1]}`"
        return f"[{shown}][{target}]" if target else shown

    text = _ROLE.sub(role, text)
    return _LITERAL.sub(r"\1:", text)


class SphinxRoles(griffe.Extension):
    """Rewrite the docstrings of a whole package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: object) -> None:
        seen: set[int] = set()

        def visit(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, pkg, obj)
            for member in obj.members.values():
                if not member.is_alias:
                    visit(member)

        visit(pkg)
