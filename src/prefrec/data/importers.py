"""Import other projects' preference files as prefrec samples, reporting every row that cannot be used and why.

Accepted containers: a JSON array, JSON lines, or JSON objects simply concatenated (the DMPO release's `*_old.json`
files: parsed with `json.JSONDecoder.raw_decode` in a loop). Accepted record layouts:

- LLaMA-Factory alpaca pairwise: {"instruction", "input", "output": [chosen, rejected]}; the prompt is instruction
  + "\\n" + input (input left out when empty), as LLaMA-Factory joins them. `output: [chosen, r1, …, rk]` is read
  as k rejected responses.
  LLaMA-Factory's alpaca preference columns {"instruction", "input", "chosen", "rejected"} too.
- LLaMA-Factory sharegpt: {"conversations": [{"from": "human", "value"}], "chosen": {"from": "gpt", "value"},
  "rejected": {...}} (optional "system"); a plain sharegpt row ending on a gpt turn is SFT data (below).
- TRL preference: {"prompt", "chosen", "rejected"}; `rejected` may be a list (the k-rejected generalisation).
  TRL's implicit prompt: {"chosen", "rejected"} alone, both whole conversations that differ only in the final
  assistant message, or texts sharing the prompt as a common beginning (split after its last whitespace).
- OpenAI preference fine-tuning: {"input": {"messages"}, "preferred_output": [msg], "non_preferred_output": [msg]}.
- prefrec's own Sample JSON (a "comparisons" field), passed through.
Conversations (role/content or from/value tags) are accepted when the prompt is one user message (optionally after
system messages) and each answer one assistant message; multi-turn prompts, tool turns and images are refused,
saying so. Rows with a single answer (alpaca `output` string, sharegpt ending on gpt, TRL/OpenAI `messages`, TRL
prompt/completion) are SFT data: imported only when they are DMPO <Title:…> orderings (below), else refused; an
unpaired KTO row (one completion and a label) is refused too. A Hugging Face `datasets` folder written by
`save_to_disk` (a Dataset, or a DatasetDict: one output per split) is read with the optional `datasets` package.

DMPO's released prompts (BZX667/DMPO `data/*.json`) are alpaca rows whose items are marked ` <Title:X> `
(ML-1M's old eval file adds `, Genre:A|B`). Such rows become real pairwise samples:
- prefix = the instruction up to and including the history sentence, question = the "Rank the likelihood …"
  sentence, so the packer can share the history across a user's comparisons;
- the markup is replaced by our quoted titles (prompts.title_list), titles normalised like every other title
  (HTML entities unescaped: the Amazon titles keep `&amp;`, `&nbsp;`; "Bug's Life, A (1998)" → "A Bug's Life
  (1998)"), genre annotations dropped (counted in the report);
- chosen = format_ordering(positive, negative), rejected = [format_ordering(negative, positive)]; rows whose output
  is a string (the SFT and ML-1M eval files: the string is the correct ordering) get the swapped ordering as their
  rejected response;
- layout of `rec_*_dpo_ranking_k.json` (checked on every file of the release): k consecutive rows per user, with the
  same history and the same positive and one negative each (ml_1m: 100 users × k rows; Amazon Game/Movie: 100
  users × k rows for k ≥ 2, and 200 users × 1 row for k = 1). Consecutive rows with the same prefix and the same
  positive are grouped into one Sample with k comparisons.
A row is rejected (with its index or line and the reason) when a field is missing or of the wrong type, the output
does not name exactly two titles, those titles are not the two in the question, or a rejected answer is not the
chosen ordering reversed. A file that is not a list of records (LLaMA-Factory's `dataset_info.json` registry) is
rejected as a whole, with the reason.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from prefrec import io, prompts
from prefrec.data.titles import normalise_title, unescape
from prefrec.errors import UserError
from prefrec.samples import LONE_SURROGATE, Comparison, Sample, has_lone_surrogate, write_samples
from prefrec.tasks import pairwise

_MARK = re.compile(r"<Title:([^<>]*)>")
_MARK_RUN = re.compile(r"(?:\s*<Title:[^<>]*>)+\s*")
_GENRE = re.compile(r",\s*Genre:[^,<>]*$")
_QUESTION = "Rank the likelihood"
# a file holding one JSON object is one record when it has a key of some record layout below
_RECORD_KEYS = {"instruction", "prompt", "comparisons", "conversations", "chosen", "messages", "preferred_output"}


class Rejected(Exception):
    """A row that cannot be imported; the message is the reason."""


@dataclass
class FileReport:
    file: str
    format: str = "unknown"
    rows: int = 0  # records found in the file
    rows_loaded: int = 0
    samples: int = 0
    comparisons: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"where", "reason"}
    notes: list[str] = field(default_factory=list)
    output: str | None = None
    reason: str | None = None  # why the whole file was rejected


# ---------------------------------------------------------------------------------------------------------------
# Containers


def read_import_records(path: Path, report: FileReport) -> list[tuple[str, object]]:
    """(where, value) for every record, in file order; a part that is not valid JSON comes as (where, Rejected).
    A file that holds no records at all raises UserError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    if not text.strip():
        raise UserError(f"{path}: empty file")
    out = _records(text, path, report)
    if "\\u" in text:  # a lone surrogate can only come from an escape
        out = [(w, Rejected(LONE_SURROGATE) if not isinstance(v, Rejected) and has_lone_surrogate(v) else v)
               for w, v in out]
    return out


def _records(text: str, path: Path, report: FileReport) -> list[tuple[str, object]]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:  # not one JSON document: read value by value, unless it is one broken array
        if text.lstrip().startswith("["):
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); the file is one "
                            "JSON array, so none of it could be read") from None
        value = None
    except (ValueError, RecursionError):  # one too deep, or with a number of over 4300 digits: value by value
        value = None
    else:
        if isinstance(value, list):
            report.format = "JSON array"
            return [(f"{path.name}[{i}]", v) for i, v in enumerate(value)]
        registry_keys = {"file_name", "hf_hub_url", "ms_hub_url", "script_url", "om_hub_url"}
        if isinstance(value, dict) and value and all(isinstance(v, dict) and registry_keys & set(v)
                                                     for v in value.values()):
            raise UserError(f"{path}: a LLaMA-Factory dataset registry (dataset_info.json: {len(value)} entries "
                            "naming data files), not preference records; import the files it names instead")
        if isinstance(value, dict) and not (_RECORD_KEYS & set(value)):
            raise UserError(f"{path}: a JSON object with keys {sorted(value)[:6]}; expected a list of records, "
                            "JSON lines or concatenated objects")
        report.format = "one JSON object"
        return [(f"{path.name}[0]", value)]
    # JSON lines, or objects concatenated without separators (DMPO *_old.json): decode one value at a time
    out, one_per_line = _value_by_value(text, path.name)
    report.format = "JSON lines" if one_per_line else "concatenated JSON objects"
    return out


def _value_by_value(text: str, name: str) -> tuple[list[tuple[str, object]], bool]:
    """(where, value) of each JSON value in `text` (a bad one as Rejected, reading on at the next line), and whether
    every value stood on a line of its own."""
    dec = json.JSONDecoder()
    out: list[tuple[str, object]] = []
    pos, n_lines_format, n_ok = 0, True, 0
    line, line_pos = 1, 0  # line number of line_pos, advanced incrementally (counting from 0 each time is quadratic)
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            break
        line += text.count("\n", line_pos, pos)
        line_pos = pos
        try:
            value, end = dec.raw_decode(text, pos)
        except (ValueError, RecursionError) as e:  # a JSONDecodeError, a number of over 4300 digits, too deep
            where, pos = _bad_record(text, pos, line, e)
            why = (f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError)
                   else str(e).split(":")[0] if isinstance(e, ValueError) else None)
            out.append((f"{name}:{where}", Rejected(f"not valid JSON ({why})" if why else io.NESTED_TOO_DEEP)))
            if pos < 0:
                break
            continue
        j = end
        while j < len(text) and text[j] in " \t\r":
            j += 1
        if j < len(text) and text[j] != "\n":
            n_lines_format = False  # another value follows on the same line: concatenated objects
        out.append((f"{name}:{line} (record {n_ok})", value))
        n_ok += 1
        pos = end
    return out, n_lines_format


def _bad_record(text: str, pos: int, line: int, e: Exception) -> tuple[int, int]:
    """(the line to name, where to read on; -1: nowhere) for a record starting at `pos` (line `line`) that failed.
    A record cut at the end of its line runs into the next line's record: a line in between that starts with "{" or
    "[" at column 0 is a new record, so the cut one is named and reading goes on there (JSON lines). Otherwise the
    record spans lines (pretty-printed objects): the error's own line is named and reading goes on after it (the
    inside of a multi-line record was read as records of its own, and an error on line 2 was named line 1)."""
    if not isinstance(e, json.JSONDecodeError):  # too deep: name the start, read on at the next line
        nxt = text.find("\n", pos)
        return line, nxt + 1 if nxt >= 0 else -1
    nxt = text.find("\n", pos)
    while 0 <= nxt < e.pos:
        if text[nxt + 1:nxt + 2] in ("{", "["):
            return line, nxt + 1
        nxt = text.find("\n", nxt + 1)
    after = text.find("\n", e.pos)
    return e.lineno, after + 1 if after >= 0 else -1


# ---------------------------------------------------------------------------------------------------------------
# Record layouts


def _text(rec: dict, key: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str):
        raise Rejected(f"field '{key}' is {type(v).__name__ if key in rec else 'missing'}; expected a string")
    return v


# Message roles in both tag styles: OpenAI/TRL {"role", "content"} and LLaMA-Factory sharegpt {"from", "value"}
_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "model": "assistant",
          "system": "system"}


def _content(m: dict, key: str) -> str:
    """The text of one message; OpenAI content parts are joined when all are text."""
    value = m.get("content", m.get("value"))
    if isinstance(value, list) and all(isinstance(x, dict) and x.get("type") == "text" for x in value):
        value = "".join(str(x.get("text", "")) for x in value)
    if not isinstance(value, str):
        raise Rejected(f"field '{key}': a message whose content is {type(value).__name__}, not text (images and "
                       "other parts are not supported)")
    return value


def _turns(v, key: str) -> list[tuple[str, str]]:
    """(role, text) for a message list, roles mapped to user/assistant/system; tool turns are refused."""
    if not isinstance(v, list) or not all(isinstance(m, dict) and ({"content", "value"} & set(m)) for m in v):
        raise Rejected(f"field '{key}' is neither a string nor a list of messages")
    turns = []
    for m in v:
        tag = str(m.get("role", m.get("from", "user")))
        if tag not in _ROLES:
            raise Rejected(f"field '{key}': a {tag!r} turn (tool calls and observations are not supported; "
                           "expected user/human, assistant/gpt and system turns)")
        turns.append((_ROLES[tag], _content(m, key)))
    return turns


def _prompt(turns: list[tuple[str, str]], key: str, system: str | None = None) -> str:
    """One user message (system text folded in before it): prefrec prompts are a single user turn."""
    users = [t for r, t in turns if r != "system"]
    if len(users) != 1 or [r for r, _ in turns if r != "system"] != ["user"]:
        raise Rejected(f"field '{key}' has {len(users)} non-system turns; prefrec prompts are one user message "
                       "(multi-turn conversations are not supported)")
    return "\n".join(([system] if system else []) + [t for r, t in turns if r == "system"] + users)


def _answer(v, key: str) -> str:
    """A response: a string, one assistant message, or a list holding one assistant message."""
    if isinstance(v, str):
        return v
    turns = _turns([v] if isinstance(v, dict) else v, key)
    if len(turns) != 1 or turns[0][0] != "assistant":
        raise Rejected(f"field '{key}' has {len(turns)} messages; expected one assistant message")
    return turns[0][1]


def _messages(v, role: str, key: str) -> str:
    """TRL conversational: a string, or the single `role` message (a leading system message folded in)."""
    if isinstance(v, str):
        return v
    return _prompt(_turns(v, key), key) if role == "user" else _answer(v, key)


@functools.lru_cache(maxsize=65536)
def _clean(raw: str) -> tuple[str, bool]:
    """(normalised title, whether a ', Genre:…' annotation was dropped); cached: histories repeat titles a lot."""
    raw = unescape(raw)
    genre = bool(_GENRE.search(raw))
    return normalise_title(_GENRE.sub("", raw) if genre else raw), genre


def _clean_title(raw: str, notes: dict) -> str:
    title, genre = _clean(raw)
    if genre:
        notes["genre"] = notes.get("genre", 0) + 1
    return title


def _render(text: str, notes: dict) -> str:
    """Replace each run of ` <Title:…> ` marks by quoted, comma-separated titles; tidy the spacing."""
    def run(m: re.Match) -> str:
        titles = [_clean_title(t, notes) for t in _MARK.findall(m.group(0))]
        return " " + prompts.title_list(titles) + " "
    text = _MARK_RUN.sub(run, unescape(text))
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([.,;:?!])", r"\1", text)


def _domain_of(text: str, default: str | None) -> str:
    t = text.lower()
    for key, dom in (("video game", "games"), ("movie", "movies"), ("film", "movies"), ("music", "music"),
                     ("artist", "music"), ("book", "books")):
        if key in t:
            return dom
    return default or "items"


def _ordering(text: str, notes: dict) -> tuple[str, str]:
    titles = [_clean_title(t, notes) for t in _MARK.findall(text)]
    if len(titles) != 2:
        raise Rejected(f"the answer {text.strip()[:80]!r} names {len(titles)} <Title:…> items; expected 2")
    if not all(titles):
        raise Rejected("the answer has an empty title")
    return titles[0], titles[1]


def _dmpo_sample(rec: dict, sid: str, domain: str | None, notes: dict) -> Sample:
    """One DMPO row -> a pairwise Sample with one comparison (grouping happens later)."""
    instruction = _text(rec, "instruction")
    if rec.get("input"):
        instruction += "\n" + _text(rec, "input")
    cut = instruction.rfind(_QUESTION)
    if cut < 0:
        raise Rejected(f"no '{_QUESTION} …' question in the instruction")
    head, ask = instruction[:cut], instruction[cut:]
    history = [_clean_title(t, notes) for t in _MARK.findall(head)]
    shown = [_clean_title(t, notes) for t in _MARK.findall(ask)]
    if len(shown) != 2:
        raise Rejected(f"the question names {len(shown)} <Title:…> items; expected 2")
    out = rec.get("output")
    if isinstance(out, str):
        pos, neg = _ordering(out, notes)
        rejected = [(neg, pos)]
    elif isinstance(out, list) and len(out) >= 2 and all(isinstance(o, str) for o in out):
        pos, neg = _ordering(out[0], notes)
        rejected = [_ordering(o, notes) for o in out[1:]]
        if any(r != (neg, pos) for r in rejected):
            raise Rejected("a rejected answer is not the chosen ordering reversed")
    else:
        raise Rejected("field 'output' must be a string (the correct ordering) or a list [chosen, rejected, …] of strings")
    if {pos, neg} != set(shown) or pos == neg:
        raise Rejected(f"the answer ranks {pos!r} and {neg!r}, but the question shows {shown}")
    dom = _domain_of(head, domain)
    return Sample(id=sid, task=pairwise.TASK.name, domain=dom, prefix=_render(head, notes) + "\n",
                  comparisons=[Comparison(question=_render(ask, notes), chosen=pairwise.format_ordering(pos, neg),
                                          rejected=[pairwise.format_ordering(n, p) for n, p in rejected])],
                  history=history, candidates=[pos, neg], target=pos)


def _generic_sample(prompt: str, chosen: str, rejected: list[str], sid: str, domain: str | None) -> Sample:
    if not prompt.strip():
        raise Rejected("empty prompt")
    if not chosen.strip():
        raise Rejected("empty chosen response")
    if not rejected or not all(isinstance(r, str) and r.strip() for r in rejected):
        raise Rejected("the rejected responses must be non-empty strings")
    if chosen in rejected:
        raise Rejected("the chosen response is also listed as rejected")
    return Sample(id=sid, task=pairwise.TASK.name, domain=domain or "items", prefix=prompt,
                  comparisons=[Comparison(question="", chosen=chosen, rejected=list(rejected))])


def _single_answer(layout: str, prompt: str, answer: str, sid: str, domain: str | None,
                   notes: dict) -> tuple[str, Sample]:
    """A row with one answer and no rejected one (SFT data): usable only as a DMPO <Title:…> ordering, whose
    reverse is the rejected response."""
    if "<Title:" in prompt:
        rec = {"instruction": prompt, "input": "", "output": answer}
        return f"DMPO ({layout}, <Title:…> items)", _dmpo_sample(rec, sid, domain, notes)
    raise Rejected(f"{layout} row with one answer and no rejected response (SFT data), and not a <Title:…> "
                   "ordering whose reverse could serve as one; preference rows carry 'chosen' and 'rejected'")


def _implicit_prompt(chosen, rejected) -> tuple[str, str, list[str]]:
    """TRL's implicit prompt: chosen and rejected are whole conversations (or texts) sharing the prompt. Returns
    (prompt, chosen, rejected). Texts are split after the last whitespace of their common prefix, so a shared
    first part of a word stays with the answers ("…: Heat" / "…: Heavy" -> "…:", "Heat", "Heavy")."""
    rejected = rejected if isinstance(rejected, list) and rejected and not isinstance(rejected[0], dict) \
        else [rejected]
    if isinstance(chosen, str) and all(isinstance(r, str) for r in rejected):
        cut = len(os.path.commonprefix([chosen, *rejected]))
        cut = max((i + 1 for i, c in enumerate(chosen[:cut]) if c.isspace()), default=0)
        if not chosen[:cut].strip():
            raise Rejected("no 'prompt' field, and read as TRL's implicit prompt, 'chosen' and 'rejected' share no "
                           "prompt text before their answers")
        return chosen[:cut].rstrip(), chosen[cut:].strip(), [r[cut:].strip() for r in rejected]
    if isinstance(chosen, list) and all(isinstance(r, list) for r in rejected):
        turns = [_turns(c, k) for c, k in ((chosen, "chosen"), *((r, "rejected") for r in rejected))]
        head = turns[0][:-1]
        if any(t[:-1] != head or not t or t[-1][0] != "assistant" for t in turns):
            raise Rejected("implicit prompt: 'chosen' and 'rejected' must be the same conversation up to one final "
                           "assistant message each")
        return _prompt(head, "chosen"), turns[0][-1][1], [t[-1][1] for t in turns[1:]]
    raise Rejected("implicit prompt: 'chosen' and 'rejected' must both be texts or both be message lists")


def _sharegpt(rec: dict, sid: str, domain: str | None, notes: dict) -> tuple[str, Sample]:
    """LLaMA-Factory sharegpt: `conversations` of {"from", "value"} turns (optional `system`); the preference
    variant ends on the human turn and has `chosen` and `rejected` assistant messages."""
    turns = _turns(rec["conversations"], "conversations")
    system = rec.get("system") if isinstance(rec.get("system"), str) else None
    if "chosen" in rec or "rejected" in rec:
        if "chosen" not in rec or "rejected" not in rec:
            raise Rejected("a sharegpt preference row needs both 'chosen' and 'rejected'")
        prompt = _prompt(turns, "conversations", system)
        rejected = rec["rejected"] if isinstance(rec["rejected"], list) else [rec["rejected"]]  # k messages
        return "LLaMA-Factory sharegpt pairwise", _generic_sample(
            prompt, _answer(rec["chosen"], "chosen"), [_answer(r, "rejected") for r in rejected], sid, domain)
    if not turns or turns[-1][0] != "assistant":
        raise Rejected("a sharegpt row must end with a gpt (assistant) turn, or carry 'chosen' and 'rejected'")
    return _single_answer("LLaMA-Factory sharegpt", _prompt(turns[:-1], "conversations", system), turns[-1][1],
                          sid, domain, notes)


def _alpaca(rec: dict, sid: str, domain: str | None, notes: dict) -> tuple[str, Sample]:
    """LLaMA-Factory alpaca: instruction + input, then `output: [chosen, rejected…]` or `chosen`/`rejected`."""
    prompt = _text(rec, "instruction") + ("\n" + _text(rec, "input") if rec.get("input") else "")
    if "chosen" in rec and "rejected" in rec:
        rejected = rec["rejected"] if isinstance(rec["rejected"], list) else [rec["rejected"]]
        return "LLaMA-Factory alpaca pairwise", _generic_sample(prompt, _text(rec, "chosen"), rejected, sid, domain)
    if "output" not in rec:
        raise Rejected("field 'output' is missing (an alpaca row needs instruction, input, output)")
    text = str(rec.get("instruction", "")) + str(rec.get("input", ""))
    if "<Title:" in text:
        return "DMPO (LLaMA-Factory alpaca, <Title:…> items)", _dmpo_sample(rec, sid, domain, notes)
    out = rec["output"]
    if isinstance(out, str):
        raise Rejected("field 'output' is a single string (an SFT row): there is no rejected response, and it "
                       "is not a <Title:…> ordering whose reverse could serve as one")
    if not isinstance(out, list) or len(out) < 2:
        raise Rejected("field 'output' must be a list [chosen, rejected, …] of at least 2 strings")
    if not all(isinstance(o, str) for o in out):
        raise Rejected("field 'output' holds a non-string")
    return "LLaMA-Factory alpaca pairwise", _generic_sample(prompt, out[0], out[1:], sid, domain)


def _openai_preference(rec: dict, sid: str, domain: str | None) -> tuple[str, Sample]:
    """OpenAI preference fine-tuning: {"input": {"messages"}, "preferred_output": [msg], "non_preferred_output"}."""
    inp = rec["input"]
    if not isinstance(inp, dict) or "messages" not in inp:
        raise Rejected("field 'input' must be an object with 'messages'")
    if inp.get("tools"):
        raise Rejected("field 'input' declares tools; tool calls are not supported")
    prompt = _prompt(_turns(inp["messages"], "input.messages"), "input.messages")
    return "OpenAI preference (input/preferred_output)", _generic_sample(
        prompt, _answer(rec["preferred_output"], "preferred_output"),
        [_answer(rec.get("non_preferred_output"), "non_preferred_output")], sid, domain)


def _trl(rec: dict, sid: str, domain: str | None) -> tuple[str, Sample]:
    """TRL preference with an explicit prompt; `rejected` may be a list (the k-rejected generalisation)."""
    prompt = _messages(rec["prompt"], "user", "prompt")
    chosen = _messages(rec["chosen"], "assistant", "chosen")
    rej = rec["rejected"]
    if isinstance(rej, list) and rej and all(isinstance(r, (str, list)) for r in rej):
        return "k-rejected (prompt/chosen/rejected list)", _generic_sample(
            prompt, chosen, [_messages(r, "assistant", "rejected") for r in rej], sid, domain)
    return "TRL prompt/chosen/rejected", _generic_sample(prompt, chosen, [_messages(rej, "assistant", "rejected")],
                                                         sid, domain)


def record_to_sample(rec, sid: str, domain: str | None, notes: dict) -> tuple[str, Sample]:
    """(layout name, Sample) for one record, or raise Rejected with the reason. The layouts are told apart by
    their keys, most specific first (a sharegpt preference row also has 'chosen' and 'rejected')."""
    if not isinstance(rec, dict):
        raise Rejected(f"a JSON {type(rec).__name__}, expected an object")
    keys = set(rec)
    if "comparisons" in keys:
        try:
            return "prefrec", Sample.from_dict(rec, where=sid)
        except ValueError as e:
            raise Rejected(str(e)) from None
    if keys & {"images", "videos", "audios"} and any(rec[k] for k in keys & {"images", "videos", "audios"}):
        raise Rejected(f"a multimodal row ({sorted(keys & {'images', 'videos', 'audios'})}); text only is supported")
    if "kto_tag" in keys or ({"completion", "label"} <= keys and "chosen" not in keys):
        raise Rejected("an unpaired preference row (KTO: one completion with a good/bad label): prefrec needs a "
                       "chosen and a rejected response to the same prompt")
    if "conversations" in keys:
        return _sharegpt(rec, sid, domain, notes)
    if "instruction" in keys:
        return _alpaca(rec, sid, domain, notes)
    if {"input", "preferred_output"} <= keys:
        return _openai_preference(rec, sid, domain)
    if {"prompt", "chosen", "rejected"} <= keys:
        return _trl(rec, sid, domain)
    if {"chosen", "rejected"} <= keys:
        prompt, chosen, rejected = _implicit_prompt(rec["chosen"], rec["rejected"])
        return "TRL implicit prompt (chosen/rejected)", _generic_sample(prompt, chosen, rejected, sid, domain)
    if "messages" in keys:
        turns = _turns(rec["messages"], "messages")
        if not turns or turns[-1][0] != "assistant":
            raise Rejected("a 'messages' row must end with an assistant message")
        return _single_answer("messages (TRL/OpenAI chat)", _prompt(turns[:-1], "messages"), turns[-1][1], sid,
                              domain, notes)
    if {"prompt", "completion"} <= keys:
        return _single_answer("TRL prompt/completion", _messages(rec["prompt"], "user", "prompt"),
                              _messages(rec["completion"], "assistant", "completion"), sid, domain, notes)
    raise Rejected(f"unknown record layout with keys {sorted(rec)[:8]}; expected alpaca (instruction/input/output), "
                   "sharegpt (conversations), TRL (prompt/chosen/rejected, or chosen/rejected alone), OpenAI "
                   "(messages, or input/preferred_output/non_preferred_output) or a prefrec sample")


def _group(samples: list[Sample]) -> list[Sample]:
    """Merge consecutive DMPO samples with the same prefix and positive into one sample with k comparisons."""
    out: list[Sample] = []
    for s in samples:
        last = out[-1] if out else None
        if (last is not None and s.task == pairwise.TASK.name and last.history and last.prefix == s.prefix
                and last.target == s.target and s.target is not None):
            last.comparisons.extend(s.comparisons)
            last.candidates.extend(c for c in s.candidates if c != s.target)
        else:
            out.append(s)
    return out


def is_datasets_folder(path: Path) -> bool:
    """A folder written by Hugging Face datasets' save_to_disk: a Dataset (state.json) or a DatasetDict."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def require_datasets(what: str):
    """The optional `datasets` package, or UserError saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{what} needs the optional package 'datasets': pip install 'prefrec[datasets]'") from None
    return datasets


def dataset_records(path: Path, split: str | None, report: FileReport) -> list[tuple[str, object]]:
    """(where, row) for every row of a save_to_disk folder (one split of a DatasetDict)."""
    datasets = require_datasets(f"{path}: a Hugging Face datasets folder")
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"{path}: not a readable datasets folder ({e})") from None
    if split is not None:
        data = data[split]
    elif isinstance(data, datasets.DatasetDict):
        raise UserError(f"{path}: a DatasetDict; give one split ({sorted(data)})")
    report.format = f"Hugging Face datasets ({'split ' + split if split else 'Dataset'}, {len(data)} rows)"
    name = f"{path.name}[{split}]" if split else path.name
    return [(f"{name}[{i}]", row) for i, row in enumerate(data)]


def import_file(path: str | Path, *, domain: str | None = None,
                split: str | None = None) -> tuple[list[Sample], FileReport]:
    """Samples from one peer file (or datasets folder, or one `split` of it) + its report. A file-level problem
    raises UserError (caught by import_files)."""
    path = Path(path)
    report = FileReport(file=str(path) + (f"[{split}]" if split else ""))
    if is_datasets_folder(path):
        records = dataset_records(path, split, report)
    elif not path.is_file():
        raise UserError(f"{path}: file not found")
    else:
        records = read_import_records(path, report)
    return _load(path, records, report, domain)


def _load(path: Path, records: list[tuple[str, object]], report: FileReport,
          domain: str | None) -> tuple[list[Sample], FileReport]:
    report.rows = len(records)
    notes: dict = {}
    layouts: dict[str, int] = {}
    loaded: list[Sample] = []
    first: dict[str, str] = {}  # sample id -> where it was first (prefrec rows carry their own ids)
    for i, (where, rec) in enumerate(records):
        try:
            if isinstance(rec, Rejected):
                raise rec
            layout, sample = record_to_sample(rec, f"{path.stem}-{i}", domain, notes)
            if first.setdefault(sample.id, where) != where:  # read_jsonl would refuse the file written
                raise Rejected(f"sample id {sample.id!r} is already used by {first[sample.id]}; ids must be unique")
        except Rejected as e:
            report.rejected.append({"where": where, "reason": str(e)})
            continue
        layouts[layout] = layouts.get(layout, 0) + 1
        loaded.append(sample)
    samples = _group(loaded)
    report.rows_loaded = len(loaded)
    report.samples = len(samples)
    report.comparisons = sum(len(s.comparisons) for s in samples)
    if layouts:
        report.format += "; " + ", ".join(f"{k} ×{v}" for k, v in layouts.items())
    if len(samples) < len(loaded):
        ks = sorted({len(s.comparisons) for s in samples})
        report.notes.append(f"{len(loaded)} rows grouped into {len(samples)} samples (consecutive rows with the same "
                            f"history and positive; comparisons per sample: {ks})")
    if notes.get("genre"):
        report.notes.append(f"', Genre:…' annotations dropped from {notes['genre']} title mentions")
    return samples, report


def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def summary_lines(r: dict, shown: int = 5) -> list[str]:
    """What `prefrec data import` prints for one file of import_report.json: what it imported and what it did not,
    each said once (a whole file refused is "not imported" with its reason; rows refused are counted with the first
    `shown` reasons)."""
    name, bad = Path(r["file"]).name, r["rejected"]
    if r["output"] is None and r.get("reason"):
        return [f"{name}: not imported: {r['reason']}"]
    if r["output"] is None:
        head = f"{name}: not imported: all {_n(len(bad), 'row')} refused"
    else:
        rows = f"{r['rows_loaded']:,} of {_n(r['rows'], 'row')}" if bad else _n(r["rows"], "row")
        head = (f"{name}: imported {rows} -> {_n(r['samples'], 'sample')}"
                + (f"; {_n(len(bad), 'row')} refused" if bad else ""))
    lines = [head] + [f"    {x['where']}: {x['reason']}" for x in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"    ... {len(bad) - shown:,} more in import_report.json")
    return lines


def _splits(folder: Path) -> list[str | None]:
    """The splits of a datasets folder: those dataset_dict.json lists, or [None] for a single Dataset."""
    listing = folder / "dataset_dict.json"
    if not listing.is_file():
        return [None]
    splits = json.loads(listing.read_text(encoding="utf-8")).get("splits")
    if not isinstance(splits, list) or not splits:
        raise UserError(f"{listing}: expected a 'splits' list")
    return [str(x) for x in splits]


def _expand(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """(path, split) sources: a datasets folder gives one per split, another folder its .json/.jsonl files."""
    out: list[tuple[Path, str | None]] = []
    for p in paths:
        p = Path(p)
        if is_datasets_folder(p):
            out.extend((p, split) for split in _splits(p))
        elif p.is_dir():
            out.extend((q, None) for q in sorted(p.iterdir()) if q.is_file() and q.suffix in (".json", ".jsonl"))
        else:
            out.append((p, None))
    return out


OWNER = "data import"  # the command named in the manifest of OUT (io.owning)
REPORT = "import_report.json"


def _destinations(sources: list[tuple[Path, str | None]], out: Path) -> list[Path]:
    """OUT/<stem>.jsonl for each input (OUT/<name>-<split>.jsonl for a datasets folder's split); two inputs with one
    name (a/x.json, b/x.jsonl) are refused, since the second would silently overwrite the first."""
    dests: dict[Path, tuple[Path, str | None]] = {}
    out_paths = []
    for f, split in sources:
        dest = out / (f"{f.name}-{split}.jsonl" if split else f"{f.stem}.jsonl")
        first = dests.setdefault(dest, (f, split))
        if first[0].resolve() != f.resolve() or first[1] != split:
            raise UserError(f"{first[0]} and {f} would both be written to {dest}; import them into different --out "
                            "folders, or rename one")
        out_paths.append(dest)
    return out_paths


def import_files(paths: list[str | Path], out: str | Path, *, domain: str | None = None) -> dict:
    """Import every file (folders are expanded to their .json/.jsonl files; a datasets save_to_disk folder gives
    OUT/<name>-<split>.jsonl per split) into OUT/<name>.jsonl and write OUT/import_report.json. A file that cannot
    be read at all is reported as rejected, with the reason. The report is written last (an earlier one is removed
    first), so a folder with a report holds that import's outputs. OUT is the import's only as far as its manifest
    goes (io.owning): a file there that an earlier import did not write, or an input, is never written or removed."""
    out = Path(out)
    io.check_out_folder(out)
    sources = _expand([Path(p) for p in paths])
    if not sources:
        raise UserError(f"no .json/.jsonl files or datasets folders in {[str(p) for p in paths]}")
    dests = _destinations(sources, out)
    names = [d.name for d in dests] + [REPORT]
    with io.owning(out, OWNER, names=names, inputs=[f for f, _ in sources]):
        io.remove(out / REPORT)
        reports = [_import_one(f, split, dest, domain) for (f, split), dest in zip(sources, dests)]
        result = {"files": [r.__dict__ for r in reports],
                  "total": {"files": len(reports), "files_rejected": sum(r.output is None for r in reports),
                            "samples": sum(r.samples for r in reports),
                            "rows_rejected": sum(len(r.rejected) for r in reports)}}
        io.write_json(out / REPORT, result)
    return result


def _import_one(f: Path, split: str | None, dest: Path, domain: str | None) -> FileReport:
    """Import one file into `dest`; a file with no importable row leaves no `dest` (an earlier import's goes)."""
    try:
        samples, report = import_file(f, domain=domain, split=split)
    except UserError as e:
        samples, report = [], FileReport(file=str(f) + (f"[{split}]" if split else ""), reason=str(e))
    if samples:
        write_samples(dest, samples)
        report.output = str(dest)
        return report
    first = f" (first: {report.rejected[0]['where']}: {report.rejected[0]['reason']})" if report.rejected else ""
    report.reason = report.reason or "no row could be imported" + first
    if dest.is_file():  # an earlier import's output would sit beside a report saying REJECTED
        io.remove(dest)
        report.notes.append(f"removed {dest.name} left by an earlier import of this file")
    return report
