"""Scheduling: the in-memory node registry fed by heartbeats, and placement of jobs on its nodes."""

from control_plane.scheduler.placement import Candidate, Score, candidates, explain
from control_plane.scheduler.registry import Change, ModelSummary, NodeRegistry, NodeView

__all__ = ["Candidate", "Change", "ModelSummary", "NodeRegistry", "NodeView", "Score", "candidates", "explain"]
