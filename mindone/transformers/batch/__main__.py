import os
import sys

if not __package__:  # run as a file (msrun takes a script path): this folder must not shadow top-level modules
    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))

from mindone.transformers.batch.cli import main  # noqa: E402

sys.exit(main())
