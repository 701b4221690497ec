import sys

from zcrepl.cli.ctl import run

sys.exit(run())
