"""Small helpers shared by every layer (files, logging)."""
