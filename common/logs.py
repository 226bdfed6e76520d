"""One log format for every fedstock process: time, level, who, and a sentence."""

import logging
import os


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("FEDSTOCK_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
