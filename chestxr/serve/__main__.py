"""``python -m chestxr.serve ckpt_path=PATH``: run the DICOM AI node until interrupted."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("chestxr.serve")


def serve(cfg: DictConfig) -> None:
    """Start the node and block until SIGINT/SIGTERM."""
    from chestxr.serve.node import Node

    conf = OmegaConf.to_container(cfg, resolve=True)
    conf["ckpt_path"] = to_absolute_path(conf["ckpt_path"])
    conf["state_dir"] = to_absolute_path(conf["state_dir"])
    node = Node(conf).start()
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    log.info("chestxr node ready (state in %s); Ctrl-C stops it", conf["state_dir"])
    done.wait()
    node.stop()


def cli() -> int:
    """Command-line entry point."""
    hydra.main(version_base="1.3", config_path="../../conf", config_name="serve")(serve)()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
