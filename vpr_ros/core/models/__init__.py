"""Model registry, the Pair-VPR port, encoders and checkpoint I/O."""
