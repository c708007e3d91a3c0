"""corral: governed Linux sandboxes for AI agents.

The package is split by concern (see DESIGN.md "The house"): ``policy``, ``credentials`` and
``audit`` depend on nothing else inside corral; ``sandbox``, ``proxy`` and ``tools`` build on
them; ``cli`` and ``mcp`` use everything.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
