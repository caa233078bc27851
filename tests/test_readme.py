"""The README's Python example runs as written (in a temporary working directory)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert blocks, "README.md has no python example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 12, "keep the front-door example short"
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README) + ":python", "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and re.search(r" \d\.\d{3} ms \(\d\.\d{3}-\d\.\d{3}\) \d+\.\d\d% val$", printed[0]), printed
    assert (tmp_path / "out" / "best.onnx").is_file() and (tmp_path / "out" / "best.onnx.json").is_file()
    assert (tmp_path / "out" / "search" / "best.json").is_file()
