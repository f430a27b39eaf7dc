from ddkit.cli import main

raise SystemExit(main())
