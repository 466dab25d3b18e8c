"""Entry point: ``python -m models_export``."""

from models_export.cli import main

raise SystemExit(main())
