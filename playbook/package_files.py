"""Files of saved ``.mlpackage`` folders: their size on disk and zipped, their permissions, and the temporary
packages coremltools makes.  Plain file operations; knows nothing of coremltools' API beyond two attributes."""
from __future__ import annotations

import io
import os
import shutil
import weakref
import zipfile
from pathlib import Path
from typing import Any


def release_on_collect(mlmodel: Any) -> Any:
    """``mlmodel``, whose temporary package (``ct.convert`` and the ``optimize.coreml`` functions make one in the temp
    folder) is now removed when the object is garbage collected.  coremltools removes it only at interpreter exit,
    which a worker process (``os._exit``) or a killed kernel never reaches: one day of this project's runs and test
    suites left 6,108 of them (4 GB) in /tmp."""
    if (getattr(mlmodel, "is_temp_package", False) and getattr(mlmodel, "package_path", None)
            and getattr(mlmodel, "_playbook_release", None) is None):  # one finalizer, however often it is passed
        mlmodel._playbook_release = weakref.finalize(mlmodel, shutil.rmtree, mlmodel.package_path, True)
    return mlmodel


def share_permissions(folder: Path) -> None:
    """Give every file and folder of a saved package the permissions the umask allows (coremltools writes
    ``model.mlmodel`` 0600 through a temp file; the rest of the package is world-readable)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def directory_size(path: Path) -> int:
    """Bytes of all files below ``path`` (the real on-disk package size)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def zipped_size(path: Path) -> int:
    """Bytes of ``path`` zipped with DEFLATE (the download size), built in memory."""
    buffer = io.BytesIO()
    root = Path(path)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for f in sorted(root.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(root.parent))
    return buffer.tell()
