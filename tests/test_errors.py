"""prefrec.errors: how a user error reaches the terminal (`printable`, used by every command's `error:` line)."""

from typer.testing import CliRunner

from prefrec.cli import app
from prefrec.errors import did_you_mean, printable


def test_printable_escapes_control_characters_and_keeps_lines():
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"  # an escape sequence is shown, not run by the terminal
    assert printable("line 1\n\tline 2 é") == "line 1\n\tline 2 é"
    assert printable("\x07\u200b") == "\\x07\\u200b"


def test_printable_caps_the_length_and_says_how_much_was_left_out():
    assert printable("x" * 10, limit=10) == "x" * 10
    assert printable("x" * 2500, limit=2000) == "x" * 2000 + "… (500 more characters)"


def test_a_crafted_path_reaches_the_terminal_escaped_and_bounded(tmp_path):
    """Before: the error line echoed the path as given, its escape sequence and all of its 3,000 characters."""
    crafted = str(tmp_path / "\x1b[2J") + "/x" * 1500
    r = CliRunner().invoke(app, ["data", "stats", crafted])
    assert r.exit_code == 2 and r.output.startswith("error: ")
    assert "\x1b" not in r.output and "\\x1b[2J" in r.output
    assert len(r.output) < 2100 and "more characters)" in r.output


def test_did_you_mean_names_the_closest_known_name():
    assert did_you_mean("dmpp", ["dpo", "dmpo", "sft"]) == "; did you mean 'dmpo'?"
    assert did_you_mean("zzz", ["dpo", "dmpo"]) == ""
