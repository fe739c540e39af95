import sys

from hvstore.cli import main

sys.exit(main())
