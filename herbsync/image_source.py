"""The library API under the original module's name: ``from herbsync.image_source import ...``."""

from herbsync import *  # noqa: F403
from herbsync import __all__  # noqa: F401
