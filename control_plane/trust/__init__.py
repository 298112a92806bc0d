"""Trust in what untrusted nodes return: checked usage, measured speed, reputation and quarantine, spot checks."""
