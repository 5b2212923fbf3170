import sys

from hpc_modatts.cli import main

sys.exit(main())
