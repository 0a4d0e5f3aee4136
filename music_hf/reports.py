"""The report writer `music-hf evaluate` and `music-hf bench` share: one section of BENCHMARKS.md, opened by
facts measured about the run (command, wall time, machine, torch threads, load) and made of generated tables."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from .evaluation import machine_description, machine_line, markdown_table, update_markdown_section


class Report:
    """The lines of one section; `machine` is measured when the run starts, the load again when it is written."""

    def __init__(self, command: str, device: Any) -> None:
        self.command = command
        self.machine = machine_description(device)
        self.start = time.perf_counter()
        self.lines: list[str] = []

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def heading(self, title: str) -> None:
        self.lines += [f"### {title}", ""]

    def text(self, *sentences: str) -> None:
        self.lines += [" ".join(sentences), ""]

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> None:
        self.lines += [markdown_table(headers, rows, digits), ""]

    def bullets(self, items: Sequence[str]) -> None:
        self.lines += [f"- {item}" for item in items] + [""]

    def write(self, path: str | os.PathLike, title: str, settings: str) -> None:
        """Rewrite the section `## title` of the Markdown file at `path` (other sections stay)."""
        end_load = f" 1-min load average at the end {os.getloadavg()[0]:.2f}." if hasattr(os, "getloadavg") else ""
        head = (f"Produced by `{self.command}` in {self.seconds / 60:.1f} min ({settings}). Machine: "
                f"{machine_line(self.machine)}{end_load}")
        update_markdown_section(path, title, "\n".join([head, "", *self.lines]))


__all__ = ["Report"]
