"""Formats on transformers: haqc's uniform exports of each format vs ONNX Runtime's own quantizers.

A BERT-base-width encoder and a GPT-2-width decoder (4 layers each, hidden 768, sequence 128,
seeded random weights), exported by torch's TorchScript exporter and, where it succeeds, its
dynamo exporter. For each: fp32; ONNX Runtime's ``quantize_dynamic``, ``quantize_static`` (QDQ,
per channel) and ``matmul_nbits_quantizer`` (4 and 8 bits, block 32); haqc's ``int8-dynamic``,
``w8a8``, ``w4-block32`` and ``w8-block32`` on every MatMul / Gemm, embedding tables stored as the peer
stores them (int8 beside ``quantize_dynamic`` / ``quantize_static``, float beside the nbits quantizer). Latency
of one inference on one thread, all models of one export timed interleaved
(``haqc.runner.timing``: the median of each round's ratio to the first model, so the shared
machine's drift hits them alike), in ONNX Runtime's default sessions and again with its
SkipLayerNormalization fusion off in every session (the same graph optimizations for all: that fusion
turns an Add + LayerNormalization pair into one kernel that is slower on this CPU, and it fuses
different numbers of pairs in different exports); file size; output SNR against fp32 on 8 seeded sequences.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, Check, loadavg, log, read_json

TITLE = "## 7. Formats on transformers: haqc's exports vs ONNX Runtime's quantizers"
SEQ, HIDDEN, LAYERS, SAMPLES = 128, 768, 4, 8
SAME_FUSIONS = ("SkipLayerNormFusion",)  # disabled in every session of the second timing
# format -> (haqc's option name, ONNX Runtime's quantizer of the same format, haqc's option for embedding tables:
# stored as the peer stores them, int8 beside its int8 quantizers (per tensor there), float beside nbits)
PAIRS = {"int8 dynamic": ("int8-dynamic", "quantize_dynamic", "w8-weight-only"),
         "int8 static (QDQ)": ("w8a8", "quantize_static", "w8-weight-only"),
         "int4 weight-only, block 32": ("w4-block32", "nbits4", "fp32"),
         "int8 weight-only, block 32": ("w8-block32", "nbits8", "fp32")}


def _model(kind: str):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from realmodels.corpus import import_torchvision

    import_torchvision()  # transformers imports torchvision, whose PyPI build needs this beside the CPU torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=12,
                                         intermediate_size=4 * HIDDEN, vocab_size=30522)
        net = transformers.BertModel(config)
    else:
        config = transformers.GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=12, vocab_size=50257, n_positions=1024)
        net = transformers.GPT2Model(config)
    net.config.use_cache = False
    return net.eval(), config.vocab_size


def _export(kind: str, dynamo: bool, path: Path) -> int:
    """Export the model to ``path``; its vocabulary size."""
    import torch

    net, vocab = _model(kind)

    class Hidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids):
            return self.net(input_ids=input_ids).last_hidden_state

    ids = torch.zeros((1, SEQ), dtype=torch.int64)
    kwargs = {"dynamo": dynamo, "input_names": ["input_ids"], "output_names": ["hidden"]}
    if dynamo:
        kwargs["external_data"] = False
    else:
        kwargs["dynamic_axes"] = {"input_ids": {0: "batch"}, "hidden": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Hidden(), (ids,), str(path), **kwargs)
    return vocab


def _ort_quantizers(fp32: Path, out: Path, calib: list[dict]) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    paths = {name: out / f"ort_{name}.onnx" for name in ("quantize_dynamic", "quantize_static", "nbits4", "nbits8")}
    quantize_dynamic(str(fp32), str(paths["quantize_dynamic"]), weight_type=QuantType.QInt8)
    quantize_static(str(fp32), str(paths["quantize_static"]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    for bits in (4, 8):
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), bits=bits, block_size=32)
        quantizer.process()
        quantizer.model.save_model_to_file(str(paths[f"nbits{bits}"]), use_external_data_format=False)
    return paths


def _snr(path: Path, reference: list[np.ndarray], feeds: list[dict]) -> float:
    import onnxruntime as ort

    from haqc.evaluation import sqnr_db

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [session.run(None, f)[0] for f in feeds]
    return sqnr_db(np.concatenate([o.ravel() for o in outs]), np.concatenate([r.ravel() for r in reference]))


def measure(kind: str, dynamo: bool, tmp: Path, rounds: int) -> dict:
    import onnxruntime as ort

    import haqc
    from haqc.runner import timing

    fp32 = tmp / f"{kind}.onnx"
    vocab = _export(kind, dynamo, fp32)
    rng = np.random.default_rng(0)
    calib = [{"input_ids": rng.integers(0, vocab, (1, SEQ)).astype(np.int64)} for _ in range(16)]
    feeds = [{"input_ids": rng.integers(0, vocab, (1, SEQ)).astype(np.int64)} for _ in range(SAMPLES)]
    reference = [ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, f)[0] for f in feeds]
    paths = {"fp32": fp32, **_ort_quantizers(fp32, tmp, calib)}
    seconds = {}
    layers = haqc.inspect(str(fp32), input_shapes={"input_ids": (1, SEQ)})["layers"]
    for option, _, table in PAIRS.values():
        out, policy = tmp / f"haqc_{option}.onnx", tmp / f"haqc_{option}.json"
        policy.write_text(json.dumps([{"layer": l["name"], "option": table if l["kind"] == "embedding" else option}
                                      for l in layers]))
        start = time.perf_counter()
        haqc.quantize(str(fp32), policy=policy, output=out, force=True,
                      calib_data={"input_ids": np.concatenate([c["input_ids"] for c in calib])})
        seconds[option] = time.perf_counter() - start
        paths[f"haqc {option}"] = out
    names = list(paths)
    log(f"{kind} ({'dynamo' if dynamo else 'torchscript'}): timing {len(names)} models interleaved, one thread")
    models = [p.read_bytes() for p in paths.values()]
    latency = timing.time_models(models, feeds[0], "CPU", 1, timing.Protocol(min_rounds=rounds))
    same = timing.time_models(models, feeds[0], "CPU", 1, timing.Protocol(min_rounds=rounds),
                              disabled_optimizers=SAME_FUSIONS)
    return {"model": kind, "exporter": "dynamo" if dynamo else "torchscript", "load": loadavg(),
            "quantize_s": seconds,
            "rows": {n: {"latency_ms": 1e3 * t, "latency_same_fusions_ms": 1e3 * u, "size_mb": p.stat().st_size / 1e6,
                         "snr_db": None if n == "fp32" else _snr(p, reference, feeds)}
                     for (n, p), t, u in zip(paths.items(), latency, same)}}


def run(args: argparse.Namespace, results: Path) -> None:
    out = []
    for kind in ("bert", "gpt2"):
        for dynamo in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    out.append(measure(kind, dynamo, Path(tmp), 3 if args.quick else 9))
                except Exception as err:  # noqa: BLE001 -- an exporter that fails is a row saying so
                    out.append({"model": kind, "exporter": "dynamo" if dynamo else "torchscript",
                                "error": str(err).strip().splitlines()[-1][:200]})
                    log(f"{kind} dynamo={dynamo}: {out[-1]['error']}")
    (results / "formats.json").write_text(json.dumps(out, indent=2))


def render(results: Path) -> tuple[list[str], list[Check]] | None:
    data = read_json(results / "formats.json")
    if data is None:
        return None
    lines = [__doc__.split("\n\n", 1)[1].strip(), ""]
    checks = []
    for entry in data:
        name = f"{entry['model']} ({entry['exporter']} export)"
        if "error" in entry:
            lines += [f"**{name}**: the export failed: `{entry['error']}`", ""]
            continue
        rows = entry["rows"]
        same = all("latency_same_fusions_ms" in r for r in rows.values())
        lines += [f"**{name}**, load {entry['load']}", "",
                  "| model | latency ms | " + ("latency ms, SkipLayerNorm fusion off | " if same else "")
                  + "size MB | SNR dB |", "|---|---|---|---|" + ("---|" if same else "")]
        lines += [f"| {n} | {r['latency_ms']:.1f} | " + (f"{r['latency_same_fusions_ms']:.1f} | " if same else "")
                  + f"{r['size_mb']:.1f} | {'-' if r['snr_db'] is None else format(r['snr_db'], '.1f')} |"
                  for n, r in rows.items()]
        lines.append("")
        for option, peer, _ in PAIRS.values():
            ours, theirs = rows[f"haqc {option}"], rows[peer]
            if theirs["snr_db"] == float("inf"):  # the peer quantized nothing: no comparison to make
                lines.append(f"{peer} left {name} unquantized (its output equals fp32's), so haqc {option} is "
                             "compared with nothing there.")
                continue
            met = (ours["latency_ms"] <= theirs["latency_ms"] * 1.03 and ours["size_mb"] <= theirs["size_mb"] * 1.01
                   and ours["snr_db"] >= theirs["snr_db"])
            checks.append(Check(f"haqc {option} at least as fast (3% noise), as small and as accurate as {peer}",
                                name, met, f"{ours['latency_ms']:.1f} vs {theirs['latency_ms']:.1f} ms, "
                                           f"{ours['size_mb']:.1f} vs {theirs['size_mb']:.1f} MB, "
                                           f"{ours['snr_db']:.1f} vs {theirs['snr_db']:.1f} dB"))
            if same:
                fast = ours["latency_same_fusions_ms"] <= theirs["latency_same_fusions_ms"] * 1.03
                checks.append(Check(f"haqc {option} at least as fast as {peer} with the same fusions (3% noise)",
                                    name, fast, f"{ours['latency_same_fusions_ms']:.1f} vs "
                                                f"{theirs['latency_same_fusions_ms']:.1f} ms"))
    return lines, checks
