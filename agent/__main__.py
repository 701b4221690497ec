import sys

from zcrepl.agent.main import main

sys.exit(main())
