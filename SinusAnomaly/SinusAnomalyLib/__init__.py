"""SinusAnomalyLib: the pure-Python core of SinusAnomaly.

Reading head MRIs, locating and cropping the maxillary sinuses, the synthetic cohort, dataset
preparation (and, later, models and inference). It never imports ``slicer``, ``qt``, ``ctk`` or
``vtk``, so it runs in plain Python and in 3D Slicer's Python alike.

Method: Bhattacharya et al., "Self-supervised learning for classifying paranasal anomalies in the
maxillary sinus".
"""

__version__ = "0.1.0"
