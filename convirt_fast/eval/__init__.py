"""The paper's evaluation protocols (docs/evaluation.md): retrieval.py (Precision@k, the retrieval
CSV format), metrics.py (AUC, accuracy), tasks.py (labels, splits, label fractions), encoders.py
(what can be evaluated), embed.py, probe.py (linear probe), finetune.py, zeroshot.py, suite.py
(one encoder, every protocol), report.py (markdown, plots, JSON), main.py (the CLI's body)."""
