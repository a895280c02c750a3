"""What an adapter's ``select_targets`` is told besides the target: the options of target selection."""

from dataclasses import dataclass

__all__ = ["TargetOptions"]


@dataclass(frozen=True)
class TargetOptions:
    r"""Options of target selection, checked when made (families that select no queries ignore them).

    Args:
        threshold (float, optional): DETR: with ``target=None``, the queries whose best class ("no object"
                    excluded) has probability above it are explained (Algorithm 1). In ``[0, 1)``.
                    Default: 0.5
        single (bool, optional): DETR: one query per image (``attribute`` returns one attribution per
                    input); with ``target=None`` each image's most confident query, whatever ``threshold``.
                    Default: False
    """

    threshold: float = 0.5
    single: bool = False

    def __post_init__(self) -> None:
        threshold = self.threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
        if not isinstance(self.single, bool):
            raise ValueError(f"single must be a bool, got {self.single!r}.")
