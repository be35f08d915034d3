"""HTML stripping: what is dropped, what is kept verbatim, and malformed input."""

from __future__ import annotations

import random

import pytest

from ccgate.htmlstrip import strip_html


def test_htmlstrip_drops_scripts_styles_svg_noscript_and_comments() -> None:
    """Executable, decorative and hidden parts go; the text around them stays."""
    page = ("<html><head><style>p { color: red }</style><script src='a.js'></script>"
            "<script>track()</script></head><body><!-- build 42 --><p>Hello</p>"
            "<svg viewBox='0 0 1 1'><path d='M0'/></svg><noscript><img src=pixel></noscript>"
            "<p>World</p></body></html>")
    assert strip_html(page) == ("<html><head></head><body><p>Hello</p><p>World</p>"
                                "</body></html>")


@pytest.mark.parametrize("kind", ["application/ld+json", "Application/LD+JSON ",
                                  "application/ld+json; charset=utf-8"])
def test_htmlstrip_keeps_json_ld_scripts(kind: str) -> None:
    """Structured data in a JSON-LD script survives, markup and all."""
    script = f'<script type="{kind}">{{"@type": "Article", "name": "a < b"}}</script>'
    assert strip_html(f"<head>{script}<script>x()</script></head>") == f"<head>{script}</head>"


def test_htmlstrip_keeps_markup_attributes_and_entities_verbatim() -> None:
    """Start tags, doctype, entities and character references come back as written."""
    page = ('<!DOCTYPE html><p class="lead" data-x=\'1\'>Fish &amp; chips &#8364;5 &#x27;'
            '<br/><a href="/a?x=1&amp;y=2">link</a></p>')
    assert strip_html(page) == page


def test_htmlstrip_script_text_that_looks_like_markup_is_dropped_whole() -> None:
    """A script writing tags or comment markers does not leak into the output."""
    page = ("<p>a</p><script>if (a < b) { document.write('<div>--></div>'); }</script>"
            "<style>a::after { content: '</p>' }</style><p>b</p>")
    assert strip_html(page) == "<p>a</p><p>b</p>"


def test_htmlstrip_nested_svg_is_dropped_to_its_own_end() -> None:
    """An <svg> inside an <svg> does not end the dropped region early."""
    page = "<svg><svg><rect/></svg><text>inner</text></svg><p>after</p><svg/>tail"
    assert strip_html(page) == "<p>after</p>tail"


def test_htmlstrip_unclosed_dropped_element_hides_the_rest() -> None:
    """An element left open drops what follows it, as a browser would hide it."""
    assert strip_html("<p>kept</p><script>var never = 'closed';") == "<p>kept</p>"
    assert strip_html("<p>kept</p><svg><p>inside</p>") == "<p>kept</p>"


@pytest.mark.parametrize(("page", "expected"), [
    ("<p>unclosed <b>bold", "<p>unclosed <b>bold"),
    ("<div>stray</span></div>", "<div>stray</span></div>"),
    ("<![foo[ marked ]]>text", "text"),
    ("<![CDATA[x]]>y", "y"),
    ("<!bogus>ok", "ok"),
    ("a < b && c", "a < b && c"),
    ("<p>cut in a ta", "<p>cut in a ta"),
    ("</></p>", "</p>"),
])
def test_htmlstrip_malformed_html_is_handled(page: str, expected: str) -> None:
    """Broken markup never raises and loses nothing but comment-like sections."""
    assert strip_html(page) == expected


def test_htmlstrip_survives_random_markup_soup() -> None:
    """Thousands of random fragments of tag syntax all parse without an exception."""
    pieces = ["<", ">", "!", "/", "-", "[", "]", "?", "'", '"', "=", " ", "a", "&", "#", ";",
              "<!--", "-->", "<![", "]]>", "<script>", "</script>", "<svg", "</svg>",
              "<!DOCTYPE", "<style>", "<noscript>", "<![CDATA[", "\n"]
    rng = random.Random(1234)  # noqa: S311 - a fixed seed keeps the fuzz repeatable
    for _ in range(3000):
        page = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 40)))
        assert isinstance(strip_html(page), str)
