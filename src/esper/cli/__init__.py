"""The `esper` and `sanctum` commands: parse, validate, then wire the rooms together.

The only package that knows both the morphogenetic environment and the algorithm.
"""
