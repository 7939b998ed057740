"""`python -m uploadsvc` is the `uploadsvc` command."""

from .cli import main

raise SystemExit(main())
