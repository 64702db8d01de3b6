"""`python -m effdsl`: the same as the `effdsl` command."""

from effdsl.cli import main

raise SystemExit(main())
