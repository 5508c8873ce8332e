"""Title normalisation (prefrec.data.titles): catalogue titles -> titles as a reader writes them."""

import re

import pytest

from prefrec.data.titles import front_article, normalise_title, unescape, with_year


@pytest.mark.parametrize("raw, expected", [
    ("Lion King, The (1994)", "The Lion King (1994)"),
    ("Walk in the Clouds, A (1995)", "A Walk in the Clouds (1995)"),
    ("Awfully Big Adventure, An (1995)", "An Awfully Big Adventure (1995)"),
    ("Misérables, Les (1995)", "Les Misérables (1995)"),
    ("Postino, Il (The Postman) (1994)", "Il Postino (The Postman) (1994)"),
    ("Bewegte Mann, Der (1994)", "Der Bewegte Mann (1994)"),
    ("Superweib, Das (1996)", "Das Superweib (1996)"),
    ("Appartement, L' (1996)", "L'Appartement (1996)"),
    ("Tin Drum, The (Blechtrommel, Die) (1979)", "The Tin Drum (Die Blechtrommel) (1979)"),
    ("Midaq Alley (Callejón de los milagros, El) (1995)", "Midaq Alley (El Callejón de los milagros) (1995)"),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)",
     "The City of Lost Children (La Cité des enfants perdus) (1995)"),
    ("Professional, The (a.k.a. Leon: The Professional) (1994)",
     "The Professional (a.k.a. Leon: The Professional) (1994)"),
    ("Slingshot, The (Kådisbellan ) (1993)", "The Slingshot (Kådisbellan) (1993)"),
    ("Seven (Se7en) (1995)", "Seven (Se7en) (1995)"),
    # commas that are not a moved article stay
    ("Girl, Interrupted (1999)", "Girl, Interrupted (1999)"),
    ("I, Worst of All (Yo, la peor de todas) (1990)", "I, Worst of All (Yo, la peor de todas) (1990)"),
    ("Good Morning, Vietnam (1987)", "Good Morning, Vietnam (1987)"),
    ("The Revenant", "The Revenant"),
    # HTML entities (Amazon keeps them), no-break spaces, stray spaces
    ("Tom &amp; Jerry&nbsp;Collection", "Tom & Jerry Collection"),
    ("Ocean&#39;s Eleven  [DVD]", "Ocean's Eleven [DVD]"),
    ("&amp;quot;Quoted&amp;quot;", '"Quoted"'),
    ("  Frog Bog ", "Frog Bog"),
])
def test_normalise_title(raw, expected):
    assert normalise_title(raw) == expected


def test_front_article_only_at_the_end():
    assert front_article("Lion King, The") == "The Lion King"
    assert front_article("The Lion King") == "The Lion King"
    assert front_article("Bell, Book and Candle") == "Bell, Book and Candle"


def test_unescape_collapses_whitespace():
    assert unescape("a\u00a0\u00a0b\t c&nbsp;") == "a b c"


def test_with_year():
    assert with_year("Toy Story", "1995") == "Toy Story (1995)"
    assert with_year("Toy Story", "1995.0") == "Toy Story (1995)"
    assert with_year("unknown", "unkonwn") == "unknown"  # RecBole's ml-100k item 267
    assert with_year("Land Before Time III (1995)", "V") == "Land Before Time III (1995)"
    assert with_year("Heat (1995)", "1995") == "Heat (1995)"


def test_ml1m_titles_have_no_trailing_article(shared_data):
    """Every ML-1M title of the form 'X, The (YYYY)' comes out as 'The X (YYYY)', counted independently."""
    articles = ("The", "A", "An")
    raw = [line.split("::")[1] for line in (shared_data / "ml-1m" / "movies.dat").read_text("latin-1").splitlines()]
    pattern = re.compile(r"^(.*), (The|A|An) \((\d{4})\)$")
    moved = [(t, pattern.match(t)) for t in raw if pattern.match(t)]
    assert len(moved) > 800
    for t, m in moved:
        assert normalise_title(t) == f"{m.group(2)} {m.group(1)} ({m.group(3)})"
    assert not [t for t in map(normalise_title, raw) if re.search(r", (%s) \(\d{4}\)$" % "|".join(articles), t)]
