"""Readers for the standard VPR benchmarks and for pairs of traversals (no ROS needed).

Owns the benchmark data sets that ``vpr-eval`` and ``vpr-calibrate`` read: one module per
dataset format, each returning an :class:`~vpr_ros.data.benchmarks.dataset.EvalDataset`
(database and query images, file paths read when needed or in-memory
:class:`~vpr_ros.data.frame.Frame` objects, and per query the database indices that count as
correct). The protocols follow ``shared/reference/eval.md``:

- ``dataset``: the record type :class:`~vpr_ros.data.benchmarks.dataset.EvalDataset` and the
  helpers the readers share (image loading and resizing, stamps, protocol sizes).
- ``formats``: the ``--dataset-format`` names and the reader each one runs
  (:func:`~vpr_ros.data.benchmarks.formats.load_dataset`).
- ``image_folders``: format ``folder`` (VPR-methods-evaluation ``database/`` + ``queries/``).
- ``index_list``: format ``index-list`` (``query/`` + ``ref/`` and an index-list ground truth).
- ``nordland``: format ``nordland`` (the VPR-Bench split).
- ``msls``: formats ``msls-val`` and ``msls-test``, and the challenge submission file.
- ``netvlad``: formats ``pitts`` (30k / 250k) and ``tokyo`` (Tokyo 24/7).
- ``traversals``: pose-based pairs of traversals and format ``bags``.
- ``sequence``: format ``sequence`` (one loop-closure sequence) and the sequence helpers.
- ``loop_matrix``: format ``loop-matrix`` (a sequence with a loop-closure matrix).
- ``kitti``: format ``kitti-poses`` (a sequence with a KITTI pose file).

Object (pickled) ``.npy`` files are never loaded; convert them to JSON first. This package
re-exports nothing: import each name from the module that defines it.
"""
