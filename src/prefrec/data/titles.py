"""Make catalogue titles read naturally to a language model.

Published catalogues store titles for sorting, not reading: MovieLens writes "Lion King, The (1994)" and
"City of Lost Children, The (Cité des enfants perdus, La) (1995)", Amazon keeps HTML entities ("Tom &amp; Jerry",
"&nbsp;"), and some titles carry stray spaces ("Slingshot, The (Kådisbellan ) (1993)"). A model pretrained on web
text knows "The Lion King (1994)". `normalise_title` turns the first forms into the second:

    "Lion King, The (1994)"                        -> "The Lion King (1994)"
    "City of Lost Children, The (Cité des enfants perdus, La) (1995)"
                                                   -> "The City of Lost Children (La Cité des enfants perdus) (1995)"
    "Appartement, L' (1996)"                       -> "L'Appartement (1996)"
    "Tom &amp; Jerry&nbsp;"                        -> "Tom & Jerry"

The title is read as a main part followed by parenthesised groups (alternative titles, "a.k.a." names, the year). A
trailing ", Article" is moved to the front of the main part and of every group separately, so alternative titles stay
in parentheses after the main one. Only a trailing article at the very end of a part moves: "Girl, Interrupted" and
"I, Worst of All" stay as they are.
"""

from __future__ import annotations

import html
import re

# Leading articles that catalogues move to the end, in the languages MovieLens uses (English, French, Spanish,
# Italian, German, Portuguese, Scandinavian, Dutch). "L'" joins its word without a space.
ARTICLES = ("The", "A", "An", "Les", "La", "Le", "L'", "El", "Los", "Las", "Il", "Lo", "Gli", "I", "Un", "Une",
            "Una", "Der", "Die", "Das", "Den", "Det", "Ein", "Eine", "O", "Os", "As", "De", "Het", "En", "Ett")

_TRAILING_ARTICLE = re.compile(r"^(?P<body>.+?),\s*(?P<art>" + "|".join(re.escape(a) for a in ARTICLES) + r")\s*$")
_TRAILING_GROUPS = re.compile(r"^(?P<main>.*?)(?P<groups>(?:\s*\([^()]*\))*)\s*$", re.S)
_GROUP = re.compile(r"\(([^()]*)\)")
_SPACES = re.compile(r"\s+")


def unescape(text: str) -> str:
    """HTML entities to characters (twice, for doubly escaped text like '&amp;quot;'), and any whitespace run,
    including the no-break spaces that '&nbsp;' becomes, to one plain space."""
    for _ in range(2 if "&" in text else 0):
        new = html.unescape(text)
        if new == text:
            break
        text = new
    return _SPACES.sub(" ", text).strip()


def front_article(part: str) -> str:
    """'Lion King, The' -> 'The Lion King'; "Appartement, L'" -> "L'Appartement"; anything else unchanged."""
    m = _TRAILING_ARTICLE.match(part)
    if not m:
        return part
    body, art = m.group("body").strip(), m.group("art")
    return art + body if art.endswith("'") else f"{art} {body}"


def normalise_title(raw: str) -> str:
    """A catalogue title as a reader would write it (see the module docstring). Never returns an empty string for a
    non-blank input."""
    text = unescape(raw)
    if not text:
        return text
    m = _TRAILING_GROUPS.match(text)
    main, groups = m.group("main").strip(), _GROUP.findall(m.group("groups"))
    if not main:  # the whole title is in parentheses, e.g. "(500) Days of Summer" has main text, "(Untitled)" not
        return text
    parts = [front_article(main)]
    for g in groups:
        g = g.strip()
        if g:
            parts.append(f"({front_article(g)})")
    return " ".join(parts)


def with_year(title: str, year: str | None) -> str:
    """Append '(YYYY)' as MovieLens writes it, for catalogues that store the year separately (RecBole)."""
    year = (year or "").strip()
    if year.endswith(".0"):  # RecBole floats
        year = year[:-2]
    if not re.fullmatch(r"\d{4}", year) or title.endswith(f"({year})"):  # "unknown", "V", or already there
        return title
    return f"{title} ({year})"
