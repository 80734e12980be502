"""The module's bundle selector: a combo box of model bundles, each item labelled, its data the
bundle's path and its tooltip what the bundle says of itself (:func:`.resultinfo.bundle_tooltip`).

Takes the combo box (a ``QComboBox`` or anything with its methods) from the caller, so it imports
no ``qt`` and is tested outside Slicer. The combo box sends no signals while
it is changed here: only the user's choices reach the module's parameter node.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from .resultinfo import bundle_tooltip

TOOLTIP_ROLE = 3  # Qt::ToolTipRole (qt.Qt.ToolTipRole), the same in Qt 5 and 6


@contextmanager
def _signals_blocked(combo):
    block = getattr(combo, "blockSignals", None)  # QObject.blockSignals returns the previous state
    previous = block(True) if block else None
    try:
        yield
    finally:
        if block:
            block(previous)


def _add(combo, label: str, path) -> int:
    combo.addItem(label, str(path))
    index = combo.count - 1
    combo.setItemData(index, bundle_tooltip(path), TOOLTIP_ROLE)
    return index


def fill(combo, choices, empty_text: str) -> None:
    """Replace the items by ``choices`` ((label, path) pairs, in order); one item ``empty_text``
    without a path when there are none."""
    with _signals_blocked(combo):
        combo.clear()
        for label, path in choices:
            _add(combo, label, path)
        if not choices:
            combo.addItem(empty_text, "")


def select(combo, path) -> None:
    """Make the item of the bundle at ``path`` current; a bundle not listed (chosen with Browse,
    outside the models folder) is added under its file name first. Nothing when ``path`` is empty."""
    if not path:
        return
    with _signals_blocked(combo):
        for index in range(combo.count):
            if combo.itemData(index) and Path(combo.itemData(index)) == Path(path):
                break
        else:
            index = _add(combo, Path(path).name, path)
        combo.currentIndex = index
