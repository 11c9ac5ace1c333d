"""``python -m gn_keras.kernels``: compile the optional kernels now."""

import sys

from gn_keras.kernels import main

sys.exit(main())
