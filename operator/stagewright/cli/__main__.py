"""``python -m stagewright.cli``: the same command as the console script."""

from stagewright.cli.entry import main

raise SystemExit(main())
