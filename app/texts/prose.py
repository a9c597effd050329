"""General English prose for calibration: Wikipedia articles, so that a variant calibrated,
recovered or distilled is not tuned to Python documentation alone.

The source is the shortened English Wikipedia dump that gensim 4.4.0 ships as test data
(`enwiki-latest-pages-articles1...-shortened.bz2`, 106 articles from "Anarchism" to
"Aldous Huxley", CC BY-SA). `make setup` takes it from the pinned wheel with the news
evaluation text (`python -m app.texts.evaluation fetch`), strips the wiki markup with
mwparserfromhell (pinned: the bytes depend on its version), and keeps the articles' body
text: no references, no back matter, no categories. The result is checked against its
sha256 on every read, and the fetch refuses it if it holds any evaluation text.
"""

import bz2
import contextlib
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from app.texts.pinned import read_pinned

WIKI_MEMBER = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
PROSE_FILE = "enwiki-prose.txt"
PROSE_SHA256 = "84727d6595e1db3ca5006d71d97b737393b4c6a25493f3dc2d1faac72b494357"
TITLE = "English Wikipedia articles (gensim 4.4.0 test data, markup stripped)"
_BACK_MATTER = re.compile(
    r"^==+\s*(References|Notes|See also|External links|Further reading|Bibliography|Sources"
    r"|Footnotes|Citations|Works cited)\s*==+\s*$",
    re.M | re.I,
)
_DROPPED_TAGS = {"ref", "references", "gallery", "math", "table"}
# What the parser leaves in place where the markup around it is malformed (a table it did
# not recognise, a reference inside a broken template): table rows, stray HTML tags.
_DROPPED_LINES = ("Category:", "thumb|", "File:", "Image:", "[[File:", "[[Image:", "{|", "|", "!")
# An image's caption line keeps its layout options ("thumb|right|250px|A portrait of ...").
_IMAGE_OPTIONS = re.compile(
    r"(?:^|\|)(?:thumb|thumbnail|frame|frameless|left|right|center|upright|border"
    r"|\d+(?:x\d+)?px|alt=[^|]*)\|"
)
_LEFTOVER_TAGS = re.compile(
    r"<ref[^>]*/>|<ref[^>]*>.*?</ref>|</?(?:ref|blockquote|br|small|sup|sub|span|div|center)"
    r"\b[^>]*>",
    re.S,
)


def prose_from_dump(compressed: bytes) -> str:
    """The articles' body text, one article after another, separated by blank lines."""
    root = ET.fromstring(bz2.decompress(compressed))
    ns = root.tag[: root.tag.index("}") + 1]
    articles = []
    for page in root.iter(f"{ns}page"):
        if page.find(f"{ns}redirect") is not None or page.findtext(f"{ns}ns") != "0":
            continue
        if body := article_prose(page.findtext(f"{ns}revision/{ns}text") or ""):
            articles.append(body)
    return "\n\n".join(articles) + "\n"


def article_prose(wikitext: str) -> str:
    import mwparserfromhell

    code = mwparserfromhell.parse(_BACK_MATTER.split(wikitext, maxsplit=1)[0])
    for tag in code.filter_tags(matches=lambda n: str(n.tag).lower() in _DROPPED_TAGS):
        with contextlib.suppress(ValueError):  # inside a tag removed already
            code.remove(tag)
    plain = code.strip_code(normalize=True, collapse=True, keep_template_params=False)
    plain = _LEFTOVER_TAGS.sub("", plain)
    lines = (line.strip() for line in plain.splitlines())
    return "\n".join(line for line in lines if line and not _markup_line(line))


def _markup_line(line: str) -> bool:
    return line.startswith(_DROPPED_LINES) or _IMAGE_OPTIONS.search(line) is not None


def prose_documents(data_dir: Path) -> list[str]:
    """The articles, from the file `make setup` wrote, checked by sha256."""
    text = read_pinned(data_dir / PROSE_FILE, PROSE_SHA256, "the calibration prose")
    return [a for a in text.split("\n\n") if a.strip()]
