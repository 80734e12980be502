"""Reading head MRIs: every supported format, and a clear error for every kind of bad input."""
from __future__ import annotations

import gzip
import locale
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from SinusAnomalyLib.errors import ImageError
from SinusAnomalyLib.imageio import read_image, write_image
from SinusAnomalyTraining.cli import main


def _volume(shape=(20, 24, 16), spacing=(1.0, 1.2, 2.0), value=None) -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.uniform(0, 100, size=shape[::-1]).astype(np.float32) if value is None else np.full(shape[::-1], value, np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 5.0, 3.0))
    return image


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_reads_every_file_format_with_geometry(tmp_path, suffix):
    image = _volume()
    path = tmp_path / f"head{suffix}"
    sitk.WriteImage(image, str(path))
    read = read_image(path)
    assert read.GetSize() == image.GetSize()
    assert np.allclose(read.GetSpacing(), image.GetSpacing())
    assert np.allclose(read.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert read.GetPixelID() == sitk.sitkFloat32
    assert np.allclose(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))


def _write_dicom_series(image: sitk.Image, folder, series_uid: str, prefix: str = "slice") -> None:
    """One file per slice sharing a series UID (KeepOriginalImageUID: SimpleITK keeps our UIDs).

    GDCM's writer leaves the process's locale at C (seen with SimpleITK 2.x: Python's default text
    encoding became ASCII for every later test), so the locale is restored afterwards."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_slices(image, folder, series_uid, prefix)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image: sitk.Image, folder, series_uid: str, prefix: str) -> None:
    folder.mkdir(exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        sl = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.9",  # study
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",  # SOP instance
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{image.GetSpacing()[1]}\\{image.GetSpacing()[0]}",
            "0018|0050": str(image.GetSpacing()[2]),
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(sl)


def test_reads_a_dicom_series_folder(tmp_path):
    image = sitk.Cast(_volume(shape=(16, 16, 10)), sitk.sitkInt16)
    _write_dicom_series(image, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.1")
    read = read_image(tmp_path / "series")
    assert read.GetSize() == image.GetSize()
    assert read.GetSpacing()[2] == pytest.approx(2.0, abs=1e-3)
    assert np.allclose(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))


def _expect(path, *fragments):
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_path(tmp_path):
    _expect(tmp_path / "nope.nii.gz", "does not exist")


def test_2d_image(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(1).random((32, 32)).astype(np.float32)), str(path))
    _expect(path, "2D")


def test_single_slice_3d_is_2d(tmp_path):
    path = tmp_path / "slab.nii.gz"
    sitk.WriteImage(_volume(shape=(32, 32, 1)), str(path))
    _expect(path, "2D")


def test_4d_image(tmp_path):
    path = tmp_path / "fmri.nii.gz"
    volumes = sitk.GetImageFromArray(np.random.default_rng(2).random((3, 10, 12, 14)).astype(np.float32), isVector=False)
    assert volumes.GetDimension() == 4
    sitk.WriteImage(volumes, str(path))
    _expect(path, "4D")


def test_constant_image(tmp_path):
    path = tmp_path / "const.nii.gz"
    sitk.WriteImage(_volume(value=7.0), str(path))
    _expect(path, "constant")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    _expect(path, "empty file")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_voxels(tmp_path, bad, suffix):
    """Also for NIfTI, whose ITK reader turns NaN into 0 without a word."""
    image = _volume()
    array = sitk.GetArrayFromImage(image)
    array[3, 4, 5] = bad
    array[4, 4, 5] = bad
    bad_image = sitk.GetImageFromArray(array)
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(bad_image, str(path))
    _expect(path, "2 non-finite voxels")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_truncated_file(tmp_path, suffix):
    """ITK itself reads truncated NIfTI silently (zeros for the missing part); we must not."""
    path = tmp_path / f"full{suffix}"
    sitk.WriteImage(_volume(shape=(40, 40, 40)), str(path))
    data = path.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    message = _expect(truncated)
    assert "truncated" in message or "cannot be read" in message


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 40))
    _expect(path, "cannot be read")


def test_folder_without_dicom(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no images here")
    _expect(folder, "no DICOM series")


def test_folder_with_two_dicom_series(tmp_path):
    folder = tmp_path / "mixed"
    for n, uid in enumerate(("1.2.3.4.5.1", "1.2.3.4.5.2")):
        _write_dicom_series(sitk.Cast(_volume(shape=(8, 8, 3)), sitk.sitkInt16), folder, uid, prefix=f"s{n}_")
    _expect(folder, "2 DICOM series")


def test_write_image_is_atomic_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    write_image(_volume(), target)
    assert target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]
    with pytest.raises(Exception):
        write_image("not an image", tmp_path / "bad.nii.gz")  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_cli_reports_bad_input_with_exit_code_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "nan.nii.gz"
    image = _volume()
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    out = tmp_path / "out"
    code = main(["extract", str(path), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "nan.nii.gz" in err and "non-finite" in err
    assert not out.exists()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
