"""Tests of the CLI workflows (md, relax, check, bench, train, eval)."""
