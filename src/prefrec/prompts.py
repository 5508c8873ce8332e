"""The wording every task's prompt shares, per domain (movies, games, music, books; `items` for anything else): the
assistant's role, the user's history, quoted title lists and the item facts of the hybrid prompt (and how a prompt's
facts are read back). Each task's own question and answers live with the task (prefrec.tasks), written in our own
words after the papers' prompts.

Every prompt is a shared `prefix` (role + history, ending in a newline) plus a per-comparison `question` (samples.py).
The prefix ends with "\\n" so that a tokenizer never merges its last token with the question's first one: BPE
tokenizers attach a space to the word after it, but keep a newline apart.

Titles are shown in double quotes inside prompts (the history is a comma-separated list and titles contain commas:
"Girl, Interrupted (1999)"); answers are the bare titles.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prefrec.errors import UserError, did_you_mean

@dataclass(frozen=True)
class Domain:
    name: str
    singular: str  # "movie"
    plural: str  # "movies"
    consumed: str  # past tense of what a user does with one: "watched"
    consume: str  # infinitive: "watch"
    role: str  # the assistant's role sentence


DOMAINS = {
    "movies": Domain("movies", "movie", "movies", "watched", "watch", "You are a film recommendation assistant."),
    "games": Domain("games", "video game", "video games", "bought", "buy", "You are a video game recommendation assistant."),
    "music": Domain("music", "artist", "artists", "listened to", "listen to", "You are a music recommendation assistant."),
    "books": Domain("books", "book", "books", "read", "read", "You are a book recommendation assistant."),
    "items": Domain("items", "item", "items", "chosen", "choose", "You are a recommendation assistant."),
}


def check_domain(name: str, flag: str = "--domain") -> str:
    """`name` when it is a prompt domain; else one UserError naming the flag, the choices and the nearest one."""
    if name not in DOMAINS:
        raise UserError(f"{flag} {name!r}: expected one of {', '.join(DOMAINS)}{did_you_mean(name, DOMAINS)}")
    return name


def domain(name: str) -> Domain:
    """The template for a domain name; unknown names get the neutral `items` wording."""
    return DOMAINS.get(name, DOMAINS["items"])


def quote(title: str) -> str:
    return f'"{title}"'


def title_list(titles: list[str], notes: list[str] | None = None) -> str:
    """Quoted titles, comma-separated; `notes[i]`, when given and not empty, follows title i in parentheses."""
    if not titles:
        return "(none)"
    if notes is None:
        return ", ".join(quote(t) for t in titles)
    return ", ".join(quote(t) + (f" ({n})" if n else "") for t, n in zip(titles, notes, strict=True))


# ---- shared by the tasks ----

def history_prefix(dom: str, history: list[str], ratings: list[float] | None = None, *, timed: bool = True) -> str:
    """Role + the user's history (oldest first); shared by the pairwise and candidates tasks.

    ratings: the user's own rating of each history item, shown as "4/5" after its title (an option for a small
    model: TALLRec splits liked/disliked for the same reason); off in the papers' protocols.
    timed: False for a log without time, whose history is in a seeded random order: the prompt must not claim
    "oldest first" then."""
    d = domain(dom)
    order = "oldest first" if timed else "in no particular order"
    if ratings is None:
        return f"{d.role} The user has {d.consumed} these {d.plural}, {order}: {title_list(history)}.\n"
    notes = [f"{r:g}/5" for r in ratings]
    return (f"{d.role} The user has {d.consumed} these {d.plural}, {order}, each with the user's rating: "
            f"{title_list(history, notes)}.\n")


def item_note(count: int, mean: float | None, *, rated: bool = True) -> str:
    """What other users did with an item (the collaborative facts of the hybrid prompt option): "mean rating 3.9
    from 120 users"; for logs without ratings (play counts, rated=False) only the count: "120 other users"."""
    users = "user" if count == 1 else "users"
    if not rated:
        return f"{count} other {users}"
    return "no other user rated it" if count == 0 else f"mean rating {mean:.1f} from {count} {users}"


_MEAN = re.compile(r"^mean rating (-?[\d.]+) from (\d+) users?$")
_COUNT = re.compile(r"^(\d+) other users?$")


def parse_note(note: str | None) -> tuple[float, float, float]:
    """(mean rating or 0, log(1 + raters), 1 if no mean is shown) from a prompt's item note (`item_note`)."""
    if note:
        m = _MEAN.match(note)
        if m:
            return float(m.group(1)), math.log1p(int(m.group(2))), 0.0
        m = _COUNT.match(note)
        if m:
            return 0.0, math.log1p(int(m.group(1))), 1.0
    return 0.0, 0.0, 1.0


def shown(question: str, title: str) -> tuple[int, tuple[float, float, float]]:
    """(where the title is shown in the question, its parsed note): the facts the prompt gives of one item."""
    q = quote(title)
    at = question.find(q)
    if at < 0:
        raise UserError(f"{title!r} is not shown in quotes in its prompt, so its facts and order cannot be read off "
                        f"it (prompt-facts reads prompts written by `prefrec data prepare`)")
    rest = question[at + len(q):]
    note = rest[2:rest.index(")")] if rest.startswith(" (") and ")" in rest else None
    return at, parse_note(note)
