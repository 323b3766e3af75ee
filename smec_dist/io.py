"""Files that are either whole or absent: atomic writes, and sha256 manifests.

Every artifact of the project (cache shards, heads, reports, configs, checkpoints' markers,
exports) is written through this module, so a kill at any moment leaves the previous file
(or none), never a half-written one that a later step would trust:

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`atomic_write_json` write
  a temporary file beside the target, fsync it and rename it over the target;
* :func:`atomic_path` does the same for writers that want a path or a file object
  (``np.save``, ``safetensors.save_file``, ``savefig``, SQLite);
* :func:`atomic_dir` builds a folder under a temporary name and renames it into place.

A manifest (``manifest.json``: ``{"files": {relative path: {"size", "sha256"}}}``) lists
what a folder should hold; :func:`file_table_problem` says what differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import SmecError

FILE_MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"  # every temporary file ends so; cleaners glob for it


def tmp_name(path: Path, suffix: str = "") -> Path:
    """A temporary sibling of ``path`` unique to this process (``<name>.<pid>.tmp<suffix>``)."""
    return path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}{suffix}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where a folder cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed to ``path``,
    on an exception it is removed and ``path`` is left as it was.

    Args:
        path: the file to write.
        suffix: appended to the temporary name, for writers that choose a format by it.
    """
    path = Path(path)
    tmp = tmp_name(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:  # the data must reach the disk before the rename does
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_bytes(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> bytes:
    return (json.dumps(obj, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    return atomic_write_bytes(path, json_bytes(obj, indent, sort_keys))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (an
    existing folder there is removed only after the new one is in place), on an exception it
    is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Move the finished folder ``src`` to ``dst``; a folder already at ``dst`` is set aside
    first and removed only once the new one is in place (a kill in between leaves a complete
    folder under one of the two names, never a mix)."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.{os.getpid()}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        fault_point("replace:between")
    os.replace(src, dst)
    fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst


# ---------------------------------------------------------------------------------- hashes


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks so big files stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_table(folder: Path, rels: Sequence[str]) -> dict:
    """``{relative path: {"size", "sha256"}}`` of the given files under ``folder``."""
    return {rel: {"size": (folder / rel).stat().st_size, "sha256": file_sha256(folder / rel)} for rel in rels}


def write_file_manifest(folder: str | os.PathLike, rels: Sequence[str]) -> Path:
    """``<folder>/manifest.json`` with the :func:`file_table` of ``rels``, written atomically."""
    folder = Path(folder)
    return atomic_write_json(folder / FILE_MANIFEST, {"files": file_table(folder, list(rels))}, sort_keys=True)


def read_file_manifest(folder: str | os.PathLike) -> dict | None:
    """The file table of ``<folder>/manifest.json`` (``None``: there is none)."""
    path = Path(folder) / FILE_MANIFEST
    if not path.is_file():
        return None
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(listed, dict):
            raise TypeError("files is not a mapping")
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise SmecError(f"{path}: not a valid file manifest ({type(exc).__name__})") from exc
    return listed


def file_table_problem(folder: Path, listed: Mapping, hashes: Callable[[], Mapping] | None = None) -> str | None:
    """What differs between the files under ``folder`` and a :func:`file_table` (``None``: all
    intact): a missing file or a wrong size first (cheap), then a sha256 (``hashes`` computes
    the table of the files on disk; default: here, in this process)."""
    for rel, want in listed.items():
        path = folder / rel
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != want["size"]:
            return f"{path}: {path.stat().st_size} bytes, {want['size']} expected (truncated?)"
    found = hashes() if hashes else file_table(folder, list(listed))
    for rel, want in listed.items():
        if found.get(rel, {}).get("sha256") != want["sha256"]:
            return f"{folder / rel}: sha256 differs from the one recorded (altered or corrupt)"
    return None


def check_listed(path: str | os.PathLike, levels: int = 3) -> None:
    """Check ``path`` against the nearest ``manifest.json`` among its ``levels`` enclosing
    folders that lists it (a file of a run folder or an export); silent when none does."""
    path = Path(path)
    resolved = path.resolve()
    for root in list(resolved.parents)[:levels]:
        try:
            listed = read_file_manifest(root)
        except SmecError:
            continue  # some other manifest.json, not ours
        rel = str(resolved.relative_to(root))
        if listed is not None and rel in listed:
            problem = file_table_problem(root, {rel: listed[rel]})
            if problem:
                raise SmecError(f"{path}: does not match {root / FILE_MANIFEST}: {problem}")
            return


def publish_dir(tmp: str | os.PathLike, out: str | os.PathLike, complete: Callable[[Path], bool]) -> Path:
    """Give a finished folder ``tmp`` its final name ``out``: only a complete folder ever
    carries it. Processes that each build the same folder at once (the ranks of a launch, two
    downloads): the first rename wins, and the others drop their copy once ``complete(out)``
    says the winner's is whole; otherwise the rename's ``OSError`` is raised."""
    tmp, out = Path(tmp), Path(out)
    try:
        tmp.rename(out)
    except OSError:
        if not complete(out):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return out


_RENAME_EXCHANGE = 2  # renameat2(2) flag: swap two paths in one step (Linux >= 3.15: ext4, xfs, tmpfs, btrfs)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically; False where the system or filesystem cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def publish_run(staged: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Put the finished folder ``staged`` in place of ``out`` in one step: a reader (or a kill)
    sees the previous folder whole or the new one whole, never a mix. The previous folder, if
    any, is removed afterwards. Where the filesystem cannot swap two folders atomically, a kill
    between the two renames leaves the previous folder under ``.<name>.<pid>.old`` beside it,
    which :func:`recover_run` puts back."""
    staged, out = Path(staged), Path(out)
    fault_point("publish:before")
    if out.exists() and _exchange(staged, out):
        fsync_dir(out.parent)
        shutil.rmtree(staged, ignore_errors=True)  # now the previous run's folder
        return out
    replace_dir(staged, out)
    return out


def recover_run(out: str | os.PathLike) -> bool:
    """Put back a run folder that a kill in the middle of :func:`publish_run`'s fallback left
    aside (``out`` missing, ``.<name>.<pid>.old`` present); True when it did."""
    out = Path(out)
    if out.exists():
        return False
    aside = sorted(out.parent.glob(f".{out.name}.*.old"), key=lambda p: p.stat().st_mtime)
    if not aside:
        return False
    os.replace(aside[-1], out)
    fsync_dir(out.parent)
    return True


def fault_point(name: str) -> None:
    """Fault injection for the kill tests: the process SIGKILLs itself here when the environment
    variable ``SMEC_FAULT`` names this point (a test-only switch; nothing sets it otherwise)."""
    if os.environ.get("SMEC_FAULT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------------- state without pickle


def save_tree(path: str | os.PathLike, tree: Any) -> tuple[Path, Path]:
    """Save a nested state (dicts with str or int keys, lists, tuples, tensors, numbers, strings,
    None) without pickle: the tensors in ``<path>.safetensors``, the rest in ``<path>.json``, each
    written atomically. What a resumed run reads back (:func:`load_tree`) cannot execute code."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, "torch.Tensor"] = {}

    def encode(node):
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = node.detach().contiguous().cpu()
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[k, encode(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"__tuple__": [encode(v) for v in node]}
        if isinstance(node, list):
            return [encode(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot save a {type(node).__name__} without pickle")

    path = Path(path)
    doc = encode(tree)
    weights, meta = path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_json(meta, doc, indent=None)
    return weights, meta


def load_tree(path: str | os.PathLike) -> Any:
    """Read back what :func:`save_tree` wrote (no pickle involved)."""
    from safetensors.torch import load_file

    path = Path(path)
    tensors = load_file(str(path.with_name(path.name + ".safetensors")))

    def decode(node):
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__tuple__" in node:
                return tuple(decode(v) for v in node["__tuple__"])
            return {k: decode(v) for k, v in node["__dict__"]}
        if isinstance(node, list):
            return [decode(v) for v in node]
        return node

    return decode(json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8")))
