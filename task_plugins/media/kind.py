"""The FileKind of zip uploads: one per modality, each claiming the archives of its kind."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from task_plugins.base import Row
from task_plugins.media import archive
from task_plugins.media.archive import FORMATS, ArchiveLimits, Modality

if TYPE_CHECKING:
    from app.settings import Settings


class MediaArchive:
    """A zip of labelled images (or sounds) as a training file."""

    def __init__(self, modality: Modality) -> None:
        self.modality: Modality = modality
        self.name = FORMATS[modality]

    def claims(self, path: Path, filename: str) -> bool:
        if not archive.claims(path, filename):
            return False
        try:
            with zipfile.ZipFile(path) as opened:
                names = [info.filename for info in opened.infolist() if not info.is_dir()]
        except (zipfile.BadZipFile, OSError, ValueError):
            # unreadable: the image kind claims it and refuses it with the reason
            return self.modality == "image"
        found = archive.detect_modality(names)
        return found == self.modality or (found is None and self.modality == "image")

    def inspect(
        self,
        path: Path,
        filename: str,
        max_errors: int,
        min_examples: int,
        settings: Settings | None = None,
    ) -> Any:
        from app.files.formats import FileReport

        limits = ArchiveLimits.of(settings) if settings is not None else None
        found, stats = archive.inspect(path, max_problems=max(max_errors, 1), limits=limits)
        problems = list(found.problems)
        if 0 < len(found.examples) < min_examples:
            problems.insert(
                0,
                {
                    "line": 0,
                    "path": "",
                    "message": f"the archive has {len(found.examples)} examples; fine-tuning "
                    f"needs at least {min_examples}: add examples",
                },
            )
        ok = not problems and bool(found.examples)
        details = None
        if not ok:
            if not problems:
                problems = [{"line": 0, "path": "", "message": "the archive has no examples"}]
            details = _summary(problems)
        return FileReport(
            FORMATS[found.modality] if found.modality else None,
            stats,
            problems[:max_errors],
            ok,
            details,
        )

    def recheck(self, path: Path, settings: Settings | None = None) -> None:
        limits = ArchiveLimits.of(settings) if settings is not None else None
        archive.open_archive(path, limits).close()

    def read(self, path: Path, filename: str) -> tuple[str, list[Row]]:
        from app.files.formats import DatasetError

        found = archive.scan(path, verify=False)
        if found.problems or not found.examples or found.modality is None:
            problems = found.problems or [{"line": 0, "message": "the archive has no examples"}]
            raise DatasetError([{"line": 0, "message": _where(p) + p["message"]} for p in problems])
        return FORMATS[found.modality], archive.rows(path, found)


def _where(problem: dict[str, Any]) -> str:
    return f"{problem['path']}: " if problem.get("path") else ""


def _summary(problems: list[dict[str, Any]]) -> str:
    first = problems[0]
    more = len(problems) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{_where(first)}{first['message']}{suffix}"


IMAGE_ARCHIVE = MediaArchive("image")
AUDIO_ARCHIVE = MediaArchive("audio")
