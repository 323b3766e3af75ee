"""Downloading public BEIR datasets.

Archives are streamed to a temporary file inside the destination folder, checked, unzipped
into a temporary folder there too, and only then renamed into place. Keeping every temporary
on the same filesystem makes that final rename atomic, so an interrupted or failed download
never leaves a half-written dataset that a later run would mistake for a good one.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SmecError
from ..io import publish_dir

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "SMEC_OFFLINE")
_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# huggingface_hub reads these values as "on"; accepting them too avoids a surprise download.
_TRUE = {"1", "true", "yes", "on"}


def is_beir_folder(path: str | Path) -> bool:
    """Tells whether a folder has the BEIR layout.

    Only the layout is checked (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``);
    parsing is left to :func:`smec_dist.data.beir.load_beir`, which reports problems by line.

    Args:
        path: The folder to look at.

    Returns:
        True when all three parts are present.
    """
    path = Path(path)
    return (
        (path / "corpus.jsonl").is_file()
        and (path / "queries.jsonl").is_file()
        and (path / "qrels").is_dir()
        and any((path / "qrels").glob("*.tsv"))
    )


def downloads_disabled() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``SMEC_OFFLINE`` asks for no network."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in OFFLINE_ENV_VARS)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise SmecError(
            f"dataset name {name!r} is not valid (letters, digits, '.', '_' and '-' only)"
        )


def fetch(url: str, dest: Path, desc: str, progress: bool) -> str:
    """Streams ``url`` into ``dest`` and returns the md5 hex digest of the bytes.

    Args:
        url: Any URL ``urllib`` opens (``https://``, ``file://``).
        dest: The file to write (overwritten).
        desc: What the progress bar calls the download.
        progress: Show a tqdm progress bar.

    Raises:
        SmecError: A network or disk failure, or fewer bytes than ``Content-Length`` said.
    """
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"download {desc}",
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise SmecError(f"{url}: download failed (HTTP {e.code} {e.reason})") from None
    except urllib.error.URLError as e:
        raise SmecError(f"{url}: download failed ({e.reason})") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        # ValueError: an unknown URL scheme; OSError: timeouts, resets, a full disk.
        raise SmecError(f"{url}: download failed ({e})") from None
    if total is not None and received != total:
        raise SmecError(f"{url}: download incomplete ({received} of {total} bytes)")
    return digest.hexdigest()


def _extract(archive: Path, dest: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.infolist():
                target = (dest / member.filename).resolve()
                if target != root and root not in target.parents:
                    raise SmecError(f"{url}: archive member {member.filename!r} points outside the archive")
            zf.extractall(dest)
    except SmecError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
        raise SmecError(f"{url}: not a valid zip archive ({e})") from None
    except OSError as e:
        raise SmecError(f"{url}: cannot unzip into {dest} ({e.strerror or e})") from None


def _find_dataset(unzipped: Path, name: str) -> Path | None:
    # BEIR archives hold a top-level '<name>/' folder, but hand-made ones may not.
    candidates = [unzipped / name, unzipped]
    subdirs = [p for p in unzipped.iterdir() if p.is_dir() and p.name != "__MACOSX"]
    if len(subdirs) == 1:
        candidates.append(subdirs[0])
    return next((c for c in candidates if is_beir_folder(c)), None)


def download_beir(
    name: str,
    dest_root: str | Path,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Downloads and unpacks a BEIR dataset into ``dest_root/name``.

    Args:
        name: The dataset name, e.g. ``"scifact"``; also the folder created.
        dest_root: The folder that holds datasets; created if missing.
        url: Where to fetch the zip from; defaults to :data:`BEIR_URL` for ``name``.
            ``file://`` URLs work too.
        md5: Expected md5 hex digest of the zip; checked when given.
        progress: Show a tqdm progress bar.

    Returns:
        The dataset folder. When it already holds a BEIR dataset nothing is downloaded.

    Raises:
        SmecError: A bad name, a network or disk failure, an md5 mismatch, a bad archive,
            or an archive without a BEIR dataset; nothing partial is left behind.
    """
    _check_name(name)
    dest_root = Path(dest_root).expanduser()
    target = dest_root / name
    if is_beir_folder(target):
        log.info("%s already present at %s; not downloading", name, target)
        return target
    if target.exists():
        # Could be someone's own data; never overwrite or delete it.
        raise SmecError(
            f"{target}: exists but is not a BEIR dataset (needs corpus.jsonl, queries.jsonl, "
            f"qrels/*.tsv); remove it or choose another data folder"
        )
    url = url or BEIR_URL.format(name=name)
    try:
        dest_root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=dest_root)
        os.close(fd)
    except OSError as e:
        raise SmecError(f"{dest_root}: cannot write the download there ({e.strerror or e})") from None
    archive = Path(tmp_name)
    unzipped: Path | None = None
    try:
        log.info("downloading %s from %s", name, url)
        actual = fetch(url, archive, name, progress)
        if md5 is not None and actual.lower() != md5.strip().lower():
            raise SmecError(f"{url}: md5 mismatch (expected {md5.strip().lower()}, got {actual})")
        try:
            unzipped = Path(tempfile.mkdtemp(prefix=f".{name}-unzip-", dir=dest_root))
        except OSError as e:
            raise SmecError(f"{dest_root}: cannot create a temporary folder ({e.strerror or e})") from None
        _extract(archive, unzipped, url)
        found = _find_dataset(unzipped, name)
        if found is None:
            raise SmecError(
                f"{url}: archive holds no BEIR dataset (corpus.jsonl, queries.jsonl, qrels/*.tsv)"
            )
        try:  # another process that finished the same download first wins: theirs is as good
            publish_dir(found, target, is_beir_folder)
        except OSError as e:
            raise SmecError(f"{target}: cannot move the download into place ({e.strerror or e})") from None
    finally:
        archive.unlink(missing_ok=True)
        if unzipped is not None:
            shutil.rmtree(unzipped, ignore_errors=True)
    log.info("%s ready at %s", name, target)
    return target


def ensure_dataset(name_or_path: str | Path, data_dir: str | Path) -> Path:
    """Finds a dataset folder, downloading a public BEIR dataset if needed.

    Args:
        name_or_path: An existing dataset folder, or a BEIR dataset name.
        data_dir: The folder where named datasets live (and are downloaded to).

    Returns:
        The dataset folder: ``name_or_path`` itself when it is a folder, else
        ``data_dir/name``.

    Raises:
        SmecError: The dataset is absent and downloads are off (``HF_HUB_OFFLINE=1`` or
            ``SMEC_OFFLINE=1``), the name is not a plain name, or the download fails.
    """
    given = Path(name_or_path).expanduser()
    if given.is_dir():
        return given
    name = str(name_or_path)
    data_dir = Path(data_dir).expanduser()
    if not _NAME_RE.match(name):
        raise SmecError(
            f"dataset '{name}' is neither an existing folder nor a dataset name to find in {data_dir}"
        )
    local = data_dir / name
    if local.is_dir():
        return local
    if downloads_disabled():
        raise SmecError(
            f"dataset '{name}' is not in {data_dir} and downloads are off "
            f"(HF_HUB_OFFLINE or SMEC_OFFLINE is set); put it there or unset them"
        )
    return download_beir(name, data_dir)
