"""Test configuration shared by every test file.

Eight fake CPU devices for the sharding and context-parallel tests (meshes of fewer devices
take the first ones); XLA reads this flag when jax initialises its backends, so it must be set
before anything imports jax. Under pytest-xdist (`-n`), each worker allocates GPU memory as it
goes instead of taking most of it up front, so that workers can share a GPU.
"""

import os

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
