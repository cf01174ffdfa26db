"""`python -m launcher …` is `cosmogan …`."""

from launcher.cli import main

raise SystemExit(main())
