"""The per-scan extraction cache of ``prepare``: what a cached scan must match to be reused.

A scan's crops (``scans/<patient>/crops.npz``) are reused when its ``extraction.json`` records
the cache key :func:`cache_block` gives now: the same image file, unchanged (size and
modification time), and the same extraction, i.e. the same :func:`extraction_fingerprint`: a
checksum of the source of every module of this package that extraction runs (its code and its
parameters, which are constants in that code), the SimpleITK version, and the reference head's
checksum. Any change to them extracts the scan again; no version number has to be bumped by hand.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .reference import SIDES, load_reference

CACHE_FORMAT = 2  # 2: the extraction's fingerprint replaced the library version
SCAN_CROPS = "crops.npz"
SCAN_SUMMARY = "extraction.json"
SCAN_FAILURE = "failure.json"  # why the scan could not be used, with the cache key it was found under
PACKAGE_DIR = Path(__file__).resolve().parent


def _local_imports(module: Path) -> set[str]:
    """The modules of this package that ``module`` imports (``from . import x``, ``from .x import y``)."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {alias.name for alias in node.names}
    return {name.split(".")[0] for name in found}


def extraction_sources(entry: str = "extraction") -> list[Path]:
    """The source files of ``entry`` and of every module of this package it imports, directly or not."""
    seen, todo = set(), [entry]
    while todo:
        name = todo.pop()
        if name in seen or not (PACKAGE_DIR / f"{name}.py").is_file():
            continue
        seen.add(name)
        todo.extend(_local_imports(PACKAGE_DIR / f"{name}.py"))
    return sorted(PACKAGE_DIR / f"{name}.py" for name in seen | {"__init__"})


@functools.lru_cache(maxsize=1)
def extraction_fingerprint() -> str:
    """Checksum of what makes a scan's crops: extraction's source files, SimpleITK's version, the reference head."""
    digest = hashlib.sha256()
    for path in extraction_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(f"SimpleITK {sitk.__version__}\0reference {load_reference().sha256}".encode())
    return digest.hexdigest()


def image_signature(image: Path) -> dict:
    """Size and modification time of an image file (or of all files of a DICOM folder)."""
    if image.is_dir():
        files = [f for f in image.rglob("*") if f.is_file()]
        stats = [f.stat() for f in files]
        return {
            "files": len(files),
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }
    stat = image.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_block(image: Path) -> dict:
    """What a cached scan must match to be reused: the same image, unchanged, and the same extraction."""
    return {
        "format": CACHE_FORMAT,
        "image": str(image),
        "signature": image_signature(image),
        "extraction": extraction_fingerprint(),
        "reference_sha256": load_reference().sha256,
    }


def cached_failure(scan_dir: Path, image: Path) -> str | None:
    """The error recorded for ``image`` as it is now, by this extraction (a scan that cannot be used
    fails the same way again: it is not retried until the image or the extraction changes), else None."""
    try:
        recorded = json.loads((scan_dir / SCAN_FAILURE).read_text(encoding="utf-8"))
        return recorded["error"] if recorded.get("cache") == cache_block(image) else None
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None


def cached_scan_is_complete(scan_dir: Path, image: Path) -> bool:
    """True when ``scan_dir`` holds both crops and a summary made from ``image`` as it is now, by this extraction."""
    crops_path, summary_path = scan_dir / SCAN_CROPS, scan_dir / SCAN_SUMMARY
    if not crops_path.is_file() or not summary_path.is_file():
        return False
    try:
        cached = json.loads(summary_path.read_text(encoding="utf-8")).get("cache")
        with np.load(crops_path) as crops:
            keys = set(crops.files)
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, AttributeError):
        return False
    return cached == cache_block(image) and keys == set(SIDES)
