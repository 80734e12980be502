"""SinusAnomalyMRMLLib: the Slicer-facing helpers of the SinusAnomaly module, Qt-free.

Slicer's scripted-module factory takes every ``*.py`` at the top of a module folder for a module,
so the module's helpers live in this package next to ``SinusAnomaly.py``:

* :mod:`.resultinfo` - result.json (format 1 and 2) as table rows, log lines, fingerprint, crop
  boxes; bundle tooltips (plain Python and numpy);
* :mod:`.results` - result folders as MRML nodes, volume nodes as files, the slice views'
  layers (``slicer``, ``vtk``);
* :mod:`.process` - the background ``classify`` process (plain Python);
* :mod:`.classification` - one classify run of the module: started, waited for, concluded
  (its outcome and its results loaded), its files removed (``slicer`` through :mod:`.results`);
* :mod:`.bundleselector` - the bundle selector's items (any object with a QComboBox's methods);
* :mod:`.selftest` - what the module's self-test classifies and checks (``slicer``);
* :mod:`.installer` - installing the Python packages into Slicer's Python (``slicer`` on use).

Unlike ``SinusAnomalyLib`` (which never imports slicer, qt, ctk or vtk), :mod:`.results`,
:mod:`.classification` and :mod:`.selftest` import ``slicer`` and ``vtk``; nothing here imports
``qt`` or ``ctk``. This file imports none of them,
so ``SinusAnomalyMRMLLib.installer`` loads in PythonSlicer without the MRML libraries.
"""
