"""Orchestration of a run: the stages in order, checkpoints, the ledger, run state, export."""
