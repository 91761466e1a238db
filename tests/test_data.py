"""Datasets: every way an .npz file can be wrong is one InputError naming the file; batching and subsets."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from haqc.data import Dataset, load_dataset
from haqc.prepared import input_specs
from haqc.errors import InputError

F32 = np.dtype(np.float32)
SPECS = [("image", ("N", 1, 4, 4), F32)]
TWO_INPUTS = [("a", (None, 3), F32), ("b", (None, 2), np.dtype(np.int32))]


def _images(n: int = 6, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 4, 4)).astype(dtype)


@pytest.fixture
def npz(tmp_path):
    """Write arrays to an .npz file and return its path."""

    def write(name: str = "d.npz", **arrays) -> str:
        path = tmp_path / name
        np.savez(path, **arrays)
        return str(path)

    return write


# -- input_specs ------------------------------------------------------------------------------

def test_input_specs_skip_initializers_and_keep_dynamic_dims():
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Cast", ["k"], ["k2"], to=TensorProto.FLOAT)],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [4, 1]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2]),  # IR < 4 style: initializer listed
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [w],
    )
    specs = input_specs(helper.make_model(graph))
    assert specs == [("x", ("batch", 3), F32), ("k", (4, 1), np.dtype(np.int64))]


# -- loading ----------------------------------------------------------------------------------

def test_load_named_input_with_labels(npz):
    ds = load_dataset(npz(image=_images(), labels=np.arange(6) % 3), SPECS, num_classes=3)
    assert len(ds) == 6 and ds.inputs["image"].dtype == F32
    assert ds.labels.dtype == np.int64 and list(ds.labels) == [0, 1, 2, 0, 1, 2]
    assert ds.source.startswith("--data ")


@pytest.mark.parametrize("alias", ["x", "inputs"])
def test_single_input_aliases(npz, alias):
    ds = load_dataset(npz(**{alias: _images()}), SPECS)
    assert list(ds.inputs) == ["image"] and ds.labels is None


def test_aliases_not_used_for_multi_input_models(npz):
    with pytest.raises(InputError, match=r"no array 'a' \(it has x; the model's inputs are a, b\)"):
        load_dataset(npz(x=np.zeros((2, 3), np.float32)), TWO_INPUTS)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float_data_cast_to_model_dtype(npz, dtype):
    ds = load_dataset(npz(image=_images(dtype=dtype)), SPECS)
    assert ds.inputs["image"].dtype == F32
    np.testing.assert_allclose(ds.inputs["image"], _images(dtype=dtype).astype(np.float32))


def test_integer_inputs_cast_within_range(npz):
    ds = load_dataset(npz(a=np.zeros((2, 3), np.float32), b=np.ones((2, 2), np.int64)), TWO_INPUTS)
    assert ds.inputs["b"].dtype == np.int32
    with pytest.raises(InputError, match="input 'b' is int64 but the model expects int32"):
        load_dataset(npz(a=np.zeros((2, 3), np.float32), b=np.full((2, 2), 2**40)), TWO_INPUTS)


def test_role_names_the_option(npz):
    with pytest.raises(InputError, match=r"^--calib-data .*nope\.npz: file not found"):
        load_dataset("nope.npz", SPECS, role="--calib-data")


# -- every validation error -------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found; check the path"):
        load_dataset(tmp_path / "missing.npz", SPECS)


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_dataset(tmp_path, SPECS)


def test_not_npz_text(tmp_path):
    path = tmp_path / "d.npz"
    path.write_text("image,label\n1,2\n")
    with pytest.raises(InputError, match=r"is not an \.npz file; save the arrays with numpy\.savez"):
        load_dataset(path, SPECS)


def test_not_npz_npy(tmp_path):
    path = tmp_path / "d.npy"
    np.save(path, _images())
    with pytest.raises(InputError, match=r"is not an \.npz file"):
        load_dataset(path, SPECS)


def test_truncated_npz(npz):
    path = npz(image=_images(100))
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.truncate()
        f.write(data[: len(data) - 200])
    with pytest.raises(InputError, match="(cannot read|is not an .npz)"):
        load_dataset(path, SPECS)


def test_pickled_object_array_rejected(npz):
    path = npz(image=np.array([object(), object()], dtype=object))
    with pytest.raises(InputError, match="cannot read .*re-save it"):
        load_dataset(path, SPECS)


def test_missing_input_lists_names(npz):
    path = npz(images=_images(), labels=np.zeros(6, np.int64))
    message = r"has no array 'image' \(it has images, labels; the model's inputs are image\)"
    with pytest.raises(InputError, match=message):
        load_dataset(path, SPECS)


@pytest.mark.parametrize("shape", [(6, 1, 4, 5), (6, 4, 4), (6, 1, 4, 4, 1), (6,)])
def test_wrong_shape_says_both(npz, shape):
    path = npz(image=np.zeros(shape, np.float32))
    message = rf"shape \[{', '.join(map(str, shape))}\] but the model expects \[N, 1, 4, 4\]"
    with pytest.raises(InputError, match=message):
        load_dataset(path, SPECS)


def test_dynamic_non_batch_dims_match_anything(npz):
    path = npz(a=np.zeros((2, 3), np.float32), b=np.zeros((2, 2), np.int32))
    ds = load_dataset(path, [("a", (None, None), F32), TWO_INPUTS[1]])
    assert len(ds) == 2


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_])
def test_non_float_data_for_float_input(npz, dtype):
    path = npz(image=np.zeros((6, 1, 4, 4), dtype))
    with pytest.raises(InputError, match=f"is {np.dtype(dtype)} but the model expects float32; save it as float32"):
        load_dataset(path, SPECS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(npz, bad):
    images = _images()
    images[3, 0, 1, 2] = bad
    with pytest.raises(InputError, match="contains NaN or Inf values"):
        load_dataset(npz(image=images), SPECS)


def test_zero_samples(npz):
    with pytest.raises(InputError, match="holds zero samples"):
        load_dataset(npz(image=np.zeros((0, 1, 4, 4), np.float32)), SPECS)


def test_different_sample_counts(npz):
    path = npz(a=np.zeros((3, 3), np.float32), b=np.zeros((2, 2), np.int32))
    with pytest.raises(InputError, match=r"different sample counts \(a: 3, b: 2\)"):
        load_dataset(path, TWO_INPUTS)


@pytest.mark.parametrize("labels", [np.zeros(5, np.int64), np.zeros(7, np.int64), np.zeros((6, 1), np.int64)])
def test_labels_wrong_length_or_rank(npz, labels):
    with pytest.raises(InputError, match=r"labels have shape .* but there are 6 samples"):
        load_dataset(npz(image=_images(), labels=labels), SPECS)


@pytest.mark.parametrize("labels", [np.zeros(6, np.float32), np.zeros(6, np.bool_), np.array(["a"] * 6)])
def test_labels_not_integers(npz, labels):
    with pytest.raises(InputError, match="not integers; save class indices as int64"):
        load_dataset(npz(image=_images(), labels=labels), SPECS)


@pytest.mark.parametrize("bad", [-1, 10])
def test_labels_out_of_range(npz, bad):
    labels = np.arange(6)
    labels[2] = bad
    with pytest.raises(InputError, match=rf"label {bad} is outside \[0, 10\)"):
        load_dataset(npz(image=_images(), labels=labels), SPECS, num_classes=10)


def test_labels_range_unchecked_without_num_classes(npz):
    assert load_dataset(npz(image=_images(), labels=np.arange(6) * 100), SPECS).labels.max() == 500


# -- Dataset ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 50))
def test_batches_cover_the_set_in_order(n, batch):
    ds = Dataset({"x": np.arange(n * 2, dtype=np.float32).reshape(n, 2)}, np.arange(n))
    parts = list(ds.batches(batch))
    assert all(len(f["x"]) == len(l) <= batch for f, l in parts)
    np.testing.assert_array_equal(np.concatenate([f["x"] for f, _ in parts]), ds.inputs["x"])
    np.testing.assert_array_equal(np.concatenate([l for _, l in parts]), ds.labels)


def test_batches_without_labels_and_bad_size():
    ds = Dataset({"x": np.zeros((3, 2), np.float32)})
    assert [l for _, l in ds.batches(2)] == [None, None]
    with pytest.raises(InputError, match="batch size must be a positive integer"):
        list(ds.batches(0))


def test_subset_is_seeded():
    ds = Dataset({"x": np.arange(100, dtype=np.float32)[:, None]}, np.arange(100))
    a, b, c = ds.subset(10, seed=1), ds.subset(10, seed=1), ds.subset(10, seed=2)
    assert len(a) == 10 and np.array_equal(a.labels, b.labels) and not np.array_equal(a.labels, c.labels)
    assert np.array_equal(a.inputs["x"][:, 0], a.labels) and np.all(np.diff(a.labels) > 0)
    assert ds.subset(1000) is ds
    with pytest.raises(InputError):
        ds.subset(0)


def test_check_compatible(npz):
    val = load_dataset(npz("v.npz", image=_images()), SPECS)
    calib = load_dataset(npz("c.npz", x=_images(3, np.float64)), SPECS, role="--calib-data")
    val.check_compatible(calib)
    other = Dataset({"image": np.zeros((2, 1, 5, 5), np.float32)}, source="--calib-data c.npz")
    with pytest.raises(InputError, match=r"shape \[1, 5, 5\] \(float32\) in --calib-data c.npz but \[1, 4, 4\]"):
        val.check_compatible(other)
    with pytest.raises(InputError, match="has inputs x but --data .* has image; both files must hold the same"):
        val.check_compatible(Dataset({"x": np.zeros((2, 1, 4, 4), np.float32)}, source="--calib-data c.npz"))


def test_check_specs():
    ds = Dataset({"image": np.zeros((2, 1, 4, 4), np.float32)}, source="--data v.npz")
    ds.check_specs(SPECS, "m.onnx")
    with pytest.raises(InputError, match="m.onnx has input 'x', which --data v.npz does not hold"):
        ds.check_specs([("x", (None, 3), F32)], "m.onnx")
    with pytest.raises(InputError, match=r"m.onnx expects input 'image' of shape \[\?, 1, 8, 8\] \(float32\)"):
        ds.check_specs([("image", (None, 1, 8, 8), F32)], "m.onnx")
    with pytest.raises(InputError, match=r"\(float16\), but --data v.npz holds \[2, 1, 4, 4\] \(float32\)"):
        ds.check_specs([("image", (None, 1, 4, 4), np.dtype(np.float16))], "m.onnx")


def test_input_specs_reject_non_tensor_inputs():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("SequenceLength", ["s"], ["n"])], "g", [seq],
                              [helper.make_tensor_value_info("n", TensorProto.INT64, [])])
    with pytest.raises(InputError, match="input 's' is not a tensor"):
        input_specs(helper.make_model(graph))


def test_a_scalar_input_is_fed_whole_to_every_batch(tmp_path):
    """A scalar model input (a sample rate) is one 0-d value, not samples: counted and sliced by the others."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((5, 3), np.float32), sr=np.array(16000))
    ds = load_dataset(path, [("x", (None, 3), np.dtype(np.float32)), ("sr", (), np.dtype(np.int64))])
    assert len(ds) == 5 and len(ds.subset(2)) == 2
    batches = [feeds for feeds, _ in ds.batches(2)]
    assert [len(f["x"]) for f in batches] == [2, 2, 1] and all(f["sr"].shape == () for f in batches)
