"""Zip uploads of images or sounds with a label each: refuse hostile archives, find the
layout, check every file, and list the examples (torch-free; the API runs it at upload).

The archive is never extracted: the upload is stored as it came (streamed to disk by the
files service), each member is read straight from the zip when it is checked or trained on,
and a refused archive is deleted whole by the service, so nothing partial is ever left.
Two layouts, found from the contents:

- folders: `<label>/<file>`, optionally all under one top folder (torchvision's
  ImageFolder, SageMaker);
- metadata: `metadata.jsonl` or `metadata.csv` with `file_name` and `label` columns, the
  file names relative to the metadata's folder (Hugging Face imagefolder/audiofolder, H2O).
"""

from __future__ import annotations

import csv
import io
import json
import stat
import warnings
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Literal

from task_plugins.base import Row, UploadRefused

if TYPE_CHECKING:
    from app.settings import Settings

Modality = Literal["image", "audio"]
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg"})
EXTENSIONS: dict[Modality, frozenset[str]] = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS}
FORMATS: dict[Modality, str] = {
    "image": "image-classification",
    "audio": "audio-classification",
}
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")

MAX_METADATA_BYTES = 64 * 1024**2
# An image over this many pixels is refused (Pillow's decompression-bomb guard, made an error).
MAX_IMAGE_PIXELS = 12_000 * 12_000
MIN_PER_CLASS = 2

_JUNK_DIRS = ("__MACOSX/",)
_JUNK_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class ArchiveLimits:
    """Hostile-archive limits (TUNERY_ARCHIVE_* settings, app/settings.py). A member's declared
    size bounds what reading it can produce (zipfile stops at file_size), so checking the
    central directory is enough."""

    max_entries: int
    max_total_bytes: int
    max_member_bytes: int
    # unpacked / packed size of one member; only members over 1 MiB are held to it
    max_ratio: float

    @classmethod
    def of(cls, settings: Settings) -> ArchiveLimits:
        return cls(
            max_entries=settings.archive_max_entries,
            max_total_bytes=settings.archive_max_total_bytes,
            max_member_bytes=settings.archive_max_member_bytes,
            max_ratio=settings.archive_max_ratio,
        )

    @classmethod
    def from_env(cls) -> ArchiveLimits:
        """The limits this process was configured with (TUNERY_ARCHIVE_*, else defaults)."""
        from app.settings import get_settings

        return cls.of(get_settings())


# media types of the extensions an archive's examples may have (the samples route sends them)
MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
}


@dataclass
class Example:
    member: str
    label: str


@dataclass
class Scan:
    """What one look at an archive found: the examples and the problems by path."""

    modality: Modality | None
    layout: str | None
    examples: list[Example] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    empty_labels: list[str] = field(default_factory=list)

    def problem(self, path: str, message: str) -> None:
        self.problems.append({"line": 0, "path": path, "message": message})


def claims(path: Path, filename: str) -> bool:
    """A .zip by name, or anything that starts like one."""
    if filename.lower().endswith(".zip"):
        return True
    try:
        with open(path, "rb") as stream:
            return stream.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def open_archive(source: Path | IO[bytes], limits: ArchiveLimits | None = None) -> zipfile.ZipFile:
    """The archive (a path, or a seekable stream such as the artifact store's), checked for
    everything hostile; raises UploadRefused."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadRefused(
            f"the upload is not a readable zip archive ({exc}); zip it again"
        ) from exc
    try:
        check_hostile(archive, limits or ArchiveLimits.from_env())
    except BaseException:
        archive.close()
        raise
    return archive


def check_hostile(archive: zipfile.ZipFile, limits: ArchiveLimits) -> None:
    """Refuse path traversal, absolute paths, links, bombs and too many entries."""
    infos = archive.infolist()
    if len(infos) > limits.max_entries:
        raise UploadRefused(
            f"the archive has {len(infos)} entries; at most {limits.max_entries} are allowed "
            "(TUNERY_ARCHIVE_MAX_ENTRIES): split the dataset into several archives"
        )
    total = 0
    for info in infos:
        name = info.filename
        check_member_name(name)
        mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(mode):
            raise UploadRefused(
                f"{name!r} is a symbolic link; archives may hold only plain files and folders "
                "(zip without --symlinks)"
            )
        if info.flag_bits & 0x1:
            raise UploadRefused(f"{name!r} is encrypted; zip the dataset without a password")
        if info.file_size > limits.max_member_bytes:
            raise UploadRefused(
                f"{name!r} unpacks to {info.file_size} bytes; a file may be at most "
                f"{limits.max_member_bytes} bytes (TUNERY_ARCHIVE_MAX_MEMBER_BYTES)"
            )
        if (
            info.file_size > limits.max_ratio * max(info.compress_size, 1)
            and info.file_size > 1 << 20
        ):
            raise UploadRefused(
                f"{name!r} unpacks to {info.file_size} bytes from {info.compress_size} "
                f"(over {limits.max_ratio:g}x, TUNERY_ARCHIVE_MAX_RATIO): refused as a zip bomb"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise UploadRefused(
                f"the archive unpacks to more than {limits.max_total_bytes} bytes "
                "(TUNERY_ARCHIVE_MAX_TOTAL_BYTES); split the dataset into several archives"
            )


def check_member_name(name: str) -> None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UploadRefused(f"{name!r} is an absolute path; archive paths must be relative")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UploadRefused(f"{name!r} climbs out of the archive with '..'; refused")
    if "\x00" in name:
        raise UploadRefused(f"{name!r} has a NUL character in its name; refused")


def scan(
    source: Path | IO[bytes],
    *,
    verify: bool,
    max_problems: int = 1000,
    limits: ArchiveLimits | None = None,
) -> Scan:
    """The examples of an archive (raises UploadRefused for a hostile one); with `verify`,
    every file is decoded and its size or duration collected by `media_stats`."""
    with open_archive(source, limits) as archive:
        return _scan(archive, verify=verify, max_problems=max_problems)[0]


def inspect(
    path: Path, *, max_problems: int, limits: ArchiveLimits | None = None
) -> tuple[Scan, dict[str, Any]]:
    """The scan and the upload's stats (counts per class, sizes or durations)."""
    with open_archive(path, limits) as archive:
        return _scan(archive, verify=True, max_problems=max_problems)


def samples(found: Scan, per_class: int) -> list[tuple[int, Example]]:
    """The first `per_class` examples of each class, by label, each with its index in the
    scan (the index the samples route and the trainer's rows use)."""
    taken: dict[str, list[tuple[int, Example]]] = defaultdict(list)
    for index, example in enumerate(found.examples):
        if len(taken[example.label]) < per_class:
            taken[example.label].append((index, example))
    return [pair for label in sorted(taken) for pair in taken[label]]


def media_type(member: str) -> str:
    return MEDIA_TYPES.get(PurePosixPath(member).suffix.lower(), "application/octet-stream")


def _scan(
    archive: zipfile.ZipFile, *, verify: bool, max_problems: int
) -> tuple[Scan, dict[str, Any]]:
    files = [
        info.filename
        for info in archive.infolist()
        if not info.is_dir() and not _is_junk(info.filename)
    ]
    dirs = [info.filename.rstrip("/") for info in archive.infolist() if info.is_dir()]
    metadata = _find_metadata(files)
    modality = detect_modality(files)
    result = Scan(modality, "metadata" if metadata else "folders")
    if modality is None:
        result.layout = None
        result.problem(
            "",
            "the archive holds no images ("
            + ", ".join(sorted(IMAGE_EXTENSIONS))
            + ") or sounds ("
            + ", ".join(sorted(AUDIO_EXTENSIONS))
            + ")",
        )
        return result, {}
    if metadata:
        _from_metadata(archive, metadata, files, modality, result)
    else:
        _from_folders(files, dirs, modality, result)
    counts = Counter(example.label for example in result.examples)
    for label in sorted(counts):
        if counts[label] < MIN_PER_CLASS:
            result.problem(
                label,
                f"class {label!r} has {counts[label]} example; each class needs at least "
                f"{MIN_PER_CLASS}: add examples or remove the class",
            )
    for label in result.empty_labels:
        result.problem(label, f"class {label!r} has no files: add some or remove the folder")
    stats: dict[str, Any] = {
        "rows": len(result.examples),
        "layout": result.layout,
        "modality": modality,
        "labels": dict(sorted(counts.items())),
    }
    if verify:
        stats.update(_verify(archive, result, modality, max_problems))
    return result, stats


def _is_junk(name: str) -> bool:
    base = PurePosixPath(name).name
    return (
        name.startswith(_JUNK_DIRS)
        or "/__MACOSX/" in name
        or base in _JUNK_NAMES
        or (base.startswith("._"))
    )


def detect_modality(files: list[str]) -> Modality | None:
    counts = Counter[Modality]()
    for name in files:
        if _is_junk(name):
            continue
        suffix = PurePosixPath(name).suffix.lower()
        for modality, extensions in EXTENSIONS.items():
            if suffix in extensions:
                counts[modality] += 1
    if not counts:
        return None
    # the majority decides; the other kind's files are reported as unsupported
    return counts.most_common(1)[0][0]


def _find_metadata(files: list[str]) -> str | None:
    """metadata.jsonl/csv at the top, or under the one top folder (the shallowest wins)."""
    found = [name for name in files if PurePosixPath(name).name.lower() in METADATA_NAMES]
    if not found:
        return None
    return min(found, key=lambda name: (name.count("/"), name))


def _unsupported(name: str, modality: Modality) -> str:
    allowed = ", ".join(sorted(EXTENSIONS[modality]))
    suffix = PurePosixPath(name).suffix or "(none)"
    return f"unsupported extension {suffix!r}; an {modality} dataset takes {allowed}"


def _from_folders(files: list[str], dirs: list[str], modality: Modality, result: Scan) -> None:
    top = _common_top(files)
    strip = len(top) + 1 if top else 0
    seen_labels: set[str] = set()
    for name in files:
        inner = name[strip:]
        if "/" not in inner:
            result.problem(
                name,
                "a file outside any class folder; put each file in a folder named after its "
                "label (<label>/<file>), or add a metadata.jsonl with file_name and label",
            )
            continue
        label = inner.split("/", 1)[0]
        if PurePosixPath(name).suffix.lower() not in EXTENSIONS[modality]:
            result.problem(name, _unsupported(name, modality))
            continue
        seen_labels.add(label)
        result.examples.append(Example(name, label))
    for directory in dirs:
        inner = directory[strip:] if directory.startswith(top) else directory
        if (
            inner
            and "/" not in inner
            and inner not in seen_labels
            and not _is_junk(directory + "/")
        ) and not any(n.startswith(directory + "/") for n in files):
            result.empty_labels.append(inner)


def _common_top(files: list[str]) -> str:
    """The one folder every file is under, when that folder holds only class folders."""
    firsts = {name.split("/", 1)[0] for name in files}
    if len(firsts) != 1 or not all("/" in name for name in files):
        return ""
    top = next(iter(firsts))
    # under the top folder, files must still sit in class folders for it to be a wrapper
    inner = [name[len(top) + 1 :] for name in files]
    return top if any("/" in name for name in inner) else ""


def _from_metadata(
    archive: zipfile.ZipFile, metadata: str, files: list[str], modality: Modality, result: Scan
) -> None:
    info = archive.getinfo(metadata)
    if info.file_size > MAX_METADATA_BYTES:
        raise UploadRefused(f"{metadata} is over {MAX_METADATA_BYTES} bytes")
    folder = str(PurePosixPath(metadata).parent)
    prefix = "" if folder == "." else folder + "/"
    present = set(files)
    listed: set[str] = set()
    text = archive.read(metadata).decode("utf-8-sig", "replace")
    for line, row in _metadata_rows(metadata, text, result):
        file_name, label = row.get("file_name"), row.get("label")
        if not isinstance(file_name, str) or not file_name.strip():
            result.problem(f"{metadata}:{line}", "'file_name' must be a non-empty string")
            continue
        if isinstance(label, bool) or not isinstance(label, str | int) or not str(label).strip():
            result.problem(f"{metadata}:{line}", "'label' must be a non-empty string or integer")
            continue
        member = prefix + file_name.strip().lstrip("./")
        try:
            check_member_name(file_name)
        except UploadRefused as exc:
            result.problem(f"{metadata}:{line}", str(exc))
            continue
        if member not in present:
            result.problem(member, f"listed in {metadata} line {line} but not in the archive")
            continue
        if PurePosixPath(member).suffix.lower() not in EXTENSIONS[modality]:
            result.problem(member, _unsupported(member, modality))
            continue
        listed.add(member)
        result.examples.append(Example(member, str(label).strip()))
    for name in files:
        if name == metadata or name in listed or not name.startswith(prefix):
            continue
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in EXTENSIONS[modality]:
            result.problem(name, f"not listed in {metadata}: add a row for it or remove it")
        elif PurePosixPath(name).name.lower() not in METADATA_NAMES:
            result.problem(name, _unsupported(name, modality))


def _metadata_rows(metadata: str, text: str, result: Scan) -> list[tuple[int, dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    if metadata.lower().endswith(".jsonl"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                result.problem(f"{metadata}:{number}", f"invalid JSON: {exc}")
                continue
            if not isinstance(row, dict):
                result.problem(f"{metadata}:{number}", "each line must be a JSON object")
                continue
            rows.append((number, row))
        return rows
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for record in reader:
        if not record:
            continue
        if header is None:
            header = [cell.strip().lower() for cell in record]
            if not {"file_name", "label"} <= set(header):
                result.problem(
                    f"{metadata}:{reader.line_num}",
                    f"the header must name the columns file_name and label, got {','.join(header)}",
                )
                return []
            continue
        rows.append((reader.line_num, dict(zip(header, record, strict=False))))
    return rows


def _verify(
    archive: zipfile.ZipFile, result: Scan, modality: Modality, max_problems: int
) -> dict[str, Any]:
    """Decode every example; drop the unreadable ones (as problems); collect sizes."""
    good: list[Example] = []
    per_class: dict[str, list[tuple[float, ...]]] = defaultdict(list)
    for example in result.examples:
        if len(result.problems) >= max_problems:
            good.append(example)
            continue
        try:
            with archive.open(example.member) as stream:
                facts = image_facts(stream) if modality == "image" else audio_facts(stream)
        except Exception as exc:  # Pillow and libsndfile raise many types for a bad file
            result.problem(example.member, f"unreadable or corrupt {modality}: {_short(exc)}")
            continue
        per_class[example.label].append(facts)
        good.append(example)
    result.examples = good
    if modality == "image":
        sizes = [facts for values in per_class.values() for facts in values]
        return {
            "image_sizes": {
                label: _ranges(values, ("width", "height")) for label, values in per_class.items()
            },
            **(_ranges(sizes, ("width", "height")) if sizes else {}),
        }
    return {
        "audio": {
            label: _ranges(values, ("seconds", "sample_rate"))
            for label, values in per_class.items()
        },
        "sample_rates": sorted({int(facts[1]) for v in per_class.values() for facts in v}),
        "total_seconds": round(sum(facts[0] for v in per_class.values() for facts in v), 3),
    }


def _ranges(values: list[tuple[float, ...]], names: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for index, name in enumerate(names):
        column = [value[index] for value in values]
        out[f"min_{name}"] = min(column)
        out[f"max_{name}"] = max(column)
    return out


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def image_facts(stream: IO[bytes]) -> tuple[float, ...]:
    """(width, height) of a fully decoded image; raises for a corrupt or oversized one."""
    from PIL import Image

    data = stream.read()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{image.width}x{image.height} pixels is over the limit of {MAX_IMAGE_PIXELS}"
                )
            image.load()
            return float(image.width), float(image.height)


def audio_facts(stream: IO[bytes]) -> tuple[float, ...]:
    """(seconds, sample rate) of a fully decoded sound; raises for a corrupt one."""
    import soundfile

    data = io.BytesIO(stream.read())
    with soundfile.SoundFile(data) as sound:
        frames = 0
        for block in sound.blocks(blocksize=1 << 16):
            frames += len(block)
        if frames == 0:
            raise ValueError("the file holds no samples")
        return frames / sound.samplerate, float(sound.samplerate)


def rows(path: Path, scan_result: Scan) -> list[Row]:
    """Training rows: the archive, the member, its label, and its index in the scan (what
    GET /v1/files/{file_id}/samples/{index}/content serves)."""
    return [
        {"archive": str(path), "file": example.member, "label": example.label, "index": index}
        for index, example in enumerate(scan_result.examples)
    ]
