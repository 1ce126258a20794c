"""SARE: stochastic attraction-repulsion embedding (Liu, Li and Dai, ICCV 2019).

A VGG16 + NetVLAD network trained on Pittsburgh-30k tuples (query, nearest non-trivial positive,
10 hard negatives) with a KL-divergence loss between a kernel-defined "match-ability"
distribution over {positive, negatives} and the one-hot ground truth, in two variants: negatives
independently (``ind``) or jointly in one softmax (``joint``). Triplet and contrastive losses are
the baselines. Modules: :mod:`.netvlad` (the pooling layer), :mod:`.losses`, :mod:`.mining`
(NetVLAD-style tuple mining), :mod:`.pittsburgh` (``dbStruct`` reader) and the training entry
point ``python -m vpr_ros_training.sare.train``.
"""
