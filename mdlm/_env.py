"""Environment checks that turn known install traps into one clear message."""

from __future__ import annotations

import importlib.util


def check_torchvision() -> None:
    """Fail early, with the fix, when a torchvision build that does not match torch is installed.

    litdata declares ``torchvision``; on a CPU-only torch pip picks a CUDA torchvision whose
    operators cannot load, and ``import lightning`` then dies inside torchmetrics with
    "operator torchvision::nms does not exist". mdlm never uses torchvision.
    """
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401
    except (RuntimeError, ImportError, OSError) as err:  # pragma: no cover - depends on the install
        raise ImportError(
            f"the installed torchvision does not match torch ({err}); mdlm does not use torchvision: "
            "remove it with `pip uninstall -y torchvision` (see the README's install note)"
        ) from err
