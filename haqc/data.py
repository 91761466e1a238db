"""Datasets: ``.npz`` files of model inputs (and optional labels), validated against a model.

Every problem a user can have with a data file (wrong names, shapes, dtypes,
NaNs, labels) is caught once, at load time, as one ``InputError`` sentence, so
evaluation and calibration can feed the arrays to ONNX Runtime as they are.
"""
from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from haqc.errors import InputError, first_line
from haqc.prepared import Dim, InputSpec

logger = logging.getLogger(__name__)

LABELS = "labels"
# Names a single-input model's array may also go by, so one file fits models with differently named inputs.
SINGLE_INPUT_ALIASES = ("x", "inputs")


def sample_shapes(source: str | os.PathLike | Mapping[str, np.ndarray] | None, input_specs: list[InputSpec]
                  ) -> dict[str, tuple[int, ...]]:
    """The shape of one sample of each model input the data holds, with the input's own leading dim (its
    fixed batch, else 1): the sizes a dynamic dim is analysed at when the user gives none. Arrays that
    do not fit the model are left out; loading the data says what is wrong with them."""
    if source is None:
        return {}
    if isinstance(source, Mapping):
        arrays = {str(k): np.shape(v) for k, v in source.items()}
    else:
        try:
            with np.load(source, allow_pickle=False) as npz:
                arrays = {name: npz[name].shape for name in npz.files}
        except Exception:  # noqa: BLE001 -- an unreadable file is reported, in one line, when it is loaded
            return {}
    shapes = {}
    for name, shape, _ in input_specs:
        key = _array_key(name, arrays, len(input_specs))
        if key is not None and arrays[key] and _shape_matches(arrays[key], shape):
            shapes[name] = (shape[0] if isinstance(shape[0], int) else 1, *arrays[key][1:])
    return shapes


def fixed_batch(specs: list[InputSpec]) -> int | None:
    """The samples one run must hold: the fixed leading dim of the inputs that have one, else None.

    An input fixed at 1 (an LSTM state ``h [1, 1, 128]`` beside ``input [seq_len, 576]``)
    makes every run one sample, so each input's rows are fed one at a time.
    """
    fixed = {shape[0]: name for name, shape, _ in specs if shape and isinstance(shape[0], int)}
    if len(fixed) > 1:
        names = ", ".join(f"{name!r} at {size}" for size, name in sorted(fixed.items()))
        raise InputError(f"the model's inputs fix different batch sizes on axis 0 ({names}); haqc feeds samples "
                         "on axis 0 of every input, so re-export the model with one batch size")
    return next(iter(fixed), None)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Validated samples: one array per model input (samples on axis 0) and optional int64 labels.

    A scalar model input (a sample rate, a threshold) holds one 0-d value that
    every batch is fed as is.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "in-memory data"  # how messages name it, e.g. "--data val.npz"

    def __len__(self) -> int:
        return next((len(a) for a in self.inputs.values() if a.ndim), 1)

    @property
    def sample_elements(self) -> int:
        """Input values per sample, summed over the inputs (a scalar input counts once)."""
        return sum(int(np.prod(a.shape[1:])) if a.ndim else 1 for a in self.inputs.values())

    def batches(self, batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray | None]]:
        """Yield (feed dict, label slice or None) in order; the last batch may be smaller."""
        if batch_size <= 0:
            raise InputError(f"batch size must be a positive integer, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            feeds = {name: array[start:stop] if array.ndim else array for name, array in self.inputs.items()}
            yield feeds, None if self.labels is None else self.labels[start:stop]

    def subset(self, n: int, seed: int = 0) -> Dataset:
        """``n`` samples drawn without replacement (kept in file order); the same seed gives the same subset."""
        if n <= 0:
            raise InputError(f"subset size must be a positive integer, got {n}")
        if n >= len(self):
            return self
        index = np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False))
        return Dataset(
            {name: array[index] if array.ndim else array for name, array in self.inputs.items()},
            None if self.labels is None else self.labels[index],
            f"{self.source} (random {n} of {len(self)})",
        )

    def check_compatible(self, other: Dataset) -> None:
        """Raise InputError unless ``other`` has the same input names and per-sample shapes and dtypes."""
        if set(self.inputs) != set(other.inputs):
            raise InputError(
                f"{other.source} has inputs {_names(other.inputs)} but {self.source} has "
                f"{_names(self.inputs)}; both files must hold the same model inputs"
            )
        for name, array in self.inputs.items():
            theirs = other.inputs[name]
            if array.shape[1:] != theirs.shape[1:] or array.dtype != theirs.dtype:
                raise InputError(
                    f"input {name!r} has samples of shape {list(theirs.shape[1:])} ({theirs.dtype}) in "
                    f"{other.source} but {list(array.shape[1:])} ({array.dtype}) in {self.source}; "
                    "both files must match the model"
                )

    def check_specs(self, specs: list[InputSpec], model: str) -> None:
        """Raise InputError unless this data feeds ``model`` (names, per-sample shapes, dtypes) as is.

        Cheap enough to call per model: evaluation may meet models other than
        the one the data was loaded for (a reference, a rewritten graph).
        """
        for name, shape, dtype in specs:
            if name not in self.inputs:
                raise InputError(
                    f"{model} has input {name!r}, which {self.source} does not hold (it has "
                    f"{_names(self.inputs)}); pass data for this model"
                )
            array = self.inputs[name]
            if not _shape_matches(array.shape, shape) or array.dtype != dtype:
                raise InputError(
                    f"{model} expects input {name!r} of shape {_shape_text(shape)} ({dtype}), but "
                    f"{self.source} holds {list(array.shape)} ({array.dtype}); pass data for this model"
                )


def load_dataset(
    path: str | os.PathLike | Mapping[str, np.ndarray],
    input_specs: list[InputSpec],
    *,
    role: str = "--data",
    num_classes: int | None = None,
) -> Dataset:
    """Load and validate an ``.npz`` dataset for a model with inputs ``input_specs``.

    Arrays are named after the model inputs (a single-input model's may also be
    ``x`` or ``inputs``); ``labels`` is optional. Float inputs accept float16/32/64
    data, cast to the model's dtype (images are often saved as float64); integer
    inputs accept any integer dtype whose values fit. Labels must be 1-D integers,
    one per sample, within ``[0, num_classes)`` when ``num_classes`` is given.
    ``role`` names the option the file came from, so messages say which file is wrong.
    ``path`` may also be a mapping of arrays, named as in a file.
    """
    if isinstance(path, Mapping):  # in-memory arrays, named as in a file
        where = f"{role} (in-memory arrays)"
        arrays = {str(k): np.asarray(v) for k, v in path.items()}
    else:
        path = Path(path)
        where = f"{role} {path}"
        arrays = _read_npz(path, where)
    inputs: dict[str, np.ndarray] = {}
    for name, shape, dtype in input_specs:
        key = _array_key(name, arrays, len(input_specs))
        if key is None:
            expected = ", ".join(n for n, _, _ in input_specs)
            raise InputError(
                f"{where} has no array {name!r} (it has {_names(arrays)}; the model's inputs are "
                f"{expected}); save one array per model input under its name"
            )
        inputs[name] = _validate_input(name, arrays[key], shape, dtype, where)
    _check_sample_counts(inputs, where, input_specs)
    labels = arrays.get(LABELS)
    if labels is not None:
        labels = _validate_labels(labels, len(Dataset(inputs)), num_classes, where)
    dataset = Dataset(inputs, labels, where)
    logger.info("%s: %d samples, inputs %s, %s", dataset.source, len(dataset), _names(inputs),
                "labelled" if labels is not None else "no labels")
    return dataset


def _read_npz(path: Path, where: str) -> dict[str, np.ndarray]:
    if not path.exists():
        raise InputError(f"{where}: file not found; check the path")
    if path.is_dir():
        raise InputError(f"{where} is a directory; pass an .npz file")
    if not zipfile.is_zipfile(path):
        raise InputError(f"{where} is not an .npz file; save the arrays with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"cannot read {where} ({first_line(err)}); re-save it with numpy.savez") from None


def _array_key(name: str, arrays: dict[str, np.ndarray], n_inputs: int) -> str | None:
    if name in arrays:
        return name
    if n_inputs == 1:
        return next((alias for alias in SINGLE_INPUT_ALIASES if alias in arrays), None)
    return None


def _validate_input(name: str, array: np.ndarray, shape: tuple[Dim, ...], dtype: np.dtype, where: str) -> np.ndarray:
    if not _shape_matches(array.shape, shape):
        raise InputError(
            f"{where}: input {name!r} has shape {list(array.shape)} but the model expects "
            f"{_shape_text(shape)} (samples on axis 0); reshape the array to match"
        )
    array = _cast(name, array, dtype, where)
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{where}: input {name!r} contains NaN or Inf values; clean the data")
    return np.require(array, requirements="C")  # np.ascontiguousarray would make a scalar 1-D


def _cast(name: str, array: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """Lossless-enough casts only: float to float, integer to integer within range."""
    if array.dtype == dtype:
        return array
    kind, want = array.dtype.kind, dtype.kind
    if want == "f" and kind == "f":
        return array.astype(dtype)
    if want in "iu" and kind in "iu":
        info = np.iinfo(dtype)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return array.astype(dtype)
    raise InputError(
        f"{where}: input {name!r} is {array.dtype} but the model expects {dtype}; "
        f"save it as {dtype}"
    )


def _check_sample_counts(inputs: dict[str, np.ndarray], where: str, specs: list[InputSpec]) -> None:
    counts = {name: len(array) for name, array in inputs.items() if array.ndim} or {"": 1}  # scalars only: one sample
    if len(set(counts.values())) > 1:
        text = ", ".join(f"{name}: {n}" for name, n in counts.items())
        # An input whose axis 0 is fixed but another axis is dynamic (an LSTM state [2, batch, 128]) has
        # its batch elsewhere: haqc feeds samples on axis 0 of every input.
        elsewhere = [(name, shape) for name, shape, _ in specs if shape and isinstance(shape[0], int)
                     and any(not isinstance(d, int) for d in shape[1:])]
        n = max(counts.values())
        at_one = [(name, shape) for name, shape, _ in specs if shape and shape[0] == 1 and counts.get(name, n) != n]
        if at_one:
            name, shape = at_one[0]
            rest = ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape[1:])
            raise InputError(f"{where}: inputs have different sample counts ({text}); the model fixes input {name!r} "
                             f"at batch 1, so haqc runs one sample at a time: save one row per sample, shape "
                             f"[{n}, {rest}] beside the other inputs' {n}")
        if elsewhere:
            name, shape = elsewhere[0]
            dims = ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape)
            raise InputError(f"{where}: inputs have different sample counts ({text}); the model's input {name!r} "
                             f"[{dims}] has its batch on an axis other than 0, and haqc feeds samples on axis 0 "
                             "of every input: re-export the model with that input's batch on axis 0 (or fixed "
                             "at 1, with one row per sample in the data)")
        raise InputError(f"{where}: inputs have different sample counts ({text}); give every input the same number")
    if not next(iter(counts.values())):
        raise InputError(f"{where} holds zero samples; pass a file with at least one")


def _validate_labels(labels: np.ndarray, n: int, num_classes: int | None, where: str) -> np.ndarray:
    if labels.dtype.kind not in "iu":
        raise InputError(f"{where}: labels are {labels.dtype}, not integers; save class indices as int64")
    if labels.ndim != 1 or len(labels) != n:
        raise InputError(
            f"{where}: labels have shape {list(labels.shape)} but there are {n} samples; "
            f"save one integer label per sample (shape [{n}])"
        )
    if num_classes is not None:
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise InputError(
                f"{where}: label {int(labels[bad][0])} is outside [0, {num_classes}) for a model with "
                f"{num_classes} classes; fix the labels"
            )
    return labels.astype(np.int64)


def _shape_matches(actual: tuple[int, ...], shape: tuple[Dim, ...]) -> bool:
    """Per-sample dims must match; axis 0 (samples) and dynamic dims match anything."""
    return len(actual) == len(shape) and all(
        not isinstance(want, int) or have == want for have, want in zip(actual[1:], shape[1:])
    )


def _shape_text(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _names(arrays: dict) -> str:
    return ", ".join(sorted(arrays)) if arrays else "no arrays"
