"""``python -m SinusAnomalyTraining ...``"""
from SinusAnomalyTraining.cli import run_and_exit

run_and_exit()
