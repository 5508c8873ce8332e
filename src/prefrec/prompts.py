"""Prompt texts for the three tasks, per domain (movies, games, music, books; `items` for anything else).

Written in our own words, following the structure of the papers' prompts:
- DMPO pairwise (DMPO Table 1): a role sentence, the user's history of items, then "rank these two items"; the
  answer lists the two titles, the one the user prefers first: `format_ordering(first, second)`.
- S-DPO / LLaRA candidates: the history, then "which of these 20 will the user pick next"; the answer is one title.
- TALLRec yes/no: the items the user liked and disliked, then "will the user enjoy this one"; the answer is
  "Yes." or "No.".
Beside the papers' title answers, the pairwise and candidates questions can label their options by letter or number
(prefrec.answers), so that the answer is one token.

Every prompt is a shared `prefix` (role + history, ending in a newline) plus a per-comparison `question` (samples.py).
The prefix ends with "\\n" so that a tokenizer never merges its last token with the question's first one: BPE
tokenizers attach a space to the word after it, but keep a newline apart.

Titles are shown in double quotes inside prompts (the history is a comma-separated list and titles contain commas:
"Girl, Interrupted (1999)"); answers are the bare titles.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefrec.errors import UserError, did_you_mean

YES = "Yes."
NO = "No."


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


def format_ordering(first: str, second: str) -> str:
    """The pairwise answer text: the two titles, preferred first ("Heat (1995), Casino (1995)")."""
    return f"{first}, {second}"


# ---- DMPO pairwise ----

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


def pairwise_question(dom: str, a: str, b: str, notes: tuple[str, str] | None = None, answers: str = "title") -> str:
    """Ask to rank two titles (shown in the given order, which the caller shuffles); `notes` follow the titles
    in parentheses (item facts, an option). answers="letter": the two are options A and B, answered by letter."""
    d = domain(dom)
    na, nb = (f" ({notes[0]})", f" ({notes[1]})") if notes else ("", "")
    if answers == "letter":
        return (f"Which of these two {d.plural} is the user more likely to enjoy? A: {quote(a)}{na}. "
                f"B: {quote(b)}{nb}. Answer with the letter A or B.")
    return (f"Rank these two {d.plural} by how likely the user is to enjoy them, most likely first: "
            f"{quote(a)}{na} and {quote(b)}{nb}. Answer with the two titles separated by a comma.")


# ---- S-DPO / LLaRA candidates ----

def candidates_question(dom: str, candidates: list[str], notes: list[str] | None = None, *, timed: bool = True,
                        answers: str = "title") -> str:
    """timed: False for a log without time (a held-out item, not the next one): the question must not say "next".
    answers="number": the candidates as a numbered list, answered by number."""
    d = domain(dom)
    ask = (f"will the user {d.consume} next" if timed else f"has the user also {d.consumed}")
    if answers == "number":
        notes = notes or [""] * len(candidates)
        lines = "".join(f"\n{i + 1}. {quote(c)}" + (f" ({n})" if n else "")
                        for i, (c, n) in enumerate(zip(candidates, notes, strict=True)))
        return f"Which one of these {len(candidates)} {d.plural} {ask}?{lines}\nAnswer with the number only."
    return (f"Which one of these {len(candidates)} {d.plural} {ask}? "
            f"Candidates: {title_list(candidates, notes)}. Answer with the title only.")


# ---- TALLRec yes/no ----

def yesno_prefix(dom: str, liked: list[str], disliked: list[str]) -> str:
    d = domain(dom)
    return (f"{d.role} The user liked these {d.plural}: {title_list(liked)}. "
            f"The user disliked these {d.plural}: {title_list(disliked)}.\n")


def yesno_question(dom: str, target: str, note: str | None = None) -> str:
    """`note`: the target's item facts in parentheses (the hybrid prompt option)."""
    d = domain(dom)
    shown = quote(target) + (f" ({note})" if note else "")
    return f"Will the user enjoy the {d.singular} {shown}? Answer Yes or No."


# ---- (prefix, question) pairs in one call, for code that builds a prompt outside the data protocols ----

def pairwise_prompt(history: list[str], first: str, second: str, dom: str = "movies") -> tuple[str, str]:
    return history_prefix(dom, history), pairwise_question(dom, first, second)


def candidates_prompt(history: list[str], candidates: list[str], dom: str = "movies") -> tuple[str, str]:
    return history_prefix(dom, history), candidates_question(dom, candidates)


def yesno_prompt(liked: list[str], disliked: list[str], target: str, dom: str = "movies") -> tuple[str, str]:
    return yesno_prefix(dom, liked, disliked), yesno_question(dom, target)
