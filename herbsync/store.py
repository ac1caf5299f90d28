"""The local content-addressed store: atomic, verified placement of images.

Every file at a final path ``<root>/ab/cd/<digest>.<ext>`` hashes to its name.
Bytes are written to a temporary file in ``<root>/.tmp/``, hashed as they pass,
compared with the expected digest, made durable and only then renamed into
place. ``place`` fsyncs each file and its folder. ``stage`` and ``commit``
let a mirror pass sync a whole batch with two ``syncfs`` calls instead.
Files that fail a check are moved to ``<root>/.quarantine/``, never deleted.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, NoReturn, TypeVar

from herbsync.digest import (
    CHUNK_SIZE,
    DEFAULT_EXTENSION,
    calculate_sha256,
    file_path_of,
    is_digest,
    split_name,
)
from herbsync.errors import DigestMismatch, SizeMismatch, StoreError, StoreFull, TransferAborted


TEMPORARY_FOLDER = ".tmp"
QUARANTINE_FOLDER = ".quarantine"

# Extensions a layout name may carry: no separator, dot or "..", so no name
# that a source hands over can point outside its ``ab/cd`` folder.
_LAYOUT_EXTENSION = re.compile(r"[A-Za-z0-9]{1,8}")


@dataclass(frozen=True, slots=True)
class StoredFile:
    """A file that was just placed or found in a store."""

    path: Path
    digest: str
    extension: str
    size: int


@dataclass(frozen=True, slots=True)
class StagedFile(StoredFile):
    """A verified file written to ``temporary`` and not yet synced or renamed to ``path``."""

    temporary: Path


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The result of ``Store.commit`` for one staged file: the placed file, or the error that stopped it."""

    staged: StagedFile
    stored: StoredFile | None = None
    error: StoreError | None = None


def _check_layout_name(digest: str, extension: str) -> None:
    if not is_digest(digest):
        msg = f"cannot store {digest!r}: it is not a lowercase SHA-256 digest"
        raise StoreError(msg)
    if _LAYOUT_EXTENSION.fullmatch(extension) is None:
        msg = f"cannot store {digest} with extension {extension!r}: expected 1 to 8 letters or digits"
        raise StoreError(msg)


def fsync_directory(path: Path) -> None:
    """Make the entries of a folder (renames into it) durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _load_syncfs() -> Callable[[int], int] | None:
    """Return libc's ``syncfs`` (Linux 2.6.39 and later), or None where there is none."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_syncfs = _load_syncfs()


def sync_filesystem(path: Path) -> bool:
    """Write every dirty page and inode of the filesystem holding ``path`` to disk.

    Returns False, having synced nothing, where ``syncfs`` is unavailable.
    Raises ``OSError`` when the kernel reports a write-back error.
    """
    if _syncfs is None:
        return False
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs(descriptor) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), str(path))
    finally:
        os.close(descriptor)
    return True


def fsync_file(path: Path) -> None:
    """Make a file's data and size durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _store_error(error: OSError, path: Path) -> StoreError:
    """Return the herbsync error for an ``OSError`` met while writing ``path``."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"no space left on the filesystem of {path}; free space and herbsync resumes")
    return StoreError(f"cannot write {path}: {error.strerror or error}")


def _raise_store_error(error: OSError, path: Path) -> NoReturn:
    raise _store_error(error, path) from error


def _read_umask() -> int:
    """Return the process umask without changing it for other threads, where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
#: Mode of a file written for a caller (``download_image``): an ordinary new file.
FILE_MODE = 0o666 & ~_UMASK
#: Mode of a file in the store: read-only, so no program changes an image in
#: place; readable by whoever the umask allows (the OCR user, say).
STORED_FILE_MODE = 0o444 & ~_UMASK


def write_verified(
    target: Path,
    digest: str,
    chunks: Iterable[bytes],
    origin: str,
    temporary_folder: Path | None = None,
    expected_size: int | None = None,
    abort: threading.Event | None = None,
    mode: int = FILE_MODE,
) -> int:
    """Write ``chunks`` to ``target`` only if they hash to ``digest``; return the size.

    The bytes go to a temporary file (in ``temporary_folder``, or beside the
    target under a hidden name), are fsynced, checked, then renamed over
    ``target``. On any failure, ``KeyboardInterrupt`` included, the temporary
    file is removed and ``target`` is left as it was. Raises ``DigestMismatch``,
    ``SizeMismatch``, ``StoreFull`` or ``StoreError``.
    """
    writer = open_verified(target, digest, origin, temporary_folder, expected_size, abort, mode)
    return write_chunks(writer, chunks).size


def open_verified(
    target: Path,
    digest: str,
    origin: str,
    temporary_folder: Path | None = None,
    expected_size: int | None = None,
    abort: threading.Event | None = None,
    mode: int = FILE_MODE,
    extension: str = DEFAULT_EXTENSION,
) -> VerifiedWriter[StoredFile]:
    """Open a writer whose ``finish`` fsyncs, checks and renames the bytes over ``target``.

    This is ``write_verified`` for callers that receive the bytes in
    callbacks instead of iterating over them.
    """

    def rename_into_place(temporary: Path, size: int) -> StoredFile:
        # Rename into place, then make the rename itself durable.
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temporary, target)
        fsync_directory(target.parent)
        return StoredFile(target, digest, extension, size)

    folder = temporary_folder or target.parent
    return VerifiedWriter(target, folder, digest, origin, rename_into_place, expected_size, abort, True, mode)


FileT = TypeVar("FileT")


class VerifiedWriter(Generic[FileT]):
    """A new temporary file that bytes are pushed into, hashed as they pass, and kept only if they match.

    ``write`` appends a chunk. ``finish`` checks the SHA-256 and the size,
    then passes the temporary file and its size to ``keep``, which renames
    or stages it, and returns what ``keep`` returns. ``discard`` removes the
    file. After a failed check or any other error in ``finish``, the
    temporary file is gone. ``target`` is the final path, named in errors.
    A writer is used by one thread at a time.
    """

    def __init__(
        self,
        target: Path,
        folder: Path,
        digest: str,
        origin: str,
        keep: Callable[[Path, int], FileT],
        expected_size: int | None = None,
        abort: threading.Event | None = None,
        fsync: bool = False,
        mode: int = FILE_MODE,
    ) -> None:
        self.target = target
        self.digest = digest
        self.origin = origin
        self.expected_size = expected_size
        #: Bytes written so far.
        self.size = 0
        self._keep = keep
        self._abort = abort
        self._fsync = fsync
        self._hasher = hashlib.sha256()
        try:
            self._descriptor: int | None
            self._descriptor, self.temporary = _create_temporary(folder, mode)
        except OSError as error:
            _raise_store_error(error, folder)

    def write(self, chunk: bytes | memoryview) -> None:
        """Hash and append ``chunk``. Raises ``TransferAborted`` once the abort event is set."""
        if self._abort is not None and self._abort.is_set():
            raise TransferAborted(f"{self.origin}: transfer aborted by shutdown")
        if self._descriptor is None:
            raise StoreError(f"cannot write {self.target}: the temporary file is already closed")

        self._hasher.update(chunk)
        try:
            _write_all(self._descriptor, chunk)
        except OSError as error:
            _raise_store_error(error, self.target)
        self.size += len(chunk)

    def finish(self) -> FileT:
        """Close the file, compare digest and size, and keep it. Raises ``DigestMismatch`` or ``SizeMismatch``."""
        try:
            self._close(self._fsync)

            # Compare digest and size before the file can reach a final path.
            actual = self._hasher.hexdigest()
            if actual != self.digest:
                raise DigestMismatch(self.digest, actual, self.origin)
            if self.expected_size is not None and self.size != self.expected_size:
                raise SizeMismatch(self.digest, self.expected_size, self.size)
            return self._keep(self.temporary, self.size)
        except OSError as error:
            self.discard()
            _raise_store_error(error, self.target)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and remove the temporary file. Safe to call more than once."""
        try:
            self._close(fsync=False)
        except OSError:
            pass
        self.temporary.unlink(missing_ok=True)

    def _close(self, fsync: bool) -> None:
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            if fsync:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_chunks(writer: VerifiedWriter[FileT], chunks: Iterable[bytes]) -> FileT:
    """Push every chunk into ``writer`` and finish it. The file is discarded if anything fails."""
    try:
        for chunk in chunks:
            writer.write(chunk)
    except BaseException:
        writer.discard()
        raise
    return writer.finish()


def _create_temporary(folder: Path, mode: int) -> tuple[int, Path]:
    """Create a new, empty, uniquely named file with ``mode`` in ``folder``; return its descriptor and path.

    The folder is made only when the first try finds it missing, which saves
    a ``mkdir`` call for every image.
    """
    path = folder / f".part-{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode), path
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, mode), path


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    """Write all of ``data``, looping over the partial writes that ``os.write`` may make."""
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


class Store:
    """A folder of images laid out as ``ab/cd/<digest>.<ext>``.

    Creating a ``Store`` touches nothing on disk; folders are made on the
    first write.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._identity = os.path.abspath(self.root)
        self.temporary_folder = self.root / TEMPORARY_FOLDER
        self.quarantine_folder = self.root / QUARANTINE_FOLDER
        #: Set to make every write in progress stop and leave nothing behind.
        self.aborting = threading.Event()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Store) and other._identity == self._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def path_for(self, digest: str, extension: str = DEFAULT_EXTENSION) -> Path:
        """Return the final path of an image with the given extension."""
        return file_path_of(self.root, digest, extension)

    def find(self, digest: str, extension: str | None = None) -> Path | None:
        """Return the path of the stored file for ``digest``, whatever its extension."""
        first_guess = self.path_for(digest, extension or DEFAULT_EXTENSION)
        if first_guess.is_file():
            return first_guess

        try:
            names = os.listdir(first_guess.parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        for name in sorted(names):
            stem, found_extension = split_name(name)
            if stem == digest and found_extension:
                return first_guess.parent / name
        return None

    def place(
        self,
        digest: str,
        extension: str,
        chunks: Iterable[bytes],
        origin: str,
        expected_size: int | None = None,
    ) -> StoredFile:
        """Store verified bytes under the layout path; see ``write_verified``.

        Raises ``StoreError`` before writing anything when ``digest`` or
        ``extension`` could not form a layout name.
        """
        return write_chunks(self.open_writer(digest, extension, origin, expected_size), chunks)

    def open_writer(
        self, digest: str, extension: str, origin: str, expected_size: int | None = None
    ) -> VerifiedWriter[StoredFile]:
        """Open a writer whose ``finish`` places the bytes under the layout path, as ``place`` does."""
        _check_layout_name(digest, extension)
        target = self.path_for(digest, extension)
        return open_verified(
            target,
            digest,
            origin,
            self.temporary_folder,
            expected_size,
            self.aborting,
            STORED_FILE_MODE,
            extension,
        )

    def stage(
        self,
        digest: str,
        extension: str,
        chunks: Iterable[bytes],
        origin: str,
        expected_size: int | None = None,
    ) -> StagedFile:
        """Write verified bytes to a temporary file in ``.tmp``, without syncing or renaming it.

        Raises what ``place`` raises. Nothing reaches a final path until
        ``commit`` is called with the returned file, and a temporary file left
        by a crash is removed by ``clean_temporary``.
        """
        return write_chunks(self.open_staged(digest, extension, origin, expected_size), chunks)

    def open_staged(
        self, digest: str, extension: str, origin: str, expected_size: int | None = None
    ) -> VerifiedWriter[StagedFile]:
        """Open a writer whose ``finish`` returns the verified file staged, as ``stage`` does."""
        _check_layout_name(digest, extension)
        target = self.path_for(digest, extension)

        def make_folder(temporary: Path, size: int) -> StagedFile:
            # The image's ``ab/cd`` folder is made here, on the caller's thread,
            # because making a folder can take a millisecond and ``commit`` runs
            # on the one thread that places every batch.
            target.parent.mkdir(parents=True, exist_ok=True)
            return StagedFile(target, digest, extension, size, temporary)

        return VerifiedWriter(
            target,
            self.temporary_folder,
            digest,
            origin,
            make_folder,
            expected_size,
            self.aborting,
            fsync=False,
            mode=STORED_FILE_MODE,
        )

    def commit(self, staged: list[StagedFile], sync: bool = True) -> list[CommitResult]:
        """Make staged files durable, rename them into place, and make the renames durable.

        One ``syncfs`` of the store's filesystem comes before the renames and
        one after, in place of two fsyncs per file. So after a power cut
        every final path holds either nothing or the whole verified file.
        Where ``syncfs`` is unavailable, each file and then each folder is
        fsynced instead. A file that cannot be placed gets its error in the
        result, and its temporary file is removed.

        With ``sync=False`` the files are only renamed, and the caller makes
        them durable later (see ``herbsync.durability``).
        """
        if not staged:
            return []
        if not sync:
            return [self._rename_staged(file) for file in staged]
        try:
            self._sync_before_rename(staged)
        except OSError as error:
            for file in staged:
                file.temporary.unlink(missing_ok=True)
            return [CommitResult(file, error=_store_error(error, file.temporary)) for file in staged]

        results = [self._rename_staged(file) for file in staged]
        placed = [result.stored for result in results if result.stored is not None]
        try:
            self._sync_after_rename(placed)
        except OSError as error:
            # The renames happened but may not survive a power cut, so the
            # files are not reported as placed. The next pass adopts them
            # after hashing them again.
            return [
                CommitResult(result.staged, error=_store_error(error, result.staged.path))
                if result.stored is not None
                else result
                for result in results
            ]
        return results

    def _sync_before_rename(self, staged: list[StagedFile]) -> None:
        if sync_filesystem(self.temporary_folder):
            return
        for file in staged:
            fsync_file(file.temporary)

    def _sync_after_rename(self, placed: list[StoredFile]) -> None:
        if not placed or sync_filesystem(self.root):
            return
        for folder in sorted({file.path.parent for file in placed}):
            fsync_directory(folder)

    def _rename_staged(self, file: StagedFile) -> CommitResult:
        try:
            try:
                os.replace(file.temporary, file.path)
            except FileNotFoundError:
                # ``stage`` made the folder, but something outside herbsync
                # may have removed it since.
                file.path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(file.temporary, file.path)
        except OSError as error:
            file.temporary.unlink(missing_ok=True)
            return CommitResult(file, error=_store_error(error, file.path))
        return CommitResult(file, StoredFile(file.path, file.digest, file.extension, file.size))

    def check(self, path: Path) -> str | None:
        """Hash a stored file; return None if it matches its name, else the actual digest."""
        stem, _ = split_name(path.name)
        actual = calculate_sha256(path)
        return None if actual == stem else actual

    def quarantine(self, path: Path) -> Path:
        """Move a file that failed a check out of the layout, keeping it for inspection."""
        self.quarantine_folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        destination = self.quarantine_folder / f"{stamp}-{path.name}"
        os.replace(path, destination)
        return destination

    def clean_temporary(self) -> int:
        """Remove temporary files left by an interrupted run; return how many."""
        if not self.temporary_folder.is_dir():
            return 0

        removed = 0
        for entry in os.scandir(self.temporary_folder):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            removed += 1
        return removed

    def iter_files(self) -> Iterator[StoredFile]:
        """Yield every file at a layout path, skipping hidden folders and stray names."""
        for first in _sorted_subfolders(self.root):
            for second in _sorted_subfolders(first):
                yield from _layout_files(second)


def _sorted_subfolders(folder: Path) -> list[Path]:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    names = [
        entry.name
        for entry in entries
        if len(entry.name) == 2 and entry.is_dir(follow_symlinks=False)
    ]
    return [folder / name for name in sorted(names)]


def _layout_files(folder: Path) -> Iterator[StoredFile]:
    for entry in os.scandir(folder):
        stem, extension = split_name(entry.name)
        if not extension or not is_digest(stem):
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        yield StoredFile(Path(entry.path), stem, extension, entry.stat().st_size)


def copy_chunks(path: Path) -> Iterator[bytes]:
    """Yield a file's bytes in chunks of ``CHUNK_SIZE``."""
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_SIZE):
            yield chunk
