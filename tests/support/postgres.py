"""Throwaway PostgreSQL fixtures (being written by the registry helper)."""
