"""Shared by the bench scripts: the machine's description and rows appended to bench/RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    info = Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {gpu}"


def append_row(section: str, header: list[str], row: list[str], results: Path = RESULTS) -> None:
    """Add ``row`` at the end of the table under ``## section`` in ``results`` (made with ``header`` if new)."""
    results = Path(results)
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    lines = text.rstrip("\n").split("\n")
    title = f"## {section}"
    line = "| " + " | ".join(row) + " |"
    if title not in lines:
        lines += ["", title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header), line]
    else:
        i = lines.index(title) + 1
        while i < len(lines) and not lines[i].startswith("## "):
            i += 1
        while lines[i - 1].strip() == "":
            i -= 1
        lines.insert(i, line)
    results.write_text("\n".join(lines) + "\n")
