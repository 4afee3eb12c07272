"""Test support: tiny random models written in every on-disk layout users have."""
