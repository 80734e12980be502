"""Reading and writing head MRIs with SimpleITK, with clear errors for unusable input.

Supported: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) and folders holding one DICOM series. Images are returned as 3D ``sitk.Image`` of
float32 in SimpleITK's physical space (LPS millimetres).
"""
from __future__ import annotations

import gzip
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ImageError, OutputError
from .fileio import atomic_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
logger = logging.getLogger(__name__)


def is_image_path(path: Path) -> bool:
    """True for a file with a supported image suffix (folders are DICOM candidates, not this)."""
    name = path.name.lower()
    return path.is_file() and any(name.endswith(s) for s in IMAGE_SUFFIXES)


def _first_line(exc: Exception) -> str:
    """The useful part of an ITK exception: ITK puts file/line noise before the description."""
    text = str(exc).strip()
    for line in text.splitlines():
        line = line.strip()
        if line.lower().startswith("description:"):
            return line.split(":", 1)[1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _read_dicom_folder(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    try:
        series = reader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:  # pragma: no cover - GDCM rarely raises here
        raise ImageError(folder, f"cannot scan the folder for DICOM series: {_first_line(exc)}") from exc
    if not series:
        raise ImageError(folder, "is a folder with no DICOM series (give an image file or one DICOM series folder)")
    if len(series) > 1:
        raise ImageError(
            folder,
            f"holds {len(series)} DICOM series ({', '.join(series[:3])}{', ...' if len(series) > 3 else ''}); "
            "give the folder of exactly one series",
        )
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise ImageError(folder, f"DICOM series cannot be read (corrupt or truncated?): {_first_line(exc)}") from exc


_NIFTI_FLOATS = {16: "f4", 64: "f8"}
SHEAR_TOLERANCE_VOXELS = 0.5  # a non-orthonormal affine is accepted when its approximation moves no voxel further


def _nifti_problem(path: Path) -> str | None:
    """Check a NIfTI file's voxel data against its header, as ITK does not.

    ITK reads a truncated .nii/.nii.gz without complaint (the missing voxels become zeros) and
    turns NaN voxels into zeros; both would silently corrupt the crops. Returns a description of
    the problem, or None.
    """
    try:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        return f"is truncated or corrupt ({exc})"
    for endian in "<>":
        if len(data) >= 4 and struct.unpack(endian + "i", data[:4])[0] in (348, 540):
            break
    else:
        return None  # not a NIfTI header: let ITK's own error speak
    if struct.unpack(endian + "i", data[:4])[0] == 348:
        dims = struct.unpack(endian + "8h", data[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", data[70:74])
        offset = int(struct.unpack(endian + "f", data[108:112])[0])
    else:
        datatype, bitpix = struct.unpack(endian + "2h", data[12:16])
        dims = struct.unpack(endian + "8q", data[16:80])
        offset = int(struct.unpack(endian + "q", data[168:176])[0])
    n_voxels = int(np.prod([max(int(d), 1) for d in dims[1:dims[0] + 1]])) if 0 < dims[0] <= 7 else 0
    expected = offset + n_voxels * bitpix // 8
    if len(data) < expected:
        return f"is truncated: the header describes {expected} bytes of image, the file holds {len(data)}"
    if datatype in _NIFTI_FLOATS:
        voxels = np.frombuffer(data, dtype=np.dtype(endian + _NIFTI_FLOATS[datatype]), count=n_voxels, offset=offset)
        bad = int(voxels.size - np.isfinite(voxels).sum())
        if bad:
            return f"contains {bad} non-finite voxels (NaN or inf) of {voxels.size}"
    return None


def _read_raw(path: Path) -> sitk.Image:
    if not path.exists():
        raise ImageError(path, "does not exist")
    if path.is_dir():
        return _read_dicom_folder(path)
    if path.stat().st_size == 0:
        raise ImageError(path, "is an empty file")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        problem = _nifti_problem(path)
        if problem:
            raise ImageError(path, problem)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        if "orthonormal" in str(exc) and path.name.lower().endswith((".nii", ".nii.gz")):
            return _read_non_orthonormal_nifti(path)
        raise ImageError(path, f"cannot be read (corrupt, truncated or not an image): {_first_line(exc)}") from exc


def _read_non_orthonormal_nifti(path: Path) -> sitk.Image:
    """A NIfTI whose affine is not a rotation times spacings (sheared or skewed), which ITK refuses.

    nibabel reads it; the nearest orthonormal direction matrix (polar decomposition) replaces the
    affine's, keeping the spacings and the centre voxel in place. Accepted, with a warning, when
    no voxel of the image moves by more than :data:`SHEAR_TOLERANCE_VOXELS` of the smallest
    spacing; otherwise refused: the scan would need resampling, not reinterpreting.
    """
    problem = "has a non-orthonormal (sheared or skewed) affine, which ITK cannot represent"
    try:
        import nibabel  # noqa: PLC0415
    except ImportError:
        raise ImageError(path, problem) from None
    try:
        nifti = nibabel.load(str(path))
        data = np.asarray(nifti.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many kinds for a broken file  # noqa: BLE001
        raise ImageError(path, f"{problem}, and nibabel cannot read it either ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageError(path, f"{problem} and is not a 3D volume (shape {data.shape})")
    affine = np.asarray(nifti.affine, dtype=float)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(spacing > 0):
        raise ImageError(path, f"{problem}: a voxel axis has zero length")
    u, _, vt = np.linalg.svd(linear / spacing)
    nearest = (u @ vt) * spacing
    centre = (np.asarray(data.shape) - 1) / 2.0
    corners = np.array([[i, j, k] for i in (0, data.shape[0] - 1) for j in (0, data.shape[1] - 1)
                        for k in (0, data.shape[2] - 1)], dtype=float) - centre
    moved = float(np.linalg.norm(corners @ (linear - nearest).T, axis=1).max())
    tolerance = SHEAR_TOLERANCE_VOXELS * float(spacing.min())
    if moved > tolerance:
        raise ImageError(path, f"{problem}; its nearest orthonormal affine would move voxels by up to {moved:.2f} mm "
                               f"(accepted up to {tolerance:.2f} mm): resample it onto an orthonormal grid first")
    origin_ras = affine[:3, 3] + (linear - nearest) @ centre  # the centre voxel stays where it was
    flip = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((flip @ (nearest / spacing)).ravel().tolist())
    image.SetOrigin((flip @ origin_ras).tolist())
    logger.warning("%s: non-orthonormal (sheared) affine replaced by the nearest orthonormal one "
                   "(voxels move by at most %.3f mm)", path, moved)
    return image


def validate_array(path: str | Path, array: np.ndarray) -> None:
    """Raise :class:`ImageError` for non-finite or constant voxel data."""
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise ImageError(path, f"contains {bad} non-finite voxels (NaN or inf) of {array.size}")
    lo, hi = float(array.min()), float(array.max())
    if hi - lo <= 1e-6 * max(1.0, abs(hi)):
        raise ImageError(path, f"is empty or constant (every voxel is {lo:g}); a head MRI is needed")


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D head MRI as float32 ``sitk.Image``; raise :class:`ImageError` when unusable.

    Rejected: missing path, empty or corrupt/truncated file, folder with no or several DICOM
    series, 2D images (also 3D with a single slice), 4D or multi-component images, NaN/inf voxels,
    constant images.
    """
    path = Path(path)
    image = _read_raw(path)
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        dim, size = 3, image.GetSize()
    if dim == 2 or (dim == 3 and min(size) == 1):
        raise ImageError(path, f"is a 2D image (size {'x'.join(map(str, size))}); a 3D head volume is needed")
    if dim != 3:
        raise ImageError(path, f"is a {dim}D image (size {'x'.join(map(str, size))}); a single 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ImageError(
            path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel (colour or vector); a scalar MRI is needed"
        )
    if min(size) < 8:
        raise ImageError(path, f"is too small to be a head MRI (size {'x'.join(map(str, size))})")
    image = sitk.Cast(image, sitk.sitkFloat32)
    try:
        array = sitk.GetArrayViewFromImage(image)
    except RuntimeError as exc:  # pragma: no cover
        raise ImageError(path, f"voxel data cannot be read: {_first_line(exc)}") from exc
    validate_array(path, array)
    return image


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> None:
    """Write ``image`` atomically (format from the suffix); :class:`OutputError` naming ``path``
    when it cannot be written."""
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise OutputError(path, f"cannot be written: {_first_line(exc)}") from exc
