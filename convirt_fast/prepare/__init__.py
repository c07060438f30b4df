"""Data preparation: raw data -> a prepared folder (manifest, sentence index, rejects, images
pre-resized to 256 px). One module per source: mimic_cxr, own_csv, synthetic; `common` holds
the shared ending. The command line is `python -m convirt_fast.prepare` (see __main__.py)."""
