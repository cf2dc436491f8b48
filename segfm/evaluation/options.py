"""Options of the test protocols, shared by every method.

A method's ``protocol`` init argument names the protocol (``interactive`` or ``text``), or
``native``: a plain alias for the method's :attr:`~segfm.methods.base.BaseTask.native_protocol`
(MedSAM: the box alone; SAM-Med3D: N clicks without a box; SegVol: text). The rest are the
``evaluation`` init argument, :class:`Evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProtocolName = Literal["interactive", "text"]
ClickRule = Literal["center", "random"]


@dataclass
class Evaluation:
    """How ``test`` scores and what ``test`` / ``predict`` write.

    Attributes:
        clicks: Click steps of the interactive protocol; None takes the protocol's own count
            (5 for ``interactive``, the method's for ``native``), 0 gives the box alone.
        click_rule: ``center`` of the largest error component (the CVPR 2025 rule) or a
            ``random`` error voxel (SAM-Med3D's training rule).
        seed: Seed of the click rule.
        nsd_tolerance: NSD tolerance in mm.
        save_predictions: Write predictions in ``test`` and ``predict``.
        num_overlays: Overlay pictures: in ``test`` the worst (1) and the best (2) case; in
            ``predict`` the first this many cases.
        boxes_from_mask: Where a class has no box in the data, give it the box of its reference
            mask (:func:`segfm.prompts.volume_boxes`, the rule of the challenge's
            ``get_boxes.py``). None (auto): cases in the challenge's npz form (their ``meta``
            has a ``boxes`` key, None when the npz has none) follow the challenge, so a case
            without boxes skips the box step (DSC = NSD = 0 there); cases of formats that never
            carry boxes (NIfTI, nnU-Net, npy slices: no ``boxes`` key) and box-only runs (no
            click step, MedSAM's test) get boxes from their masks. True: always derive missing
            boxes; False: never.
        clicks_file: User prompts per case and class (:mod:`segfm.data.io.clicks_file`) for
            ``predict`` without ground truth.
        validate: Also run the test protocol on the validation cases, as whole volumes, at
            every validation of ``fit`` and log its scores as ``val_score`` (the headline
            score ``test`` logs as ``test_<protocol>_score``), ``val_dsc`` and ``val_nsd``:
            the same prompts and metric code as ``test``, so the two cannot disagree by
            construction. Needs a data module that yields validation volumes.
    """

    clicks: int | None = None
    click_rule: ClickRule = "center"
    seed: int = 42
    nsd_tolerance: float = 2.0
    save_predictions: bool = True
    num_overlays: int = 2
    boxes_from_mask: bool | None = None
    clicks_file: str | None = None
    validate: bool = True

    def __post_init__(self) -> None:
        """Check the values."""
        if self.clicks is not None and self.clicks < 0:
            msg = f"evaluation.clicks must be >= 0 (0: the box alone), got {self.clicks}"
            raise ValueError(msg)
        if self.nsd_tolerance < 0 or self.num_overlays < 0:
            msg = (
                "evaluation.nsd_tolerance and evaluation.num_overlays must be >= 0, got "
                f"{self.nsd_tolerance} and {self.num_overlays}"
            )
            raise ValueError(msg)


@dataclass(frozen=True)
class Protocol:
    """A test protocol as the harness runs it.

    Attributes:
        name: ``interactive`` (box, then clicks) or ``text``.
        clicks: Click steps of the interactive protocol.
        box: Whether the interactive protocol starts with every class's box (False: clicks only,
            the first at the centre of the target).
    """

    name: ProtocolName = "interactive"
    clicks: int = 5
    box: bool = True
