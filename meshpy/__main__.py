from meshpy.cli import main

raise SystemExit(main())
