"""The tinycnn command with a TINYCNN_CACHE of its own per torchrun rank:
``python -m tests.rank_cache_main train ...`` reads TINYCNN_CACHE/rankN (N: LOCAL_RANK).

For tests of what ranks whose machine files disagree compute (two machines of a job, or two
ranks that timed a near-tie apart), on one machine.
"""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    root = Path(os.environ["TINYCNN_CACHE"])
    os.environ["TINYCNN_CACHE"] = str(root / f"rank{os.environ.get('LOCAL_RANK', '0')}")
    from tinycnn.cli import main  # imported after: tinycnn.paths reads TINYCNN_CACHE once

    sys.exit(main())
