"""Imports a module that no installed distribution provides."""

import rlmesh_absent_dependency  # noqa: F401
