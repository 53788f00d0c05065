"""Loss functions: see METHODS.md."""
