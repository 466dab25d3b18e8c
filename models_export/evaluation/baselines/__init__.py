"""Baseline retrievers for the evaluation harness (all torch-free except ``sasrec``)."""
