"""What a task is: the row type of the task table (prefrec.tasks.TASKS), and the pieces its modules share.

A task module (pairwise.py, candidates.py, yesno.py) owns everything about its task and ends with one `Task` row:
the protocol that builds its samples from a log, its answer formats (a table of `AnswerFormat` rows, each with the
wording of its question), how a model scores a sample, how per-sample rows become metrics, the facts its prompt
shows and the item prior of the same units, how rank/serve build the tree of a new user's prompt and read a ranking
off its scores, and how an ID baseline's item scores become per-sample rows. Code above the tasks layer asks the row;
it never compares a task or format name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prefrec import prompts
from prefrec.errors import UserError, did_you_mean
from prefrec.samples import Sample
from prefrec.tasks.formats import AnswerFormat

Responses = tuple[list[str], list[list[str]], list[list[bool]]]  # (questions, responses, is_positive)


@dataclass(frozen=True)
class Facts:
    """The prompt-facts model's units of one task (prefrec.evaluation.facts) and the item prior's features of the
    same units (prefrec.evaluation.prior)."""
    features: Callable  # Sample -> (x (m, d), y (m,)), one row per comparison / candidate / sample
    llm: Callable  # (Sample, per-sample row) -> (m,) the LLM's score of the same units
    rows: Callable  # (Sample, logits (m,)) -> a per-sample row in the format of the task's metrics
    metric: str  # what the added-to-facts test compares
    metrics: Callable  # rows -> metrics (the task's own metric code)
    prior: Callable  # (ItemPrior, Sample) -> (x (m, d'), y (m,)): the item prior's features of the same units


@dataclass(frozen=True)
class Ranking:
    """How rank/serve rank a new user's candidates with the task's prompt."""
    questions: Callable  # (domain, candidates, AnswerFormat) -> (questions, responses per question)
    rows: Callable  # (tree, candidates, summed log-probs per response) -> one row per candidate, in input order
    min_candidates: int = 1


@dataclass(frozen=True)
class Baseline:
    """How the ID baselines (prefrec.baselines) read the task's samples and report their item scores."""
    rows: Callable  # (keys [{"id", "user"}], scores (N, C), target index (N,)) -> per-sample rows
    positive_first: bool  # the candidates list the positive first (else: the target is somewhere among them)
    preference_pairs: bool  # also train on (liked, not liked) pairs of a user (else: next-item examples only)


@dataclass(frozen=True)
class Task:
    name: str
    formats: dict[str, AnswerFormat]  # the task's answer formats, the default ("title") first
    defaults: dict  # prepare's defaults: negatives, history_len, min_history, n_train, n_valid, n_test
    build: Callable  # (Log, data.protocols.Options) -> data.protocols.Built: the task's protocol
    score: Callable  # (model, tokenizer, samples, *, max_tokens_per_batch, progress) -> per-sample rows
    metrics: Callable[[list[dict]], dict]  # per-sample rows (LLM or baseline) -> the task's metrics
    key_metrics: Callable[[], list[str]]  # the metrics the report's tables show
    example: Callable[[str, str], tuple[str, str, str]]  # (domain, format) -> an example prompt and answer (cards)
    responses: Callable[[Sample], Responses]  # what explain scores and shows
    ratings: Callable[[Sample, int], list]  # (sample, k) -> the user's rating of the chosen and each rejected item
    facts: Facts
    rank: Ranking | None  # None: a new user's history cannot be written as this task's prompt
    baseline: Baseline | None  # None: the ID baselines do not take the task
    generate: Callable | None = None  # (model, tokenizer, samples, rows, ...) -> generation metrics
    check: Callable = lambda samples, where: None  # noqa: E731 - samples that cannot be scored, before any model loads
    why_no_rank: str = ""  # when rank is None: why
    prior_slice: bool = False  # the report's prior-matched slice applies (s_first/s_second rows of a positive and
    # a negative, prefrec.evaluation.prior.matched_rows)
    # (samples, chosen (n, m), rejected (n, m)) -> the rows `score` gives, read off the summed log-probs of each
    # sample's encode_sample(which="all") tree (response 0 of a branch chosen, pairs=True): training's validation
    # pass over those trees then gives the task's metrics too, without scoring the samples a second time. None: the
    # task's scoring needs other trees (every candidate, a yes/no pair)
    rows_from_pairs: Callable | None = None

    def format(self, name: str) -> AnswerFormat:
        """The task's row of an answer format; UserError naming the ones it takes."""
        if name not in self.formats:
            raise UserError(f"answer format {name!r} does not apply to the {self.name} task; it takes "
                            f"{', '.join(self.formats)}{did_you_mean(name, self.formats)}")
        return self.formats[name]


def comparison_responses(sample: Sample) -> Responses:
    """(questions, responses, is_positive): each comparison's chosen and rejected responses."""
    questions, responses, positive = [], [], []
    for c in sample.comparisons:
        questions.append(c.question)
        responses.append([c.chosen] + list(c.rejected))
        positive.append([True] + [False] * len(c.rejected))
    return questions, responses, positive


def rated(sample: Sample, k: int) -> list:
    """The user's rating of the chosen title and of each of the first k rejected titles (None: not rated), for a
    task whose responses are candidate titles."""
    rating = dict(zip(sample.candidates, sample.candidate_ratings))
    c = sample.comparisons[0]
    return [rating.get(c.chosen)] + [rating.get(t) for t in c.rejected[:k]]


def candidate_ids(s: Sample) -> list[str]:
    """The raw item ids of a sample's candidates (what the item prior looks up)."""
    if not s.candidate_items:
        raise UserError(f"sample {s.id!r}: no candidate_items; the item prior needs item ids")
    return s.candidate_items


EXAMPLE_HISTORY = ["Heat (1995)", "Fargo (1996)"]


def example_prefix(domain: str) -> str:
    return prompts.history_prefix(domain, EXAMPLE_HISTORY)
