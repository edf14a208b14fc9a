"""``python -m agent run --config agent.toml``."""

from agent.cli import main

raise SystemExit(main())
