"""Offline training, export and evaluation of the ranker and its GRADE fusion."""
