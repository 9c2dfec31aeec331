# Project-level pytest setup. The npuprec plugin itself is loaded through its pytest11 entry
# point (pip install -e .); pytester drives the suite in subprocesses for the e2e self-tests.
pytest_plugins = ["pytester"]
