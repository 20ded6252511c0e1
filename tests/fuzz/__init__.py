"""Fuzz targets for every parser an attacker can reach, run by atheris and hypothesis."""
