"""Tools the model may call: a registry built from typed Python functions, safe dispatch,
DISC-FinLLM's finance tools, the inline `[Calculator(...)→result]` style, and an opt-in
Python code interpreter.
"""

from domainlm.tools.registry import Observation, Tool, Toolset, tool

__all__ = ["Observation", "Tool", "Toolset", "tool"]
