"""Shared helpers of the dataset preparations (:mod:`.msmarco`, :mod:`.wikipedia`).

Reading: plain, ``.gz`` and ``.bz2`` files line by line, with a :class:`FileTally` per input
file that counts rows read, kept and skipped (with the first few bad rows by position).
Writing: a staging folder beside the output that is renamed into place only when complete,
so an interrupted run never leaves a folder that a later run would trust; JSON and JSONL
writers; downloads (through :func:`smec_dist.data.download.fetch`) and tar member extraction.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import shutil
import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Iterable, Iterator
from urllib.parse import urlparse

from tqdm.auto import tqdm

from ..errors import SmecError
from ..io import atomic_dir, json_bytes
from .download import downloads_disabled, fetch
from .lines import short_repr

log = logging.getLogger(__name__)

_EXAMPLES = 5  # bad rows listed by position in prepare.json and in the warning


# --------------------------------------------------------------------------- bad rows


@dataclass
class FileTally:
    """Rows read, kept and skipped in one input file.

    Attributes:
        path: The file.
        unit: What a position counts: ``"line"``, ``"row"`` (parquet) or ``"page"`` (XML).
        label: How messages name the file when not by ``path`` (a downloaded file: its URL).
        read: Rows looked at (blank lines excluded).
        kept: Rows used.
        skipped: Reason -> rows skipped for it.
        examples: The first few skipped rows: ``{unit: position, "reason": text}``.
    """

    path: Path
    unit: str = "line"
    label: str | None = None
    read: int = 0
    kept: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)

    def skip(self, where: int, reason: str, detail: str = "") -> None:
        """Counts a bad row under ``reason``; the first few keep ``detail`` and their position."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append({self.unit: where, "reason": detail or reason})

    @property
    def bad(self) -> int:
        return sum(self.skipped.values())

    def warn(self) -> None:
        """Logs one warning summarising the skipped rows, if any."""
        if not self.bad:
            return
        reasons = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items())
        first = "; ".join(f"{self.unit} {e[self.unit]}: {e['reason']}" for e in self.examples)
        log.warning("%s: skipped %d bad %s(s) of %d (%s); first: %s", self.label or self.path, self.bad,
                    self.unit, self.read, reasons, first)

    def to_dict(self) -> dict:
        return {"path": self.label or str(self.path), "rows_read": self.read, "rows_kept": self.kept,
                "bad_rows": self.bad, "bad_by_reason": dict(self.skipped), "bad_examples": list(self.examples)}


def short(value: object) -> str:
    """``repr`` of a bad value, cut to 40 characters for the per-row messages."""
    return short_repr(value, 40)


# --------------------------------------------------------------------------- reading


def open_binary(path: Path) -> IO[bytes]:
    """Opens a file for reading bytes, decompressing ``.gz`` and ``.bz2``."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        if path.suffix == ".bz2":
            return bz2.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise SmecError(f"{path}: cannot read ({e.strerror or e})") from None


def progress_bar(iterable: Iterable, desc: str, progress: bool, unit: str = " lines", total: int | None = None):
    # disable=None turns the bar off when stderr is not a terminal (logs, CI).
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=None if progress else True, leave=False)


def tallied_lines(path: Path, tally: FileTally | None, progress: bool = False) -> Iterator[tuple[int, str]]:
    """Yields ``(line number, text)`` for the non-blank lines of a UTF-8 file.

    A line that is not valid UTF-8 is counted in ``tally`` (when given) and skipped; a file
    cut short (a truncated ``.gz``) or unreadable raises, since nothing after it can be read.
    """
    handle = open_binary(path)
    try:
        with handle:
            for lineno, raw in enumerate(progress_bar(handle, path.name, progress), 1):
                if not raw.strip():
                    continue
                if tally is not None:
                    tally.read += 1
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    if tally is not None:
                        tally.skip(lineno, "not UTF-8", f"not valid UTF-8 (byte {raw[e.start]:#04x})")
                    continue
                yield lineno, line.rstrip("\r\n")
    except (OSError, EOFError, zlib.error) as e:
        raise SmecError(f"{path}: cannot read to the end ({e})") from None


# --------------------------------------------------------------------------- output and downloads


@contextmanager
def staging(out_dir: Path) -> Iterator[Path]:
    """Yields a temporary folder beside ``out_dir`` that becomes ``out_dir`` on success.

    The folder is on the same filesystem as ``out_dir``, so the final rename is atomic; on any
    error (or Ctrl-C) it is removed, and ``out_dir`` is left as it was. The staging itself is
    :func:`smec_dist.io.atomic_dir`; what is added here is the refusal to replace anything but
    an empty folder, and messages that say which step failed.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # Could be someone's data, or an earlier result; never overwrite either.
        raise SmecError(f"{out_dir}: exists and is not an empty folder; remove it or choose another --output")
    step = "create"
    try:
        with atomic_dir(out_dir) as tmp:  # replaces an empty out_dir too
            step = "fill"
            yield tmp
            step = "move"
    except OSError as e:
        if step == "create":
            raise SmecError(f"{out_dir.parent}: cannot create the output there ({e.strerror or e})") from None
        if step == "move":
            raise SmecError(f"{out_dir}: cannot move the result into place ({e.strerror or e})") from None
        raise


def require_online(what: str) -> None:
    if downloads_disabled():
        raise SmecError(f"{what}: downloads are off (HF_HUB_OFFLINE or SMEC_OFFLINE is set); "
                        f"unset them or pass --source")


def check_source(dataset: str, source: str | Path | None, download: bool, *, folder: bool, where: str,
                 url: str | None = None) -> Path | None:
    """Checks a preparation's input choice: exactly one of ``source`` and ``download``.

    Args:
        dataset: How messages name the dataset (``"MS MARCO"``).
        source: The local input, or None.
        download: Fetch instead of reading ``source``.
        folder: ``source`` must be a folder (else a file or a folder).
        where: What would be downloaded from, for the message when downloads are off.
        url: A URL given to download from; refused without ``download``.

    Returns:
        ``source`` as a path (user folder expanded), or None when downloading.

    Raises:
        SmecError: Both or neither given, a URL without ``download``, downloads off, or a
            missing ``source``.
    """
    if (source is None) == (not download):
        kind, flag = ("folder", "DIR") if folder else ("file", "FILE")
        raise SmecError(f"{dataset}: give either a source {kind} or download=True (--source {flag} or --download)")
    if url is not None and not download:
        raise SmecError(f"{dataset}: a URL is only used with download=True (--download --url URL)")
    if download:
        require_online(f"{dataset} download from {where}")
        return None
    source = Path(source).expanduser()
    if not (source.is_dir() if folder else source.exists()):
        raise SmecError(f"{source}: {dataset} source {'folder ' if folder else ''}not found")
    return source


def download_file(url: str, folder: Path, progress: bool) -> Path:
    """Fetches ``url`` into ``folder`` under its own file name and returns the file."""
    name = PurePosixPath(urlparse(url).path).name
    if not name:
        raise SmecError(f"{url}: the URL names no file")
    dest = folder / name
    log.info("downloading %s", url)
    fetch(url, dest, name, progress)
    return dest


def extract_members(archive: Path, names: Iterable[str], dest: Path, url: str) -> None:
    """Copies the regular files called ``names`` (at any depth) out of a tar archive into ``dest``.

    Members are streamed out by name, so a hostile path in the archive is never written.
    """
    wanted, found = set(names), set()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = PurePosixPath(member.name).name
                if name in wanted and name not in found and member.isfile():
                    src = tf.extractfile(member)
                    with src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    found.add(name)
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise SmecError(f"{url}: not a valid tar archive ({e})") from None
    except OSError as e:
        raise SmecError(f"{url}: cannot extract into {dest} ({e.strerror or e})") from None
    missing = sorted(wanted - found)
    if missing:
        raise SmecError(f"{url}: the archive holds no {', '.join(missing)}")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_json(path: Path, obj: dict) -> None:
    path.write_bytes(json_bytes(obj, indent=2))
