"""``python -m edgefleet.agent run --config agent.toml``."""

from edgefleet.agent.cli import main

raise SystemExit(main())
