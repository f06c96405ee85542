"""Storage: where checkpoints live — a local directory or an object store, behind one interface.

`STREAMFIT_CHECKPOINT_DIR` is a path (or `file://` URL) or an object-store URL (`s3://bucket/
prefix`, `gs://...`, `az://...`, through fsspec and its s3fs/gcsfs/adlfs drivers). Both keep the
same flat layout (`ckpt-<version>.npz`, `manifest.json`), so a copy migrates one to the other.

Atomic visibility, the one property `CheckpointStore` relies on: a reader sees a whole object
or none. A directory gets it from write-to-temporary, fsync, rename; an object store from its
single-request PUT (S3, GCS and Azure make an object visible only once fully uploaded).
Credentials and endpoint come from each cloud's standard variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, ... for S3); `STREAMFIT_STORAGE_OPTIONS` (JSON) passes anything else to
the driver. An unknown scheme, a missing driver, a malformed URL or missing credentials raise
`StorageConfigError` with one line, before anything starts.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

DRIVERS = {  # scheme -> (fsspec protocol, the package that implements it)
    "s3": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("az", "adlfs"),
    "abfs": ("abfs", "adlfs"),
}
TEMP_PATTERN = re.compile(r"^\..+\.(\d+)\.tmp$")  # LocalStorage's temporary names


class StorageConfigError(ValueError):
    """The checkpoint location cannot be used (one line, naming the setting)."""


class StorageUnavailable(OSError):
    """The store did not answer (network, endpoint down, refused): a transient fault."""


class Storage(Protocol):
    """A flat namespace of objects (checkpoint files and the manifest)."""

    location: str

    def read(self, name: str) -> bytes: ...  # FileNotFoundError if absent
    def write(self, name: str, data: bytes) -> None: ...  # whole or not at all
    def names(self) -> list[str]: ...
    def delete(self, name: str) -> None: ...
    def remove_orphans(self) -> list[str]: ...


class LocalStorage:
    """A directory; writes go to a temporary name, are fsynced and renamed into place."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self.location = str(directory)

    def read(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync(self.directory)

    def names(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return [p.name for p in self.directory.iterdir()]

    def delete(self, name: str) -> None:
        (self.directory / name).unlink(missing_ok=True)

    def remove_orphans(self) -> list[str]:
        """Delete temporary files (and staged export directories) of writers that died
        mid-write (kill -9 before the rename); a live writer's own are left alone (its pid is
        in the name)."""
        removed: list[str] = []
        if not self.directory.is_dir():
            return removed
        for path in self.directory.glob(".*.tmp"):
            match = TEMP_PATTERN.match(path.name)
            if match is None or process_alive(int(match.group(1))):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed


class ObjectStorage:
    """An object-store prefix through an fsspec filesystem (one PUT per object)."""

    def __init__(self, location: str, filesystem: Any, root: str) -> None:
        self.location = location
        self.fs = filesystem
        self.root = root.rstrip("/")

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def read(self, name: str) -> bytes:
        try:
            return bytes(self.fs.cat_file(self._path(name)))
        except FileNotFoundError:
            raise
        except Exception as exc:  # the driver's own errors too (botocore, aiohttp)
            raise _unavailable(exc) from exc

    def write(self, name: str, data: bytes) -> None:
        try:
            self.fs.pipe_file(self._path(name), data)
        except Exception as exc:  # the driver's own errors too (botocore, aiohttp)
            raise _unavailable(exc) from exc

    def names(self) -> list[str]:
        try:
            self.fs.invalidate_cache(self.root)  # other writers' objects: list afresh
            found = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:  # the driver's own errors too (botocore, aiohttp)
            raise _unavailable(exc) from exc
        return [str(path).rstrip("/").rsplit("/", 1)[-1] for path in found]

    def tree(self, prefix: str) -> list[str]:
        """Names of every object under `prefix`, however deep (an exported model version)."""
        try:
            self.fs.invalidate_cache(self.root)
            found = self.fs.find(self._path(prefix))
        except FileNotFoundError:
            return []
        except Exception as exc:  # the driver's own errors too (botocore, aiohttp)
            raise _unavailable(exc) from exc
        return [str(path).removeprefix(f"{self.root}/") for path in found]

    def delete(self, name: str) -> None:
        try:
            self.fs.rm_file(self._path(name))
        except FileNotFoundError:
            pass
        except Exception as exc:  # the driver's own errors too (botocore, aiohttp)
            raise _unavailable(exc) from exc

    def remove_orphans(self) -> list[str]:
        return []  # a PUT leaves nothing behind when its writer dies


def fsync(path: Path) -> None:
    """Flush a file, or a directory's entries (a rename into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unavailable(exc: BaseException) -> StorageUnavailable:
    return StorageUnavailable(f"{type(exc).__name__}: {exc}")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (this process included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def open_storage(location: str | Path, options: dict[str, Any] | None = None) -> Storage:
    """The storage `location` names (a path or a URL); StorageConfigError if unusable."""
    text = str(location)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if not scheme or (len(scheme) == 1 and os.name == "nt"):
        return LocalStorage(text)
    if scheme == "file":
        return LocalStorage(parts.path)
    if scheme not in DRIVERS:
        known = ", ".join(f"{s}://" for s in ("file", "s3", "gs", "az"))
        raise StorageConfigError(f"unknown scheme {scheme}:// (use a path, or {known})")
    protocol, package = DRIVERS[scheme]
    if not parts.netloc:
        raise StorageConfigError(f"{text} names no bucket: {scheme}://<bucket>/<prefix>")
    try:
        import fsspec

        driver = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError):
        raise StorageConfigError(
            f"{scheme}:// needs the {package} package (pip install {package})"
        ) from None
    kwargs = dict(options or {})
    if protocol == "s3":
        _s3_options(kwargs)
    if protocol == "gcs":
        driver = _gcs_driver(driver, kwargs)
    try:
        filesystem = driver(**kwargs)
    except Exception as exc:  # drivers raise many kinds for bad options
        raise StorageConfigError(f"cannot open {text}: {type(exc).__name__}: {exc}") from None
    root = f"{parts.netloc}{parts.path}".rstrip("/")
    return ObjectStorage(text, filesystem, root)


def _gcs_driver(driver: Any, kwargs: dict[str, Any]) -> Any:
    """gcsfs's default class first asks the Storage Control gRPC API for a bucket's layout
    (zonal, hierarchical), retrying for a minute on every call where that API is absent. A GCS
    emulator (an endpoint of its own: `endpoint_url` or STORAGE_EMULATOR_HOST) speaks only the
    JSON API, which gcsfs's plain class uses."""
    if kwargs.get("endpoint_url") or os.environ.get("STORAGE_EMULATOR_HOST"):
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem
    return driver


def _s3_options(kwargs: dict[str, Any]) -> None:
    """S3 from the standard AWS variables: the endpoint (AWS_ENDPOINT_URL, for S3-compatible
    stores) and credentials from botocore's chain; none and not anonymous is an error."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs.setdefault("endpoint_url", endpoint)
    if kwargs.get("anon") or kwargs.get("key"):
        return
    import botocore.session

    if botocore.session.get_session().get_credentials() is None:
        raise StorageConfigError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a "
            'profile, or a role), or {"anon": true} in STREAMFIT_STORAGE_OPTIONS'
        )
