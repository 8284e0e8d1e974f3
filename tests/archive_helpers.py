"""Writing small archives for the data tests (imported by them; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path


def write_archive(path: Path, members: dict[str, bytes], *, links: dict | None = None) -> Path:
    """A ``.zip`` or ``.tar.gz`` (by ``path``'s suffix) holding ``members`` {name: bytes}, names as given.

    ``links``: for a tar, {name: (tarfile.SYMTYPE or LNKTYPE, target)}; for a zip, {name: target}
    stored as a symlink entry. Parent folders are created. Returns ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(zipfile.ZipInfo(name), data)
            for name, target in (links or {}).items():
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o120777 << 16
                archive.writestr(info, target)
        return path
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path
