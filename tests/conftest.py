import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SMEC_DATA_DIR", ROOT.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared BEIR/STS folder (../shared/data beside the repo, or $SMEC_DATA_DIR)."""
    if not (DATA_DIR / "scifact" / "corpus.jsonl").exists():
        pytest.fail(f"shared data not found at {DATA_DIR}: set SMEC_DATA_DIR")
    return DATA_DIR
