"""The ``mlff`` command line: train, eval, md, relax, check, bench."""
