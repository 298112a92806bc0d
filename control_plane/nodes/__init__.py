"""Nodes: registration, token checks on advertisements, and the network view."""
