"""The audit use case, written once: keys -> references -> suspect -> report -> signature.

`t2i-audit audit`, `t2i-audit batch`, the demo, `shadow fit` and the reproduction all
audit through here, so a suspect of any kind is identified, regenerated, scored,
reported and signed the same way whichever door it came in by:

    keys = load_keys("keys/")                                   # verified, with its commitment
    audit = Audit(keys=keys, config=AuditConfig(), settings=resolve_settings(keys.keyset),
                  references=(SuspectSpec(model="ref-1"), ...), signing_key=Path("owner.key"))
    audit.check()                                               # every refusal before any generation
    outcome = audit.run(SuspectSpec(model="suspect/"), reporter=reporter)
    save_outcome(outcome, Path("report.json"), audit.signing_key)   # report.json, report.dsse.json

- every model is inspected before any generation (`auditor.backends.inspect_model`: an
  unsupported pipeline, a LoRA or checkpoint of the other family than its base or config
  folder, an SDXL model given an SD keyset of another resolution: `check_keys_fit`), so a
  bad suspect is refused before the references are regenerated;
- identity (`auditor.backends.identify`): a folder's or file's manifest digest, an engine
  bundle's source-model digest, an HTTP endpoint's transcript digest once it answered;
- one per-model record (`Audit.record`, a report's `ReferenceResult`): references, shadow
  models and the studies' models are audited once per (model digest, keyset, audit config,
  settings, runtime) and, given a cache folder, kept there for later runs and other processes;
- generation height and width default to the keyset's, whatever the suspect;
- the envelope of `report.json` is `report.dsse.json` (`envelope_path`), everywhere.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import auditor
from auditor.audit import AuditResult, audit_token, run_audit, with_nonce
from auditor.backends import (
    Generator,
    Identity,
    PipelineInfo,
    SuspectSpec,
    Transcribed,
    check_settings,
    identify,
    inspect_model,
    open_suspect,
)
from auditor.commitment import COMMITMENT_FILE
from auditor.config import AuditConfig, GenerationSettings
from auditor.documents import parse_json, read_bytes, validate
from auditor.errors import AuditorError, BadInputError
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.keys import KeySet, load_keyset
from auditor.progress import Reporter
from auditor.report import (
    AttributionReport,
    ReferenceResult,
    StatisticalResult,
    SuspectRef,
    build_report,
    check_comparable,
    load_discriminator_for,
    reference_result,
    save_report,
    score_with_discriminator,
)

# ---------------------------------------------------------------- keys and settings


@dataclass(frozen=True)
class LoadedKeys:
    """A keyset folder, every image re-hashed, and its pre-registered commitment (checked) if any."""

    path: Path
    keyset: KeySet
    images: np.ndarray
    commitment: str | None


def load_keys(path: str | os.PathLike[str]) -> LoadedKeys:
    keyset, images = load_keyset(path)
    return LoadedKeys(Path(path), keyset, images, load_keyset_commitment(path, keyset.digest))


def load_keyset_commitment(keys_dir: str | os.PathLike[str], keyset_digest: str) -> str | None:
    """The keyset's pre-registered commitment (keys_dir/commitment.json), checked, if there is one."""
    path = Path(keys_dir) / COMMITMENT_FILE
    if not path.exists():
        return None
    from auditor.commitment import load_commitment, verify_commitment

    commitment = load_commitment(path)
    verify_commitment(commitment, keyset_digest)
    return commitment.commitment


def resolve_settings(
    keyset: KeySet, *overrides: Mapping[str, Any] | None, where: str = "generation settings", prefix: str = ""
) -> GenerationSettings:
    """The keyset's generation settings with each mapping of overrides applied in turn (only the
    fields given change); height and width default to the keys' size, the only size they can be
    compared at."""
    values = keyset.generation.model_dump()
    for layer in overrides:
        values |= {k: v for k, v in (layer or {}).items() if v is not None}
    values["height"] = values.get("height") or keyset.height
    values["width"] = values.get("width") or keyset.width
    return validate(GenerationSettings, values, where, prefix)


# ---------------------------------------------------------------- one model


def check_keys_fit(info: PipelineInfo | None, keys: LoadedKeys) -> None:
    """Refuse an SDXL model audited with an SD keyset (one selected without SDXL's size conditioning)
    of another resolution than the model's: it would be made to generate at a size it was not trained
    for, and the distances would measure that, not the model."""
    keyset = keys.keyset
    conditioned = any(
        getattr(keyset.generation, f) is not None
        for f in ("original_size", "crops_coords_top_left", "target_size")
    )
    if info is None or not info.is_xl or conditioned:
        return
    if (keyset.height, keyset.width) != (info.height, info.width):
        raise BadInputError(
            f"{keys.path / 'keys.json'}: SD keys of {keyset.height}x{keyset.width} pixels (no SDXL size "
            f"conditioning), but {info.index} names an SDXL pipeline made for {info.height}x{info.width}; "
            f"expected keys of {info.height}x{info.width}, or keys selected from an SDXL source"
        )


def _regenerate(
    spec: SuspectSpec,
    keys: LoadedKeys,
    config: AuditConfig,
    settings: GenerationSettings,
    reporter: Reporter | None = None,
    *,
    name: str | None = None,
    images_out: list[np.ndarray] | None = None,
    generator: Generator | None = None,
) -> tuple[AuditResult, Generator]:
    """Open `spec` (unless `generator` is it, already open) and regenerate every key with it; the
    generator is returned for its transcript. Private: a model's audit outside a report is
    `Audit.record`, so every per-model record is made, named and cached one way."""
    reporter = reporter or Reporter()
    generator = generator if generator is not None else open_suspect(spec, name=name)
    if isinstance(generator, Transcribed):  # queries are slow: a bar per query, keys and decoys alike
        n_keys = len(keys.keyset.keys[: config.max_keys] if config.max_keys else keys.keyset.keys)
        total = n_keys * generator.queries_per_image() * config.seeds_per_key
        with reporter.task(f"{name or 'suspect'}: queries", total) as advance:
            generator.progress = advance
            result = run_audit(generator, keys.keyset, keys.images, config, settings, reporter, images_out)
    else:
        result = run_audit(generator, keys.keyset, keys.images, config, settings, reporter, images_out)
    return result, generator


def transcript_document(name: str, generator: Transcribed) -> dict[str, Any]:
    """Every query an HTTP suspect was sent and the sha256 of every PNG it returned."""
    return generator.transcript_document(name)


# ---------------------------------------------------------------- one audit


@dataclass(frozen=True)
class Outcome:
    """What auditing one suspect produced: the report, and an HTTP suspect's transcript."""

    report: AttributionReport
    transcript: dict[str, Any] | None = None


@dataclass
class Audit:
    """Everything the suspects of one audit share: keys, thresholds, settings, references."""

    keys: LoadedKeys
    config: AuditConfig
    settings: GenerationSettings
    alpha: float = 0.01
    references: tuple[SuspectSpec, ...] = ()
    discriminator: Path | None = None
    signing_key: Path | None = None
    reference_cache: Path | None = None  # a folder: reference audits kept between runs
    reference_names: tuple[str, ...] = ()  # how reports name each reference (default: its file name)
    reference_labels: tuple[str, ...] = ()  # how errors name each reference (default: index and file)
    panel: tuple[SuspectSpec, ...] = ()  # when given: the selection panel the keyset must record
    allow_inconclusive: bool = False  # audit with fewer than min_references (the verdict: inconclusive)
    _references: dict[str, tuple[ReferenceResult, ...]] = field(default_factory=dict, repr=False)
    _discriminator_model: Any = field(default=None, repr=False)
    _checked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        # the nonce every audit seed derives from, fixed now: references and suspects share it
        self.config = with_nonce(self.config, self.keys.keyset)

    @property
    def token(self) -> str:
        """What references and suspects of this audit share (keys, nonce, seeds, settings)."""
        return audit_token(self.keys.keyset, self.config, self.settings)

    def check(self) -> None:
        """Every refusal that needs no generation, made before any: a signing key that does not
        load, a discriminator fit for other keys or another audit, references that are not
        innocent fine-tunes (the base, the source, a selection-panel model, one listed twice)."""
        if self._checked:
            return
        if self.signing_key is not None:
            from auditor.signing import load_signer

            load_signer(self.signing_key)
        if self.discriminator is not None and self._discriminator_model is None:
            self._discriminator_model = load_discriminator_for(
                self.discriminator, self.keys.keyset, self.config
            )
        self._check_references()
        self._check_panel()
        for spec in self.references:
            check_settings(spec, self.settings)
        self._checked = True

    def _check_panel(self) -> None:
        if not self.panel:
            return
        recorded = {m.digest for m in self.keys.keyset.selection.panel}
        named = {identify(spec).digest for spec in self.panel}
        if named != recorded:
            listed = ", ".join(m.name for m in self.keys.keyset.selection.panel) or "no panel"
            raise BadInputError(
                f"--panel: the keyset was selected with {listed} ({len(recorded)} models), not with the "
                f"{len(named)} panel models named; use the keyset those models screened"
            )

    def _check_references(self) -> None:
        """Refuse a reference that is the source, the base or a panel model, by its bytes or by its
        weights alone (a re-saved copy: another README, safetensors metadata or library version),
        and a model listed twice, by either digest."""
        keyset = self.keys.keyset
        excluded: dict[str, str] = {}
        roles = [(keyset.source, "the source model the keys were selected from")]
        if keyset.base is not None:
            roles.append((keyset.base, "the base model the keys were selected against"))
        roles += [
            (m, f"selection-panel model {m.name} (it screened the keys)") for m in keyset.selection.panel
        ]
        for model, role in roles:
            excluded |= {d: role for d in (model.digest, model.content_digest) if d is not None}
        seen: dict[str, int] = {}
        for i, spec in enumerate(self.references):
            label = self._label(i, spec)
            try:
                identity = identify(spec)
                if identity.digest is None:  # an endpoint: only its answers are ever pinned
                    raise BadInputError(
                        "an HTTP endpoint cannot be a reference (its weights cannot be pinned by a digest,"
                        " nor refused if it were the base or the source); use a model folder or file"
                    )
                check_keys_fit(inspect_model(spec), self.keys)
            except AuditorError as exc:
                raise type(exc)(f"{label}: {exc}") from None
            digests = [d for d in (identity.digest, identity.content_digest) if d is not None]
            for digest in digests:
                if digest in excluded:
                    how = (
                        "is"
                        if digest == identity.digest
                        else f"has the weights (content digest {digest[:16]}...) of"
                    )
                    raise BadInputError(
                        f"{label}: {how} {excluded[digest]}, never an innocent reference; references are "
                        "fine-tunes of the base on other data (t2i-audit references build)"
                    )
                if digest in seen:
                    raise BadInputError(
                        f"{label}: the same model as reference {seen[digest]}; list each model once"
                    )
            seen |= dict.fromkeys(digests, i)
        n, needed = len(self.references), self.config.min_references
        if n < needed and not self.allow_inconclusive:
            raise BadInputError(
                f"references: {n} innocent reference model{'s' if n != 1 else ''} given, the verdict needs at"
                f" least {needed} (min_references); add references (t2i-audit references build) or accept an"
                " inconclusive report (--allow-inconclusive)"
            )

    def _label(self, i: int, spec: SuspectSpec) -> str:
        if i < len(self.reference_labels):
            return self.reference_labels[i]
        return f"reference {i} ({Path(spec.model).name})"

    def reference_results(self, reporter: Reporter | None = None) -> tuple[ReferenceResult, ...]:
        """The references' audits under these settings (cached in memory and in `reference_cache`)."""
        reporter = reporter or Reporter()
        token = sha256_bytes(canonical_json(self.settings.model_dump(mode="json")))
        if token not in self._references:
            results = []
            for i, spec in enumerate(self.references):
                name = self.reference_names[i] if i < len(self.reference_names) else None
                try:
                    results.append(self.record(spec, name=name, reporter=reporter))
                except AuditorError as exc:
                    raise type(exc)(f"{self._label(i, spec)}: {exc}") from None
            check_comparable(tuple(results), self.token)
            self._references[token] = tuple(results)
        return self._references[token]

    def record(
        self,
        spec: SuspectSpec,
        *,
        name: str | None = None,
        reporter: Reporter | None = None,
        images_out: list[np.ndarray] | None = None,
    ) -> ReferenceResult:
        """One model audited with this audit's keys, seeds and settings, as the per-key record a
        report gives each reference. It is the one per-model record: references, shadow models and
        every study's models are audited through here, cached in `reference_cache` (when given) by
        model digest, audit token and runtime, so another process or a later run reuses it.
        `images_out` collects the regenerated images, so it always regenerates."""
        reporter = reporter or Reporter()
        identity = identify(spec)
        name = name or identity.name
        key = self._record_key(spec, identity)
        if images_out is None:
            cached = self._cached_record(name, key, identity)
            if cached is not None:
                return cached
        with reporter.task(f"model {name}", 1) as advance:
            result, _ = _regenerate(
                spec, self.keys, self.config, self.settings, reporter, images_out=images_out
            )
            advance(1)
        ref = reference_result(name, identity.digest, result, identity.content_digest)
        cache = self._record_path(name, key)
        if cache is not None and identity.digest is not None:  # an endpoint's answers are never pinned
            document = {"key": key, "result": ref.model_dump(mode="json")}
            atomic_write_text(cache, json.dumps(document, indent=2) + "\n")
        return ref

    def cached_record(self, spec: SuspectSpec, *, name: str | None = None) -> ReferenceResult | None:
        """`record`'s cache entry for this model under this audit, or None when there is none (or it
        does not hold; an edited entry is never trusted). Generates nothing."""
        identity = identify(spec)
        return self._cached_record(name or identity.name, self._record_key(spec, identity), identity)

    def _record_key(self, spec: SuspectSpec, identity: Identity) -> str:
        return sha256_bytes(
            canonical_json(
                {
                    "scheme": "t2i-auditor-reference-cache-v2",
                    "tool": auditor.__version__,
                    "reference": identity.digest,
                    "token": self.token,
                    "runtime": {"backend": spec.backend, "device": spec.device, "dtype": spec.dtype},
                }
            )
        )

    def _record_path(self, name: str, key: str) -> Path | None:
        """The cache entry's file: the name made safe for a file name (it may come from a job or a
        shadow-set file), the key's prefix making it unique."""
        if self.reference_cache is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".") or "model"
        return self.reference_cache / f"{safe[:100]}-{key[:16]}.json"

    def _cached_record(self, name: str, key: str, identity: Identity) -> ReferenceResult | None:
        """A cache entry, only when it is this model's audit under this audit's token, every number
        consistent with its per-seed distances; else None (audited again, the entry replaced)."""
        cache = self._record_path(name, key)
        if cache is None or identity.digest is None or not cache.is_file():
            return None
        try:
            cached = parse_json(read_bytes(cache, "reference cache"), str(cache))
            if not isinstance(cached, dict) or cached.get("key") != key:
                return None
            ref = validate(ReferenceResult, cached.get("result"), str(cache))
        except BadInputError:
            return None
        consistent = (
            (ref.digest, ref.content_digest) == (identity.digest, identity.content_digest)
            and ref.audit_token == self.token
            and len(ref.distances) == ref.num_keys == len(ref.seed_distances)
            and ref.distances == tuple(min(d) for d in ref.seed_distances)
            and ref.hits == sum(d < self.config.delta0 for d in ref.distances)
        )
        return ref if consistent else None

    def run(
        self,
        spec: SuspectSpec,
        *,
        name: str | None = None,
        reporter: Reporter | None = None,
        images_out: list[np.ndarray] | None = None,
    ) -> Outcome:
        """Audit one suspect against the references; the report, not yet saved."""
        reporter = reporter or Reporter()
        self.check()
        identity = identify(spec)  # a missing or unreadable model fails here, before any generation
        check_keys_fit(inspect_model(spec), self.keys)  # one this tool cannot run, or not with these keys
        check_settings(spec, self.settings)
        # a suspect that cannot load fails now, before the references are generated
        generator = open_suspect(spec, name=name)
        references = self.reference_results(reporter)
        result, generator = _regenerate(
            spec,
            self.keys,
            self.config,
            self.settings,
            reporter,
            name=name,
            images_out=images_out,
            generator=generator,
        )
        digest, content_digest, transcript = identity.digest, identity.content_digest, None
        if isinstance(generator, Transcribed):  # an endpoint: cited by its answers' digest
            digest = generator.transcript_digest()
            transcript = transcript_document(name or identity.name, generator)
        statistical: StatisticalResult | None = None
        if self._discriminator_model is not None:
            assert self.discriminator is not None
            statistical = score_with_discriminator(self._discriminator_model, self.discriminator, result)
        report = build_report(
            result=result,
            keyset=self.keys.keyset,
            suspect=SuspectRef(
                name=name or identity.name, digest=digest, content_digest=content_digest, kind=identity.kind
            ),
            references=references,
            alpha=self.alpha,
            commitment=self.keys.commitment,
            statistical=statistical,
        )
        return Outcome(report=report, transcript=transcript)


# ---------------------------------------------------------------- saving


def envelope_path(report_path: str | os.PathLike[str]) -> Path:
    """report.json -> report.dsse.json: the signed envelope lives beside the plain report."""
    p = Path(report_path)
    return p.with_name(p.name.removesuffix(".json") + ".dsse.json")


def transcript_path(report_path: str | os.PathLike[str]) -> Path:
    """report.json -> report.transcript.json: an HTTP suspect's queries and answers, beside its report."""
    p = Path(report_path)
    return p.with_name(p.name.removesuffix(".json") + ".transcript.json")


def sign_report(report: AttributionReport, report_path: str | os.PathLike[str], signing_key: Path) -> Path:
    """Write the envelope of the report saved (or about to be saved) at `report_path`."""
    from auditor.evidence import write_signed_report

    return write_signed_report(report, signing_key, envelope_path(report_path))


def save_outcome(
    outcome: Outcome,
    report_path: str | os.PathLike[str],
    signing_key: Path | None = None,
    transcript_path: str | os.PathLike[str] | None = None,
) -> Path:
    """The transcript, the report, then its envelope: an envelope on disk always has its report (a kill
    between the two leaves a report without a signature, which a rerun signs; never a signed verdict
    for a suspect whose report is missing)."""
    if outcome.transcript is not None and transcript_path is not None:
        atomic_write_text(transcript_path, json.dumps(outcome.transcript, indent=2) + "\n")
    written = save_report(outcome.report, report_path)
    if signing_key is not None:
        sign_report(outcome.report, report_path, signing_key)
    return written
