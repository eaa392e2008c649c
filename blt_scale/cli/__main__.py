import sys

from blt_scale.cli.app import main

sys.exit(main())
