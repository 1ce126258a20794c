"""GCL: generalized contrastive loss trained with graded similarity labels (CVPR 2023).

Leyva-Vallina, Strisciuglio and Petkov replace the binary same-place label of the contrastive
loss by a graded similarity ``psi`` in [0, 1] computed from camera metadata and train without hard
mining. This subpackage holds the first public field-of-view labeller (:mod:`.fov`,
:mod:`.labels`), the loss (:mod:`.loss`), the 50/25/25 pair sampling (:mod:`.sampling`), the
MSLS reader (:mod:`.msls`), the CNN + GeM networks (:mod:`.networks`), PCA-whitening
(:mod:`.whitening`) and the training entry point ``python -m vpr_ros_training.gcl.train``.
"""
