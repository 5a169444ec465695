"""The trained behavior model and its artifact: ``model.json`` + ``weights.safetensors`` (never pickle).

``model.json`` holds the kind and format version, the architecture, the inputs, which heads are enabled, the
feature layout (in full, and its hash), the scenario and its hash when known, the validation metrics and how the
model was trained, plus the size and sha256 of the weights file. Loading checks all of it: a missing, truncated,
replaced or mismatched artifact raises :class:`~adrl.errors.ArtifactError` (:class:`~adrl.errors.FeatureMismatch`
when it was built for another feature layout) with a message naming the file and what differs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import safetensors
import torch
from safetensors.torch import load_file, save_file

from adrl.behavior.fast import FastPredictor
from adrl.behavior.inputs import HEADS, AdrlEncoder, InputSpec
from adrl.behavior.net import BehaviorNet
from adrl.errors import ArtifactError, FeatureMismatch
from adrl.features import Feature, FeatureLayout
from adrl.io import atomic_path, read_manifest, write_json_atomic
from adrl.version import __version__

KIND = "behavior-model"
VERSION = 2  # 2: model.json records the count-feature caps ("input_caps"); version 1 (no caps) still loads
READABLE_VERSIONS = (1, 2)
MODEL_JSON = "model.json"
WEIGHTS = "weights.safetensors"
DataFormat = Literal["adrl", "obd"]
Probabilities = tuple[np.ndarray, np.ndarray, np.ndarray]


def layout_from_dict(d: dict[str, Any], *, source: str = MODEL_JSON) -> FeatureLayout:
    """Rebuild a :class:`FeatureLayout` from ``FeatureLayout.to_dict()`` output."""
    try:
        return FeatureLayout(
            # bounds keep their JSON type (int or float): the layout hash depends on it
            obs=tuple(Feature(str(n), k, lo, hi) for n, k, lo, hi in d["obs"]),
            action=tuple(Feature(str(n), k, lo, hi) for n, k, lo, hi in d["action"]),
            horizon=int(d["horizon"]),
            categories=tuple(d["categories"]),
            segments=tuple(d["segments"]),
            slots=tuple(d["slots"]),
            creatives=tuple(d["creatives"]),
            delays=tuple(int(x) for x in d["delays"]),
            start_hour=int(d.get("start_hour", 0)),
            exposure_half_life=float(d.get("exposure_half_life", 3.0)),
            social=bool(d.get("social", False)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{source}: the stored feature layout is malformed ({e!r})") from e


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class BehaviorModel:
    """A fitted :class:`BehaviorNet` with what it needs to encode inputs, and its provenance.

    Args:
        net: the trained network.
        data_format: ``"adrl"`` (inputs from observations and actions of a feature layout) or ``"obd"``.
        heads: which of (click, conversion, leave) were trained; disabled heads predict NaN.
        layout: the feature layout (adrl format).
        category_of: category index of each creative (adrl format).
        scenario: the scenario as a JSON mapping, when known (lets ``LearnedResponse.load`` work without one).
        metrics, training, extra: JSON-able provenance (validation metrics, fit settings, format-specific data).
        extra_arrays: named float arrays saved beside the weights (e.g. the user profiler's centroids).
        input_caps: upper bounds of count features (adrl format; see ``adrl.behavior.inputs.count_caps``).
    """

    kind = KIND
    version = VERSION

    def __init__(
        self,
        net: BehaviorNet,
        *,
        data_format: DataFormat,
        heads: tuple[bool, bool, bool],
        layout: FeatureLayout | None = None,
        category_of: np.ndarray | None = None,
        scenario: dict[str, Any] | None = None,
        scenario_hash: str | None = None,
        metrics: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        extra_arrays: dict[str, np.ndarray] | None = None,
        input_caps: dict[str, float] | None = None,
    ) -> None:
        if not heads[0]:
            raise ValueError("the click head must be enabled (the conversion head is pCTR x pCVR)")
        self.net = net.eval()
        self.data_format: DataFormat = data_format
        self.heads = heads
        self.layout = layout
        self.scenario = scenario
        self.scenario_hash = scenario_hash
        self.metrics = metrics or {}
        self.training = training or {}
        self.extra = extra or {}
        self.extra_arrays = {k: np.asarray(v, dtype=np.float32) for k, v in (extra_arrays or {}).items()}
        self.encoder: AdrlEncoder | None = None
        if data_format == "adrl":
            if layout is None or category_of is None:
                raise ValueError("an adrl-format model needs its feature layout and the creative -> category map")
            self.encoder = AdrlEncoder(layout, category_of, input_caps, unused=net.spec.unused)
        elif input_caps:
            raise ValueError("input caps apply to adrl-format models only")
        self._fast: FastPredictor | None = None

    # ---- identity ------------------------------------------------------------------------------------------
    @property
    def spec(self) -> InputSpec:
        return self.net.spec

    @property
    def layout_hash(self) -> str | None:
        return self.layout.hash if self.layout is not None else None

    @property
    def enabled_heads(self) -> dict[str, bool]:
        return dict(zip(HEADS, self.heads, strict=True))

    # ---- inference ---------------------------------------------------------------------------------------
    def _adrl_encoder(self) -> AdrlEncoder:
        if self.encoder is None:
            raise ArtifactError(
                f"this behavior model was fit on {self.data_format!r} data; predict(obs, action) needs a model "
                "fit on adrl logs (use predict_inputs for other formats)"
            )
        return self.encoder

    @property
    def fast(self) -> FastPredictor:
        """The folded numpy predictor (built on first use)."""
        if self._fast is None:
            self._fast = FastPredictor(self.net, self._adrl_encoder())
        return self._fast

    def predict(self, obs: np.ndarray, action: np.ndarray) -> Probabilities:
        """(pCTR, pCTCVR, pLeave) for observations (n, obs_dim) and actions (n, 3): float32 arrays (n,).

        Batched numpy, no autograd. pCTCVR is P(click and conversion); P(conversion | click) is pCTCVR / pCTR.
        Disabled heads give NaN.
        """
        obs, action = self._adrl_encoder().check(obs, action)
        p_click, p_ctcvr, p_leave = self.fast.predict(obs, action)
        return self._mask(p_click, p_ctcvr, p_leave)

    def predict_inputs(self, cat: np.ndarray, dense: np.ndarray) -> Probabilities:
        """(pCTR, pCTCVR, pLeave) for encoded inputs (any format), through the torch network without autograd."""
        with torch.no_grad():
            p = torch.sigmoid(self.net(torch.as_tensor(cat, dtype=torch.int64), torch.as_tensor(dense))).numpy()
        return self._mask(p[:, 0].copy(), p[:, 0] * p[:, 1], p[:, 2].copy())

    def _mask(self, p_click: np.ndarray, p_ctcvr: np.ndarray, p_leave: np.ndarray) -> Probabilities:
        if not self.heads[1]:
            p_ctcvr = np.full_like(p_ctcvr, np.nan)
        if not self.heads[2]:
            p_leave = np.full_like(p_leave, np.nan)
        return p_click, p_ctcvr, p_leave

    # ---- artifact ------------------------------------------------------------------------------------------
    def save(self, path: Path | str) -> Path:
        """Write ``path/weights.safetensors`` then ``path/model.json`` (each atomically; the manifest last)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"net.{k}": v.detach().contiguous() for k, v in self.net.state_dict().items()}
        tensors |= {f"extra.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.extra_arrays.items()}
        with atomic_path(path / WEIGHTS) as tmp:
            save_file(tensors, str(tmp), metadata={"kind": KIND, "version": str(VERSION)})
        manifest: dict[str, Any] = {
            "kind": KIND,
            "version": VERSION,
            "adrl_version": __version__,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "format": self.data_format,
            "heads": self.enabled_heads,
            "architecture": self.net.architecture(),
            "inputs": self.spec.to_dict(),
            "layout_hash": self.layout_hash,
            "layout": self.layout.to_dict() if self.layout is not None else None,
            "category_of": self.encoder.category_of.tolist() if self.encoder is not None else None,
            "input_caps": self.encoder.caps if self.encoder is not None else None,
            "scenario_hash": self.scenario_hash,
            "scenario": self.scenario,
            "metrics": self.metrics,
            "training": self.training,
            "extra": self.extra,
            "weights": {"file": WEIGHTS, "bytes": (path / WEIGHTS).stat().st_size, "sha256": _sha256(path / WEIGHTS)},
        }
        write_json_atomic(path / MODEL_JSON, manifest)
        return path

    @classmethod
    def load(cls, path: Path | str, *, layout: FeatureLayout | None = None) -> BehaviorModel:
        """Load and verify an artifact; with ``layout``, refuse a model built for another one (FeatureMismatch)."""
        path = Path(path)
        manifest = read_manifest(path, kind=KIND, name=MODEL_JSON)
        src = str(path / MODEL_JSON)
        version = manifest.get("version")
        if version not in READABLE_VERSIONS:
            raise ArtifactError(
                f"{src}: format version is {version!r}, this adrl reads versions {list(READABLE_VERSIONS)}"
            )
        weights = path / WEIGHTS
        if not weights.is_file():
            raise ArtifactError(f"weights file {weights} does not exist; model.json alone is not a model")
        info = manifest.get("weights")
        if not isinstance(info, dict) or not {"bytes", "sha256"} <= set(info):
            raise ArtifactError(f"{src}: 'weights' must record the file's bytes and sha256, got {info!r}")
        size = weights.stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(
                f"{weights} has {size} bytes, model.json says {info['bytes']}; the file is truncated or was replaced"
            )
        if _sha256(weights) != info["sha256"]:
            raise ArtifactError(f"{weights}: sha256 does not match model.json; the weights were modified or corrupted")
        try:
            tensors = load_file(str(weights))
        except (safetensors.SafetensorError, OSError, ValueError) as e:
            raise ArtifactError(f"{weights} is not a readable safetensors file ({e})") from e
        spec = InputSpec.from_dict(_field(manifest, "inputs", dict, src), source=src)
        arch = _field(manifest, "architecture", dict, src)
        try:
            wide = arch.get("wide", False)  # artifacts written before the wide part have none
            if not isinstance(wide, bool):
                raise TypeError(f"'wide' must be true or false, got {wide!r}")
            net = BehaviorNet(
                spec,
                embedding_dim=int(arch["embedding_dim"]),
                fm_dim=int(arch["fm_dim"]),
                hidden=arch["hidden"],
                wide=wide,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{src}: 'architecture' is malformed ({e!r})") from e
        state = {k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ArtifactError(f"{weights} does not fit the architecture in model.json: {e}") from e
        heads_d = _field(manifest, "heads", dict, src)
        heads = (bool(heads_d.get("click")), bool(heads_d.get("conversion")), bool(heads_d.get("leave")))
        fmt = manifest.get("format")
        if fmt not in ("adrl", "obd"):
            raise ArtifactError(f"{src}: format is {fmt!r}, expected 'adrl' or 'obd'")
        stored_layout: FeatureLayout | None = None
        category_of = None
        input_caps: dict[str, float] | None = None
        if fmt == "adrl":
            stored_layout = layout_from_dict(_field(manifest, "layout", dict, src), source=src)
            if stored_layout.hash != manifest.get("layout_hash"):
                raise ArtifactError(
                    f"{src}: layout_hash {manifest.get('layout_hash')!r} does not match the stored layout "
                    f"(which hashes to {stored_layout.hash!r}); was the file edited?"
                )
            category_of = np.asarray(_field(manifest, "category_of", list, src), dtype=np.int64)
            if version >= 2:
                input_caps = _field(manifest, "input_caps", dict, src)
            try:
                stored_spec = AdrlEncoder(stored_layout, category_of, unused=spec.unused).spec
            except ArtifactError as e:
                raise ArtifactError(f"{src}: {e}") from e
            if stored_spec != spec:
                raise ArtifactError(f"{src}: 'inputs' do not match what the stored layout encodes")
        if layout is not None and (stored_layout is None or stored_layout.hash != layout.hash):
            got = stored_layout.hash if stored_layout is not None else f"none ({fmt} data)"
            raise FeatureMismatch(
                f"behavior model {path} was built for feature layout {got}, but the scenario in use has layout "
                f"{layout.hash}; refit it on logs of this scenario (adrl fit --scenario ...)"
            )
        extra_arrays = {k.removeprefix("extra."): v.numpy() for k, v in tensors.items() if k.startswith("extra.")}
        return cls(
            net,
            data_format=fmt,
            heads=heads,
            layout=stored_layout,
            category_of=category_of,
            scenario=manifest.get("scenario"),
            scenario_hash=manifest.get("scenario_hash"),
            metrics=manifest.get("metrics"),
            training=manifest.get("training"),
            extra=manifest.get("extra"),
            extra_arrays=extra_arrays,
            input_caps=input_caps,
        )


def _field(manifest: dict[str, Any], name: str, typ: type, source: str) -> Any:
    value = manifest.get(name)
    if not isinstance(value, typ):
        raise ArtifactError(f"{source}: field {name!r} must be a {typ.__name__}, got {type(value).__name__}")
    return value
