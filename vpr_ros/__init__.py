"""Visual place recognition for ROS 2: retrieval core, ROS nodes and training recipes."""

from vpr_ros.openmp import configure_process

# Before torch or faiss load: one OpenMP runtime, passive waiting, threads the process may use.
configure_process()

__version__ = '0.1.0'
