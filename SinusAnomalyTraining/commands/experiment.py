"""The comparison grid of the paper: pretraining methods x label fractions x folds, and the CAE ablation.

Each pretraining runs once per fold and serves every label fraction; finished cells are skipped on
re-run. Ends with RUN/evaluation/report.md: a table in the form of the paper's Table 2 (method x
fraction: AUROC, AUPRC, F1 with 95 % intervals) beside the paper's own numbers (HCHS data, not
ours), the CAE ablation in the form of Table 3, and AUPRC/AUROC-versus-fraction curves (Figure 3).

Configurations: 'grid-cpu' (synthetic cohort on 2 CPU cores: 32^3 crops, narrow networks, few
epochs, no transfer learning, six label fractions and the CAE ablation), 'grid-cpu5' (the same
networks for a 5-fold run on 150 labelled and 300 unlabelled synthetic patients within 90 minutes
on 2 cores: fractions 10/20/100, no ablation; see docs/grid-cpu5.md), 'grid-residual' and
'grid-residual-cohort' (issue 28's focused grid: none, residual and BYOL, 10 pretraining epochs;
the paper's per-crop residual target and the cohort-scaled one; see docs/training.md) and
'grid-paper' (the paper's sizes, for GPUs; set medicalnet_weights to a local MedicalNet ResNet18
file), or a JSON file of your own.
"""
from __future__ import annotations

from .run import add_arguments, run  # noqa: F401  (the same pipeline; the grid is in the configuration)
