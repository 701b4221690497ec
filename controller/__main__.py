import sys

from zcrepl.controller.main import main

sys.exit(main())
