"""Read a Tiny ImageNet tree from a folder, a .zip or a .tar.gz without extracting it to disk.

A source exposes the files under the dataset's top folder (the one holding ``wnids.txt``, or
``train/`` for a class-per-folder dataset) by paths relative to that folder, in POSIX form.
Folders and zips are random-access, so decode workers open them themselves; a .tar.gz is one gzip
stream, read sequentially by ``stream``.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tinycnn.data.tar_stream import iter_tar
from tinycnn.errors import DataError


class Source:
    """Files of one dataset tree, addressed relative to its top folder."""

    kind: str = ""
    random_access: bool = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.root = ""  # prefix of the top folder inside an archive, with trailing "/"

    def names(self) -> list[str]:
        """Every regular file under the top folder, relative to it."""
        raise NotImplementedError

    def read(self, rel: str) -> bytes:
        """The bytes of one file (any file for random-access sources; .txt files for tar)."""
        raise NotImplementedError

    def stream(self, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield (rel, bytes) for each wanted file, in whatever order is cheapest."""
        for rel in wanted:
            yield rel, self.read(rel)

    def display(self, rel: str) -> str:
        """How to name one file in a message: a path a user can find."""
        return f"{self.path}:{self.root}{rel}"

    def fingerprint(self) -> dict:
        """Cheap identity of the source's content: changes whenever the data does."""
        st = self.path.stat()
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),  # absolute: rebuild hints work from anywhere
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }


class FolderSource(Source):
    """A dataset folder. Linked folders are followed (each real folder read once: a link back
    up the tree is no loop); ``skip``: folders left out, e.g. a cache prepared inside the
    dataset folder, whose files would otherwise change the source's fingerprint at each build."""

    kind = "folder"

    def __init__(self, path: Path, skip: Iterable[Path] = ()) -> None:
        super().__init__(_find_folder_root(path))
        self._names: list[str] | None = None
        self._skip = [os.path.realpath(p) for p in skip]

    def names(self) -> list[str]:
        if self._names is None:
            found, seen = [], {os.path.realpath(self.path)}
            for dirpath, dirs, files in os.walk(self.path, followlinks=True):
                kept = []
                for d in dirs:
                    real = os.path.realpath(os.path.join(dirpath, d))
                    if real not in seen and not self._skipped(real):
                        seen.add(real)
                        kept.append(d)
                dirs[:] = kept
                rel_dir = os.path.relpath(dirpath, self.path)
                prefix = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
                found.extend(prefix + f for f in files)
            self._names = found
        return self._names

    def _skipped(self, real: str) -> bool:
        # A skipped folder, or a prepare's temporary build or old copy beside it (.NAME.*).
        parent, name = os.path.split(real)
        for skip in self._skip:
            beside = parent == os.path.dirname(skip)
            if real == skip or (beside and name.startswith(f".{os.path.basename(skip)}.")):
                return True
        return False

    def read(self, rel: str) -> bytes:
        with open(self.path / rel, "rb") as f:
            return f.read()

    def display(self, rel: str) -> str:
        return str(self.path / rel)

    def fingerprint(self) -> dict:
        # Digest of every file's name, size and mtime: a walk, no file contents read.
        digest = hashlib.sha256()
        for rel in sorted(self.names()):
            st = os.stat(self.path / rel)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),  # absolute: rebuild hints work from anywhere
            "files": len(self.names()),
            "digest": digest.hexdigest(),
        }

    def __getstate__(self) -> dict:
        return {"path": self.path, "root": self.root, "_names": None, "_skip": self._skip}


class ZipSource(Source):
    kind = "zip"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._zip: zipfile.ZipFile | None = None
        self._pid = os.getpid()
        try:
            members = _zip_members(self._open())
        except (zipfile.BadZipFile, OSError) as exc:
            raise DataError(f"{path}: not a readable zip archive ({exc})") from None
        self._infos: dict[str, zipfile.ZipInfo] | None = dict(members)
        if len(self._infos) < len(members):  # zipfile reads the last copy for both
            seen: set[str] = set()
            twice = next(n for n, _ in members if n in seen or seen.add(n))
            raise DataError(
                f"{path}: holds {twice} twice; make the archive again with one copy of each file"
            )
        all_names = list(self._infos)
        self.root = _find_archive_root(path, all_names)
        cut = len(self.root)
        self._names = [n[cut:] for n in all_names if n.startswith(self.root)]

    def _open(self) -> zipfile.ZipFile:
        # One handle per process: a forked worker must not share the parent's file offset.
        if self._zip is None or self._pid != os.getpid():
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip

    def names(self) -> list[str]:
        return self._names

    def read(self, rel: str) -> bytes:
        try:
            archive = self._open()
            if self._infos is None:  # a worker: its own index of the archive it opened
                self._infos = dict(_zip_members(archive))
            return archive.read(self._infos[self.root + rel])
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
            raise DataError(f"{self.display(rel)}: cannot read from the archive ({exc})") from None

    def __getstate__(self) -> dict:
        # Workers reopen the archive; an open ZipFile does not cross processes.
        state = dict(self.__dict__)
        state["_zip"] = None
        state["_names"] = []
        state["_infos"] = None
        return state


def _zip_members(archive: zipfile.ZipFile) -> list[tuple[str, zipfile.ZipInfo]]:
    """(name, entry) of each file of a zip, Finder's resource forks (__MACOSX/) left out."""
    members = ((_zip_name(i), i) for i in archive.infolist() if not i.is_dir())
    return [(name, info) for name, info in members if not name.startswith("__MACOSX/")]


class TarGzSource(Source):
    """A gzip-compressed tar, read as a stream.

    The first pass lists the archive (the class list, wnids.txt, comes last in the official
    archives, so no image can be placed before the end). It keeps the raw file bytes while they
    fit in ``keep_bytes`` (the full dataset's JPEGs are 240 MB), so ``stream`` needs no second
    decompression; larger archives are streamed a second time instead. The tar headers are parsed
    here rather than with ``tarfile``, which spends ~20 us per member, 3x the cost of inflating.
    """

    kind = "tar.gz"
    random_access = False

    def __init__(self, path: Path, keep_bytes: int = 1 << 30) -> None:
        super().__init__(path)
        self.keep_bytes = keep_bytes
        self._names: list[str] | None = None
        self._files: dict[str, bytes] = {}  # text files always; all files while under budget
        self._kept_all = False

    def _scan(self) -> None:
        # Lazy, so an up-to-date check costs no decompression.
        all_names: list[str] = []
        files: dict[str, bytes] = {}
        kept = 0
        budget = {"keep_all": True}  # read by want() as the scan goes

        def want(name: str) -> bool:
            return budget["keep_all"] or name.endswith(".txt")

        seen: set[str] = set()
        for name, data in iter_tar(self.path, want=want):
            if name in seen:  # tar allows it (an appended update); which copy is meant is unclear
                raise DataError(
                    f"{self.path}: holds {name} twice; make the archive again with one copy of "
                    "each file"
                )
            seen.add(name)
            all_names.append(name)
            if data is not None:
                files[name] = data
                kept += len(data)
                if budget["keep_all"] and kept > self.keep_bytes:
                    budget["keep_all"] = False  # keep text files only, stream again later
                    files = {n: d for n, d in files.items() if n.endswith(".txt")}
        self.root = _find_archive_root(self.path, all_names)
        cut = len(self.root)
        self._names = [n[cut:] for n in all_names if n.startswith(self.root)]
        self._files = {n[cut:]: d for n, d in files.items() if n.startswith(self.root)}
        self._kept_all = budget["keep_all"]

    def names(self) -> list[str]:
        if self._names is None:
            self._scan()
        return self._names

    def read(self, rel: str) -> bytes:
        self.names()
        if rel not in self._files:
            raise DataError(f"{self.display(rel)}: not a text file of the archive")
        return self._files[rel]

    def stream(self, wanted: Iterable[str]) -> Iterator[tuple[str, bytes]]:
        """Yield each wanted file once, releasing kept bytes as they go."""
        self.names()
        if self._kept_all:
            for rel in wanted:
                data = self._files.pop(rel) if not rel.endswith(".txt") else self._files[rel]
                yield rel, data
            self._kept_all = False  # what was handed out is gone; a second stream re-reads
            return
        keep = {self.root + rel for rel in wanted}
        cut = len(self.root)
        for name, data in iter_tar(self.path, want=keep.__contains__):
            if data is not None:
                yield name[cut:], data

    def __getstate__(self) -> dict:
        # Workers get bytes from the parent; they need only the names for messages.
        state = dict(self.__dict__)
        state.update(_names=[], _files={}, _kept_all=False)
        return state


def _zip_name(info: zipfile.ZipInfo) -> str:
    """A zip member's name. Without the UTF-8 flag zipfile reads the name as cp437, but Info-ZIP's
    zip (Linux, macOS) stores UTF-8 bytes without setting it: those bytes, where they are UTF-8."""
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def open_source(path: str | Path, skip: Iterable[Path] = ()) -> Source:
    """Open a dataset folder, .zip or .tar.gz/.tgz; a clear DataError for anything else.

    skip: folders a dataset folder's files leave out (FolderSource)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return FolderSource(path, skip)
    name = path.name.lower()
    if name.endswith(".zip"):
        return ZipSource(path)
    if name.endswith((".tar.gz", ".tgz")):
        return TarGzSource(path)
    raise DataError(f"{path}: not a folder, .zip or .tar.gz (the Tiny ImageNet formats)")


def _is_dataset_folder(path: Path) -> bool:
    # Official layout (wnids.txt) or class-per-folder (train/CLASS/...).
    return (path / "wnids.txt").is_file() or (path / "train").is_dir()


def _find_folder_root(path: Path) -> Path:
    # Accept the dataset folder itself, or a folder holding exactly one dataset folder
    # (what unpacking the official zip into a download folder gives).
    if _is_dataset_folder(path):
        return path
    inner = [p for p in path.iterdir() if p.is_dir() and _is_dataset_folder(p)]
    if len(inner) == 1:
        return inner[0]
    if not inner:
        raise DataError(
            f"{path}/wnids.txt: missing (expected the Tiny ImageNet folder holding "
            "wnids.txt, words.txt, train/, val/ and test/, or a folder of your own images "
            "as train/CLASS/*.jpg and val/CLASS/*.jpg)"
        )
    raise DataError(
        f"{path}: holds several datasets ({', '.join(p.name for p in inner)}); name one of them"
    )


def _find_archive_root(path: Path, names: list[str]) -> str:
    # The official archives hold one top folder (tiny-imagenet-200/) with wnids.txt inside.
    roots = sorted(
        {n[: -len("wnids.txt")] for n in names if n.endswith("/wnids.txt") and n.count("/") == 1}
    )
    if len(roots) == 1:
        return roots[0]
    if roots:
        raise DataError(
            f"{path}: several top folders hold wnids.txt ({', '.join(roots)}); expected one"
        )
    tops = sorted({n.split("/", 1)[0] for n in names})[:5]
    if "wnids.txt" in names:
        raise DataError(
            f"{path}: wnids.txt is at the top of the archive; expected it inside one "
            "top folder, as in the official tiny-imagenet-200/"
        )
    # A class-per-folder archive: train/CLASS/file at the top or inside one top folder.
    found = (re.match(r"^([^/]+/)?train/[^/]+/.", n) for n in names)
    folder_roots = sorted({m.group(1) or "" for m in found if m})
    if len(folder_roots) == 1:
        return folder_roots[0]
    if folder_roots:
        raise DataError(
            f"{path}: several folders hold train/ ({', '.join(r or '.' for r in folder_roots)}); "
            "expected one dataset"
        )
    raise DataError(
        f"{path}: no top folder with wnids.txt (expected tiny-imagenet-200/wnids.txt, or "
        f"train/CLASS/ folders of images; found {', '.join(tops) or 'nothing'})"
    )
