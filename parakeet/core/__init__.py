"""Core layer: settings, errors, transcript records and the engine contract. Imports nothing of the project."""
