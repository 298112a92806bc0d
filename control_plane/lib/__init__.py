"""Cross-cutting pieces of the control plane: ids, logging, error responses, request ids."""
