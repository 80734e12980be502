"""``python -m SinusAnomalyTraining ...``"""
import sys

from SinusAnomalyTraining.cli import main

sys.exit(main())
