import sys

from workers.pool import main

sys.exit(main())
