"""Models: the registry, encoders, the Pair-VPR port, pair heads, checkpoints and backends.

Also owns the image preprocessing a model expects and the ranking score stored with a checkpoint
(fusion and calibration). May import: the ground floor only.
"""
