"""Placeholder: to be written."""
