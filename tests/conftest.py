"""Test configuration shared by every test file.

Four fake CPU devices for the sharding tests; XLA reads this flag when jax initialises its
backends, so it must be set before anything imports jax.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=4"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
