from tinycnn.cli import main

raise SystemExit(main())
