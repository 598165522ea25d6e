import sys

from bench.driver import main

sys.exit(main())
