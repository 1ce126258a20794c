"""StructVPR: distilling structural (segmentation) knowledge into an RGB VPR model (CVPR 2023).

Shen et al. train a SEG-modality *teacher* on segmentation label maps, pre-encoded as weighted
one-hot maps (:mod:`.label_maps`), then an RGB *student* with its VPR loss plus a feature-based
distillation loss whose per-sample weight grows with the teacher's knowledge of the sample and
with the teacher-student gap (:mod:`.partition`, :mod:`.distillation`). Only the RGB student runs
at inference; segmentation is used in training only. No official code exists and the reference
marks the thresholds and formulas as unverified: every one of them is a documented config value
here. :mod:`.street_scenes` renders a procedural street with exact label maps for CPU tests;
:mod:`.colour_segmenter` stands in for a segmenter on image folders without label maps (colour
k-means classes, an assumption); the entry point is ``python -m vpr_ros_training.structvpr.train``.
"""
