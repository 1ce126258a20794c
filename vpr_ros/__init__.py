"""Visual place recognition for ROS 2.

Packages, lowest first: the ground floor (``config``, ``errors``, ``geometry``, ``openmp``),
``models``, ``data``, ``map``, ``sample``, ``localization``, ``evaluation``, ``cli``; the ROS 2
nodes in ``ros`` (tools in ``ros.tools``). Imports point down only (docs/architecture.md).
"""

from vpr_ros.openmp import configure_process

# Before torch or faiss load: one OpenMP runtime, passive waiting, threads the process may use.
configure_process()

__version__ = '0.1.0'
