"""The key-selection use case: models in, a keyset out; the one door the CLI, demo and studies use.

    keyset, images = Selection(config, source=spec, prompts=captions, base=base_spec).run(out)

`auditor.selection` is the algorithm on generators; this is everything around it that every
caller needs and that used to be written once per caller (and diverged): each model's
identity recorded by both digests (`backends.model_ref`), a panel model that is the source
or the base by either digest refused before anything is generated, the source's size
conditioning recorded for an SDXL source (`backends.conditioned_settings`), and the keyset
written to its folder (keys.json last, so a folder without it is not a keyset).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auditor.backends import SuspectSpec, conditioned_settings, inspect_model, model_ref, open_suspect
from auditor.config import GenerationSettings
from auditor.errors import BadInputError
from auditor.keys import KeySet, ModelRef, save_keyset
from auditor.progress import Reporter
from auditor.selection import SelectionConfig, select_keys


@dataclass(frozen=True)
class Selection:
    """One key selection: the source, its candidate prompts (and training images, for the detection
    and random strategies), the base as control and an optional panel of innocent fine-tunes.

    `panel_labels` name the panel models in errors (the CLI's `--panel PATH`); `settings` are the
    generation settings before the source's own conditioning is added; `source_name` is the name
    the keyset gives the source (default: its file or folder name).
    """

    config: SelectionConfig
    source: SuspectSpec
    prompts: Sequence[str]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    train_images: np.ndarray | None = None
    base: SuspectSpec | None = None
    panel: Sequence[SuspectSpec] = ()
    panel_labels: Sequence[str] = ()
    source_name: str | None = None

    def refs(self) -> tuple[ModelRef, ModelRef | None, list[ModelRef]]:
        """(source, base, panel) as the keyset records them; a panel model that is the source or the
        base (same bytes, or the same weights re-saved) is refused: the panel holds innocent fine-tunes."""
        source = model_ref(self.source, self.source_name)
        base = model_ref(self.base) if self.base is not None else None
        taken = {d for m in (source, base) if m for d in (m.digest, m.content_digest) if d}
        panel = []
        for i, spec in enumerate(self.panel):
            member = model_ref(spec)
            if {d for d in (member.digest, member.content_digest) if d} & taken:
                label = self.panel_labels[i] if i < len(self.panel_labels) else f"panel model {spec.model}"
                raise BadInputError(
                    f"{label}: is the source or the base (same bytes or same weights); the panel holds "
                    "innocent fine-tunes"
                )
            panel.append(member)
        return source, base, panel

    def run(
        self, out: str | Path | None = None, *, replace: bool = False, reporter: Reporter | None = None
    ) -> tuple[KeySet, np.ndarray]:
        """Select the keys; with `out`, also write them there (an existing keyset there is bad input
        unless `replace`, which removes it only once the new keys are selected)."""
        target = Path(out) if out is not None else None
        if target is not None and not replace and (target / "keys.json").exists():
            raise BadInputError(f"{target}: a keyset already exists there; choose another --out")
        source_ref, base_ref, panel_refs = self.refs()
        settings = conditioned_settings(self.settings, inspect_model(self.source))
        keyset, images = select_keys(
            self.config,
            source=open_suspect(self.source),
            source_ref=source_ref,
            settings=settings,
            prompts=list(self.prompts),
            train_images=self.train_images,
            base=open_suspect(self.base) if self.base is not None else None,
            base_ref=base_ref,
            panel=[(open_suspect(s), r) for s, r in zip(self.panel, panel_refs, strict=True)],
            reporter=reporter,
        )
        if target is not None:
            if replace and target.exists():
                shutil.rmtree(target)
            save_keyset(keyset, images, target)
        return keyset, images
