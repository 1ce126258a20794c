"""Pair-VPR two-stage training for vpr_ros (research code; uses the vpr_ros library, never rclpy).

Stage one (``python -m vpr_ros_training.stage_one``) pre-trains the encoder and pair decoder with
Siamese masked image modelling on place-aware image pairs; stage two
(``python -m vpr_ros_training.stage_two``) trains the global descriptor and the pair classifier
jointly. Both run under ``torchrun`` (DDP) on GPU clusters and on one CPU process for tiny configs.
"""

__version__ = '0.1.0'
