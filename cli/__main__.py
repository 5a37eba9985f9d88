import sys

from glasswing.main import main

sys.exit(main())
