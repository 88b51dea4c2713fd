"""Coverage-guided fuzzing of every parser netrecall runs on bytes it did not write (atheris/libFuzzer).

`targets.py` holds one target per parser with the properties it checks, `inputs.py` the byte framings
the targets read (so seeds can be written from real captures), `seeds.py` builds the seed corpora from
the repository's captures, `harness.py` is the libFuzzer entry point of one target and `run.py` runs
them all (`make fuzz`); see docs/reliability.md.
"""
