"""The map store: entry records, FAISS indexes, the token store and atomic on-disk storage.

Owns :class:`~vpr_ros.map.database.MapDatabase` and its file format. May import: the ground floor
and ``vpr_ros.models`` (the model spec a map was built with). Never imports localization or ROS.
"""
