"""Sub-commands of the ``autolabel`` command line, one module each."""
