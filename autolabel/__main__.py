"""``python -m autolabel`` runs the command line."""

from autolabel.cli import main

raise SystemExit(main())
