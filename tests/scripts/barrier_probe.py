"""Two ranks: rank 1 writes a file late, then both meet at ``dist.barrier``; rank 0 must then
see the file. Prints one line per round on rank 0 and exits 1 if any round missed it."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from smec_dist import dist  # noqa: E402

folder, rounds = Path(sys.argv[1]), 3
missed = 0
for i in range(rounds):
    flag = folder / f"round-{i}"
    if dist.rank() == 1:
        time.sleep(0.5)
        flag.write_text("written by rank 1 before the barrier")
    dist.barrier()
    if dist.is_main():
        missed += not flag.exists()
        print(f"round {i}: {'seen' if flag.exists() else 'MISSING'}", flush=True)
    dist.barrier()
sys.exit(1 if missed else 0)
