"""Every curl in the README, run with the real curl against a real server serving what a default
``make run`` serves, answers the JSON the README shows: floats within 1e-5, ids and times
ignored. A list the README cuts short (``"..."``, ``"... 384 in all"``) is compared as far as it
goes (and by its length, where it says it).

The examples under "Rerankers, other families, prompts" name models that ``make run`` does not
serve; they go to a second server that serves those too: the tests' tiny random cross-encoder
as ``my-reranker`` and the tiny BERT model as ``tiny-bert``. Those models are built afresh on
each machine and their scores differ from one build to the next (their tokenizers are trained
there), so their floats are not compared, nor the order of a ranking (which follows those
scores: it is checked to be by descending score, then compared by ``index``); everything else is.

The examples under "Managing models at run time" go, in order, to a third server with an admin
key and a repository of its own; what an export and a machine make differently (a bundle's size
and sha256, when it was registered, what loading it added to memory) is not compared there.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.e2e.conftest import Server, serving

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DEFAULT_MODELS = ("all-MiniLM-L6-v2", "splade-tiny")  # the Makefile's SERVED
OTHER_SECTION = "## Rerankers, other families, prompts"
ADMIN_SECTION = "## Managing models at run time"
IGNORED = {"id", "request_id", "created", "ts"}
MACHINE_MADE = {"size_bytes", "sha256", "rss_added_bytes"}  # ignored in ADMIN_SECTION
ELLIPSIS = re.compile(r"^\.\.\.(?: (\d+) in all)?$")


@dataclass(frozen=True)
class Example:
    line: int
    command: str
    expected: Any
    section: str

    @property
    def other_models(self) -> bool:
        return self.section == OTHER_SECTION


def examples() -> list[Example]:
    """Each curl in a bash block of the README, with the JSON shown after it: a ``# {...}``
    comment (on its line or the lines after) or the json block right after its bash block."""
    lines = README.read_text(encoding="utf-8").splitlines()
    found: list[Example] = []
    section = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i]
        if lines[i] != "```bash":
            i += 1
            continue
        end = lines.index("```", i + 1)
        block = lines[i + 1 : end]
        after = lines[end + 1 : end + 2]
        json_block = None
        if after == ["```json"]:
            close = lines.index("```", end + 2)
            json_block = "\n".join(lines[end + 2 : close])
        j = 0
        while j < len(block):
            if not block[j].startswith("curl "):
                j += 1
                continue
            start = j
            command = block[j]
            while command.rstrip().endswith("\\") or _open_quote(command):
                j += 1
                command = command.rstrip().removesuffix("\\") + " " + block[j].strip()
            command, _, comment = command.partition("  # ")
            if comment.startswith("{"):
                expected_text = comment
            else:
                comments = []
                while j + 1 < len(block) and block[j + 1].startswith("#"):
                    j += 1
                    comments.append(block[j][2:] if block[j].startswith("# ") else block[j][1:])
                expected_text = "".join(comments) or json_block or ""
            if expected_text.startswith(("{", "[")):
                found.append(Example(i + 2 + start, command, json.loads(expected_text), section))
            j += 1
        i = end + 1
    return found


def _open_quote(command: str) -> bool:
    try:
        shlex.split(command)
    except ValueError:
        return True
    return False


def _ranking(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and {"index", "score"} <= item.keys() for item in items)


def same(
    expected: Any,
    actual: Any,
    where: str = "",
    floats: bool = True,
    ignored: frozenset[str] | set[str] = IGNORED,
) -> list[str]:
    """Where ``actual`` differs from what the README shows (its floats too, if ``floats``), but
    for the fields ``ignored``."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: {actual!r} is not an object"]
        problems = [f"{where}.{k}: missing" for k in expected if k not in actual]
        problems += [f"{where}.{k}: not in the README" for k in actual if k not in expected]
        for key in expected.keys() & actual.keys():
            if key not in ignored:
                problems += same(expected[key], actual[key], f"{where}.{key}", floats, ignored)
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: {actual!r} is not a list"]
        cut = expected and isinstance(expected[-1], str) and ELLIPSIS.match(expected[-1])
        if cut:
            shown = expected[:-1]
            if cut.group(1) and len(actual) != int(cut.group(1)):
                return [f"{where}: {len(actual)} items, the README says {cut.group(1)}"]
            if len(actual) < len(shown):
                return [f"{where}: {len(actual)} items, fewer than the README shows"]
            actual = actual[: len(shown)]
            expected = shown
        if len(expected) != len(actual):
            return [f"{where}: {len(actual)} items, the README shows {len(expected)}"]
        if not floats and _ranking(expected) and _ranking(actual):
            scores = [item["score"] for item in actual]
            if scores != sorted(scores, reverse=True):
                return [f"{where}: scores {scores} are not in descending order"]
            expected = sorted(expected, key=lambda item: item["index"])
            actual = sorted(actual, key=lambda item: item["index"])
        problems = []
        for index, (e, a) in enumerate(zip(expected, actual, strict=True)):
            problems += same(e, a, f"{where}[{index}]", floats, ignored)
        return problems
    if isinstance(expected, float) or isinstance(actual, float):
        close = not floats or math.isclose(expected, actual, abs_tol=1e-5)
        ok = isinstance(actual, int | float) and close
        return [] if ok else [f"{where}: {actual!r}, the README shows {expected!r}"]
    return [] if expected == actual else [f"{where}: {actual!r}, the README shows {expected!r}"]


@pytest.fixture(scope="module")
def default_server(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    models = ",".join(str(ROOT / "models" / name) for name in DEFAULT_MODELS)
    with serving(settings, tmp_path_factory.mktemp("readme"), EMBED_MODELS=models) as running:
        yield running


@pytest.fixture(scope="module")
def other_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("readme-other")
    reranker = folder / "my-reranker"
    shutil.copytree(ROOT / "models" / ".tiny" / "tiny-cross-encoder", reranker)
    tiny_bert = ROOT / "models" / ".tiny" / "tiny-bert"
    models = [ROOT / "models" / DEFAULT_MODELS[0], reranker, tiny_bert]
    with serving(settings, folder, EMBED_MODELS=",".join(map(str, models))) as running:
        yield running


@pytest.fixture(scope="module")
def admin_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("readme-admin")
    models = ",".join(str(ROOT / "models" / name) for name in DEFAULT_MODELS)
    with serving(
        settings,
        folder,
        EMBED_MODELS=models,
        EMBED_ADMIN_KEYS="admin-key",
        EMBED_REPOSITORY=str(folder / "repository"),
    ) as running:
        yield running


SERVERS = {OTHER_SECTION: "other_server", ADMIN_SECTION: "admin_server"}
EXAMPLES = examples()


def test_the_readme_shows_curl_examples() -> None:
    assert len(EXAMPLES) >= 10
    assert any(e.other_models for e in EXAMPLES)
    assert sum(e.section == ADMIN_SECTION for e in EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"line {e.line}" for e in EXAMPLES])
def test_each_readme_curl_answers_what_the_readme_shows(
    example: Example, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(SERVERS.get(example.section, "default_server"))
    command = example.command.replace("localhost:8000", server.url.removeprefix("http://"))
    done = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True, cwd=ROOT
    )
    actual = json.loads(done.stdout)
    ignored = IGNORED | MACHINE_MADE if example.section == ADMIN_SECTION else IGNORED
    problems = same(example.expected, actual, floats=not example.other_models, ignored=ignored)
    assert not problems, f"README line {example.line}: {problems}\nactual: {done.stdout}"
