"""The documentation against the code: every `python main.py` line and every relative link.

Reads README.md and docs/*.md. A command line must name a command of `main.COMMANDS`
and only flags of `main.command_flags(command)`; a `--recipe=NAME` must name one of
`alexnet_tf.config.RECIPES`. A relative link must reach a file and, with `#anchor`,
a heading of that file (GitHub's anchor rules). No TensorFlow is imported.
"""

from __future__ import annotations

import collections
import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))

# absl's own flags, accepted by every command and not in `main.command_flags`.
ABSL_FLAGS = frozenset({"help", "helpshort", "helpfull", "helpxml", "h", "verbosity", "v",
                        "logtostderr", "alsologtostderr", "log_dir", "stderrthreshold"})
# Every command takes --onednn (how the process runs).
PROCESS_FLAGS = frozenset({"onednn"})

_CLI = re.compile(r"\bpython3? main\.py\b")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`([^`]+)`")
# Where a shell command ends: a pipe, a list operator, a redirection, a comment.
_COMMAND_END = re.compile(r"\s(?:&&|\|\||\||;|>|2>|#)(?:\s|$)")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _blocks(text: str):
    """Splits markdown into ("code", lines) fenced blocks and ("text", paragraph) pieces."""
    code, lines, paragraph = False, [], []
    for line in text.splitlines():
        if _FENCE.match(line):
            if code:
                yield "code", lines
                lines = []
            elif paragraph:
                yield "text", "\n".join(paragraph)
                paragraph = []
            code = not code
        elif code:
            lines.append(line)
        elif line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "text", "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "text", "\n".join(paragraph)
    assert not code, "unclosed code fence"


def _commands_in(text: str) -> list[str]:
    """The `python main.py ...` commands of one logical line or code span, one string each."""
    found = []
    matches = list(_CLI.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        command = text[match.start():end]
        stop = _COMMAND_END.search(command)
        found.append(" ".join((command[:stop.start()] if stop else command).split()))
    return found


def extract_commands(text: str) -> list[str]:
    """Every `python main.py ...` command of a markdown text.

    Fenced code: lines ending in a backslash continue on the next line. Elsewhere
    (paragraphs, lists, tables): code spans, which may run over line breaks, and
    any `python main.py` left outside a code span up to the end of its line.
    """
    found = []
    for kind, body in _blocks(text):
        if kind == "code":
            logical, pending = [], ""
            for line in body:
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                else:
                    logical.append(pending + line)
                    pending = ""
            if pending:
                logical.append(pending)
            for line in logical:
                found += _commands_in(line)
        else:
            for span in _CODE_SPAN.findall(body):
                found += _commands_in(span)
            for line in _CODE_SPAN.sub(" ", body).splitlines():
                found += _commands_in(line)
    return found


def check_command(command: str, commands, command_flags, recipes) -> list[str]:
    """What is wrong with one `python main.py ...` command ([] when nothing is).

    Args:
        command: the command line, starting with `python main.py`.
        commands: the command names (`main.COMMANDS`).
        command_flags: command name -> the flag names it accepts, without dashes.
        recipes: the recipe names (`alexnet_tf.config.RECIPES`).
    """
    words = [w.strip("[]'\"") for w in command.split()[2:]]
    words = [w for w in words if w]
    positional = [w for w in words if not w.startswith("-")]
    if not positional or positional[0] not in commands:
        name = positional[0] if positional else "(none)"
        return [f"unknown command {name!r} in: {command}"]
    name = positional[0]
    accepted = set(command_flags(name)) | ABSL_FLAGS | PROCESS_FLAGS
    problems = []
    for word in words:
        if not word.startswith("-"):
            continue
        flag, _, value = word.lstrip("-").partition("=")
        if flag not in accepted and not (flag.startswith("no") and flag[2:] in accepted):
            problems.append(f"{name} does not take --{flag}: {command}")
        if flag == "recipe" and value not in recipes:
            problems.append(f"unknown recipe {value!r}: {command}")
    return problems


@pytest.fixture(scope="module")
def cli():
    """(commands, command_flags, recipes) from the CLI's own tables."""
    import main
    from alexnet_tf import config
    return tuple(main.COMMANDS), main.command_flags, tuple(config.RECIPES)


def _all_commands() -> list[tuple[str, str]]:
    found = []
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            found += [(_rel(path), c) for c in extract_commands(f.read())]
    return found


def test_extract_commands_reads_continuations_spans_and_tables():
    text = "\n".join([
        "Run `python main.py evaluate",
        "  --model_dir=RUN --tta=10crop` then:",
        "",
        "| a | `python main.py predict --artifact=A x.jpg` |",
        "",
        "```bash",
        "python main.py train --recipe=cifar10 \\",
        "  --epochs=3 --model_dir=runs/x   # a comment --not_a_flag",
        "python main.py export --model_dir=R && \\",
        "python main.py predict --artifact=R/export/m cat.jpg | head",
        "```",
    ])
    assert extract_commands(text) == [
        "python main.py evaluate --model_dir=RUN --tta=10crop",
        "python main.py predict --artifact=A x.jpg",
        "python main.py train --recipe=cifar10 --epochs=3 --model_dir=runs/x",
        "python main.py export --model_dir=R",
        "python main.py predict --artifact=R/export/m cat.jpg",
    ]


def test_checker_flags_bad_lines(cli):
    commands, command_flags, recipes = cli
    assert check_command("python main.py export --learning_rate=0.3", *cli)
    assert check_command("python main.py evaluate --model=cifar --model_dir=R", *cli)
    assert check_command("python main.py fly --model_dir=R", *cli)
    assert check_command("python main.py train --recipe=no-such-recipe", *cli)
    assert check_command("python main.py --model_dir=R", *cli)
    assert not check_command("python main.py train --recipe=cifar10 --nocache --onednn=on", *cli)


def test_docs_command_lines_use_real_commands_flags_and_recipes(cli):
    found = _all_commands()
    # A parser that finds nothing must not pass: the docs hold dozens of command lines.
    assert len(found) >= 40, f"only {len(found)} `python main.py` lines found"
    used = collections.Counter(c.split()[2] for _, c in found if len(c.split()) > 2)
    for command in ("train", "evaluate", "export", "predict", "prepare", "benchmark", "convert",
                    "recipes"):
        assert used[command], f"no `python main.py {command}` line in the docs"
    problems = [f"{path}: {p}" for path, c in found for p in check_command(c, *cli)]
    assert not problems, "\n".join(problems)


def test_recipes_are_documented(cli):
    _, _, recipes = cli
    for recipe in recipes:
        assert any(f"--recipe={recipe} " in c + " " for _, c in _all_commands()), recipe


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation out, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a markdown text's headings (outside code), duplicates numbered as GitHub does."""
    seen, result = collections.Counter(), set()
    code = False
    for line in text.splitlines():
        if _FENCE.match(line):
            code = not code
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if code or not match:
            continue
        anchor = github_anchor(match.group(1))
        result.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
        seen[anchor] += 1
    return result


def _links(text: str) -> list[str]:
    """The link targets of a markdown text, code blocks and code spans left out."""
    targets = []
    for kind, body in _blocks(text):
        if kind == "text":
            targets += _LINK.findall(_CODE_SPAN.sub(" ", body))
    return targets


def test_github_anchor_rules():
    assert github_anchor("Accuracy: the `cifar` model on CIFAR-10 (2-core CPU)") == \
        "accuracy-the-cifar-model-on-cifar-10-2-core-cpu"
    assert github_anchor("Pretrained weights (torchvision)") == "pretrained-weights-torchvision"
    assert github_anchor("Beyond one machine (tf.distribute)") == "beyond-one-machine-tfdistribute"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_relative_links_resolve():
    problems, checked = [], 0
    for path in DOCS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for target in _links(text):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
            if not os.path.exists(linked):
                problems.append(f"{_rel(path)}: {target}: no file {_rel(linked)}")
                continue
            if anchor:
                if not linked.endswith(".md"):
                    problems.append(f"{_rel(path)}: {target}: an anchor into a file that is not markdown")
                    continue
                with open(linked, encoding="utf-8") as f:
                    if anchor not in anchors(f.read()):
                        problems.append(f"{_rel(path)}: {target}: no heading #{anchor} in {_rel(linked)}")
    assert checked >= 10, f"only {checked} relative links found"
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_file():
    with open(DOCS[0], encoding="utf-8") as f:
        targets = {t.partition("#")[0] for t in _links(f.read())}
    missing = [_rel(p) for p in DOCS[1:] if _rel(p) not in targets]
    assert not missing, f"README.md links no page of: {missing}"
