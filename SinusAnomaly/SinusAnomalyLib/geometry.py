"""Coordinate conventions.

SimpleITK works in LPS millimetres (+x patient's left, +y posterior); NIfTI, nibabel, Slicer's
user-facing coordinates and every coordinate this project writes to disk are RAS millimetres
(+x patient's right, +y anterior, +z superior). These helpers convert points and transforms.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def ras_to_lps(point) -> np.ndarray:
    return LPS_TO_RAS @ np.asarray(point, dtype=float)


lps_to_ras = ras_to_lps  # the flip is its own inverse


def affine_to_matrix(transform: sitk.Transform) -> np.ndarray:
    """4x4 homogeneous matrix (LPS) of a linear SimpleITK transform (Euler, Similarity, Affine)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(transform.GetMatrix()).reshape(3, 3)
    center = np.asarray(transform.GetCenter())
    translation = np.asarray(transform.GetTranslation())
    m[:3, 3] = translation + center - m[:3, :3] @ center
    return m


def matrix_to_affine(matrix: np.ndarray) -> sitk.AffineTransform:
    """SimpleITK affine transform (LPS) from a 4x4 homogeneous matrix."""
    t = sitk.AffineTransform(3)
    t.SetMatrix(matrix[:3, :3].ravel().tolist())
    t.SetTranslation(matrix[:3, 3].tolist())
    return t


def lps_matrix_to_ras(matrix: np.ndarray) -> np.ndarray:
    """Express a 4x4 point mapping given in LPS coordinates in RAS coordinates."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ matrix @ flip


ras_matrix_to_lps = lps_matrix_to_ras


def nearest_rotation(linear: np.ndarray) -> np.ndarray:
    """Closest proper rotation to a 3x3 matrix (polar decomposition via SVD)."""
    u, _, vt = np.linalg.svd(linear)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def rotation_angle_deg(rotation: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
