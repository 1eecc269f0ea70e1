"""``python -m playbook``: the same command as the ``playbook`` console script (see ``playbook.cli``)."""
import sys

from playbook.cli import main

sys.exit(main())
