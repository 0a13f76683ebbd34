from maskclf.demo.generate import main

raise SystemExit(main())
