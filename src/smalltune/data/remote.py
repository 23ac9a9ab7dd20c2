"""Data files named by URL (s3://, gs://, abfs://, hf://, file://, ...), for the readers to read as local files.

A URL is opened with pyarrow's filesystem layer (`pyarrow.fs.FileSystem.from_uri`: S3, GCS, Azure, HDFS, local,
and hf:// through huggingface_hub), else with fsspec for a scheme pyarrow does not know (memory://, http://, ...;
its filesystem package installed). `RemotePath` answers the few questions `readers` asks of a `Path` (exists,
is_file, iterdir, name, stem, suffix, read_bytes), so a file read by URL gives the same rows, and its records the
same ids (file stem and line, or the id column), as the same file read from disk; it prints as its URL, so each
record's `where` is `URL:line`. Credentials come from the filesystem's usual places (environment, config files).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from smalltune.errors import DataError

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: C:\ is a drive, not a scheme


def is_url(value: object) -> bool:
    """Whether `value` is a URL string (scheme://...), not a local path."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


@dataclass(frozen=True, order=True)
class RemotePath:
    """A file or folder named by a URL, with its filesystem, its path there and its type (looked up once)."""

    url: str
    path: str = field(compare=False)
    fs: Any = field(compare=False, repr=False)
    kind: str = field(compare=False)  # "file", "folder" or "missing"

    @classmethod
    def of(cls, url: str) -> RemotePath:
        """The file or folder at `url`; DataError when no filesystem reads the URL or it cannot be reached."""
        fs, path = _filesystem(url)
        try:
            info = fs.get_file_info(path)
        except OSError as exc:
            raise DataError(f"{url}: cannot reach it: {exc}; check the URL and your credentials") from exc
        return cls(url, path, fs, _kind(info))

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def stem(self) -> str:
        return PurePosixPath(self.path).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix

    @property
    def local(self) -> Path | None:
        """The local file this names (a file:// URL), for the checks that an output never overwrites an input."""
        import pyarrow.fs as pafs

        return Path(self.path) if isinstance(self.fs, pafs.LocalFileSystem) else None

    def exists(self) -> bool:
        return self.kind != "missing"

    def is_file(self) -> bool:
        return self.kind == "file"

    def resolve(self) -> RemotePath:
        return self

    def iterdir(self) -> list[RemotePath]:
        """The entries of a folder (one level), each with its URL: the folder's URL and the entry's name."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path))
        except OSError as exc:
            raise DataError(f"{self.url}: cannot list it: {exc}") from exc
        parts = urlsplit(self.url)
        return [RemotePath(urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{info.base_name}")),
                           info.path, self.fs, _kind(info)) for info in infos]

    def read_bytes(self) -> bytes:
        """The file's bytes (OSError when it cannot be read, as `Path.read_bytes`)."""
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def __str__(self) -> str:
        return self.url


def _kind(info: Any) -> str:
    import pyarrow.fs as pafs

    return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(info.type, "missing")


def _filesystem(url: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path in it) for a URL: pyarrow's own, else fsspec's wrapped as a pyarrow one."""
    scheme = url.split("://", 1)[0]
    try:
        import pyarrow.fs as pafs
    except ImportError as exc:
        raise DataError(f"{url}: reading a URL needs pyarrow (pip install pyarrow)") from exc
    try:
        return pafs.FileSystem.from_uri(url)
    except OSError as exc:  # a known scheme that could not be set up: region, credentials, network
        raise DataError(f"{url}: cannot reach it: {exc}; check the URL and your credentials") from exc
    except ValueError:  # ArrowInvalid: a scheme pyarrow does not know; fsspec may
        pass
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise DataError(f"{url}: no installed filesystem reads {scheme}:// URLs ({exc}); install fsspec and its "
                        f"{scheme} package, or copy the data to a local folder") from exc
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path
