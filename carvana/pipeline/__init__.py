"""The pipeline's stages, each a module of plain functions a command runs: `train` (one run, `one_run`, or its
folds, `folds`), `score` (the validation cars at full resolution), `predict` (the test set into a submission),
`cutout`, `files` (validate, score, submit a file) and `run_all` (`python main.py`: all of them), with `report`
holding their banners and summaries. Each function logs what it does and where things were written.

Under torchrun (`carvana.core.distributed`) every process runs the same function: rank 0 reserves the run and
gets the data first, every process trains and validates its share, rank 0 alone scores the validation cars at
full resolution and hands the result (and the scored weights) to the others, and every process predicts its
share of the test set into a part file that rank 0 merges into the submission (`carvana.submission.parts`).
"""
