"""What tests (ours and users') need: synthetic cubes, raise-if-computes, a local gateway, flow truth figures."""

from glacierflow.testing.helpers import *  # noqa: F401,F403
