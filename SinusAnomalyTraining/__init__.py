"""SinusAnomalyTraining: headless command-line toolkit (``sinus-anomaly``) around SinusAnomalyLib.

Runs as ``sinus-anomaly``, ``python -m SinusAnomalyTraining``, under ``PythonSlicer`` and as
``Slicer --no-main-window --python-script SinusAnomalyTraining/slicer_script.py -- ...``.
"""

__version__ = "0.1.0"
